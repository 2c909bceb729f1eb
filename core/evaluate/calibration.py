"""Calibration at a horizon: predicted risk against Kaplan-Meier observed risk, by risk group.

Subjects are split into groups of equal size by predicted risk 1 - S(h)
(deciles when there are at least 200 subjects; fewer groups of at least 20
subjects otherwise, and 2 groups below 40 subjects). In each group the observed risk is 1 - KM(h) from
lifelines' ``KaplanMeierFitter``; it is ``None`` when the group's follow-up
ends (censored) before h, because KM is undefined there.

Summaries over the groups with an observed value:

- ``ici``: grouped integrated calibration index, the size-weighted mean of
  |predicted - observed| (0 is perfect; Austin et al. smooth instead of grouping),
- ``e_max``: the largest |predicted - observed|,
- ``slope`` and ``intercept``: size-weighted least squares of observed on
  predicted (1 and 0 are perfect; ``None`` when the groups' predictions do not vary
  or fewer than 3 groups have an observed value: a line through 2 points fits them
  exactly and checks nothing),
- ``n_observed``: the subjects of those groups (the summaries say nothing of the others).

And calibration in the large over every subject: ``expected`` (the mean predicted risk), ``observed`` (1 - KM(h)
of all subjects) with its 95 % interval ``observed_ci`` (lifelines' exponential Greenwood interval), and their
ratio ``oe`` (observed / expected: above 1 the model under-predicts) with ``oe_ci``, the observed interval over the
expected risk (taken as fixed, as Debray et al. 2017 do); the observed ones None where KM is undefined at h.
"""

from __future__ import annotations

import numpy as np
from lifelines import KaplanMeierFitter

MIN_GROUP = 20


def n_groups(n: int, groups: int = 10) -> int:
    """Number of risk groups for n subjects: ``groups`` at most, each of >= 20 subjects, at least 2.

    >>> n_groups(1000), n_groups(137), n_groups(30)
    (10, 6, 2)
    """
    return int(min(groups, max(2, n // MIN_GROUP)))


def km_risk_at(time: np.ndarray, event: np.ndarray, horizon: float) -> float | None:
    """Observed risk 1 - KM(horizon); None when KM is undefined at the horizon."""
    if time.size == 0:
        return None
    kmf = KaplanMeierFitter().fit(time, event_observed=event)
    s = float(kmf.survival_function_at_times(horizon).iloc[0])
    if time.max() < horizon and s > 0:
        return None  # follow-up ended (censored) before the horizon
    return 1.0 - s


def calibration_at(pred_risk: np.ndarray, time: np.ndarray, event: np.ndarray, horizon: float,
                   groups: int = 10) -> dict | None:
    """Grouped calibration of predicted risks ``pred_risk`` = 1 - S(horizon).

    Returns ``{"groups": [{"n", "events", "predicted", "observed"}], "ici", "e_max",
    "slope", "intercept"}`` or None when no group has an observed risk. A group's ``events`` are those by the
    horizon (time <= horizon), the events its observed risk counts.

    >>> t = np.array([10.0, 50, 400, 20, 30, 500] * 4); e = np.ones(24)
    >>> [g["events"] for g in calibration_at(np.linspace(0, 1, 24), t, e, 100.0)["groups"]]
    [8, 8]
    """
    k = n_groups(pred_risk.size, groups)
    order = np.argsort(pred_risk, kind="stable")
    rows: list[dict] = []
    for idx in np.array_split(order, k):
        obs = km_risk_at(time[idx], event[idx], horizon)
        rows.append({
            "n": int(idx.size),
            "events": int(((event[idx] > 0) & (time[idx] <= horizon)).sum()),
            "predicted": float(pred_risk[idx].mean()),
            "observed": None if obs is None else float(obs),
        })
    ok = [r for r in rows if r["observed"] is not None]
    if not ok:
        return None
    pred = np.array([r["predicted"] for r in ok])
    obs = np.array([r["observed"] for r in ok])
    w = np.array([r["n"] for r in ok], dtype=float)
    gap = np.abs(pred - obs)
    slope: float | None = None
    intercept: float | None = None
    if len(ok) >= 3 and np.ptp(pred) > 1e-9:
        slope_v, intercept_v = np.polyfit(pred, obs, 1, w=np.sqrt(w))
        slope, intercept = float(slope_v), float(intercept_v)
    return {
        "groups": rows,
        "ici": float(np.average(gap, weights=w)),
        "e_max": float(gap.max()),
        "slope": slope,
        "intercept": intercept,
        "n_observed": int(w.sum()),
        **in_the_large(pred_risk, time, event, horizon),
    }


def in_the_large(pred_risk: np.ndarray, time: np.ndarray, event: np.ndarray, horizon: float) -> dict:
    """Calibration in the large at ``horizon``: ``expected``, ``observed``, ``observed_ci``, ``oe``, ``oe_ci`` (module
    docstring); the observed ones None where KM is undefined there or no event came by it.

    >>> t = np.array([100.0, 200, 300, 400, 500, 600, 700, 800] * 5); e = np.ones(40)
    >>> r = in_the_large(np.full(40, 0.25), t, e, 450.0)
    >>> r["expected"], r["observed"], round(r["oe"], 2), [round(v, 2) for v in r["oe_ci"]]
    (0.25, 0.5, 2.0, [1.43, 2.65])
    """
    out: dict = {"expected": float(pred_risk.mean()), "observed": None, "observed_ci": None, "oe": None, "oe_ci": None}
    if time.size == 0 or (time.max() < horizon) or not ((event > 0) & (time <= horizon)).any():
        return out
    kmf = KaplanMeierFitter().fit(time, event_observed=event)
    s = float(kmf.survival_function_at_times(horizon).iloc[0])
    band = kmf.confidence_interval_survival_function_
    row = band[band.index <= horizon].iloc[-1]
    low, high = 1.0 - float(row.iloc[1]), 1.0 - float(row.iloc[0])  # risk = 1 - S: the band's ends swap
    observed = 1.0 - s
    out.update(observed=observed, observed_ci=[low, high])
    if out["expected"] > 0 and 0 < low <= observed <= high:
        oe = observed / out["expected"]
        out.update(oe=oe, oe_ci=[oe * low / observed, oe * high / observed])
    return out
