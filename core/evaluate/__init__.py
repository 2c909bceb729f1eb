"""Evaluation of survival models: discrimination, accuracy, calibration, curves, comparisons.

Built on scikit-survival and lifelines (no hand-written metric):

- :func:`survival_metrics` - Harrell's C with a bootstrap interval, Uno's C,
  time-dependent AUC at horizons, integrated Brier score, calibration by risk group;
- :func:`paired_bootstrap` - two models on the same subjects;
- :func:`kaplan_meier`, :func:`km_by_risk_group` - curves for the app;
- a model folder on a cohort split (the ``evaluate`` command) is ``core.evaluation.evaluate_model``;
- :func:`band_coverage`, :func:`lpb_coverage` - IPCW coverage of lower predictive bounds on T
  (:mod:`core.evaluate.coverage`);
- :func:`calibrate_lower_bound`, :func:`apply_lower_bound` - the Candès-Lei-Ren conformal
  lower bound under censoring (:mod:`core.evaluate.conformal`);
- :func:`decision_curve` - net benefit by threshold at each horizon (dcurves);
- :func:`subgroup_table` - C-index and calibration by subgroup of one column.
- :func:`core.evaluate.patient_pairs.patient_concordance` - Harrell's C split patient by patient (the one count
  written here: scikit-survival has no per-patient split; its sum is checked against scikit-survival's C).

Input validation lives in :mod:`core.evaluate.outcomes`.
"""

from __future__ import annotations

from core.evaluate.calibration import calibration_at
from core.evaluate.conformal import (
    ConformalCalibration,
    apply_lower_bound,
    calibrate_lower_bound,
)
from core.evaluate.coverage import (
    band_coverage,
    band_lower_bound,
    lpb_coverage,
    quantile_time,
)
from core.evaluate.decision import decision_curve
from core.evaluate.kaplan_meier import kaplan_meier, km_by_risk_group
from core.evaluate.metrics import (
    HORIZONS,
    harrell_c,
    metric_spans,
    survival_at,
    survival_metrics,
    td_auc,
    uno_c,
)
from core.evaluate.outcomes import risk_from_survival
from core.evaluate.paired import paired_bootstrap, tie_note
from core.evaluate.subgroups import subgroup_table

__all__ = [
    "HORIZONS",
    "ConformalCalibration",
    "apply_lower_bound",
    "band_coverage",
    "band_lower_bound",
    "calibrate_lower_bound",
    "calibration_at",
    "decision_curve",
    "harrell_c",
    "kaplan_meier",
    "km_by_risk_group",
    "lpb_coverage",
    "metric_spans",
    "paired_bootstrap",
    "tie_note",
    "quantile_time",
    "risk_from_survival",
    "subgroup_table",
    "survival_at",
    "survival_metrics",
    "td_auc",
    "uno_c",
]
