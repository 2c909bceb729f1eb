"""``python -m core inspect PATH [--series KEY] [--json]``: load a study and describe it.

Never imports torch: start-up time is part of the product.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "load a study (DICOM file/folder/zip or NIfTI) and print geometry, HU, PHI and burned-in text risk"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="DICOM file, folder of DICOM files, zip of a series, or .nii/.nii.gz")
    parser.add_argument("--series", default=None, help="SeriesInstanceUID (or fallback key, or a unique prefix) to load")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--cohort", action="store_true",
                        help="PATH is a cohort folder: gate every study of its cohort.csv for PHI and burned-in text "
                             "(headers only), then note what its tables leave out or cannot read; exit status 1 when "
                             "a row is blocked")


def _run_cohort(args: argparse.Namespace) -> int:
    from core.deid.cohort_gate import gate_cohort

    if args.series is not None:
        from core.errors import InputError

        raise InputError("series", args.series, "does not apply to --cohort", "leave out --series")
    report = gate_cohort(args.path)
    notes = _cohort_notes(args.path)
    if args.json:
        print(json.dumps({**report.to_dict(), "data_notes": notes}, allow_nan=False))
    else:
        print("\n".join(report.lines() + [f"note: {note}" for note in notes]))
    return 0 if report.ok else 1


def _cohort_notes(path: Path) -> list[str]:
    """What the cohort's tables leave out or cannot read, as ``train`` would say it for a model reading every modality
    the folder has (``core.cohort_notes``, ``core.io.features.feature_notes``); nothing is decoded."""
    from core.cohort import load_cohort
    from core.cohort_notes import coverage_notes
    from core.errors import InputError
    from core.io.features import feature_notes

    try:
        cohort = load_cohort(path, for_training=False)
    except InputError as err:  # the PHI report above stands; this is why train would stop
        return [f"the cohort cannot be read as it is: {err}"]
    return feature_notes(cohort.features) + coverage_notes(
        cohort, timeline=cohort.timeline is not None, features=cohort.features is not None, studies=cohort.has_studies)


def run(args: argparse.Namespace) -> int:
    if args.cohort:
        return _run_cohort(args)
    from core.io.study import inspect_study

    info = inspect_study(args.path, args.series)
    if args.json:
        print(json.dumps(info, allow_nan=False))
        return 0
    out = sys.stdout
    s, r, c = info["shape"]
    ss, rs, cs = info["spacing_mm"]
    print(f"format      {info['format']} ({info['modality']})", file=out)
    print(f"shape       {s} slices x {r} rows x {c} cols", file=out)
    print(f"spacing     {ss:g} x {rs:g} x {cs:g} mm (slice, row, col)", file=out)
    print(f"HU          min {info['hu_min']:g}, max {info['hu_max']:g}, mean {info['hu_mean']:.1f}", file=out)
    print(f"series      {info['n_series']}", file=out)
    for entry in info["series"] if info["format"] == "dicom" else ():  # a NIfTI file holds one volume
        print(f"  {entry['key']}  {entry['n_instances']} images {entry['rows']}x{entry['cols']} {entry['modality']}"
              + (" derived" if entry["derived"] else "")
              + {"yes": " with contrast", "no": " without contrast"}.get(entry["contrast"] or "", ""), file=out)
    recorded = {"yes": "with", "no": "without"}.get(info["contrast"] or "")
    contrast = f"{recorded} ({info['contrast_source']})" if recorded else "not recorded"
    print(f"contrast    {contrast}", file=out)
    print(f"PHI         {', '.join(info['phi']) if info['phi'] else 'none found'}", file=out)
    burned = "; ".join(info["burned_in_reasons"]) if info["burned_in"] else "no sign"
    print(f"burned-in   {burned}", file=out)
    for warning in info["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
