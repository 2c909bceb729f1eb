"""Empirical coverage of a predictive lower bound on the event time, under right censoring.

What "coverage of a band" means for one patient
-----------------------------------------------
A band ``[lower(s), upper(s)]`` around a predicted survival curve S(s) is a
statement about a *probability*; the patient only shows one event time T, so
the band cannot be checked against T directly (the status 1{T > t} is 0 or 1
and never lies inside a band strictly between 0 and 1). Here every band or
curve is read as the published *one-sided lower predictive bound* (LPB) of
Candès, Lei & Ren (2023, "Conformalized survival analysis", JRSS-B 85:24-45)
at a nominal level 1 - alpha:

    L = Q(alpha) = inf{ s : 1 - S(s) >= alpha } = inf{ s : S(s) <= 1 - alpha }

(the alpha-quantile of T under the curve; ``inf`` of the empty set is +inf).
For the model's band the curve is its ``lower`` edge, the most pessimistic
curve the band admits ("under every curve in the band, P(T >= L) >= 1 - alpha").
The bound claims **P(T >= L) >= 1 - alpha**; its coverage is P(T >= L).

Coverage at a horizon t (Candès-Lei-Ren's censoring threshold c0 = t)
-------------------------------------------------------------------
T is only observed up to the censoring time, so the bound is truncated at the
horizon, L_t = min(L, t), and coverage at t is

    cov(t) = P( min(T, t) >= L_t )     (= P(T >= L_t), because L_t <= t)

min(T, t) is known for subject i when the status at t is known: an event
before t (T_i <= t, event) or follow-up to t (T_i >= t). Under censoring
independent of (T, X) the probability of being known is G(min(T_i, t)-) =
P(C >= min(T_i, t)), with G the Kaplan-Meier curve of the censoring times
(lifelines, fitted on the training split). The inverse probability of censoring
weighted (IPCW) estimate is the Hajek mean over the known subjects

    cov_hat(t) = sum_known w_i 1{min(T_i, t) >= L_i} / sum_known w_i,   w_i = 1 / G(min(T_i, t)-).

Note the floor: because L_t <= t, every subject alive at t is covered, so
cov(t) >= P(T > t). At a horizon where fewer than alpha of the patients have
had the event, every bound covers more than 1 - alpha (``saturated``).

>>> time = np.array([5.0, 20.0, 30.0, 40.0, 50.0]); event = np.array([1, 1, 0, 1, 0])
>>> bound = np.array([10.0, 10.0, 10.0, 45.0, 60.0])
>>> known_status(time, event, 35.0).tolist()       # censored at 30 < 35: status unknown
[True, True, False, True, True]
>>> r = lpb_coverage(time, event, bound, 35.0, train_time=time, train_event=event)
>>> r["n_known"], round(r["coverage"], 4)   # T=5 < L=10 missed; weights 1, 1, 1.5, 1.5 (G(35-) = 2/3)
(4, 0.8)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from lifelines import KaplanMeierFitter

from core.errors import InputError
from core.evaluate.outcomes import (
    ArrayLike,
    check_grid,
    check_horizons,
    check_outcome,
    check_survival,
)

#: default miscoverage: a 90 % bound
ALPHA = 0.1


def check_alpha(alpha: float) -> float:
    """Miscoverage level in (0, 1).

    >>> check_alpha(0.1)
    0.1
    """
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError("alpha", alpha, "must be a number", "use e.g. 0.1 for a 90 % bound") from None
    if not 0.0 < a < 1.0:
        raise InputError("alpha", alpha, "must be strictly between 0 and 1", "use e.g. 0.1 for a 90 % bound")
    return a


class CensoringKM:
    """Kaplan-Meier curve G(s) = P(C > s) of the censoring times (lifelines), read as G(s-) = P(C >= s).

    The censoring times are the censored subjects' follow-up times (event = 0
    counts as the "event" of the censoring process).

    >>> g = CensoringKM([1.0, 2.0, 3.0, 4.0], [1, 0, 1, 0])
    >>> g.before([1.0, 2.0, 2.5, 4.0]).round(4).tolist()   # P(C >= s)
    [1.0, 1.0, 0.6667, 0.6667]
    """

    def __init__(self, train_time: ArrayLike, train_event: ArrayLike) -> None:
        t, e = check_outcome(train_time, train_event, prefix="train_", need_event=False)
        self.max_time = float(t.max())
        kmf = KaplanMeierFitter().fit(t, event_observed=~e)
        self._t = kmf.survival_function_.index.to_numpy(dtype=float)
        self._g = kmf.survival_function_.iloc[:, 0].to_numpy(dtype=float)

    def before(self, s: ArrayLike) -> np.ndarray:
        """G(s-) = P(C >= s): the KM step value just before s (1 before the first censoring)."""
        s = np.atleast_1d(np.asarray(s, dtype=float))
        idx = np.searchsorted(self._t, s, side="left") - 1
        return np.where(idx >= 0, self._g[np.clip(idx, 0, None)], 1.0)


def known_status(time: ArrayLike, event: ArrayLike, horizon: float) -> np.ndarray:
    """Subjects whose status at ``horizon`` is known: an event at or before it, or follow-up to it.

    >>> known_status([10.0, 10.0, 50.0], [1, 0, 0], 20.0).tolist()
    [True, False, True]
    """
    t, e = check_outcome(time, event, need_event=False, min_n=1)
    return (t >= horizon) | (e & (t <= horizon))


def ipcw_weights(time: ArrayLike, event: ArrayLike, horizon: float, train_time: ArrayLike,
                 train_event: ArrayLike) -> np.ndarray:
    """w_i = 1 / G(min(T_i, t)-) for subjects with known status at t, 0 for the others.

    G is the censoring KM of the training subjects. Raises InputError when G
    reaches 0 before the horizon (the horizon lies beyond the training follow-up).

    >>> ipcw_weights([5.0, 8.0, 20.0], [1, 0, 0], 10.0, [5.0, 8.0, 20.0], [1, 0, 0]).tolist()
    [1.0, 0.0, 2.0]
    """
    t, e = check_outcome(time, event, need_event=False, min_n=1)
    g = CensoringKM(train_time, train_event)
    known = known_status(t, e, horizon)
    at = np.minimum(t, horizon)
    gv = g.before(at)
    if (known & (gv <= 0)).any():
        raise InputError("horizon", horizon, "lies beyond the training split's censoring distribution (G = 0)",
                         "use a horizon inside the training follow-up")
    return np.where(known, 1.0 / np.where(gv > 0, gv, 1.0), 0.0)


def quantile_time(times: ArrayLike, survival: ArrayLike, level: float | ArrayLike) -> np.ndarray:
    """Q(a) = inf{ s in times : S(s) <= 1 - a }, per subject; +inf where the curve never gets there.

    ``level`` is one number for all subjects or one per subject. S is read as a
    right-continuous step function on ``times`` (S = 1 before the first time), so
    Q(a) <= s exactly when 1 - S(s) >= a; Q(a) = 0 for a <= 0.

    >>> quantile_time([10.0, 20.0, 30.0], [[0.95, 0.85, 0.5], [0.99, 0.98, 0.97]], 0.1).tolist()
    [20.0, inf]
    """
    grid = check_grid(times)
    s = np.asarray(survival, dtype=float)
    if s.ndim != 2 or s.shape[1] != grid.size:
        raise InputError("survival", f"shape {s.shape}", f"must be [n, {grid.size}] on times",
                         "pass one curve per subject on the model's time grid")
    a = np.broadcast_to(np.asarray(level, dtype=float), (s.shape[0],))
    reached = s <= (1.0 - a)[:, None] + 1e-12
    first = np.argmax(reached, axis=1)
    out = np.where(reached.any(axis=1), grid[first], np.inf)
    return np.where(a <= 0, 0.0, out)


def band_lower_bound(times: ArrayLike, lower: ArrayLike, horizon: float, alpha: float = ALPHA) -> np.ndarray:
    """The LPB a band implies at level 1 - alpha, truncated at the horizon: min(Q_lower(alpha), t).

    ``lower`` is the band's lower edge [n, T] (for the point curve pass the curve itself).

    >>> band_lower_bound([10.0, 20.0, 30.0], [[0.95, 0.85, 0.5], [0.99, 0.98, 0.97]], 25.0).tolist()
    [20.0, 25.0]
    """
    check_horizons([horizon])
    return np.minimum(quantile_time(times, lower, check_alpha(alpha)), float(horizon))


def lpb_coverage(time: ArrayLike, event: ArrayLike, bound: ArrayLike, horizon: float, train_time: ArrayLike,
                 train_event: ArrayLike) -> dict:
    """IPCW coverage at ``horizon`` of lower bounds ``bound`` on T (truncated at the horizon).

    Returns ``{"coverage", "n", "n_known", "effective_n", "event_prob"}``: the
    weighted share of subjects with min(T, t) >= min(L, t) (see the module
    docstring), the subjects, those with a known status, Kish's effective sample
    size of the weights, and the IPCW share of subjects with the event by t
    (coverage cannot fall below 1 - event_prob). ``coverage`` is None when no
    status is known.
    """
    t, e = check_outcome(time, event, need_event=False, min_n=1)
    h = check_horizons([horizon])[0]
    b = np.asarray(bound, dtype=float)
    if b.shape != t.shape or np.isnan(b).any():
        raise InputError("bound", f"shape {b.shape}", f"must be one number per subject ({t.size})",
                         "pass one lower bound per subject")
    w = ipcw_weights(t, e, h, train_time, train_event)
    total = float(w.sum())
    if total <= 0:
        return {"coverage": None, "n": int(t.size), "n_known": 0, "effective_n": 0.0, "event_prob": None}
    covered = np.minimum(t, h) >= np.minimum(b, h)
    died = e & (t <= h)
    return {
        "coverage": float((w * covered).sum() / total),
        "n": int(t.size),
        "n_known": int((w > 0).sum()),
        "effective_n": float(total ** 2 / (w ** 2).sum()),
        "event_prob": float((w * died).sum() / total),
    }


def horizon_usable(horizon: float, time: np.ndarray, times_end: float, train_time: ArrayLike) -> bool:
    """A horizon is inside follow-up: on the grid, min time <= t < max time, and below the last training time."""
    return bool(horizon <= times_end and float(np.min(time)) <= horizon < float(np.max(time))
                and horizon < float(np.max(np.asarray(train_time, dtype=float))))


def band_coverage(times: ArrayLike, survival: ArrayLike, lower: ArrayLike | None, time: ArrayLike, event: ArrayLike,
                  train_time: ArrayLike, train_event: ArrayLike, horizons: Sequence[float],
                  alpha: float = ALPHA) -> dict:
    """Coverage of the nominal 1 - alpha LPB read off the band's lower edge and off the point curve.

    Returns ``{"alpha", "definition", "horizons": {h: {"band": {...}, "curve": {...}} | None}}``
    where each inner dict is :func:`lpb_coverage` plus ``median_bound`` (days);
    a horizon outside follow-up gives None. Without ``lower`` only ``"curve"`` is reported.
    """
    a = check_alpha(alpha)
    t, e = check_outcome(time, event, need_event=False)
    grid, s = check_survival(times, survival, t.size)
    curves = [("curve", s)]
    if lower is not None:
        curves.insert(0, ("band", check_survival(grid, lower, t.size)[1]))
    out: dict = {"alpha": a, "definition": DEFINITION, "horizons": {}}
    for h in check_horizons(horizons):
        key = int(h) if float(h).is_integer() else h
        if not horizon_usable(h, t, float(grid[-1]), train_time):
            out["horizons"][key] = None
            continue
        row = {}
        for name, curve in curves:
            bound = band_lower_bound(grid, curve, h, a)
            res = lpb_coverage(t, e, bound, h, train_time, train_event)
            res["median_bound"] = float(np.median(bound))
            row[name] = res
        out["horizons"][key] = row
    return out


DEFINITION = ("coverage at horizon t of the lower predictive bound L_t = min(Q(alpha), t), Q(alpha) = "
              "first time the curve (band: its lower edge) falls to 1 - alpha; covered when min(T, t) >= L_t; "
              "IPCW over subjects with known status at t, weights 1/G(min(T, t)-), G = censoring Kaplan-Meier "
              "of the train split (Candes, Lei & Ren 2023, threshold c0 = t)")
