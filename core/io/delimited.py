"""Delimited text tables as hospitals export them: comma, semicolon, tab or pipe separated.

Spreadsheet programs in locales that write a decimal comma (most of Europe) save "CSV" with semicolons
between fields and ``61,5`` for 61.5; database exports often use tabs or pipes. The separator is told
from the header line (the candidate that occurs most often in it outside quotes), and a semicolon file
reads ``61,5`` as 61.5. Used for cohort.csv, features.csv (also uploaded) and MEDS timeline CSVs.

>>> sniff_delimiter(b"subject_id;age;sex_female\\nP1;61,5;1\\n")
';'
>>> read_csv_any(io.BytesIO(b"subject_id;age\\nP1;61,5\\n"))["age"].tolist()
[61.5]
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import IO, Any

import pandas as pd

DELIMITERS = (",", ";", "\t", "|")
HEAD_BYTES = 64 << 10  # the header line is looked for in this many bytes
DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")  # 61,5 in a semicolon file: a decimal comma


def sniff_delimiter(head: bytes, default: str = ",") -> str:
    """The separator of a table whose first bytes are ``head``: the candidate found most often in its header line
    outside double quotes (``default`` when none is)."""
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="ignore").lstrip("\ufeff")
    unquoted = re.sub(r'"[^"]*"', "", first)
    counts = {d: unquoted.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == default))
    return best if counts[best] else default


def _head(source: Path | str | IO[bytes]) -> bytes:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            return fh.read(HEAD_BYTES)
    pos = source.tell()
    head = source.read(HEAD_BYTES)
    source.seek(pos)
    return head if isinstance(head, bytes) else str(head).encode()


def read_csv_any(source: Path | str | IO[bytes], **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with the separator told from the header (a ``.tsv`` name: tab by default) and, in a
    semicolon file, the decimal comma read as a decimal point."""
    default = "\t" if str(getattr(source, "name", source)).lower().endswith((".tsv", ".tsv.gz")) else ","
    sep = sniff_delimiter(_head(source), default)
    return pd.read_csv(source, sep=sep, decimal="," if sep == ";" else ".", **kwargs)


def decimal_commas(values: pd.Series) -> pd.Series:
    """Text values written with a decimal comma (``61,5``) as ``61.5``; anything else unchanged."""
    text = values.astype("string")
    hit = text.str.match(DECIMAL_COMMA.pattern).fillna(False).astype(bool)
    return values.where(~hit, text.str.replace(",", ".", regex=False))
