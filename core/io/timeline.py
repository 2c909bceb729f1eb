"""MEDS timelines (parquet, CSV or an Excel .xlsx sheet) as one tidy event table.

``read_timeline`` returns exactly four columns:

* ``subject_id`` -- ``str`` (files often store integers; ids are strings everywhere)
* ``time`` -- ``datetime64[ns]``; ``NaT`` marks a *static* event (MEDS allows a null time for facts that hold for
  the whole record, e.g. sex). Static rows are kept, sort first within a subject, do not count towards first/last
  time, and :func:`events_before` keeps them (a static fact is known at any index time).
* ``code`` -- ``str``; rows with a null code are dropped (their number is in ``DataFrame.attrs["dropped_null_code"]``).
* ``numeric_value`` -- ``float64`` (NaN where there is no value).

Column names are matched case-insensitively against the aliases in ``ALIASES``; a file that lacks one of subject, time
or code raises an :class:`~core.errors.InputError` listing the columns it has. ``numeric_value`` is optional. The
subject filter is pushed down to pyarrow (as the column's own type: files that store ``subject_id`` as int64 are
filtered with integers), so reading one subject never converts the whole file to pandas. CSV files are streamed in
record batches and filtered batch by batch. A workbook (``core.io.workbook``: checked as an untrusted zip, read in
memory) gives its first sheet with a subject id header; date cells are dates and numbers in the time column are Excel
serial dates.

>>> import pandas as pd
>>> ev = pd.DataFrame({"subject_id": ["1", "1"], "time": pd.to_datetime(["2020-01-01", "2021-01-01"]),
...                    "code": ["A", "B"], "numeric_value": [1.0, float("nan")]})
>>> events_before(ev, pd.Timestamp("2020-06-01"))["code"].tolist()
['A']
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from core.errors import InputError
from core.io.columns import SUBJECT_ALIASES, column_key
from core.io.delimited import (
    CHUNK_BYTES, DECIMAL_COMMA, HEAD_BYTES, file_chunks, numeric_values, sniff_delimiter, subject_text, text_encoding,
)
from core.io.study_date import parse_study_date
from core.io.timeline_times import has_offsets, to_datetime
from core.io.workbook import XLSX_MAGIC, is_workbook, read_workbook, sheet_table

COLUMNS = ("subject_id", "time", "code", "numeric_value")
ALIASES: dict[str, tuple[str, ...]] = {
    "subject_id": SUBJECT_ALIASES,  # as cohort.csv's and features.csv's (core.io.columns)
    "time": ("time", "timestamp", "datetime", "charttime", "date", "event_time", "time_stamp"),
    "code": ("code", "concept", "event_code", "concept_code", "code_id"),
    "numeric_value": ("numeric_value", "value", "numeric", "val", "value_as_number", "valuenum"),
}
REQUIRED = ("subject_id", "time", "code")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")
DEATH_CODE = "MEDS_DEATH"
CSV_BLOCK_BYTES = 8 << 20


# ----------------------------------------------------------------------------- file format and columns
def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] == b"PAR1":
        return "parquet"
    if is_workbook(head, name) or head[:4] == XLSX_MAGIC:  # .xls is refused with its fix by core.io.workbook
        return "xlsx"
    raise InputError("PATH", path.name, "is neither .parquet, .csv nor .xlsx",
                     "pass a MEDS timeline as .parquet, .csv or an .xlsx workbook")


def check_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError("PATH", str(p), "file not found", "pass an existing MEDS .parquet, .csv or .xlsx file")
    if p.is_dir():
        raise InputError("PATH", str(p), "is a folder", "pass the timeline file itself (.parquet or .csv)")
    if p.stat().st_size == 0:
        raise InputError("PATH", p.name, "is an empty file", "pass a MEDS timeline with a header and rows")
    return p


def map_columns(names: Iterable[str], source: str = "timeline") -> dict[str, str]:
    """Map the file's column names to the four MEDS columns; InputError when a required one is missing.

    >>> map_columns(["Patient ID", "Timestamp", "code", "value"])
    {'subject_id': 'Patient ID', 'time': 'Timestamp', 'code': 'code', 'numeric_value': 'value'}
    """
    names = [str(n) for n in names]
    lower = {column_key(n): n for n in reversed(names)}  # first occurrence wins; "Patient ID" is patient_id
    mapping: dict[str, str] = {}
    for target, aliases in ALIASES.items():
        for alias in aliases:
            if column_key(alias) in lower:
                mapping[target] = lower[column_key(alias)]
                break
    missing = [t for t in REQUIRED if t not in mapping]
    if missing:
        accepted = "; ".join(f"{t}: {', '.join(ALIASES[t])}" for t in missing)
        found = ", ".join(names[:12]) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")
        raise InputError(
            "columns", found or "(none)", f"{source} has no column for {', '.join(missing)}",
            f"rename columns so that each is found (accepted names {accepted})",
        )
    return mapping


def _parquet_dataset(path: Path) -> pads.Dataset:
    try:
        return pads.dataset(str(path), format="parquet")
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise InputError("PATH", path.name, f"is not a readable parquet file ({_first_line(err)})",
                         "pass a MEDS timeline written as parquet, or a CSV named .csv") from None


def _csv_reader(path: Path | pa.NativeFile, mapping: dict[str, str] | None = None, *,
                label: str = "", text_format: tuple[str, str] | None = None) -> pacsv.CSVStreamingReader:
    """A streaming CSV reader of a file, or of an in-memory buffer named ``label``; ``text_format``: its separator
    and encoding when already known (:func:`_text_format`)."""
    name = label or getattr(path, "name", "timeline.csv")
    delimiter, encoding = text_format or _text_format(path, name)
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    if mapping is not None:
        # read every mapped column as text; types are fixed in pandas with clear errors
        convert = pacsv.ConvertOptions(
            include_columns=list(mapping.values()),
            column_types={src: pa.string() for src in mapping.values()},
            strings_can_be_null=True,
        )
    try:
        source = path if isinstance(path, pa.NativeFile) else str(path)
        return pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, encoding=encoding),
                              parse_options=pacsv.ParseOptions(delimiter=delimiter), convert_options=convert)
    except UnicodeDecodeError:
        raise InputError("PATH", name, f"is not text in a known encoding (read as {encoding}: a binary file, or a "
                         "spreadsheet saved with a .csv name?)", "export the timeline as CSV text (UTF-8), as .xlsx or "
                         "as parquet") from None
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise InputError("PATH", name, f"is not a readable CSV file ({_first_line(err)})",
                         "pass a MEDS timeline CSV with a header row (subject_id, time, code, numeric_value)") from None


def _text_format(path: Path | pa.NativeFile, name: str) -> tuple[str, str]:
    """The CSV's separator and encoding (``core.io.delimited``: comma, semicolon, tab or pipe from its header line;
    UTF-8, UTF-16 by its byte-order mark, else cp1252)."""
    default = "\t" if ".tsv" in name.lower() else ","
    if isinstance(path, pa.NativeFile):  # an upload's buffer, read in place
        data = memoryview(path.read_at(path.size(), 0))
        encoding = text_encoding(data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES))
        head = bytes(data[:HEAD_BYTES])
    else:
        st = Path(path).stat()
        encoding = _file_encoding(str(path), st.st_size, st.st_mtime_ns)
        head = next(file_chunks(path), b"")[:HEAD_BYTES]
    return sniff_delimiter(head, default, encoding), encoding


@functools.lru_cache(maxsize=32)
def _file_encoding(path: str, size: int, mtime_ns: int) -> str:
    """:func:`core.io.delimited.text_encoding` of a file, read once per version of it (size and modification time)."""
    return text_encoding(file_chunks(path))


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:120] or type(err).__name__


def _source_columns(path: Path, fmt: str) -> list[str]:
    if fmt == "parquet":
        return list(_parquet_dataset(path).schema.names)
    return list(_csv_reader(path).schema.names)


def _workbook(data: bytes, label: str) -> tuple[pa.Table, dict[str, str]]:
    """A timeline sheet of an .xlsx workbook as Arrow columns (:func:`core.io.workbook.sheet_table`) and its mapping."""
    frame = read_workbook(data, label, "timeline", keep_dates=True)
    mapping = map_columns(frame.columns, f"{label} (sheet {frame.attrs['sheet']})")
    table = sheet_table(frame[list(dict.fromkeys(mapping.values()))], label, times=[mapping["time"]],
                        numbers=[mapping.get("numeric_value", "")])
    return table, mapping


# ----------------------------------------------------------------------------- reading
def _subject_filter_values(subjects: Iterable[str], arrow_type: pa.DataType) -> pa.Array:
    ids = [str(s).strip() for s in subjects]
    if pa.types.is_integer(arrow_type):
        ints = []
        for s in ids:
            try:
                ints.append(int(s))
            except ValueError:
                continue  # a non-integer id cannot match an integer column
        return pa.array(ints, type=arrow_type)
    if pa.types.is_floating(arrow_type):
        vals = []
        for s in ids:
            try:
                vals.append(float(s))
            except ValueError:
                continue
        return pa.array(vals, type=arrow_type)
    return pa.array(ids, type=pa.string())


def _read_parquet(path: Path, mapping: dict[str, str], subjects: list[str] | None) -> pa.Table:
    dataset = _parquet_dataset(path)
    subject_col = mapping["subject_id"]
    filt = None
    if subjects is not None:
        typ = dataset.schema.field(subject_col).type
        values = _subject_filter_values(subjects, typ)
        field = pads.field(subject_col)
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            field = field.cast(pa.string())
        filt = field.isin(values)
    try:
        return dataset.to_table(columns=list(mapping.values()), filter=filt)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise InputError("PATH", path.name, f"could not be read ({_first_line(err)})",
                         "check that the parquet file is complete and its subject column is text or integer") from None


def _read_csv(path: Path | pa.NativeFile, mapping: dict[str, str], subjects: list[str] | None, *,
              label: str = "") -> pa.Table:
    text_format = _text_format(path, label or getattr(path, "name", "timeline.csv"))  # scanned once per read
    reader = _csv_reader(path, mapping, label=label, text_format=text_format)
    name = label or getattr(path, "name", "timeline.csv")
    subject_col = mapping["subject_id"]
    wanted = None if subjects is None else pa.array([str(s).strip() for s in subjects], type=pa.string())
    batches = []
    for batch in _csv_batches(reader, name):
        if wanted is not None:
            ids = pc.utf8_trim_whitespace(batch.column(subject_col))
            batch = batch.filter(pc.is_in(ids, value_set=wanted))
        if batch.num_rows:
            batches.append(batch)
    if not batches:
        return pa.table({name: pa.array([], type=pa.string()) for name in mapping.values()})
    table = pa.Table.from_batches(batches)
    # a semicolon file writes 61,5 for 61.5 (core.io.delimited): events_frame reads its values so
    return table.replace_schema_metadata({b"delimiter": text_format[0].encode()})


def _csv_batches(reader: Iterable[pa.RecordBatch], name: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise InputError("PATH", name, f"has a malformed row ({_first_line(err)})",
                         "fix the CSV so every row has the header's number of fields") from None


def timeline_batches(path: Path) -> tuple[Iterator[pa.RecordBatch], dict[str, str], bool]:
    """A parquet or CSV timeline's MEDS columns in record batches (a large file is never held whole: as a frame, 45.8 M
    events took 13 GB), the file's column for each, and whether values are written with decimal commas."""
    fmt = _format(path)
    mapping = map_columns(_source_columns(path, fmt), path.name)
    if fmt == "parquet":
        return iter(_parquet_dataset(path).to_batches(columns=list(mapping.values()))), mapping, False
    text_format = _text_format(path, path.name)
    return _csv_batches(_csv_reader(path, mapping, text_format=text_format), path.name), mapping, text_format[0] == ";"


def events_frame(table: pa.Table, mapping: dict[str, str], path: Path,
              whole: Callable[[], pa.ChunkedArray] | None = None) -> pd.DataFrame:
    cols = {target: table.column(source) for target, source in mapping.items()}
    out = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
    out["subject_id"] = subject_text(cols["subject_id"])
    out["time"] = to_datetime(cols["time"], path, whole)
    out["code"] = cols["code"].to_pandas()
    unreadable: list[str] = []
    if "numeric_value" in cols:
        out["numeric_value"], unreadable = numeric_values(cols["numeric_value"], (table.schema.metadata or {}).get(b"delimiter") == b";")
    else:
        out["numeric_value"] = np.nan
    null_code = out["code"].isna()
    dropped = int(null_code.sum())
    if dropped:
        out = out[~null_code]
    out["code"] = out["code"].astype(str)
    out = out.sort_values(["subject_id", "time"], kind="stable", na_position="first").reset_index(drop=True)
    out.attrs["dropped_null_code"] = dropped
    out.attrs["unreadable_values"] = len(unreadable)
    out.attrs["unreadable_examples"] = list(dict.fromkeys(v[:24] for v in unreadable))[:3]
    out.attrs["source"] = path.name
    out.attrs["utc_offsets"] = has_offsets(cols["time"])  # read in UTC (core.cohort_notes: against a local index_time)
    out.attrs["columns"] = dict(mapping)  # the file's column for each MEDS column (summarize_file)
    return out


def unreadable_values_note(events: pd.DataFrame) -> str | None:
    """One line on the values of a ``read_timeline`` frame that are not numbers (they are read as no value), or None.

    >>> ev = pd.DataFrame({"code": ["A"]}); ev.attrs.update(unreadable_values=3, unreadable_examples=["<0.5", "neg"])
    >>> unreadable_values_note(ev)
    "3 values of numeric_value are not numbers (e.g. '<0.5', 'neg') and are read as no value: write a value reported beyond a limit as a number, and put a result given as text into the code (e.g. LAB//culture//positive)"
    """
    n = int(events.attrs.get("unreadable_values", 0) or 0)
    if not n:
        return None
    shown = events.attrs.get("unreadable_examples", [])
    examples = ", ".join(repr(v) for v in shown)
    fix = ("write numbers with a decimal point (a semicolon-separated CSV is read with decimal commas)"
           if any(DECIMAL_COMMA.match(str(v)) for v in shown) else
           "write a value reported beyond a limit as a number, and put a result given as text into the code (e.g. LAB//culture//positive)")
    return (f"{n} value{'s' if n > 1 else ''} of numeric_value {'are' if n > 1 else 'is'} not "
            f"{'numbers' if n > 1 else 'a number'}" + (f" (e.g. {examples})" if examples else "")
            + " and " + ("are" if n > 1 else "is") + f" read as no value: {fix}")


def read_timeline(path: str | Path, subjects: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a MEDS timeline (parquet, CSV or .xlsx), optionally only some subjects (filter pushed down)."""
    p = check_path(path)
    fmt = _format(p)
    if fmt == "xlsx":  # held in memory whole, as an upload
        return read_timeline_bytes(p.read_bytes(), p.name, subjects)
    mapping = map_columns(_source_columns(p, fmt), p.name)
    wanted = None if subjects is None else [str(s) for s in subjects]
    table = _read_parquet(p, mapping, wanted) if fmt == "parquet" else _read_csv(p, mapping, wanted)
    times = {"subject_id": mapping["subject_id"], "time": mapping["time"]}

    def whole() -> pa.ChunkedArray:  # the day / month order of numeric dates is the whole file's
        full = _read_parquet(p, times, None) if fmt == "parquet" else _read_csv(p, times, None)
        return full.column(mapping["time"])

    frame = events_frame(table, mapping, p, None if wanted is None else whole)
    if wanted is not None and _numeric(table.column(mapping["subject_id"]).type):  # a parquet id column of numbers
        _ids_as_asked(frame, wanted)
    return frame


def _numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def _ids_as_asked(frame: pd.DataFrame, wanted: list[str]) -> None:
    """A numeric id column matched ``wanted`` by value ("008" reads subject 8): its rows get the id as asked, so they
    match cohort.csv's (an id asked for as written, "8", keeps its own rows).

    >>> f = pd.DataFrame({"subject_id": ["8", "9", "10"]})
    >>> _ids_as_asked(f, ["008", "9", "010", "10"]); f["subject_id"].tolist()
    ['008', '9', '10']
    """
    asked = set(wanted)
    back: dict[str, str] = {}
    for s in wanted:
        try:
            key = str(int(s))
        except ValueError:
            continue
        if key != s and key not in asked:
            back.setdefault(key, s)
    if back:
        frame["subject_id"] = frame["subject_id"].map(lambda v: back.get(v, v)).to_numpy()


MAX_TIMELINE_BYTES = 1024**3  # one uploaded timeline held in memory
MAX_UPLOAD_EVENTS = 5_000_000  # about 1.4 GB as a frame (the 45.8 M events of 5,000 ICU patients took 13 GB)


def read_timeline_bytes(data: bytes, name: str, subjects: Iterable[str] | None = None) -> pd.DataFrame:
    """Read an uploaded MEDS timeline held in memory (parquet, plain CSV or an .xlsx workbook): the same frame as
    :func:`read_timeline`, with nothing written to disk. ``name`` is a label only (its suffix picks CSV, a workbook
    or parquet when the bytes do not start with parquet's ``PAR1``).

    >>> read_timeline_bytes(b"subject_id,time,code\\n7,2020-01-01,DX//A\\n", "t.csv")["code"].tolist()
    ['DX//A']
    """
    label = Path(str(name).replace("\\", "/")).name or "timeline"
    if not data:
        raise InputError("timeline", label, "is an empty file", "upload a MEDS timeline with a header and rows")
    if len(data) > MAX_TIMELINE_BYTES:
        raise InputError("timeline", label, f"is {len(data)} bytes (limit {MAX_TIMELINE_BYTES})",
                         "upload the rows of the subjects you need only")
    lower = label.lower()
    if bytes(data[:4]) == b"PAR1" or lower.endswith(PARQUET_SUFFIXES):
        fmt = "parquet"
    elif lower.endswith((".csv", ".tsv", ".txt")):
        fmt = "csv"
    elif is_workbook(data, label):
        fmt = "xlsx"
    else:
        raise InputError("timeline", label, "is neither parquet, plain CSV nor an .xlsx workbook",
                         "upload a MEDS timeline as .parquet, an uncompressed .csv or .xlsx")
    wanted = None if subjects is None else [str(s).strip() for s in subjects]
    tag = Path(label)
    if fmt == "xlsx":
        whole, mapping = _workbook(data, label)
        table = whole
        if wanted is not None:  # one subject's text dates read with the whole sheet's day / month order
            ids = pc.utf8_trim_whitespace(whole.column(mapping["subject_id"]))
            table = whole.filter(pc.fill_null(pc.is_in(ids, value_set=pa.array(wanted, type=pa.string())), False))
        return events_frame(table, mapping, tag, lambda: whole.column(mapping["time"]))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pfile = pq.ParquetFile(pa.BufferReader(data))
            mapping = map_columns(pfile.schema_arrow.names, label)
            _check_events(pfile.metadata.num_rows, label)
            table = pfile.read(columns=list(mapping.values()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise InputError("timeline", label, f"is not a readable parquet file ({_first_line(err)})",
                             "upload a MEDS timeline written as parquet, or a CSV named .csv") from None
        if wanted is not None:
            ids = pc.utf8_trim_whitespace(pc.cast(table.column(mapping["subject_id"]), pa.string()))
            table = table.filter(pc.is_in(ids, value_set=pa.array(wanted, type=pa.string())))
    else:
        mapping = map_columns(_csv_reader(pa.BufferReader(data), label=label).schema.names, label)
        table = _read_csv(pa.BufferReader(data), mapping, wanted, label=label)
    _check_events(table.num_rows, label)
    return events_frame(table, mapping, tag)


def _check_events(n: int, label: str) -> None:
    if n > MAX_UPLOAD_EVENTS:
        raise InputError("timeline", label, f"holds {n} events (limit {MAX_UPLOAD_EVENTS} for one upload)",
                         "upload the rows of the patients you need, or build a cohort of the whole file with "
                         "python -m core cohort")


OUTCOME_CODES: tuple[str, ...] = ("MEDS_DEATH",)  # outcomes, never model inputs, whatever their time


def default_index_time(events: pd.DataFrame | None, study_date: str | None = None) -> tuple[pd.Timestamp | None, str]:
    """The index (scan) time of an uploaded case and where it came from, in words.

    The study's DICOM StudyDate (``YYYYMMDD``) when there is one; else the last timeline event before the
    first outcome event (death), so the outcome cannot become an input; else None ("set the scan date").

    >>> ev = pd.DataFrame({"time": pd.to_datetime(["2020-01-01", "2020-03-01", "2020-06-01"]),
    ...                    "code": ["DX//A", "LAB//B", "MEDS_DEATH"]})
    >>> default_index_time(ev, "20200215")[0], default_index_time(ev)[0]
    (Timestamp('2020-02-15 23:59:59'), Timestamp('2020-03-01 00:00:00'))
    """
    day = parse_study_date(study_date)
    if day is not None:
        return day + pd.Timedelta(hours=23, minutes=59, seconds=59), "the study's DICOM StudyDate"
    if events is None or events.empty:
        return None, "no study date and no timeline"
    timed = events[events["time"].notna()]
    outcome = timed[timed["code"].isin(OUTCOME_CODES)]
    if len(outcome):
        timed = timed[timed["time"] < outcome["time"].min()]
    if timed.empty:
        return None, "no event before the outcome"
    return pd.Timestamp(timed["time"].max()), "the last timeline event before any outcome (no study date)"


def events_before(events: pd.DataFrame, index_time: pd.Timestamp | str) -> pd.DataFrame:
    """Events at or before ``index_time`` (static NaT-time events kept), outcome codes (death) left out: what a
    model may see."""
    missing = [c for c in ("time",) if c not in events.columns]
    if missing:
        raise InputError("events", list(events.columns), "has no time column", "pass a frame from read_timeline")
    t = pd.Timestamp(index_time)
    if pd.isna(t):
        raise InputError("index_time", index_time, "is not a date/time", "pass the scan datetime, e.g. 2019-05-02 10:30")
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    keep = ((events["time"] <= t) | events["time"].isna()) & ~events["code"].isin(OUTCOME_CODES)
    return events.loc[keep]


def index_overlap_note(events: pd.DataFrame, index_time: pd.Timestamp) -> str | None:
    """One line when none of a subject's dated events (outcomes aside) lies at or before ``index_time``: the
    timeline and the index date are then likely on two calendars (a study date next to a timeline exported or
    de-identified apart), and the model would read no timeline; None otherwise.

    >>> ev = pd.DataFrame({"time": pd.to_datetime(["2150-01-01", "2151-06-01"]), "code": ["MEDS_BIRTH", "LAB//X"]})
    >>> index_overlap_note(ev, pd.Timestamp("2017-02-20 23:59:59"))[:60]
    'None of the 2 dated events lies at or before the index date '
    >>> index_overlap_note(ev, pd.Timestamp("2151-07-01")) is None
    True
    """
    dated = events[events["time"].notna() & ~events["code"].astype(str).isin(OUTCOME_CODES)]
    if dated.empty or bool((dated["time"] <= pd.Timestamp(index_time)).any()):
        return None
    first, last = dated["time"].min(), dated["time"].max()
    return (f"None of the {len(dated)} dated events lies at or before the index date {pd.Timestamp(index_time):%Y-%m-%d} "
            f"(they run from {first:%Y-%m-%d} to {last:%Y-%m-%d}), so the model reads no timeline and no age for "
            "this case: are the index date and the timeline on one calendar? Set the index date to the scan's date "
            "as the timeline dates it.")


def subject_ids(path: Path) -> pa.Array:
    """The distinct subject ids of a timeline file (read batch by batch)."""
    if _format(path) == "xlsx":  # a workbook is read whole anyway
        return pa.array(read_timeline(path)["subject_id"].unique())
    batches, mapping, _ = timeline_batches(path)
    ids = [pc.unique(b.column(mapping["subject_id"])) for b in batches]
    return pc.unique(pa.chunked_array(ids or [pa.array([], pa.string())]))
