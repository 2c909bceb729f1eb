"""Harrell's C patient by patient: how many of the comparable pairs a patient is in the model orders right.

Harrell's C counts the comparable pairs whose order the risk gets right. A pair ``(i, j)`` is comparable when ``i``
had the event before ``j``'s time (``T_i < T_j``), or at the same time as ``j`` was censored; it is concordant when
``r_i > r_j`` (higher risk, earlier event), half concordant when ``r_i == r_j`` (scikit-survival's
``concordance_index_censored`` conventions, except that risks tie only when equal: it takes those within 1e-8 as tied). Each patient's share of the pairs it is in, ordered right, says which
patients the model ranks worst: an early event it ranked low, a long survivor it ranked high. Summed over the
patients every pair is counted twice, so ``sum(concordant) / sum(comparable)`` is Harrell's C itself (tested
against scikit-survival).

Counted in O(n log n) with a Fenwick tree over the risk ranks: a test split of 100,000 patients takes about a second.

>>> conc, comp = patient_concordance([1, 2, 3], [1, 1, 0], [3.0, 1.0, 2.0])  # patient 1: an event ranked lowest
>>> conc.tolist(), comp.tolist()
([2.0, 1.0, 1.0], [2.0, 2.0, 2.0])
>>> patient_table(["a", "b", "c"], [1, 2, 3], [1, 1, 0], [3.0, 1.0, 2.0])["subject_id"].tolist()  # worst first
['b', 'c', 'a']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.evaluate.outcomes import ArrayLike, check_outcome, check_risk


class _Counts:
    """A Fenwick tree of counts over ranks 1..n: add one at a rank, count the ranks at or below one."""

    def __init__(self, n: int) -> None:
        self.tree = np.zeros(n + 1, dtype=np.int64)
        self.total = 0

    def add(self, rank: int) -> None:
        self.total += 1
        while rank < len(self.tree):
            self.tree[rank] += 1
            rank += rank & -rank

    def upto(self, rank: int) -> int:
        found = 0
        while rank > 0:
            found += int(self.tree[rank])
            rank -= rank & -rank
        return found


def patient_concordance(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(concordant, comparable)`` per patient: the comparable pairs each patient is in, and how many of them the
    risk orders right (a tie in risk counts 1/2), in the order of the inputs."""
    t, e = check_outcome(time, event)
    r = check_risk(risk, len(t))
    n = len(t)
    ranks = np.unique(r, return_inverse=True)[1].astype(np.int64) + 1  # 1 = lowest risk; equal risks share a rank
    # a censored patient sorts after the events at its own time: key_i < key_j <=> (i, j) can be comparable
    key = 2 * np.unique(t, return_inverse=True)[1].astype(np.int64) + (e == 0)
    conc, comp = np.zeros(n), np.zeros(n)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    groups = np.split(order, bounds)
    later = _Counts(int(ranks.max()))  # as the earlier event: every patient after it (higher key)
    for group in reversed(groups):
        for k in group:
            if e[k]:
                below, at = later.upto(ranks[k] - 1), later.upto(ranks[k])
                comp[k] += later.total
                conc[k] += below + 0.5 * (at - below)
        for k in group:
            later.add(int(ranks[k]))
    earlier = _Counts(int(ranks.max()))  # as the later patient: every event before it (lower key)
    for group in groups:
        for k in group:
            below, at = earlier.upto(ranks[k] - 1), earlier.upto(ranks[k])
            comp[k] += earlier.total
            conc[k] += (earlier.total - at) + 0.5 * (at - below)
        for k in group:
            if e[k]:
                earlier.add(int(ranks[k]))
    return conc, comp


def patient_table(ids: Sequence[str], time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> pd.DataFrame:
    """Every patient, worst-ordered first: ``subject_id``, ``risk`` (higher = earlier event expected), ``time``,
    ``event``, ``rank`` (1 = the highest risk; equal risks share the best rank), ``n`` (patients), ``concordant``,
    ``comparable`` and ``share`` (concordant / comparable; NaN for a patient in no comparable pair, listed last).
    Among equal shares, the patient in more pairs comes first: its share says more."""
    conc, comp = patient_concordance(time, event, risk)
    if len(ids) != len(conc):
        raise ValueError(f"ids: {len(ids)} ids for {len(conc)} patients; give one id per patient")
    frame = pd.DataFrame({"subject_id": [str(i) for i in ids], "risk": np.asarray(risk, dtype=float),
                          "time": np.asarray(time, dtype=float), "event": np.asarray(event).astype(int)})
    frame = frame.assign(rank=frame["risk"].rank(ascending=False, method="min").astype(int), n=len(frame),
                         concordant=conc, comparable=comp.astype(int),
                         share=np.divide(conc, comp, out=np.full(len(comp), np.nan), where=comp > 0))
    return frame.sort_values(["share", "comparable"], ascending=[True, False], na_position="last", kind="stable")
