"""Conformal lower predictive bound under censoring (core.evaluate.conformal)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InputError
from core.evaluate.conformal import (
    ConformalCalibration,
    apply_lower_bound,
    calibrate_lower_bound,
    conformal_scores,
    weighted_level,
)
from core.evaluate.coverage import lpb_coverage, quantile_time

TIMES = np.linspace(1.0, 1000.0, 400)


def _draw(n: int, rng: np.random.Generator, power: float = 0.6, censor_max: float = 900.0):
    """Exponential event times with known rates; the model's curve is exp(-rate t) ** power (miscalibrated)."""
    rate = rng.uniform(0.0015, 0.008, n)
    t_true = rng.exponential(1 / rate)
    c = rng.uniform(0, censor_max, n)
    surv = np.exp(-np.outer(rate, TIMES)) ** power
    return surv, t_true, np.minimum(t_true, c), (t_true <= c).astype(int)


def test_equal_weights_give_the_classical_split_conformal_quantile():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=99)
    for alpha in (0.05, 0.1, 0.2):
        k = int(np.floor(alpha * (99 + 1)))  # the k-th smallest of n scores, k = floor(alpha (n + 1))
        assert weighted_level(scores, np.ones(99), 1.0, alpha) == pytest.approx(np.sort(scores)[k - 1])


def test_weighted_level_edge_cases():
    assert weighted_level(np.array([np.inf, np.inf, 0.5]), np.ones(3), 0.0, 0.5) is None  # every level qualifies
    assert weighted_level(np.array([0.3, 0.4]), np.ones(2), 1.0, 0.2) == 0.0  # test mass 1/3 > alpha
    # heavier weight on the smallest score pushes the level down
    assert weighted_level(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 1.0, 1.0, 1.0]), 0.0, 0.4) == 0.2
    assert weighted_level(np.array([0.1, 0.2, 0.3, 0.4]), np.array([3.0, 1.0, 1.0, 1.0]), 0.0, 0.4) == 0.1


def test_scores_use_the_curve_at_the_event_time():
    surv = np.array([[0.9, 0.6, 0.5]])
    times = np.array([10.0, 20.0, 30.0])
    u = conformal_scores(times, surv, np.array([25.0]), np.array([1]), 40.0)
    assert u.tolist() == pytest.approx([0.4])


def test_conformal_bound_reaches_nominal_coverage_where_the_raw_quantile_does_not():
    rng = np.random.default_rng(7)
    s_cal, _, t_cal, e_cal = _draw(3000, rng)
    _, _, t_tr, e_tr = _draw(3000, rng)
    s_te, true_te, _, _ = _draw(4000, rng)
    cal = calibrate_lower_bound(TIMES, s_cal, t_cal, e_cal, [100.0, 365.0, 700.0], t_tr, e_tr, alpha=0.1)
    bounds = apply_lower_bound(TIMES, s_te, cal)
    for k, h in enumerate(cal.horizons):
        conformal = float(np.mean(np.minimum(true_te, h) >= bounds[:, k]))
        raw = float(np.mean(np.minimum(true_te, h) >= np.minimum(quantile_time(TIMES, s_te, 0.1), h)))
        assert 0.885 <= conformal <= 0.925, (h, conformal)
        assert raw < 0.87, (h, raw)  # the optimistic model's own 10 % quantile under-covers


def test_average_coverage_over_small_calibration_sets_is_at_least_nominal():
    rng = np.random.default_rng(11)
    _, _, t_tr, e_tr = _draw(2000, rng)
    covs = []
    for _ in range(40):
        s_cal, _, t_cal, e_cal = _draw(160, rng)
        s_te, true_te, _, _ = _draw(500, rng)
        cal = calibrate_lower_bound(TIMES, s_cal, t_cal, e_cal, [365.0], t_tr, e_tr, alpha=0.1)
        covs.append(float(np.mean(np.minimum(true_te, 365.0) >= apply_lower_bound(TIMES, s_te, cal)[:, 0])))
    assert 0.89 <= float(np.mean(covs)) <= 0.94


def test_ipcw_coverage_of_the_conformal_bound_matches_its_true_coverage():
    rng = np.random.default_rng(5)
    s_cal, _, t_cal, e_cal = _draw(2000, rng)
    s_te, true_te, t_te, e_te = _draw(4000, rng)
    cal = calibrate_lower_bound(TIMES, s_cal, t_cal, e_cal, [365.0], t_cal, e_cal, alpha=0.1)
    b = apply_lower_bound(TIMES, s_te, cal)[:, 0]
    est = lpb_coverage(t_te, e_te, b, 365.0, t_cal, e_cal)["coverage"]
    assert est == pytest.approx(float(np.mean(np.minimum(true_te, 365.0) >= b)), abs=0.015)


def test_saturated_horizon_gives_the_horizon_as_bound_and_json_round_trip():
    rng = np.random.default_rng(2)
    s, _, t, e = _draw(500, rng)
    cal = calibrate_lower_bound(TIMES, s, t, e, [5.0, 365.0], t, e, alpha=0.1)
    assert cal.levels[0] is None and cal.levels[1] is not None
    assert any("5 d" in n for n in cal.notes)
    assert np.all(apply_lower_bound(TIMES, s[:3], cal)[:, 0] == 5.0)
    back = ConformalCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal


def test_bad_input():
    rng = np.random.default_rng(3)
    s, _, t, e = _draw(100, rng, censor_max=300.0)
    with pytest.raises(InputError, match="alpha"):
        calibrate_lower_bound(TIMES, s, t, e, [100.0], t, e, alpha=0.0)
    with pytest.raises(InputError, match="horizons"):
        calibrate_lower_bound(TIMES, s, t, e, [5000.0], t, e)
    with pytest.raises(InputError, match="survival"):
        calibrate_lower_bound(TIMES, s[:, :10], t, e, [100.0], t, e)
