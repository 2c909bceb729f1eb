"""DICOM series (file, folder or in-memory zip members) -> :class:`~core.io.volume.Volume`.

Two passes over the files, each header parsed once:

1. headers: every file is parsed up to (not including) PixelData with
   ``stop_before_pixels``; the offset of the PixelData element is kept, and the
   elements stored after the pixel data are parsed too. Every file (every
   series, non-image instances included) passes the PHI gate
   (``core.deid.phi_keywords`` and ``burned_in_reasons`` on all its elements;
   files of one series that differ only in numbers, dates and UIDs share one
   answer). A file in the Deflated Explicit VR Little Endian syntax is first
   inflated in bounded steps (``undeflate_dicom``: a decompression bomb is
   refused before pydicom sees it). Files are
   grouped into series by SeriesInstanceUID, or by a fallback key (frame of
   reference, orientation, matrix size, series and acquisition number) when the
   UID is blank. The largest series is taken unless ``series=`` names one.
2. pixels: the size (Rows x Columns x frames x bytes) is checked against a
   memory cap, then the chosen slices are decoded in parallel straight into the
   output array: uncompressed data with ``numpy.frombuffer`` from the PixelData
   offset on threads, compressed transfer syntaxes (RLE, JPEG, JPEG-LS, JPEG
   2000) through pydicom's decoders with the fastest installed plugin
   (pylibjpeg-openjpeg, pyjpegls, pylibjpeg-rle before GDCM). The codecs hold
   the GIL, so a compressed series of some size is decoded by forked copies of
   this process writing into shared memory (Linux, and only while no other
   thread runs; otherwise on threads).

Slices are sorted by the projection of ImagePositionPatient on the slice normal
(the cross product of the ImageOrientationPatient rows), gaps and uneven
spacing become ``Volume.warnings``, RescaleSlope/Intercept are applied per
slice, and the axes are permuted/flipped to the project convention (see
``core/io/volume.py``). Oblique data are snapped to the nearest patient axes
(with a warning), not resampled.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import sys
import threading
import warnings as _warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np


_DOWNLOADER_ONLY = ("requests", "tqdm")  # optional imports of pydicom.data.download, used only to fetch examples


def _import_pydicom_without_downloader() -> None:
    """Import pydicom without its optional test-data downloader's HTTP stack and progress bar.

    ``pydicom.data`` imports ``requests`` (and urllib3, certifi, ...) and
    ``tqdm`` (and importlib.metadata) only to fetch example files, which this
    project never does at run time; skipping them saves ~80 ms of every
    ``inspect``. Both stay importable for anyone else afterwards.
    """
    if "pydicom" in sys.modules:
        return
    blocked = [name for name in _DOWNLOADER_ONLY if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail inside pydicom
    try:
        import pydicom  # noqa: F401
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_import_pydicom_without_downloader()

import pydicom  # noqa: E402
from pydicom.dataelem import RawDataElement  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.errors import InvalidDicomError  # noqa: E402
from pydicom.uid import UID  # noqa: E402

from core.errors import InputError  # noqa: E402
from core.io.inflate import WBITS_RAW, inflate_bounded  # noqa: E402
from core.io.volume import SeriesInfo, Volume  # noqa: E402

MAX_DECODED_BYTES = 3 * 1024**3  # float32 output of one volume (about 800 slices of 1024 x 1024)
MAX_FILES = 20_000
DECODE_WORKERS = min(8, os.cpu_count() or 1)
FORK_DECODE = sys.platform.startswith("linux")  # compressed slices decoded by forked processes where safe (see _fork_workers)
FORK_MIN_PIXELS = 1 << 20  # about 4 slices of 512 x 512 (~80 ms of JPEG 2000 decoding)
MAX_FILE_BYTES = 2 * 1024**3
_NATIVE = {
    "1.2.840.10008.1.2": ("<", False),  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": ("<", True),  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": (">", True),  # Explicit VR Big Endian (retired)
}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
_SEQ_DELIM = b"\xfe\xff\xdd\xe0"
_ITEM = b"\xfe\xff\x00\xe0"
_SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db", "desktop.ini"}
DEFLATED_TS = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
MAX_INFLATE_RATIO = 100.0  # a deflated instance may not inflate to more than 100 x its file (past 8 MiB)
MAX_INFLATED_BYTES = 1024**3
MAX_TRAILING_BYTES = 64 * 1024 * 1024  # elements after PixelData (signatures, padding, private data)
# pydicom warns when a tiny compressed frame happens to be as long as the raw one: not a user problem
_warnings.filterwarnings("ignore", message="The number of bytes of compressed pixel data matches", category=UserWarning)


# ---------------------------------------------------------------- sources


@dataclass
class DicomSource:
    """One file: on disk (``path``) or in memory (``data``), with a display name."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> io.BufferedIOBase:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")  # noqa: SIM115 - caller closes

    def read_from(self, offset: int) -> bytes:
        if self.data is not None:
            return self.data[offset:]
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read()


def sources_from_folder(folder: Path) -> list[DicomSource]:
    """Every regular file below ``folder`` (recursive; hidden files, DICOMDIR and links skipped)."""
    out: list[DicomSource] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name in _SKIP_NAMES:
                continue
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            out.append(DicomSource(name=str(path.relative_to(folder)), path=path))
            if len(out) > MAX_FILES:
                raise InputError("folder", str(folder), f"holds more than {MAX_FILES} files", "point at one study's folder")
    return out


def looks_like_dicom(head: bytes) -> bool:
    """DICM preamble, or a raw dataset that starts with a plausible group-0008 tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3:4] == b"\x00"


# ---------------------------------------------------------------- deflate


MAX_META_BYTES = 1024 * 1024  # a file meta group larger than this is refused


def meta_transfer_syntax(head: bytes, name: str) -> str | None:
    """The TransferSyntaxUID of a Part 10 file's meta group, walked from ``head`` (its first bytes).

    None when ``head`` has no DICM preamble, or ends before the element (the
    caller then reads more). The meta group is always explicit VR little
    endian. A meta group of more than ``MAX_META_BYTES`` raises ``InputError``.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head) and head[pos : pos + 2] == b"\x02\x00":
        element = int.from_bytes(head[pos + 2 : pos + 4], "little")
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS or vr == b"UN":
            if pos + 12 > len(head):
                return None
            length = int.from_bytes(head[pos + 8 : pos + 12], "little")
            start = pos + 12
        else:
            length = int.from_bytes(head[pos + 6 : pos + 8], "little")
            start = pos + 8
        if start + length > MAX_META_BYTES:
            raise InputError("DICOM file", name, f"has a file meta header of more than {MAX_META_BYTES} bytes", "re-export the file")
        if element == 0x0010:
            if start + length > len(head):
                return None
            return head[start : start + length].decode("latin-1").strip("\x00 ")
        pos = start + length
    rest = head[pos : pos + 2]
    if pos + 8 > len(head) and rest == b"\x02\x00"[: len(rest)]:
        return None  # cut inside the meta group: the caller reads more
    return ""


def undeflate_dicom(data: bytes, name: str, *, max_bytes: int = MAX_INFLATED_BYTES, max_ratio: float = MAX_INFLATE_RATIO) -> bytes:
    """``data`` unchanged, or, for the Deflated Explicit VR Little Endian syntax, the same file inflated.

    pydicom inflates a deflated dataset in one ``zlib.decompress`` call, so a
    1 MB file can take gigabytes before anything can be checked. Here the
    dataset is inflated in bounded steps (:func:`core.io.inflate.inflate_bounded`:
    at most ``max_bytes`` and ``max_ratio`` x the file past 8 MiB) and written
    back behind the same file meta, with the transfer syntax set to Explicit
    VR Little Endian, so pydicom never sees the deflated stream.
    """
    if meta_transfer_syntax(bytes(data[:MAX_META_BYTES]), name) != DEFLATED_TS:
        return data
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        meta = _read_file_meta_info(fp)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, IndexError) as err:
        raise InputError("DICOM file", name, f"has a broken file meta header ({type(err).__name__})", "re-export the file") from None
    if str(meta.get("TransferSyntaxUID", "") or "").strip("\x00 ") != DEFLATED_TS:
        return data
    body = inflate_bounded(
        memoryview(data)[fp.tell() :],
        wbits=WBITS_RAW,
        field="DICOM file",
        name=name,
        max_bytes=max_bytes,
        max_ratio=max_ratio,
        fix="re-export the study without the deflated transfer syntax",
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if 0x00020000 in meta:
        del meta[0x00020000]
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_file_meta_info(buf, meta, enforce_standard=False)
    group = buf.getvalue()
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"".join((bytes(data[:132]), length, group, body))


# ---------------------------------------------------------------- elements after the pixel data


def _skip_pixel_element(fh: io.BufferedIOBase, offset: int, ts: str, name: str) -> int:
    """The file offset just after the PixelData element that starts at ``offset``."""
    endian = ">" if ts == "1.2.840.10008.1.2.2" else "<"
    explicit = ts != "1.2.840.10008.1.2"
    fh.seek(offset)
    head = fh.read(12)
    if len(head) < 8:
        raise InputError("DICOM file", name, "is truncated (pixel data cut off)", "re-export or re-copy the series")
    if explicit and head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise InputError("DICOM file", name, "is truncated (pixel data cut off)", "re-export or re-copy the series")
        (length,) = struct.unpack(endian + "I", head[8:12])
        start = offset + 12
    elif explicit:
        (length,) = struct.unpack(endian + "H", head[6:8])
        start = offset + 8
    else:
        (length,) = struct.unpack(endian + "I", head[4:8])
        start = offset + 8
    if length != 0xFFFFFFFF:
        return start + length
    pos = start
    while True:  # encapsulated: items up to the sequence delimiter
        fh.seek(pos)
        item = fh.read(8)
        if len(item) < 8:
            raise InputError("DICOM file", name, "is truncated (compressed pixel data cut off)", "re-export or re-copy the series")
        (item_length,) = struct.unpack("<I", item[4:8])
        if item[:4] == _SEQ_DELIM:
            return pos + 8
        if item[:4] != _ITEM or item_length == 0xFFFFFFFF:
            raise InputError("DICOM file", name, "has broken encapsulated pixel data", "re-export the series")
        pos += 8 + item_length


def trailing_elements(fh: io.BufferedIOBase, offset: int, ts: str, name: str) -> Dataset | str:
    """The elements stored after PixelData (a Dataset, possibly empty), or a PHI keyword for unreadable bytes.

    Digital signatures, private groups above 7FE0 and trailing padding live
    there; ``stop_before_pixels`` never sees them.
    """
    end = _skip_pixel_element(fh, offset, ts, name)
    fh.seek(end)
    tail = fh.read(MAX_TRAILING_BYTES + 1)
    if len(tail) > MAX_TRAILING_BYTES:
        raise InputError("DICOM file", name, f"has more than {MAX_TRAILING_BYTES} bytes after its pixel data", "re-export the series without trailing data")
    if not tail.strip(b"\x00"):
        return Dataset()
    try:
        tail_ds = pydicom.filereader.read_dataset(io.BytesIO(tail), ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2")
        for _ in tail_ds.iterall():  # convert now so broken bytes fail here
            pass
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, IndexError, NotImplementedError):
        return "DataAfterPixelData"
    if len(tail_ds) == 0:
        return "DataAfterPixelData"
    return tail_ds


# ---------------------------------------------------------------- headers


@dataclass
class _Header:
    source: DicomSource
    ds: Dataset
    pixel_offset: int  # file offset of the PixelData element (its tag)
    ts: str
    rows: int
    cols: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    samples: int
    row_cos: np.ndarray
    col_cos: np.ndarray
    position: np.ndarray | None
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    key: str = ""
    extra: dict[str, object] = field(default_factory=dict)
    phi: frozenset[str] = frozenset()  # keywords still carrying identifying values (every element of the file)
    burned_in: tuple[str, ...] = ()  # burned-in text risk reasons
    identity: tuple[str, str] | None = None  # (PatientName, PatientID) of a file that declares de-identification


@dataclass(frozen=True)
class _Skip:
    """A file that gives no image, with what the PHI gate still saw in it."""

    reason: str
    phi: frozenset[str] = frozenset()
    burned_in: tuple[str, ...] = ()
    identity: tuple[str, str] | None = None


# Header values are read from the raw (unconverted) elements: pydicom's value
# conversion and validation cost more than parsing the whole header.
_KINDS = {
    "Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US",
    "PixelRepresentation": "US", "SamplesPerPixel": "US",
    "NumberOfFrames": "IS", "SeriesNumber": "IS", "AcquisitionNumber": "IS", "InstanceNumber": "IS",
    "RescaleSlope": "DS", "RescaleIntercept": "DS", "ImageOrientationPatient": "DS",
    "ImagePositionPatient": "DS", "PixelSpacing": "DS", "ImagerPixelSpacing": "DS",
    "SliceThickness": "DS", "SpacingBetweenSlices": "DS",
    "SeriesInstanceUID": "UI", "StudyInstanceUID": "UI", "FrameOfReferenceUID": "UI", "Modality": "CS",
}  # fmt: skip
_TAG = {kw: pydicom.datadict.tag_for_keyword(kw) for kw in _KINDS}


def _element(ds: Dataset, keyword: str) -> object | None:
    try:
        return ds.get_item(_TAG[keyword])
    except (KeyError, ValueError, TypeError):
        return None


def _text(ds: Dataset, keyword: str) -> str:
    """The attribute's value as text ('' when absent), without pydicom's conversion."""
    elem = _element(ds, keyword)
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if raw is None:
            return ""
        if _KINDS[keyword] == "US":
            if len(raw) < 2:
                raise ValueError(f"{keyword} is {len(raw)} bytes")
            return str(struct.unpack(("<" if elem.is_little_endian else ">") + "H", raw[:2])[0])
        return bytes(raw).decode("latin-1").strip(" \x00")
    value = getattr(elem, "value", None)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    text = _text(ds, keyword).split("\\")[0].strip()
    return int(float(text)) if text else default


def _floats(ds: Dataset, keyword: str, n: int) -> list[float] | None:
    """``n`` finite floats from a (multi-valued) decimal attribute, or None when absent or broken."""
    try:
        text = _text(ds, keyword)
        if not text:
            return None
        out = [float(v) for v in text.split("\\")]
    except (TypeError, ValueError, OverflowError, struct.error):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _undeflated(src: DicomSource) -> DicomSource:
    """``src``, or an in-memory copy with the deflated dataset inflated (bounded)."""
    if src.data is not None:
        data = undeflate_dicom(src.data, src.name)
        return src if data is src.data else DicomSource(name=src.name, data=data)
    assert src.path is not None
    with open(src.path, "rb") as fh:
        head = fh.read(16384)
        ts = meta_transfer_syntax(head, src.name)
        if ts is None and head[128:132] == b"DICM":
            head += fh.read(MAX_META_BYTES - len(head))  # a long meta group: read up to the cap
            ts = meta_transfer_syntax(head, src.name)
    if ts != DEFLATED_TS:
        return src
    raw = src.path.read_bytes()
    data = undeflate_dicom(raw, src.name)
    return src if data is raw else DicomSource(name=src.name, data=data)


def _encoding_syntax(ds: Dataset, ts: str) -> str:
    """The transfer syntax the dataset was read with (for files without file meta: as pydicom guessed)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return ts
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


# Public VRs whose values never make a PHI keyword or a burned-in reason (numbers, dates, UIDs): for
# them the gate depends only on presence and emptiness, so files of one series share one gate result.
_GATE_VALUE_FREE_VRS = frozenset({"UI", "DA", "TM", "DT", "IS", "DS", "FD", "FL", "US", "SS", "UL", "SL", "AT", "OF", "OD", "UV", "SV"})
_SOP_CLASS_TAG = 0x00080016


def gate_fingerprint(ds: Dataset) -> bytes:
    """A digest of everything in ``ds`` that the PHI gate's answer can depend on."""
    digest = hashlib.sha1()
    for tag, elem in ds.items():
        tag = int(tag)
        group = tag >> 16
        if isinstance(elem, RawDataElement):
            vr = elem.VR or ""
            value = bytes(elem.value or b"")
        else:
            vr = getattr(elem, "VR", "") or ""
            value = repr(getattr(elem, "value", "")).encode("utf-8", "backslashreplace")
        if not vr:
            try:
                vr = pydicom.datadict.dictionary_VR(tag)
            except KeyError:
                vr = ""
        digest.update(struct.pack("<I", tag))
        value_free = vr in _GATE_VALUE_FREE_VRS and not group % 2 and tag != _SOP_CLASS_TAG and not (0x5000 <= group <= 0x60FF)
        if value_free:
            digest.update(b"E" if not value.strip(b"\x00 ") else b"V")
        else:
            digest.update(struct.pack("<I", len(value)))
            digest.update(value)
    return digest.digest()


def _gate(ds: Dataset, cache: dict[bytes, tuple[frozenset[str], tuple[str, ...]]] | None = None) -> tuple[frozenset[str], tuple[str, ...]]:
    """PHI keywords and burned-in reasons of one whole file (every element, sequences included).

    Files whose gate-relevant content is identical (the slices of one series
    differ only in positions, numbers and UIDs) share one answer via ``cache``.
    """
    from core.phi.detect import (
        burned_in_reasons,
        phi_keywords,
    )

    meta = getattr(ds, "file_meta", None)
    private_value = meta.get("PrivateInformation", None) if meta is not None else None
    private_meta = isinstance(private_value, (bytes, bytearray)) and bool(bytes(private_value).strip(b"\x00 "))
    key = (gate_fingerprint(ds) + (b"P" if private_meta else b"")) if cache is not None else b""
    if cache is not None and key in cache:
        return cache[key]
    try:
        result = frozenset(phi_keywords(ds)), tuple(burned_in_reasons(ds))
    except (ValueError, TypeError, KeyError, OverflowError, struct.error, IndexError, AttributeError, NotImplementedError):
        # an element that cannot be read cannot be shown to be free of PHI
        result = frozenset({"UnreadableElements"}), ()
    if private_meta:  # (0002,0102) in the file meta: private data of the sending application
        result = result[0] | {"PrivateInformation"}, result[1]
    if cache is not None:
        cache[key] = result
    return result


def _declared_identity(ds: Dataset) -> tuple[str, str] | None:
    """(PatientName, PatientID) when the file declares its de-identification, else None."""
    try:
        if str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() != "YES":
            return None
        return str(ds.get("PatientName", "") or "").strip(), str(ds.get("PatientID", "") or "").strip()
    except (ValueError, TypeError, KeyError, struct.error):
        return ("?", "?")


def _read_header(src: DicomSource, gate_cache: dict[bytes, tuple[frozenset[str], tuple[str, ...]]] | None = None) -> _Header | _Skip:
    """Parse one file up to its PixelData (and the elements after it); a ``_Skip`` says why it gives no image.

    The PHI gate sees every element: the header, nested sequences, private
    elements and whatever follows the pixel data. A deflated file is inflated
    with bounds first (a decompression bomb raises ``InputError``).
    """
    src = _undeflated(src)
    tail: Dataset | str = Dataset()
    try:
        with src.open() as fh:
            head = fh.read(132)
            if not looks_like_dicom(head):
                return _Skip("not DICOM")
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            offset = fh.tell()
            tag = fh.read(4)
            if tag == b"\xe0\x7f\x10\x00":
                meta0 = getattr(ds, "file_meta", None)
                ts0 = str(getattr(meta0, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
                try:
                    tail = trailing_elements(fh, offset, _encoding_syntax(ds, ts0), src.name)
                except InputError:
                    tail = Dataset()  # truncated pixel data: reported when the slice is decoded
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, IndexError) as err:
        return _Skip(f"unreadable ({type(err).__name__})")
    if isinstance(tail, Dataset):
        for elem in tail:
            ds.add(elem)
    phi, burned = _gate(ds, gate_cache)
    if isinstance(tail, str):
        phi = phi | {tail}
    identity = _declared_identity(ds)
    if tag != b"\xe0\x7f\x10\x00":
        return _Skip("no pixel data", phi, burned, identity)
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    try:
        rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
        frames = _int(ds, "NumberOfFrames", 1) or 1
        bits_allocated = _int(ds, "BitsAllocated", 0)
        bits_stored = _int(ds, "BitsStored", bits_allocated) or bits_allocated
        signed = _int(ds, "PixelRepresentation", 0) == 1
        samples = _int(ds, "SamplesPerPixel", 1) or 1
        slope = (_floats(ds, "RescaleSlope", 1) or [1.0])[0]
        intercept = (_floats(ds, "RescaleIntercept", 1) or [0.0])[0]
    except (TypeError, ValueError, OverflowError, struct.error) as err:
        return _Skip(f"broken image attributes ({type(err).__name__})", phi, burned)
    if rows < 1 or cols < 1 or bits_allocated < 1 or frames < 1:
        return _Skip("broken image attributes (Rows/Columns/BitsAllocated)", phi, burned)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    ipp = _floats(ds, "ImagePositionPatient", 3)
    ps = _floats(ds, "PixelSpacing", 2) or _floats(ds, "ImagerPixelSpacing", 2)
    row_cos = np.array(iop[:3] if iop else [1.0, 0.0, 0.0])
    col_cos = np.array(iop[3:] if iop else [0.0, 1.0, 0.0])
    if iop and (np.linalg.norm(row_cos) < 1e-3 or np.linalg.norm(col_cos) < 1e-3):
        row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    header = _Header(
        source=src,
        ds=ds,
        pixel_offset=offset,
        ts=ts,
        rows=rows,
        cols=cols,
        frames=frames,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=signed,
        samples=samples,
        row_cos=row_cos / np.linalg.norm(row_cos),
        col_cos=col_cos / np.linalg.norm(col_cos),
        position=np.array(ipp) if ipp else None,
        pixel_spacing=(float(ps[0]), float(ps[1])) if ps and ps[0] > 0 and ps[1] > 0 else (1.0, 1.0),
        slope=slope if slope != 0 else 1.0,
        intercept=intercept,
        phi=phi,
        burned_in=burned,
        identity=identity,
    )
    header.extra["has_iop"] = iop is not None
    header.extra["has_spacing"] = bool(ps and ps[0] > 0 and ps[1] > 0)
    try:
        header.key = _series_key(header)
    except (TypeError, ValueError, OverflowError, struct.error) as err:
        return _Skip(f"broken series attributes ({type(err).__name__})", phi, burned)
    return header


def _series_key(h: _Header) -> str:
    uid = _text(h.ds, "SeriesInstanceUID")
    if uid:
        return uid
    number = _text(h.ds, "SeriesNumber")
    parts = [
        _text(h.ds, "StudyInstanceUID"),
        _text(h.ds, "FrameOfReferenceUID"),
        ",".join(f"{v:.3f}" for v in (*h.row_cos, *h.col_cos)),
        f"{h.rows}x{h.cols}",
        number,
        _text(h.ds, "AcquisitionNumber"),
        _text(h.ds, "Modality"),
    ]
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]
    return f"noUID-{number + '-' if number else ''}{digest}"


def _map(fn: Callable, items: Sequence, workers: int | None = None) -> list:
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    if len(items) < 4 or workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------- geometry


def _axis_assignment(directions: np.ndarray) -> tuple[list[int], list[int], float]:
    """For 3 direction vectors (rows of ``directions``, LPS), the nearest LPS axis and sign of each.

    Returns (lps_axis per direction, sign per direction, largest angle in degrees
    between a direction and its assigned axis).
    """
    best: tuple[float, tuple[int, int, int]] | None = None
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        score = sum(abs(directions[i, perm[i]]) for i in range(3))
        if best is None or score > best[0] + 1e-12:
            best = (score, perm)
    assert best is not None
    perm = list(best[1])
    signs = [1 if directions[i, perm[i]] >= 0 else -1 for i in range(3)]
    cosines = [min(1.0, abs(float(directions[i, perm[i]]))) for i in range(3)]
    angle = float(np.degrees(np.arccos(min(cosines))))
    return perm, signs, angle


def to_convention(data: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Permute/flip ``data`` (indexed by the axes of ``affine_lps``) to [S, P, L] order.

    ``affine_lps`` maps (axis0, axis1, axis2, 1) to LPS millimetres. Returns the
    (possibly non-contiguous view of the) array, the affine of the new index,
    and warnings (obliquity). The convention: axis 0 -> +z (superior), axis 1 ->
    +y (posterior), axis 2 -> +x (patient left).
    """
    lin = affine_lps[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    directions = (lin / np.where(norms > 0, norms, 1.0)).T  # row i: direction of data axis i
    lps_axis, signs, angle = _axis_assignment(directions)
    conv_of_lps = {2: 0, 1: 1, 0: 2}
    target = [conv_of_lps[a] for a in lps_axis]  # convention axis of each data axis
    order = [target.index(c) for c in range(3)]  # data axis feeding each convention axis
    out = np.transpose(data, order)
    new_affine = np.eye(4)
    new_affine[:3, :3] = lin[:, order]
    new_affine[:3, 3] = affine_lps[:3, 3]
    for conv_axis, data_axis in enumerate(order):
        if signs[data_axis] < 0:
            out = np.flip(out, axis=conv_axis)
            n = data.shape[data_axis]
            new_affine[:3, 3] = new_affine[:3, 3] + new_affine[:3, conv_axis] * (n - 1)
            new_affine[:3, conv_axis] = -new_affine[:3, conv_axis]
    warnings: list[str] = []
    if angle > 0.5:
        warnings.append(f"oblique orientation ({angle:.1f} degrees off the patient axes): axes snapped to the nearest patient axes, not resampled")
    return out, new_affine, warnings


def _safe_int(ds: Dataset, keyword: str) -> int:
    try:
        return _int(ds, keyword, 0)
    except (TypeError, ValueError, OverflowError, struct.error):
        return 0


def _median(values: np.ndarray) -> float:
    """``np.median`` of finite values without its NaN check, which imports numpy.ma (10-40 ms per process)."""
    ordered = np.sort(values)
    k = len(ordered) // 2
    return float(ordered[k]) if len(ordered) % 2 else float((ordered[k - 1] + ordered[k]) / 2)


def _sort_and_check(headers: list[_Header]) -> tuple[list[_Header], float, list[str]]:
    """Sort slices along the normal; return them, the slice spacing and warnings."""
    warnings: list[str] = []
    first = headers[0]
    normal = np.cross(first.row_cos, first.col_cos)
    if any(h.position is None for h in headers):
        if len(headers) > 1:
            warnings.append("ImagePositionPatient missing: slices ordered by InstanceNumber, spacing from SliceThickness")
        ordered = sorted(headers, key=lambda h: (_safe_int(h.ds, "InstanceNumber"), h.source.name))
        thickness = _floats(first.ds, "SpacingBetweenSlices", 1) or _floats(first.ds, "SliceThickness", 1) or [1.0]
        return ordered, abs(float(thickness[0])) or 1.0, warnings
    proj = np.array([float(np.dot(h.position, normal)) for h in headers])  # type: ignore[arg-type]
    order = np.argsort(proj, kind="stable")
    ordered = [headers[i] for i in order]
    proj = proj[order]
    if len(ordered) == 1:
        thickness = _floats(first.ds, "SpacingBetweenSlices", 1) or _floats(first.ds, "SliceThickness", 1) or [1.0]
        return ordered, abs(float(thickness[0])) or 1.0, warnings
    diffs = np.diff(proj)
    dup = diffs < 1e-3
    if dup.any():
        keep = [0] + [i + 1 for i, d in enumerate(dup) if not d]
        warnings.append(f"{int(dup.sum())} slice(s) with duplicate positions dropped (several acquisitions in one series?)")
        ordered = [ordered[i] for i in keep]
        proj = proj[keep]
        diffs = np.diff(proj)
        if len(ordered) == 1:
            return ordered, 1.0, warnings
    spacing = _median(diffs)
    gaps = diffs > 1.5 * spacing
    if gaps.any():
        missing = int(sum(round(d / spacing) - 1 for d in diffs[gaps]))
        where = ", ".join(f"{proj[i]:.1f}..{proj[i + 1]:.1f} mm" for i in np.flatnonzero(gaps)[:3])
        warnings.append(f"missing slices: about {missing} slice(s) absent ({where}); volume stacked without the gap")
    tolerance = max(0.01 * spacing, 1e-3)
    if np.any(np.abs(diffs[~gaps] - spacing) > tolerance):
        warnings.append(f"uneven slice spacing: {diffs.min():.3f}..{diffs.max():.3f} mm (median {spacing:.3f} mm used)")
    return ordered, spacing, warnings


# ---------------------------------------------------------------- pixels


def _native_pixels(h: _Header, raw: bytes) -> np.ndarray:
    """Uncompressed PixelData straight from the bytes after the element's tag."""
    endian, explicit = _NATIVE[h.ts]
    if len(raw) < 8:
        raise InputError("DICOM file", h.source.name, "is truncated (pixel data cut off)", "re-export or re-copy the series")
    if explicit and raw[4:6] in _LONG_VRS:
        (length,) = struct.unpack(endian + "I", raw[8:12])
        start = 12
    elif explicit:
        (length,) = struct.unpack(endian + "H", raw[6:8])
        start = 8
    else:
        (length,) = struct.unpack(endian + "I", raw[4:8])
        start = 8
    n = h.rows * h.cols * h.frames * h.samples
    if h.bits_allocated not in (8, 16, 32) or h.samples != 1:
        raise InputError(
            "DICOM file", h.source.name, f"has {h.bits_allocated}-bit / {h.samples}-sample pixels, not a CT image", "load a CT series (16-bit greyscale)"
        )
    itemsize = h.bits_allocated // 8
    need = n * itemsize
    if length == 0xFFFFFFFF or len(raw) - start < need or length < need:
        raise InputError("DICOM file", h.source.name, "is truncated (pixel data shorter than Rows x Columns)", "re-export or re-copy the series")
    dtype = np.dtype(f"{endian}{'i' if h.signed else 'u'}{itemsize}")
    arr = np.frombuffer(raw, dtype=dtype, count=n, offset=start)
    return _mask_bits(arr, h)


def _mask_bits(arr: np.ndarray, h: _Header) -> np.ndarray:
    if h.bits_stored >= h.bits_allocated or h.bits_stored <= 0:
        return arr
    shift = h.bits_allocated - h.bits_stored
    if h.signed:
        return (arr << shift) >> shift  # sign-extend the stored bits
    return arr & ((1 << h.bits_stored) - 1)


def _encapsulated_value(raw: bytes, name: str) -> bytes:
    """The encapsulated PixelData value (items), from the bytes at its tag."""
    if len(raw) < 12 or raw[8:12] != b"\xff\xff\xff\xff":
        raise InputError("DICOM file", name, "has a compressed transfer syntax but unencapsulated pixel data", "re-export the series")
    pos = 12
    end = len(raw)
    while pos + 8 <= end:
        tag = raw[pos : pos + 4]
        (length,) = struct.unpack("<I", raw[pos + 4 : pos + 8])
        if tag == _SEQ_DELIM:
            return raw[12:pos]
        if tag != _ITEM or pos + 8 + length > end:
            break
        pos += 8 + length
    raise InputError("DICOM file", name, "is truncated (compressed pixel data cut off)", "re-export or re-copy the series")


# Decoding plugins by speed (measured, 512 x 512 CT slices; pydicom's own order puts GDCM first,
# which is 15 % slower for JPEG 2000 and 30 % slower for JPEG-LS, and pylibjpeg-rle is 9 x its numpy RLE).
_PLUGIN_PREFERENCE = {
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "pillow", "gdcm"),  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "pillow", "gdcm"),  # JPEG 2000
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm"),  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm"),  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom", "gdcm"),  # RLE Lossless
}


def _preferred_plugin(ts: str, available: Sequence[str]) -> str:
    """The fastest installed decoding plugin for ``ts`` ('' = pydicom's own choice)."""
    for label in _PLUGIN_PREFERENCE.get(ts, ()):
        if label in available:
            return label
    return ""


def _compressed_pixels(h: _Header, raw: bytes) -> np.ndarray:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(UID(h.ts))
    except (NotImplementedError, ValueError, KeyError):
        raise InputError("transfer syntax", h.ts, "is not supported", "re-export the series uncompressed or as JPEG 2000 / RLE / JPEG") from None
    if not decoder.is_available:
        raise InputError("transfer syntax", h.ts, "needs a decoder that is not installed", "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle")
    value = _encapsulated_value(raw, h.source.name)
    kwargs = dict(
        rows=h.rows,
        columns=h.cols,
        samples_per_pixel=h.samples,
        number_of_frames=h.frames,
        bits_allocated=h.bits_allocated,
        bits_stored=h.bits_stored,
        pixel_representation=int(h.signed),
        photometric_interpretation=str(h.ds.get("PhotometricInterpretation", "MONOCHROME2")),
    )
    if h.samples > 1:
        kwargs["planar_configuration"] = int(h.ds.get("PlanarConfiguration", 0) or 0)
    plugin = _preferred_plugin(h.ts, decoder.available_plugins)
    try:
        try:
            arr, _ = decoder.as_array(value, decoding_plugin=plugin, **kwargs)
        except Exception:  # the fastest codec failed (it raises anything): let pydicom try every installed one
            if not plugin:
                raise
            arr, _ = decoder.as_array(value, **kwargs)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - third-party codecs raise anything; one line for the user
        why = " ".join(str(err).split())  # pydicom lists every plugin's failure on its own line
        raise InputError("DICOM file", h.source.name, f"pixel data cannot be decoded ({type(err).__name__}: {why})", "re-export the series") from None
    return np.asarray(arr)


def _pixels(h: _Header) -> np.ndarray:
    raw = h.source.read_from(h.pixel_offset)
    arr = _native_pixels(h, raw) if h.ts in _NATIVE else _compressed_pixels(h, raw)
    if h.samples != 1:
        raise InputError("DICOM file", h.source.name, f"has {h.samples} samples per pixel (colour), not a CT image", "load a greyscale CT series")
    return arr.reshape(h.frames, h.rows, h.cols)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fork_workers(ordered: Sequence[_Header]) -> int:
    """How many processes (this one included) decode compressed slices; 1 = decode in this process's threads.

    The codecs (OpenJPEG, CharLS, libjpeg, RLE) hold the GIL, so threads do not
    decode in parallel; forked copies of this process do. Only where fork is
    safe: Linux, and no other Python thread alive (in a threaded server such as
    the app the threads are used instead).
    """
    if not FORK_DECODE or not hasattr(os, "fork") or threading.active_count() != 1:
        return 1
    if len(ordered) < 4 or any(h.ts in _NATIVE for h in ordered):  # uncompressed: numpy threads already run in parallel
        return 1
    if sum(h.rows * h.cols * h.frames for h in ordered) < FORK_MIN_PIXELS:  # a fork costs ~7 ms: not for tiny series
        return 1
    return max(1, min(DECODE_WORKERS, _usable_cpus(), len(ordered) // 2))


def _shared_empty(shape: tuple[int, int, int]) -> np.ndarray:
    """A float32 array in anonymous shared memory (kept alive by the array), visible to forked children."""
    import mmap

    nbytes = int(np.prod(shape)) * 4
    buffer = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)


_QUEUE_TOKENS = 1024  # 4 kB of 4-byte tokens: fits the smallest pipe buffer (one page), so writing never blocks


def _claim(queue_fd: int, chunk: int, n: int) -> range:
    """The next slices from the shared work queue (a pipe of 4-byte first indices); empty when it is drained."""
    token = os.read(queue_fd, 4)  # reads of 4 bytes from a pipe never interleave between processes
    if len(token) != 4:
        return range(0)
    first = struct.unpack("<I", token)[0]
    return range(first, min(first + chunk, n))


def _decode_in_processes(decode: Callable[[int], None], n: int, workers: int) -> None:
    """Run ``decode(i)`` for ``i`` in ``range(n)`` in this process and ``workers - 1`` forked children.

    The indices wait in a pipe that every process reads from (whoever is free
    takes the next slice, so a process slowed by another job on its core does
    less). ``decode`` writes into shared memory. A child reports its pydicom
    warnings or its error (an ``InputError`` keeps its fields) as one JSON line
    on a pipe and leaves with ``os._exit``; this process re-raises the first error.
    """
    import json
    import signal

    chunk = -(-n // _QUEUE_TOKENS)  # slices per token
    queue_r, queue_w = os.pipe()
    try:
        os.write(queue_w, b"".join(struct.pack("<I", i) for i in range(0, n, chunk)))
    finally:
        os.close(queue_w)
    children: list[tuple[int, int]] = []  # (pid, read end of its report pipe)
    try:
        for _ in range(workers - 1):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: decode what it claims, report, leave without running any cleanup of the parent's
                os.close(read_fd)
                code = 0
                try:
                    with _warnings.catch_warnings(record=True) as caught:
                        _warnings.simplefilter("always")
                        while slices := _claim(queue_r, chunk, n):
                            for i in slices:
                                decode(i)
                    report: dict[str, object] = {"warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)]}
                except InputError as err:
                    report, code = {"input_error": [err.field, str(err.value), err.problem, err.fix]}, 3
                except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it as one line
                    report, code = {"error": f"{type(err).__name__}: {err}"}, 4
                try:
                    os.write(write_fd, json.dumps(report).encode())
                finally:
                    os._exit(code)
            os.close(write_fd)
            children.append((pid, read_fd))
        while slices := _claim(queue_r, chunk, n):
            for i in slices:
                decode(i)
    except BaseException:
        for pid, _ in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(children)
        raise
    finally:
        os.close(queue_r)
    for report, status in _reap(children):
        if "input_error" in report:
            field_, value, problem, fix = report["input_error"]  # type: ignore[misc]
            raise InputError(field_, value, problem, fix)
        if "error" in report or status != 0:
            why = report.get("error") or (f"signal {-status}" if status < 0 else f"exit status {status}")
            raise InputError("DICOM series", f"{n} slices", f"pixel data cannot be decoded ({why})", "re-export the series")
        for message in report.get("warnings", []):  # type: ignore[union-attr]
            _warnings.warn(str(message), UserWarning, stacklevel=2)


def _reap(children: Sequence[tuple[int, int]]) -> list[tuple[dict[str, object], int]]:
    """Read each child's report to its end and wait for it: [(report, exit status or -signal)]."""
    import json

    out: list[tuple[dict[str, object], int]] = []
    for pid, read_fd in children:
        chunks: list[bytes] = []
        try:
            while chunk := os.read(read_fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        try:
            report = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            report = {}
        out.append((report if isinstance(report, dict) else {}, code))
    return out


# ---------------------------------------------------------------- public


@dataclass
class HeaderScan:
    """Every file of a study read up to its pixels, with what the PHI gate saw in all of them."""

    headers: list[_Header]
    skipped: dict[str, int]  # reason -> number of files that give no image
    phi: list[str]  # sorted keywords still carrying identifying values, over every DICOM file
    burned_in: list[str]  # "reason (n of N instances)"
    n_dicom: int  # files read as DICOM (images and others)


def scan_headers(sources: Sequence[DicomSource]) -> HeaderScan:
    """Parse every header (and the elements after the pixel data) and gate every file for PHI."""
    if not sources:
        raise InputError("study", "(no files)", "contains no files", "point at a DICOM file, a folder of DICOM files or a zip")
    # serial: header parsing holds the GIL, threads only add contention (measured)
    cache: dict[bytes, tuple[frozenset[str], tuple[str, ...]]] = {}
    results = [_read_header(src, cache) for src in sources]
    headers = [r for r in results if isinstance(r, _Header)]
    skipped: dict[str, int] = {}
    phi: set[str] = set()
    burned: dict[str, int] = {}
    n_dicom = 0
    names: set[str] = set()
    ids: set[str] = set()
    for r in results:
        if isinstance(r, _Skip):
            skipped[r.reason] = skipped.get(r.reason, 0) + 1
            if r.reason == "not DICOM" or r.reason.startswith("unreadable"):
                continue
        n_dicom += 1
        phi.update(r.phi)
        if r.identity is not None:
            names.add(r.identity[0])
            ids.add(r.identity[1])
        for reason in r.burned_in:
            burned[reason] = burned.get(reason, 0) + 1
    # files that declare de-identification must agree on the pseudonym: one that differs is left-over identity
    if len(names) > 1:
        phi.add("PatientName")
    if len(ids) > 1:
        phi.add("PatientID")
    return HeaderScan(
        headers=headers,
        skipped=skipped,
        phi=sorted(phi),
        burned_in=[f"{reason} ({n} of {n_dicom} instances)" for reason, n in sorted(burned.items())],
        n_dicom=n_dicom,
    )


def read_headers(sources: Sequence[DicomSource]) -> tuple[list[_Header], dict[str, int]]:
    """Parse every header; return the image headers and counts of skipped files by reason."""
    scan = scan_headers(sources)
    return scan.headers, scan.skipped


def group_series(headers: Iterable[_Header]) -> dict[str, list[_Header]]:
    groups: dict[str, list[_Header]] = {}
    for h in headers:
        groups.setdefault(h.key, []).append(h)
    return groups


def _series_info(key: str, hs: list[_Header]) -> SeriesInfo:
    first = hs[0].ds
    return SeriesInfo(
        key=key,
        n_instances=sum(h.frames for h in hs),
        modality=str(first.get("Modality", "") or ""),
        rows=hs[0].rows,
        cols=hs[0].cols,
        description_present=bool(str(first.get("SeriesDescription", "") or "").strip()),
    )


def load_dicom_sources(
    sources: Sequence[DicomSource],
    series: str | None = None,
    *,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    label: str = "study",
) -> Volume:
    """Load the largest (or the chosen) series of ``sources`` into a Volume.

    pydicom's own warnings (invalid values, unknown character sets, ...) are
    collected and summarised in ``Volume.warnings`` instead of being printed.
    """
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        volume = _load_dicom_sources(sources, series, max_decoded_bytes=max_decoded_bytes, label=label)
    messages = sorted({" ".join(str(w.message).split())[:100] for w in caught if issubclass(w.category, UserWarning)})
    if messages:
        volume.warnings.append(f"{len(messages)} DICOM reading warning(s), e.g. {messages[0]}")
    return volume


def _load_dicom_sources(
    sources: Sequence[DicomSource],
    series: str | None,
    *,
    max_decoded_bytes: int,
    label: str,
) -> Volume:
    scan = scan_headers(sources)
    headers, skipped = scan.headers, scan.skipped
    if not headers:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        raise InputError("study", label, f"holds no readable DICOM image ({reasons})", "point at a DICOM series (files with pixel data), a zip of one, or a NIfTI file")
    groups = group_series(headers)
    infos = [_series_info(k, hs) for k, hs in groups.items()]
    infos.sort(key=lambda s: (-s.n_instances, s.key))
    if series is None:
        key = infos[0].key
    else:
        matches = [i.key for i in infos if i.key == series] or [i.key for i in infos if i.key.startswith(series)]
        if len(matches) != 1:
            problem = "matches several series" if matches else "is not a series of this study"
            raise InputError("series", series, problem, f"choose one of: {', '.join(i.key for i in infos)}")
        key = matches[0]
    chosen = groups[key]
    warnings: list[str] = []
    if skipped:
        warnings.append("ignored files: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    if len(infos) > 1:
        warnings.append(f"{len(infos)} series found; loaded {key} ({_series_info(key, chosen).n_instances} images)")
    # one geometry per volume: keep the commonest matrix size / orientation
    shapes: dict[tuple, list[_Header]] = {}
    for h in chosen:
        shapes.setdefault((h.rows, h.cols, tuple(np.round(np.r_[h.row_cos, h.col_cos], 3))), []).append(h)
    if len(shapes) > 1:
        best = max(shapes.values(), key=len)
        warnings.append(f"{len(chosen) - len(best)} image(s) with another size or orientation left out of the series")
        chosen = best
    multi = [h for h in chosen if h.frames > 1]
    if multi and len(chosen) > 1:
        raise InputError("series", key, "mixes multi-frame and single-frame images", "export the series as one kind")
    ordered, slice_spacing, geo_warnings = _sort_and_check(chosen)
    warnings.extend(geo_warnings)
    first = ordered[0]
    n_slices = sum(h.frames for h in ordered)
    itemsize = first.bits_allocated // 8 if first.bits_allocated in (8, 16, 32) else 4
    decoded = n_slices * first.rows * first.cols * max(4, itemsize) * max(1, first.samples)
    if decoded > max_decoded_bytes:
        raise InputError(
            "series",
            key,
            f"would need {decoded / 1024**3:.1f} GiB decoded ({n_slices} x {first.rows} x {first.cols}; limit {max_decoded_bytes / 1024**3:.1f} GiB)",
            "load a smaller series or crop it before upload",
        )
    if first.rows < 1 or first.cols < 1:
        raise InputError("DICOM file", first.source.name, f"has Rows x Columns = {first.rows} x {first.cols}", "re-export the series")

    forked = _fork_workers(ordered)
    # with decoding processes, the output lives in shared memory they write into (same size, same cap)
    out = _shared_empty((n_slices, first.rows, first.cols)) if forked > 1 else np.empty((n_slices, first.rows, first.cols), dtype=np.float32)
    starts = np.cumsum([0] + [h.frames for h in ordered])

    def decode(i: int) -> None:
        h = ordered[i]
        arr = _pixels(h)
        target = out[starts[i] : starts[i + 1]]
        if h.slope == 1.0:
            np.add(arr, np.float32(h.intercept), out=target, casting="unsafe")
        else:
            np.multiply(arr, np.float32(h.slope), out=target, casting="unsafe")
            target += np.float32(h.intercept)

    if forked > 1:
        _decode_in_processes(decode, len(ordered), forked)
    else:
        _map(decode, list(range(len(ordered))), DECODE_WORKERS)

    if first.frames > 1:
        warnings.append("multi-frame image: frames stacked in file order with SliceThickness/SpacingBetweenSlices spacing")
    row_sp, col_sp = first.pixel_spacing
    if not first.extra.get("has_spacing"):
        warnings.append("PixelSpacing missing: 1 mm assumed")
    normal = np.cross(first.row_cos, first.col_cos)
    origin = first.position if first.position is not None else np.zeros(3)
    affine = np.eye(4)
    affine[:3, 0] = normal * slice_spacing
    affine[:3, 1] = first.col_cos * row_sp  # moving down a row follows the column direction cosine
    affine[:3, 2] = first.row_cos * col_sp
    affine[:3, 3] = origin
    hu, conv_affine, orient_warnings = to_convention(out, affine)
    warnings.extend(orient_warnings)
    hu = np.ascontiguousarray(hu)
    spacing = tuple(round(float(np.linalg.norm(conv_affine[:3, i])), 6) for i in range(3))
    ds = first.ds
    meta = {
        "series_key": key,
        "transfer_syntax": first.ts,
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
        "body_part": str(ds.get("BodyPartExamined", "") or ""),
        "kvp": str(ds.get("KVP", "") or ""),
        "slice_thickness_mm": str(ds.get("SliceThickness", "") or ""),
        "convolution_kernel": str(ds.get("ConvolutionKernel", "") or ""),
        "stored_orientation": ",".join(f"{v:g}" for v in np.round(np.r_[first.row_cos, first.col_cos], 4)),
    }
    return Volume(
        hu=hu,
        spacing_mm=spacing,  # type: ignore[arg-type]
        affine=conv_affine,
        modality=str(ds.get("Modality", "") or "OT"),
        format="dicom",
        series=infos,
        phi=scan.phi,
        burned_in=scan.burned_in,
        warnings=warnings,
        meta={k: v for k, v in meta.items() if v},
    )


def load_dicom(path: str | Path, series: str | None = None, *, max_decoded_bytes: int = MAX_DECODED_BYTES) -> Volume:
    """A DICOM file or a folder (searched recursively) -> Volume."""
    path = Path(path)
    if path.is_dir():
        sources = sources_from_folder(path)
        if not sources:
            raise InputError("folder", str(path), "is empty", "point at a folder that holds the DICOM files")
    elif path.is_file():
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError("DICOM file", str(path), f"is {size} bytes (limit {MAX_FILE_BYTES})", "load a smaller file")
        sources = [DicomSource(name=path.name, path=path)]
    else:
        raise InputError("study", str(path), "does not exist", "check the path (a DICOM file or folder, or a zip)")
    return load_dicom_sources(sources, series, max_decoded_bytes=max_decoded_bytes, label=str(path))


def load_dicom_members(members: Sequence[tuple[str, bytes]], series: str | None = None, *, label: str = "zip") -> Volume:
    """In-memory files (e.g. zip members) -> Volume."""
    sources = [DicomSource(name=name, data=data) for name, data in members]
    return load_dicom_sources(sources, series, label=label)
