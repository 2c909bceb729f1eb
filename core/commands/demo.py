"""``python -m core demo OUT [--n N] [--seed S] [--json]``: write the embedded demo cohort."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "write the embedded demo cohort (CT phantoms, MEDS timelines, outcomes with ground-truth risk)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.demo.cohort import DEFAULT_N

    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write (new, empty, or an earlier demo)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of subjects (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same cohort")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from core.commands.progress import command_progress
    from core.demo.cohort import (
        c_index_summary,
        check_out,
        check_seed,
        write_demo_cohort,
    )
    from core.demo.latents import check_n

    started = time.perf_counter()
    check_out(args.out)  # bad arguments fail before the progress bar starts
    check_n(args.n)
    check_seed(args.seed)
    with command_progress("demo") as progress:
        out = write_demo_cohort(args.out, n=args.n, seed=args.seed, progress=progress)
    table = pd.read_csv(out / "cohort.csv")
    c = c_index_summary(table, "test")
    summary = {
        "out": str(out),
        "n": int(len(table)),
        "events": int(table["event"].sum()),
        "censored_fraction": round(float(1 - table["event"].mean()), 4),
        "lesions": int(table["lesion"].sum()),  # lung nodules
        "liver_lesions": int(table["liver_lesion"].sum()) if "liver_lesion" in table.columns else 0,
        "splits": {k: int(v) for k, v in table["split"].value_counts().sort_index().items()},
        "c_index_test": {k: round(v, 4) for k, v in c.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['n']} subjects to {out} ({summary['events']} events, "
              f"{summary['lesions']} lung nodules, {summary['liver_lesions']} liver lesions) in {summary['seconds']} s; test C-index oracle "
              f"{c['oracle']:.3f}, image part {c['image_part']:.3f}, EHR part {c['ehr_part']:.3f}")
    return 0
