"""Decision curves: net benefit of acting on the predicted risk 1 - S(t), at each horizon (dcurves).

For a risk threshold p_t, "treat" every patient whose predicted risk by the
horizon t is >= p_t. With censored outcomes the net benefit is (Vickers et al.
2008, "Extensions to decision curve analysis", BMC Med Inform Decis Mak 8:53)

    NB(p_t) = TP/n - FP/n * p_t / (1 - p_t),
    TP/n = (1 - KM_{risk >= p_t}(t)) * P(risk >= p_t),  FP/n = KM_{risk >= p_t}(t) * P(risk >= p_t)

where KM_{risk >= p_t} is the Kaplan-Meier curve of the test-positive
patients. The numbers come from ``dcurves.dca`` in its time-to-event mode
(``time=``, ``time_to_outcome_col=``), with "treat all" and "treat none"
as references. Where every test-positive patient had the event before t,
their Kaplan-Meier curve is 0 by t and NB = P(risk >= p_t): dcurves leaves
that undefined, ``_all_events_before`` fills it in. A threshold where the
test-positive patients' follow-up ends with a censoring before t gives None
(their Kaplan-Meier curve is not defined at t).

>>> rng = np.random.default_rng(1)
>>> rate = rng.uniform(0.001, 0.01, 400); times = np.linspace(10, 600, 60)
>>> survival = np.exp(-np.outer(rate, times))
>>> t_true = rng.exponential(1 / rate); c = rng.uniform(0, 900, 400)
>>> dc = decision_curve(times, survival, np.minimum(t_true, c), (t_true <= c).astype(int), [365], thresholds=[0.5, 0.8])
>>> h = dc["horizons"][365]
>>> h["thresholds"], [v > a for v, a in zip(h["net_benefit"], h["treat_all"])], h["treat_none"]
([0.5, 0.8], [True, True], [0.0, 0.0])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from core.evaluate.metrics import survival_at
from core.evaluate.outcomes import (
    ArrayLike,
    check_horizons,
    check_outcome,
    check_survival,
)

#: default thresholds: 1 % to 10 % in steps of 1 % (where short-horizon decisions sit), then 15 % to 95 % in
#: steps of 5 %; dcurves fits two Kaplan-Meier curves per threshold and model, so a finer grid costs seconds
THRESHOLDS: tuple[float, ...] = tuple([round(i / 100, 2) for i in range(1, 11)] +
                                      [round(i / 100, 2) for i in range(15, 100, 5)])


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    th = [float(p) for p in thresholds]
    if not th:
        raise InputError("thresholds", thresholds, "must not be empty", "use e.g. 0.01 to 0.99")
    for p in th:
        if not 0.0 <= p < 1.0:
            raise InputError("thresholds", p, "must be a risk in [0, 1)", "use e.g. 0.01 to 0.99")
    return th


def _values(frame: pd.DataFrame, model: str) -> list[float | None]:
    col = frame.loc[frame["model"] == model, "net_benefit"].to_numpy(dtype=float)
    return [None if not np.isfinite(v) else float(v) for v in col]


def _all_events_before(values: list[float | None], risk: np.ndarray, t: np.ndarray, e: np.ndarray, horizon: float,
                       thresholds: Sequence[float]) -> list[float | None]:
    """Net benefit where dcurves gives none but it is defined: the test positives' Kaplan-Meier curve reached 0
    before the horizon (at their last time every patient had the event), so NB = TP / n = P(risk >= p_t).

    >>> t = np.array([1.0, 2, 3, 50, 60]); e = np.array([1, 1, 1, 0, 1]); risk = np.array([.9, .9, .9, .1, .1])
    >>> _all_events_before([None, None], risk, t, e, 10.0, [0.5, 0.05])
    [0.6, None]
    """
    out = list(values)
    for i, p in enumerate(thresholds):
        if out[i] is not None:
            continue
        pos = risk >= p
        if not pos.any():
            continue
        last = t[pos].max()
        if last <= horizon and e[pos][t[pos] == last].all():
            out[i] = float(pos.mean())
    return out


def decision_curve(times: ArrayLike, survival: ArrayLike, time: ArrayLike, event: ArrayLike,
                   horizons: Sequence[float], thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Net benefit against threshold at each horizon inside follow-up, from ``dcurves.dca``.

    Returns ``{"method", "horizons": {h: {"thresholds", "net_benefit", "treat_all",
    "treat_none", "event_prob"} | None}}``; ``event_prob`` is the KM risk by h
    (dcurves' prevalence). A horizon outside the follow-up gives None.
    """
    from dcurves import dca

    t, e = check_outcome(time, event, need_event=False)
    grid, s = check_survival(times, survival, t.size)
    th = _check_thresholds(thresholds)
    out: dict = {"method": "dcurves.dca time-to-event mode (Kaplan-Meier risk among test positives)",
                 "horizons": {}}
    for h in check_horizons(horizons):
        key = int(h) if float(h).is_integer() else h
        if not (h <= grid[-1] and t.min() <= h < t.max()):
            out["horizons"][key] = None
            continue
        risk = 1.0 - survival_at(grid, s, [h])[:, 0]
        data = pd.DataFrame({"time": t, "event": e.astype(int), "model": risk})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)  # pandas notes inside dcurves
            res = dca(data=data, outcome="event", modelnames=["model"], thresholds=th, time=h,
                      time_to_outcome_col="time")
        out["horizons"][key] = {
            "thresholds": th,
            "net_benefit": _all_events_before(_values(res, "model"), risk, t, e, h, th),
            "treat_all": _values(res, "all"),
            "treat_none": _values(res, "none"),
            "event_prob": float(res["prevalence"].iloc[0]),
        }
    return out
