"""The training loop shared by every stage: batches, modality dropout, AdamW with early stopping, scores."""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from core.runtime import DistInfo
from core.train.settings import Progress


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _index(data: dict[str, torch.Tensor], idx: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[idx_t] for k, v in data.items()}


def drop_modalities(batch: dict[str, torch.Tensor], p: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Hide the image or the EHR (never both) of subjects that have both, each with probability p."""
    if p <= 0 or "image_present" not in batch:
        return batch
    b = batch["image_present"].shape[0]
    ehr_keys = [("event_mask", True), ("features_present", False), ("ehr_embedding_present", False)]
    ehr_present = torch.zeros(b)
    for key, per_token in ehr_keys:
        if key in batch:
            v = batch[key].float().cpu()
            ehr_present = torch.maximum(ehr_present, (v.sum(-1) > 0).float() if per_token else v)
    both = (batch["image_present"].float().cpu() > 0) & (ehr_present > 0)
    u = torch.rand(b, generator=gen)
    drop_img = both & (u < p)
    drop_ehr = both & (u >= p) & (u < 2 * p)
    out = dict(batch)
    out["image_present"] = batch["image_present"] * (~drop_img).to(batch["image_present"])
    keep_e = (~drop_ehr).float()
    for key, per_token in ehr_keys:
        if key in out:
            k = keep_e.to(out[key])
            out[key] = out[key] * (k[:, None] if per_token else k)
    return out


def drop_features(batch: dict[str, torch.Tensor], p: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Hide the tabular features of subjects that also have timeline events, each with probability p, as a subject
    without a features row reads them (values 0, every column missing, ``features_present`` 0): the network then
    learns to read the events alone too, as an uploaded timeline without clinical values asks of it."""
    if p <= 0 or "features_present" not in batch or "event_mask" not in batch:
        return batch
    has_events = batch["event_mask"].float().cpu().sum(-1) > 0
    drop = has_events & (batch["features_present"].float().cpu() > 0) & (torch.rand(has_events.shape[0], generator=gen) < p)
    if not drop.any():
        return batch
    out, keep = dict(batch), (~drop).float()
    out["features_present"] = batch["features_present"] * keep.to(batch["features_present"])
    out["features"] = batch["features"] * keep.to(batch["features"])[:, None]
    if "feature_missing" in batch:
        out["feature_missing"] = torch.maximum(batch["feature_missing"], drop.to(batch["feature_missing"])[:, None])
    return out


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[float]


def fit(net: torch.nn.Module, data: dict[str, torch.Tensor], train_idx: np.ndarray, val_idx: np.ndarray,
        loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
        score_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], float], *,
        epochs: int, lr: float, weight_decay: float, batch_size: int, patience: int, seed: int,
        device: torch.device, dist_info: DistInfo, label: str, progress: Progress | None = None,
        progress_span: tuple[float, float] = (0.0, 1.0), modality_dropout: float = 0.0, feature_dropout: float = 0.0,
        param_groups: list[dict[str, Any]] | None = None) -> FitResult:
    """Train ``net`` with AdamW and early stopping on ``score_fn`` (higher is better) over the val split."""
    from tqdm import tqdm

    net.to(device)
    model: torch.nn.Module = net
    if dist_info.active:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)
    params = param_groups if param_groups is not None else [{"params": [p for p in net.parameters() if p.requires_grad]}]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    per_rank = max(1, batch_size // dist_info.world)
    val_data = _index(data, val_idx) if len(val_idx) else _index(data, train_idx)
    best, best_epoch, bad, history = -math.inf, -1, 0, []
    best_state = copy.deepcopy(net.state_dict())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    bar = tqdm(range(epochs), desc=label, file=sys.stderr, leave=False, disable=not dist_info.main or None)
    epoch = -1
    for epoch in bar:
        net.train()
        if dist_info.active:
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(range(len(train_idx)), num_replicas=dist_info.world, rank=dist_info.rank,
                                         shuffle=True, seed=seed, drop_last=False)
            sampler.set_epoch(epoch)
            order = train_idx[np.asarray(list(sampler), dtype=np.int64)]
        else:
            order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        n_batches = max(1, math.ceil(len(order) / per_rank))
        if len(order) > per_rank and len(order) % per_rank == 1:
            n_batches -= 1  # a batch of one breaks the Cox risk set and InfoNCE; fold it into the last batch
        for bi in range(n_batches):
            idx = order[bi * per_rank:] if bi == n_batches - 1 else order[bi * per_rank:(bi + 1) * per_rank]
            batch = drop_features(drop_modalities(_index(data, idx), modality_dropout, gen), feature_dropout, gen)
            batch = _to(batch, device)
            opt.zero_grad(set_to_none=True)
            if autocast is not None:
                with autocast:
                    loss = loss_fn(model, batch)
            else:
                loss = loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
        net.eval()
        with torch.no_grad():
            score = float(score_fn(net, _to(val_data, device)))
        if dist_info.active:
            import torch.distributed as dist

            t = torch.tensor([score], dtype=torch.float64)
            dist.all_reduce(t)
            score = float(t.item()) / dist_info.world
        history.append(score)
        if score > best + 1e-6:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad += 1
        if dist_info.main:
            bar.set_postfix(score=f"{score:.3f}", best=f"{best:.3f}")
        if progress is not None:
            a, b = progress_span
            progress(a + (b - a) * (epoch + 1) / epochs, f"{label}: epoch {epoch + 1}, val {score:.3f}")
        if bad >= patience:
            break
    bar.close()
    net.load_state_dict(best_state)
    return FitResult(best_state, best, best_epoch, epoch + 1, history)


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C (``core.evaluate.harrell_c``); 0.5 when no pair is comparable."""
    from core.evaluate import harrell_c

    try:
        return float(harrell_c(time, event.astype(bool), risk))
    except (ValueError, ZeroDivisionError):  # no comparable pairs (e.g. a tiny val split without events)
        return 0.5


def predict_batches(net: torch.nn.Module, data: dict[str, torch.Tensor], device: torch.device,
                    chunk: int = 256) -> dict[str, np.ndarray]:
    """Survival, risk and raw head output for every row of ``data`` (eval mode, no grad)."""
    net.eval()
    n = next(iter(data.values())).shape[0]
    outs: dict[str, list[np.ndarray]] = {"survival": [], "risk": [], "raw": []}
    with torch.no_grad():
        for i in range(0, n, chunk):
            o = net(_to({k: v[i:i + chunk] for k, v in data.items()}, device))
            for key in outs:
                outs[key].append(o[key].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def survival_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(batch)
    head = (model.module if hasattr(model, "module") else model).head
    return head.nll(out["raw"], batch["time"], batch["event"])


def c_index_score(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    out = net(batch)
    return concordance(batch["time"].cpu().numpy(), batch["event"].cpu().numpy(), out["risk"].float().cpu().numpy())
