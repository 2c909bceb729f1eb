"""Reference curves for a case: the cohort's Kaplan-Meier curve and the risk groups a model makes of it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from core import disk_cache
from core.cohort import Cohort
from core.errors import InputError

if TYPE_CHECKING:
    from core.evaluate.conformal import ConformalCalibration
    from core.models.types import CasePrediction
    from core.registry import LoadedModel

ModelOrLoader = Union["LoadedModel", Callable[[], "LoadedModel"]]  # a loader is called only when predictions are needed


def _model(model: ModelOrLoader) -> LoadedModel:
    return model() if callable(model) and not hasattr(model, "predict_case") else model  # type: ignore[return-value]


def reference_ids(cohort: Cohort) -> list[str] | None:
    """The patients the reference curves are drawn from: the held-out test split when there is one.

    Held-out patients show how the model separates patients it was not trained
    on, and predicting 160 demo patients instead of 800 keeps the first view fast.
    """
    test = cohort.ids("test")
    return list(test) if test else None


def _cached_predictions(model: ModelOrLoader, cohort: Cohort, ids: list[str], cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``predict_cohort`` of a cohort, kept in ``cache`` (an .npz) for later server starts.

    The file is reused only for the same subject ids. It lives in the model's folder: the shipped demo models
    (synthetic patients), or a user's model in that user's own folder (their cohort's test split). ``model`` may be a
    loader, called only when the file cannot be used.
    """
    from core.predict import predict_cohort

    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if saved["ids"].tolist() == ids:
                return saved["times"], saved["surv"]
    times, surv = predict_cohort(_model(model), cohort, ids)
    if cache is not None:
        tmp = disk_cache.partial_name(cache, ".npz")  # sessions that open one model at once write it together
        np.savez(tmp, ids=np.asarray(ids, dtype=str), times=np.asarray(times, dtype=float),
                 surv=np.asarray(surv, dtype=float))
        tmp.replace(cache)
    return np.asarray(times, dtype=float), np.asarray(surv, dtype=float)


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=value["dtype"])
        if "__tuple__" in value:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


CURVES_VERSION = "2"  # 2: numbers at risk per risk group (at_risk, at_risk_days)


def reference_curves(model: ModelOrLoader, cohort: Cohort, ids: Sequence[str] | None = None, groups: int = 3,
                     cache: Path | None = None) -> dict:
    """Cohort Kaplan-Meier and the KM curves of predicted risk groups under ``model``.

    Returns ``{"cohort_km": (t, s, lo, hi), "groups": [...km_by_risk_group groups...],
    "logrank_p", "at_risk_days", "n", "events"}``. Risk is ``core.evaluate.risk_from_survival`` of the
    model's curves, the same score :func:`risk_group_of` uses for one case. ``cache``
    (a demo model's folder, or a user's model in the user's own folder) keeps the predictions on disk between server starts, and the curves beside them
    (``reference_curves.json``, reused only for the same predictions, outcomes and number of groups), so a
    later start neither loads the model nor imports the survival libraries.
    """
    chosen = list(ids) if ids is not None else cohort.ids()
    times, surv = _cached_predictions(model, cohort, chosen, cache)
    table = cohort.table.set_index("subject_id").loc[chosen]
    time = table["time"].to_numpy(dtype=float)
    event = table["event"].to_numpy(dtype=int)
    h = hashlib.sha256(f"{CURVES_VERSION}:{groups}:{chosen}".encode())
    for arr in (times, surv, time, event):
        h.update(np.ascontiguousarray(arr, dtype=float).tobytes())
    digest = h.hexdigest()
    curves = None if cache is None else cache.with_name("reference_curves.json")
    if curves is not None and curves.is_file():
        try:
            saved = json.loads(curves.read_text())
            if saved.get("key") == digest:
                return _from_json(saved["curves"])
        except ValueError:  # a torn file: compute again
            pass
    from core.evaluate import kaplan_meier, km_by_risk_group, risk_from_survival

    risk = risk_from_survival(np.asarray(times, dtype=float), np.asarray(surv, dtype=float))
    by_group = km_by_risk_group(risk, time, event, groups=groups)
    out = {
        "cohort_km": kaplan_meier(time, event),
        "groups": by_group["groups"],
        "logrank_p": by_group["logrank_p"],
        "at_risk_days": by_group["at_risk_days"],
        "n": len(chosen),
        "events": int(event.sum()),
        "risk": risk,
    }
    if curves is not None:
        disk_cache.write_bytes_atomic(curves, json.dumps({"key": digest, "curves": _to_json(out)}).encode())
    return out


def prediction_risk(prediction: CasePrediction) -> float:
    """The scalar risk the risk groups are cut on (``core.evaluate.risk_from_survival``) of one case."""
    from core.evaluate import risk_from_survival

    times = np.asarray(prediction.times, dtype=float)
    surv = np.asarray(prediction.survival, dtype=float)[None, :]
    return float(risk_from_survival(times, surv)[0])


def risk_group_of(prediction: CasePrediction, groups: Sequence[dict], risk: float | None = None) -> dict:
    """The risk group (from :func:`reference_curves`) whose risk range holds this case.

    Ranges are contiguous in sorted order, so the case falls into the first group
    whose upper bound is at least its risk (the last group above every bound).
    """
    if not groups:
        raise InputError("groups", "[]", "no risk groups", "compute reference curves on a cohort first")
    if risk is None:
        risk = prediction_risk(prediction)
    for group in groups:
        if risk <= group["risk_range"][1]:
            return group
    return groups[-1]


def conformal_calibration(model: ModelOrLoader, cohort: Cohort, alpha: float = 0.1, cache: Path | None = None,
                          horizons: Sequence[float] | None = None) -> ConformalCalibration | None:
    """The conformal lower predictive bound of ``model`` calibrated on ``cohort``'s val split (None without one).

    A case's bound (``core.evaluate.conformal.apply_lower_bound``) is L_t days (capped at the horizon t): at least
    ``1 - alpha`` of patients exchangeable with the val patients have their event no earlier than their bound, with
    censoring independent of the event given the covariates (Candes, Lei & Ren 2023). The guarantee is marginal
    (over such patients), not conditional on one patient's inputs. Horizons outside the val or train follow-up are left out.
    """
    from core.evaluate.conformal import calibrate_lower_bound
    from core.evaluate.coverage import horizon_usable
    from core.horizons import HORIZONS

    val_ids = cohort.ids("val")
    if len(val_ids) < 2:
        return None
    times, surv = _cached_predictions(model, cohort, list(val_ids), cache)
    table = cohort.table.set_index("subject_id")
    val, train = table.loc[val_ids], table.loc[cohort.ids("train") or val_ids]
    tt, te = train["time"].to_numpy(float), train["event"].to_numpy(int)
    hs = [h for h in (horizons or HORIZONS) if horizon_usable(h, val["time"].to_numpy(float), float(times[-1]), tt)]
    if not hs:
        return None
    return calibrate_lower_bound(times, surv, val["time"].to_numpy(float), val["event"].to_numpy(int), hs, tt, te, alpha)


def subgroups(model: ModelOrLoader, cohort: Cohort, column: str, ids: Sequence[str] | None = None,
              cache: Path | None = None) -> dict:
    """C-index and calibration at the horizons per group of ``column`` (``core.evaluate.subgroups``), from the
    same predictions as the reference curves (``cache``)."""
    from core.evaluate.subgroups import subgroup_table
    from core.horizons import HORIZONS

    chosen = list(ids) if ids is not None else cohort.ids()
    values = cohort.column_values(column, chosen)  # a bad column fails before any prediction
    times, surv = _cached_predictions(model, cohort, chosen, cache)
    table = cohort.table.set_index("subject_id")
    rows, train = table.loc[chosen], table.loc[cohort.ids("train") or chosen]
    return subgroup_table(times, surv, rows["time"].to_numpy(float), rows["event"].to_numpy(int),
                          train["time"].to_numpy(float), train["event"].to_numpy(int), values, HORIZONS,
                          column=column, n_boot=100)
