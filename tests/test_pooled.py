"""A model's C-index pooled over sites (core.evaluate.pooled): the DerSimonian-Laird random-effects estimate on the
logit scale against statsmodels' meta-analysis, the prediction interval, and the inputs it refuses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import InputError
from core.evaluate.pooled import pooled_c_index

Z = 1.959963984540054


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_pooled_c_index_equals_statsmodels_random_effects() -> None:
    meta = pytest.importorskip("statsmodels.stats.meta_analysis", reason="statsmodels (a dependency of dcurves)")
    c, lo, hi = [0.62, 0.81, 0.70, 0.66], [0.55, 0.76, 0.63, 0.62], [0.69, 0.86, 0.77, 0.70]
    y = np.array([_logit(x) for x in c])
    v = np.array([((_logit(h) - _logit(low)) / (2 * Z)) ** 2 for low, h in zip(lo, hi)])
    ref = meta.combine_effects(y, v, method_re="dl")
    ours = pooled_c_index(c, lo, hi)
    expit = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert ours["c"] == pytest.approx(expit(ref.mean_effect_re), abs=1e-9)
    assert ours["tau2"] == pytest.approx(ref.tau2, abs=1e-9) and ours["i2"] == pytest.approx(ref.i2, abs=1e-9)
    assert ours["q"] == pytest.approx(ref.q, abs=1e-9)
    re_low, re_high = ref.conf_int(use_t=False)[1]  # rows: fixed effect, random effects, ...
    assert ours["ci"] == pytest.approx([expit(re_low), expit(re_high)], abs=1e-9)
    assert ours["weights"] == pytest.approx(list(ref.weights_rel_re), abs=1e-9)
    # heterogeneous sites: the prediction interval for a new site is wider than the pooled interval
    (p_lo, p_hi), (c_lo, c_hi) = ours["prediction"], ours["ci"]
    assert p_lo < c_lo < ours["c"] < c_hi < p_hi and ours["i2"] > 0.8 and ours["q_p"] < 0.001


def test_alike_sites_have_no_between_site_variance_and_two_sites_no_prediction_interval() -> None:
    same = pooled_c_index([0.70, 0.70, 0.70], [0.65, 0.62, 0.66], [0.75, 0.77, 0.74])
    assert same["tau2"] == 0 and same["i2"] == 0 and same["c"] == pytest.approx(0.70, abs=1e-3)
    two = pooled_c_index([0.70, 0.72], [0.65, 0.68], [0.75, 0.76])
    assert two["k"] == 2 and two["prediction"] is None and 0.70 < two["c"] < 0.72


@pytest.mark.parametrize(("c", "lo", "hi", "message"), [
    ([0.7], [0.6], [0.8], r"^validations: got 1, are too few to pool \(at least 2\)"),
    ([0.7, 0.7], [0.6, 0.7], [0.8, 0.7], r"^validation 2: got C 0\.7 \[0\.7, 0\.7\], has no usable interval"),
    ([0.7, 0.9], [0.6, 0.5], [0.8, 0.8], r"^validation 2: got C 0\.9 \[0\.5, 0\.8\], has no usable interval"),
    ([0.7, 1.0], [0.6, 0.9], [0.8, 1.0], r"^validation 2: got C 1\.0 \[0\.9, 1\.0\], has no usable interval"),
])
def test_unusable_validations_are_refused_by_name(c: list[float], lo: list[float], hi: list[float],
                                                  message: str) -> None:
    with pytest.raises(InputError, match=message):
        pooled_c_index(c, lo, hi)


def test_pooled_oe_equals_statsmodels_on_the_log_scale() -> None:
    meta = pytest.importorskip("statsmodels.stats.meta_analysis", reason="statsmodels (a dependency of dcurves)")
    from core.evaluate.pooled import pooled_oe

    oe, lo, hi = [0.8, 1.3, 1.05], [0.65, 1.1, 0.9], [0.98, 1.55, 1.22]
    y = np.log(oe)
    v = np.array([((math.log(h) - math.log(low)) / (2 * Z)) ** 2 for low, h in zip(lo, hi)])
    ref = meta.combine_effects(y, v, method_re="dl")
    ours = pooled_oe(oe, lo, hi)
    assert ours["oe"] == pytest.approx(math.exp(ref.mean_effect_re), abs=1e-9)
    assert ours["ci"] == pytest.approx([math.exp(x) for x in ref.conf_int(use_t=False)[1]], abs=1e-9)
    assert ours["i2"] == pytest.approx(ref.i2, abs=1e-9) and ours["prediction"] is not None
    with pytest.raises(InputError, match=r"^validation 1: got O:E 0\.8 \[0\.0, 0\.98\], has no usable interval"):
        pooled_oe([0.8, 1.3], [0.0, 1.1], [0.98, 1.55])


def test_calibration_in_the_large_is_lifelines_kaplan_meier_over_the_mean_prediction() -> None:
    from lifelines import KaplanMeierFitter

    from core.evaluate.calibration import in_the_large

    rng = np.random.default_rng(3)
    time, event = rng.exponential(800, 400), (rng.random(400) < 0.6).astype(float)
    pred = rng.uniform(0.1, 0.5, 400)
    got = in_the_large(pred, time, event, 365.0)
    km = KaplanMeierFitter().fit(time, event)
    band = km.confidence_interval_survival_function_.loc[:365].iloc[-1]
    observed = 1 - float(km.survival_function_at_times(365).iloc[0])
    assert got["observed"] == pytest.approx(observed) and got["expected"] == pytest.approx(pred.mean())
    assert got["observed_ci"] == pytest.approx([1 - band.iloc[1], 1 - band.iloc[0]])
    assert got["oe"] == pytest.approx(observed / pred.mean())
    assert got["oe_ci"] == pytest.approx([(1 - band.iloc[1]) / pred.mean(), (1 - band.iloc[0]) / pred.mean()])
    # follow-up that ends before the horizon: nothing observed there
    short = in_the_large(pred, np.minimum(time, 300.0), np.zeros(400), 365.0)
    assert short["observed"] is None and short["oe"] is None and short["expected"] == pytest.approx(pred.mean())
