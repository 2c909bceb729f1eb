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


def risk_text(out: dict) -> str:
    """The risks of a ``predict --json`` object as the text output prints them; a horizon past the model's curve
    has none (the JSON's ``risk_at`` holds the curve's last value there and lists it in ``beyond_grid``).

    >>> risk_text({"scored": True, "times": [0.0, 900.0], "beyond_grid": [1825],
    ...            "risk_at": {"30": 0.072, "365": 0.411, "1825": 0.602}})
    "30 d: 7.2%, 365 d: 41.1%, 1825 d: none, past the curve's end (day 900)"
    """
    if not out["scored"]:
        return "none (not scored)"
    past = {int(h) for h in out["beyond_grid"]}
    return ", ".join(f"{h} d: " + (f"none, past the curve's end (day {out['times'][-1]:.0f})" if int(h) in past
                                   else f"{v:.1%}") for h, v in out["risk_at"].items())


def run(args: argparse.Namespace) -> int:
    from core.predict import predict_subject

    out = predict_subject(args.model, args.cohort, args.subject, device=args.device, allow_ood=args.allow_ood)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"subject {out['subject_id']} ({out['fusion']}, uses {', '.join(out['modalities_used']) or 'nothing'}): "
              f"risk {risk_text(out)}")
        for note in out["warnings"]:
            print(f"warning: {note}")
    return 0
