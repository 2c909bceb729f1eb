"""Cohorts from MEDS data and an ACES task definition (``python -m core cohort``).

ACES (es-aces, https://eventstreamaces.readthedocs.io) evaluates the task's
predicates, trigger (index event) and windows on the MEDS events and returns
one row per valid index event with the label and the window boundaries. This
module turns those rows into the cohort folder the rest of the project reads:

* ``cohort.csv``: ``subject_id, time, event, split, index_time``; ``time`` is
  days from the index to the first label-predicate event inside the label
  window (``event`` 1) or, without one, to the end of the label window capped
  at the subject's last recorded event (``event`` 0, censored); ``split`` is a
  seeded random train/val/test assignment;
* ``timeline.parquet``: the MEDS rows (``subject_id, time, code,
  numeric_value``) of the cohort's subjects (the cohort loader only ever gives
  models the events at or before ``index_time``);
* ``task.yaml``: a copy of the task definition, for provenance;
* with ``studies`` (a folder of CT studies named by subject id), ``studies/`` and cohort.csv's ``study`` column
  (``core.cohort_studies.attach_studies``), so that the cohort trains every fusion strategy, not only ehr_only.

A subject with several valid index events keeps the earliest.
The MEDS input is a parquet, CSV or .xlsx file or a MEDS folder (``data/**/*.parquet``);
columns and times are read as ``core.io.timeline`` reads a timeline (its column names, UTC
offsets, day / month order and refusals).
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import InputError

if TYPE_CHECKING:  # es-aces is imported lazily: only the cohort command needs it
    from aces.config import TaskExtractorConfig

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
Progress = Callable[[float, str], None]


def _meds_files(folder: Path) -> list[Path]:
    """The event files of a MEDS folder: ``data/**/*.parquet`` when it has a ``data`` folder (``metadata/`` holds code
    and subject tables, not events), else every ``*.parquet`` below it outside a ``metadata`` folder."""
    data = folder / "data"
    files = sorted((data if data.is_dir() else folder).rglob("*.parquet"))
    return [f for f in files if "metadata" not in f.relative_to(folder).parts[:-1]]


def read_meds(path: Path) -> pd.DataFrame:
    """MEDS events -> ``subject_id, time (datetime64[us]), code, numeric_value (float64)``, sorted by subject and time.

    ``subject_id`` and ``code`` are categorical (their categories in sorted order): a hospital's 45.8 M events as text
    objects took 14.6 GB on the way to a cohort. Each file is read batch by batch as ``core.io.timeline.read_timeline``
    reads it whole (as ``timeline`` and an upload read it): the same column names, UTC offsets converted, one day /
    month order per file, refusals with their fix (a time of day alone, epoch numbers, dates that read either way),
    rows without a code left out.
    """
    path = Path(path)
    if path.is_dir():
        files = _meds_files(path)
        if not files:
            raise InputError("--meds", str(path), "is a folder without .parquet event files",
                             "pass a MEDS parquet/CSV file or a MEDS folder (data/**/*.parquet)")
    elif not path.exists():
        raise InputError("--meds", str(path), "does not exist", "pass a MEDS parquet/CSV/.xlsx file or folder")
    else:
        files = [path]
    pieces: list[pa.Table] = []
    attrs: list[dict] = []
    for f in files:
        try:
            attrs += _read_file(f, pieces)
        except InputError as err:
            if not path.is_dir():
                raise
            raise InputError(err.field, err.value, f"{err.problem} (in {f.relative_to(path)})", err.fix) from None
    table = pa.concat_tables(pieces) if pieces else arrow_events(pd.DataFrame(columns=list(_COLUMNS)), encoded=True)
    out = pd.DataFrame({
        "subject_id": _categories(table.column("subject_id")),
        "time": table.column("time").to_numpy(),
        "code": _categories(table.column("code")),
        "numeric_value": table.column("numeric_value").to_numpy(),
    })
    del table, pieces
    empty = int((out["subject_id"] == "").sum())
    if empty:
        raise InputError("--meds", str(path), f"{empty} rows without subject_id",
                         "drop or fix rows with an empty subject_id")
    out = out.sort_values(["subject_id", "time"], kind="stable", na_position="first", ignore_index=True)
    # what reading left out, summed over the files and batches (core.cohort_notes.timeline_reading_notes words it)
    out.attrs["dropped_null_code"] = sum(int(a.get("dropped_null_code", 0) or 0) for a in attrs)
    out.attrs["unreadable_values"] = sum(int(a.get("unreadable_values", 0) or 0) for a in attrs)
    out.attrs["unreadable_examples"] = list(dict.fromkeys(v for a in attrs for v in a.get("unreadable_examples", [])))[:3]
    out.attrs["no_value_column"] = list(dict.fromkeys(str(a.get("source")) for a in attrs  # files read without values
                                                      if "numeric_value" not in (a.get("columns") or {"numeric_value": 1})))
    return out


_COLUMNS = {"subject_id": pa.string(), "time": pa.timestamp("us"), "code": pa.string(), "numeric_value": pa.float64()}


def arrow_events(frame: pd.DataFrame, time_unit: str = "us", encoded: bool = False) -> pa.Table:
    """Events (a timeline frame, or ``read_meds``'s) as arrow columns, text as arrow strings (about 20 bytes an event,
    not 60-80 as objects): what ACES reads and a cohort's timeline.parquet holds. ``encoded``: the text columns
    dictionary-encoded (4 bytes an event and the distinct values), for holding many batches."""
    types = dict(_COLUMNS, time=pa.timestamp(time_unit))
    columns = {}
    for name, typ in types.items():
        values = frame[name]
        if name == "time":
            values = values.to_numpy(dtype=f"datetime64[{time_unit}]")
        column = pa.array(values, from_pandas=True)
        if encoded and typ == pa.string():
            column = column.cast(typ).dictionary_encode() if not pa.types.is_dictionary(column.type) else column
            columns[name] = column.cast(pa.dictionary(pa.int32(), pa.string()))
        else:
            columns[name] = column.cast(typ)
    return pa.table(columns)


def _categories(column: pa.ChunkedArray) -> pd.Categorical:
    """A dictionary-encoded arrow text column as a pandas categorical whose categories are sorted (sorting by it
    sorts the text)."""
    unified = column.unify_dictionaries()
    if unified.num_chunks == 0:
        return pd.Categorical([], categories=pd.Index([], dtype=object))
    codes = np.concatenate([c.indices.fill_null(-1).to_numpy(zero_copy_only=False) for c in unified.chunks])
    dictionary = pd.Index(unified.chunk(0).dictionary.to_pylist(), dtype=object)
    values = pd.Categorical.from_codes(codes.astype(np.int32, copy=False), categories=dictionary)
    return values.reorder_categories(sorted(values.categories))


def _write_parquet(events: pd.DataFrame, path: Path, time_unit: str, rows: int = 2_000_000) -> None:
    """``events`` as a parquet file of text columns, written a slice of ``rows`` at a time (never all as strings)."""
    schema = arrow_events(events.iloc[:0], time_unit).schema
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(events), rows):
            writer.write_table(arrow_events(events.iloc[start:start + rows], time_unit), row_group_size=rows)


def _read_file(path: Path, pieces: list[pa.Table]) -> list[dict]:
    """Append one MEDS file's events to ``pieces`` in compact arrow tables, a batch at a time; the attrs of each."""
    from core.io.timeline import _format, events_frame, read_timeline, timeline_batches

    if _format(path) == "xlsx":  # a workbook is read whole
        frame = read_timeline(path)
        pieces.append(arrow_events(frame, encoded=True))
        return [frame.attrs]
    batches, mapping, commas = timeline_batches(path)

    @functools.cache
    def whole() -> pa.ChunkedArray:  # numeric dates: the day / month order is the file's (its distinct times suffice)
        again, _, _ = timeline_batches(path)
        return pa.chunked_array([pc.unique(pa.chunked_array([b.column(mapping["time"]) for b in again]))])

    attrs = []
    for batch in batches:
        table = pa.Table.from_batches([batch])
        if commas:  # a semicolon CSV writes 61,5 for 61.5 (core.io.delimited)
            table = table.replace_schema_metadata({b"delimiter": b";"})
        frame = events_frame(table, mapping, path, whole)
        pieces.append(arrow_events(frame, encoded=True))
        attrs.append(frame.attrs)
    return attrs


def load_task(task: Path) -> TaskExtractorConfig:
    """The ACES ``TaskExtractorConfig`` of a task YAML, with a label window and an index timestamp."""
    from aces.config import TaskExtractorConfig

    task = Path(task)
    if not task.is_file():
        raise InputError("--task", str(task), "does not exist", "pass an ACES task YAML (see assets/tasks/)")
    from ruamel.yaml.error import YAMLError  # the parser ACES reads task files with

    try:
        cfg = TaskExtractorConfig.load(config_path=task)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError("--task", str(task), f"is not valid YAML{where} ({getattr(err, 'problem', None) or err})",
                         "fix the YAML syntax (indentation, colons, quotes; see assets/tasks/)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        text = " ".join(str(err).split())[:200]
        raise InputError("--task", str(task), f"is not a valid ACES task ({type(err).__name__}: {text})",
                         "fix the YAML (predicates, trigger, windows; see assets/tasks/)") from None
    if cfg.label_window is None:
        raise InputError("--task", str(task), "has no window with a `label:` predicate",
                         "add `label: <outcome predicate>` to the outcome window")
    if cfg.index_timestamp_window is None:
        raise InputError("--task", str(task), "has no window with `index_timestamp: start|end`",
                         "add `index_timestamp: start` to the window that starts at the index event")
    return cfg


def run_aces(cfg: TaskExtractorConfig, events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ACES result rows, predicate counts per subject and timestamp) as pandas frames."""
    from aces import predicates, query
    from omegaconf import DictConfig

    logging.getLogger("aces").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="meds_cohort_") as tmp:
        path = Path(tmp) / "events.parquet"
        _write_parquet(events, path, "us")
        pred_df = predicates.get_predicates_df(cfg, DictConfig({"path": str(path), "standard": "meds"}))
    result = query.query(cfg, pred_df)
    return result.to_pandas(), pred_df.to_pandas()


def _window_bounds(result: pd.DataFrame, window: str) -> tuple[pd.Series, pd.Series]:
    columns = [c for c in result.columns if c.startswith(f"{window}.") and c.endswith("_summary")]
    if not columns:
        raise InputError("task", window, "ACES returned no summary of the label window",
                         "give the label window explicit start and end boundaries")
    summary = result[columns[0]]
    start = pd.to_datetime(summary.map(lambda s: s["timestamp_at_start"] if s else None))
    end = pd.to_datetime(summary.map(lambda s: s["timestamp_at_end"] if s else None))
    return start, end


def cohort_table(cfg: TaskExtractorConfig, result: pd.DataFrame, pred_df: pd.DataFrame, events: pd.DataFrame,
                 *, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[pd.DataFrame, int]:
    """cohort.csv rows from the ACES result, and how many later index events were dropped."""
    window = cfg.windows[cfg.label_window]
    label_pred = str(window.label)
    start, end = _window_bounds(result, str(cfg.label_window))
    rows = pd.DataFrame({
        "subject_id": result["subject_id"].to_numpy(),
        "index_time": pd.to_datetime(result["index_timestamp"]).to_numpy(),
        "label": result["label"].astype(int).to_numpy(),
        "start": start.to_numpy(), "end": end.to_numpy(),
    }).sort_values(["subject_id", "index_time"], kind="stable")
    n_before = len(rows)
    rows = rows.drop_duplicates("subject_id", keep="first").reset_index(drop=True)
    dropped = n_before - len(rows)

    hits = pred_df.loc[pred_df[label_pred] > 0, ["subject_id", "timestamp"]].merge(
        rows[["subject_id", "start", "end"]], on="subject_id")
    after = hits["timestamp"] >= hits["start"] if window.start_inclusive else hits["timestamp"] > hits["start"]
    before = hits["timestamp"] <= hits["end"] if window.end_inclusive else hits["timestamp"] < hits["end"]
    first_hit = hits[after & before].groupby("subject_id")["timestamp"].min()
    at_index = set(hits.loc[(hits["timestamp"] == hits["start"]) & ~after, "subject_id"].astype(str))  # outside the window
    last_seen = events.dropna(subset=["time"]).groupby("subject_id", observed=True)["time"].max()
    last_seen.index = last_seen.index.astype(str)

    event_time = rows["subject_id"].map(first_hit)
    censor_time = pd.concat([rows["end"], rows["subject_id"].map(last_seen)], axis=1).min(axis=1)
    event = rows["label"].to_numpy() > 0
    missing = event & event_time.isna().to_numpy()
    if missing.any():
        raise InputError("task", label_pred, f"{int(missing.sum())} labelled subjects have no {label_pred} event "
                         "inside the label window", "check the label window's boundaries and inclusivity")
    stop = np.where(event, event_time.to_numpy(dtype="datetime64[us]"), censor_time.to_numpy(dtype="datetime64[us]"))
    days = (pd.to_datetime(stop) - pd.to_datetime(rows["index_time"])) / pd.Timedelta(days=1)
    table = pd.DataFrame({
        "subject_id": rows["subject_id"].astype(str),
        "time": np.round(days.to_numpy(dtype=float), 6),
        "event": event.astype(int),
        "split": assign_splits(rows["subject_id"].astype(str).tolist(), seed=seed, fractions=fractions),
        "index_time": pd.to_datetime(rows["index_time"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
    })
    bad = ~np.isfinite(table["time"].to_numpy()) | (table["time"].to_numpy() < 0)
    if bad.any():
        raise InputError("task", str(cfg.label_window), f"{int(bad.sum())} subjects get a negative or unknown "
                         "follow-up time", "make the label window start at or after the index event")
    table.attrs["label_at_index"] = sorted(at_index & set(table.loc[table["event"] == 0, "subject_id"]))
    return table, dropped


def assign_splits(subject_ids: list[str], *, seed: int = 0,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> list[str]:
    """Seeded random train/val/test labels (in the order of ``subject_ids``; sizes rounded, val and test >= 1 when n >= 3).

    >>> assign_splits([f"s{i}" for i in range(10)], seed=1).count("train")
    6
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0) or fractions[0] <= 0:
        raise InputError("--split", ",".join(f"{f:g}" for f in fractions), "must be three fractions summing to 1 "
                         "with train > 0", "use e.g. 0.6,0.2,0.2")
    n = len(subject_ids)
    n_val, n_test = (int(round(f * n)) for f in fractions[1:])
    if n >= 3:
        n_val, n_test = max(n_val, 1 if fractions[1] > 0 else 0), max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n - n_val - n_test
    labels = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test, dtype=object)
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=object)
    out[order] = labels
    return [str(v) for v in out]


def build_meds_cohort(meds: Path, task: Path, out: Path, *, seed: int = 0,
                      fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                      progress: Progress | None = None, studies: Path | None = None,
                      move_studies: bool = False) -> dict[str, object]:
    """Write the cohort folder ``out`` (new or empty) from MEDS events and an ACES task, with the CT studies of the
    folder ``studies`` named by subject id when given (``move_studies``: moved out of it, not copied); returns a
    summary. A failure while adding the studies leaves
    ``out`` as it was before (gone, or empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("--out", str(out), "exists and is not an empty folder", "pass a new or empty folder")
    if studies is not None and not Path(studies).is_dir():
        from core.cohort_studies import NAMING

        raise InputError("--studies", str(studies), "is not a folder", f"pass the folder of the studies; {NAMING}")
    existed = out.exists()
    report = progress or (lambda fraction, label: None)
    report(0.0, "reading the task")
    cfg = load_task(task)
    report(0.1, "reading MEDS events")
    events = read_meds(meds)
    report(0.3, "ACES: predicates and windows")
    result, pred_df = run_aces(cfg, events)
    if result.empty:
        raise InputError("--task", str(task), "selects no subject in this MEDS dataset",
                         "check the predicate codes against the data (python -m core timeline PATH --subject ID)")
    report(0.7, "follow-up times and splits")
    table, dropped = cohort_table(cfg, result, pred_df, events, seed=seed, fractions=fractions)
    from core.cohort_notes import timeline_reading_notes
    from core.io.features import name_list

    notes = timeline_reading_notes(events)
    if events.attrs.get("dropped_null_code"):
        notes[0] += " (a subject whose index or outcome event had no code is not in the cohort)"
    censored_at_index = table.attrs.get("label_at_index", [])
    if censored_at_index:
        k = len(censored_at_index)
        notes.append(f"{k} subject{'s have' if k > 1 else ' has'} a {cfg.windows[cfg.label_window].label} event at the index "
                     f"time itself ({name_list(censored_at_index)}), outside the label window (its start is exclusive): "
                     "they are censored; set start_inclusive: true in the label window to count it as an event at time 0")
    if len(table) and not int(table["event"].sum()):  # a typo in the outcome's code selects no event, silently
        label = str(cfg.windows[cfg.label_window].label)
        code = getattr(cfg.predicates.get(label), "code", None)
        notes.append(f"No subject has the outcome: the label predicate {label!r}"
                     + (f" (code {code})" if isinstance(code, str) else "") + f" matched no event in the label window "
                     f"of any of the {len(table)} subjects, so no model can be trained or evaluated on this cohort; "
                     "check the predicate's code against the data (python -m core timeline PATH --subject ID)")
    report(0.8, "writing the cohort")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "cohort.csv", index=False)
    timeline = events[events["subject_id"].isin(set(table["subject_id"]))]  # sorted by subject and time
    _write_parquet(timeline, out / "timeline.parquet", "ns")
    shutil.copyfile(task, out / "task.yaml")
    attached: dict[str, object] = {}
    if studies is not None:
        from core.cohort_studies import attach_studies

        try:
            attached = attach_studies(out, Path(studies), progress=lambda f, m: report(0.85 + 0.15 * f, m),
                                      move=move_studies)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            if existed:
                out.mkdir()
            raise
        unused = attached["unused"]
        assert isinstance(unused, list)
        if unused:
            many = len(unused) > 1
            notes.append(f"{len(unused)} stud{'ies' if many else 'y'} of the studies folder match{'' if many else 'es'} no "
                         f"subject of the cohort and {'were' if many else 'was'} left out ({name_list(unused)})")
        if attached["without_study"]:
            notes.append(f"{attached['without_study']} of the {len(table)} subjects have no CT study: models read "
                         "their EHR only")
        notes += _scan_dates(out)
    report(1.0, "done")
    return {
        "out": str(out),
        "task": Path(task).name,
        "label_predicate": str(cfg.windows[cfg.label_window].label),
        "n_subjects": int(len(table)),
        "events": int(table["event"].sum()),
        "censored": int((table["event"] == 0).sum()),
        "median_time_days": float(table["time"].median()),
        "splits": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "later_index_events_dropped": int(dropped),
        "timeline_events": int(len(timeline)),
        "seed": int(seed),
        "notes": notes,
        **attached,  # with studies: how many subjects got one, how many did not, the studies that match no subject
    }


def _scan_dates(out: Path) -> list[str]:
    """The built cohort's CTs taken after their index event or long before it (``core.cohort_notes.scan_date_notes``:
    each DICOM study's date against its subject's index_time; NIfTI and de-identified studies carry none)."""
    from core.cohort import Cohort, has_study, validate_outcomes
    from core.cohort_notes import scan_date_notes
    from core.io.columns import TEXT_COLUMNS
    from core.io.delimited import read_csv_any

    cohort = Cohort(root=out, table=validate_outcomes(read_csv_any(out / "cohort.csv", text_names=TEXT_COLUMNS)))
    return scan_date_notes(cohort, cohort.table.loc[has_study(cohort.table), "subject_id"].tolist())


def cohort_from_meds(meds: Path | str, out: Path | str, *, index_prefix: str = "HOSPITAL_ADMISSION",
                     outcome_code: str = "MEDS_DEATH", seed: int = 0) -> Path:
    """Build a cohort folder from a MEDS timeline alone (no images), without a task definition: the simple rule the
    tests on real MIMIC data use (:func:`build_meds_cohort` is the product's build, from an ACES task).

    Index time = the subject's first event whose code starts with ``index_prefix``;
    event = ``outcome_code`` after the index (time = days to it); otherwise
    censored at the subject's last event. Subjects without an index event, or
    whose outcome precedes the index, are left out. Writes ``cohort.csv`` (with
    an automatic 60/20/20 split) and ``timeline.parquet`` (the subjects' events).
    """
    from core.cohort import auto_split
    from core.io.timeline import read_timeline

    out = Path(out)
    tl = read_timeline(meds)
    is_index = tl["code"].str.startswith(index_prefix)
    index = tl[is_index].groupby("subject_id")["time"].min()
    if index.empty:
        raise InputError("index_prefix", index_prefix, "no event code starts with it", "pass a code prefix present in the timeline")
    death = tl[tl["code"] == outcome_code].groupby("subject_id")["time"].min()
    last = tl.groupby("subject_id")["time"].max()
    rows = []
    for sid, t0 in index.items():
        d = death.get(sid)
        if d is not None and d < t0:
            continue
        end, ev = (d, 1) if d is not None else (last[sid], 0)
        rows.append({"subject_id": sid, "time": max((end - t0).total_seconds() / 86400.0, 0.0), "event": ev, "index_time": t0})
    table = pd.DataFrame(rows)
    table["split"] = auto_split(table["subject_id"].astype(str).tolist(), table["event"].to_numpy(), seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "cohort.csv", index=False)
    tl[tl["subject_id"].isin(set(table["subject_id"]))].to_parquet(out / "timeline.parquet", index=False)
    return out
