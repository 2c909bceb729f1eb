"""Kaplan-Meier curves (lifelines) for the cohort and for risk groups.

The band is lifelines' pointwise 95 % interval (Greenwood variance on the
log(-log S) scale).

>>> t, s, lo, hi = kaplan_meier([1.0, 2.0, 3.0, 4.0], [1, 0, 1, 1])
>>> t.tolist(), s.round(3).tolist()
([0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 0.75, 0.75, 0.375, 0.0])
"""

from __future__ import annotations

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test

from core.errors import InputError
from core.evaluate.outcomes import ArrayLike, check_outcome, check_risk


def _fit(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    kmf = KaplanMeierFitter(alpha=0.05).fit(time, event_observed=event)
    t = kmf.survival_function_.index.to_numpy(dtype=float)
    s = kmf.survival_function_.iloc[:, 0].to_numpy(dtype=float)
    ci = kmf.confidence_interval_survival_function_
    lo = np.nan_to_num(ci.iloc[:, 0].to_numpy(dtype=float), nan=0.0)
    hi = np.nan_to_num(ci.iloc[:, 1].to_numpy(dtype=float), nan=1.0)
    return t, s, np.minimum(lo, s), np.maximum(hi, s)


def kaplan_meier(time: ArrayLike, event: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """KM step curve ``(t, s, lower, upper)``; t starts at 0 with s = 1 unless events at time 0 lower it there
    (right-continuous steps)."""
    t, e = check_outcome(time, event, need_event=False, min_n=1)
    return _fit(t, e)


def risk_group_labels(k: int) -> list[str]:
    """Names of k risk groups, lowest risk first.

    >>> risk_group_labels(3), risk_group_labels(2), risk_group_labels(4)
    (['low', 'intermediate', 'high'], ['low', 'high'], ['Q1', 'Q2', 'Q3', 'Q4'])
    """
    if k == 2:
        return ["low", "high"]
    if k == 3:
        return ["low", "intermediate", "high"]
    return [f"Q{i + 1}" for i in range(k)]


def km_by_risk_group(risk: ArrayLike, time: ArrayLike, event: ArrayLike, groups: int = 3) -> dict:
    """KM curves of equal-size groups by predicted risk (higher = worse), with a log-rank test.

    Returns ``{"groups": [{"label", "n", "events", "risk_range", "t", "s", "lower",
    "upper", "at_risk"}], "logrank_p", "at_risk_days"}``; ``logrank_p`` is None when no group has an event;
    ``at_risk`` counts each group's subjects still followed at each of ``at_risk_days`` (day 0, then whole years
    within the follow-up: the numbers at risk printed under a Kaplan-Meier figure).

    >>> res = km_by_risk_group([3, 2, 1, 0], [100.0, 400.0, 800.0, 900.0], [1, 1, 0, 1], groups=2)
    >>> res["at_risk_days"], [g["at_risk"] for g in res["groups"]]
    ([0, 365, 730], [[2, 2, 2], [2, 1, 0]])
    """
    t, e = check_outcome(time, event, need_event=False)
    r = check_risk(risk, t.size)
    if not 2 <= groups <= t.size:
        raise InputError("groups", groups, f"must be between 2 and the number of subjects ({t.size})",
                         "use e.g. 3 (low, intermediate, high)")
    order = np.argsort(r, kind="stable")
    days = [0, *range(365, int(t.max()) + 1, 365)]
    labels = np.empty(t.size, dtype=int)
    out = []
    for g, (name, idx) in enumerate(zip(risk_group_labels(groups), np.array_split(order, groups))):
        labels[idx] = g
        gt, gs, glo, ghi = _fit(t[idx], e[idx])
        out.append({"label": name, "n": int(idx.size), "events": int(e[idx].sum()),
                    "risk_range": [float(r[idx].min()), float(r[idx].max())],
                    "t": gt, "s": gs, "lower": glo, "upper": ghi,
                    "at_risk": [int((t[idx] >= d).sum()) for d in days]})
    p = float(multivariate_logrank_test(t, labels, e).p_value) if e.any() else None
    return {"groups": out, "logrank_p": p, "at_risk_days": days}
