"""Excel workbooks (.xlsx) as hospitals keep small tables: a sheet of clinical values per patient.

An uploaded workbook is untrusted: it is a zip of XML parts, so it is checked as a zip upload is (entry count,
total and per-entry size, compression ratio) and refused when any part declares a DOCTYPE (XML entity expansion)
before it is parsed (calamine, else openpyxl), in memory. The first sheet with rows and a subject id header (subject_id, Patient ID, ...) is read (a cover sheet is
skipped), its first row as the header; cells
keep their type (numbers stay numbers: no decimal comma to guess). A legacy .xls workbook (or a password-protected
.xlsx, which is stored the same way) is refused with the fix: save it as .xlsx or CSV.

>>> import openpyxl
>>> book = openpyxl.Workbook()
>>> book.active.append(["subject_id", "age"]); book.active.append(["P1", 61.5])
>>> buffer = io.BytesIO(); book.save(buffer)
>>> read_workbook(buffer.getvalue(), "values.xlsx", "features table").to_dict("list")
{'subject_id': ['P1'], 'age': [61.5]}
"""

from __future__ import annotations

import datetime
import io
import zipfile
from collections.abc import Iterable, Sequence

import pandas as pd
import pyarrow as pa

from core.errors import InputError
from core.io.columns import SUBJECT_ALIASES, column_key

XLSX_MAGIC = b"PK\x03\x04"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls, and an encrypted .xlsx
MAX_PARTS = 10_000
MAX_UNPACKED = 512 << 20  # all parts together, uncompressed
MAX_RATIO = 200  # uncompressed / compressed per part (XML of numbers compresses about 10-30x)
SUFFIXES = (".xlsx", ".xlsm")
EXCEL_EPOCH = pd.Timestamp("1899-12-30")  # day 0 of Excel's serial dates (the 1900 system, with its leap-day bug)
FIRST_SERIAL = 3653  # 1910-01-01: a smaller number in a time column is a day count, not a date


def is_workbook(data: bytes, name: str) -> bool:
    """Whether an upload is an Excel workbook (by its suffix, or a legacy .xls by its first bytes)."""
    return str(name).lower().endswith((*SUFFIXES, ".xls")) or bytes(data[:8]) == OLE_MAGIC


def check_workbook(data: bytes, label: str, field: str) -> None:
    """Refuse a workbook that is not an .xlsx zip, or whose parts are too many, too large, too compressed or declare
    a DOCTYPE; nothing is extracted."""
    fix = "save the sheet as .xlsx (Excel 2007 or later, no password) or as CSV"
    if bytes(data[:8]) == OLE_MAGIC:
        raise InputError(field, label, "is an Excel 97-2003 (.xls) or password-protected workbook", fix)
    if bytes(data[:4]) != XLSX_MAGIC:
        raise InputError(field, label, "is not an .xlsx workbook (no zip header)", fix)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
            if len(parts) > MAX_PARTS:
                raise InputError(field, label, f"has {len(parts)} parts (limit {MAX_PARTS})", fix)
            total = sum(p.file_size for p in parts)
            if total > MAX_UNPACKED:
                raise InputError(field, label, f"unpacks to {total} bytes (limit {MAX_UNPACKED})",
                                 "upload the rows of the subjects you need only")
            for part in parts:
                ratio = part.file_size // max(part.compress_size, 1)
                if ratio > MAX_RATIO and part.file_size > 1 << 20:
                    raise InputError(field, label, f"part {part.filename!r} is compressed {ratio}x (limit {MAX_RATIO}x)",
                                     fix)
                if part.filename.endswith((".xml", ".rels", ".vml")):
                    with archive.open(part) as stream:
                        if b"<!doctype" in stream.read(4096).lower():
                            raise InputError(field, label, f"part {part.filename!r} declares a DOCTYPE", fix)
    except zipfile.BadZipFile:
        raise InputError(field, label, "is not a readable .xlsx workbook (broken zip)", fix) from None


def _engine() -> tuple[str, tuple[type[BaseException], ...]]:
    """pandas' reader of a workbook and the errors it raises on a broken one: calamine (Rust; a 213,000-row
    timeline in 2.3 s against openpyxl's 13 s, the same frame) when installed, else openpyxl."""
    try:
        from python_calamine import CalamineError
    except ImportError:
        return "openpyxl", ()
    return "calamine", (CalamineError,)


def read_workbook(data: bytes, label: str, field: str, columns: Sequence[str] = SUBJECT_ALIASES, *,
                  keep_dates: bool = False) -> pd.DataFrame:
    """The first sheet of an uploaded .xlsx workbook (``check_workbook`` first) with rows and a header named as one of
    ``columns`` (in any case: the subject id's names by default; else the first with rows: a cover or notes sheet
    comes first in many exports), its first row the header; ``attrs["sheet"]`` names it and ``attrs["other_sheets"]``
    counts the sheets with rows not read. Date columns are ISO text (:func:`dates_as_text`) unless ``keep_dates``."""
    check_workbook(data, label, field)
    engine, broken = _engine()
    try:
        sheets = pd.read_excel(io.BytesIO(data), sheet_name=None, engine=engine)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, *broken) as exc:  # a reader's broken-part errors
        raise InputError(field, label, f"cannot be read as a workbook ({type(exc).__name__})",
                         "save the sheet as CSV") from None
    filled = [(name, frame) for name, frame in sheets.items() if not frame.dropna(how="all").empty]
    if not filled:
        raise InputError(field, label, "has no sheet with rows", "put a header row and a row per subject on a sheet")
    keys = {column_key(c) for c in columns}
    name, frame = next(((n, f) for n, f in filled if keys & {column_key(c) for c in f.columns}), filled[0])
    frame = frame.dropna(how="all").dropna(axis=1, how="all")
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame if keep_dates else dates_as_text(frame)
    for col in [c for c in frame.columns if column_key(c) in keys]:  # ids typed as numbers: 7.0 (a blank below) is 7
        ids = frame[col]
        if pd.api.types.is_float_dtype(ids) and (ids.dropna() % 1 == 0).all():
            frame[col] = ids.astype("Int64").astype(str).replace("<NA>", pd.NA)
    frame.attrs["sheet"], frame.attrs["other_sheets"] = str(name), len(filled) - 1
    return frame


def dates_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its date columns (a workbook's or a parquet file's) as ISO text, as a CSV holds them: a date is
    no number (``pd.to_numeric`` would read it as nanoseconds since 1970)."""
    dates = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
    if not dates:
        return frame
    return frame.assign(**{str(c): frame[c].map(lambda v: None if pd.isna(v) else v.isoformat()) for c in dates})


def cell_text(value: object) -> str | None:
    """A workbook cell as the text a CSV would hold: None when blank, a whole number without ``.0`` (an id or a code
    typed as a number), a date or time of day in ISO 8601, text as written (a code's trailing space too).

    >>> cell_text(250.0), cell_text(datetime.datetime(2020, 1, 2, 10, 30)), cell_text("DX//A "), cell_text(float("nan"))
    ('250', '2020-01-02T10:30:00', 'DX//A ', None)
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def serial_dates(values: pd.Series, label: str, column: str) -> pd.Series:
    """A workbook's time column as text: date cells in ISO 8601, numbers as Excel serial dates (days since
    1899-12-30: what Excel stores in a cell not formatted as a date), text as written. InputError for a number
    before 1910 (a count of days from some index, not a date).

    >>> serial_dates(pd.Series([43831.5, "2020-01-03", None], dtype=object), "t.xlsx", "time").tolist()
    ['2020-01-01T12:00:00', '2020-01-03', None]
    """
    def one(value: object) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value):
            if value < FIRST_SERIAL:
                raise InputError(column, cell_text(value), f"is a number in {label}, and as an Excel date it would be "
                                 f"{(EXCEL_EPOCH + pd.Timedelta(days=float(value))).date()}",
                                 "format the column as dates in Excel, or write each time as ISO 8601 text "
                                 "(e.g. 2021-04-03 10:00)")
            return (EXCEL_EPOCH + pd.Timedelta(days=float(value))).round("s").isoformat()
        return cell_text(value)

    return values.astype(object).map(one)


def _as_text(values: pd.Series) -> pa.Array:
    """A column as Arrow text, as :func:`cell_text` writes each cell (whole columns at once where their type allows)."""
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return pa.array(values.astype(object).where(values.notna(), None).tolist(), type=pa.string())
    if pd.api.types.is_integer_dtype(values):
        return pa.array(values.astype(str).tolist(), type=pa.string())
    return pa.array(values.astype(object).map(cell_text).tolist(), type=pa.string())


def sheet_table(frame: pd.DataFrame, label: str, *, times: Iterable[str] = (), numbers: Iterable[str] = ()) -> pa.Table:
    """Columns of a sheet (``read_workbook``) as an Arrow table, as a CSV reader gives them: ``times`` as timestamps
    when every cell is a date, else through :func:`serial_dates`; ``numbers`` kept as floats when every cell is a
    number (else text, so that a value such as "<0.5" can be named); every other column as text (:func:`cell_text`)."""
    times, numbers = set(times), set(numbers)
    arrays = {}
    for col in frame.columns:
        values = frame[col]
        if col in numbers and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            arrays[str(col)] = pa.array(values.astype("float64"), type=pa.float64(), from_pandas=True)
        elif col in times and pd.api.types.is_datetime64_any_dtype(values):
            arrays[str(col)] = pa.array(values.astype("datetime64[ns]"), type=pa.timestamp("ns"), from_pandas=True)
        elif col in times:
            arrays[str(col)] = pa.array(serial_dates(values, label, str(col)).tolist(), type=pa.string())
        else:
            arrays[str(col)] = _as_text(values)
    return pa.table(arrays)
