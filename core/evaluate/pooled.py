"""One model's C-index and O:E ratio over several external validations (sites), pooled by random-effects
meta-analysis.

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

Calibration in the large is pooled the same way on the log scale: each site's observed / expected risk at a
horizon (``core.evaluate.calibration.in_the_large``) with its interval. Everything is brought back to the C-index
and ratio scales. Sites should hold different patients: two validations on the same
cohort are not two sites (the caller picks which to pool).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
    for i, (v, lo, hi) in enumerate(zip(c, low, high)):
        if not (0 < lo <= v <= hi < 1) or not hi > lo:
            raise InputError(f"validation {i + 1}", f"C {v} [{lo}, {hi}]",
                             "has no usable interval (each of C, low and high in (0, 1), low <= C <= high, low < high)",
                             "leave this validation out of the pooled estimate")
    out = _random_effects(c, low, high, _logit, _expit, level)
    return {"c": out.pop("value"), **out}


def pooled_oe(oe: Sequence[float], low: Sequence[float], high: Sequence[float], *, level: float = 0.95) -> dict:
    """The random-effects pooled observed / expected risk ratio of ``k`` validations at one horizon, on the log scale
    (each ``oe`` with its ``level`` interval): the keys of :func:`pooled_c_index`, the estimate as ``oe``.

    >>> r = pooled_oe([1.0, 1.2, 0.9], [0.8, 1.0, 0.7], [1.25, 1.44, 1.16])
    >>> round(r["oe"], 3), [round(v, 3) for v in r["ci"]]
    (1.044, [0.881, 1.237])
    """
    for i, (v, lo, hi) in enumerate(zip(oe, low, high)):
        if not (0 < lo <= v <= hi) or not hi > lo or not math.isfinite(hi):
            raise InputError(f"validation {i + 1}", f"O:E {v} [{lo}, {hi}]",
                             "has no usable interval (each above 0 and finite, low <= O:E <= high, low < high)",
                             "leave this validation out of the pooled estimate")
    out = _random_effects(oe, low, high, math.log, math.exp, level)
    return {"oe": out.pop("value"), **out}


def _random_effects(values: Sequence[float], low: Sequence[float], high: Sequence[float],
                    to: Callable[[float], float], back: Callable[[float], float], level: float) -> dict:
    """DerSimonian-Laird on the scale ``to`` maps the values to (each standard error from its interval there), brought
    back by ``back``: ``k``, ``value``, ``ci``, ``prediction``, ``tau2``, ``i2``, ``q``, ``q_p``, ``weights``."""
    from scipy.stats import chi2, norm, t

    if not len(values) == len(low) == len(high):
        raise ValueError(f"values, low, high: got {len(values)}, {len(low)} and {len(high)}; fix: one of each per site")
    if len(values) < MIN_SITES:
        raise InputError("validations", len(values), f"are too few to pool (at least {MIN_SITES})",
                         "validate the model on another site's cohort")
    z = float(norm.ppf(0.5 + level / 2))
    y = [to(v) for v in values]
    v = [((to(hi) - to(lo)) / (2 * z)) ** 2 for lo, hi in zip(low, high)]
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
        prediction = [back(mu - half), back(mu + half)]
    return {"k": k, "value": back(mu), "ci": [back(mu - z * se), back(mu + z * se)], "prediction": prediction,
            "tau2": tau2, "i2": max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0, "q": q,
            "q_p": float(chi2.sf(q, k - 1)), "weights": [wi / sum(w_re) for wi in w_re]}


def site_rows(sites: Sequence[tuple[str, Mapping[str, Any]]], horizon: float = 365) -> tuple[list[dict], list[str]]:
    """Each site's numbers to pool from its evaluation (``sites``: (label, ``core.evaluation.evaluate_model``'s dict,
    in memory or read back from JSON)): ``site``, ``patients``, ``events``, ``c_index``, ``c_low``, ``c_high`` and, at
    ``horizon``, ``expected`` and ``observed`` risk and ``oe``, ``oe_low``, ``oe_high`` (None where the evaluation
    holds no calibration in the large there). Returns the rows and the labels of the sites left out (no C-index
    with an interval).

    >>> m = {"n": 50, "events": 20, "c_index": 0.7, "c_index_ci": [0.6, 0.8], "calibration": {"365": {"expected": 0.2,
    ...      "observed": 0.25, "oe": 1.25, "oe_ci": [1.0, 1.5]}}}
    >>> rows, out = site_rows([("A", m), ("B", {"c_index": None})])
    >>> rows[0]["oe"], rows[0]["oe_high"], out
    (1.25, 1.5, ['B'])
    """
    from core.horizons import at_horizon

    rows, left_out = [], []
    for label, m in sites:
        ci = m.get("c_index_ci") or [None, None]
        if m.get("c_index") is None or None in ci:
            left_out.append(label)
            continue
        cal = at_horizon(m.get("calibration"), horizon) or {}
        oe_ci = cal.get("oe_ci") or [None, None]
        ok = cal.get("oe") is not None and None not in oe_ci
        rows.append({"site": label, "patients": m.get("n"), "events": m.get("events"), "c_index": float(m["c_index"]),
                     "c_low": float(ci[0]), "c_high": float(ci[1]), "expected": cal.get("expected"),
                     "observed": cal.get("observed"), "oe": float(cal["oe"]) if ok else None,
                     "oe_low": float(oe_ci[0]) if ok else None, "oe_high": float(oe_ci[1]) if ok else None})
    return rows, left_out
