"""``python -m core train --cohort DIR --fusion NAME --out MODEL``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "train a fusion survival model on a cohort"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.models import BODY_CROP_HELP, SLICE_MM_HELP, EHR_ENCODER_CHOICES, EHR_ENCODER_HELP, FUSIONS, HEADS, IMAGE_KIND_CHOICES, IMAGE_KIND_HELP

    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder (cohort.csv, studies, timeline, features)")
    parser.add_argument("--fusion", required=True, choices=FUSIONS, help="fusion strategy")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--head", default="discrete", choices=HEADS, help="survival head (default discrete)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs of the fusion stage (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--image-encoder", type=Path, default=None, help="pretrained encoder folder (python -m core pretrain)")
    parser.add_argument("--image-encoder-kind", default="auto", choices=IMAGE_KIND_CHOICES, help=IMAGE_KIND_HELP)
    parser.add_argument("--body-crop", action="store_true", help=BODY_CROP_HELP)
    parser.add_argument("--slice-mm", default=None, metavar="auto|off|MM", help=SLICE_MM_HELP)
    parser.add_argument("--ehr-encoder", default="auto", choices=EHR_ENCODER_CHOICES,
                        help=EHR_ENCODER_HELP)
    parser.add_argument("--ensemble", type=int, default=None,
                        help="networks trained from seeds seed..seed+K-1 (default 5); their range is the uncertainty band; 1 = one network, MC-dropout band")
    parser.add_argument("--feature-dropout", default="auto", metavar="auto|P",
                        help="share of the subjects with timeline events whose features.csv values are hidden in each "
                             "training batch, so that the model also reads a patient who comes without them (auto: 0.6; "
                             "0 keeps every value)")
    parser.add_argument("--pretext-steps", type=int, default=None, metavar="N",
                        help="steps of the detector encoder's synthetic-lesion pretext (default 3000, about 6 minutes "
                             "on 2 CPU cores; fewer train faster, with a less trained detector)")
    parser.add_argument("--json", action="store_true", help="print metrics as one JSON object")


def overrides(args: argparse.Namespace) -> dict | None:
    """The training settings that ``--body-crop``, ``--slice-mm``, ``--pretext-steps`` and ``--feature-dropout``
    change (None: none).

    >>> overrides(argparse.Namespace(body_crop=False, slice_mm=None, pretext_steps=600, feature_dropout="auto",
    ...                              image_encoder_kind="auto"))
    {'image': {'pretext_steps': 600}}
    """
    from core.errors import InputError
    from core.models import image_overrides

    out: dict = image_overrides(args.body_crop, args.slice_mm) or {}
    if args.pretext_steps is not None:
        if args.pretext_steps < 1:
            raise InputError("--pretext-steps", args.pretext_steps, "must be at least 1",
                             "use e.g. 600 for a quicker first model, or leave it out (3000)")
        if args.image_encoder_kind not in ("auto", "detector"):
            raise InputError("--pretext-steps", args.pretext_steps,
                             f"is a setting of the detector encoder, not of --image-encoder-kind {args.image_encoder_kind}",
                             "leave --pretext-steps out, or use --image-encoder-kind detector")
        out.setdefault("image", {})["pretext_steps"] = int(args.pretext_steps)
    if args.feature_dropout != "auto":
        out["feature_dropout"] = args.feature_dropout
    return out or None


def run(args: argparse.Namespace) -> int:
    import os

    from core.commands.progress import command_progress
    from core.train import train_model

    from core.commands import check_out_folder

    check_out_folder(args.out, "--out", ("config.json",), "a model")
    # one bar: a DDP launch (torchrun) reports from rank 0 only
    with command_progress(f"train {args.fusion}", enabled=int(os.environ.get("RANK", "0")) == 0) as progress:
        metrics = train_model(args.cohort, args.fusion, args.out, head=args.head, epochs=args.epochs, seed=args.seed,
                              device=args.device, image_encoder=args.image_encoder,
                              image_encoder_kind=args.image_encoder_kind, ehr_encoder=args.ehr_encoder,
                              ensemble=args.ensemble, progress=progress, overrides=overrides(args))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    test = metrics.get("test", {})
    for note in metrics.get("data_notes") or []:  # how features.csv was read (categories, cells that are no number)
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": str(args.out), "fusion": args.fusion, "head": args.head,
                          "c_index": test.get("c_index"), "c_index_ci": test.get("c_index_ci"),
                          "val_c_index": metrics.get("val_c_index"), "train_seconds": metrics["train_seconds"],
                          "world_size": metrics["world_size"]}, default=float))
    else:
        from core.model_card import metric_with_ci

        print(f"wrote {args.out}: test C-index {metric_with_ci(test, 'c_index')}, {metrics['train_seconds']:.0f} s")
    return 0
