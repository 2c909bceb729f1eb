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
    parser.add_argument("output", metavar="OUT", type=Path, help="new or empty folder for the cleaned copy (IM00001.dcm ...); for a NIfTI input also a new .nii/.nii.gz file name")
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

    nifti_out = args.output.name.lower().endswith((".nii", ".nii.gz"))
    if nifti_out:  # a NIfTI file named: written there, through a folder beside it
        from core.errors import InputError

        if not args.input.name.lower().endswith((".nii", ".nii.gz")):
            raise InputError("OUT", str(args.output), "names a NIfTI file, but the input is DICOM",
                             "pass a new or empty folder for the cleaned DICOM files")
        if args.output.exists():
            raise InputError("OUT", str(args.output), "exists", "pass a new file name or a new or empty folder")
    folder = args.output.with_name(args.output.name + ".deid") if nifti_out else args.output
    with command_progress("deid") as progress:
        report = deidentify_study(
            args.input,
            folder,
            dates=args.dates,
            shift_days=args.shift_days,
            seed=args.seed,
            pseudonym=args.pseudonym,
            progress=progress,
            pixels_checked=args.pixels_checked,
        )
    if nifti_out:
        _move_volume(folder, args.output)
        report.files_written = [args.output.name]  # the file the user named, not the folder's VOL00001 it was moved from
    if args.json:
        print(json.dumps({"output": str(args.output), **report.to_dict()}))
    else:
        print("\n".join([*report.lines(), f"written to {args.output}"]))
    return 0


def _move_volume(folder: Path, out: Path) -> None:
    """The one cleaned volume of ``folder`` as the file ``out`` (gzipped or not as its name says); the folder goes."""
    import gzip
    import shutil

    (written,) = sorted(folder.glob("VOL*.nii*"))
    data = written.read_bytes()
    if out.name.lower().endswith(".gz") != (data[:2] == b"\x1f\x8b"):
        data = gzip.compress(data, mtime=0) if out.name.lower().endswith(".gz") else gzip.decompress(data)
    out.write_bytes(data)
    shutil.rmtree(folder)
