"""The day a CT study was taken, from one DICOM header read up to its dates, and how it stands to an index time.

A model reads a CT as the patient's state at the time it predicts from (a cohort's ``index_time``, an uploaded
case's index date). A CT taken after that time shows the patient later (its findings can give the outcome away); one
taken long before may no longer show the patient's state there. :func:`study_date` reads the date of a study on
disk without decoding it (the first DICOM file of a folder, a zip or a single file, read up to its date elements:
at most ``HEAD_BYTES`` bytes of it; the StudyDate, else the SeriesDate or AcquisitionDate), and
:func:`zip_study_dates` those a cohort zip holds, without extracting them; :func:`days_before` compares it with an
index time by calendar day.

A NIfTI file records no date; a de-identified DICOM study has an empty one (or a shifted one, which is compared as
it stands).

>>> days_before("20230115", pd.Timestamp("2023-01-01 23:59:59")), days_before("20221230", "2023-01-01")
(-14, 2)
>>> days_before("", "2023-01-01") is None, days_before("2023-01-15", "2023-01-01") is None
(True, True)
>>> days_before("20230101", pd.Timestamp("2023-01-01 23:30", tz="America/New_York"))  # its own clock's day
0
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import pandas as pd

MAX_SCAN_AGE_DAYS = 90  # a CT older than this at the index time is named (scan_date_note, core.cohort_notes)
HEAD_BYTES = 1 << 16  # of one DICOM file: the StudyDate (0008,0020) lies near its start
MAX_TRIED = 16  # files of a folder or zip tried before a study is taken to record no date (hidden notes, DICOMDIR)
NESTED_BYTES = 64 << 20  # a compressed zip inside a zip: read whole (for its central directory) up to this size
DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate")  # (0008,0020)-(0008,0022), in this order
_LAST_DATE = 0x00080022
_HEAD = 544
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error,
              ValueError)


def parse_study_date(value: str | None) -> pd.Timestamp | None:
    """A DICOM DA value (``YYYYMMDD``) as a day, or None when it is empty or not such a date.

    >>> parse_study_date("20240229"), parse_study_date("20240230"), parse_study_date(" ")
    (Timestamp('2024-02-29 00:00:00'), None, None)
    """
    text = (value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    day = pd.to_datetime(text, format="%Y%m%d", errors="coerce")
    return None if pd.isna(day) else pd.Timestamp(day)


def days_before(study_date: str | None, index_time: Any) -> int | None:
    """Whole days from the CT's day to the index time's day: negative when the CT was taken after it; None when
    either is missing."""
    scan = parse_study_date(study_date)
    if scan is None or index_time is None or pd.isna(index_time):
        return None
    return int((_wall_day(index_time) - scan).days)


def _wall_day(when: Any) -> pd.Timestamp:
    """The calendar day of a time as its own clock shows it (a StudyDate is the scanner's local day)."""
    stamp = pd.Timestamp(when)
    return (stamp.tz_localize(None) if stamp.tzinfo is not None else stamp).normalize()


def day_of(ds: Any) -> str:
    """A DICOM dataset's day (``YYYYMMDD``): its StudyDate, else its SeriesDate, else its AcquisitionDate (an export
    that leaves the study's date empty may keep the others); "" when none is recorded."""
    for keyword in DATE_KEYWORDS:
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value
    return ""


def _date_in(head: bytes) -> str | None:
    """The day (:func:`day_of`) of a DICOM file's first bytes, "" when it records none, None when the bytes are no
    DICOM file (or cannot be read as one)."""
    from core.io.dicom_source import looks_like_dicom

    if not looks_like_dicom(head):
        return None
    from core.io.pydicom_import import pydicom  # pydicom without its downloader

    try:
        ds = pydicom.filereader.read_partial(io.BytesIO(head), stop_when=lambda tag, vr, length: tag > _LAST_DATE,
                                             force=True)
        return day_of(ds)
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError,
            struct.error, zlib.error):
        return None


def _first_date(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> str:
    """The date of the first of ``infos`` (members of ``zf``, at most ``MAX_TRIED`` tried in name order) that is a
    DICOM file ("" when it records none: the study's other files are of the same study); each read only up to
    ``HEAD_BYTES`` (never inflated whole); encrypted members, folders, hidden files and DICOMDIR skipped."""
    from core.io.dicom_source import SKIP_NAMES  # as a folder's files are skipped

    def skipped(info: zipfile.ZipInfo) -> bool:
        base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
        return info.is_dir() or bool(info.flag_bits & 0x1) or base.startswith(".") or base in SKIP_NAMES

    files = sorted((i for i in infos if not skipped(i)), key=lambda i: i.filename)
    for info in files[:MAX_TRIED]:
        with zf.open(info) as fh:
            date = _date_in(fh.read(HEAD_BYTES))
        if date is not None:
            return date
    return ""


def _from_zip(source: Path | IO[bytes]) -> str:
    """The date of the first DICOM member of a zip (a path or a seekable file)."""
    try:
        with zipfile.ZipFile(source) as zf:
            return _first_date(zf, zf.infolist())
    except ZIP_ERRORS:
        return ""


def zip_study_dates(zf: zipfile.ZipFile, studies: Mapping[str, str]) -> dict[str, str]:
    """The day of each study that a zip holds (``studies``: key -> member name: a DICOM file, a zip of one series,
    or a folder of DICOM files, the members under ``name/``), read without extracting anything; "" as
    :func:`study_date` gives it (a NIfTI file, no date, unreadable, not in the zip). A zip member that is itself a
    zip is read in place when stored, and when compressed only up to ``NESTED_BYTES``."""
    files: dict[str, zipfile.ZipInfo] = {}
    under: dict[str, list[zipfile.ZipInfo]] = {}  # folder -> the files below it (one pass over the zip)
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        files[name] = info
        parts = name.split("/")
        for k in range(1, len(parts)):
            under.setdefault("/".join(parts[:k]), []).append(info)
    out = {}
    for key, study in studies.items():
        name = study.replace("\\", "/").strip("/")
        info = files.get(name)
        try:
            out[key] = (_first_date(zf, under.get(name, [])) if info is None else _member_date(zf, info)) if name else ""
        except ZIP_ERRORS:
            out[key] = ""
    return out


def _member_date(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """The date of one zip member: a DICOM file, or a zip of one (read in place when stored)."""
    from core.io.safezip import is_zip

    if info.is_dir() or info.flag_bits & 0x1:
        return ""
    with zf.open(info) as fh:
        head = fh.read(_HEAD)
    if not is_zip(head):
        return _first_date(zf, [info])
    if info.compress_type == zipfile.ZIP_STORED:
        with zf.open(info) as fh:  # seekable: its central directory is read in place
            return _from_zip(fh)
    if info.file_size > NESTED_BYTES:
        return ""
    with zf.open(info) as fh:
        return _from_zip(io.BytesIO(fh.read()))


def _from_file(path: Path) -> str | None:
    with open(path, "rb") as fh:
        return _date_in(fh.read(HEAD_BYTES))


def study_date(path: str | Path) -> str:
    """The day (``YYYYMMDD``, :func:`day_of`: StudyDate, else SeriesDate or AcquisitionDate) of the study at
    ``path`` (a DICOM file, a folder of them, a zip of either: its first DICOM file, after at most ``MAX_TRIED``
    files that are none), or "" for a NIfTI file, a study that records none and one that cannot be read (its loader
    names why)."""
    from core.errors import InputError
    from core.io.dicom_source import looks_like_dicom
    from core.io.safezip import is_zip

    path = Path(path)
    try:
        if path.is_dir():
            from core.io.dicom_source import sources_from_folder

            for src in sources_from_folder(path)[:MAX_TRIED]:
                assert src.path is not None
                date = _from_file(src.path)
                if date is not None:  # the first DICOM file: the study's other files are of the same study
                    return date
            return ""
        with open(path, "rb") as fh:
            head = fh.read(_HEAD)
        if is_zip(head):
            return _from_zip(path)
        return (_from_file(path) or "") if looks_like_dicom(head) else ""  # a NIfTI file (gzip or not): no date
    except (OSError, InputError):  # gone, unreadable, a folder of too many files: its loader names why
        return ""


def scan_date_note(study_date: str | None, index_time: Any, max_age_days: int = MAX_SCAN_AGE_DAYS) -> str | None:
    """One line when the CT's DICOM StudyDate (``YYYYMMDD``) and the case's index date disagree: a scan taken after
    the index date shows the patient after it (the risk would read what came later), and one more than
    ``max_age_days`` older than it may no longer show the patient's state there (models pair each scan with its own
    date as the index). None when they agree, or without a study date (a NIfTI; a de-identified DICOM's empty one).
A de-identified upload's date is shifted, its timeline with it: the pages compare it only for an upload kept as it is.

    >>> scan_date_note("20230115", pd.Timestamp("2023-01-01 23:59:59"))[:74]
    'The index date 2023-01-01 is 14 days before the CT was taken (2023-01-15):'
    >>> scan_date_note("20230115", pd.Timestamp("2023-03-01")) is None, scan_date_note("", pd.Timestamp("2023-03-01"))
    (True, None)
    >>> scan_date_note("20210110", pd.Timestamp("2023-01-01"))[:58]
    'The CT was taken 721 days before the index date 2023-01-01'
    """
    days = days_before(study_date, index_time)
    if days is None:
        return None
    scan, index_day = parse_study_date(study_date), _wall_day(index_time)
    if days < 0:
        return (f"The index date {index_day:%Y-%m-%d} is {-days} day{'s' if days != -1 else ''} before the CT was taken "
                f"({scan:%Y-%m-%d}): the CT shows the patient after the index date, so the risk reads what came later. "
                "Set the index date to the scan's date or later.")
    if days > max_age_days:
        return (f"The CT was taken {days} days before the index date {index_day:%Y-%m-%d} ({scan:%Y-%m-%d}): the "
                "model reads it as the patient's state at the index date, and a scan this old may no longer show it. "
                "Use a recent scan, or set the index date to the scan's date.")
    return None
