"""``python -m core pretrain --cohort DIR --out ENCODER``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "time-to-event pretraining of the image encoder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", required=True, type=Path, help="cohort with studies, index_time and a timeline")
    parser.add_argument("--out", required=True, type=Path, help="encoder folder to write")
    parser.add_argument("--tasks", type=int, default=16, help="number of TTE tasks (most frequent post-index codes)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--min-events", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--image-encoder-kind", default="2d", choices=("2d", "3d"))
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from core.commands.progress import command_progress
    from core.train.pretrain import pretrain_encoder

    with command_progress("pretrain") as progress:
        info = pretrain_encoder(args.cohort, args.out, tasks=args.tasks, epochs=args.epochs, seed=args.seed,
                                device=args.device, image_encoder_kind=args.image_encoder_kind,
                                min_events=args.min_events, progress=progress)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {args.out}: {len(info['tasks'])} tasks, mean val task C-index {info['mean_val_task_c_index']}")
    return 0
