"""What Case review, Cohort & models and the report set a patient's curve against: the reference cohort's
Kaplan-Meier curve and risk groups under a model, its conformal lower bound, its subgroups.

For the demo's models the reference is the synthetic demo cohort (shared across sessions: not patient data). For a
model trained here it is the cohort it was trained on (its test split for the curves, its val split for the bound),
while that cohort is kept in the user's workspace; the predictions are kept in the model's folder, shared with
Cohort & models' evaluation of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.app import demo_install, reference
from pages import _model_views as views
from pages import _state as K
from pages._memo import memo

CONFORMAL_ALPHA = 0.1  # the conformal bound's miscoverage: a 90 % bound


@st.cache_resource(show_spinner="Predicting the demo cohort...", max_entries=16)
def _demo_reference(model_name: str, model_dir: str, stamp: float) -> dict:
    """Cohort KM and risk-group KM curves of the synthetic demo cohort (not patient data)."""
    cohort = views.demo_cohort()
    return reference.reference_curves(lambda: views.shared_model(model_dir, stamp), cohort,
                                      reference.reference_ids(cohort), cache=Path(model_dir) / "reference_predictions.npz")


@st.cache_resource(show_spinner="Calibrating the conformal bound on the demo val split...", max_entries=16)
def _demo_conformal(model_name: str, model_dir: str, stamp: float, alpha: float) -> Any:
    """The conformal lower bound of a demo model, calibrated on the synthetic demo's val split (not patient data)."""
    cohort = views.demo_cohort()
    return reference.conformal_calibration(lambda: views.shared_model(model_dir, stamp), cohort, alpha,
                                           cache=Path(model_dir) / "val_predictions.npz")


def conformal_bound(model_name: str, prediction: Any, alpha: float = CONFORMAL_ALPHA) -> tuple[float, float] | None:
    """``(days, horizon)``: a lower bound on the event time (capped at the horizon) that at least 1 - alpha of
    patients like the val patients reach (a marginal guarantee, not this patient's own probability), from the model's conformal calibration on the demo val split (a model trained here: on the val split of
    the cohort it was trained on, while kept); None when it cannot be given."""
    from core.evaluate.conformal import apply_lower_bound

    path = views.available_models()[model_name]
    if model_name in st.session_state.get(K.TRAINED_MODELS, {}):
        own = own_test_cohort(model_name)
        if own is None or views.model_by_name(model_name).config.extra.get("recalibration"):
            return None  # the demo's val patients are another population (a recalibrated copy: another site)
        with st.spinner("Calibrating the conformal bound on your cohort's val split (once per model)..."):
            cal = memo(("conformal", str(path), alpha), lambda: reference.conformal_calibration(
                lambda: views.model_by_name(model_name), own, alpha, cache=Path(path) / "val_predictions.npz"))
    else:
        cal = _demo_conformal(model_name, str(path), views.stamp(path), alpha)
    if cal is None:
        return None
    bounds = apply_lower_bound(prediction.times, prediction.survival[None, :], cal)[0]
    k = len(cal.horizons) - 1  # the longest calibrated horizon
    return float(bounds[k]), float(cal.horizons[k])


def case_conformal_bound(model: Any, source: str, subject_id: str,
                         alpha: float = CONFORMAL_ALPHA) -> tuple[float, float] | None:
    """:func:`conformal_bound` of the case's prediction under ``model``, kept beside the cached prediction
    (keyed by the cohort the bound is calibrated on), so a cached case needs no calibration."""
    name = str(getattr(model, "name", "")) or next(n for n, p in views.available_models().items()
                                                   if Path(p) == Path(model.model_dir))
    calibration = views.demo_cohort()
    if name in st.session_state.get(K.TRAINED_MODELS, {}):
        calibration = own_test_cohort(name)
        if calibration is None:
            return None
    pred = views.case_prediction(model, source, subject_id)
    found = views.case_derived(model, source, subject_id, f"conformal:{alpha:g}:{calibration.fingerprint()}",
                         lambda: conformal_bound(name, pred, alpha))
    return None if found is None else (float(found[0]), float(found[1]))


def case_risk_group(model: Any, source: str, subject_id: str, groups: list[dict]) -> dict:
    """The reference risk group the case falls into (its risk score kept beside the cached prediction)."""
    pred = views.case_prediction(model, source, subject_id)
    risk = views.case_derived(model, source, subject_id, "reference_risk", lambda: reference.prediction_risk(pred))
    return reference.risk_group_of(pred, groups, risk=float(risk))


def own_test_cohort(model_name: str) -> Any:
    """The cohort a model trained here was trained on, when it is kept and its test split has events (its reference
    curves come from that split, as Cohort & models evaluates it); None for the demo's models, or a cohort removed."""
    from core.cohort import load_cohort
    from core.errors import InputError

    base = st.session_state.get(K.TRAINED_COHORTS, {}).get(model_name)
    if not base or not Path(base).is_dir() or Path(base).resolve() == Path(demo_install.demo_paths().cohort).resolve():
        return None
    try:
        cohort = memo(("cohort", str(base)), lambda: load_cohort(Path(base)))
    except InputError:  # changed since training: the demo's reference, as for a removed cohort
        return None
    test = cohort.ids("test")
    return cohort if test and int(cohort.table.set_index("subject_id").loc[test, "event"].sum()) > 0 else None


def reference_curves(model_name: str) -> dict:
    """The reference curves of Case review and the report (``core.app.reference.reference_curves``) with ``source``:
    "own" (the test split of the cohort a model trained here was trained on) or "demo" (the demo's test split)."""
    path = views.available_models()[model_name]
    if model_name in st.session_state.get(K.TRAINED_MODELS, {}):
        own = own_test_cohort(model_name)
        if own is not None:
            with st.spinner("Predicting the test split of your cohort (once per model)..."):
                curves = memo(("reference", str(path), "own"), lambda: reference.reference_curves(
                    lambda: views.model_by_name(model_name), own, own.ids("test"),
                    cache=Path(path) / "test_predictions.npz"))
            return {**curves, "source": "own"}
        curves = memo(("reference", str(path)), lambda: reference.reference_curves(
            views.model_by_name(model_name), views.demo_cohort(), reference.reference_ids(views.demo_cohort())))
        return {**curves, "source": "demo"}
    return {**_demo_reference(model_name, str(path), views.stamp(path)), "source": "demo"}


def subgroup_table(model_name: str, column: str) -> dict:
    """Per-group C-index and calibration of a model on the demo test split (per session memo)."""
    path = views.available_models()[model_name]
    cohort = views.demo_cohort()
    trained = model_name in st.session_state.get(K.TRAINED_MODELS, {})
    cache = None if trained else Path(path) / "reference_predictions.npz"
    return memo(("subgroups", str(path), column), lambda: reference.subgroups(
        views.model_by_name(model_name), cohort, column, reference.reference_ids(cohort), cache=cache))
