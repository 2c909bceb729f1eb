"""Summaries of a MEDS timeline (``python -m core timeline``): one subject's events, or the whole file's overview,
with what reading it left out (values that are not numbers, rows without a code). Files are read by
:func:`core.io.timeline.read_timeline`."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import InputError
from core.io.delimited import numeric_values, subject_text
from core.io.timeline import DEATH_CODE, check_path, read_timeline, subject_ids, timeline_batches, unreadable_values_note
from core.io.timeline_times import to_datetime


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
    death = events.loc[_deaths(events["code"]), "time"].dropna()
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
    """Whole-file overview: subjects, events, deaths, time range and the column mapping.

    Counted batch by batch on the file's Arrow columns (:func:`core.io.timeline.timeline_batches`), not on a frame of
    every event: a 170 MB parquet of 45.8 M events took 13 GB as a frame. An .xlsx sheet (held in memory whole
    anyway) is read as a frame.
    """
    p = check_path(path)
    if p.suffix.lower() == ".xlsx":
        events = read_timeline(p)
        columns = events.attrs["columns"]
        ids, dead = set(events["subject_id"]), set(events.loc[_deaths(events["code"]), "subject_id"])
        times = events["time"].dropna()
        first, last = (times.min(), times.max()) if len(times) else (None, None)
        n = len(events)
    else:
        batches, columns, commas = timeline_batches(p)
        ids, dead, examples, unreadable, dropped, n = set(), set(), [], 0, 0, 0
        first = last = None

        @functools.cache
        def whole() -> pa.ChunkedArray:  # numeric dates need the whole file's day / month order: read once if so
            again, names, _ = timeline_batches(p)
            return pa.chunked_array([b.column(names["time"]) for b in again])

        for batch in batches:
            code = batch.column(columns["code"])
            if code.null_count:
                dropped += code.null_count
                batch = batch.filter(pc.is_valid(code))
                code = batch.column(columns["code"])
            n += batch.num_rows
            sid = batch.column(columns["subject_id"])
            ids.update(subject_text(pa.chunked_array([pc.unique(sid)], sid.type)))
            text = code.cast(pa.string())
            hit = pc.or_(pc.equal(text, DEATH_CODE), pc.starts_with(text, DEATH_CODE + "//"))
            dead.update(subject_text(pa.chunked_array([pc.unique(sid.filter(hit))], sid.type)))
            timed = pd.Series(to_datetime(pa.chunked_array([batch.column(columns["time"])]), p, whole)).dropna()
            if len(timed):
                first = timed.min() if first is None else min(first, timed.min())
                last = timed.max() if last is None else max(last, timed.max())
            if "numeric_value" in columns:  # counted, and the first three kinds kept (not every text)
                texts = numeric_values(batch.column(columns["numeric_value"]), commas)[1]
                unreadable += len(texts)
                examples = list(dict.fromkeys([*examples, *(v[:24] for v in texts)]))[:3]
        events = pd.DataFrame()
        events.attrs.update(dropped_null_code=dropped, unreadable_values=unreadable, unreadable_examples=examples)
    return {
        "n_subjects": len(ids),
        "n_events": int(n),
        "n_deaths": len(dead),
        "first_time": _iso(first),
        "last_time": _iso(last),
        "columns": dict(columns),
        "unreadable_values": int(events.attrs.get("unreadable_values", 0)),
        "notes": reading_notes(events),
    }


def _deaths(code: pd.Series) -> pd.Series:
    return (code == DEATH_CODE) | code.str.startswith(DEATH_CODE + "//")
