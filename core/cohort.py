"""A cohort folder: outcomes, splits and every modality, validated in one place.

Layout of a cohort folder::

    cohort.csv            subject_id, time (days from index; or index_time and end_time), event (0/1, yes/no),
                          [split train/val/test], [study], [series], [index_time],
                          [contrast yes/no], [true_risk], ...
    features.csv          subject_id + numeric columns (NaN kept), text      optional
                          categories (``core.io.features``); or features.xlsx
    timeline.parquet|csv|xlsx  MEDS rows subject_id, time, code, numeric_value  optional
    image_embeddings.npy|parquet, ehr_embeddings.npy|parquet                optional

``series`` names the series of a study that holds several (a SeriesInstanceUID, or a unique prefix of one, as
``python -m core inspect STUDY`` lists them); without it the largest acquired CT series is read.

``.npy`` embeddings are ``[n, D]`` (one vector per subject) or ``[n, K, D]``
(K tokens per subject, e.g. one per slice); their subject ids come from a
sibling ``<name>_ids.txt`` / ``<name>_ids.csv`` (one id a line) or, when
absent, from the order of ``cohort.csv``. ``.parquet`` embeddings carry a
``subject_id`` column and numeric columns.

Any modality may be missing for the whole cohort or for single subjects.
``validate_outcomes`` is the one function that checks the outcome table; every
problem is an :class:`~core.errors.InputError` naming the field, the bad value
and the fix.

When ``split`` is absent a deterministic 60/20/20 train/val/test split is drawn
from ``seed`` (stratified by event so every split has events).

>>> import pandas as pd
>>> t = validate_outcomes(pd.DataFrame({"subject_id": [1, 2, 3], "time": [5.0, 2, 9], "event": [1, 0, 1]}))
>>> list(t["split"].unique()) != []
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.errors import InputError
from core.io.columns import COHORT_ALIASES, END_COLUMN, EVENT_WORDS, TEXT_COLUMNS, TIMELINE_FILES, date_gap_hint, rename_aliases
from core.io.contrast import COLUMN as CONTRAST_COLUMN
from core.io.contrast import TABLE_SOURCE, table_contrast, with_record
from core.io.delimited import read_csv_any
from core.io.features import FEATURE_FILES, canon, read_features_file, read_features_frame
from core.io.safezip import inside_folder
from core.io.timeline_times import index_times, outcome_from_dates

if TYPE_CHECKING:
    from core.io.volume import Volume

SPLITS = ("train", "val", "test")
SERIES_COLUMN = "series"
REQUIRED = ("subject_id", "time", "event")


def _examples(values: list[str], k: int = 3) -> str:
    shown = ", ".join(repr(v) for v in values[:k])
    return shown + (f" (+{len(values) - k} more)" if len(values) > k else "")


def validate_outcomes(table: pd.DataFrame, *, seed: int = 0, source: str = "cohort.csv",
                      for_training: bool = True) -> pd.DataFrame:
    """Check and normalise an outcome table; return a copy with str ids, float time, int event, split.

    ``for_training=False`` is for scoring new patients (predict, explain, export): ``time`` and ``event`` may be
    absent (then NaN and 0, and every subject is in the test split), and neither an observed event nor a train
    split is required. Values that are present are checked as strictly as for training.

    >>> validate_outcomes(pd.DataFrame({"subject_id": [1], "time": [-1.0], "event": [1]}))
    Traceback (most recent call last):
    ...
    core.errors.InputError: time: got -1.0 (subject '1'), must be a finite number of days >= 0; fix: correct or drop negative, NaN or infinite follow-up times in cohort.csv
    """
    table = rename_aliases(table, COHORT_ALIASES, source)  # Patient ID, futime, status, Index Date
    if not for_training and "subject_id" in table.columns:
        if "time" not in table.columns and "event" not in table.columns:  # patients to score: no outcome to read
            table = table.drop(columns=[END_COLUMN], errors="ignore").assign(time=0.0, event=0)
            if "split" not in table.columns:
                table["split"] = "test"
            out = validate_outcomes(table, seed=seed, source=source, for_training=False)
            out["time"] = np.nan
            return out
    table, from_dates = outcome_from_dates(table, source, END_COLUMN)  # outcomes as dates, or checked against them
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(
            "columns", ", ".join(missing), f"required column(s) missing from {source} (has: {', '.join(map(str, table.columns[:8]))})",
            "add columns subject_id, time (days from index; or index_time and end_time, the event's or last "
            "follow-up's date) and event (1 = event, 0 = censored)",
        )
    if len(table) == 0:
        raise InputError("cohort.csv", "0 rows", "the cohort is empty", "add at least one subject per split")
    out = table.copy()
    out["subject_id"] = out["subject_id"].astype(str).str.strip()
    dup = out["subject_id"][out["subject_id"].duplicated()].tolist()
    if dup:
        raise InputError("subject_id", _examples(dup), "duplicate subject ids", f"keep one row per subject in {source}")
    time = pd.to_numeric(out["time"], errors="coerce").astype(float)
    bad = ~np.isfinite(time.to_numpy()) | (time.to_numpy() < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            "time", f"{table['time'].tolist()[i]!r} (subject {out['subject_id'].iloc[i]!r})",
            "must be a finite number of days >= 0", f"correct or drop negative, NaN or infinite follow-up times in {source}"
            + (date_gap_hint(table, i) if from_dates else ""),
        )
    words = out["event"].map(lambda v: EVENT_WORDS.get(canon(v)) if isinstance(v, str) else None)  # yes / dead: 1
    event = pd.to_numeric(out["event"], errors="coerce").fillna(words.astype(float))
    bad_ev = ~event.isin([0, 1])
    if bad_ev.any():
        i = int(np.flatnonzero(bad_ev.to_numpy())[0])
        raise InputError(
            "event", f"{table['event'].tolist()[i]!r} (subject {out['subject_id'].iloc[i]!r})",
            "must be 1 (event) or 0 (censored)", f"recode the event column of {source} as 0/1 (yes / no and dead / "
            "alive are read too)",
        )
    out["time"], out["event"] = time, event.astype(int)
    if for_training and int(out["event"].sum()) == 0:
        raise InputError("event", "all 0", "every subject is censored, so no survival model can be fitted",
                         "check the event coding (1 = event) or add subjects with observed events")
    if "split" in out.columns:
        split = out["split"].map(lambda v: "" if pd.isna(v) else str(v)).str.strip().str.lower()
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:  # a blank cell named with its subject
            raise InputError("split", _examples(unknown) + (f" (blank for subject {out['subject_id'][split == ''].iloc[0]!r})" if "" in unknown else ""),
                             "unknown split value(s)", "use train, val or test (or drop the split column for an automatic 60/20/20 split)")
        out["split"] = split
    else:
        out["split"] = auto_split(out["subject_id"].tolist(), out["event"].to_numpy(), seed=seed)
        out.attrs["auto_split"] = True  # evaluate says so: its test split is then a drawn fifth of the cohort
    if for_training and not (out["split"] == "train").any():
        raise InputError("split", "no 'train' rows", "training needs a train split", "mark some subjects as train")
    if "index_time" in out.columns:
        out["index_time"] = index_times(out["index_time"], source)
    if SERIES_COLUMN in out.columns:  # the series to read of a study that holds several
        named = out[SERIES_COLUMN].map(lambda v: "" if pd.isna(v) else str(v).strip())
        no_study = (named != "") & ~has_study(out)
        if no_study.any():
            i = int(np.flatnonzero(no_study.to_numpy())[0])
            raise InputError(SERIES_COLUMN, f"{named.iloc[i]!r} (subject {out['subject_id'].iloc[i]!r})",
                             "names a series but the subject has no study", f"give the study path in {source} or "
                             "leave the series empty")
        out[SERIES_COLUMN] = named
    if CONTRAST_COLUMN in out.columns:  # the study's contrast, where its header does not record it (NIfTI)
        out[CONTRAST_COLUMN] = [table_contrast(v, sid) for v, sid in zip(out[CONTRAST_COLUMN], out["subject_id"])]
    return out.reset_index(drop=True)


def has_study(table: pd.DataFrame) -> pd.Series:
    """Per row of an outcome table: whether its ``study`` cell names a study (not blank)."""
    if "study" not in table.columns:
        return pd.Series(False, index=table.index)
    return table["study"].map(lambda v: not pd.isna(v) and str(v).strip() != "")


def auto_split(ids: list[str], event: np.ndarray, *, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> list[str]:
    """Deterministic split stratified by event: the same ids and seed give the same split."""
    rng = np.random.default_rng(seed)
    labels = np.empty(len(ids), dtype=object)
    for ev in (0, 1):
        idx = np.flatnonzero(event == ev)
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        labels[idx[:n_train]] = "train"
        labels[idx[n_train:n_train + n_val]] = "val"
        labels[idx[n_train + n_val:]] = "test"
    return [str(x) for x in labels]


def _check_ids(name: str, ids: pd.Index, cohort_ids: set[str]) -> None:
    unknown = [i for i in ids if i not in cohort_ids]
    if unknown:
        raise InputError(f"{name} subject_id", _examples(unknown), f"{len(unknown)} id(s) not in cohort.csv",
                         f"make the subject ids of {name} match cohort.csv (as strings) or remove those rows")
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise InputError(f"{name} subject_id", _examples(dup), "duplicate ids", f"keep one row per subject in {name}")


def features_of(frame: pd.DataFrame, name: str, cohort_ids: set[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A features table as read (``name``: its file's name, for messages) -> the model's columns and its text
    categories (``core.io.features.read_features_frame``), every id checked against cohort.csv's."""
    df, text = read_features_frame(frame, name)
    _check_ids(name, df.index, cohort_ids)
    return df, text


def _read_features(path: Path, cohort_ids: set[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    return features_of(read_features_file(path), path.name, cohort_ids)


def _read_embeddings(root: Path, stem: str, cohort_ids: list[str]) -> pd.DataFrame | None:
    pq = root / f"{stem}.parquet"
    npy = root / f"{stem}.npy"
    if pq.exists():
        df = pd.read_parquet(pq)
        if "subject_id" not in df.columns:
            raise InputError(f"{stem}.parquet", ", ".join(map(str, df.columns[:6])), "no subject_id column", "add a subject_id column")
        df["subject_id"] = df["subject_id"].astype(str)
        df = df.set_index("subject_id").astype(np.float32)
        _check_ids(f"{stem}.parquet", df.index, set(cohort_ids))
        return df
    if not npy.exists():
        return None
    arr = np.load(npy, allow_pickle=False)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (2, 3):
        raise InputError(f"{stem}.npy", f"dtype {arr.dtype}, shape {arr.shape}", "must be numeric [n, D] or [n, K, D]",
                         "save a float array with one row per subject")
    ids: list[str]
    for ids_name in (f"{stem}_ids.txt", f"{stem}_ids.csv"):
        if (root / ids_name).exists():
            ids = [line.strip() for line in (root / ids_name).read_text().splitlines() if line.strip()]
            if ids and ids[0] == "subject_id":
                ids = ids[1:]
            break
    else:
        ids = list(cohort_ids)
    if len(ids) != arr.shape[0]:
        raise InputError(f"{stem}.npy", f"{arr.shape[0]} rows for {len(ids)} ids", "row count does not match the ids",
                         f"write {stem}_ids.txt with one subject id per row of the array")
    index = pd.Index(ids, name="subject_id")
    _check_ids(f"{stem}.npy", index, set(cohort_ids))
    flat = arr.reshape(arr.shape[0], -1).astype(np.float32)
    df = pd.DataFrame(flat, index=index)
    df.attrs["token_shape"] = tuple(arr.shape[1:])
    return df


@dataclass
class Cohort:
    """A validated cohort folder (see the module docstring)."""

    root: Path
    table: pd.DataFrame
    features: pd.DataFrame | None = None
    timeline: pd.DataFrame | None = None
    image_embeddings: pd.DataFrame | None = None
    ehr_embeddings: pd.DataFrame | None = None
    feature_text: pd.DataFrame | None = None  # features.csv's text categories (``core.io.features.with_categories``)
    _by_id: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {sid: i for i, sid in enumerate(self.table["subject_id"])}
        self._events_by_id: dict[str, np.ndarray] | None = None  # row positions in the timeline per subject

    def ids(self, split: str | None = None) -> list[str]:
        if split is None:
            return self.table["subject_id"].tolist()
        if split not in SPLITS:
            raise InputError("split", split, "unknown split", "use train, val or test")
        return self.table.loc[self.table["split"] == split, "subject_id"].tolist()

    def row(self, subject_id: str) -> pd.Series:
        sid = str(subject_id)
        if sid not in self._by_id:
            raise InputError("subject", sid, "not in cohort.csv", f"use one of the cohort's ids, e.g. {_examples(self.ids())}")
        return self.table.iloc[self._by_id[sid]]

    @property
    def has_studies(self) -> bool:
        return "study" in self.table.columns and self.table["study"].notna().any()

    def study_path(self, subject_id: str) -> Path | None:
        row = self.row(subject_id)
        if "study" not in row.index or pd.isna(row["study"]) or str(row["study"]).strip() == "":
            return None
        return inside_folder(self.root, str(row["study"]), f"study (subject {row['subject_id']})")

    def load_volume(self, subject_id: str) -> Volume | None:
        """The subject's CT (``core.io.study.load_study``), or None when the subject has none."""
        path = self.study_path(subject_id)
        if path is None:
            return None
        if not path.exists():
            raise InputError(f"study (subject {subject_id})", str(self.row(subject_id)["study"]), "file not found",
                             "fix the study path in cohort.csv (relative to the cohort folder)")
        from core.io.study import load_study

        row = self.row(subject_id)
        series = str(row.get(SERIES_COLUMN, "") or "") or None
        try:
            volume = load_study(path, series)
        except InputError as err:
            if err.field != "series" or series is None:
                raise
            fix = ("leave its series empty in cohort.csv" if err.fix.startswith("leave out")
                   else f"{err.fix} (in the series column of cohort.csv)")
            raise InputError(f"series (subject {row['subject_id']})", err.value, err.problem, fix) from None
        stated = str(row.get(CONTRAST_COLUMN, "") or "")
        if stated:  # the cohort table's record overrides the header's
            volume = replace(volume, meta=with_record(volume.meta, stated, TABLE_SOURCE))
        return volume

    def index_time(self, subject_id: str) -> pd.Timestamp | None:
        row = self.row(subject_id)
        if "index_time" not in row.index or pd.isna(row["index_time"]):
            return None
        return pd.Timestamp(row["index_time"])

    def timeline_rows(self, subject_id: str) -> pd.DataFrame | None:
        """Every timeline row of the subject as written (outcomes, static codes without a time), or None."""
        sid = str(self.row(subject_id)["subject_id"])
        if self.timeline is not None and self._events_by_id is None:  # positions, no frame per subject (a first page)
            self._events_by_id = {str(k): v for k, v in self.timeline.groupby("subject_id", sort=False).indices.items()}
        rows = None if self.timeline is None else self._events_by_id.get(sid)
        return None if rows is None else self.timeline.iloc[rows]

    def events(self, subject_id: str) -> pd.DataFrame:
        """The subject's timeline events known at its index time (:func:`core.io.timeline_times.known_at`: at or
        before it; in a timeline of dates only, before its day when it has a time of day); all events when cohort.csv
        has no index_time column (``core.cohort_notes.coverage_notes`` says so).

        A subject with timeline events but no index time in a cohort that has an
        index_time column gets no events: nothing after the scan may leak in. Outcome codes (death) are
        never returned, whatever their time: an outcome is not an input.
        """
        empty = pd.DataFrame({"subject_id": pd.Series(dtype=str), "time": pd.Series(dtype="datetime64[ns]"),
                              "code": pd.Series(dtype=str), "numeric_value": pd.Series(dtype=float)})
        ev = self.timeline_rows(subject_id)
        if ev is None:
            return empty
        from core.io.timeline import OUTCOME_CODES

        if "index_time" in self.table.columns:
            idx = self.index_time(subject_id)
            if idx is None:
                return empty
            from core.io.timeline_times import dates_only, known_at  # at or before the index (dates only: an earlier day)

            ev = ev[known_at(ev["time"], idx, dates_only(self.timeline)) & ~ev["code"].isin(OUTCOME_CODES).to_numpy()]
        else:
            ev = ev[~ev["code"].isin(OUTCOME_CODES)]
        return ev.sort_values("time", kind="stable").reset_index(drop=True)

    OUTCOME_COLUMNS = ("subject_id", "time", "event", "split", "study", SERIES_COLUMN, "index_time")

    def column_names(self) -> list[str]:
        """Columns a subject can be grouped by: cohort.csv's (outcome and path columns left out), then features.csv's
        (its text categories, such as sex F / M, as written)."""
        names = [c for c in self.table.columns if c not in self.OUTCOME_COLUMNS]
        for frame in (self.feature_text, self.features):
            names += [] if frame is None else [c for c in frame.columns if c not in names]
        return names

    def column_values(self, column: str, ids: list[str]) -> list:
        """The values of ``column`` for ``ids`` (cohort.csv first, then features.csv); InputError if absent."""
        table = self.table.set_index("subject_id")
        if column in table.columns and column not in ("time", "event"):
            return table.loc[ids, column].tolist()
        for frame in (self.feature_text, self.features):
            if frame is not None and column in frame.columns:
                return frame.reindex(ids)[column].tolist()
        names = self.column_names()
        raise InputError("subgroup", column, "is not a column of cohort.csv or features.csv",
                         f"use one of: {', '.join(names[:30])}" if names else "this cohort has no column to group by "
                         "besides its outcomes: add one to cohort.csv or a features.csv (a timeline's codes, such as "
                         "GENDER//F, are not columns)")

    def outcomes_digest(self) -> str:
        """16 hex digits of the SHA-256 of the subjects' outcomes (id, time, event, sorted): the same for a copy of
        the cohort, another for other patients or outcomes. A trained model records it (metrics.json
        ``cohort_outcomes``) so that an evaluation can tell its own training cohort from another site's."""
        rows = sorted(f"{r.subject_id},{float(r.time):.6g},{int(r.event)}" for r in
                      self.table[["subject_id", "time", "event"]].dropna().itertuples(index=False))
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Hash of the outcome table and the file sizes/mtimes of the modalities (cache key)."""
        h = hashlib.sha256(pd.util.hash_pandas_object(self.table.astype(str), index=False).values.tobytes())
        for name in (*FEATURE_FILES, *TIMELINE_FILES, "image_embeddings.npy",
                     "image_embeddings.parquet", "ehr_embeddings.npy", "ehr_embeddings.parquet"):
            p = self.root / name
            if p.exists():
                st = p.stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


UPLOAD_SUBJECT = "uploaded-case"


@dataclass
class InMemoryCohort(Cohort):
    """A cohort whose studies are already loaded (an uploaded case): ``volumes`` by subject id, nothing on disk."""

    volumes: dict[str, Volume] = field(default_factory=dict)

    def study_path(self, subject_id: str) -> Path | None:
        self.row(subject_id)
        return None

    def load_volume(self, subject_id: str) -> Volume | None:
        self.row(subject_id)
        return self.volumes.get(str(subject_id))


def uploaded_case_cohort(root: Path, *, volume: Volume | None, events: pd.DataFrame | None,
                         index_time: pd.Timestamp | None = None, subject_id: str = UPLOAD_SUBJECT,
                         features: Mapping[str, float] | None = None) -> InMemoryCohort:
    """A one-subject cohort for an uploaded case, held in memory.

    The volume is the one the user sees in the viewer (after de-identification
    and the series choice), so the model explains exactly that image. ``events``
    are the subject's MEDS rows (columns of ``read_timeline``); the index time
    defaults to the last event, so no event is dropped. Follow-up time and event
    are unknown for an uploaded case: they are written as 1 day / censored so
    that the table has the usual columns, and are never shown. ``features``: the
    case's clinical values by features.csv column name (``core.app.cases``); a
    model's curated feature the case does not give is read as missing (the
    training mean), and without any the case has no features row.
    """
    if volume is None and (events is None or events.empty):
        raise InputError("upload", "nothing", "a case needs a study or a timeline", "upload a CT study or a timeline")
    row: dict[str, object] = {"subject_id": subject_id, "time": 1.0, "event": 0, "split": "test"}
    timeline = None
    if volume is not None:
        row["study"] = "uploaded study (in memory)"
    if events is not None and not events.empty:
        timeline = events.loc[:, ["subject_id", "time", "code", "numeric_value"]].assign(subject_id=subject_id)
        timeline = timeline.reset_index(drop=True)
        index_time = index_time if index_time is not None else pd.Timestamp(timeline["time"].max())
    row["index_time"] = pd.Timestamp(index_time) if index_time is not None else pd.NaT
    table = pd.DataFrame([row])
    table["index_time"] = pd.to_datetime(table["index_time"])
    frame = pd.DataFrame([dict(features)], index=pd.Index([subject_id], name="subject_id"), dtype=float) if features else None
    return InMemoryCohort(root=root, table=table, timeline=timeline, features=frame,
                          volumes={subject_id: volume} if volume is not None else {})


def unreadable_studies(failed: list[tuple[str, InputError]], n: int, shown: int = 5) -> InputError:
    """One error naming every subject whose study could not be read (the first ``shown`` with their reasons).

    >>> e = InputError("NIfTI file", "a.nii.gz", "is truncated", "re-copy the file")
    >>> print(unreadable_studies([("P1", e), ("P2", e)], 40))
    study: got 2 of 40 subjects, cannot be read: P1 (NIfTI file: got a.nii.gz, is truncated), P2 (NIfTI file: got a.nii.gz, is truncated); fix: re-export or re-copy these studies, or drop their rows (or empty their study cell) in cohort.csv
    """
    listed = ", ".join(f"{sid} ({str(exc).split('; fix: ')[0]})" for sid, exc in failed[:shown])
    more = f" and {len(failed) - shown} more: {', '.join(sid for sid, _ in failed[shown:])}" if len(failed) > shown else ""
    return InputError("study", f"{len(failed)} of {n} subjects", f"cannot be read: {listed}{more}",
                      "re-export or re-copy these studies, or drop their rows (or empty their study cell) in cohort.csv")


def _rows(frame: pd.DataFrame, ids: set[str]) -> pd.DataFrame:
    """The rows of ``frame`` (indexed by subject id) of ``ids``, with the frame's attrs (an embedding's token shape)."""
    out = frame[frame.index.isin(ids)]
    out.attrs.update(frame.attrs)
    return out


def load_cohort(root: Path | str, *, seed: int = 0, for_training: bool = True,
                subjects: list[str] | None = None) -> Cohort:
    """Load and validate a cohort folder (see the module docstring).

    ``for_training=False`` loads a cohort of patients to score: outcomes optional (see :func:`validate_outcomes`).
    ``subjects``: keep only these subjects (cohort.csv is validated whole, splits included); their timeline rows are
    the only ones read (the filter is pushed down into the parquet reader), so opening one patient of a cohort of
    millions of events holds that patient's events, not the cohort's.
    """
    root = Path(root)
    csv = root / "cohort.csv"
    if not root.is_dir():
        raise InputError("cohort", str(root), "is not a folder", "pass a cohort folder that holds cohort.csv")
    if not csv.exists():
        raise InputError("cohort", str(root), "has no cohort.csv", "add cohort.csv with subject_id, time, event")
    table = validate_outcomes(read_csv_any(csv, text_names=TEXT_COLUMNS), seed=seed, for_training=for_training)
    ids = table["subject_id"].tolist()
    id_set = set(ids)
    table_file = next((root / n for n in FEATURE_FILES if (root / n).exists()), None)
    features, text = _read_features(table_file, id_set) if table_file is not None else (None, None)
    kept = ids if subjects is None else [str(s) for s in subjects if str(s) in id_set]
    timeline = None
    for name in TIMELINE_FILES:
        if (root / name).exists():
            from core.io.timeline import read_timeline

            timeline = read_timeline(root / name, subjects=kept)
            break
    image_emb = _read_embeddings(root, "image_embeddings", ids)
    ehr_emb = _read_embeddings(root, "ehr_embeddings", ids)
    if subjects is not None:
        wanted = set(kept)
        table = table[table["subject_id"].isin(wanted)].reset_index(drop=True)
        features, text, image_emb, ehr_emb = (None if f is None else _rows(f, wanted)
                                              for f in (features, text, image_emb, ehr_emb))
    return Cohort(root=root, table=table, features=features, timeline=timeline,
                  image_embeddings=image_emb, ehr_embeddings=ehr_emb, feature_text=text)
