"""``python -m core timeline PATH [--subject ID] [--json]``: summarise a MEDS timeline (no torch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "summarise one subject's MEDS timeline (or the whole file without --subject)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH", help="MEDS timeline, .parquet, .csv or .xlsx")
    parser.add_argument("--subject", metavar="ID", help="subject id (as in the file); omit for a whole-file overview")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from core.io.timeline_summary import summarize_file, summarize_subject

    summary = summarize_subject(args.path, args.subject) if args.subject is not None else summarize_file(args.path)
    if args.json:
        print(json.dumps(summary))
        return 0
    for key, value in summary.items():
        if key == "notes":
            for note in value:  # type: ignore[attr-defined]
                print(f"note: {note}")
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0
