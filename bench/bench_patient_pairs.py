"""Harrell's C patient by patient (``core.evaluate.patient_pairs``) against scikit-survival's whole-cohort C.

Cohort & models splits a model's C-index over its test patients to list the ones it orders worst. The split costs
O(n log n) (a Fenwick tree over the risk ranks); this prints its time beside scikit-survival's
``concordance_index_censored`` on the same data (the reference: one number, no split) and, up to 5,000 patients, a
pair-by-pair numpy count of the same split, with the largest difference of the C each gives.

    python bench/bench_patient_pairs.py [--sizes 1000,10000,100000] [--seed 0]

Prints one JSON line per size: ``n``, ``ours_s``, ``sksurv_c_s``, ``ratio_to_sksurv`` (ours / sksurv), ``pairs_s`` and
``ratio_to_pairs`` (None above 5,000), ``c_difference`` (|ours' C - sksurv's C|).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluate.patient_pairs import patient_concordance  # noqa: E402

PAIRS_UP_TO = 5000


def _pairs(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same split, every pair looked at (numpy, row by row)."""
    conc, comp = np.zeros(len(t)), np.zeros(len(t))
    for i in np.flatnonzero(e):
        later = (t > t[i]) | ((t == t[i]) & (e == 0))
        c = (r[i] > r[later]) + 0.5 * (r[i] == r[later])
        comp[i] += later.sum()
        conc[i] += c.sum()
        comp[later] += 1
        conc[later] += c
    return conc, comp


def _time(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    from sksurv.metrics import concordance_index_censored

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(args.seed)
        t = np.round(rng.exponential(500, n))  # whole days: tied times, as in a real cohort
        e = (rng.random(n) < 0.5).astype(int)
        r = np.round(rng.normal(size=n) - t / 1000, 3)  # a score that follows the outcome a little, with ties
        (conc, comp), ours = _time(patient_concordance, t, e, r)
        ref, sk = _time(lambda: concordance_index_censored(e.astype(bool), t, r)[0])
        row = {"n": n, "ours_s": round(ours, 4), "sksurv_c_s": round(sk, 4), "ratio_to_sksurv": round(ours / sk, 2),
               "pairs_s": None, "ratio_to_pairs": None, "c_difference": float(abs(conc.sum() / comp.sum() - ref))}
        if n <= PAIRS_UP_TO:
            (pc, pm), brute = _time(_pairs, t, e, r)
            assert np.allclose(pc, conc) and np.array_equal(pm, comp), "the split differs from the pair-by-pair count"
            row.update(pairs_s=round(brute, 4), ratio_to_pairs=round(ours / brute, 3))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
