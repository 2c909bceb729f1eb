"""What a cohort gives a model, in words: the subjects a modality leaves out, said before a model is trained on it.

A hospital cohort is rarely complete: some patients have no timeline before their scan, no features row or no study,
and a timeline's subject ids may be written otherwise than cohort.csv's. Each of those is read as a missing modality,
which is right, but silently so; ``train`` (its notes, the model card's Data section, the app after training) names
them, with how many subjects and a few ids.

>>> from pathlib import Path
>>> from core.cohort import Cohort
>>> t = pd.DataFrame({"subject_id": ["a", "b"], "time": [1.0, 2.0], "event": [1, 0], "split": ["train", "test"]})
>>> f = pd.DataFrame({"age": [61.0]}, index=pd.Index(["a"], name="subject_id"))
>>> coverage_notes(Cohort(root=Path("."), table=t, features=f), features=True)
['features.csv: no row for 1 of 2 subjects (b): their curated features are read as missing (the training mean)']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from core.cohort import Cohort
from core.io.features import name_list
from core.io.study_date import MAX_SCAN_AGE_DAYS, days_before, study_date
from core.io.timeline import OUTCOME_CODES, unreadable_values_note
from core.io.timeline_times import dates_only, known_at


#: how the notes that warn of a leak begin (events after the scan may be read), as against those that say what was
#: left out: a page shows the first as warnings
LEAK_NOTES: tuple[str, ...] = ("cohort.csv has no index_time column", "timeline: its times carry UTC offsets",
                               "studies: a CT taken after the index_time")


def is_leak_note(note: str) -> bool:
    """Whether ``note`` warns that events after the scan may be read (see ``LEAK_NOTES``).

    >>> is_leak_note("cohort.csv has no index_time column: every timeline event is read"), is_leak_note("features.csv: ...")
    (True, False)
    """
    return note.startswith(LEAK_NOTES)


def timeline_reading_notes(events: pd.DataFrame) -> list[str]:
    """What reading a timeline file (a ``read_timeline`` frame) left out: rows without a code, values that are
    not numbers, every value when the file has no value column under a known name."""
    from core.io.timeline import ALIASES

    dropped = int(events.attrs.get("dropped_null_code", 0) or 0)
    out = [f"timeline: {dropped} rows without a code are left out"] if dropped else []
    values = unreadable_values_note(events)
    columns = events.attrs.get("columns")
    bare = events.attrs.get("no_value_column", [events.attrs.get("source")] if columns is not None
                            and "numeric_value" not in columns else [])
    if bare:  # a value column under a name no alias knows: read as events without values, said here
        out.append(f"timeline: {', '.join(map(str, bare))} has no column of numeric values (numeric_value, or "
                   f"{', '.join(ALIASES['numeric_value'][1:])}): every event is read without its value (lab results, "
                   "vital signs); rename the column that holds them numeric_value")
    return out + ([f"timeline: {values}"] if values else [])


FEW_EVENTS = 10  # a split with fewer events: its C-index rests on a handful of comparable pairs


def split_event_notes(table: pd.DataFrame) -> list[str]:
    """One line per val or test split of an outcome table with fewer than :data:`FEW_EVENTS` events: without any,
    the split gives no C-index (val: no early stopping by it); with a few, its C-index says little.

    >>> t = pd.DataFrame({"split": ["train"] * 4 + ["val", "val", "test", "test"], "event": [1, 1, 0, 1, 0, 0, 1, 0]})
    >>> split_event_notes(t)
    ['val split: no event in 2 subjects: no C-index on it (early stopping cannot choose an epoch by it)', 'test split: 1 event in 2 subjects: its C-index rests on a few comparable pairs and says little (add subjects with events)']
    """
    out = []
    for split, why in (("val", "early stopping cannot choose an epoch by it"), ("test", "the model is not tested")):
        part = table.loc[table["split"] == split, "event"]
        k, n = int(part.sum()), len(part)
        if n and not k:
            out.append(f"{split} split: no event in {n} subjects: no C-index on it ({why})")
        elif n and k < FEW_EVENTS:
            out.append(f"{split} split: {k} event{'s' if k > 1 else ''} in {n} subjects: its C-index rests on a few "
                       "comparable pairs and says little (add subjects with events)")
    return out


def _have(k: int) -> str:
    return "has" if k == 1 else "have"


def coverage_notes(cohort: Cohort, *, timeline: bool = False, features: bool = False, studies: bool = False,
                   ids: Sequence[str] | None = None, study_dates: Mapping[str, str] | None = None) -> list[str]:
    """One line per modality the model reads (``timeline``, ``features``, ``studies``) that some subjects of ``ids``
    (all of the cohort's by default) lack: no timeline event at or before the index time (and, apart, timeline
    events with no index time, which are never read), no features row, no study; and the studies' dates against the
    index times (:func:`scan_date_notes`; ``study_dates``: as it takes them). Empty when nothing is lacking."""
    ids_all = ids is None  # the whole cohort: notes on the timeline file itself too
    ids = list(cohort.ids() if ids is None else ids)
    n = len(ids)
    out: list[str] = []
    if timeline and cohort.timeline is not None:
        events = cohort.timeline
        owners = events["subject_id"].astype(str)
        has = set(owners)
        read = ~events["code"].astype(str).isin(OUTCOME_CODES)  # as ``Cohort.events`` reads them, for all at once
        undated: list[str] = []
        if ids_all and (events.attrs.get("dropped_null_code") or events.attrs.get("unreadable_values")):
            out += timeline_reading_notes(events)
        if "index_time" not in cohort.table.columns and any(s in has for s in ids):
            out.append("cohort.csv has no index_time column: every timeline event is read, to the end of the record, "
                       "those after the scan too (they can give the outcome away); add index_time (the scan's date and "
                       "time) to read only what was known at the scan")
        if "index_time" in cohort.table.columns:
            index = cohort.table.set_index("subject_id")["index_time"]
            index_at = pd.to_datetime(owners.map(index))
            undated = [s for s in ids if s in has and pd.isna(index.get(s))]
            day_only = dates_only(events)
            if events.attrs.get("utc_offsets"):
                out.append("timeline: its times carry UTC offsets and are read in UTC; index_time must then be in UTC "
                           "too, or carry its offset (e.g. 2021-04-03 08:30+02:00): an index_time in local time without "
                           "one lets events up to that many hours after the scan be read")
            read &= known_at(events["time"], index_at, day_only)  # NaT on either side: not read
            if day_only:
                scan_day = (events["time"] >= index_at.dt.normalize()) & (events["time"] <= index_at) & (index_at != index_at.dt.normalize())
                owners_that_day = set(owners[(scan_day & ~events["code"].astype(str).isin(OUTCOME_CODES)).to_numpy()])
                that_day = [s for s in ids if s in owners_that_day]
                if that_day:
                    out.append(f"timeline: dates without a time of day, and index_time has one: {len(that_day)} of {n} "
                               f"subjects {_have(len(that_day))} events dated on the scan's day ({name_list(that_day)}): "
                               "they are not read (not known to come before the scan); write the events' times to read them")
            if undated:
                out.append(f"cohort.csv: {len(undated)} of {n} subjects {_have(len(undated))} timeline events but no "
                           f"index_time ({name_list(undated)}): none of their events is read (an event after the scan "
                           "must not be)")
            dated = pd.to_datetime(index.dropna())
            if len(dated) and (dated == dated.dt.normalize()).all():
                # index times written as dates are 00:00: that day's own events (a morning's labs) come after them
                later_that_day = ((events["time"] > index_at) & (events["time"] < index_at + pd.Timedelta(days=1))
                                  & ~events["code"].astype(str).isin(OUTCOME_CODES))
                owners_later = set(owners[later_that_day.to_numpy()])
                later = [s for s in ids if s in owners_later]
                if later:
                    out.append(f"cohort.csv: index_time is a date (00:00) and {len(later)} of {n} subjects "
                               f"{_have(len(later))} events later on that day ({name_list(later)}): they are not read; "
                               "write the scan's time of day to read them")
        readable = set(owners[read])
        without = [s for s in ids if s not in undated and s not in readable]
        if without:
            unmatched = [s for s in without if s not in has]
            out.append(f"timeline: {len(without)} of {n} subjects {_have(len(without))} no event at or before the "
                       f"index time ({name_list(without)}): the model reads no timeline for them"
                       + (f"; {len(unmatched)} of them {_have(len(unmatched))} no row at all in the timeline (are its "
                          "subject ids written as cohort.csv's?)" if unmatched else ""))
    if features and cohort.features is not None:
        rowless = [s for s in ids if s not in cohort.features.index]
        if rowless:
            out.append(f"features.csv: no row for {len(rowless)} of {n} subjects ({name_list(rowless)}): their curated "
                       "features are read as missing (the training mean)"
                       + (", age and sex from their timeline where it has them" if cohort.timeline is not None else ""))
    if studies and cohort.has_studies:
        unscanned = [s for s in ids if cohort.study_path(s) is None]
        if unscanned:
            out.append(f"cohort.csv: {len(unscanned)} of {n} subjects {_have(len(unscanned))} no study "
                       f"({name_list(unscanned)}): the model reads no CT for them")
        out += scan_date_notes(cohort, [s for s in ids if s not in unscanned], dates=study_dates)
    return out


def scan_date_notes(cohort: Cohort, ids: Sequence[str], max_age_days: int = MAX_SCAN_AGE_DAYS, *,
                    dates: Mapping[str, str] | None = None) -> list[str]:
    """One line for the subjects of ``ids`` whose CT (its DICOM StudyDate, ``core.io.study_date``) was taken after
    their ``index_time`` (the model would read the patient later than the time it predicts from: a leak), one for
    those whose CT is more than ``max_age_days`` older than it. Nothing without an index_time column, for studies
    without a date (NIfTI files, de-identified DICOM) and for scans taken on the index day or shortly before it.
    Gaps of more than a year for every subject named are said to look like two calendars (a timeline de-identified
    with shifted dates beside studies with their real ones)."""
    if "index_time" not in cohort.table.columns:
        return []
    gaps: dict[str, int] = {}
    for sid in ids:
        index = cohort.index_time(sid)
        if dates is not None:
            days = None if index is None else days_before(dates.get(sid), index)
        else:
            path = cohort.study_path(sid)
            days = None if index is None or path is None else days_before(study_date(path), index)
        if days is not None and (days < 0 or days > max_age_days):
            gaps[sid] = days
    after = [s for s, d in gaps.items() if d < 0]
    old = [s for s, d in gaps.items() if d > 0]
    calendars = ("; every one of them a year or more apart: are the index times (or the timeline they come from) "
                 "de-identified with shifted dates and the studies not? Then they cannot be compared"
                 if gaps and min(abs(d) for d in gaps.values()) >= 365 else "")
    n = len(ids)
    out = []
    if after:
        out.append(f"studies: a CT taken after the index_time for {len(after)} of {n} subjects ({name_list(after)}): "
                   "the model reads the patient later than the time it predicts from (the later CT can give the "
                   "outcome away); set their index_time to the scan's date or later, or give a CT taken before it"
                   + calendars)
    if old:
        out.append(f"studies: a CT taken more than {max_age_days} days before the index_time for {len(old)} of {n} "
                   f"subjects ({name_list(old)}): the model reads it as the patient's state at the index_time, and a "
                   "scan this old may no longer show it" + calendars)
    return out
