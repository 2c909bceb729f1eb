"""Time-to-event pretraining of the image encoder on many EHR-derived tasks.

Tasks (``tte_tasks``): for every code, the time from a subject's index time to
the code's first occurrence after the index time. A subject who already had the
code at or before the index time is excluded from that task (incident events
only); a subject without the code after the index is censored at the last event
of its timeline (or its cohort follow-up time, whichever is later). The ``K``
codes with the most incident events in the train split are used (``MEDS_BIRTH``
excluded; codes with fewer than ``min_events`` events dropped).

Model: the image encoder (2D slice CNN or 3D MONAI network, as in training),
token projection with slice position, gated attention pooling, an MLP, and ONE
piecewise-exponential head shared across tasks with per-task outputs
(``PiecewiseExponentialHead(n_outputs=K)``: a log-hazard per task and interval).
The loss is the masked mean of the per-task exact PWE log-likelihoods; early
stopping on the validation loss. The encoder is saved as an encoder folder
(``encoder.safetensors`` + ``config.json`` with the task list), which
``train --image-encoder`` loads as the starting point of the image stage.
"""

from __future__ import annotations

import sys
import time as _time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.cohort import Cohort, load_cohort
from core.errors import InputError
from core.models.config import ModelConfig
from core.runtime import DistInfo, resolve_device, seed_everything
from core.train.image_stage import encode_prepared, image_config, preprocessed_images
from core.train.slice_spacing import working_slices
from core.train.loop import concordance, fit
from core.train.settings import DEFAULTS, Progress


def tte_tasks(cohort: Cohort, k: int = 16, min_events: int = 5) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(codes [K], time [n, K] days, event [n, K], mask [n, K])`` for every subject of the cohort."""
    if cohort.timeline is None:
        raise InputError("timeline", "absent", "pretraining needs a timeline with events after the index time",
                         "add timeline.parquet (MEDS) to the cohort")
    if "index_time" not in cohort.table.columns:
        raise InputError("index_time", "absent", "pretraining needs each subject's index (scan) time",
                         "add an index_time column to cohort.csv")
    tl = cohort.timeline
    idx = cohort.table.set_index("subject_id")["index_time"]
    tl = tl[tl["subject_id"].isin(idx.index)].copy()
    tl["index_time"] = tl["subject_id"].map(idx)
    tl = tl[tl["index_time"].notna() & (tl["code"] != "MEDS_BIRTH")]
    tl["days"] = (tl["time"] - tl["index_time"]).dt.total_seconds() / 86400.0
    before = tl[tl["days"] <= 0].groupby(["subject_id", "code"]).size()
    first_after = tl[tl["days"] > 0].groupby(["subject_id", "code"])["days"].min()
    prior = set(before.index)
    incident = first_after[[key not in prior for key in first_after.index]]
    train = set(cohort.ids("train"))
    counts = incident[[s in train for s in incident.index.get_level_values(0)]].groupby(level=1).size()
    counts = counts[counts >= min_events].sort_values(ascending=False, kind="stable")
    codes = [str(c) for c in counts.index[:k]]
    if not codes:
        raise InputError("timeline", "no post-index codes", f"no code has >= {min_events} incident events after the index time in the train split",
                         "use a cohort whose timeline continues after the scan, or lower --min-events")
    ids = cohort.ids()
    last = tl.groupby("subject_id")["days"].max().reindex(ids).fillna(0.0).to_numpy()
    follow = np.maximum(last, cohort.table.set_index("subject_id").loc[ids, "time"].to_numpy(float))
    n = len(ids)
    time = np.repeat(follow[:, None], len(codes), axis=1)
    event = np.zeros((n, len(codes)))
    mask = np.ones((n, len(codes)))
    pos = {s: i for i, s in enumerate(ids)}
    col = {c: j for j, c in enumerate(codes)}
    for (sid, code), days in incident.items():
        if code in col:
            time[pos[sid], col[code]] = days
            event[pos[sid], col[code]] = 1.0
    for sid, code in prior:
        if code in col and sid in pos:
            mask[pos[sid], col[code]] = 0.0
    mask[time <= 0] = 0.0
    return codes, time, event, mask


class PretrainNet(nn.Module):
    """Image encoder -> pooled vector -> shared multi-task piecewise-exponential head."""

    def __init__(self, icfg: dict[str, Any], dim: int, edges: np.ndarray, n_tasks: int, dropout: float = 0.1) -> None:
        super().__init__()
        from core.models.heads import PiecewiseExponentialHead
        from core.models.net import SurvivalNet

        cfg = {"fusion": "image_only", "head": "discrete", "dim": dim, "dropout": dropout, "edges": list(edges),
               "image": icfg, "ehr": {"sequence": None, "tabular": None, "embedding_dim": None}}
        self.body = SurvivalNet(ModelConfig.from_dict(cfg))
        self.head = PiecewiseExponentialHead(self.body.fusion.out_dim, edges, n_outputs=n_tasks)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        b = dict(batch)
        b["image_tokens"] = encode_prepared(self.body.image_encoder, b.pop("image_preprocessed").float(),  # type: ignore[arg-type]
                                            b["image_token_mask"])
        img, mask, _ = self.body._image_tokens(b, b["image_tokens"].shape[0], b["image_tokens"].device)
        ehr = torch.zeros(img.shape[0], 1, img.shape[-1], device=img.device)
        fo = self.body.fusion(img, mask, ehr, torch.zeros(img.shape[0], 1, device=img.device))
        return self.head(fo.h)


def pretrain_encoder(cohort_dir: Path | str, out: Path | str, *, tasks: int = 16, epochs: int = 15, seed: int = 0,
                     device: str = "auto", image_encoder_kind: str = "2d", min_events: int = 5,
                     progress: Progress | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Pretrain the image encoder on TTE tasks and write an encoder folder; returns the pretraining report."""
    for name, value, default in (("epochs", epochs, 15), ("tasks", tasks, 16)):  # 0 or less: an untrained encoder
        if int(value) < 1:
            raise InputError(name, value, "must be at least 1", f"pass --{name} 1 or more (default {default})")
    from core.models.heads import make_edges
    from core.registry import save_encoder

    settings = {**DEFAULTS, "image": {**DEFAULTS["image"], **((overrides or {}).get("image", {}))}}
    for k, v in (overrides or {}).items():
        if k != "image":
            settings[k] = v
    dev = resolve_device(device)
    seed_everything(seed)
    t0 = _time.perf_counter()
    cohort = load_cohort(Path(cohort_dir), seed=seed)
    if not cohort.has_studies:  # image_config's own message offers encoders pretraining has not
        raise InputError("cohort", str(cohort_dir), "has no study column with CT paths, and pretraining reads CT",
                         "pretrain on a cohort whose cohort.csv gives each subject's study (the app's demo has one)")
    codes, time, event, mask = tte_tasks(cohort, tasks, min_events)
    icfg = image_config(cohort, image_encoder_kind, "image_only", settings)
    if icfg["kind"] not in ("2d", "3d"):
        raise InputError("image_encoder_kind", icfg["kind"], "pretraining needs CT studies", "use a cohort with a study column")
    pre = working_slices(preprocessed_images(cohort, icfg, progress), icfg, cohort)
    tr = (cohort.table["split"] == "train").to_numpy() & (pre["image_present"].numpy() > 0)
    va = (cohort.table["split"] == "val").to_numpy() & (pre["image_present"].numpy() > 0)
    edges = make_edges(time[tr][event[tr] == 1], np.ones(int(event[tr].sum())), 8, extra=())
    edges[-1] = max(edges[-1], float(time.max()))
    torch.manual_seed(seed)
    net = PretrainNet(icfg, settings["dim"], edges, len(codes), settings["dropout"])
    net.head.init_baseline(time[tr].reshape(-1), event[tr].reshape(-1))
    data = dict(pre)
    data.update(task_time=torch.as_tensor(time, dtype=torch.float32), task_event=torch.as_tensor(event, dtype=torch.float32),
                task_mask=torch.as_tensor(mask, dtype=torch.float32))

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raw = model(batch)
        return net.head.nll(raw, batch["task_time"], batch["task_event"], weight=batch["task_mask"])

    def score_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
        total, n = 0.0, 0
        for i in range(0, batch["task_time"].shape[0], 32):
            sub = {k: v[i:i + 32] for k, v in batch.items()}
            total += float(loss_fn(model, sub)) * sub["task_time"].shape[0]
            n += sub["task_time"].shape[0]
        return -total / max(n, 1)

    s = settings["image"]
    res = fit(net, data, np.flatnonzero(tr), np.flatnonzero(va), loss_fn, score_fn, epochs=epochs, lr=float(s["lr"]),
              weight_decay=settings["weight_decay"], batch_size=int(s["batch_size"]), patience=int(s["patience"]),
              seed=seed, device=dev, dist_info=DistInfo(), label="TTE pretraining", progress=progress)
    # per-task validation C-index of the pretrained representation (risk = cumulative hazard at the grid end)
    net.eval()
    with torch.no_grad():
        raw = torch.cat([net({k: v[i:i + 32].to(dev) for k, v in data.items() if k == "image_preprocessed" or k.startswith("image_")})
                         .float().cpu() for i in range(0, len(tr), 32)])
    risk = net.head.cumulative_hazard(raw)[..., -1].numpy()
    task_c = {}
    for j, code in enumerate(codes):
        sel = va & (mask[:, j] > 0)
        if event[sel, j].sum() >= 2:
            task_c[code] = round(concordance(time[sel, j], event[sel, j], risk[sel, j]), 4)
    info = {"tasks": codes, "val_loss": -res.best_score, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
            "val_task_c_index": task_c, "mean_val_task_c_index": float(np.mean(list(task_c.values()))) if task_c else None,
            "seconds": round(_time.perf_counter() - t0, 2), "cohort": str(cohort.root), "seed": seed}
    enc = net.body.image_encoder
    assert enc is not None
    save_encoder(Path(out), enc.state_dict(), icfg, info)
    print(f"pretrained on {len(codes)} TTE tasks; mean val task C-index {info['mean_val_task_c_index']}", file=sys.stderr)
    return info
