"""Column names as other sites write them: cohort.csv's and features.csv's columns found in any case, and under the
names survival tables and hospital exports commonly use (``Subject_ID``, ``patient_id``, ``futime``, ``status``).

Only a column the table lacks under its own name is looked for, and only one column may answer to it (two that do is
an error naming both). The timeline has its own list (``core.io.timeline.ALIASES``); the subject id's aliases are the
same.

>>> rename_aliases(pd.DataFrame(columns=["Patient ID", "FUTIME", "Status", "Index Date", "Age"]),
...                COHORT_ALIASES).columns.tolist()
['subject_id', 'time', 'event', 'index_time', 'Age']
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from core.errors import InputError

TIMELINE_FILES = ("timeline.parquet", "timeline.csv", "timeline.xlsx")  # a cohort folder's timeline, the first found
SUBJECT_ALIASES = ("subject_id", "subjectid", "patient_id", "patientid", "person_id", "personid", "subject", "patient")
COHORT_ALIASES: Mapping[str, tuple[str, ...]] = {
    "subject_id": SUBJECT_ALIASES,
    # follow-up in days: R's survival data call it futime or time, others duration or survival_days
    "time": ("time", "futime", "duration", "survival_days", "followup_days", "follow_up_days"),
    # an event column other than 0 / 1 (R's status 1 / 2) is refused by the outcome check, not misread
    "event": ("event", "status", "death", "dead", "died", "event_observed"),
    "split": ("split",),
    "study": ("study", "study_path"),
    "series": ("series", "series_uid", "seriesinstanceuid"),
    "index_time": ("index_time", "index_date", "scan_date", "scan_time"),
    "end_time": ("end_time", "end_date", "death_date", "last_follow_up", "last_followup", "followup_date"),
    "contrast": ("contrast",),
}
FEATURE_ALIASES: Mapping[str, tuple[str, ...]] = {"subject_id": SUBJECT_ALIASES}
TEXT_COLUMNS = (*SUBJECT_ALIASES, *COHORT_ALIASES["series"])  # read as text: an id 007, a UID 1.2.840.10008 prefix
END_COLUMN = "end_time"  # the event's or last follow-up's date: time = end_time - index_time when time is absent
# an event written as a word (after core.io.features.canon: y / true are yes)
EVENT_WORDS = {"yes": 1, "no": 0, "dead": 1, "died": 1, "deceased": 1, "death": 1, "event": 1, "alive": 0, "censored": 0}


def column_key(name: object) -> str:
    """A name or value compared without case, spaces or punctuation ("Index Date", "index_date": "indexdate")."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def rename_aliases(frame: pd.DataFrame, aliases: Mapping[str, tuple[str, ...]], source: str = "cohort.csv") -> pd.DataFrame:
    """``frame`` with each column of ``aliases`` it lacks found under another case or name (the first alias present);
    InputError when two of its columns answer to one name."""
    present = {str(c) for c in frame.columns}
    renames: dict[str, str] = {}
    for target, names in aliases.items():
        if target in present:
            continue
        if target == END_COLUMN:
            frame = _end_dates(frame, names, event_given="event" in present or "event" in renames.values())
            if END_COLUMN in frame.columns:
                continue
        for alias in names:
            found = [c for c in frame.columns if column_key(c) == column_key(alias) and c not in renames]
            if len(found) > 1:
                raise InputError(f"{source} columns", ", ".join(map(str, found)), f"all read as {target}",
                                 f"keep one of them, or name one {target}")
            if found:
                renames[found[0]] = target
                break
    return frame.rename(columns=renames) if renames else frame


def _end_dates(frame: pd.DataFrame, names: tuple[str, ...], *, event_given: bool = True) -> pd.DataFrame:
    """``frame`` with one ``end_time`` column where the end date is split over several of its aliases, as registries
    export it (``death_date`` for the dead, ``last_follow_up`` for the living): per row the first one not blank, in
    the aliases' order; one alias or none: unchanged (renamed by :func:`rename_aliases`). Without an event column
    (``event_given`` False), ``event`` is 1 where the death date is given, else 0.

    >>> f = pd.DataFrame({"Death Date": ["2021-05-01", None], "last_follow_up": ["2021-06-01", "2022-01-01"]})
    >>> rename_aliases(f, COHORT_ALIASES)["end_time"].tolist()
    ['2021-05-01', '2022-01-01']
    """
    found = [c for alias in names for c in frame.columns if column_key(c) == column_key(alias)]
    if len(found) < 2:
        return frame
    blank = lambda col: frame[col].isna() | (frame[col].astype(str).str.strip() == "")  # noqa: E731
    end = frame[found[0]].where(~blank(found[0]))
    for col in found[1:]:
        end = end.where(end.notna(), frame[col].where(~blank(col)))
    out = frame.drop(columns=found).assign(**{END_COLUMN: end.to_numpy()})
    death = [c for c in found if column_key(c) == "deathdate"]
    if not event_given and death:
        out["event"] = (~blank(death[0])).astype(int).to_numpy()
    return out


def date_gap_hint(table: pd.DataFrame, row: int) -> str:
    """Why a follow-up time computed from dates (``end_time - index_time``) is missing for ``row``: which date is
    blank, said with the fix."""
    end, start = table[END_COLUMN].iloc[row], table["index_time"].iloc[row]
    blank = [name for name, v in ((END_COLUMN, end), ("index_time", start)) if pd.isna(v) or not str(v).strip()]
    if not blank:
        return f" (time is {END_COLUMN} - index_time here)"
    return (f" (time is {END_COLUMN} - index_time here, and {' and '.join(blank)} {'is' if len(blank) == 1 else 'are'} "
            "blank: give every subject the scan's date and the event's or last follow-up's date, e.g. a death_date "
            "column for the dead and a last_follow_up column for the living)")
