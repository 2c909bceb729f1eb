"""Conformal lower predictive bound on the event time, guaranteed at level 1 - alpha under censoring.

Method: the weighted split-conformal lower predictive bound (LPB) of Candès,
Lei & Ren (2023, "Conformalized survival analysis", JRSS-B 85:24-45), with the
censoring threshold c0 set to each clinical horizon t, and the model's own
curve quantiles as the nested family of bounds (their "conformalized
distributional" variant):

    L_t(x) = min( Q_x(a_t), t ),    Q_x(a) = inf{ s : S_x(s) <= 1 - a }

where S_x is the model's predicted curve for a new case x and the level a_t
is calibrated on a held-out calibration set (the validation split) so that

    P( T >= L_t(X) ) >= 1 - alpha        (the "conformal bound" at 1 - alpha).

Calibration. For calibration subject i with a known status at t (event at or
before t, or follow-up to t), the score is U_i = 1 - S_i(T_i) when the event
happened before t and U_i = +inf when T_i >= t (always covered, since
L_t <= t). The bound of level a covers subject i exactly when U_i >= a. Each
subject gets the weight w_i = 1/G(min(T_i, t)-), G the Kaplan-Meier curve of
the censoring times of the training split; the unknown test case gets the
largest possible weight w_{n+1} = 1/G(t-). With p_i = w_i / (sum_j w_j +
w_{n+1}), a_t is the largest score a with

    p_{n+1} + sum_i p_i 1{U_i < a} <= alpha

(the weighted alpha-quantile of the scores with the test point's mass put on
the miscovered side, Tibshirani, Barber, Candès & Ramdas 2019). ``a_t`` is
None when every level qualifies (the bound is t for every case) and 0 when
none does (the calibration set is too small for this alpha: the bound is 0).

Assumptions (as in Candès, Lei & Ren): calibration and new subjects are
exchangeable (drawn from the same population); censoring is independent of
the event time given the covariates. Because censoring times are not observed
for subjects with an event, the weights use the marginal censoring
distribution (IPCW with a Kaplan-Meier G instead of Candès-Lei-Ren's
P(C >= c0 | X)), which assumes censoring independent of (T, X) (e.g. the end
of the study). With the true G the guarantee holds in finite samples (coverage
>= 1 - alpha); with G estimated on the training split it holds up to the
estimation error of G. As for any bound truncated at t, coverage cannot fall
below P(T > t): at a horizon where fewer than alpha of the patients have had
the event, every bound is conservative (it is simply t).

>>> rng = np.random.default_rng(0)
>>> times = np.linspace(1.0, 400.0, 400)
>>> rate = rng.uniform(0.002, 0.01, 2000)                   # known exponential hazards
>>> survival = np.exp(-np.outer(rate, times)) ** 0.6       # a miscalibrated model: too optimistic
>>> t_true = rng.exponential(1 / rate); c = rng.uniform(0, 600, 2000)
>>> time, event = np.minimum(t_true, c), (t_true <= c).astype(int)
>>> cal = calibrate_lower_bound(times, survival[:1000], time[:1000], event[:1000], [200.0],
...                             train_time=time, train_event=event, alpha=0.1)
>>> bound = apply_lower_bound(times, survival[1000:], cal)[:, 0]
>>> naive = np.minimum(quantile_time(times, survival[1000:], 0.1), 200.0)  # the curve's own 10 % quantile
>>> cover = lambda b: float(np.mean(np.minimum(t_true[1000:], 200.0) >= b))  # true coverage, nominal 0.90
>>> round(cover(naive), 3), round(cover(bound), 3)
(0.833, 0.908)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from core.errors import InputError
from core.evaluate.coverage import (
    ALPHA,
    CensoringKM,
    check_alpha,
    known_status,
    quantile_time,
)
from core.evaluate.metrics import survival_at
from core.evaluate.outcomes import (
    ArrayLike,
    check_horizons,
    check_outcome,
    check_survival,
)

METHOD = ("Candes-Lei-Ren (2023) weighted split-conformal lower predictive bound on T, threshold c0 = horizon, "
          "curve quantiles as the nested bounds, IPCW weights 1/G(min(T, t)-) with G the censoring Kaplan-Meier "
          "of the train split; assumes exchangeable subjects and censoring independent of (T, X)")


@dataclass(frozen=True)
class ConformalCalibration:
    """What :func:`apply_lower_bound` needs: the calibrated curve level a_t per horizon.

    ``levels[k]`` is a_t for ``horizons[k]``; None means the bound is the horizon itself.
    """

    alpha: float
    horizons: tuple[float, ...]
    levels: tuple[float | None, ...]
    n_calibration: int
    n_known: tuple[int, ...]
    method: str = METHOD
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """JSON-ready: ``alpha``, ``levels`` {horizon: a_t or None}, ``n_calibration``, ``n_known``, ``method``."""
        d = asdict(self)
        keys = [int(h) if float(h).is_integer() else h for h in self.horizons]
        d["levels"] = dict(zip(keys, self.levels))
        d["n_known"] = dict(zip(keys, self.n_known))
        d["horizons"] = keys
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConformalCalibration:
        """Inverse of :meth:`to_dict` (also after a JSON round trip, where keys become strings)."""
        hs = tuple(float(h) for h in d["horizons"])
        lv = {float(k): v for k, v in d["levels"].items()}
        nk = {float(k): v for k, v in d["n_known"].items()}
        return cls(alpha=float(d["alpha"]), horizons=hs, levels=tuple(lv[h] for h in hs),
                   n_calibration=int(d["n_calibration"]), n_known=tuple(int(nk[h]) for h in hs),
                   method=str(d.get("method", METHOD)), notes=tuple(d.get("notes", ())))


def conformal_scores(times: np.ndarray, survival: np.ndarray, time: np.ndarray, event: np.ndarray,
                     horizon: float) -> np.ndarray:
    """U_i = 1 - S_i(T_i) for events before the horizon, +inf for T_i >= horizon, NaN when the status is unknown.

    >>> conformal_scores(np.array([10.0, 20.0]), np.array([[0.9, 0.6], [0.8, 0.7], [0.9, 0.9]]),
    ...                  np.array([15.0, 12.0, 30.0]), np.array([1, 0, 0]), 25.0).round(6).tolist()
    [0.1, nan, inf]
    """
    known = known_status(time, event, horizon)
    s_at = survival_at(times, survival, time)
    diag = s_at[np.arange(time.size), np.arange(time.size)]
    u = np.where(time >= horizon, np.inf, 1.0 - diag)
    return np.where(known, u, np.nan)


def weighted_level(scores: np.ndarray, weights: np.ndarray, test_weight: float, alpha: float) -> float | None:
    """Largest a with p_test + sum p_i 1{U_i < a} <= alpha; None when every a qualifies, 0.0 when none does.

    >>> weighted_level(np.array([0.1, 0.2, 0.3, np.inf]), np.ones(4), 0.0, 0.25)   # 1/4 may fall below
    0.2
    >>> weighted_level(np.array([0.1, np.inf]), np.ones(2), 1.0, 0.1) # test mass 1/3 > alpha
    0.0
    """
    total = float(weights.sum() + test_weight)
    if total <= 0:
        return 0.0
    p_test = test_weight / total
    finite = np.isfinite(scores)
    u, inv = np.unique(scores[finite], return_inverse=True)
    mass = np.bincount(inv, weights=weights[finite] / total, minlength=u.size) if u.size else np.zeros(0)
    if p_test + float(mass.sum()) <= alpha + 1e-12:
        return None
    below = p_test + np.concatenate([[0.0], np.cumsum(mass)[:-1]])
    ok = below <= alpha + 1e-12
    return float(u[ok].max()) if ok.any() else 0.0


def calibrate_lower_bound(times: ArrayLike, survival: ArrayLike, time: ArrayLike, event: ArrayLike,
                          horizons: Sequence[float], train_time: ArrayLike, train_event: ArrayLike,
                          alpha: float = ALPHA) -> ConformalCalibration:
    """Calibrate the conformal LPB on a calibration set (curves ``survival`` [n, T] on ``times``, outcomes).

    ``train_time``/``train_event`` give the censoring distribution G (training split).
    Horizons beyond the calibration or training follow-up raise InputError.
    """
    a = check_alpha(alpha)
    t, e = check_outcome(time, event, need_event=False)
    grid, s = check_survival(times, survival, t.size)
    hs = check_horizons(horizons)
    g = CensoringKM(train_time, train_event)
    levels: list[float | None] = []
    n_known: list[int] = []
    notes: list[str] = []
    for h in hs:
        if h >= t.max() or h >= g.max_time:
            raise InputError("horizons", h, "lies beyond the follow-up of the calibration or training subjects",
                             f"calibrate at horizons below {min(t.max(), g.max_time):.0f} days")
        u = conformal_scores(grid, s, t, e, h)
        known = ~np.isnan(u)
        gv = g.before(np.minimum(t[known], h))
        g_h = float(g.before([h])[0])
        if g_h <= 0 or (gv <= 0).any():
            raise InputError("horizons", h, "lies beyond the training split's censoring distribution (G = 0)",
                             "use a horizon inside the training follow-up")
        level = weighted_level(u[known], 1.0 / gv, 1.0 / g_h, a)
        if level == 0.0:
            notes.append(f"{h:g} d: too few calibration subjects for alpha={a:g}, the bound is 0")
        elif level is None:
            notes.append(f"{h:g} d: fewer than alpha of the subjects have the event by then, the bound is the horizon")
        levels.append(level)
        n_known.append(int(known.sum()))
    return ConformalCalibration(alpha=a, horizons=hs, levels=tuple(levels), n_calibration=int(t.size),
                                n_known=tuple(n_known), notes=tuple(notes))


def apply_lower_bound(times: ArrayLike, survival: ArrayLike, calibration: ConformalCalibration) -> np.ndarray:
    """Conformal LPB for new cases: [n, len(horizons)] days, L_t = min(Q(a_t), t) on each case's curve.

    >>> cal = ConformalCalibration(0.1, (200.0, 300.0), (0.2, None), 50, (40, 30))
    >>> apply_lower_bound([50.0, 150.0, 250.0], [[0.9, 0.7, 0.5]], cal).tolist()
    [[150.0, 300.0]]
    """
    s = np.asarray(survival, dtype=float)
    if s.ndim == 1:
        s = s[None, :]
    grid, s = check_survival(times, s, s.shape[0])
    out = np.empty((s.shape[0], len(calibration.horizons)))
    for k, (h, level) in enumerate(zip(calibration.horizons, calibration.levels)):
        q = np.full(s.shape[0], np.inf) if level is None else quantile_time(grid, s, level)
        out[:, k] = np.minimum(q, h)
    return out
