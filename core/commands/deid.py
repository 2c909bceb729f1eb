"""``python -m core deid IN OUT [--dates shift|remove|keep] [--shift-days N] [--json]``.

Writes a de-identified copy of a DICOM study (file, folder or zip) or a NIfTI file into the
folder OUT (new or empty, not inside IN) and prints what changed: one line per
kind of change, or one JSON object with ``--json``. Never imports torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "write a de-identified copy of a DICOM study or a NIfTI file and report what changed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", type=Path, help="DICOM file, folder of DICOM files, zip, or .nii/.nii.gz")
    parser.add_argument("output", metavar="OUT", type=Path, help="new or empty folder for the cleaned copy (IM00001.dcm ...)")
    parser.add_argument("--dates", default="shift", choices=("shift", "remove", "keep"),
                        help="shift all dates by one offset per study (default), remove them, or keep them")
    parser.add_argument("--shift-days", type=int, default=None,
                        help="the date offset in days (default: random, 1-10 years back, never printed)")
    parser.add_argument("--pseudonym", default=None, help="new PatientName/PatientID (default: random ANON-...)")
    parser.add_argument("--seed", type=int, default=None, help="make UIDs, offset and pseudonym reproducible")
    parser.add_argument("--pixels-checked", action="store_true",
                        help="you have looked at every image and found no identifying text burned into the pixels: "
                             "the copy declares the Clean Pixel Data Option (113101), so a burned-in text risk "
                             "(secondary capture, DERIVED\\SECONDARY, BurnedInAnnotation YES) no longer blocks it")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from core.commands.progress import command_progress
    from core.deid import deidentify_study

    with command_progress("deid") as progress:
        report = deidentify_study(
            args.input,
            args.output,
            dates=args.dates,
            shift_days=args.shift_days,
            seed=args.seed,
            pseudonym=args.pseudonym,
            progress=progress,
            pixels_checked=args.pixels_checked,
        )
    if args.json:
        out = {"output": str(args.output), **report.to_dict()}
        print(json.dumps(out))
    else:
        print("\n".join([*report.lines(), f"written to {args.output}"]))
    return 0
