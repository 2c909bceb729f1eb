"""Stage B: one fusion network per seed on the frozen image tokens, its linear EHR term, calibration and metrics."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from core.cohort import Cohort
from core.models.config import ModelConfig
from core.runtime import DistInfo
from core.train.image_path import load_image_path
from core.train.loop import (
    _index,
    c_index_score,
    concordance,
    fit,
    predict_batches,
    survival_loss,
)
from core.train.settings import Progress, feature_dropout


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


def fit_member(cfg: ModelConfig, data: dict[str, torch.Tensor], table: pd.DataFrame, train_idx: np.ndarray,
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
    # features are hidden only where there are features and events (core.train.loop.drop_features), and said so
    readable = {"features_present", "event_mask"} <= set(data)
    hide = feature_dropout(settings.get("feature_dropout", 0.0), fusion) if readable else 0.0
    if net.head.wide is not None:  # the linear EHR term is fitted after the network (see core.models.heads)
        net.head.wide.weight.requires_grad_(False)
    res = fit(net, data, train_idx, val_idx, survival_loss, c_index_score, epochs=settings["epochs"], lr=settings["lr"],
              patience=settings["patience"], label=label, progress_span=(mid if groups else span[0], span[1]),
              modality_dropout=settings["modality_dropout"], feature_dropout=hide, param_groups=groups, **common)
    if hide > 0:
        steps["feature_dropout"] = hide
    # The post-hoc steps below (linear EHR term, calibration, Cox baseline) are small fits on the head: run them on
    # the CPU, where the cached inputs and the head's buffers live (on CUDA they mixed devices and stopped training).
    net.cpu()
    device = torch.device("cpu")
    # the study's detection statistics (ModelConfig.image_linear) join the features in an image + EHR network's linear
    # term (fusion_study_stats), standardised on the train split; otherwise they are the input of the linear members
    # only (core.train.image_linear), held at 0 here so that their weights stay 0
    use_stats = net.study_stats is not None and fusion != "image_only" and bool(settings["fusion_study_stats"])
    if net.ehr_wide_dim or use_stats:
        train_data = _index(data, train_idx)
        pred_tr = predict_batches(net, train_data, device)
        net.set_wide_mean(train_data)  # subjects without features get the train mean (also below, in the fit)
        if use_stats:
            net.set_study_scale(train_data)
        wide_x = net._wide_input(train_data)  # exactly what the head gets in forward
        assert wide_x is not None
        if not use_stats:
            wide_x[:, :net.wide_dim - net.ehr_wide_dim] = 0.0
        raw_tr, t_tr, e_tr = torch.as_tensor(pred_tr["raw"]), data["time"][train_idx], data["event"][train_idx]
        # the image + EHR strategies choose the penalty by cross-validation (ehr_linear_penalty_cv); ehr_only's
        # networks keep the fixed one, measured on the real tables (SurvSet)
        grid = (settings.get("ehr_linear_penalty_cv") or []) if fusion != "ehr_only" else []
        cv = net.head.cv_wide_penalty(raw_tr, wide_x, t_tr, e_tr, grid, seed=seed) if grid else None
        penalty = float(cv["penalty"]) if cv else float(settings["ehr_linear_penalty"])
        steps["ehr_linear"] = {**net.head.fit_wide(raw_tr, wide_x, t_tr, e_tr, penalty=penalty), "penalty": penalty,
                               **({"cv": {k: cv[k] for k in ("folds", "cv_nll")}} if cv else {})}
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
