"""``python -m core compare --cohort DIR --out DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "train every fusion strategy and write a comparison table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.models import BODY_CROP_HELP, SLICE_MM_HELP, EHR_ENCODER_CHOICES, EHR_ENCODER_HELP, FUSIONS, HEADS, IMAGE_KIND_CHOICES, IMAGE_KIND_HELP

    parser.add_argument("--cohort", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <cohort>/comparison)")
    parser.add_argument("--fusions", default=",".join(FUSIONS), help="comma-separated strategies (default all seven)")
    parser.add_argument("--head", default="discrete", choices=HEADS)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--image-encoder", type=Path, default=None)
    parser.add_argument("--image-encoder-kind", default="auto", choices=IMAGE_KIND_CHOICES, help=IMAGE_KIND_HELP)
    parser.add_argument("--body-crop", action="store_true", help=BODY_CROP_HELP)
    parser.add_argument("--slice-mm", default=None, metavar="auto|off|MM", help=SLICE_MM_HELP)
    parser.add_argument("--ehr-encoder", default="auto", choices=EHR_ENCODER_CHOICES,
                        help=EHR_ENCODER_HELP)
    parser.add_argument("--ensemble", type=int, default=None,
                        help="networks per strategy, trained from consecutive seeds (default 5; 1 = a single network with an MC-dropout band)")
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from core.commands.progress import command_progress
    from core.models import image_overrides
    from core.train.compare import compare_strategies

    from core.commands import check_out_folder
    from core.models import FUSIONS

    out = args.out or args.cohort / "comparison"
    # an earlier comparison, finished or stopped after some of its models, is replaced
    check_out_folder(out, "--out", ("comparison.md", "comparison.csv", *(f"{f}/config.json" for f in FUSIONS)),
                     "a comparison")
    with command_progress("compare") as progress:
        table = compare_strategies(args.cohort, out, fusions=[f.strip() for f in args.fusions.split(",") if f.strip()],
                                   head=args.head, seed=args.seed, device=args.device, epochs=args.epochs,
                                   image_encoder=args.image_encoder, image_encoder_kind=args.image_encoder_kind,
                                   ehr_encoder=args.ehr_encoder, ensemble=args.ensemble,
                                   overrides=image_overrides(args.body_crop, args.slice_mm), progress=progress)
    if args.json:
        print(json.dumps({"out": str(out), "rows": json.loads(table.to_json(orient="records"))}))
    else:
        print((out / "comparison.md").read_text())
    return 0
