"""Paired bootstrap comparison of two models' Harrell C on the same subjects.

Both risk scores are evaluated on the same resamples of the subjects, so the
interval of the difference accounts for their correlation. The p-value is the
two-sided bootstrap p of H0: delta = 0, ``min(1, 2 * min(P*(delta <= 0),
P*(delta >= 0)))`` with the +1 correction ``(count + 1) / (B + 1)``. Resamples where the two models rank every
comparable pair alike give delta exactly 0 and count in both tails: ``tied`` is their share (on a few subjects an
interval "to +0.000" with p = 0.39 is such a case, and ``tie_note`` says so).

>>> rng = np.random.default_rng(1)
>>> t = rng.exponential(1.0, 200); x = -np.log(t) + rng.normal(0, 0.5, 200)
>>> res = paired_bootstrap(x, rng.normal(size=200), t, np.ones(200), n_boot=200)
>>> res["delta_c"] > 0.2, res["p_value"] < 0.01
(True, True)
"""

from __future__ import annotations

import numpy as np

from core.errors import InputError
from core.evaluate.metrics import harrell_c, harrell_c_fast
from core.evaluate.outcomes import ArrayLike, check_outcome, check_risk


def paired_bootstrap(risk_a: ArrayLike, risk_b: ArrayLike, time: ArrayLike, event: ArrayLike,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"c_a", "c_b", "delta_c" (= c_a - c_b), "ci" [lo, hi] or None, "p_value", "n_boot", "tied"}``."""
    t, e = check_outcome(time, event)
    a = check_risk(risk_a, t.size, "risk_a")
    b = check_risk(risk_b, t.size, "risk_b")
    try:
        c_a, c_b = harrell_c(t, e, a), harrell_c(t, e, b)
    except ValueError:  # scikit-survival: no comparable pair at all
        raise InputError("time/event", f"{t.size} subjects, {int(e.sum())} event{'' if int(e.sum()) == 1 else 's'}",
                         "hold no comparable pair (no event before another subject's follow-up ends)",
                         "compare the models on a split with more events") from None
    rng = np.random.default_rng(seed)
    deltas: list[float] = []
    for _ in range(n_boot):
        idx = rng.integers(0, t.size, t.size)
        te, tt = e[idx], t[idx]
        if not te.any():
            continue
        try:
            deltas.append(harrell_c_fast(tt, te, a[idx]) - harrell_c_fast(tt, te, b[idx]))
        except (ValueError, ZeroDivisionError):  # no comparable pair in this resample (lifelines raises either)
            continue
    d = np.asarray(deltas)
    ci = [float(v) for v in np.percentile(d, [2.5, 97.5])] if d.size >= 10 else None
    if d.size:
        tail = min((d <= 0).sum(), (d >= 0).sum())
        p = min(1.0, 2.0 * (tail + 1) / (d.size + 1))
    else:
        p = float("nan")
    tied = float((d == 0).mean()) if d.size else 0.0
    return {"c_a": c_a, "c_b": c_b, "delta_c": c_a - c_b, "ci": ci, "p_value": float(p), "n_boot": int(d.size),
            "tied": tied}


#: a share of tied resamples (delta exactly 0) worth a word beside the interval
TIE_SHARE = 0.05


def tie_note(tied: float | None) -> str:
    """The words for a paired comparison where many resamples tie ("" when few do).

    >>> tie_note(0.31)
    '31 % of the resamples rank every pair alike (delta exactly 0): too few subjects to tell the two models apart'
    >>> tie_note(0.01)
    ''
    """
    if tied is None or tied < TIE_SHARE:
        return ""
    return (f"{100 * tied:.0f} % of the resamples rank every pair alike (delta exactly 0): too few subjects to tell "
            "the two models apart")
