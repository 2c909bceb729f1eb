"""Discrimination, accuracy and calibration of predicted survival curves.

The metrics come from scikit-survival (Harrell's and Uno's C, cumulative/dynamic
AUC, integrated Brier score) and lifelines (Kaplan-Meier for calibration); this
module only chooses where each is estimable and bootstraps it.

Conventions, the same in every function:

- ``time``, ``event``: the evaluated subjects (days, 0/1); ``train_time``,
  ``train_event``: the training split, used for the censoring distribution of
  the inverse-probability-of-censoring weights (Uno's C, td-AUC, IBS).
- ``times_grid`` [T] and ``surv`` [n, T]: S(t) per subject, read as a
  right-continuous step function (S = 1 before the first grid time).
- ``risk`` [n]: higher = worse. When not given it is minus the restricted mean
  survival time up to the end of the grid (see
  :func:`core.evaluate.outcomes.risk_from_survival`).
- A horizon is *estimable* when the grid reaches it, the evaluated follow-up
  spans it (min time <= h < max time) and there is at least one event at or
  before h and one subject still followed after h; IPCW metrics also need h
  below the largest training time. Otherwise the value is ``None`` (JSON null).

>>> rng = np.random.default_rng(0)
>>> grid = np.linspace(10, 1000, 50)
>>> rate = rng.uniform(1e-3, 4e-3, 300)
>>> surv = np.exp(-rate[:, None] * grid[None, :])
>>> t_true = rng.exponential(1 / rate); c = rng.uniform(0, 1500, 300)
>>> time, event = np.minimum(t_true, c), (t_true <= c).astype(int)
>>> m = survival_metrics(grid, surv, time, event, time, event, horizons=(30, 365, 5000), n_boot=20)
>>> 0.5 < m["c_index"] < 0.8, m["td_auc"][5000] is None, m["n"]
(True, True, 300)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from lifelines.utils import concordance_index
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from core.errors import InputError
from core.evaluate.calibration import calibration_at
from core.evaluate.outcomes import (
    ArrayLike,
    check_horizons,
    check_outcome,
    check_risk,
    check_survival,
    risk_from_survival,
)
from core.horizons import HORIZONS, survival_at

#: quantile of follow-up used as Uno's truncation time tau and as the end of the IBS range
FOLLOW_UP_QUANTILE = 0.9
#: quantile of the evaluated follow-up where the IBS range starts
IBS_START_QUANTILE = 0.1
IBS_POINTS = 100
#: fewer valid bootstrap replicates than this gives no interval
MIN_BOOT = 10


NOT_AVAILABLE = "n/a"  # an undefined number, as the tables write it (Streamlit would show "None")


def ci_text(value: object, ci: object) -> str:
    """A metric with its interval, "0.709 [0.661, 0.755]" ("n/a" where undefined).

    >>> ci_text(0.7091, [0.6612, 0.7549]), ci_text(None, None), ci_text(0.5, [None, 0.6])
    ('0.709 [0.661, 0.755]', 'n/a', '0.500')
    """
    if value is None:
        return NOT_AVAILABLE
    text = f"{float(value):.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" [{float(ci[0]):.3f}, {float(ci[1]):.3f}]"
    return text


def oe_text(calibration: dict | None) -> str:
    """Calibration in the large of a ``calibration`` dict ({horizon: ...}, number or text keys): "1 year 1.06
    (0.89-1.25); 5 years 0.93 (0.80-1.07)" for the horizons where the observed / expected risk is known ("" none).

    >>> oe_text({"365": {"oe": 1.061, "oe_ci": [0.889, 1.251]}, "30": {"oe": None}, "1825": None})
    '1 year 1.06 (0.89-1.25)'
    """
    from core.horizons import horizon_label

    parts = []
    for h, c in sorted((calibration or {}).items(), key=lambda kv: float(kv[0])):
        if c and c.get("oe") is not None and c.get("oe_ci") and None not in c["oe_ci"]:
            parts.append(f"{horizon_label(float(h))} {c['oe']:.2f} ({c['oe_ci'][0]:.2f}-{c['oe_ci'][1]:.2f})")
    return "; ".join(parts)


def _key(h: float) -> int | float:
    return int(h) if float(h).is_integer() else float(h)


def _surv_struct(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    return Surv.from_arrays(event=event.astype(bool), time=time)


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C (scikit-survival ``concordance_index_censored``; tied risks count 1/2)."""
    return float(concordance_index_censored(event.astype(bool), time, risk)[0])


def harrell_c_fast(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C by lifelines' O(n log n) ``concordance_index`` for bootstrap replicates.

    Identical to :func:`harrell_c` also with tied times and risks (cross-checked in the tests).
    """
    return float(concordance_index(time, -risk, event))


def ipcw_cap(train_time: np.ndarray) -> float:
    """Largest time at which the training censoring distribution is usable (just below its last time)."""
    return float(np.nextafter(train_time.max(), -np.inf))


def administratively_censor(time: np.ndarray, event: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Censor follow-up at ``cap``: exact for every IPCW quantity evaluated at times below ``cap``."""
    over = time > cap
    return np.where(over, cap, time), np.where(over, False, event)


def uno_tau(time: np.ndarray, train_time: np.ndarray) -> float:
    """Truncation time for Uno's C: the 90th percentile of the evaluated and the training follow-up, whichever is earlier."""
    return float(min(np.quantile(time, FOLLOW_UP_QUANTILE), np.quantile(train_time, FOLLOW_UP_QUANTILE),
                     ipcw_cap(train_time)))


def uno_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, train_time: np.ndarray,
          train_event: np.ndarray, tau: float) -> float | None:
    """Uno's IPCW C truncated at tau (scikit-survival ``concordance_index_ipcw``); None without comparable pairs."""
    if not (event & (time < tau)).any():
        return None
    t, e = administratively_censor(time, event, ipcw_cap(train_time))
    value = concordance_index_ipcw(_surv_struct(train_time, train_event), _surv_struct(t, e), risk, tau=tau)[0]
    return float(value) if np.isfinite(value) else None


def auc_estimable(h: float, time: np.ndarray, event: np.ndarray, grid_end: float, cap: float) -> bool:
    """Whether the cumulative/dynamic AUC at horizon h is defined for these subjects."""
    return bool(h <= grid_end and time.min() <= h < time.max() and h < cap
                and (event & (time <= h)).any() and (time > h).any())


def td_auc(times_grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray,
           train_time: np.ndarray, train_event: np.ndarray,
           horizons: Sequence[float]) -> dict[int | float, float | None]:
    """Cumulative/dynamic AUC at each horizon with risk 1 - S(h) (scikit-survival); None where not estimable."""
    cap = ipcw_cap(train_time)
    out: dict[int | float, float | None] = {_key(h): None for h in horizons}
    ok = [h for h in horizons if auc_estimable(h, time, event, times_grid[-1], cap)]
    if ok:
        t, e = administratively_censor(time, event, cap)
        risk_h = 1.0 - survival_at(times_grid, surv, ok)
        scores, _ = cumulative_dynamic_auc(_surv_struct(train_time, train_event), _surv_struct(t, e), risk_h,
                                           np.asarray(ok, dtype=float))
        for h, v in zip(ok, scores):
            out[_key(h)] = float(v) if np.isfinite(v) else None
    return out


def ibs_range(times_grid: np.ndarray, time: np.ndarray, train_time: np.ndarray) -> tuple[float, float] | None:
    """Time range of the IBS: 10th to 90th percentile of the evaluated follow-up, inside the grid and the IPCW cap."""
    lo = max(float(np.quantile(time, IBS_START_QUANTILE)), float(time.min()))
    hi = min(float(np.quantile(time, FOLLOW_UP_QUANTILE)), float(times_grid[-1]), ipcw_cap(train_time))
    hi = min(hi, float(np.nextafter(time.max(), -np.inf)))
    return (lo, hi) if hi > lo else None


def ibs(times_grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray,
        train_time: np.ndarray, train_event: np.ndarray, span: tuple[float, float] | None) -> float | None:
    """Integrated Brier score over ``span`` (scikit-survival ``integrated_brier_score``); None without a range."""
    if span is None:
        return None
    t, e = administratively_censor(time, event, ipcw_cap(train_time))
    times = np.unique(np.linspace(span[0], span[1], IBS_POINTS))
    times = times[(times >= t.min()) & (times < t.max())]
    if times.size < 2:
        return None
    value = integrated_brier_score(_surv_struct(train_time, train_event), _surv_struct(t, e),
                                   survival_at(times_grid, surv, times), times)
    return float(value) if np.isfinite(value) else None


def _interval(values: list[float]) -> list[float] | None:
    if len(values) < MIN_BOOT:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass(frozen=True)
class _Data:
    grid: np.ndarray
    surv: np.ndarray
    time: np.ndarray
    event: np.ndarray
    risk: np.ndarray
    train_time: np.ndarray
    train_event: np.ndarray


def _validate(times_grid: ArrayLike, surv: ArrayLike, time: ArrayLike, event: ArrayLike,
              train_time: ArrayLike, train_event: ArrayLike, risk: ArrayLike | None) -> _Data:
    t, e = check_outcome(time, event)
    tt, te = check_outcome(train_time, train_event, prefix="train_")
    grid, s = check_survival(times_grid, surv, t.size)
    r = risk_from_survival(grid, s) if risk is None else check_risk(risk, t.size)
    return _Data(grid, s, t, e, r, tt, te)


def _bootstrap(d: _Data, n_boot: int, seed: int, full: bool, tau: float,
               span: tuple[float, float] | None) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    n = d.time.size
    out: dict[str, list[float]] = {"c_index": [], "uno_c": [], "ibs": []}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        t, e, r = d.time[idx], d.event[idx], d.risk[idx]
        if not e.any() or np.unique(t).size < 2:
            continue
        c = _safe(lambda: harrell_c_fast(t, e, r))
        if c is None:
            continue
        out["c_index"].append(c)
        if full:
            u = _safe(lambda: uno_c(t, e, r, d.train_time, d.train_event, tau))
            if u is not None:
                out["uno_c"].append(u)
            b = _safe(lambda: ibs(d.grid, d.surv[idx], t, e, d.train_time, d.train_event, span))
            if b is not None:
                out["ibs"].append(b)
    return out


def _safe(fn: Callable[[], float | None]) -> float | None:
    """A bootstrap replicate without comparable pairs is skipped.

    scikit-survival raises ValueError and lifelines ZeroDivisionError for such a sample.
    """
    try:
        return fn()
    except (ValueError, ZeroDivisionError):
        return None


def survival_metrics(times_grid: ArrayLike, surv: ArrayLike, time: ArrayLike, event: ArrayLike,
                     train_time: ArrayLike, train_event: ArrayLike, horizons: Sequence[float] = HORIZONS,
                     n_boot: int = 200, seed: int = 0, risk: ArrayLike | None = None,
                     full_ci: bool = False, calibration_groups: int = 10) -> dict:
    """All evaluation metrics of predicted survival curves on one set of subjects.

    Returns a JSON-ready dict: ``n``, ``events``, ``risk_score`` (``"neg_rmst"``
    or ``"given"``), ``c_index`` and ``c_index_ci`` (percentile bootstrap 95 %,
    ``n_boot`` resamples of the subjects), ``uno_c`` and ``uno_tau``, ``td_auc``
    {horizon: value or None}, ``ibs`` and ``ibs_range`` [start, end] (or None),
    ``calibration`` {horizon: grouped calibration or None}, ``n_boot`` (valid
    replicates). With ``full_ci`` also ``uno_c_ci`` and ``ibs_ci`` from the same
    resamples. Bad input raises :class:`core.errors.InputError`.
    """
    d = _validate(times_grid, surv, time, event, train_time, train_event, risk)
    hs = check_horizons(horizons)
    if n_boot < 0:
        raise InputError("n_boot", n_boot, "must be >= 0", "use e.g. 200")
    tau = uno_tau(d.time, d.train_time)
    span = ibs_range(d.grid, d.time, d.train_time)

    calib: dict[int | float, dict | None] = {}
    for h in hs:
        usable = h <= d.grid[-1] and d.time.min() <= h < d.time.max() and (d.event & (d.time <= h)).any()
        pred = 1.0 - survival_at(d.grid, d.surv, [h])[:, 0]
        calib[_key(h)] = calibration_at(pred, d.time, d.event, h, calibration_groups) if usable else None

    boot = _bootstrap(d, n_boot, seed, full_ci, tau, span)
    out: dict = {
        "n": int(d.time.size),
        "events": int(d.event.sum()),
        "risk_score": "neg_rmst" if risk is None else "given",
        "c_index": harrell_c(d.time, d.event, d.risk),
        "c_index_ci": _interval(boot["c_index"]),
        "uno_c": uno_c(d.time, d.event, d.risk, d.train_time, d.train_event, tau),
        "uno_tau": tau,
        "td_auc": td_auc(d.grid, d.surv, d.time, d.event, d.train_time, d.train_event, hs),
        "ibs": ibs(d.grid, d.surv, d.time, d.event, d.train_time, d.train_event, span),
        "ibs_range": None if span is None else [span[0], span[1]],
        "calibration": calib,
        "n_boot": len(boot["c_index"]),
    }
    if full_ci:
        out["uno_c_ci"] = _interval(boot["uno_c"])
        out["ibs_ci"] = _interval(boot["ibs"])
    return out


def metric_spans(m: dict) -> str:
    """What Uno's C and the integrated Brier score of an evaluation ``m`` (:func:`survival_metrics`) cover, in words:
    both depend on it, so two values are comparable only over the same span.

    >>> metric_spans({"uno_tau": 1741.2, "ibs_range": [34.6, 2018.8]})
    "Uno's C compares pairs up to day 1741; the integrated Brier score averages days 35-2019"
    >>> metric_spans({"uno_tau": 900.0, "ibs_range": None})
    "Uno's C compares pairs up to day 900"
    """
    parts = []
    if m.get("uno_tau") is not None:
        parts.append(f"Uno's C compares pairs up to day {float(m['uno_tau']):.0f}")
    if m.get("ibs_range"):
        a, b = m["ibs_range"]
        parts.append(f"the integrated Brier score averages days {float(a):.0f}-{float(b):.0f}")
    return "; ".join(parts)
