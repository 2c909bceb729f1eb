"""``python -m core cohort --meds PATH --task TASK.yaml --out DIR [--studies DIR] [--seed S] [--split 0.6,0.2,0.2]
[--json]``.

Builds a cohort folder (cohort.csv with subject_id, time, event, split,
index_time; timeline.parquet; task.yaml) from MEDS events and an ACES task
definition (index event, outcome predicate, windows); ``--studies`` adds the CT
studies of a folder named by subject id (``<id>.nii.gz``, ``<id>.zip``, a folder
``<id>/`` of DICOM files, ...). See core/meds_cohort.py, core/cohort_studies.py
and assets/tasks/mimic_death_after_admission.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "build a cohort folder from a MEDS dataset and an ACES task definition"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meds", required=True, type=Path,
                        help="MEDS events: parquet, CSV or .xlsx file, or a MEDS folder (data/**/*.parquet)")
    parser.add_argument("--task", required=True, type=Path, help="ACES task YAML (e.g. assets/tasks/*.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="cohort folder to write (new or empty)")
    parser.add_argument("--studies", type=Path, default=None,
                        help="folder of CT studies named by subject id (<id>.nii.gz, <id>.nii, <id>.zip, <id>.dcm or "
                             "a folder <id>/ of DICOM files), copied into the cohort's studies/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random train/val/test split (default 0)")
    parser.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions (default 0.6,0.2,0.2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _fractions(text: str) -> tuple[float, float, float]:
    from core.errors import InputError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError("--split", text, "is not three numbers", "use e.g. 0.6,0.2,0.2") from None
    if len(values) != 3:
        raise InputError("--split", text, "needs three fractions (train,val,test)", "use e.g. 0.6,0.2,0.2")
    return values  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from core.commands.progress import command_progress
    from core.meds_cohort import build_meds_cohort

    fractions = _fractions(args.split)
    with command_progress("cohort") as progress:
        summary = build_meds_cohort(args.meds, args.task, args.out, seed=args.seed, fractions=fractions,
                                    progress=progress, studies=args.studies)
    if args.json:
        print(json.dumps(summary))
        return 0
    splits = summary["splits"]
    assert isinstance(splits, dict)
    print(f"wrote {summary['out']}: {summary['n_subjects']} subjects, {summary['events']} events "
          f"({summary['label_predicate']}), {summary['censored']} censored, median follow-up "
          f"{summary['median_time_days']:.1f} days; split " + ", ".join(f"{k} {v}" for k, v in splits.items())
          + f"; {summary['timeline_events']} timeline events"
          + (f"; {summary['studies']} with a CT study, {summary['without_study']} without" if "studies" in summary else ""))
    for note in summary["notes"]:  # type: ignore[attr-defined]
        print(f"note: {note}", file=sys.stderr)
    return 0
