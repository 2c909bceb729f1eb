"""IPCW coverage of lower predictive bounds (core.evaluate.coverage)."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines import KaplanMeierFitter

from core.errors import InputError
from core.evaluate.coverage import (
    CensoringKM,
    band_coverage,
    band_lower_bound,
    ipcw_weights,
    known_status,
    lpb_coverage,
    quantile_time,
)


def _exponential_cohort(n: int, seed: int, censor_max: float = 800.0):
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.001, 0.006, n)
    t_true = rng.exponential(1 / rate)
    c = rng.uniform(0, censor_max, n)
    return rate, t_true, np.minimum(t_true, c), (t_true <= c).astype(int)


def test_censoring_km_is_lifelines_km_of_the_censoring_times_read_before_s():
    rng = np.random.default_rng(3)
    time = np.round(rng.uniform(1, 100, 200))
    event = rng.integers(0, 2, 200)
    g = CensoringKM(time, event)
    kmf = KaplanMeierFitter().fit(time, event_observed=1 - event)
    for s in (5.0, 20.5, 50.0, 99.0):
        expected = float(kmf.survival_function_at_times(np.nextafter(s, -np.inf)).iloc[0])
        assert g.before([s])[0] == pytest.approx(expected)
    assert g.before([0.0])[0] == 1.0


def test_known_status_and_weights_by_hand():
    time = np.array([5.0, 8.0, 10.0, 12.0, 20.0])
    event = np.array([1, 0, 1, 0, 0])
    assert known_status(time, event, 10.0).tolist() == [True, False, True, True, True]
    w = ipcw_weights(time, event, 10.0, time, event)
    # censorings at 8 (4 at risk), 12 (2 at risk), 20 (1 at risk): G(8) = 3/4
    assert w.tolist() == pytest.approx([1.0, 0.0, 4 / 3, 4 / 3, 4 / 3])


def test_without_censoring_coverage_is_the_plain_share():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    event = np.ones(10, dtype=int)
    bound = np.full(10, 3.5)
    r = lpb_coverage(time, event, bound, 9.5, time, event)
    assert r["coverage"] == pytest.approx(0.7)
    assert r["n_known"] == 10 and r["effective_n"] == pytest.approx(10.0)


def test_ipcw_coverage_recovers_the_uncensored_truth_where_complete_cases_do_not():
    rate, t_true, time, event = _exponential_cohort(6000, seed=1)
    horizon = 365.0
    # the true 10 % quantile of each subject's exponential event time: true coverage 0.90
    bound = np.minimum(-np.log(0.9) / rate, horizon)
    truth = float(np.mean(t_true >= bound))
    assert truth == pytest.approx(0.9, abs=0.01)
    r = lpb_coverage(time, event, bound, horizon, time, event)
    assert r["coverage"] == pytest.approx(truth, abs=0.015)
    known = known_status(time, event, horizon)
    complete_case = float(np.mean((np.minimum(time, horizon) >= bound)[known]))
    assert complete_case < truth - 0.02  # dropping censored subjects over-represents early events


def test_quantile_time_reads_the_step_curve():
    times = [10.0, 20.0, 30.0]
    surv = [[0.95, 0.9, 0.5], [1.0, 1.0, 1.0]]
    assert quantile_time(times, surv, 0.05).tolist() == [10.0, np.inf]
    assert quantile_time(times, surv, 0.1).tolist() == [20.0, np.inf]
    assert quantile_time(times, surv, [0.4, 0.0]).tolist() == [30.0, 0.0]
    assert band_lower_bound(times, surv, 25.0, alpha=0.1).tolist() == [20.0, 25.0]


def test_band_coverage_wider_band_covers_more_and_skips_horizons_outside_follow_up():
    rate, _, time, event = _exponential_cohort(3000, seed=2)
    times = np.linspace(1.0, 1000.0, 500)
    surv = np.exp(-np.outer(rate, times))
    lower = surv ** 2.0  # a pessimistic edge: earlier bounds
    res = band_coverage(times, surv, lower, time, event, time, event, [30, 365, 5000], alpha=0.1)
    h = res["horizons"][365]
    assert h["curve"]["coverage"] == pytest.approx(0.9, abs=0.02)
    assert h["band"]["coverage"] > h["curve"]["coverage"] + 0.03
    assert h["band"]["median_bound"] < h["curve"]["median_bound"]
    assert res["horizons"][5000] is None
    no_band = band_coverage(times, surv, None, time, event, time, event, [365], alpha=0.1)["horizons"][365]
    assert set(no_band) == {"curve"} and no_band["curve"] == h["curve"]
    # at 30 days few events happened: any bound truncated at 30 d covers at least P(T > 30)
    h30 = res["horizons"][30]
    assert h30["curve"]["coverage"] >= 1 - h30["curve"]["event_prob"] - 1e-9


def test_bad_input_raises_input_error():
    time, event = np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1])
    with pytest.raises(InputError, match="bound"):
        lpb_coverage(time, event, np.array([1.0, 2.0]), 2.0, time, event)
    with pytest.raises(InputError, match="alpha"):
        band_lower_bound([1.0, 2.0], [[0.9, 0.8]], 2.0, alpha=1.5)
    with pytest.raises(InputError, match="horizon"):
        ipcw_weights(np.array([1.0, 5.0]), np.array([0, 0]), 4.0, np.array([1.0, 2.0]), np.array([0, 0]))
