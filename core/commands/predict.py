"""``python -m core predict --model MODEL --cohort DIR --subject ID --json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "individual survival curve for one subject"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder")
    parser.add_argument("--subject", required=True, help="subject id")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--allow-ood", action="store_true",
                        help="read a CT even when it shows other anatomy, or the body at another scale, than the model's training studies "
                             "(by default such a CT is withheld and the prediction made without it)")


def run(args: argparse.Namespace) -> int:
    from core.predict import predict_subject

    out = predict_subject(args.model, args.cohort, args.subject, device=args.device, allow_ood=args.allow_ood)
    if args.json:
        print(json.dumps(out))
    else:
        risks = ", ".join(f"{h} d: {v:.1%}" for h, v in out["risk_at"].items()) if out["scored"] else "none (not scored)"
        print(f"subject {out['subject_id']} ({out['fusion']}, uses {', '.join(out['modalities_used']) or 'nothing'}): risk {risks}")
        for note in out["warnings"]:
            print(f"warning: {note}")
    return 0
