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
        for alias in names:
            found = [c for c in frame.columns if column_key(c) == column_key(alias) and c not in renames]
            if len(found) > 1:
                raise InputError(f"{source} columns", ", ".join(map(str, found)), f"all read as {target}",
                                 f"keep one of them, or name one {target}")
            if found:
                renames[found[0]] = target
                break
    return frame.rename(columns=renames) if renames else frame
