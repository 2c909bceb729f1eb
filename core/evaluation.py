"""Evaluate a trained model folder on one split of a cohort folder.

Survival curves come from ``core.predict.predict_cohort`` (batch prediction,
see docs/CONTRACTS.md); the training split of the same cohort gives the
censoring distribution for the IPCW metrics (the evaluated split itself when
the cohort has no training subjects, and always with ``split="all"``: every subject of a cohort the model never saw,
an external validation). torch is imported only through the model
modules, when this function runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.evaluate.conformal import apply_lower_bound, calibrate_lower_bound
from core.evaluate.coverage import ALPHA, band_coverage, horizon_usable, lpb_coverage
from core.evaluate.decision import decision_curve
from core.evaluate.metrics import HORIZONS, harrell_c, survival_metrics
from core.evaluate.subgroups import subgroup_table

ALL_SPLITS = "all"  # evaluate every subject: external validation on a cohort the model never saw


def evaluate_model(model_dir: Path | str, cohort_dir: Path | str, split: str = "test",
                   horizons: Sequence[float] = HORIZONS, n_boot: int = 200, seed: int = 0,
                   device: str = "cpu", *, alpha: float = ALPHA, subgroup: str | None = None,
                   band: bool = False, risk_groups: int = 0, keep_risk: bool = False,
                   progress: Callable[[float, str], None] | None = None) -> dict:
    """The ``evaluate --json`` object: ``c_index``, ``c_index_ci``, ``uno_c``, ``td_auc``, ``ibs``, ``n``, ``events``,
    plus ``calibration``, ``uno_c_ci``, ``ibs_ci``, ``split``, ``fusion`` and, when cohort.csv has
    ``true_risk``, ``oracle_c_index`` (Harrell C of the true risk on the same subjects).

    Also ``coverage`` (IPCW coverage of the 1 - alpha lower bound on T read off the model's band,
    :func:`core.evaluate.coverage.band_coverage`; without ``band`` only the point curve's and
    ``coverage["band"]`` is None; ``band`` costs one ``predict_case`` per subject),
    ``conformal`` (the conformal bound calibrated on the val split and its coverage here,
    :mod:`core.evaluate.conformal`; None without a val split), ``decision_curve``
    (:func:`core.evaluate.decision.decision_curve`) and, with ``subgroup`` (a column of cohort.csv
    or features.csv), ``subgroups`` (:func:`core.evaluate.subgroups.subgroup_table`). ``ct_profile``
    (:func:`core.predict.split_image_reads`) counts the split's studies outside the model's training profile
    and those ``predict`` would withhold; they are read as they are here. ``timeline_codes``
    (:func:`core.ehr_read.split_timeline_reads`) counts the split's timelines whose codes the model mostly does not
    know (None for a model that reads no events); ``features`` (:func:`core.ehr_read.split_feature_reads`) the
    model's feature columns that features.csv lacks and the subjects without a row (None without features).
    ``unread`` counts the subjects of whom the model read nothing (no study, timeline or features it can read); a
    model that read nothing of any subject is refused (InputError), not scored as a C of 0.5.
    ``risk_groups`` > 1 adds ``risk_groups`` (:func:`core.evaluate.km_by_risk_group` of the evaluated subjects:
    Kaplan-Meier curves of that many groups by predicted risk, and the log-rank p). ``keep_risk`` adds
    ``subject_risk`` ({"ids", "risk", "time", "event"}: each subject's risk score, minus the restricted mean survival
    time, as the C-index ranks them, and its outcome), which :func:`paired_fusion_gain` compares between models and
    :func:`core.evaluate.patient_pairs.patient_table` reads patient by patient. ``progress(fraction, message)``
    follows the predictions."""
    from core.cohort import load_cohort

    cohort = load_cohort(Path(cohort_dir), for_training=False)  # a cohort to validate on needs no train split
    ids = cohort.ids(None if split == ALL_SPLITS else split)
    if not ids:
        present = sorted(cohort.table["split"].unique())
        raise InputError("split", split, f"has no subjects in {Path(cohort_dir) / 'cohort.csv'}",
                         f"use one of the splits present ({', '.join(present)}) or {ALL_SPLITS}")
    table = cohort.table.set_index("subject_id")
    rows = table.loc[ids]
    if rows["time"].isna().any():
        raise InputError("time", "absent", f"{Path(cohort_dir) / 'cohort.csv'} gives no outcomes to evaluate against",
                         "add the columns time (days from index; or index_time and end_time) and event (1 / 0)")
    if not rows["event"].any():
        raise InputError("event", "all 0 in " + ("every subject" if split == ALL_SPLITS else f"the {split} split"),
                         "no subject has an observed event, so no C-index "
                         "can be computed", "check the event coding (1 = event) or evaluate a split with events")
    values = cohort.column_values(subgroup, ids) if subgroup else None  # bad column: fail before the slow part
    if values is not None and (kinds := len({v for v in values if v is not None and v == v})) < 2:  # NaN != NaN
        raise InputError("subgroup", subgroup, f"has {'one value' if kinds else 'no value'} in the "
                         f"{'cohort' if split == ALL_SPLITS else split + ' split'}: no groups to compare",
                         "pick a column whose values differ between patients")
    from core.ehr_read import split_feature_reads, split_timeline_reads
    from core.predict import predict_cohort, split_image_reads
    from core.registry import load_model

    model = load_model(Path(model_dir), device=device)
    unread: list[str] = []
    times, surv = predict_cohort(model, cohort, ids, progress=progress, unread=unread)
    if ids and len(unread) == len(ids):  # every curve the training average: a C of 0.5 that says nothing
        raise InputError("model", model.fusion, f"read nothing of any of the {len(ids)} subjects evaluated (no study, "
                         "timeline or features it can read)", "evaluate a model that reads what this cohort holds "
                         "(ehr_only for a cohort without CT), or add the data this model reads")
    train_ids = ids if split == ALL_SPLITS else cohort.ids("train") or ids  # IPCW: the training site's censoring
    train = table.loc[train_ids]
    out = survival_metrics(np.asarray(times), np.asarray(surv), rows["time"].to_numpy(), rows["event"].to_numpy(),
                           train["time"].to_numpy(), train["event"].to_numpy(), horizons=horizons,
                           n_boot=n_boot, seed=seed, full_ci=True)
    out["split"] = split
    out["fusion"] = model.fusion
    out["model_fingerprint"] = model_fingerprint(model_dir)  # which weights: `pool` pools one model's sites only
    out["unread"] = len(unread)  # subjects of whom the model read nothing: the training average
    out["ct_profile"] = split_image_reads(model, cohort, ids)
    out["timeline_codes"] = split_timeline_reads(model, cohort, ids)
    out["features"] = split_feature_reads(model, cohort, ids)
    out["notes"] = evaluation_notes(model, cohort, split, ids)
    if "true_risk" in rows.columns and rows["true_risk"].notna().all():
        out["oracle_c_index"] = harrell_c(rows["time"].to_numpy(), rows["event"].to_numpy().astype(bool),
                                          rows["true_risk"].to_numpy(dtype=float))
    time, event = rows["time"].to_numpy(), rows["event"].to_numpy()
    tt, te = train["time"].to_numpy(), train["event"].to_numpy()
    lower = band_lower_edges(model, cohort, ids, np.asarray(times)) if band else None
    out["coverage"] = band_coverage(times, surv, lower, time, event, tt, te, horizons, alpha)
    out["coverage"]["band"] = getattr(model, "uncertainty", "predict_case band") if band else None
    out["conformal"] = conformal_report(model, cohort, split, np.asarray(times), np.asarray(surv), time, event,
                                        tt, te, horizons, alpha)
    if split == ALL_SPLITS:  # the censoring weights G came from the evaluated cohort: the texts say so
        out["coverage"]["definition"] = out["coverage"]["definition"].replace("of the train split", "of this cohort")
        if (out["conformal"] or {}).get("calibration"):
            cal = out["conformal"]["calibration"]
            cal["method"] = cal["method"].replace("of the train split", "of this cohort")
    out["decision_curve"] = decision_curve(times, surv, time, event, horizons)
    from core.evaluate import km_by_risk_group, risk_from_survival

    risk = risk_from_survival(np.asarray(times, dtype=float), np.asarray(surv))
    out["notes"] += [note] if (note := flat_risk_note(times, surv)) else []
    if risk_groups > 1:
        out["risk_groups"] = km_by_risk_group(risk, time, event, groups=risk_groups)
    if keep_risk:
        out["subject_risk"] = {"ids": [str(i) for i in ids], "risk": [float(r) for r in risk],
                               "time": [float(t) for t in time], "event": [int(e) for e in event]}
    if values is not None:
        out["subgroups"] = subgroup_table(times, surv, time, event, tt, te, values, horizons, column=str(subgroup),
                                          n_boot=n_boot, seed=seed)
    return out


def flat_risk_note(times: Any, surv: Any, horizon: float = 365.0) -> str | None:
    """A note when the model gives nearly every patient the same risk at ``horizon`` (the middle 90 % of the risks
    within 1 percentage point): it learned little from its inputs, and its C-index and calibration slopes rest on
    differences of hundredths of a percent.

    >>> grid = np.array([0.0, 365.0, 730.0]); s = np.tile([1.0, 0.68, 0.5], (20, 1)) + np.linspace(0, 1e-3, 20)[:, None]
    >>> flat_risk_note(grid, s)[:80]
    'the model gives nearly every patient the same risk: 31.91-31.99 % at 1 year for '
    """
    from core.horizons import horizon_label

    t, s = np.asarray(times, dtype=float), np.asarray(surv, dtype=float)
    if s.ndim != 2 or s.shape[0] < 10 or t.size == 0 or t[-1] < horizon:
        return None
    r = 1.0 - s[:, min(int(np.searchsorted(t, horizon)), t.size - 1)]
    lo, hi = (float(q) for q in np.quantile(r, [0.05, 0.95]))
    if hi - lo >= 0.01:
        return None
    return (f"the model gives nearly every patient the same risk: {100 * lo:.2f}-{100 * hi:.2f} % at "
            f"{horizon_label(horizon)} for 90 % of the {s.shape[0]} patients. It learned little from these inputs: "
            "its C-index ranks differences of hundredths of a percent and its calibration slopes say nothing "
            "(it needs more patients with events, or inputs that tell them apart)")


TRAINING_COHORT = "this is the cohort the model was trained on"  # a note's start (core.validation_report reads it)


def evaluation_notes(model: Any, cohort: Any, split: str, ids: list[str]) -> list[str]:
    """What the evaluated subjects give the model, in words: the automatic split when cohort.csv has none (its test
    split is then a drawn fifth of the cohort, not the whole of another site's), and the subjects a modality the
    model reads leaves out (``core.cohort_notes.coverage_notes``: no timeline row at all, no study)."""
    from core.cohort_notes import FEW_EVENTS, coverage_notes

    notes = []
    own = (getattr(model, "metrics", None) or {}).get("cohort_outcomes") or {}
    if split != "test" and own.get("digest") and own["digest"] == cohort.outcomes_digest():
        notes.append(f"{TRAINING_COHORT}: the same {own.get('subjects')} patients and outcomes. "
                     + ("Every patient includes those it was fitted and stopped on, so this is not an external "
                        "validation and its numbers are optimistic; its test split is the held-out part"
                        if split == ALL_SPLITS else f"Its {split} split holds patients it was fitted or stopped on"))
    events = int(cohort.table.set_index("subject_id").loc[ids, "event"].sum()) if ids else 0
    if 0 < events < FEW_EVENTS:  # none: no metric at all (refused before this)
        notes.append(f"{events} event{'s' if events > 1 else ''} in the {len(ids)} subjects evaluated: the C-index rests "
                     "on a few comparable pairs and says little (its interval shows how little)")
    if cohort.table.attrs.get("auto_split") and split != ALL_SPLITS:
        notes.append(f"cohort.csv has no split column: these are the {len(ids)} subjects of the automatic 60/20/20 "
                     f"split's {split} part (the ones train held out of such a cohort); to validate on every subject "
                     f"of another site's cohort, pass --split {ALL_SPLITS}")
    ehr = model.config.ehr
    return notes + coverage_notes(cohort, timeline=bool(ehr.sequence or ehr.summarises_timeline),
                                  studies=bool(model.config.image.voxels), ids=ids)


def band_lower_edges(model: Any, cohort: Any, ids: list[str], times: np.ndarray) -> np.ndarray:
    """Lower edge of each subject's band from ``model.predict_case`` (ensemble range or MC dropout), [n, T]."""
    rows = []
    for sid in ids:
        pred = model.predict_case(model.case_inputs(cohort, sid))
        rows.append(np.interp(times, np.asarray(pred.times, dtype=float), np.asarray(pred.lower, dtype=float)))
    return np.minimum.accumulate(np.clip(np.stack(rows), 0.0, 1.0), axis=1)


def conformal_report(model: Any, cohort: Any, split: str, times: np.ndarray, surv: np.ndarray, time: np.ndarray,
                     event: np.ndarray, train_time: np.ndarray, train_event: np.ndarray, horizons: Sequence[float],
                     alpha: float) -> dict | None:
    """Calibrate the conformal lower bound on the val split and measure its coverage on the evaluated subjects."""
    from core.predict import predict_cohort

    val_ids = cohort.ids("val")
    if len(val_ids) < 2:
        return None
    val = cohort.table.set_index("subject_id").loc[val_ids]
    vt, ve = val["time"].to_numpy(), val["event"].to_numpy()
    hs = [h for h in horizons if horizon_usable(h, vt, float(times[-1]), train_time)
          and horizon_usable(h, time, float(times[-1]), train_time)]
    report: dict = {"calibrated_on": "val", "in_sample": split in ("val", ALL_SPLITS), "calibration": None, "horizons": {}}
    for h in horizons:
        report["horizons"][int(h) if float(h).is_integer() else h] = None
    if not hs:
        return report
    _, val_surv = predict_cohort(model, cohort, val_ids)
    cal = calibrate_lower_bound(times, np.asarray(val_surv), vt, ve, hs, train_time, train_event, alpha)
    report["calibration"] = cal.to_dict()
    bounds = apply_lower_bound(times, surv, cal)
    for k, h in enumerate(cal.horizons):
        res = lpb_coverage(time, event, bounds[:, k], h, train_time, train_event)
        res["median_bound"] = float(np.median(bounds[:, k]))
        report["horizons"][int(h) if float(h).is_integer() else h] = res
    return report


UNIMODAL = ("image_only", "ehr_only")


def paired_fusion_gain(results: dict[str, dict], cohort_dir: Path | str, n_boot: int = 1000) -> dict | None:
    """The best fusion against the best single-modality model among ``results`` ({name: :func:`evaluate_model`
    result with ``keep_risk``}, models of one cohort evaluated on one split), by Harrell's C on the same subjects:
    ``{"fusion", "unimodal", "n", "delta_c", "ci", "p_value", "c_fusion", "c_unimodal", "tied"}`` from a paired bootstrap
    (:func:`core.evaluate.paired_bootstrap`: the intervals of two models' own C-indices overlap even when one is
    better on nearly every resample). None when the results lack a fusion, a single-modality model, their
    per-subject risks or common subjects."""
    ok = {n: m for n, m in results.items() if "error" not in m and m.get("subject_risk") and m.get("c_index") is not None}
    uni = [n for n, m in ok.items() if m.get("fusion") in UNIMODAL]
    fus = [n for n, m in ok.items() if m.get("fusion") not in UNIMODAL]
    if not uni or not fus:
        return None
    best_u = max(uni, key=lambda n: ok[n]["c_index"])
    best_f = max(fus, key=lambda n: ok[n]["c_index"])
    risk_f, risk_u = (dict(zip(ok[n]["subject_risk"]["ids"], ok[n]["subject_risk"]["risk"])) for n in (best_f, best_u))
    res = paired_c(risk_f, risk_u, cohort_dir, n_boot)
    return None if res is None else {"fusion": best_f, "unimodal": best_u, "n": res["n"], "delta_c": res["delta_c"],
                                     "ci": res["ci"], "p_value": res["p_value"], "c_fusion": res["c_a"],
                                     "c_unimodal": res["c_b"], "tied": res["tied"]}


def paired_c(risk_a: dict[str, float], risk_b: dict[str, float], cohort_dir: Path | str, n_boot: int = 1000) -> dict | None:
    """:func:`core.evaluate.paired_bootstrap` of two models' risks ({subject_id: risk}) on their common subjects,
    against the outcomes in ``cohort_dir``'s cohort.csv, plus ``n``; None without common subjects or events."""
    from core.cohort import load_cohort
    from core.evaluate import paired_bootstrap

    ids = [i for i in risk_a if i in risk_b]
    if not ids:
        return None
    table = load_cohort(Path(cohort_dir), for_training=False).table.set_index("subject_id").loc[ids]
    if not table["event"].to_numpy().any():  # no comparable pairs: no C-index to compare
        return None
    res = paired_bootstrap([risk_a[i] for i in ids], [risk_b[i] for i in ids], table["time"].to_numpy(),
                           table["event"].to_numpy(), n_boot=n_boot, seed=0)
    return {**res, "n": len(ids)}


def save_metrics(path: Path, metrics: dict, stamp: float) -> None:
    """Keep an evaluation of a (demo) model on disk, tagged with the model folder's ``stamp`` (its mtime)."""
    import json

    from core.disk_cache import partial_name
    from core.registry import write_json

    tmp = partial_name(path)  # two sessions may save the same model's evaluation at once
    write_json(tmp, {"stamp": stamp, "metrics": json.loads(json.dumps(metrics, default=json_plain))})
    tmp.replace(path)


def model_fingerprint(model_dir: Path | str) -> float:
    """A stamp for a saved evaluation that survives copies and clones: from the model's metrics.json content.

    (A file time would not: a fresh clone or an install copy gives new times to the same model.) A float of
    52 bits of the SHA-256, so it round-trips through JSON exactly; 0.0 when the model has no metrics.json.
    """
    import hashlib

    target = Path(model_dir) / "metrics.json"
    if not target.is_file():
        return 0.0
    return float(int(hashlib.sha256(target.read_bytes()).hexdigest()[:13], 16))


def read_saved_metrics(path: Path, stamp: float, *, with_risk: bool = False) -> dict | None:
    """The evaluation saved by :func:`save_metrics` for this ``stamp``, else None (absent, stale or unreadable).

    ``with_risk``: also None when it was kept without each patient's risk (``evaluate_model(keep_risk=True)``), as
    evaluations kept before the paired comparison were: a comparison of models computes those again."""
    import json

    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    found = saved["metrics"] if isinstance(saved, dict) and saved.get("stamp") == stamp else None
    return None if found is None or (with_risk and "subject_risk" not in found) else found


def json_plain(o: Any) -> Any:
    """``json.dumps``' ``default`` for metrics: numpy numbers and arrays as plain ones, anything else as its text."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
