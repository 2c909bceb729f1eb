"""External check of demo models: every subject of an independent demo cohort (another seed).

The default demo's test split has 160 subjects, so its C-indices carry about
+-0.05 of sampling noise, and it is the split the models were compared on. This
script scores model folders on all subjects of a demo cohort drawn with another
seed (same generator, new patients, new CT noise), against the oracle C-index of
``true_risk`` and of its two parts on the same subjects.

Usage::

    python -m core demo /tmp/ext --n 800 --seed 1
    python bench/external_demo.py --cohort /tmp/ext                 # the shipped demo models
    python bench/external_demo.py --cohort /tmp/ext --models DIR    # model folders under DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from core.cohort import load_cohort
    from core.evaluate.metrics import harrell_c, survival_metrics
    from core.predict import predict_cohort
    from core.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="a demo cohort written by `python -m core demo --seed S` (S not 0)")
    parser.add_argument("--models", type=Path, default=ROOT / "assets" / "demo_models", help="folder of model folders")
    args = parser.parse_args(argv)
    if not (args.cohort / "cohort.csv").is_file():
        print(f"error: cohort: no cohort.csv in {args.cohort}; fix: write one with `python -m core demo DIR --seed 1`", file=sys.stderr)
        return 2
    table = pd.read_csv(args.cohort / "cohort.csv")
    ids = table["subject_id"].astype(str).tolist()
    t = table["time"].to_numpy(float)
    e = table["event"].to_numpy(int)
    cohort = load_cohort(args.cohort)
    folders = sorted(p.parent for p in args.models.glob("*/metrics.json"))
    if not folders:
        print(f"error: models: no model folder (with metrics.json) under {args.models}; fix: pass --models DIR", file=sys.stderr)
        return 2
    oracle = harrell_c(t, e, table["true_risk"].to_numpy(float))
    print(f"cohort {args.cohort}: n = {len(ids)}, events = {int(e.sum())}; oracle C {oracle:.3f}, "
          f"image part {harrell_c(t, e, table['risk_image'].to_numpy(float)):.3f}, "
          f"EHR part {harrell_c(t, e, table['risk_ehr'].to_numpy(float)):.3f}")
    # every subject is held out: the censoring distribution for Uno's C and the IBS is estimated on the same subjects
    print("| model | Harrell C (95% CI) | Uno C | IBS | gap to oracle | seconds |\n| --- | --- | --- | --- | --- | --- |")
    for folder in folders:
        started = time.perf_counter()
        model = load_model(folder)
        times, surv = predict_cohort(model, cohort, ids)
        m = survival_metrics(times, surv, t, e, t, e, n_boot=200, seed=0)
        lo, hi = m["c_index_ci"]
        ibs = "n/a" if m["ibs"] is None else f"{m['ibs']:.3f}"
        print(f"| {folder.name} | {m['c_index']:.3f} ({lo:.3f}-{hi:.3f}) | {m['uno_c']:.3f} | {ibs} | "
              f"{oracle - m['c_index']:.3f} | {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
