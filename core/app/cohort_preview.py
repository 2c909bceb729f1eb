"""What an uploaded cohort zip gives a model, read as soon as it is uploaded: before a training or a validation is
queued, not after the job.

A user learns at once how many patients and events the cohort holds, how its splits stand, whom each modality
covers, and the notes the trained model would carry (``core.cohort_notes``: timeline events without an index time, a
CT taken after the index_time, no features row, few events in a split; ``core.io.features.feature_notes``), and what
would stop the job: a study that cohort.csv names and the zip does not hold, or a path out of the cohort folder (the
job's PHI check refuses both).

Everything is read in memory: cohort.csv, the timeline and the features table are parsed from the zip (nothing is
written before the job's PHI check); of each study only the first bytes of one DICOM header, for its date
(``core.io.study_date.zip_study_dates``). Nothing is decoded.

>>> import io, zipfile
>>> buf = io.BytesIO()
>>> with zipfile.ZipFile(buf, "w") as zf:
...     zf.writestr("c/cohort.csv", "subject_id,time,event,split,study\\na,5,1,train,\\nb,9,0,test,studies/b.nii.gz\\n")
>>> p = preview_cohort_zip(buf.getvalue())
>>> p.subjects, p.events, p.splits, p.studies
(2, 1, {'train': 1, 'val': 0, 'test': 1}, 0)
>>> p.blocking[0][:73]
"cohort.csv: 1 of 2 subjects name a study that is not in the zip (b: 'stud"
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from core.cohort import Cohort, features_of, has_study, validate_outcomes
from core.cohort_notes import coverage_notes, split_event_notes
from core.io.columns import TEXT_COLUMNS, TIMELINE_FILES
from core.io.delimited import read_csv_any
from core.io.features import FEATURE_FILES, feature_notes, name_list, read_features_member
from core.io.safezip import member_path, read_zip
from core.io.study_date import zip_study_dates

EMBEDDING_STEMS = ("image_embeddings", "ehr_embeddings")


@dataclass(frozen=True)
class CohortPreview:
    """An uploaded cohort at a glance (see the module docstring)."""

    subjects: int
    events: int
    splits: dict[str, int]  # subjects per split, as cohort.csv gives them or as the job would draw them
    drawn: bool  # cohort.csv has no split column: a 60/20/20 split by event is drawn (the same one the job draws)
    median_follow_up_days: float | None  # of every subject's time (events and censored alike); None without times
    studies: int  # subjects whose study the zip holds
    timeline_subjects: int | None  # subjects with at least one timeline row; None: no timeline file
    timeline_events: int
    feature_columns: int | None  # the model's columns read from the features table; None: no features file
    embeddings: tuple[str, ...] = ()  # embedding files the zip holds (image_embeddings, ehr_embeddings)
    notes: tuple[str, ...] = ()  # what the model would leave out or could read wrongly (core.cohort_notes)
    blocking: tuple[str, ...] = field(default=())  # what stops the job (its PHI check refuses the rows)

    def to_dict(self) -> dict:
        return asdict(self)


def _top_files(names: list[str], top: str) -> dict[str, str]:
    """The zip's files in the cohort folder itself (not below it): their name there -> the member name."""
    prefix = f"{top}/" if top else ""
    return {n.replace("\\", "/")[len(prefix):]: n for n in names
            if n.replace("\\", "/").startswith(prefix) and "/" not in n.replace("\\", "/")[len(prefix):]}


def _study_rows(table: pd.DataFrame, names: list[str], top: str) -> tuple[dict[str, str], list[str], list[str]]:
    """cohort.csv's study cells against the zip: the member name of each study the zip holds (by subject id), the
    subjects whose study it does not hold and those whose path leads out of the cohort folder."""
    files = {n.replace("\\", "/") for n in names}
    folders = {str(parent) for n in files for parent in PurePosixPath(n).parents}
    held: dict[str, str] = {}
    absent: list[str] = []
    outside: list[str] = []
    for sid, study in zip(table["subject_id"], table["study"].where(has_study(table), "")):
        if not str(study).strip():
            continue
        name = member_path(top or ".", str(study).strip())
        if name is None:
            outside.append(sid)
        elif name in files or name in folders:
            held[sid] = name
        else:
            absent.append(f"{sid}: '{str(study).strip()}'")
    return held, absent, outside


def preview_cohort_zip(data: bytes, *, for_training: bool = True) -> CohortPreview:
    """Read an uploaded cohort zip (see the module docstring) as the job would, and say what it gives a model.
    Raises the InputError the job would stop with (cohort.csv's columns and values; with ``for_training``, a train
    split and an event; the timeline's and the features table's contents)."""
    from core.app.workspace import check_file_count, cohort_csv_member

    names: list[str] = []
    small = {"cohort.csv", *TIMELINE_FILES, *FEATURE_FILES}

    def wanted(name: str) -> bool:
        names.append(name)
        return name.replace("\\", "/").rsplit("/", 1)[-1] in small

    members = {m.name: m.data for m in read_zip(data, label="cohort zip", wanted=wanted)}
    check_file_count(len(names))
    csv = cohort_csv_member(names)
    top = csv.replace("\\", "/").rsplit("/", 1)[0] if "/" in csv.replace("\\", "/") else ""
    here = _top_files(names, top)
    table = validate_outcomes(read_csv_any(io.BytesIO(members[csv]), text_names=TEXT_COLUMNS), for_training=for_training)
    ids = table["subject_id"].tolist()
    features = text = timeline = None
    feature_file = next((f for f in FEATURE_FILES if f in here), None)
    if feature_file is not None:
        features, text = features_of(read_features_member(members[here[feature_file]], feature_file), feature_file, set(ids))
    timeline_file = next((f for f in TIMELINE_FILES if f in here), None)
    if timeline_file is not None:
        from core.io.timeline import read_timeline_bytes

        timeline = read_timeline_bytes(members[here[timeline_file]], timeline_file)
    held: dict[str, str] = {}
    blocking: list[str] = []
    if "study" in table.columns:
        held, absent, outside = _study_rows(table, names, top)
        n = len(table)
        if absent:
            blocking.append(f"cohort.csv: {len(absent)} of {n} subjects name a study that is not in the zip "
                            f"({name_list(absent)}): the job's PHI check stops at them; add the studies to the zip at "
                            "those paths (relative to cohort.csv) or leave their study cells empty")
        if outside:  # named here, not looked up: the notes read the rest
            blocking.append(f"cohort.csv: {len(outside)} of {n} subjects name a study outside the cohort folder "
                            f"({name_list(outside)}): the job refuses it; give paths inside the folder, without '..'")
            table = table.assign(study=table["study"].where(~table["subject_id"].isin(outside), ""))
    cohort = Cohort(root=Path("/cohort-zip-preview"), table=table, features=features, timeline=timeline,
                    feature_text=text)
    dates: dict[str, str] = {}
    if held:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            dates = zip_study_dates(zf, held)
    notes = (feature_notes(features) + coverage_notes(
        cohort, timeline=timeline is not None, features=features is not None, studies=cohort.has_studies,
        study_dates=dates) + (split_event_notes(table) if for_training else []))
    events = table["event"].astype(int)
    times = table["time"].dropna()
    owners = set(timeline["subject_id"].astype(str)) if timeline is not None else set()
    return CohortPreview(
        subjects=len(table), events=int(events.sum()),
        splits={s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
        drawn=bool(table.attrs.get("auto_split")),
        median_follow_up_days=float(times.median()) if len(times) else None,
        studies=len(held),
        timeline_subjects=None if timeline is None else sum(1 for s in ids if s in owners),
        timeline_events=0 if timeline is None else len(timeline),
        feature_columns=None if features is None else int(features.shape[1]),
        embeddings=tuple(s for s in EMBEDDING_STEMS if f"{s}.parquet" in here or f"{s}.npy" in here),
        notes=tuple(notes), blocking=tuple(blocking))

