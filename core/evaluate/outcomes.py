"""One place that validates survival outcomes and predicted curves.

Every metric in :mod:`core.evaluate` goes through :func:`check_outcome` and
:func:`check_survival`, so a bad value gets the same one-line
:class:`core.errors.InputError` whichever metric meets it first.

>>> t, e = check_outcome([5.0, 3.0, 9.0], [1, 0, 1])
>>> t.tolist(), e.tolist()
([5.0, 3.0, 9.0], [True, False, True])
>>> check_outcome([5.0, float("nan")], [1, 0])
Traceback (most recent call last):
...
core.errors.InputError: time: got nan, must be a finite number (subject at position 1); fix: drop subjects without a follow-up time or fill it in
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.errors import InputError

ArrayLike = Sequence[float] | np.ndarray

#: tolerance for S(t) slightly outside [0, 1] or rising by float rounding
SURV_TOL = 1e-6


def _as_1d(values: ArrayLike, field: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(field, values, "must be numbers", f"pass a 1-D numeric array ({err})") from None
    if arr.ndim != 1:
        raise InputError(field, f"shape {arr.shape}", "must be 1-D (one value per subject)", f"pass {field} as a flat array")
    return arr


def _check_finite(arr: np.ndarray, field: str, fix: str) -> None:
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise InputError(field, float(arr[i]), f"must be a finite number (subject at position {i})", fix)


def check_times(time: ArrayLike, field: str = "time", min_n: int = 2) -> np.ndarray:
    """Follow-up times: 1-D, finite, >= 0, at least ``min_n`` subjects."""
    arr = _as_1d(time, field)
    if arr.size < min_n:
        raise InputError(field, f"{arr.size} subjects", f"needs at least {min_n} subjects",
                         "evaluate on a split with more subjects")
    _check_finite(arr, field, "drop subjects without a follow-up time or fill it in")
    neg = np.flatnonzero(arr < 0)
    if neg.size:
        i = int(neg[0])
        raise InputError(field, float(arr[i]), f"must be >= 0 days (subject at position {i})",
                         "times are days from the index date; drop or correct negative follow-up times")
    return arr


def check_events(event: ArrayLike, n: int, field: str = "event", need_event: bool = True,
                 no_event_fix: str = "evaluate on subjects that include at least one event (event=1)") -> np.ndarray:
    """Event indicators: 0 (censored) or 1 (event), one per subject; returns bool."""
    arr = _as_1d(event, field)
    if arr.size != n:
        raise InputError(field, f"{arr.size} values", f"must have one value per subject ({n})",
                         "pass time and event for the same subjects")
    _check_finite(arr, field, "code events as 1 and censoring as 0")
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        i = int(bad[0])
        raise InputError(field, float(arr[i]), f"must be 0 (censored) or 1 (event) (subject at position {i})",
                         "code events as 1 and censoring as 0")
    if need_event and not arr.any():
        raise InputError(field, f"0 events in {n} subjects", "all subjects are censored, so no metric is defined",
                         no_event_fix)
    return arr.astype(bool)


def check_outcome(time: ArrayLike, event: ArrayLike, prefix: str = "", need_event: bool = True,
                  min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate one right-censored outcome; ``prefix`` names it (e.g. ``"train_"``)."""
    t = check_times(time, f"{prefix}time", min_n=min_n)
    fix = ("evaluate on subjects that include at least one event (event=1)" if not prefix else
           f"pass {prefix.rstrip('_')} subjects that include at least one event (the censoring weights need one)")
    e = check_events(event, t.size, f"{prefix}event", need_event=need_event, no_event_fix=fix)
    return t, e


def check_grid(times_grid: ArrayLike) -> np.ndarray:
    """The model's time grid: finite, >= 0, strictly increasing."""
    grid = check_times(times_grid, "times_grid", min_n=1)
    steps = np.diff(grid)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise InputError("times_grid", f"{grid[i]} then {grid[i + 1]}", "must be strictly increasing",
                         "pass the model's time grid sorted, without repeats")
    return grid


def check_survival(times_grid: ArrayLike, surv: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    """S(t) per subject on the grid: shape [n, T], finite, in [0, 1], non-increasing."""
    grid = check_grid(times_grid)
    try:
        s = np.asarray(surv, dtype=float)
    except (TypeError, ValueError):
        raise InputError("surv", surv, "must be numbers", "pass S(t) as a float array [n, T]") from None
    if s.ndim != 2 or s.shape != (n, grid.size):
        raise InputError("surv", f"shape {s.shape}",
                         f"must have one row per subject ({n}) and one column per time in times_grid ({grid.size})",
                         "pass survival curves with shape [n, T] on times_grid")
    bad = np.argwhere(~np.isfinite(s))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise InputError("surv", float(s[i, j]), f"must be finite (subject {i}, time index {j})",
                         "check the model output for NaN or inf")
    out = np.argwhere((s < -SURV_TOL) | (s > 1 + SURV_TOL))
    if out.size:
        i, j = (int(v) for v in out[0])
        raise InputError("surv", float(s[i, j]), f"must be a probability in [0, 1] (subject {i}, time index {j})",
                         "pass survival probabilities S(t), not hazards or risk scores")
    rise = np.argwhere(np.diff(s, axis=1) > SURV_TOL)
    if rise.size:
        i, j = (int(v) for v in rise[0])
        raise InputError("surv", f"{s[i, j]:.4g} -> {s[i, j + 1]:.4g} (subject {i})", "must be non-increasing in time",
                         "pass S(t) (not 1 - S(t)) on an increasing time grid")
    return grid, np.clip(s, 0.0, 1.0)


def check_risk(risk: ArrayLike, n: int, field: str = "risk") -> np.ndarray:
    """A scalar risk score per subject (higher = worse): 1-D, finite, length n."""
    r = _as_1d(risk, field)
    if r.size != n:
        raise InputError(field, f"{r.size} values", f"must have one value per subject ({n})",
                         "pass one risk score per subject, in the order of time and event")
    _check_finite(r, field, "check the model output for NaN or inf")
    return r


def check_horizons(horizons: Sequence[float]) -> tuple[float, ...]:
    """Clinical horizons in days: finite and > 0."""
    hs = tuple(float(h) for h in horizons)
    for h in hs:
        if not np.isfinite(h) or h <= 0:
            raise InputError("horizons", h, "must be a positive number of days", "use e.g. 30, 365, 1825")
    return hs


def risk_from_survival(times_grid: np.ndarray, surv: np.ndarray) -> np.ndarray:
    """Default scalar risk: minus the restricted mean survival time (area under S up to the grid's end).

    The area uses the same step reading as :func:`survival_at` (S = 1 before the
    first grid time). Higher risk = shorter expected survival. For proportional
    hazards curves (S_i = S0 ** exp(lp)) it ranks subjects exactly like lp.

    >>> risk_from_survival(np.array([1.0, 2.0, 4.0]), np.array([[0.9, 0.5, 0.1], [0.8, 0.8, 0.8]])).round(6).tolist()
    [-2.9, -3.4]
    """
    widths = np.diff(np.concatenate([[0.0], times_grid]))
    heights = np.concatenate([np.ones((surv.shape[0], 1)), surv[:, :-1]], axis=1)
    return -(heights * widths).sum(axis=1)
