"""``python -m core recalibrate --model MODEL --cohort DIR --out NEW_MODEL [--split all] [--json]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "write a copy of a model recalibrated to a site's cohort (its curves' absolute risks, not its ranking)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (config.json, *.safetensors)")
    parser.add_argument("--cohort", required=True, type=Path,
                        help="the site's cohort folder, with outcomes (cohort.csv time and event)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the recalibrated copy")
    parser.add_argument("--split", default="all", choices=("train", "val", "test", "all"),
                        help="subjects to fit on (default all: every subject of a cohort the model never saw)")
    parser.add_argument("--horizons", default="30,365,1825", help="comma-separated horizons in days for the report")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _risk_line(h: object, before: dict, after: dict) -> str:
    observed = "n/a" if before["observed"] is None else f"{before['observed']:.3f}"
    slopes = (before.get("slope"), after.get("slope"))
    return (f"  risk at {float(h):g} d: predicted {before['predicted']:.3f} -> {after['predicted']:.3f}, "
            f"observed (Kaplan-Meier) {observed}"
            + ("" if None in slopes else f"; calibration slope {slopes[0]:.2f} -> {slopes[1]:.2f} (1 ideal)"))


def run(args: argparse.Namespace) -> int:
    from core.commands.progress import command_progress
    from core.errors import InputError
    from core.recalibrate import recalibrate_model

    try:
        horizons = tuple(float(h) for h in str(args.horizons).split(",") if h.strip())
    except ValueError:
        raise InputError("--horizons", args.horizons, "must be numbers of days", "use e.g. 30,365,1825") from None
    with command_progress("recalibrate") as progress:  # on stderr: stdout stays one JSON object
        res = recalibrate_model(args.model, args.cohort, args.out, split=args.split, horizons=horizons,
                                device=args.device, progress=progress)
    if args.json:
        print(json.dumps(res, allow_nan=False, default=float))
        return 0
    print(f"fitted on {res['n']} subjects, {res['events']} events: log H' = a + c m(t) + b (log H - m(t)) with "
          f"a = {res['a']:.3f} (level), b = {res['b']:.3f} (spread), c = {res['c']:.3f} (course over time)"
          + (f"; 95% CI a {res['a_ci'][0]:.2f} to {res['a_ci'][1]:.2f}, b {res['b_ci'][0]:.2f} to "
             f"{res['b_ci'][1]:.2f}, c {res['c_ci'][0]:.2f} to {res['c_ci'][1]:.2f}" if res.get("a_ci") else ""))
    print(f"{res['folds']}-fold cross-fitted on this cohort (before -> after):")
    ibs = (res["before"]["ibs"], res["after"]["ibs"])
    if None not in ibs:
        print(f"  integrated Brier score {ibs[0]:.3f} -> {ibs[1]:.3f}")
    for h, before in res["before"]["calibration"].items():
        print(_risk_line(h, before, res["after"]["calibration"][h]))
    print(f"  C-index {res['before']['c_index']:.3f} -> {res['after']['c_index']:.3f} (the folds' fits differ a "
          "little; the copy itself keeps the original's order of patients at each time)")
    if res.get("unread"):
        print(f"note: the model read nothing of {res['unread']} of {res['n']} subjects (no study, timeline or features "
              "it can read)")
    if res.get("note"):
        print(f"note: {res['note']}")
    print(f"wrote {res['out']}")
    return 0
