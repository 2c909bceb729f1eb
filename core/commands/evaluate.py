"""``python -m core evaluate --model MODEL --cohort DIR [--split test] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate a model on a cohort's test split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (config.json, *.safetensors)")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder (cohort.csv, ...)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate")
    parser.add_argument("--horizons", default="30,365,1825", help="comma-separated horizons in days")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _fmt(v: object) -> str:
    return "null" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci(v: list[float] | None) -> str:
    return "" if not v else f" (95% CI {v[0]:.3f}-{v[1]:.3f})"


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from core.evaluate import evaluate_model

    try:
        horizons = tuple(float(h) for h in str(args.horizons).split(",") if h.strip())
    except ValueError:
        raise InputError("--horizons", args.horizons, "must be numbers of days", "use e.g. 30,365,1825") from None
    res = evaluate_model(args.model, args.cohort, split=args.split, horizons=horizons, n_boot=args.n_boot,
                         seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(res, allow_nan=False))
        return 0
    out = sys.stdout
    print(f"{args.split} split: n={res['n']}, events={res['events']}", file=out)
    print(f"Harrell C   {_fmt(res['c_index'])}{_ci(res['c_index_ci'])}", file=out)
    print(f"Uno C       {_fmt(res['uno_c'])}{_ci(res.get('uno_c_ci'))} (tau={res['uno_tau']:.0f} d)", file=out)
    print(f"IBS         {_fmt(res['ibs'])}{_ci(res.get('ibs_ci'))}", file=out)
    for h, v in res["td_auc"].items():
        cal = res["calibration"].get(h)
        ici = "" if not cal else f", calibration ICI {cal['ici']:.3f}"
        label = f"AUC({h} d)"
        print(f"{label:12s}{_fmt(v)}{ici}", file=out)
    if "oracle_c_index" in res:
        print(f"oracle C    {_fmt(res['oracle_c_index'])} (from true_risk)", file=out)
    return 0
