"""Training: one loop for every strategy, head and encoder.

How a model is trained (``train_model``):

1. **Data.** The cohort is validated (``core.cohort.load_cohort``). EHR
   preprocessing is fitted on the train split only: the event vocabulary and
   per-code value statistics (``EventVocabulary``), the feature scaler
   (``TabularScaler``). Events after a subject's index time never enter.
2. **Image encoder (stage A, shared by all strategies).** The 2D slice CNN (or
   the 3D MONAI network) is trained once per cohort with an image-only
   discrete-time survival objective on the train split (starting from a
   ``pretrain`` encoder folder when ``image_encoder`` is given), early-stopped on
   validation C-index. The 2D encoder sees the lungs only (``image.lung_mask``,
   with nodules on the chest wall since ``image.lung_close``; see ``core.models.image2d``). It is then frozen and its tokens for every subject are
   cached in ``<cohort>/.cache/`` keyed by (cohort fingerprint, encoder config,
   seed, initial weights). Comparing strategies therefore encodes each CT once.
3. **Fusion (stage B).** The strategy, EHR encoders and survival head are
   trained on the cached tokens with AdamW, modality dropout (each modality of a
   subject with both is hidden with probability ``modality_dropout``) and early
   stopping on validation Harrell's C (``core.evaluate.harrell_c``). The image
   path after the encoder (projection, slice position, image pooling and MLP,
   and the head when it is the discrete one) starts from stage A
   (``image.warm_start_path``), and multimodal strategies are image-anchored
   (``image_anchor``: image-only branch + gated strategy, ``core.models.fusion``),
   so every strategy starts from the image-only model.
   ``contrastive`` first aligns the two projections with symmetric InfoNCE
   (step one, early-stopped on validation InfoNCE), then trains the head with
   the aligned parts at a tenth of the learning rate (step two).
   Linear EHR term (``ehr_linear``, models with tabular features): after the
   network is early-stopped, the head's linear term of the scaled features and
   missing indicators is fitted on the train split together with a scale and
   shift of the network's own linear predictor (penalised maximum likelihood,
   ``SurvivalHead.fit_wide``); the validation calibration comes after it.
4. **Model folder.** The saved network holds the full image encoder, so
   ``predict`` and ``explain`` run from voxels (``core.registry``).

Determinism: ``torch.manual_seed``, a seeded generator for shuffling and
``torch.use_deterministic_algorithms(True, warn_only=True)``; the same seed
gives the same weights on the same machine. Devices: ``auto`` (CUDA when
available), ``cpu``, ``cuda``; bf16 autocast on CUDA.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
initialised (gloo on CPU, nccl on CUDA), every trained network is wrapped in
``DistributedDataParallel`` and batches come from a ``DistributedSampler``
(per-rank batch = batch size / world size, so the effective batch is
unchanged). Validation runs on every rank on identical weights; the score is
averaged across ranks so early stopping agrees. Rank 0 writes the model and
the cache.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from core.cohort import Cohort, load_cohort
from core.errors import InputError
from core.models import EHR_ENCODERS, FUSIONS, HEADS, IMAGE_ENCODERS

Progress = Callable[[float, str], None]

DEFAULTS: dict[str, Any] = {
    "dim": 64, "dropout": 0.1, "heads": 2, "n_intervals": 20,
    "lr": 2e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 60, "patience": 10,
    "modality_dropout": 0.15, "max_events": 64, "max_codes": 512,
    "ensemble": 5,  # stage-B networks from seeds seed .. seed+4 on the shared image encoder; the band is their range
    # "auto": the proportional form (one linear predictor across the grid, calibrated on val; core.models.heads)
    # for models that use images, whose warm-started image path needs the calibration; the full per-interval
    # form for models without images (real tabular data: SurvSet mean C 0.699 full vs 0.689 proportional)
    "proportional_head": "auto",
    "image_anchor": True,  # multimodal strategies = image-only branch (warm-started) + gated strategy (core.models.fusion)
    "ehr_linear": True,  # the head adds a linear term of the tabular features, fitted after the network (core.models.heads)
    "ehr_linear_penalty": 0.01,  # ridge penalty of that term (on the mean NLL; features are standardised)
    "threads": None,  # CPU threads of the image stage (None: torch's default); the fusion stage always uses 1
    "image": {"out_dim": 64, "size": 64, "channels": [8, 16, 32, 64], "grid": [32, 64, 64],
              "channels_3d": [8, 16, 32], "hu_window": [-1000.0, 1000.0], "lung_mask": True,
              # closing radius (fraction of the slice width) that adds juxtapleural nodules to the lung mask
              # (core.models.image2d.close_lung_regions); absent in older models, which load with 0
              "lung_close": 0.05,
              # the closing also adds solid tissue on the mediastinal side (nodules at the hilum); absent in older
              # models, which load with False
              "lung_medial": True,
              # 30 epochs, the best on validation C kept: with patience 5 the encoder stopped at epoch 2 (of 7) on
              # the noisy 160-subject validation split and graded lesions worse (docs/BENCHMARKS.md)
              "epochs": 30, "batch_size": 16, "lr": 2e-3, "patience": 30,
              "warm_start_path": True},  # stage B starts its image path (projection, pooling) from stage A
    "contrastive": {"epochs": 30, "temperature": 0.1, "finetune_lr_scale": 0.1},
}


# ----------------------------------------------------------------------------- environment

def resolve_device(device: str) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise InputError("device", device, "unknown device", "use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device", device, "CUDA is not available on this machine", "use --device cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class DistInfo:
    world: int = 1
    rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_world_size(), dist.get_rank())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- EHR arrays

@dataclass
class SubjectArrays:
    """Per-subject tensors for the whole cohort (row i = ``ids[i]``)."""

    ids: list[str]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def ehr_config(cohort: Cohort, ehr_encoder: str, max_codes: int, max_events: int) -> dict[str, Any]:
    """Fit the EHR preprocessing on the train split; returns the ``ehr`` part of config.json."""
    from core.models.ehr_sequence import EventVocabulary
    from core.models.ehr_tabular import TabularScaler

    if ehr_encoder not in EHR_ENCODERS:
        raise InputError("ehr_encoder", ehr_encoder, "unknown EHR encoder", f"use one of {', '.join(EHR_ENCODERS)}")
    train_ids = cohort.ids("train")
    use = {"sequence": cohort.timeline is not None, "tabular": cohort.features is not None,
           "embedding": cohort.ehr_embeddings is not None}
    if ehr_encoder not in ("auto", "none"):
        if not use[ehr_encoder]:
            need = {"sequence": "timeline.parquet or timeline.csv", "tabular": "features.csv",
                    "embedding": "ehr_embeddings.npy or .parquet"}[ehr_encoder]
            raise InputError("ehr_encoder", ehr_encoder, "the cohort has no such EHR data", f"add {need} to the cohort or use --ehr-encoder auto")
        use = {k: k == ehr_encoder for k in use}
    if ehr_encoder == "none":
        use = {k: False for k in use}
    cfg: dict[str, Any] = {"sequence": None, "tabular": None, "embedding_dim": None, "layers": 1}
    if use["sequence"]:
        vocab = EventVocabulary.fit([cohort.events(s) for s in train_ids], max_codes=max_codes, max_events=max_events)
        cfg["sequence"] = vocab.to_json()
    if use["tabular"]:
        assert cohort.features is not None
        scaler = TabularScaler.fit(cohort.features.reindex(train_ids))
        cfg["tabular"] = scaler.to_json()
    if use["embedding"]:
        assert cohort.ehr_embeddings is not None
        cfg["embedding_dim"] = int(cohort.ehr_embeddings.shape[1])
    return cfg


def ehr_arrays(cohort: Cohort, ids: list[str], ecfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """EHR inputs of ``ids`` as stacked numpy arrays (see ``core.models.net`` for the keys)."""
    from core.models.ehr_sequence import EventVocabulary
    from core.models.ehr_tabular import TabularScaler

    out: dict[str, np.ndarray] = {}
    if ecfg.get("sequence"):
        vocab = EventVocabulary.from_json(ecfg["sequence"])
        rows = [vocab.encode(cohort.events(s), cohort.index_time(s))[0] for s in ids]
        for key in rows[0] if rows else []:
            out[key] = np.stack([r[key] for r in rows])
    if ecfg.get("tabular"):
        scaler = TabularScaler.from_json(ecfg["tabular"])
        assert cohort.features is not None
        frame = cohort.features.reindex(ids)
        x, miss = scaler.transform(frame)
        out["features"], out["feature_missing"] = x, miss
        out["features_present"] = np.asarray([s in cohort.features.index for s in ids], np.float32)
    if ecfg.get("embedding_dim"):
        assert cohort.ehr_embeddings is not None
        emb = cohort.ehr_embeddings.reindex(ids)
        present = emb.notna().all(axis=1).to_numpy()
        out["ehr_embedding"] = np.nan_to_num(emb.to_numpy(np.float32))
        out["ehr_embedding_present"] = present.astype(np.float32)
    return out


def image_embedding_arrays(cohort: Cohort, ids: list[str]) -> dict[str, np.ndarray]:
    assert cohort.image_embeddings is not None
    emb = cohort.image_embeddings.reindex(ids)
    present = emb.notna().all(axis=1).to_numpy()
    return {"image_embedding": np.nan_to_num(emb.to_numpy(np.float32)), "image_present": present.astype(np.float32)}


# ----------------------------------------------------------------------------- the loop

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
        progress_span: tuple[float, float] = (0.0, 1.0), modality_dropout: float = 0.0,
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
            batch = drop_modalities(_index(data, idx), modality_dropout, gen)
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


# ----------------------------------------------------------------------------- stage A: image encoder

def image_config(cohort: Cohort, image_encoder_kind: str, fusion: str, settings: dict[str, Any]) -> dict[str, Any]:
    if image_encoder_kind not in IMAGE_ENCODERS + ("auto",):
        raise InputError("image_encoder_kind", image_encoder_kind, "unknown image encoder", "use auto, 2d, 3d, embedding or none")
    kind = image_encoder_kind
    if kind == "auto":
        kind = "2d" if cohort.has_studies else ("embedding" if cohort.image_embeddings is not None else "none")
    if fusion == "ehr_only":
        kind = "none"
    if kind in ("2d", "3d") and not cohort.has_studies:
        raise InputError("image_encoder_kind", kind, "the cohort has no study column with CT paths", "add a study column or use embedding/none")
    if kind == "embedding" and cohort.image_embeddings is None:
        raise InputError("image_encoder_kind", kind, "the cohort has no image_embeddings file", "add image_embeddings.npy or .parquet")
    s = settings["image"]
    cfg: dict[str, Any] = {"kind": kind, "hu_window": list(s["hu_window"]), "out_dim": int(s["out_dim"])}
    if kind == "2d":
        cfg.update(size=int(s["size"]), channels=list(s["channels"]), lung_mask=bool(s["lung_mask"]))
        if cfg["lung_mask"] and float(s.get("lung_close", 0.0)) > 0:
            cfg["lung_close"] = float(s["lung_close"])
            if bool(s.get("lung_medial", False)):
                cfg["lung_medial"] = True
    elif kind == "3d":
        cfg.update(grid=list(s["grid"]), channels=list(s["channels_3d"]))
    elif kind == "embedding":
        assert cohort.image_embeddings is not None
        shape = cohort.image_embeddings.attrs.get("token_shape", (cohort.image_embeddings.shape[1],))
        cfg.update(emb_dim=int(shape[-1]), emb_tokens=int(np.prod(shape[:-1])) if len(shape) > 1 else 1)
    return cfg


def _cache_dir(cohort: Cohort) -> Path:
    return cohort.root / ".cache"


def _save_cache(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
    except OSError as err:  # read-only cohort folder: keep going without a cache
        print(f"warning: could not write cache {path.name}: {err.strerror}", file=sys.stderr)


def _load_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def preprocessed_images(cohort: Cohort, icfg: dict[str, Any], progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """Windowed + resized CT of every subject (``encoder.preprocess``), float16, padded over slices; cached."""
    from core.models.net import build_image_encoder

    key = _digest("pre", cohort.fingerprint(), {k: icfg[k] for k in icfg if k in ("kind", "size", "grid", "hu_window", "lung_mask", "lung_close", "lung_medial")})
    path = _cache_dir(cohort) / f"images_{key}.safetensors"
    hit = _load_cache(path)
    if hit is not None:
        return hit[0]
    enc = build_image_encoder({**icfg, "channels": icfg.get("channels", [4])})
    assert enc is not None
    ids = cohort.ids()
    arrays: list[torch.Tensor | None] = []
    for i, sid in enumerate(ids):
        vol = cohort.load_volume(sid)
        if vol is None:
            arrays.append(None)
        else:
            with torch.no_grad():
                arrays.append(enc.preprocess(torch.from_numpy(np.ascontiguousarray(vol.hu, dtype=np.float32))[None])[0].half())
        if progress is not None and i % 20 == 0:
            progress(0.1 * i / len(ids), f"reading CT {i + 1}/{len(ids)}")
    shapes = [a.shape for a in arrays if a is not None]
    if not shapes:
        raise InputError("study", "none loadable", "no subject has a CT", "check the study column of cohort.csv")
    s_max = max(s[0] for s in shapes)
    rest = shapes[0][1:]
    x = torch.zeros((len(ids), s_max, *rest), dtype=torch.float16)
    mask = torch.zeros(len(ids), s_max)
    present = torch.zeros(len(ids))
    for i, a in enumerate(arrays):
        if a is not None:
            x[i, :a.shape[0]] = a
            mask[i, :a.shape[0]] = 1
            present[i] = 1
    out = {"image_preprocessed": x, "image_token_mask": mask, "image_present": present}
    _save_cache(path, out, {"ids": json.dumps(ids)})
    return out


def encoder_tokens(enc: torch.nn.Module, pre: dict[str, torch.Tensor], device: torch.device, chunk: int = 8) -> torch.Tensor:
    enc.eval().to(device)
    outs = []
    with torch.no_grad():
        for i in range(0, pre["image_preprocessed"].shape[0], chunk):
            outs.append(enc.trunk(pre["image_preprocessed"][i:i + chunk].float().to(device)).float().cpu())
    return torch.cat(outs)


def train_image_encoder(cohort: Cohort, icfg: dict[str, Any], settings: dict[str, Any], *, seed: int, device: torch.device,
                        dist_info: DistInfo, init_dir: Path | None, progress: Progress | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Stage A: train (or load from cache) the image encoder; return (encoder state, token data, info)."""
    from core.models.net import SurvivalNet

    s = settings["image"]
    init_hash = None
    init_state: dict[str, torch.Tensor] | None = None
    if init_dir is not None:
        from core.registry import load_encoder

        init_state, init_cfg = load_encoder(init_dir)
        for k in ("kind", "size", "channels", "grid", "out_dim"):
            if k in init_cfg and k in icfg and init_cfg[k] != icfg[k]:
                raise InputError("image_encoder", str(init_dir), f"encoder {k}={init_cfg[k]} does not match {icfg[k]}",
                                 "pretrain with the same image settings or train without --image-encoder")
        for k, default in (("lung_mask", False), ("lung_close", 0.0), ("lung_medial", False)):
            if icfg.get("kind") == "2d" and init_cfg.get(k, default) != icfg.get(k, default):
                raise InputError("image_encoder", str(init_dir), f"encoder {k}={init_cfg.get(k, default)} does not match {icfg.get(k, default)}",
                                 "pretrain again with this version or train without --image-encoder")
        init_hash = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in init_state.values())).hexdigest()[:16]
    prop = proportional_head(settings["proportional_head"], "image_only", icfg["kind"])
    key = _digest("enc", cohort.fingerprint(), icfg, seed, {k: s[k] for k in ("epochs", "batch_size", "lr", "patience")},
                  settings["n_intervals"], init_hash, settings["dim"], prop, "image-path/4")
    path = _cache_dir(cohort) / f"encoder_{key}.safetensors"
    hit = _load_cache(path)
    if hit is not None:
        tensors, meta = hit
        enc_state = {k: v for k, v in tensors.items() if k.startswith(("enc.", "path."))}
        data = {"image_tokens": tensors["tokens"], "image_token_mask": tensors["mask"], "image_present": tensors["present"]}
        return enc_state, data, json.loads(meta.get("info", "{}"))
    t0 = _time.perf_counter()
    pre = preprocessed_images(cohort, icfg, progress)
    table = cohort.table
    from core.models.heads import make_edges

    tr = (table["split"] == "train").to_numpy()
    edges = make_edges(table["time"].to_numpy()[tr], table["event"].to_numpy()[tr], settings["n_intervals"])
    cfg = {"fusion": "image_only", "head": "discrete", "dim": settings["dim"], "dropout": settings["dropout"],
           "heads": settings["heads"], "proportional_head": prop, "edges": edges.tolist(), "image": icfg,
           "ehr": {"sequence": None, "tabular": None, "embedding_dim": None}}
    torch.manual_seed(seed)
    net = SurvivalNet(cfg)
    net.head.init_baseline(table["time"].to_numpy()[tr], table["event"].to_numpy()[tr])
    if init_state is not None:
        net.image_encoder.load_state_dict(init_state)  # type: ignore[union-attr]
    data = dict(pre)
    data["time"] = torch.as_tensor(table["time"].to_numpy(), dtype=torch.float32)
    data["event"] = torch.as_tensor(table["event"].to_numpy(), dtype=torch.float32)
    present = pre["image_present"].numpy() > 0
    train_idx = np.flatnonzero(tr & present)
    val_idx = np.flatnonzero((table["split"] == "val").to_numpy() & present)

    def stage_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(_stage_a_batch(model, batch))
        head = (model.module if hasattr(model, "module") else model).head
        return head.nll(out["raw"], batch["time"], batch["event"])

    def stage_score(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
        risks = []
        for i in range(0, batch["time"].shape[0], 32):
            sub = {k: v[i:i + 32] for k, v in batch.items()}
            risks.append(model(_stage_a_batch(model, sub))["risk"].float().cpu())
        return concordance(batch["time"].cpu().numpy(), batch["event"].cpu().numpy(), torch.cat(risks).numpy())

    res = fit(net, data, train_idx, val_idx, stage_loss, stage_score, epochs=int(s["epochs"]), lr=float(s["lr"]),
              weight_decay=settings["weight_decay"], batch_size=int(s["batch_size"]), patience=int(s["patience"]),
              seed=seed, device=device, dist_info=dist_info, label="image encoder", progress=progress,
              progress_span=(0.1, 0.7))
    enc = net.image_encoder
    assert enc is not None
    tokens = encoder_tokens(enc, pre, device)
    enc_state = {f"enc.{k}": v.detach().cpu() for k, v in enc.state_dict().items()}
    enc_state.update({f"path.{k}": v.detach().cpu() for k, v in image_path_state(net).items()})
    info = {"val_c_index": res.best_score, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
            "seconds": round(_time.perf_counter() - t0, 2), "init": str(init_dir) if init_dir else None}
    out = {"image_tokens": tokens, "image_token_mask": pre["image_token_mask"], "image_present": pre["image_present"]}
    if dist_info.main:
        save = dict(enc_state)
        save.update(tokens=tokens, mask=pre["image_token_mask"], present=pre["image_present"])
        _save_cache(path, save, {"info": json.dumps(info), "ids": json.dumps(cohort.ids())})
    return enc_state, out, info


def image_path_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The image path after the encoder: token projection, slice position and the fusion's image-only pooling."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in _image_path_parts(net).items():
        if mod is not None:
            out.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    return out


def _image_path_parts(net: torch.nn.Module) -> dict[str, torch.nn.Module | None]:
    from core.models.fusion import ImageAnchored, ImageOnly

    f = net.fusion
    branch = f if isinstance(f, ImageOnly) else (f.anchor if isinstance(f, ImageAnchored) else None)
    return {"image_proj": net.image_proj, "slice_pos": net.slice_pos,
            "pool": branch.pool if branch is not None else f.image_pool(),
            "mlp": branch.mlp if branch is not None else None,
            "head": net.head if branch is not None and net.cfg["head"] == "discrete" else None}


def load_image_path(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Warm-start ``net``'s image path from ``image_path_state`` of the image stage; returns the parts loaded."""
    loaded = []
    for name, mod in _image_path_parts(net).items():
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        if mod is not None and sub:
            # the head's linear EHR term (``wide``) has no image-stage counterpart: it keeps its zero start
            missing, unexpected = mod.load_state_dict(sub, strict=False)
            if unexpected or [k for k in missing if not k.startswith("wide.")]:
                raise RuntimeError(f"image path {name}: missing {missing}, unexpected {unexpected}")
            loaded.append(name)
    return loaded


def _stage_a_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stage A feeds preprocessed slices through the encoder trunk, then the rest of the net."""
    net = model.module if hasattr(model, "module") else model
    b = dict(batch)
    x = b.pop("image_preprocessed").float()
    b["image_tokens"] = net.image_encoder.trunk(x)  # type: ignore[union-attr]
    return b


# ----------------------------------------------------------------------------- stage B: fusion

def _contrastive_loss(temperature: float) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    from core.models.fusion import info_nce

    def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(batch)
        both = (out["image_present"] > 0) & (out["ehr_present"] > 0)
        zi, ze = out["z_image"][both], out["z_ehr"][both]
        if zi.shape[0] < 2:
            return (out["z_image"].sum() + out["z_ehr"].sum()) * 0.0
        return info_nce(zi.float(), ze.float(), temperature)

    return loss


def _contrastive_score(temperature: float) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], float]:
    lf = _contrastive_loss(temperature)

    def score(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
        return -float(lf(model, batch))

    return score


def proportional_head(setting: bool | str, fusion: str, image_kind: str) -> bool:
    """Resolve the ``proportional_head`` setting: ``"auto"`` is True exactly when the model uses images.

    >>> proportional_head("auto", "concat", "2d"), proportional_head("auto", "ehr_only", "2d"), proportional_head(True, "ehr_only", "none")
    (True, False, True)
    """
    if setting == "auto":
        return fusion != "ehr_only" and image_kind != "none"
    if not isinstance(setting, bool):
        raise InputError("proportional_head", setting, "must be true, false or \"auto\"", "leave it at \"auto\"")
    return setting


def train_model(cohort_dir: Path | str, fusion: str, out: Path | str | None, *, head: str = "discrete",
                epochs: int | None = None, seed: int = 0, device: str = "auto", image_encoder: Path | str | None = None,
                image_encoder_kind: str = "auto", ehr_encoder: str = "auto", progress: Progress | None = None,
                overrides: dict[str, Any] | None = None, ensemble: int | None = None) -> dict:
    """Train one fusion strategy on a cohort and write the model folder ``out``; return metrics.json's content."""
    from core.models.net import SurvivalNet
    from core.models.heads import make_edges
    from core.registry import save_model

    if fusion not in FUSIONS:
        raise InputError("fusion", fusion, "unknown fusion strategy", f"use one of {', '.join(FUSIONS)}")
    if head not in HEADS:
        raise InputError("head", head, "unknown survival head", f"use one of {', '.join(HEADS)}")
    settings = copy.deepcopy(DEFAULTS)
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(settings.get(k), dict):
            settings[k].update(v)
        else:
            settings[k] = v
    if epochs is not None:
        if epochs < 1:
            raise InputError("epochs", epochs, "must be >= 1", "use e.g. --epochs 30")
        settings["epochs"] = int(epochs)
    if ensemble is not None:
        settings["ensemble"] = ensemble
    if isinstance(settings["ensemble"], bool) or not isinstance(settings["ensemble"], int) or settings["ensemble"] < 1:
        raise InputError("ensemble", settings["ensemble"], "must be an integer >= 1", "use e.g. --ensemble 5 (or 1 for a single network)")
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    if dev.type == "cuda" and dist_info.active:
        dev = torch.device("cuda", dist_info.rank % torch.cuda.device_count())
    seed_everything(seed)
    t_start = _time.perf_counter()
    cohort = load_cohort(Path(cohort_dir), seed=seed)
    table = cohort.table
    ids = cohort.ids()
    icfg = image_config(cohort, image_encoder_kind, fusion, settings)
    ecfg = ehr_config(cohort, "none" if fusion == "image_only" else ehr_encoder, settings["max_codes"], settings["max_events"])
    has_ehr = bool(ecfg["sequence"] or ecfg["tabular"] or ecfg["embedding_dim"])
    if fusion != "image_only" and not has_ehr:
        raise InputError("fusion", fusion, "needs EHR data but the cohort has none", "add timeline.parquet, features.csv or ehr_embeddings, or use image_only")
    if fusion != "ehr_only" and icfg["kind"] == "none":
        raise InputError("fusion", fusion, "needs images but the cohort has none", "add a study column or image_embeddings, or use ehr_only")
    threads_before = torch.get_num_threads()
    if dev.type == "cpu" and settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    if dev.type == "cpu" and dist_info.active:
        torch.set_num_threads(1)

    tr = (table["split"] == "train").to_numpy()
    edges = make_edges(table["time"].to_numpy()[tr], table["event"].to_numpy()[tr], settings["n_intervals"])
    data: dict[str, torch.Tensor] = {k: torch.as_tensor(v) for k, v in ehr_arrays(cohort, ids, ecfg).items()}
    data["time"] = torch.as_tensor(table["time"].to_numpy(), dtype=torch.float32)
    data["event"] = torch.as_tensor(table["event"].to_numpy(), dtype=torch.float32)
    enc_state: dict[str, torch.Tensor] | None = None
    enc_info: dict[str, Any] = {}
    if icfg["kind"] in ("2d", "3d"):
        enc_state, img_data, enc_info = train_image_encoder(
            cohort, icfg, settings, seed=seed, device=dev, dist_info=dist_info,
            init_dir=Path(image_encoder) if image_encoder else None, progress=progress)
        data.update(img_data)
    elif icfg["kind"] == "embedding":
        data.update({k: torch.as_tensor(v) for k, v in image_embedding_arrays(cohort, ids).items()})
    else:
        data["image_present"] = torch.zeros(len(ids))

    if dev.type == "cpu":
        # token-level models are tiny: one thread is as fast, and far faster when the cores are shared
        torch.set_num_threads(1)
    cfg: dict[str, Any] = {
        "format": "core.models.net.SurvivalNet/1", "fusion": fusion, "head": head,
        "proportional_head": proportional_head(settings["proportional_head"], fusion, icfg["kind"]), "dim": settings["dim"], "dropout": settings["dropout"], "heads": settings["heads"],
        "edges": edges.tolist(), "image": icfg, "ehr": ecfg, "seed": seed,
        "image_anchor": bool(settings["image_anchor"]) and icfg["kind"] in ("2d", "3d"),
        "ehr_linear": bool(settings["ehr_linear"]) and bool(ecfg["tabular"]),
    }
    train_idx = np.flatnonzero(tr)
    val_idx = np.flatnonzero((table["split"] == "val").to_numpy())
    n_members = int(settings["ensemble"])
    cfg["ensemble"] = n_members
    members, member_info = [], []
    for k in range(n_members):
        lo, hi = 0.7 + 0.27 * k / n_members, 0.7 + 0.27 * (k + 1) / n_members
        net_k, info_k = _fit_member(cfg, data, table, train_idx, val_idx, enc_state, settings, fusion=fusion, head=head,
                                    seed=seed + k, device=dev, dist_info=dist_info, progress=progress, span=(lo, hi),
                                    label=f"{fusion}/{head}" + (f" {k + 1}/{n_members}" if n_members > 1 else ""))
        members.append(net_k)
        member_info.append(info_k)
    if n_members == 1:
        net: torch.nn.Module = members[0]
    else:
        from core.models.net import EnsembleNet

        net = EnsembleNet(cfg, n_members)
        for k, m in enumerate(members):
            net.members[k].load_state_dict(m.state_dict())
        net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    metrics = split_metrics(net, data, cohort, edges)
    metrics.update({
        "fusion": fusion, "head": head, "seed": seed, "device": str(dev), "world_size": dist_info.world,
        "val_c_index_early_stopping": member_info[0]["val_c_index"], "epochs_run": member_info[0]["epochs_run"],
        "best_epoch": member_info[0]["best_epoch"], "steps": member_info[0]["steps"],
        "calibration": member_info[0]["calibration"], "ensemble": n_members,
        "members": member_info if n_members > 1 else None,
        "image_encoder": {"kind": icfg["kind"], **enc_info, "warm_start": member_info[0]["warm_start"]},
        "train_seconds": round(_time.perf_counter() - t_start, 2),
        "n": {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
        "modalities": {"image": icfg["kind"], "ehr": [k for k in ("sequence", "tabular") if ecfg.get(k)] + (["embedding"] if ecfg.get("embedding_dim") else [])},
        "uncertainty": (f"ensemble of {n_members} seeds (range of the members' curves, widened to contain the mean)"
                        if n_members > 1 else "MC dropout (30 samples, 5th-95th percentile, widened to contain the point estimate)"),
    })
    if out is not None and dist_info.main:
        save_model(Path(out), net, cfg, metrics, cohort)
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()
    torch.set_num_threads(threads_before)
    if progress is not None:
        progress(1.0, "done")
    return metrics


def _fit_member(cfg: dict[str, Any], data: dict[str, torch.Tensor], table: pd.DataFrame, train_idx: np.ndarray,
                val_idx: np.ndarray, enc_state: dict[str, torch.Tensor] | None, settings: dict[str, Any], *, fusion: str,
                head: str, seed: int, device: torch.device, dist_info: DistInfo, progress: Progress | None,
                span: tuple[float, float], label: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Stage B for one seed: build, warm-start, fit (two steps for contrastive), calibrate on val, Cox baseline."""
    from core.models.net import SurvivalNet

    torch.manual_seed(seed)
    net = SurvivalNet(cfg)
    tr_time, tr_event = table["time"].to_numpy()[train_idx], table["event"].to_numpy()[train_idx]
    net.head.init_baseline(tr_time, tr_event)
    warm: list[str] = []
    if enc_state is not None:
        net.image_encoder.load_state_dict({k[4:]: v for k, v in enc_state.items() if k.startswith("enc.")})  # type: ignore[union-attr]
        if settings["image"].get("warm_start_path", True):
            warm = load_image_path(net, {k[5:]: v for k, v in enc_state.items() if k.startswith("path.")})
        for p in net.image_encoder.parameters():  # type: ignore[union-attr]
            p.requires_grad_(False)
    common = dict(weight_decay=settings["weight_decay"], batch_size=settings["batch_size"], seed=seed, device=device,
                  dist_info=dist_info, progress=progress)
    steps: dict[str, Any] = {}
    mid = span[0] + 0.3 * (span[1] - span[0])
    if fusion == "contrastive":
        c = settings["contrastive"]
        align = fit(net, data, train_idx, val_idx, _contrastive_loss(c["temperature"]), _contrastive_score(c["temperature"]),
                    epochs=int(c["epochs"]), lr=settings["lr"], patience=settings["patience"], label=f"{label} alignment",
                    progress_span=(span[0], mid), modality_dropout=0.0, **common)
        steps["alignment"] = {"val_info_nce": -align.best_score, "epochs": align.epochs_run}
        # step two: head (and fusion MLP) at full rate, the aligned encoders/projections at a tenth
        fast_prefix = ("fusion.mlp", "fusion.inner.mlp", "fusion.anchor.", "fusion.gate", "head.")
        slow = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith(fast_prefix)]
        fast = [p for n, p in net.named_parameters() if p.requires_grad and n.startswith(fast_prefix)]
        groups = [{"params": fast}, {"params": slow, "lr": settings["lr"] * c["finetune_lr_scale"]}]
    else:
        groups = None
    if net.head.wide is not None:  # the linear EHR term is fitted after the network (see core.models.heads)
        net.head.wide.weight.requires_grad_(False)
    res = fit(net, data, train_idx, val_idx, survival_loss, c_index_score, epochs=settings["epochs"], lr=settings["lr"],
              patience=settings["patience"], label=label, progress_span=(mid if groups else span[0], span[1]),
              modality_dropout=settings["modality_dropout"], param_groups=groups, **common)
    if net.head.wide is not None:
        train_data = _index(data, train_idx)
        pred_tr = predict_batches(net, train_data, device)
        net.set_wide_mean(train_data)  # subjects without features get the train mean (also below, in the fit)
        wide_x = net._wide_input(train_data)  # exactly what the head gets in forward
        assert wide_x is not None
        steps["ehr_linear"] = net.head.fit_wide(torch.as_tensor(pred_tr["raw"]), wide_x, data["time"][train_idx],
                                                data["event"][train_idx], penalty=float(settings["ehr_linear_penalty"]))
    calibration = None
    if net.head.proportional and len(val_idx) and float(data["event"][val_idx].sum()) > 0:
        pred_val = predict_batches(net, _index(data, val_idx), device)
        calibration = net.head.calibrate(torch.as_tensor(pred_val["raw"]), data["time"][val_idx], data["event"][val_idx])
    if head == "cox":
        pred_tr = predict_batches(net, _index(data, train_idx), device)
        net.head.fit_baseline(pred_tr["raw"], tr_time, tr_event)  # type: ignore[operator]
    net.cpu().eval()
    info = {"seed": seed, "val_c_index": res.best_score, "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
            "steps": steps, "calibration": calibration, "warm_start": warm}
    return net, info


def split_metrics(net: torch.nn.Module, data: dict[str, torch.Tensor], cohort: Cohort, edges: np.ndarray) -> dict[str, Any]:
    """Test metrics (``core.evaluate.survival_metrics``) and val/test C-index from cached inputs."""
    from core.evaluate import harrell_c, survival_metrics

    table = cohort.table
    out: dict[str, Any] = {}
    tr = (table["split"] == "train").to_numpy()
    for split in ("val", "test"):
        idx = np.flatnonzero((table["split"] == split).to_numpy())
        if len(idx) == 0 or table["event"].to_numpy()[idx].sum() == 0:
            continue
        pred = predict_batches(net, _index(data, idx), torch.device("cpu"))
        time, event = table["time"].to_numpy()[idx], table["event"].to_numpy()[idx]
        if split == "test":
            args = (edges, pred["survival"], time, event, table["time"].to_numpy()[tr], table["event"].to_numpy()[tr])
            try:
                out["test"] = survival_metrics(*args, n_boot=200, seed=0)
            except ZeroDivisionError:  # lifelines: a bootstrap resample without comparable pairs (tiny test split)
                out["test"] = survival_metrics(*args, n_boot=0, seed=0)
            if "true_risk" in table.columns and table["true_risk"].notna().all():
                out["test"]["oracle_c_index"] = float(harrell_c(time, event.astype(bool), table["true_risk"].to_numpy(float)[idx]))
        else:
            out["val_c_index"] = concordance(time, event, -np.trapezoid(pred["survival"], edges, axis=1))
    return out
