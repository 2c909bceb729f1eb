"""Evaluate a trained model folder on one split of a cohort folder.

Survival curves come from ``core.predict.predict_cohort`` (batch prediction,
see docs/CONTRACTS.md); the training split of the same cohort gives the
censoring distribution for the IPCW metrics (the evaluated split itself when
the cohort has no training subjects). torch is imported only through the model
modules, when this function runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import InputError
from core.evaluate.metrics import HORIZONS, harrell_c, survival_metrics


def evaluate_model(model_dir: Path | str, cohort_dir: Path | str, split: str = "test",
                   horizons: Sequence[float] = HORIZONS, n_boot: int = 200, seed: int = 0,
                   device: str = "cpu") -> dict:
    """The BRIEF's evaluate JSON: ``c_index``, ``c_index_ci``, ``uno_c``, ``td_auc``, ``ibs``, ``n``, ``events``,
    plus ``calibration``, ``uno_c_ci``, ``ibs_ci``, ``split``, ``fusion`` and, when cohort.csv has
    ``true_risk``, ``oracle_c_index`` (Harrell C of the true risk on the same subjects)."""
    from core.cohort import load_cohort

    cohort = load_cohort(Path(cohort_dir))
    ids = cohort.ids(split)
    if not ids:
        present = sorted(cohort.table["split"].unique())
        raise InputError("split", split, f"has no subjects in {Path(cohort_dir) / 'cohort.csv'}",
                         f"use one of the splits present: {', '.join(present)}")
    from core.predict import predict_cohort
    from core.registry import load_model

    model = load_model(Path(model_dir), device=device)
    times, surv = predict_cohort(model, cohort, ids)
    table = cohort.table.set_index("subject_id")
    rows = table.loc[ids]
    train_ids = cohort.ids("train") or ids
    train = table.loc[train_ids]
    out = survival_metrics(np.asarray(times), np.asarray(surv), rows["time"].to_numpy(), rows["event"].to_numpy(),
                           train["time"].to_numpy(), train["event"].to_numpy(), horizons=horizons,
                           n_boot=n_boot, seed=seed, full_ci=True)
    out["split"] = split
    out["fusion"] = model.config.get("fusion")
    if "true_risk" in rows.columns and rows["true_risk"].notna().all():
        out["oracle_c_index"] = harrell_c(rows["time"].to_numpy(), rows["event"].to_numpy().astype(bool),
                                          rows["true_risk"].to_numpy(dtype=float))
    return out
