"""EHR preprocessing fitted on the train split: event vocabulary, feature scaler, embedding width."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.cohort import Cohort
from core.errors import InputError
from core.models import EHR_ENCODERS


def ehr_config(cohort: Cohort, ehr_encoder: str, max_codes: int, max_events: int, *,
               log_skewed: bool = False) -> dict[str, Any]:
    """Fit the EHR preprocessing on the train split; returns the ``ehr`` part of config.json.

    ``log_skewed``: strongly right-skewed non-negative feature columns and timeline values (per code) are read
    as ``log1p`` before scaling (``core.models.ehr_tabular.is_skewed``). ``ehr_encoder`` "summary": the events and
    the timeline's summary as the tabular features (``core.models.ehr_summary``; features.csv is not read)."""
    from core.models.ehr_sequence import EventVocabulary
    from core.models.ehr_tabular import TabularScaler

    if ehr_encoder not in EHR_ENCODERS:
        raise InputError("ehr_encoder", ehr_encoder, "unknown EHR encoder", f"use one of {', '.join(EHR_ENCODERS)}")
    train_ids = cohort.ids("train")
    use = {"sequence": cohort.timeline is not None, "tabular": cohort.features is not None,
           "embedding": cohort.ehr_embeddings is not None}
    # "summary": the events, and the timeline's summary as the tabular features (core.models.ehr_summary)
    summary = ehr_encoder == "summary"
    if summary:
        if cohort.timeline is None:
            raise InputError("ehr_encoder", ehr_encoder, "the cohort has no timeline to summarise",
                             "add timeline.parquet (or .csv, .xlsx) to the cohort or use --ehr-encoder auto")
        use = {"sequence": True, "tabular": True, "embedding": False}
    elif ehr_encoder not in ("auto", "none"):
        if not use[ehr_encoder]:
            need = {"sequence": "timeline.parquet, .csv or .xlsx", "tabular": "features.csv",
                    "embedding": "ehr_embeddings.npy or .parquet"}[ehr_encoder]
            raise InputError("ehr_encoder", ehr_encoder, "the cohort has no such EHR data", f"add {need} to the cohort or use --ehr-encoder auto")
        use = {k: k == ehr_encoder for k in use}
    if ehr_encoder == "none":
        use = {k: False for k in use}
    cfg: dict[str, Any] = {"sequence": None, "tabular": None, "embedding_dim": None, "layers": 1}
    if use["sequence"]:
        vocab = EventVocabulary.fit([cohort.events(s) for s in train_ids], max_codes=max_codes, max_events=max_events,
                                      log_skewed=log_skewed)
        cfg["sequence"] = vocab.to_json()
    if use["tabular"] and not summary:
        assert cohort.features is not None
        scaler = TabularScaler.fit(cohort.features.reindex(train_ids), log_skewed=log_skewed)
        cfg["tabular"] = scaler.to_json()
    elif use["tabular"]:
        from core.models.ehr_summary import SOURCE, codes_for, fit_recipe, summary_frame

        n_events = int(cohort.table.set_index("subject_id").loc[train_ids, "event"].sum())
        recipe = fit_recipe((cohort.events(s) for s in train_ids), max_codes=codes_for(n_events))
        scaler = TabularScaler.fit(summary_frame(cohort, train_ids, recipe), log_skewed=log_skewed)
        cfg["tabular"] = {**scaler.to_json(), "source": SOURCE, "summary": recipe}
    if use["embedding"]:
        assert cohort.ehr_embeddings is not None
        cfg["embedding_dim"] = int(cohort.ehr_embeddings.shape[1])
    return cfg


def linear_members(members: list[torch.nn.Module], data: dict[str, torch.Tensor], train_idx: np.ndarray, *,
                   penalty: float, penalty_grid: list[float] | None = None,
                   seed: int = 0) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """ehr_only on tabular features: a penalised linear model beside each trained network, as ensemble members.

    For each member: the network drops the linear EHR term fitted on top of it (on real tables that term,
    fitted on the split the network had already fitted, pulled ehr_only down: docs/BENCHMARKS.md, SurvSet),
    and a copy of it whose network weights to the head are 0 (per-interval baseline kept) gets that term
    fitted alone by ridge-penalised maximum likelihood on the train split (``SurvivalHead.fit_wide``,
    ``penalty`` on the mean NLL, features standardised): a discrete-time Cox-like model of the scaled
    features and missing indicators. The ensemble's curve is the mean of the networks' and the linear
    models' curves (a linear and a non-linear model averaged), its band their range. Members are changed
    in place; the copies have the same architecture, so the model saves and loads as any ensemble. Only
    full (per-interval) discrete and piecewise-exponential heads with a linear EHR term; [] otherwise.
    With a non-empty ``penalty_grid`` each linear member's penalty is chosen from it by 5-fold cross-validation
    on the train split (``SurvivalHead.cv_wide_penalty``, folds drawn with ``seed``) instead of ``penalty``.
    """
    import copy

    from core.train.loop import _index, predict_batches

    out: list[tuple[torch.nn.Module, dict[str, Any]]] = []
    train = _index(data, train_idx)
    for net in members:
        head = getattr(net, "head", None)
        if head is None or head.wide is None or head.proportional or head.kind not in ("discrete", "pwe"):
            return []
        with torch.no_grad():
            head.wide.weight.zero_()
        lin = copy.deepcopy(net)
        with torch.no_grad():
            lin.head.linear.weight.zero_()
        raw = torch.as_tensor(predict_batches(lin, train, torch.device("cpu"))["raw"])
        x, t, e = lin._wide_input(train), data["time"][train_idx], data["event"][train_idx]
        cv = lin.head.cv_wide_penalty(raw, x, t, e, penalty_grid, seed=seed) if penalty_grid else None
        chosen = float(cv["penalty"]) if cv else penalty
        fit = lin.head.fit_wide(raw, x, t, e, penalty=chosen)
        lin.eval()
        info = {"linear": True, "penalty": chosen, "nll": fit["nll_after"], "kept": fit["kept"]}
        out.append((lin, info if cv is None else {**info, "cv": {"folds": cv["folds"], "cv_nll": cv["cv_nll"]}}))
    return out


def export_forest(rsf: Any, grid: np.ndarray) -> dict[str, torch.Tensor]:
    """A fitted scikit-survival ``RandomSurvivalForest`` as ``core.models.forest.SurvivalForest`` buffers.

    Each tree's children, split features and thresholds are concatenated with global node ids; each leaf's
    Kaplan-Meier survival (``tree_.value[..., 1]`` on the forest's ``unique_times_``) is read at ``grid`` as a step
    function (the value at the last time <= the grid point, 1 before the first), so the forest's curve at the grid
    equals ``rsf.predict_survival_function`` evaluated there (tests/test_forest.py).
    """
    times = np.asarray(rsf.unique_times_, dtype=np.float64)
    col = np.searchsorted(times, np.asarray(grid, dtype=np.float64), side="right") - 1
    left, right, feature, threshold, leaf_row, leaf_surv, roots = [], [], [], [], [], [], []
    offset, n_leaves = 0, 0
    for est in rsf.estimators_:
        tree = est.tree_
        lc = tree.children_left.astype(np.int64)
        is_leaf = lc < 0
        roots.append(offset)
        left.append(np.where(is_leaf, -1, lc + offset))
        right.append(np.where(is_leaf, -1, tree.children_right.astype(np.int64) + offset))
        feature.append(np.where(is_leaf, 0, tree.feature))
        threshold.append(np.where(is_leaf, 0.0, tree.threshold))
        rows = np.full(tree.node_count, -1, dtype=np.int64)
        rows[is_leaf] = n_leaves + np.arange(int(is_leaf.sum()))
        leaf_row.append(rows)
        surv = np.asarray(tree.value)[is_leaf][:, :, 1]
        leaf_surv.append(np.where(col[None, :] < 0, 1.0, surv[:, np.clip(col, 0, None)]))
        offset += tree.node_count
        n_leaves += int(is_leaf.sum())
    return {"left": torch.as_tensor(np.concatenate(left), dtype=torch.int32),
            "right": torch.as_tensor(np.concatenate(right), dtype=torch.int32),
            "feature": torch.as_tensor(np.concatenate(feature), dtype=torch.int32),
            "threshold": torch.as_tensor(np.concatenate(threshold), dtype=torch.float64),
            "roots": torch.as_tensor(roots, dtype=torch.int64),
            "leaf_row": torch.as_tensor(np.concatenate(leaf_row), dtype=torch.int32),
            "leaf_survival": torch.as_tensor(np.concatenate(leaf_surv), dtype=torch.float32)}


def forest_member(data: dict[str, torch.Tensor], train_idx: np.ndarray, grid: np.ndarray, *, seed: int, trees: int,
                  min_leaf: int, weight: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """ehr_only on tabular features: a random survival forest of what the tabular encoder sees, fitted on train.

    scikit-survival ``RandomSurvivalForest(trees, min_samples_leaf=min_leaf, max_features="sqrt")`` on the scaled
    features and missing indicators of the train split, exported by :func:`export_forest`. The ensemble's curve
    becomes ``(1 - weight) * mean(networks, linear members) + weight * forest`` (``core.models.net.EnsembleNet``);
    a fixed weight, not chosen on val, nor per cohort by cross-validation on train, which did not beat it on 113
    SurvSet runs (docs/BENCHMARKS.md, SurvSet). Returns the buffers and config.json's ``forest`` entry (array sizes,
    weight, settings).
    """
    import time as _time

    from sksurv.ensemble import RandomSurvivalForest
    from sksurv.util import Surv

    t0 = _time.perf_counter()
    x = torch.cat([data["features"].float(), data["feature_missing"].float()], dim=-1).numpy()[train_idx]
    t = data["time"].numpy()[train_idx].astype(np.float64)
    e = data["event"].numpy()[train_idx] > 0
    rsf = RandomSurvivalForest(n_estimators=int(trees), min_samples_leaf=int(min_leaf), max_features="sqrt",
                               n_jobs=1, random_state=int(seed)).fit(x, Surv.from_arrays(e, t))
    state = export_forest(rsf, grid)
    cfg = {"weight": float(weight), "trees": int(trees), "min_leaf": int(min_leaf), "nodes": int(state["left"].numel()),
           "leaves": int(state["leaf_survival"].shape[0]), "times": int(state["leaf_survival"].shape[1])}
    size = sum(v.numel() * v.element_size() for v in state.values())
    return state, {"config": cfg, "seconds": round(_time.perf_counter() - t0, 2), "mb": round(size / 1e6, 3)}
