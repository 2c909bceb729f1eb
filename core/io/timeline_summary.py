"""Summaries of a MEDS timeline (``python -m core timeline``): one subject's events, or the whole file's overview,
with what reading it left out (values that are not numbers, rows without a code). Files are read by
:func:`core.io.timeline.read_timeline`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import InputError
from core.io.timeline import DEATH_CODE, check_path, read_timeline, subject_ids, unreadable_values_note


def code_prefix(code: str) -> str:
    """Text before the first ``//`` (the whole code when there is none).

    >>> code_prefix("LAB//50912//mg/dL"), code_prefix("MEDS_BIRTH")
    ('LAB', 'MEDS_BIRTH')
    """
    return code.split("//", 1)[0]


def _iso(t: pd.Timestamp | None) -> str | None:
    return None if t is None or pd.isna(t) else pd.Timestamp(t).isoformat()


def summarize_events(events: pd.DataFrame) -> dict[str, object]:
    """The ``timeline --json`` object for one subject's events (from read_timeline)."""
    timed = events["time"].dropna()
    death = events.loc[(events["code"] == DEATH_CODE) | events["code"].str.startswith(DEATH_CODE + "//"), "time"].dropna()
    prefixes = events["code"].map(code_prefix).value_counts()
    return {
        "subject_id": str(events["subject_id"].iloc[0]) if len(events) else None,
        "n_events": int(len(events)),
        "n_static_events": int(events["time"].isna().sum()),
        "first_time": _iso(timed.min()) if len(timed) else None,
        "last_time": _iso(timed.max()) if len(timed) else None,
        "n_codes": int(events["code"].nunique()),
        "death_time": _iso(death.min()) if len(death) else None,
        "code_prefixes": {str(k): int(v) for k, v in sorted(prefixes.items(), key=lambda kv: (-kv[1], kv[0]))},
        "unreadable_values": int(events.attrs.get("unreadable_values", 0)),
        "notes": reading_notes(events),
    }


def reading_notes(events: pd.DataFrame) -> list[str]:
    """What reading a timeline left out, in words: values that are not numbers, rows without a code."""
    dropped = int(events.attrs.get("dropped_null_code", 0) or 0)
    notes = [unreadable_values_note(events)]
    if dropped:
        notes.append(f"{dropped} row{'s' if dropped > 1 else ''} without a code {'are' if dropped > 1 else 'is'} "
                     "left out: give every event a code")
    return [n for n in notes if n]


def summarize_subject(path: str | Path, subject_id: str) -> dict[str, object]:
    """Summary of one subject's timeline; InputError naming the subject when it is not in the file."""
    p = check_path(path)
    sid = str(subject_id).strip()
    events = read_timeline(p, [sid])
    if events.empty:
        ids = subject_ids(p)
        examples = ", ".join(str(v) for v in ids.slice(0, 3).to_pylist())
        raise InputError("subject", sid, f"is not in {p.name} ({len(ids)} subjects, e.g. {examples})",
                         "pass --subject with an id that the file contains")
    return summarize_events(events)


def summarize_file(path: str | Path) -> dict[str, object]:
    """Whole-file overview: subjects, events, deaths, time range and the column mapping."""
    p = check_path(path)
    events = read_timeline(p)
    timed = events["time"].dropna()
    return {
        "n_subjects": int(events["subject_id"].nunique()),
        "n_events": int(len(events)),
        "n_deaths": int(events.loc[(events["code"] == DEATH_CODE) | events["code"].str.startswith(DEATH_CODE + "//"), "subject_id"].nunique()),
        "first_time": _iso(timed.min()) if len(timed) else None,
        "last_time": _iso(timed.max()) if len(timed) else None,
        "columns": events.attrs["columns"],
        "unreadable_values": int(events.attrs.get("unreadable_values", 0)),
        "notes": reading_notes(events),
    }
