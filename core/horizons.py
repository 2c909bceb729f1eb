"""Clinical horizons and how a survival curve is read at a time: one home for both.

Every model outputs S(t) on a time grid (days, increasing, starting at 0).
Between grid times S is read as a right-continuous step function (the last grid
value at or before t; 1 before the first grid time, the last value past the
grid's end). Predictions, reports, figures, metrics and explanations all read
it here, so the risk an explanation attributes is exactly the risk a
prediction reports.

>>> survival_at([0.0, 100.0, 400.0], [[1.0, 0.8, 0.5]], [50, 100, 399, 9000]).tolist()
[[1.0, 0.8, 0.8, 0.5]]
>>> grid_index([0.0, 100.0, 400.0], 399.0), horizon_label(365), horizon_label(730), horizon_label(730, short=True)
(1, '1 year', '2 years', '2 y')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

HORIZONS: tuple[int, ...] = (30, 365, 1825)
HORIZON_LABELS: dict[int, str] = {30: "30 days", 365: "1 year", 730: "2 years", 1095: "3 years", 1825: "5 years"}
DEFAULT_HORIZON = 365  # the horizon an explanation targets unless told otherwise
HORIZON_CHOICES: tuple[int, ...] = (30, 90, 180, 365, 730, 1095, 1825)  # the horizons a user can pick


def horizon_label(days: float, *, short: bool = False) -> str:
    """``"1 year"`` for 365 (``"1 y"`` short) and the other whole years of ``HORIZON_LABELS``, ``"90 days"``
    (``"90 d"``) for other day counts."""
    d = float(days)
    if short:
        if d >= 365 and abs(d / 365 - round(d / 365)) < 0.02:
            return f"{round(d / 365)} y"
        return f"{d:g} d"
    return HORIZON_LABELS.get(int(d), f"{d:g} days") if d == int(d) else f"{d:g} days"


def at_horizon(values: dict | None, h: float) -> object:
    """A metric's entry at horizon ``h`` whether its keys are numbers (in memory) or text (read back from JSON).

    >>> at_horizon({"365": 1}, 365.0), at_horizon({30: 2}, 30), at_horizon({"90.5": 3}, 90.5), at_horizon(None, 30)
    (1, 2, 3, None)
    """
    values = values or {}
    for key in (h, str(h), str(int(h)) if float(h).is_integer() else None):
        if key is not None and key in values:
            return values[key]
    return None


def horizon_adjective(days: float) -> str:
    """A risk's name at the horizon: ``"1-year"`` for 365 (as in "1-year risk"), ``"30-day"``, ``"2.5-day"``.

    >>> [horizon_adjective(d) for d in (30, 365, 1825, 2.5)]
    ['30-day', '1-year', '5-year', '2.5-day']
    """
    number, unit = horizon_label(days).split(" ")
    return f"{number}-{unit.rstrip('s')}"


def grid_index(times: ArrayLike, t: float) -> int:
    """Index of the grid time whose S holds at ``t`` (the last grid time at or before ``t``), -1 before the grid."""
    return int(np.searchsorted(np.asarray(times, dtype=float), float(t), side="right")) - 1


def survival_at(times: ArrayLike, survival: ArrayLike, at: ArrayLike) -> np.ndarray:
    """S at the times ``at`` from curves ``survival`` ``[n, T]`` (or one curve ``[T]``) on the grid ``times``.

    Returns ``[n, len(at)]`` (``[len(at)]`` for one curve), read as a step function, 1 before the grid.
    """
    s = np.asarray(survival, dtype=float)
    one = s.ndim == 1
    s2 = s[None] if one else s
    at_ = np.atleast_1d(np.asarray(at, dtype=float))
    idx = np.searchsorted(np.asarray(times, dtype=float), at_, side="right") - 1
    padded = np.concatenate([np.ones((s2.shape[0], 1)), s2], axis=1)
    out = padded[:, idx + 1]
    return out[0] if one else out


def risk_at(times: ArrayLike, survival: ArrayLike, horizons: Sequence[float] = HORIZONS) -> dict[int, float]:
    """``{h: 1 - S(h)}`` of one curve at each horizon (past the grid: its last value).

    >>> risk_at([0.0, 30.0, 365.0], [1.0, 0.9, 0.6], (30, 365, 1825))
    {30: 0.09999999999999998, 365: 0.4, 1825: 0.4}
    """
    s = survival_at(times, np.asarray(survival, dtype=float), list(horizons))
    return {int(h): float(1.0 - v) for h, v in zip(horizons, s)}


def risk_band_at(times: ArrayLike, lower: ArrayLike, upper: ArrayLike,
                 horizons: Sequence[float] = HORIZONS) -> dict[int, tuple[float, float]]:
    """``{h: (low, high)}``: the risk 1 - S(h) read off the two edges of a curve's band (the band's ``upper`` S gives
    the low risk), as :func:`risk_at` reads the curve itself.

    >>> risk_band_at([0.0, 365.0], [1.0, 0.5], [1.0, 0.75], (30, 365))
    {30: (0.0, 0.0), 365: (0.25, 0.5)}
    """
    hi_s = survival_at(times, np.asarray(upper, dtype=float), list(horizons))
    lo_s = survival_at(times, np.asarray(lower, dtype=float), list(horizons))
    return {int(h): (round(float(1.0 - a), 6), round(float(1.0 - b), 6)) for h, a, b in zip(horizons, hi_s, lo_s)}


def beyond_grid(times: ArrayLike, horizons: Sequence[float] = HORIZONS) -> list[int]:
    """The horizons past the grid's last time (their S is the last grid value, not an extrapolation)."""
    last = float(np.asarray(times, dtype=float)[-1])
    return [int(h) for h in horizons if h > last]


def past_grid_note(times: ArrayLike, horizon: float) -> str | None:
    """Why a model has no risk at ``horizon`` (None when its curve reaches it): the curve stops at the grid's last
    time, the end of the follow-up it was trained on, and the value held past it is the risk at that end.

    >>> past_grid_note([0.0, 30.0, 900.0], 1825)
    "the model's curve ends at day 900 (the follow-up it was trained on): it gives no 5-year risk"
    >>> past_grid_note([0.0, 30.0, 900.0], 365) is None
    True
    """
    last = float(np.asarray(times, dtype=float)[-1])
    if horizon <= last:
        return None
    return (f"the model's curve ends at day {last:.0f} (the follow-up it was trained on): it gives no "
            f"{horizon_adjective(horizon)} risk")
