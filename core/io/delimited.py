"""Delimited text tables as hospitals export them: comma, semicolon, tab or pipe separated, UTF-8 or not.

Spreadsheet programs in locales that write a decimal comma (most of Europe) save "CSV" with semicolons
between fields and ``61,5`` for 61.5, in the Windows code page (cp1252: "Übelkeit" is not UTF-8), or as
"Unicode text" (UTF-16 with a byte-order mark, tab separated); database exports often use tabs or pipes.
The separator is told from the header line (the candidate that occurs most often in it outside quotes), a
semicolon file reads ``61,5`` as 61.5, and the encoding is UTF-16 by its byte-order mark, else UTF-8 when
every byte decodes as UTF-8, else cp1252 (:func:`text_encoding`). Used for cohort.csv, features.csv (also
uploaded) and MEDS timeline CSVs.

>>> import io
>>> sniff_delimiter(b"subject_id;age;sex_female\\nP1;61,5;1\\n")
';'
>>> read_csv_any(io.BytesIO(b"subject_id;age\\nP1;61,5\\n"))["age"].tolist()
[61.5]
"""

from __future__ import annotations

import codecs
import gzip
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.io.columns import column_key

DELIMITERS = (",", ";", "\t", "|")
HEAD_BYTES = 64 << 10  # the header line is looked for in this many bytes
DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")  # 61,5 in a semicolon file: a decimal comma
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
CHUNK_BYTES = 8 << 20


def sniff_delimiter(head: bytes, default: str = ",", encoding: str = "utf-8") -> str:
    """The separator of a table whose first bytes are ``head``: the candidate found most often in its header line
    outside double quotes (``default`` when none is)."""
    first = head.decode(encoding, errors="ignore").lstrip("\ufeff").split("\n", 1)[0]
    unquoted = re.sub(r'"[^"]*"', "", first)
    counts = {d: unquoted.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == default))
    return best if counts[best] else default


def _head(source: Path | str | IO[bytes]) -> bytes:
    if isinstance(source, (str, Path)):
        return next(file_chunks(source), b"")[:HEAD_BYTES]  # a .gz file decompressed
    pos = source.tell()
    head = source.read(HEAD_BYTES)
    source.seek(pos)
    return head if isinstance(head, bytes) else str(head).encode()


def text_encoding(chunks: Iterable[bytes]) -> str:
    r""""utf-16" for text that starts with its byte-order mark, "utf-8" when every byte decodes as UTF-8 (a UTF-8
    byte-order mark included), else "cp1252" (the Windows code page that spreadsheets in Western Europe save).

    >>> text_encoding([b"code\n\xc3\x9cbelkeit"]), text_encoding([b"code\n\xdcbelkeit"]), text_encoding([b"\xff\xfec"])
    ('utf-8', 'cp1252', 'utf-16')
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    first = True
    try:
        for chunk in chunks:
            if first and bytes(chunk[:2]) in UTF16_BOMS:
                return "utf-16"
            first = False
            decoder.decode(chunk)  # bytes or a memoryview of an upload's buffer (not copied)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def file_chunks(path: Path | str) -> Iterator[bytes]:
    """The bytes of a file (a ``.gz`` one decompressed) in chunks, for :func:`text_encoding`."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk


def read_csv_any(source: Path | str | IO[bytes], *, text_names: Iterable[str] = (), **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with the separator told from the header (a ``.tsv`` name: tab by default), the encoding
    by :func:`text_encoding` and, in a semicolon file, the decimal comma read as a decimal point. Columns named as one
    of ``text_names`` (in any case, spaces or punctuation: "Patient ID" for patient_id) are read as text, so an id
    such as 007 stays 007.

    >>> import io
    >>> read_csv_any(io.BytesIO(b"Patient ID;age\\n007;61,5\\n"), text_names=["patient_id"]).to_dict("list")
    {'Patient ID': ['007'], 'age': [61.5]}
    """
    default = "\t" if str(getattr(source, "name", source)).lower().endswith((".tsv", ".tsv.gz")) else ","
    if isinstance(source, (str, Path)):
        encoding = text_encoding(file_chunks(source))
    else:
        pos = source.tell()
        encoding = text_encoding(iter(lambda: source.read(CHUNK_BYTES), b""))
        source.seek(pos)
    sep = sniff_delimiter(_head(source), default, encoding)
    keys = {column_key(n) for n in text_names}
    if keys:
        start = None if isinstance(source, (str, Path)) else source.tell()
        header = pd.read_csv(source, sep=sep, encoding=encoding, nrows=0).columns
        if start is not None:
            source.seek(start)
        kwargs["dtype"] = {**{c: str for c in header if column_key(c) in keys}, **(kwargs.get("dtype") or {})}
    return pd.read_csv(source, sep=sep, decimal="," if sep == ";" else ".", encoding=encoding, **kwargs)



def decimal_commas(values: pd.Series) -> pd.Series:
    """Text values written with a decimal comma (``61,5``) as ``61.5``; anything else unchanged."""
    text = values.astype("string")
    hit = text.str.match(DECIMAL_COMMA.pattern).fillna(False).astype(bool)
    return values.where(~hit, text.str.replace(",", ".", regex=False))


def subject_text(col: pa.ChunkedArray) -> np.ndarray:
    """Subject ids as trimmed text (integer ids stored as floats, because of an empty cell, without their ``.0``)."""
    sid = col.to_pandas()
    if pd.api.types.is_float_dtype(sid):
        sid = sid.map(lambda v: "" if pd.isna(v) else (str(int(v)) if float(v).is_integer() else str(v)))
    return sid.astype(str).str.strip().to_numpy()


def numeric_values(col: pa.ChunkedArray | pa.Array, commas: bool) -> tuple[np.ndarray, list[str]]:
    """``numeric_value`` as float64 (``commas``: decimal commas, as a semicolon file writes them) and the texts that
    are no number."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.to_pandas().astype("float64").to_numpy(), []
    raw = col.to_pandas()
    raw = decimal_commas(raw) if commas else raw
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    text = raw.astype("string").str.strip()  # text such as "<0.5" or "positive": no value, counted
    return values.to_numpy(), text[values.isna() & text.notna() & (text != "")].tolist()
