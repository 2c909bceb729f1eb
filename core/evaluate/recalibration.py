"""Recalibration of predicted survival curves to a new site, fitted on that site's outcomes.

A model validated at another hospital usually keeps its ranking (C-index) but not its absolute risks: the site's
patients fare better or worse than the training site's, and their predicted risks are too close together or too
far apart. The update that keeps the model (the recalibration step of model updating, Steyerberg, Clinical
Prediction Models, ch. 20) acts on the cumulative hazard ``H = -log S`` on the complementary log-log scale::

    log H'(t | x) = a + c m(t) + b (log H(t | x) - m(t))

with ``m(t)`` the mean of ``log H(t | x)`` over the site's patients at time ``t``. ``a`` sets the level of every
patient's hazard (calibration in the large), ``b`` the spread between patients at each time (the calibration
slope: ``b > 1`` when the predicted risks are too close together) and ``c`` the course of the average curve over
time. ``b = c`` is the two-number update ``H' = exp(a) * H ** b``, in which one number set both the spread and the
course: on 400 new demo patients the shipped ehr_only's Cox calibration slope was 2.2, and that update found
b = 1.15 (the spread at the cost of the course) and left it nearly alone (docs/BENCHMARKS.md). Applied, the update
is ``log H' = offset(t) + b log H`` with ``offset(t) = a + (c - b) m(t)`` on the model's time grid (kept with the
model); a cumulative hazard of 0 stays 0 and each curve is kept non-increasing (``H'`` is held at its running
maximum over time). With ``b > 0`` the order of patients at each time is kept (up to a curve held flat).

``a``, ``b`` and ``c`` maximise the likelihood of the site's right-censored times on the model's time grid (an
event: the probability of the grid interval that holds it; a censored time: the survival at it, linear between
grid points; beyond the grid: the survival at its end).

:func:`recalibration_report` fits them on every subject, with bootstrap intervals, and measures what they gain
honestly: the curves of each of ``folds`` folds recalibrated by a fit on the other folds (cross-fitting), against
the original curves, by integrated Brier score and calibration at each horizon. The network applies a fit with
``core.models.recalibration.SiteRecalibration`` (the same formula on tensors).

>>> grid = np.array([0.0, 100.0, 200.0])
>>> surv = np.tile([1.0, 0.9, 0.8], (4, 1))
>>> np.round(recalibrated(surv, np.log(2.0), 1.0)[0], 3).tolist()
[1.0, 0.81, 0.64]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize

from core.errors import InputError

EPS = 1e-12
MIN_EVENTS = 20  # three parameters: fewer events give a fit that moves with each patient
FEW_EVENTS = 100  # below: the slope is uncertain (the report says so)
BOUNDS = ((-6.0, 6.0), (np.log(0.2), np.log(10.0)), (np.log(0.2), np.log(5.0)))  # a; log b; log c


def log_hazard(surv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log H`` of curves ``[..., T]`` (0 where ``H`` is 0) and where ``H > 0`` (S is clamped to [EPS, 1])."""
    hazard = -np.log(np.clip(np.asarray(surv, dtype=float), EPS, 1.0))
    positive = hazard > 0
    return np.log(np.where(positive, hazard, 1.0)), positive


def mean_log_hazard(surv: np.ndarray) -> np.ndarray:
    """``m(t)``: the mean ``log H`` at each time over the curves with ``H > 0`` there (0 where none has)."""
    log_h, positive = log_hazard(np.asarray(surv, dtype=float).reshape(-1, np.shape(surv)[-1]))
    return np.where(positive, log_h, 0.0).sum(0) / np.maximum(positive.sum(0), 1)


def offsets(a: float, b: float, c: float, m: np.ndarray) -> np.ndarray:
    """``offset(t) = a + (c - b) m(t)``: the update as ``log H' = offset(t) + b log H``."""
    return a + (c - b) * np.asarray(m, dtype=float)


def recalibrated(surv: np.ndarray, offset: float | np.ndarray, b: float) -> np.ndarray:
    """Curves ``surv`` ``[..., T]`` with ``log H' = offset + b log H`` (``offset`` a number or ``[T]``), ``H = 0``
    kept, each curve held non-increasing."""
    return _apply(*log_hazard(surv), offset, b)


def _apply(log_h: np.ndarray, positive: np.ndarray, offset: float | np.ndarray, b: float) -> np.ndarray:
    hazard = np.where(positive, np.exp(np.asarray(offset, dtype=float) + b * log_h), 0.0)
    return np.exp(-np.maximum.accumulate(hazard, axis=-1))


def entry_offsets(entry: Mapping[str, Any], n_times: int) -> np.ndarray:
    """The ``[T]`` offsets of a config.json ``recalibration`` entry (one written by session 41 holds ``a`` only)."""
    if "offset" in entry:
        return np.asarray(entry["offset"], dtype=float)
    return np.full(n_times, float(entry["a"]))


def compose(first: Mapping[str, Any] | None, then: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """``(offset, b)`` of a recalibration ``then`` (a fit: ``offset``, ``b``) applied after ``first`` (the entry of a
    model already recalibrated to another site): ``offset_then + b_then * offset_first``, ``b_first * b_then``.

    >>> off, b = compose({"a": 0.5, "b": 2.0}, {"offset": [0.1, 0.1], "b": 0.5})
    >>> off.tolist(), b
    ([0.35, 0.35], 1.0)
    """
    off2, b2 = np.asarray(then["offset"], dtype=float), float(then["b"])
    if not first:
        return off2, b2
    return off2 + b2 * entry_offsets(first, off2.size), float(first["b"]) * b2


def _likelihood_parts(grid: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per subject: the grid points before and after its time, the weight of the later one (censored times read
    linearly between them), and whether it counts as an event (events beyond the grid count as censored there)."""
    end = float(grid[-1])
    t = np.clip(time, grid[0], end)
    hi = np.clip(np.searchsorted(grid, t, side="left"), 1, len(grid) - 1)
    lo = hi - 1
    weight = np.clip((t - grid[lo]) / np.maximum(grid[hi] - grid[lo], EPS), 0.0, 1.0)
    is_event = (event > 0) & (time <= end)
    return lo, hi, weight, is_event


def _nll(params: np.ndarray, log_h: np.ndarray, positive: np.ndarray, m: np.ndarray,
         parts: tuple[np.ndarray, ...]) -> float:
    lo, hi, weight, is_event = parts
    a, b, c = float(params[0]), float(np.exp(params[1])), float(np.exp(params[2]))
    s = _apply(log_h, positive, offsets(a, b, c, m), b)
    rows = np.arange(s.shape[0])
    s_lo, s_hi = s[rows, lo], s[rows, hi]
    lik = np.where(is_event, s_lo - s_hi, (1 - weight) * s_lo + weight * s_hi)
    return float(-np.log(np.clip(lik, EPS, None)).sum())


def _check(grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray, min_events: int) -> None:
    if surv.ndim != 2 or surv.shape != (time.size, grid.size):
        raise InputError("surv", f"shape {surv.shape}", f"is not [{time.size} subjects, {grid.size} times]",
                         "pass one curve on the model's time grid per subject")
    n_events = int((event > 0).sum())
    if n_events < min_events:
        raise InputError("event", f"{n_events} events in {time.size} subjects",
                         f"are too few to fit a recalibration (at least {min_events})",
                         "recalibrate on a cohort of this site with more observed events")


def fit_recalibration(grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray, *,
                      min_events: int = MIN_EVENTS) -> dict[str, Any]:
    """``{"a", "b", "c", "offset" ([T] list), "nll_before", "nll_after"}`` (negative log-likelihoods summed over the
    subjects); InputError with fewer than ``min_events`` events. Never worse than the curves as they are."""
    grid, surv = np.asarray(grid, dtype=float), np.asarray(surv, dtype=float)
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float)
    _check(grid, surv, time, event, min_events)
    parts = _likelihood_parts(grid, time, event)
    log_h, positive = log_hazard(surv)
    m = mean_log_hazard(surv)
    start = np.zeros(3)
    before = _nll(start, log_h, positive, m, parts)
    res = minimize(_nll, start, args=(log_h, positive, m, parts), method="L-BFGS-B", bounds=BOUNDS)
    params = res.x if res.fun <= before else start
    a, b, c = float(params[0]), float(np.exp(params[1])), float(np.exp(params[2]))
    return {"a": a, "b": b, "c": c, "offset": offsets(a, b, c, m).tolist(), "nll_before": before,
            "nll_after": float(min(res.fun, before))}


def cross_fitted(grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray, folds: int = 5,
                 seed: int = 0) -> np.ndarray:
    """The curves of each fold recalibrated by a fit on the other folds (folds drawn within events and censored
    subjects apart, so each holds its share of events)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(time.size, dtype=int)
    for group in (event > 0, event <= 0):
        idx = np.flatnonzero(group)
        fold[rng.permutation(idx)] = np.arange(idx.size) % folds
    out = np.empty_like(surv, dtype=float)
    for k in range(folds):
        test = fold == k
        fit = fit_recalibration(grid, surv[~test], time[~test], event[~test], min_events=1)  # the whole passed
        out[test] = recalibrated(surv[test], np.asarray(fit["offset"]), fit["b"])
    return out


def _summary(grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray,
             horizons: Sequence[float]) -> dict:
    from core.evaluate.calibration import km_risk_at
    from core.evaluate.metrics import survival_at, survival_metrics

    metrics = survival_metrics(grid, surv, time, event, time, event, horizons=horizons, n_boot=0)
    calibration = {}
    for h, cal in metrics["calibration"].items():
        predicted = float(np.mean(1.0 - survival_at(grid, surv, [float(h)])[:, 0]))
        observed = km_risk_at(time, event, float(h))
        calibration[h] = {**(cal or {"groups": [], "ici": None, "e_max": None, "slope": None, "intercept": None}),
                          "predicted": predicted, "observed": observed}
    return {"c_index": metrics["c_index"], "ibs": metrics["ibs"], "calibration": calibration}


def recalibration_report(grid: np.ndarray, surv: np.ndarray, time: np.ndarray, event: np.ndarray,
                         horizons: Sequence[float], *, folds: int = 5, n_boot: int = 100, seed: int = 0) -> dict:
    """The fit on every subject (``a``, ``b``, ``c``, ``offset``, bootstrap 95 % intervals ``a_ci``, ``b_ci``,
    ``c_ci``), ``n``, ``events``, ``folds``, ``note`` (few events, or None), and ``before`` / ``after``: C-index, integrated Brier
    score and calibration per horizon (``core.evaluate.calibration.calibration_at``'s groups, ICI, slope and
    intercept, with the mean predicted risk and the Kaplan-Meier observed risk of all subjects) of the original
    curves and of the cross-fitted recalibrated ones."""
    grid, surv = np.asarray(grid, dtype=float), np.asarray(surv, dtype=float)
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float)
    fit = fit_recalibration(grid, surv, time, event)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, time.size, time.size)
        if int((event[idx] > 0).sum()) >= MIN_EVENTS:
            one = fit_recalibration(grid, surv[idx], time[idx], event[idx])
            draws.append((one["a"], one["b"], one["c"]))
    ci = np.quantile(np.array(draws), [0.025, 0.975], axis=0) if len(draws) >= 20 else None
    n_events = int((event > 0).sum())
    k = int(min(folds, max(2, n_events // 10)))
    after = cross_fitted(grid, surv, time, event, folds=k, seed=seed)
    before_summary, after_summary = _summary(grid, surv, time, event, horizons), _summary(grid, after, time, event, horizons)
    notes = [f"{n_events} events (fewer than {FEW_EVENTS}): the slope b is uncertain, see its interval"] if n_events < FEW_EVENTS else []
    at_limit = [name for name, value, (lo, hi) in (("a", fit["a"], BOUNDS[0]), ("b", np.log(fit["b"]), BOUNDS[1]),
                                                   ("c", np.log(fit["c"]), BOUNDS[2]))
                if min(abs(value - lo), abs(value - hi)) < 1e-6]
    if at_limit:  # the likelihood wanted more than the allowed range: not a fit to trust
        notes.append(f"the fit stopped at the limit of its range ({', '.join(f'{k} = {fit[k]:.3g}' for k in at_limit)}): "
                     + ("the model's risks hardly differ between this cohort's patients, and stretching them this far "
                        "does not make them rank the patients; " if "b" in at_limit else "")
                     + "keep the original model, or retrain on this site's patients")
    ibs = (before_summary["ibs"], after_summary["ibs"])
    if None not in ibs and round(ibs[1], 3) > round(ibs[0], 3):  # the fit does not carry to patients it did not see
        notes.append(f"cross-fitted, the recalibration scores worse than the original (integrated Brier score "
                     f"{ibs[0]:.3f} -> {ibs[1]:.3f}): this cohort does not support it, keep the original model "
                     "(the copy keeps the order of patients at each time; the cross-fitted C differs as each fold is fitted apart)")
    return {
        **fit, "a_ci": None if ci is None else [float(ci[0, 0]), float(ci[1, 0])],
        "b_ci": None if ci is None else [float(ci[0, 1]), float(ci[1, 1])],
        "c_ci": None if ci is None else [float(ci[0, 2]), float(ci[1, 2])],
        "n": int(time.size), "events": n_events, "folds": k,
        "note": "; ".join(notes) or None,
        "before": before_summary,
        "after": after_summary,
    }
