"""One model's C-index over several external validations (sites), pooled by a random-effects meta-analysis.

A model validated at several sites has one C-index per site, each with its 95 % interval. How well it discriminates
*on average* and how much that varies *between sites* is what a committee asks before a model is used at a new one.
The usual answer (Debray et al., BMJ 2017, "A guide to systematic review and meta-analysis of prediction model
performance") works on the logit scale, where a C-index's sampling distribution is closer to normal:

* each site's logit C with a standard error from its interval: (logit high - logit low) / (2 z);
* the between-site variance tau^2 by DerSimonian-Laird; the pooled logit C with its 95 % interval;
* heterogeneity: Cochran's Q (its p value) and I^2, the share of the spread that is between sites;
* the 95 % **prediction interval** of the C-index at a new site (Higgins, Thompson & Spiegelhalter 2009: a t
  quantile with k - 2 degrees of freedom, so 3 sites at least), which is wider than the pooled interval whenever the
  sites differ, and is the number that says what to expect at the next one.

Everything is brought back to the C-index scale. Sites should hold different patients: two validations on the same
cohort are not two sites (the caller picks which to pool).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.errors import InputError

MIN_SITES = 2  # a pooled estimate; the prediction interval needs 3


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pooled_c_index(c: Sequence[float], low: Sequence[float], high: Sequence[float], *, level: float = 0.95) -> dict:
    """The random-effects pooled C-index of ``k`` validations (each ``c`` with its ``level`` interval ``[low, high]``).

    Returns ``k``, ``c`` (pooled), ``ci`` [low, high], ``prediction`` [low, high] for a new site (None below 3 sites),
    ``tau2`` (between-site variance, logit scale), ``i2`` (0-1), ``q`` and ``q_p`` (Cochran's Q and its chi-square p
    value), and ``weights`` (each validation's share of the pooled estimate, summing to 1). An ``InputError`` names a
    validation whose C-index or interval cannot be used (outside (0, 1), the C outside its interval, an interval of
    zero width).

    >>> r = pooled_c_index([0.70, 0.74, 0.66], [0.64, 0.70, 0.58], [0.76, 0.78, 0.74])
    >>> r["k"], round(r["c"], 3), [round(v, 3) for v in r["ci"]], [round(v, 3) for v in r["prediction"]]
    (3, 0.709, [0.663, 0.751], [0.224, 0.954])
    >>> round(r["i2"], 2), round(r["q_p"], 3), round(sum(r["weights"]), 6)
    (0.44, 0.168, 1.0)
    """
    from scipy.stats import chi2, norm, t

    if not len(c) == len(low) == len(high):
        raise ValueError(f"c, low, high: got {len(c)}, {len(low)} and {len(high)} values; fix: one of each per validation")
    if len(c) < MIN_SITES:
        raise InputError("validations", len(c), f"are too few to pool (at least {MIN_SITES})",
                         "validate the model on another site's cohort")
    z = float(norm.ppf(0.5 + level / 2))
    y, v = [], []
    for i, (ci_, lo, hi) in enumerate(zip(c, low, high)):
        if not (0 < lo <= ci_ <= hi < 1) or not hi > lo:
            raise InputError(f"validation {i + 1}", f"C {ci_} [{lo}, {hi}]",
                             "has no usable interval (each of C, low and high in (0, 1), low <= C <= high, low < high)",
                             "leave this validation out of the pooled estimate")
        y.append(_logit(ci_))
        v.append(((_logit(hi) - _logit(lo)) / (2 * z)) ** 2)
    k = len(y)
    w = [1 / vi for vi in v]
    sw = sum(w)
    fixed = sum(wi * yi for wi, yi in zip(w, y)) / sw
    q = sum(wi * (yi - fixed) ** 2 for wi, yi in zip(w, y))
    tau2 = max(0.0, (q - (k - 1)) / (sw - sum(wi * wi for wi in w) / sw))
    w_re = [1 / (vi + tau2) for vi in v]
    mu = sum(wi * yi for wi, yi in zip(w_re, y)) / sum(w_re)
    se = math.sqrt(1 / sum(w_re))
    prediction = None
    if k >= 3:
        half = float(t.ppf(0.5 + level / 2, k - 2)) * math.sqrt(tau2 + se * se)
        prediction = [_expit(mu - half), _expit(mu + half)]
    return {"k": k, "c": _expit(mu), "ci": [_expit(mu - z * se), _expit(mu + z * se)], "prediction": prediction,
            "tau2": tau2, "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0, "q": q,
            "q_p": float(chi2.sf(q, k - 1)), "weights": [wi / sum(w_re) for wi in w_re]}
