"""Evaluation of survival models: discrimination, accuracy, calibration, curves, comparisons.

Built on scikit-survival and lifelines (no hand-written metric):

- :func:`survival_metrics` - Harrell's C with a bootstrap interval, Uno's C,
  time-dependent AUC at horizons, integrated Brier score, calibration by risk group;
- :func:`paired_bootstrap` - two models on the same subjects;
- :func:`kaplan_meier`, :func:`km_by_risk_group` - curves for the app;
- :func:`evaluate_model` - a model folder on a cohort split (the ``evaluate`` command).

Input validation lives in :mod:`core.evaluate.outcomes`.
"""

from __future__ import annotations

from core.evaluate.calibration import calibration_at
from core.evaluate.kaplan_meier import kaplan_meier, km_by_risk_group
from core.evaluate.metrics import HORIZONS, harrell_c, survival_metrics, td_auc, uno_c
from core.evaluate.model import evaluate_model
from core.evaluate.outcomes import risk_from_survival, survival_at
from core.evaluate.paired import paired_bootstrap

__all__ = [
    "HORIZONS",
    "calibration_at",
    "evaluate_model",
    "harrell_c",
    "kaplan_meier",
    "km_by_risk_group",
    "paired_bootstrap",
    "risk_from_survival",
    "survival_at",
    "survival_metrics",
    "td_auc",
    "uno_c",
]
