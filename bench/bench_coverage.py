"""Coverage of 90 % lower predictive bounds on the event time: the model's band against the conformal bound.

For each model on a cohort, on the test split, at each horizon inside follow-up
(see :mod:`core.evaluate.coverage` for the definition, IPCW with the censoring
Kaplan-Meier of the train split):

- **band**: the bound read off the lower edge of ``LoadedModel.predict_case``'s
  band (range of the 5-network ensemble), L = first time lower(s) <= 0.9;
- **curve**: the same read off the point curve (the model's own 10 % quantile);
- **conformal**: the Candès-Lei-Ren weighted conformal bound calibrated on the
  val split (:mod:`core.evaluate.conformal`), applied to the test split;
- **conformal, 200 re-splits**: mean (and 5th-95th percentile) coverage when the
  val + test subjects are re-split at random into calibration and test halves
  200 times (no model call: the guarantee is over calibration draws, this
  removes the luck of one split).

Cohorts: the demo (models from ``assets/demo_models``, trained on the default
n=800 seed=0 demo) and SurvSet datasets written by ``bench/survset_cohorts.py``
with ``ehr_only`` trained by ``core.train.train_model`` (``--epochs`` caps the
epochs; the ensemble stays at its default of 5 networks). Curves and band edges
are cached under ``--work`` so a rerun only recomputes the numbers.

    python -m core demo /tmp/h2/demo --n 800
    python bench/bench_coverage.py --demo /tmp/h2/demo --fusions concat,ehr_only \\
        --survset rott2,GBSG2,flchain,colon --epochs 15 --work /tmp/h2/bench [--json out.json]

A horizon is reported where it lies inside the val and the test follow-up (the
first follow-up time at or before it, the last after it) and below the last
training time; "saturated" marks a horizon where fewer than alpha of the test
patients have had the event by then (every bound truncated there covers more
than 1 - alpha, see core.evaluate.coverage). Measured on 2 shared CPU cores:
ehr_only training (15 epochs, ensemble of 5) took 43 s (GBSG2) to 539 s
(flchain); the demo concat band (160 test cases through predict_case) about
30 min under load; a rerun from the cache 42 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time as clock
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.evaluate.conformal import apply_lower_bound, calibrate_lower_bound
from core.evaluate.coverage import band_coverage, horizon_usable, lpb_coverage

HORIZONS = (30.0, 365.0, 1825.0)
RESPLITS = 200


def curves(model_dir: Path, cohort_dir: Path, cache: Path) -> dict[str, np.ndarray]:
    """times, val/test curves, test band lower edges and outcomes; cached in ``cache`` (npz)."""
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    from core.cohort import load_cohort
    from core.evaluation import band_lower_edges
    from core.predict import predict_cohort
    from core.registry import load_model

    cohort = load_cohort(cohort_dir)
    model = load_model(model_dir, device="cpu")
    table = cohort.table.set_index("subject_id")
    out: dict[str, np.ndarray] = {}
    t0 = clock.perf_counter()
    for split in ("train", "val", "test"):
        ids = cohort.ids(split)
        out[f"{split}_time"] = table.loc[ids, "time"].to_numpy(dtype=float)
        out[f"{split}_event"] = table.loc[ids, "event"].to_numpy(dtype=int)
        if split != "train":
            times, surv = predict_cohort(model, cohort, ids)
            out["times"], out[f"{split}_surv"] = np.asarray(times, dtype=float), np.asarray(surv, dtype=float)
    out["test_lower"] = band_lower_edges(model, cohort, cohort.ids("test"), out["times"])
    out["seconds"] = np.array(clock.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    return out


def conformal_coverage(d: dict[str, np.ndarray], cal: np.ndarray, test: np.ndarray, hs: list[float],
                       alpha: float, val_test: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[float, dict]:
    """Calibrate on subjects ``cal`` and measure on ``test`` (indices into the val + test pool)."""
    time, event, surv = val_test
    c = calibrate_lower_bound(d["times"], surv[cal], time[cal], event[cal], hs, d["train_time"], d["train_event"],
                              alpha)
    bounds = apply_lower_bound(d["times"], surv[test], c)
    out = {}
    for k, h in enumerate(hs):
        r = lpb_coverage(time[test], event[test], bounds[:, k], h, d["train_time"], d["train_event"])
        r["level"] = c.levels[k]
        out[h] = r
    return out


def evaluate(d: dict[str, np.ndarray], alpha: float, seed: int) -> dict[float, dict]:
    tt, te = d["train_time"], d["train_event"]
    band = band_coverage(d["times"], d["test_surv"], d["test_lower"], d["test_time"], d["test_event"], tt, te,
                         HORIZONS, alpha)["horizons"]
    n_val = d["val_time"].size
    pool = (np.concatenate([d["val_time"], d["test_time"]]), np.concatenate([d["val_event"], d["test_event"]]),
            np.concatenate([d["val_surv"], d["test_surv"]]))
    hs = [h for h in HORIZONS if horizon_usable(h, d["val_time"], float(d["times"][-1]), tt)
          and horizon_usable(h, d["test_time"], float(d["times"][-1]), tt)]
    fixed = conformal_coverage(d, np.arange(n_val), np.arange(n_val, pool[0].size), hs, alpha, pool)
    rng = np.random.default_rng(seed)
    draws: dict[float, list[float]] = {h: [] for h in hs}
    for _ in range(RESPLITS):
        perm = rng.permutation(pool[0].size)
        half = pool[0].size // 2
        res = conformal_coverage(d, perm[:half], perm[half:], hs, alpha, pool)
        for h in hs:
            if res[h]["coverage"] is not None:
                draws[h].append(res[h]["coverage"])
    rows: dict[float, dict] = {}
    for h in HORIZONS:
        b = band.get(int(h))
        if b is None or h not in fixed:
            continue
        dr = np.array(draws[h])
        rows[h] = {"event_prob": b["curve"]["event_prob"], "n_test": b["curve"]["n"], "n_known": b["curve"]["n_known"],
                   "band": b["band"]["coverage"], "curve": b["curve"]["coverage"],
                   "conformal": fixed[h]["coverage"], "level": fixed[h]["level"],
                   "resplit_mean": float(dr.mean()), "resplit_p05": float(np.quantile(dr, 0.05)),
                   "resplit_p95": float(np.quantile(dr, 0.95)),
                   "saturated": bool(b["curve"]["event_prob"] < alpha)}
    return rows


def survset_model(name: str, work: Path, epochs: int, seed: int) -> tuple[Path, Path]:
    """Write the SurvSet cohort and train ehr_only on it (skipped when the model folder exists)."""
    from survset_cohorts import write_survset_cohort

    cohort_dir = work / "survset" / name
    if not (cohort_dir / "cohort.csv").exists():
        write_survset_cohort(name, work / "survset", seed=seed)
    model_dir = work / "models" / f"{name}_ehr_only"
    if not (model_dir / "config.json").exists():
        from core.train import train_model

        t0 = clock.perf_counter()
        train_model(cohort_dir, "ehr_only", model_dir, epochs=epochs, seed=seed, device="cpu")
        print(f"# trained ehr_only on {name} in {clock.perf_counter() - t0:.0f} s", file=sys.stderr)
    return cohort_dir, model_dir


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, help="demo cohort folder (python -m core demo DIR --n 800)")
    ap.add_argument("--demo-models", type=Path, default=ROOT / "assets" / "demo_models")
    ap.add_argument("--fusions", default="concat,ehr_only", help="demo models to evaluate")
    ap.add_argument("--survset", default="rott2,GBSG2,flchain,colon", help="SurvSet datasets ('' for none)")
    ap.add_argument("--epochs", type=int, default=15, help="epoch cap for ehr_only on SurvSet")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_coverage"))
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    jobs: list[tuple[str, str, Path, Path]] = []
    if args.demo:
        for f in [f for f in args.fusions.split(",") if f]:
            jobs.append(("demo", f, args.demo, args.demo_models / f))
    for name in [n for n in args.survset.split(",") if n]:
        cohort_dir, model_dir = survset_model(name, args.work, args.epochs, args.seed)
        jobs.append((name, "ehr_only", cohort_dir, model_dir))

    results: dict[str, dict] = {}
    print(f"| dataset | model | horizon (d) | P(event by t) | test n (known) | ensemble band | curve | "
          f"conformal (val-calibrated) | a_t | conformal, {RESPLITS} re-splits mean [5-95 %] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset, fusion, cohort_dir, model_dir in jobs:
        d = curves(model_dir, cohort_dir, args.work / "cache" / f"{dataset}_{fusion}.npz")
        rows = evaluate(d, args.alpha, args.seed)
        results[f"{dataset}/{fusion}"] = {str(int(h)): r for h, r in rows.items()}
        for h, r in rows.items():
            sat = " (saturated)" if r["saturated"] else ""
            level = "horizon" if r["level"] is None else f"{r['level']:.3f}"
            print(f"| {dataset} | {fusion} | {int(h)}{sat} | {r['event_prob']:.3f} | {r['n_test']} ({r['n_known']}) | "
                  f"{_f(r['band'])} | {_f(r['curve'])} | {_f(r['conformal'])} | "
                  f"{level} | "
                  f"{r['resplit_mean']:.3f} [{r['resplit_p05']:.3f}, {r['resplit_p95']:.3f}] |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
