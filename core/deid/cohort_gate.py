"""The PHI gate for a cohort uploaded for training: every study of ``cohort.csv``, checked like an upload.

``gate_cohort(folder)`` reads the ``study`` column of ``<folder>/cohort.csv``
and checks each study (a DICOM file, folder or zip, or a NIfTI file) without
decoding its pixels: every DICOM instance and element
(:func:`core.io.dicom.scan_headers`: nested sequences, private elements,
elements after PixelData), NIfTI header text and extensions, and burned-in
text risk. It returns one :class:`CohortRowFinding` per row that names a study;
a row is blocked when its study still carries PHI, shows burned-in risk, or
cannot be checked (a path that leaves the cohort folder, a missing or
unreadable file, a decompression bomb).

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = (pathlib.Path(tmp) / "cohort.csv").write_text("subject_id,time,event,study\\n1,10,1,../outside.nii\\n")
...     report = gate_cohort(tmp)
>>> [(r.line, r.subject_id, r.error) for r in report.rows]
[(2, '1', 'study path leaves the cohort folder')]
>>> report.ok
False
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

from core.errors import InputError

Progress = Callable[[float, str], None]
MAX_STUDY_BYTES = 2 * 1024**3
MAX_CSV_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class StudyGate:
    """What the gate saw in one study."""

    format: str  # dicom | nifti
    phi: list[str]
    burned_in: list[str]
    n_instances: int


#: what to do about a blocked study (identifying attributes, a burned-in text risk)
FIX = ("de-identify each blocked study (python -m core deid STUDY OUT) and point cohort.csv at the copy; a burned-in "
       "text risk stays until you have looked at every image: then add --pixels-checked to deid")


@dataclass(frozen=True)
class CohortRowFinding:
    """The gate's answer for one row of cohort.csv that names a study."""

    line: int  # line of cohort.csv (the header is line 1)
    subject_id: str
    study: str  # the path as written in cohort.csv
    phi: list[str] = field(default_factory=list)
    burned_in: list[str] = field(default_factory=list)
    error: str = ""  # why the study could not be checked ("" when it was)

    @property
    def blocked(self) -> bool:
        return bool(self.phi or self.burned_in or self.error)

    def line_text(self) -> str:
        """One line for the user (no PHI: keywords and reasons only)."""
        head = f"cohort.csv line {self.line} (subject {self.subject_id}, study {self.study})"
        if self.error:
            return f"{head}: not checked: {self.error}"
        parts = []
        if self.phi:
            parts.append("PHI in " + ", ".join(self.phi))
        if self.burned_in:
            parts.append("burned-in text risk: " + "; ".join(self.burned_in))
        return f"{head}: " + ("; ".join(parts) if parts else "clean")


@dataclass
class CohortGateReport:
    folder: str
    rows: list[CohortRowFinding]
    n_rows: int  # data rows in cohort.csv (with or without a study)

    @property
    def blocked_rows(self) -> list[CohortRowFinding]:
        return [r for r in self.rows if r.blocked]

    @property
    def ok(self) -> bool:
        return not self.blocked_rows

    def to_dict(self) -> dict[str, object]:
        return {
            "folder": self.folder,
            "n_rows": self.n_rows,
            "n_studies": len(self.rows),
            "ok": self.ok,
            "rows": [{**asdict(r), "blocked": r.blocked} for r in self.rows],
        }

    def lines(self) -> list[str]:
        out = [f"{len(self.rows)} studies checked in {self.n_rows} rows: {len(self.blocked_rows)} blocked"]
        out += [r.line_text() for r in self.blocked_rows]
        return out + ([f"fix: {FIX}"] if any(r.phi or r.burned_in for r in self.blocked_rows) else [])


def _inside(root: Path, text: str) -> Path | None:
    """The study path resolved inside ``root``, or None when it is absolute or leaves the folder."""
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        return None
    path = (root / text).resolve()
    if path != root and root not in path.parents:
        return None
    return path


def _dicom_gate(sources: list) -> StudyGate:
    from core.io.dicom import scan_headers

    scan = scan_headers(sources)
    if scan.n_dicom == 0:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(scan.skipped.items()))
        raise InputError("study", sources[0].name if sources else "(none)", f"holds no readable DICOM file ({reasons})", "point the study column at a DICOM series, a zip of one or a NIfTI file")
    return StudyGate("dicom", scan.phi, scan.burned_in, scan.n_dicom)


def _nifti_gate(data: bytes, name: str) -> StudyGate:
    from core.io.nifti import nifti_header_kind, nifti_header_phi, nifti_prefix

    head = nifti_prefix(data, name)
    if not nifti_header_kind(head[:540]):
        raise InputError("NIfTI file", name, "has no NIfTI-1/2 header", "point the study column at a .nii/.nii.gz file or a DICOM series")
    return StudyGate("nifti", nifti_header_phi(head), [], 1)


def gate_members(members: list) -> StudyGate:
    """Gate a study given as in-memory files (``core.io.safezip.ZipMember``: NIfTI files and/or DICOM instances)."""
    from core.io.dicom import DicomSource
    from core.io.nifti import GZIP_MAGIC, nifti_header_kind
    from core.io.safezip import is_zip, read_zip

    if len(members) == 1 and is_zip(members[0].data[:4]):
        members = read_zip(members[0].data)
    if not members:
        raise InputError("study", "(none)", "holds no file", "put the study's DICOM files or NIfTI file in it")
    niftis = [m for m in members if m.data[:2] == GZIP_MAGIC or nifti_header_kind(m.data[:540])]
    gates = [_nifti_gate(m.data, m.name) for m in niftis]
    others = [DicomSource(name=m.name, data=m.data) for m in members if m not in niftis]
    if others:
        gates.append(_dicom_gate(others))
    return StudyGate(
        "dicom" if others else "nifti",
        sorted({k for g in gates for k in g.phi}),
        sorted({r for g in gates for r in g.burned_in}),
        sum(g.n_instances for g in gates),
    )


def gate_study(path: str | Path) -> StudyGate:
    """Gate one study (DICOM file, folder or zip, or NIfTI) from its headers; pixels are never decoded."""
    from core.io.dicom import DicomSource, sources_from_folder
    from core.io.nifti import GZIP_MAGIC, nifti_header_kind
    from core.io.safezip import is_zip, read_zip

    path = Path(path)
    if path.is_dir():
        sources = sources_from_folder(path)
        if not sources:
            raise InputError("study", str(path), "is an empty folder", "put the study's DICOM files in it")
        return _dicom_gate(sources)
    if not path.is_file():
        raise InputError("study", str(path), "does not exist", "fix the study path in cohort.csv (relative to the cohort folder)")
    size = path.stat().st_size
    if size > MAX_STUDY_BYTES:
        raise InputError("study", str(path), f"is {size} bytes (limit {MAX_STUDY_BYTES})", "use a smaller study")
    with open(path, "rb") as fh:
        head = fh.read(544)
    if is_zip(head):
        return gate_members(read_zip(path))
    if head[:2] == GZIP_MAGIC or nifti_header_kind(head):
        if head[:2] == GZIP_MAGIC:
            return _nifti_gate(path.read_bytes(), path.name)
        with open(path, "rb") as fh:
            return _nifti_gate(fh.read(64 * 1024 * 1024), path.name)
    from core.io.dicom_source import looks_like_dicom

    if not looks_like_dicom(head):  # named as the loader names it ("is a text file, ..."), not "no readable DICOM"
        from core.io.study import describe_head

        raise InputError("study", str(path), describe_head(head), "point the study column at a DICOM series, a zip "
                         "of one or a NIfTI file")
    return _dicom_gate([DicomSource(name=path.name, path=path)])


def _read_records(data: bytes) -> list[tuple[int, dict[str, str]]]:
    """cohort.csv's rows as the cohort reads them (``core.io.delimited``: any of , ; tab |, UTF-8, UTF-16 or cp1252)."""
    import pandas as pd

    from core.io.columns import COHORT_ALIASES, rename_aliases
    from core.io.delimited import HEAD_BYTES, sniff_delimiter, text_encoding

    encoding = text_encoding([data])
    text = data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    reader = csv.DictReader(io.StringIO(text), delimiter=sniff_delimiter(text[:HEAD_BYTES].encode("utf-8")))
    if reader.fieldnames:  # "Patient ID", "Study" read as the cohort reads them (core.io.columns)
        named = rename_aliases(pd.DataFrame(columns=[c.strip() for c in reader.fieldnames]), COHORT_ALIASES)
        reader.fieldnames = [str(c) for c in named.columns]
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "subject_id" not in columns:
        raise InputError("cohort.csv", ", ".join(columns) or "(no header)", "has no subject_id column", "add a subject_id column")
    return [(reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}) for row in reader]


def _gate_rows(records: list[tuple[int, dict[str, str]]], gate: Callable[[str], StudyGate | None], where: str,
               progress: Progress | None) -> CohortGateReport:
    """One finding per row naming a study; ``gate(study)`` is None when the path leaves the cohort folder."""
    wanted = [(line, rec) for line, rec in records if rec.get("study", "")]
    rows: list[CohortRowFinding] = []
    cache: dict[str, StudyGate | str | None] = {}
    for index, (line, rec) in enumerate(wanted):
        study = rec["study"]
        subject = rec.get("subject_id", "")
        if progress is not None:
            progress(index / max(len(wanted), 1), f"checking study {index + 1} of {len(wanted)}")
        if study not in cache:
            try:
                cache[study] = gate(study)
            except InputError as err:
                cache[study] = f"{err.problem} ({err.field})"
        found = cache[study]
        if found is None:
            rows.append(CohortRowFinding(line, subject, study, error="study path leaves the cohort folder"))
        elif isinstance(found, str):
            rows.append(CohortRowFinding(line, subject, study, error=found))
        else:
            rows.append(CohortRowFinding(line, subject, study, phi=list(found.phi), burned_in=list(found.burned_in)))
    if progress is not None:
        progress(1.0, "cohort checked")
    return CohortGateReport(folder=where, rows=rows, n_rows=len(records))


def gate_cohort(folder: str | Path, *, progress: Progress | None = None) -> CohortGateReport:
    """Check every study of the cohort in ``folder``; one finding per row of cohort.csv that names a study."""
    root = Path(folder).resolve()
    table = root / "cohort.csv"
    if not root.is_dir():  # the words load_cohort uses
        raise InputError("cohort", str(folder), "is not a folder", "pass a cohort folder that holds cohort.csv")
    if not table.is_file():
        raise InputError("cohort", str(folder), "has no cohort.csv", "add cohort.csv (subject_id, time, event[, study])")
    if table.stat().st_size > MAX_CSV_BYTES:
        raise InputError("cohort.csv", str(table), f"is larger than {MAX_CSV_BYTES} bytes", "split the cohort")

    def gate(study: str) -> StudyGate | None:
        path = _inside(root, study)
        return None if path is None else gate_study(path)

    return _gate_rows(_read_records(table.read_bytes()), gate, str(folder), progress)


def gate_cohort_zip(data: bytes, *, progress: Progress | None = None) -> CohortGateReport:
    """:func:`gate_cohort` for a zipped cohort folder read in memory (nothing is written).

    The zip holds one ``cohort.csv``; its ``study`` paths are relative to that file's folder and name a
    file (DICOM, NIfTI or a zip of a series) or a folder of DICOM files inside the archive.
    """
    from core.io.safezip import member_path, read_zip

    members = read_zip(data)
    csvs = [m for m in members if PurePosixPath(m.name.replace("\\", "/")).name == "cohort.csv"]
    if len(csvs) != 1:
        raise InputError("cohort zip", f"{len(csvs)} cohort.csv files", "must hold exactly one cohort.csv",
                         "zip one cohort folder with cohort.csv at its top")
    if len(csvs[0].data) > MAX_CSV_BYTES:
        raise InputError("cohort.csv", csvs[0].name, f"is larger than {MAX_CSV_BYTES} bytes", "split the cohort")
    top = PurePosixPath(csvs[0].name.replace("\\", "/")).parent
    by_name = {PurePosixPath(m.name.replace("\\", "/")): m for m in members}

    def gate(study: str) -> StudyGate | None:
        name = member_path(str(top), study)
        if name is None:
            return None
        target = PurePosixPath(name)
        if target in by_name:
            return gate_members([by_name[target]])
        inside = [m for name, m in by_name.items() if target in name.parents]
        if not inside:
            raise InputError("study", study, "is not in the zip", "fix the study path in cohort.csv (relative to it)")
        return gate_members(inside)

    return _gate_rows(_read_records(csvs[0].data), gate, "(zip)", progress)
