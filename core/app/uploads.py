"""Uploads checked in memory before anything is written: size caps, bomb caps, the PHI gate, then the case.

The upload page hands the browser's bytes here and nothing touches the disk until the study has passed:

* :func:`study_payload` packs several uploaded files into an in-memory zip (one file is kept as it is); the
  size cap is the server's upload limit (``server.maxUploadSize``) and ``MAX_STUDY_BYTES`` in all;
* :func:`check_study` loads it from memory (``core.io.study.load_study_bytes``: zip members via
  ``core.io.safezip``, DICOM from bytes with the deflate and pixel caps, NIfTI from bytes) and reads the
  PHI gate's findings (every instance, every element, NIfTI header text, burned-in risk);
* :meth:`CheckedStudy.findings` splits them into *identifying* attributes (block the study; values never
  shown) and *clinical* ones (patient sex, age, size, weight: not identifying on their own, kept, values
  shown; an age of 90 or more is identifying, as in HIPAA's safe harbour);
* :func:`deidentify` cleans the bytes in memory (``core.deid.deidentify_bytes``) and checks them again;
* :func:`save_checked_case` writes the case (``core.app.cases.save_case``) only when nothing identifying is
  left and any burned-in risk was acknowledged; otherwise it raises and the user's folder stays as it was.

>>> from core.app.uploads import clinical_value
>>> clinical_value("PatientAge", "095Y"), clinical_value("PatientWeight", "72.5")
('90 or older', '72.5 kg')
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import pandas as pd

from core.app.cases import CaseInfo, save_case
from core.errors import InputError
from core.io.volume import Volume

MAX_STUDY_BYTES = 2 * 1024**3  # one study in all, however many files
MAX_STUDY_FILES = 5000
# Patient characteristics (PS3.15's "Retain Patient Characteristics" option): clinical, not identifying alone
CLINICAL = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
_UNITS = {"PatientSize": "m", "PatientWeight": "kg"}
HIDDEN = "hidden (identifying)"
_AGE_UNITS = {"D": "days", "W": "weeks", "M": "months", "Y": "years"}


@dataclass(frozen=True)
class Finding:
    """One attribute the gate flagged, for the upload page's table."""

    attribute: str
    group: str  # "identifying" (blocks until de-identified) | "clinical, kept"
    value: str  # the value for clinical attributes, else HIDDEN


@dataclass(frozen=True)
class CheckedStudy:
    """An uploaded study held in memory with what the gate found; never written until :meth:`bytes_to_store`."""

    data: bytes
    name: str  # a label for messages ("original.dcm", "6 files"), never a path
    n_files: int
    volume: Volume
    clinical: dict[str, str]  # keyword -> shown value, for the clinical attributes present
    deidentified: bool = False
    deid_summary: str = ""
    series: str | None = None
    load_name: str = "study.zip"  # what the loader and the stored file are called: the base name of one file, else a zip
    date_shift_days: int = 0  # de-identified here: the offset its dates moved by (held in memory only, never stored)
    # the clinical attributes as uploaded, before any de-identification here removed them (the basic profile empties
    # PatientSex and drops PatientAge): offered as the case's clinical values (:func:`header_demographics`); held in
    # memory only, so a value is stored only when the user saves it as a clinical value
    header_clinical: dict[str, str] = field(default_factory=dict)

    def findings(self) -> list[Finding]:
        rows = []
        for key in self.volume.phi:
            if key in self.clinical and self.clinical[key] != HIDDEN:
                rows.append(Finding(key, "clinical, kept", self.clinical[key]))
            else:
                rows.append(Finding(key, "identifying", HIDDEN))
        return rows

    @property
    def identifying(self) -> list[str]:
        return [f.attribute for f in self.findings() if f.group == "identifying"]

    @property
    def blocked(self) -> bool:
        """True while identifying attributes remain (burned-in risk is asked separately)."""
        return bool(self.identifying)

    def bytes_to_store(self, *, burned_in_acknowledged: bool = False) -> bytes:
        """The bytes that may be written: refused while identifying attributes or unacknowledged burned-in
        risk remain."""
        if self.identifying:
            raise InputError("study", f"{len(self.identifying)} identifying attributes",
                             f"still carries {', '.join(self.identifying[:4])}" + (" ..." if len(self.identifying) > 4 else ""),
                             "choose 'De-identify and continue' first (nothing was saved)")
        if self.volume.burned_in and not burned_in_acknowledged:
            raise InputError("study", "burned-in text risk", "; ".join(self.volume.burned_in),
                             "look at the images and confirm they show no names or IDs (nothing was saved)")
        return self.data


def upload_label(names: list[str]) -> str:
    """What to call an upload in messages: the file's own base name, or "N files" (never an invented name)."""
    if len(names) == 1:
        return PurePosixPath(str(names[0]).replace("\\", "/")).name or "upload"
    return f"{len(names)} files"


def study_payload(files: list[tuple[str, bytes]], *, max_bytes: int = MAX_STUDY_BYTES) -> tuple[bytes, str]:
    """One uploaded file as it is, or several packed into an in-memory zip; capped in count and size."""
    if not files:
        raise InputError("upload", "no files", "is empty", "choose a DICOM file, a zip or a NIfTI file")
    if len(files) > MAX_STUDY_FILES:
        raise InputError("upload", f"{len(files)} files", f"has more than {MAX_STUDY_FILES} files",
                         "zip the series, or upload one series at a time")
    total = sum(len(data) for _, data in files)
    label = upload_label([name for name, _ in files])
    if total > max_bytes:
        raise InputError("upload", label, f"is {total} bytes in all (limit {max_bytes})", "upload one series at a time")
    if len(files) == 1:
        return bytes(files[0][1]), label
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, (name, data) in enumerate(files):
            base = PurePosixPath(str(name).replace("\\", "/")).name or "file"
            zf.writestr(f"{i:05d}_{base}", data)  # entry names are labels only, never paths
    return buf.getvalue(), label


def clinical_value(keyword: str, raw: object) -> str:
    """How a clinical attribute is shown; an age of 90 years or more is shown only as "90 or older"."""
    text = str(raw).strip()
    if keyword == "PatientAge" and len(text) == 4 and text[:3].isdigit():
        years = int(text[:3]) if text[3].upper() == "Y" else 0
        unit = _AGE_UNITS.get(text[3].upper(), "")
        return "90 or older" if years >= 90 else f"{int(text[:3])} {unit}".strip()
    if keyword in _UNITS and text:
        return f"{text} {_UNITS[keyword]}"
    return text or "(empty)"


def _first_dicom(data: bytes, name: str) -> bytes | None:
    from core.io.dicom_source import looks_like_dicom
    from core.io.safezip import is_zip, read_zip

    if is_zip(data[:4]):
        for member in read_zip(data, label=name):
            if looks_like_dicom(member.data[:544]):
                return member.data
        return None
    return data if looks_like_dicom(data[:544]) else None


def read_clinical(data: bytes, name: str, volume: Volume) -> dict[str, str]:
    """Shown values of the clinical attributes the gate flagged (first DICOM instance; deflate capped).

    An age of 90 or more counts as identifying (HIPAA safe harbour): it is marked ``HIDDEN``.
    """
    wanted = [k for k in CLINICAL if k in volume.phi]
    if not wanted or volume.format != "dicom":
        return {}
    from core.io import pydicom_import  # noqa: F401  (pydicom without its downloader)
    from core.io.dicom_source import undeflate_dicom

    raw = _first_dicom(data, name)
    if raw is None:
        return {}
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(undeflate_dicom(raw, name)), stop_before_pixels=True, force=True,
                             specific_tags=wanted)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return {}
    out = {}
    for key in wanted:
        value = ds.get(key, None)
        shown = clinical_value(key, "" if value is None else value)
        out[key] = HIDDEN if shown == "90 or older" else shown
    return out


def check_study(files: list[tuple[str, bytes]], *, max_bytes: int = MAX_STUDY_BYTES,
                series: str | None = None) -> CheckedStudy:
    """Load an upload from memory and run the gate on it (nothing is written anywhere)."""
    from core.io.study import load_study_bytes

    data, label = study_payload(files, max_bytes=max_bytes)
    load_name = label if len(files) == 1 else "study.zip"
    volume = load_study_bytes(data, load_name, series)
    clinical = read_clinical(data, load_name, volume)
    return CheckedStudy(data=data, name=label, n_files=len(files), volume=volume, clinical=clinical, series=series,
                        load_name=load_name, header_clinical=dict(clinical))


def with_series(checked: CheckedStudy, series: str) -> CheckedStudy:
    """The same upload with another of its series loaded (still in memory)."""
    from core.io.study import load_study_bytes

    volume = load_study_bytes(checked.data, checked.load_name, series)
    clinical = read_clinical(checked.data, checked.load_name, volume)
    # a de-identified upload no longer holds the header's values: the ones read before de-identification stay
    return replace(checked, volume=volume, series=series, clinical=clinical,
                   header_clinical=dict(checked.header_clinical if checked.deidentified else clinical))


_AGE_YEARS = {"years": 1.0, "months": 1 / 12, "weeks": 7 / 365.25, "days": 1 / 365.25}


def header_demographics(clinical: Mapping[str, str], names: Sequence[str]) -> dict[str, float]:
    """The columns of ``names`` that a study's DICOM header gives (``CheckedStudy.header_clinical``, as
    :func:`clinical_value` shows them): age in years from PatientAge (none when hidden: 90 or older), and sex as the
    1 / 0 columns of PatientSex F / M (``core.io.features.category_indicators``; O or blank gives none).

    >>> header_demographics({"PatientAge": "63 years", "PatientSex": "F"}, ["age", "sex_female", "bnp"])
    {'age': 63.0, 'sex_female': 1.0}
    >>> header_demographics({"PatientAge": "18 months", "PatientSex": "O"}, ["age_years", "sex_male"])
    {'age_years': 1.5}
    >>> header_demographics({"PatientAge": HIDDEN}, ["age"])
    {}
    """
    from core.io.columns import column_key
    from core.io.features import AGE_KEYS, category_indicators

    out: dict[str, float] = {}
    age = next((n for n in names if column_key(n) in AGE_KEYS), None)
    parts = str(clinical.get("PatientAge", "")).split()
    if age is not None and len(parts) == 2 and parts[0].isdigit() and parts[1] in _AGE_YEARS:
        out[age] = round(int(parts[0]) * _AGE_YEARS[parts[1]], 2)
    sex = str(clinical.get("PatientSex", "")).strip()
    if sex.upper() in ("F", "M"):
        found, _ = category_indicators(pd.DataFrame({"sex": [sex], "gender": [sex]}), ["sex", "gender"],
                                       [n for n in names if n not in out])
        out.update({n: float(v) for n, v in found.iloc[0].items() if pd.notna(v)})
    return out


def deidentify(checked: CheckedStudy) -> CheckedStudy:
    """De-identify in memory (DICOM PS3.15 basic profile, NIfTI header text cleared) and gate the result again."""
    from core.deid import deidentify_bytes
    from core.io.study import load_study_bytes

    import secrets

    from core.deid.clean import SHIFT_RANGE_DAYS

    lo, hi = SHIFT_RANGE_DAYS
    shift = -(lo + secrets.randbelow(hi - lo + 1))  # chosen here so a timeline of the same upload can follow it
    clean, report = deidentify_bytes(checked.data, checked.load_name, shift_days=shift)
    volume = load_study_bytes(clean, "study.zip", checked.series)
    return replace(checked, data=clean, volume=volume, deidentified=True, deid_summary=report.summary(),
                   clinical=read_clinical(clean, "study.zip", volume), load_name="study.zip", date_shift_days=shift)


def shift_events(events: pd.DataFrame, days: int) -> pd.DataFrame:
    """A timeline moved by ``days`` (the offset de-identification gave the study uploaded with it), so that the
    study date and the events stay on one calendar; the offset itself is never stored."""
    if not days:
        return events
    return events.assign(time=events["time"] + pd.Timedelta(days=int(days)))


def save_checked_case(user: str, checked: CheckedStudy | None, *, events: pd.DataFrame | None = None,
                      index_time: object = None, burned_in_acknowledged: bool = False, contrast: str = "",
                      features: Mapping[str, object] | None = None, base: Path | None = None) -> CaseInfo:
    """Write a new case from a gated study and/or events (and any clinical values); refused (nothing written) while
    the gate blocks. ``contrast``: "yes" / "no" as the user stated it for a study whose file records none
    (``core.io.contrast``)."""
    study = None if checked is None else checked.bytes_to_store(burned_in_acknowledged=burned_in_acknowledged)
    return save_case(user, study=study, study_name="" if checked is None else checked.load_name, series=None if checked is None else checked.series,
                     deidentified=bool(checked and checked.deidentified), events=events, index_time=index_time,
                     contrast=contrast, features=features, base=base)


MAX_FEATURES_BYTES = 50 * 1024**2  # an uploaded features table


def read_features_bytes(data: bytes, name: str, names: Sequence[str] = ()) -> pd.DataFrame:
    """An uploaded features table (a cohort's features.csv: ``subject_id`` + numeric columns; CSV, the first sheet of
    an .xlsx workbook (``core.io.workbook``) or parquet) read in memory, indexed by subject id
    (``core.io.features.features_table``). A text column that holds one of the model columns ``names`` as categories
    (sex F / M for sex_female: ``core.io.features.category_indicators``) is read as that column
    (``attrs["categories"]``: {model column: text column}); other text columns (a comment) are left out and named in
    ``attrs["text_columns"]``.

    >>> read_features_bytes(b"subject_id,age,sex_female\\nP1,61.5,1\\n", "f.csv").loc["P1"].to_dict()
    {'age': 61.5, 'sex_female': 1.0}
    >>> t = read_features_bytes(b"subject_id,age,sex\\nP1,61.5,F\\n", "f.csv", names=["age", "sex_female"])
    >>> t.loc["P1"].to_dict(), t.attrs["categories"]
    ({'age': 61.5, 'sex_female': 1.0}, {'sex_female': 'sex'})
    """
    from core.io.columns import FEATURE_ALIASES, SUBJECT_ALIASES, rename_aliases
    from core.io.delimited import read_csv_any
    from core.io.features import category_indicators, features_table, text_columns
    from core.io.workbook import dates_as_text, is_workbook, read_workbook

    label = upload_label([name])
    if not data:
        raise InputError("features table", label, "is an empty file", "upload a CSV with subject_id and value columns")
    if len(data) > MAX_FEATURES_BYTES:
        raise InputError("features table", label, f"is {len(data)} bytes (limit {MAX_FEATURES_BYTES})",
                         "upload the rows of the subjects you need only")
    parquet = bytes(data[:4]) == b"PAR1"
    if is_workbook(data, label):
        frame = read_workbook(data, label, "features table")
    elif not parquet and not label.lower().endswith((".csv", ".txt")):
        raise InputError("features table", label, "is neither CSV, an .xlsx workbook nor parquet",
                         "save the sheet as CSV (a spreadsheet's \"Save as\" CSV: any separator, UTF-8 or the Windows "
                         "code page) or .xlsx, with subject_id and one column per value")
    else:
        try:
            frame = (dates_as_text(pd.read_parquet(io.BytesIO(data))) if parquet
                     else read_csv_any(io.BytesIO(data), text_names=SUBJECT_ALIASES))
        except (ValueError, UnicodeDecodeError, OSError) as exc:  # pandas' parser errors are ValueErrors
            raise InputError("features table", label, f"cannot be read ({type(exc).__name__})",
                             "save it as a plain CSV with a header row") from None
    frame = rename_aliases(frame, FEATURE_ALIASES, "features table")  # Patient ID
    if "subject_id" not in frame:
        raise InputError("features table", label + (f" (sheet {frame.attrs['sheet']})" if "sheet" in frame.attrs else ""),
                         f"has no subject_id column (columns: {', '.join(map(str, frame.columns[:6])) or 'none'})",
                         "name the column of subject ids subject_id, as the timeline's")
    # a row without an id (a total, a note below the table) cannot be chosen
    frame = frame[frame["subject_id"].notna() & (frame["subject_id"].astype(str).str.strip() != "")]
    # text columns (a name, a comment, sex as F / M) are not read as they are: no model reads text
    values = frame.drop(columns=["subject_id"], errors="ignore").apply(pd.to_numeric, errors="coerce")
    text = text_columns(frame.drop(columns=["subject_id"]), values)
    indicators, used = category_indicators(frame, text, names)
    table = features_table(pd.concat([frame.drop(columns=text), indicators], axis=1), source="features table")
    if table.empty:
        raise InputError("features table", label, "has no rows", "add a row per subject")
    table.attrs["text_columns"] = [str(c) for c in text if str(c) not in used.values()]
    table.attrs["categories"] = used
    table.attrs["sheet"], table.attrs["other_sheets"] = frame.attrs.get("sheet", ""), frame.attrs.get("other_sheets", 0)
    return table
