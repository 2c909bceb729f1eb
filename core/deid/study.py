"""De-identify a whole DICOM study (file, folder or zip) into a folder or an in-memory zip.

Every instance goes through one ``StudyCleaner`` (one UID map, one date
offset), is written under a generated name (``IM00001.dcm`` ...), and is then
verified: its header bytes are searched for every identifying string of the
original; an element still holding one is removed, and anything left over
(for example text inside pixel data) is reported.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core.deid.clean import NAME_TEXT_VRS, StudyCleaner, leaf_elements
from core.deid.report import PIXEL_RISK_TEXT, DeidReport
from core.errors import InputError
from core.io.safezip import is_zip, read_zip
from core.phi.detect import (
    PIXEL_TAGS,
    element_values,
    find_phi,
    identifying_values,
    person_names,
)

MAX_FILE_BYTES = 2 * 1024**3
Progress = Callable[[float, str], None]


def _parse(data: bytes, label: str = "file") -> tuple[Dataset | None, str]:
    """A fully parsed instance, or None and the reason it is skipped.

    A deflated instance is inflated with bounds first: a decompression bomb
    raises ``InputError`` (the whole study is refused, nothing is written).
    """
    if not data:
        return None, "empty file"
    from core.io.dicom import undeflate_dicom

    data = undeflate_dicom(data, label)
    try:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)  # no preamble: accepted only if it reads as an instance
            if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                return None, "not DICOM"
        for _ in ds.iterall():  # convert every element now, so a broken file fails here
            pass
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on garbage; the reason is reported
        return None, f"not readable as DICOM ({type(err).__name__})"
    if "SOPClassUID" not in ds and not any(t in ds for t in PIXEL_TAGS):
        return None, "not an image instance (e.g. DICOMDIR)"
    short = _truncated(ds)
    return (None, short) if short else (ds, "")


def _truncated(ds: Dataset) -> str:
    """A reason when an image instance lost its pixel data (a truncated file), else ""."""
    sop_class = UID(str(ds.get("SOPClassUID", "") or ""))
    if not ("Rows" in ds and "Columns" in ds) and "Image Storage" not in sop_class.name:
        return ""
    if not any(t in ds for t in PIXEL_TAGS):
        return "truncated (image without pixel data)"
    if "PixelData" not in ds or ds.file_meta.get("TransferSyntaxUID") is None or ds.file_meta.TransferSyntaxUID.is_compressed:
        return ""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * frames * int(ds.BitsAllocated)
    except (TypeError, ValueError, AttributeError):
        return "unreadable image header (Rows, Columns, BitsAllocated)"
    if len(ds.PixelData) * 8 < expected:
        return "truncated (pixel data shorter than Rows x Columns x frames)"
    return ""


def _serialize(ds: Dataset) -> bytes:
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        encoding = getattr(ds, "original_encoding", None) or (False, True)
        implicit = bool(encoding[0])
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.preamble = b"\x00" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _encodings(text: str) -> set[bytes]:
    return {text.encode(enc, errors="ignore") for enc in ("latin-1", "utf-8")} - {b""}


def _header_bytes(ds: Dataset) -> bytes:
    """The serialized dataset without pixel data (what verification searches)."""
    held = {tag: ds[tag] for tag in PIXEL_TAGS if tag in ds}
    for tag in held:
        del ds[tag]
    try:
        return _serialize(ds)
    finally:
        for tag, elem in held.items():
            ds[tag] = elem


NAME_PART_MIN_BYTES = 3  # name parts searched in the written bytes (shorter ones would match by chance)


class Needles:
    """What a cleaned instance must not contain, matched case-insensitively.

    ``values``: the original identifying strings (IDs, addresses, UIDs,
    free text, ...) as lower-case bytes, found as substrings; ``names``: every
    part of every person name of the original (``DOE^JOHN`` gives DOE and JOHN),
    found as whole words in any order and any case ("John Doe", "doe, john").
    """

    def __init__(self, originals: set[str], names: set[str]) -> None:
        self.values = {enc.lower() for text in originals for enc in _encodings(text)}
        parts = sorted({n.lower() for n in names if len(n) >= NAME_PART_MIN_BYTES}, key=lambda p: (-len(p), p))
        self.text = re.compile(r"(?<![a-z0-9])(?:" + "|".join(re.escape(p) for p in parts) + r")(?![a-z0-9])", re.I) if parts else None
        self.bytes = (
            re.compile(rb"(?<![a-z0-9])(?:" + b"|".join(re.escape(p.encode("latin-1", "ignore")) for p in parts) + rb")(?![a-z0-9])")
            if parts
            else None
        )

    def __bool__(self) -> bool:
        return bool(self.values) or self.text is not None

    def in_bytes(self, data: bytes) -> bool:
        low = data.lower()
        return any(v in low for v in self.values) or (self.bytes is not None and self.bytes.search(low) is not None)

    def in_element(self, raw: bytes, vr: str) -> bool:
        low = raw.lower()
        latin = raw.decode("utf-8", errors="ignore").encode("latin-1", errors="ignore").lower()
        if any(v in low or v in latin for v in self.values):
            return True
        if self.text is None or vr not in NAME_TEXT_VRS | {"PN"}:
            return False
        return self.text.search(raw.decode("utf-8", errors="ignore")) is not None


# Numbers and UIDs never hold a name; a short ID could match inside one by chance (a position, a
# spacing) and removing it would break the image, so these VRs are left to the residual report.
_KEEP_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "AT", "UV", "SV", "UI"})


def _remove_containing(ds: Dataset, needles: Needles) -> int:
    """Remove every non-pixel element whose value contains an original identifying string or name; return how many."""
    removed = 0
    for owner, tag, elem in leaf_elements(ds):
        if elem.VR in _KEEP_VRS:
            continue
        value = elem.value
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raw = "\\".join(str(v) for v in element_values(elem)).encode("utf-8", errors="ignore")
        if needles.in_element(raw, elem.VR):
            del owner[tag]
            removed += 1
    return removed


def _verified_bytes(ds: Dataset, needles: Needles, report: DeidReport) -> bytes:
    """Serialize ``ds``; remove elements that still hold an original identifying string or name part.

    The check runs on the bytes that are written (all but the pixel data),
    case-insensitively; whatever cannot be removed is reported in ``residual``.
    """
    if needles:
        header = _header_bytes(ds)
        if needles.in_bytes(header):
            report.leaks_removed += _remove_containing(ds, needles)
            if needles.in_bytes(_header_bytes(ds)):
                report.residual.append("identifying text remains in a file header after cleaning")
    data = _serialize(ds)
    long_values = {v for v in needles.values if len(v) >= 6}
    low = data.lower() if long_values else b""
    if long_values and any(v in low for v in long_values) and not any("pixel data" in r for r in report.residual):
        report.residual.append("an original identifying string occurs inside pixel data bytes (burned-in or by chance): review the images")
    return data


def _iter_path(src: Path) -> Iterator[tuple[int, bytes | str]]:
    """(total, data) per input file; a str instead of bytes is a skip reason."""
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        for path in files:
            size = path.stat().st_size
            yield len(files), (path.read_bytes() if size <= MAX_FILE_BYTES else f"larger than {MAX_FILE_BYTES} bytes")
        return
    with open(src, "rb") as handle:
        head = handle.read(4)
    if is_zip(head):
        members = read_zip(src)
        for member in members:
            yield len(members), member.data
        return
    if src.stat().st_size > MAX_FILE_BYTES:
        raise InputError("IN", str(src), f"is larger than {MAX_FILE_BYTES} bytes", "give one DICOM instance, a folder or a zip")
    yield 1, src.read_bytes()


def _iter_bytes(data: bytes) -> Iterator[tuple[int, bytes | str]]:
    if is_zip(data[:4]):
        members = read_zip(data)
        for member in members:
            yield len(members), member.data
    else:
        yield 1, data


def _is_nifti(data: bytes, label: str) -> bool:
    """True for NIfTI bytes (plain, or gzip whose first bytes are a NIfTI header)."""
    from core.io.nifti import GZIP_MAGIC, nifti_header_kind, nifti_prefix

    if data[:2] == GZIP_MAGIC:
        return bool(nifti_header_kind(nifti_prefix(data, label, max_bytes=544)[:540]))
    return bool(nifti_header_kind(data[:540]))


_UID_TEXT = re.compile(r"^[0-9.]+$")


def _study_identity(sources: Iterator[tuple[int, bytes | str]]) -> tuple[set[str], set[str]]:
    """(identifying values, person-name parts) over every instance of the study (UIDs left out).

    A first pass over the study, so that a name or an ID spelled in one
    instance is also removed from the free text of another instance that does
    not carry it in its own attributes (one series with inconsistent headers).
    """
    from core.io.dicom import gate_fingerprint, looks_like_dicom, undeflate_dicom

    values: set[str] = set()
    names: set[str] = set()
    seen: set[bytes] = set()
    for done, (_total, data) in enumerate(sources, start=1):
        if isinstance(data, str) or not looks_like_dicom(data[:132]):
            continue  # NIfTI, text, garbage: nothing to learn here (the main pass reports it)
        data = undeflate_dicom(data, f"input file {done}")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            key = gate_fingerprint(ds)  # the slices of a series differ only in numbers and UIDs: read one
            if key in seen:
                continue
            seen.add(key)
            values.update(v for v in identifying_values(ds) if not _UID_TEXT.match(v))
            names.update(person_names(ds))
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, NotImplementedError):
            continue  # an unreadable file is skipped and reported by the main pass
    return values, names


def _run(
    sources: Iterator[tuple[int, bytes | str]],
    sink: Callable[[str, bytes], None],
    cleaner: StudyCleaner,
    progress: Progress | None,
    study: tuple[set[str], set[str]] = (set(), set()),
) -> DeidReport:
    report = DeidReport(dates=cleaner.dates)
    study_values, study_names = study
    skipped: Counter[str] = Counter()
    risks: Counter[str] = Counter()
    series: set[str] = set()
    done = 0
    for total, data in sources:
        done += 1
        if progress is not None:
            progress(done / max(total, 1), f"de-identifying file {done} of {total}")
        if isinstance(data, str):
            skipped[data] += 1
            continue
        if _is_nifti(data, f"input file {done}"):
            from core.deid.nifti import deidentify_nifti_bytes

            clean, cleared = deidentify_nifti_bytes(data, f"input file {done}")
            name = f"VOL{report.n_instances + 1:05d}.nii" + (".gz" if data[:2] == b"\x1f\x8b" else "")
            sink(name, clean)
            for field_name in cleared:
                cleaner.changes[(field_name, "Z")] += 1
            report.n_instances += 1
            report.n_nifti += 1
            report.files_written.append(name)
            series.add(f"nifti:{name}")
            continue
        ds, reason = _parse(data, f"input file {done}")
        del data
        if ds is None:
            skipped[reason] += 1
            continue
        needles = Needles(identifying_values(ds) | study_values, person_names(ds) | study_names)
        for finding in find_phi(ds):
            if finding.kind == "pixel_risk":
                risks[finding.keyword] += 1
        cleaner.clean(ds, study_names=study_names)
        name = f"IM{report.n_instances + 1:05d}.dcm"
        sink(name, _verified_bytes(ds, needles, report))
        report.n_instances += 1
        report.files_written.append(name)
        series.add(str(ds.get("SeriesInstanceUID", "") or ""))
    report.n_series = len(series)
    report.skipped = dict(sorted(skipped.items()))
    report.pseudonyms = cleaner.pseudonym_values()
    counts: Counter[str] = Counter()
    for (_, action), n in cleaner.changes.items():
        counts[action] += n
    report.action_counts = dict(sorted(counts.items()))
    report.changes = sorted(cleaner.changes)
    report.pixel_risk = [f"{n} of {report.n_instances} instance(s) {PIXEL_RISK_TEXT[k]}" for k, n in sorted(risks.items())]
    report.pixels_checked = cleaner.pixels_checked
    return report


def _no_instances(label: str, value: str, report: DeidReport) -> InputError:
    why = "; ".join(f"{n} file(s) {reason}" for reason, n in report.skipped.items()) or "no files"
    return InputError(label, value, f"holds no readable DICOM instance ({why})", "give a DICOM file, a folder of DICOM files or a zip of them")


def _check_paths(src: Path, dst: Path) -> tuple[Path, Path]:
    if not src.exists():
        raise InputError("IN", str(src), "does not exist", "give a DICOM file, a folder of DICOM files or a zip")
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise InputError("OUT", str(dst), "is the input itself", "write the de-identified copy to a new folder")
    if s.is_dir() and s in d.parents:
        raise InputError("OUT", str(dst), f"is inside the input folder {src}", "write the de-identified copy outside the input")
    if d.exists() and not d.is_dir():
        raise InputError("OUT", str(dst), "is a file, not a folder", "give a new or empty folder")
    if d.is_dir() and any(d.iterdir()):
        raise InputError("OUT", str(dst), "is not empty", "give a new or empty folder (nothing is overwritten)")
    return s, d


def deidentify_study(
    src: str | Path,
    dst: str | Path,
    *,
    dates: str = "shift",
    shift_days: int | None = None,
    seed: int | None = None,
    pseudonym: str | None = None,
    progress: Progress | None = None,
    pixels_checked: bool = False,
) -> DeidReport:
    """Write a de-identified copy of the study ``src`` (DICOM file, folder or zip) into folder ``dst``.

    PS3.15 basic profile: identifying attributes removed or emptied, PatientName
    and PatientID replaced by a pseudonym (``pseudonym`` or a random one), UIDs
    replaced consistently across the study, private tags, overlays and curves
    removed, dates shifted by one offset per study (``dates="shift"``, offset
    ``shift_days`` or random), removed or kept; pixel data bit-identical.
    ``dst`` must be new or empty and not inside ``src``. ``pixels_checked``: the user has looked at every image and
    found no identifying text burned into the pixels; the copy then declares the Clean Pixel Data Option (113101),
    so the PHI gate no longer holds it back for a burned-in text risk (a secondary capture, ImageType
    DERIVED\\SECONDARY, BurnedInAnnotation YES). Nothing checks the pixels for the user.
    """
    cleaner = StudyCleaner(dates=dates, shift_days=shift_days, seed=seed, pseudonym=pseudonym,
                           pixels_checked=pixels_checked)
    s, d = _check_paths(Path(src), Path(dst))
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []

    def write(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        written.append(d / name)

    try:
        report = _run(_iter_path(s), write, cleaner, progress, _study_identity(_iter_path(s)))
    except InputError:
        for path in written:  # a refused study (e.g. a decompression bomb) leaves nothing behind
            path.unlink(missing_ok=True)
        if created:
            d.rmdir()
        raise
    if report.n_instances == 0:
        if created:
            d.rmdir()
        raise _no_instances("IN", str(src), report)
    return report


def deidentify_bytes(
    data: bytes,
    name: str,
    *,
    dates: str = "shift",
    shift_days: int | None = None,
    seed: int | None = None,
    pseudonym: str | None = None,
    progress: Progress | None = None,
) -> tuple[bytes, DeidReport]:
    """De-identify an uploaded study (a zip or one DICOM file) in memory; return a zip of the cleaned files.

    ``name`` is the upload's file name, used only to word errors (never stored).
    """
    cleaner = StudyCleaner(dates=dates, shift_days=shift_days, seed=seed, pseudonym=pseudonym)
    if not data:
        raise InputError("upload", Path(name).suffix or "(no suffix)", "is an empty file", "upload a DICOM file or a zip of a DICOM series")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        report = _run(_iter_bytes(data), archive.writestr, cleaner, progress, _study_identity(_iter_bytes(data)))
    if report.n_instances == 0:
        raise _no_instances("upload", Path(name).suffix or "(no suffix)", report)
    return buf.getvalue(), report
