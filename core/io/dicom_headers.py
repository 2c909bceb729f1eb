"""One parse per file: the header up to the pixel data (and the elements after it), the PHI gate on every file,
series keys. Used by :mod:`core.io.dicom`."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from core.io.pydicom_import import pydicom  # first: pydicom without its downloader

# isort: split
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from core.errors import InputError
from core.io.dicom_frames import frame_geometry
from core.io.dicom_source import (  # noqa: F401 - also the names tests and callers use from core.io.dicom
    DEFLATED_TS,
    MAX_META_BYTES,
    PIXEL_DATA_TAGS,
    DicomSource,
    looks_like_dicom,
    meta_transfer_syntax,
    pixel_element_syntax,
    trailing_elements,
    undeflate_dicom,
)

# ---------------------------------------------------------------- headers

FLOAT_PIXEL_TAGS = (b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09")  # (7FE0,0008/9)


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
    "PixelRepresentation": "US", "SamplesPerPixel": "US", "PixelPaddingValue": "US", "PixelPaddingRangeLimit": "US",
    "NumberOfFrames": "IS", "SeriesNumber": "IS", "AcquisitionNumber": "IS", "InstanceNumber": "IS",
    "RescaleSlope": "DS", "RescaleIntercept": "DS", "ImageOrientationPatient": "DS",
    "ImagePositionPatient": "DS", "PixelSpacing": "DS", "ImagerPixelSpacing": "DS",
    "SliceThickness": "DS", "SpacingBetweenSlices": "DS", "SliceLocation": "DS",
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


#: what the scanner's padding outside its field of view (PixelPaddingValue) is read as: air at the bottom of the CT scale
PADDING_HU = -1024.0


def _padding_hu(ds: Dataset, bits_allocated: int, signed: bool, slope: float, intercept: float) -> tuple[float, float] | None:
    """The HU range of the pixels a 16-bit image marks as padding (PixelPaddingValue, up to PixelPaddingRangeLimit),
    when all of it lies below ``PADDING_HU`` (as -2000 or -3024 do): a padding value inside the range of real tissue
    would be a header error, and those pixels are left as they are. None without padding."""
    absent = -(1 << 40)
    try:
        values = [_int(ds, k, absent) for k in ("PixelPaddingValue", "PixelPaddingRangeLimit")]
    except (TypeError, ValueError, OverflowError, struct.error):
        return None
    if values[0] == absent or bits_allocated != 16:
        return None
    # read raw as US (63536) or already converted by pydicom as SS (-2000): one 16-bit pattern, read as the pixels are
    stored = [(v & 0xFFFF) - (65536 if signed and v & 0x8000 else 0) for v in values if v != absent]
    hu = sorted(float(np.float32(v) * np.float32(slope) + np.float32(intercept)) for v in stored)
    return (hu[0], hu[-1]) if hu[-1] < PADDING_HU else None


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
            element = fh.read(8)
            tag = element[:4]
            meta0 = getattr(ds, "file_meta", None)
            ts = pixel_element_syntax(element, str(getattr(meta0, "TransferSyntaxUID", "") or ""))
            if tag in PIXEL_DATA_TAGS:
                try:
                    tail = trailing_elements(fh, offset, ts, src.name)
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
    if tag in FLOAT_PIXEL_TAGS:
        return _Skip("float pixel data (FloatPixelData or DoubleFloatPixelData: not a CT image's integer pixels)", phi, burned, identity)
    if tag not in PIXEL_DATA_TAGS:
        return _Skip("no pixel data", phi, burned, identity)
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
    try:
        frames_geometry = frame_geometry(ds, frames) if frames > 1 else None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error, IndexError, NotImplementedError) as err:
        return _Skip(f"broken functional groups ({type(err).__name__})", phi, burned)
    if frames_geometry is not None:  # an enhanced image: its functional groups hold the geometry and the rescale
        g = frames_geometry
        iop = [float(v) for v in g.orientations[0]] if g.orientations is not None else iop
        ipp = [float(v) for v in g.positions[0]] if g.positions is not None else ipp
        ps = list(g.pixel_spacing) if g.pixel_spacing is not None else ps
        if g.slopes is not None and g.intercepts is not None:  # frame by frame when they differ (see core.io.dicom)
            slope, intercept = (1.0, 0.0) if g.rescale_varies else (float(g.slopes[0]), float(g.intercepts[0]))
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
    padding = _padding_hu(ds, bits_allocated, signed, header.slope, header.intercept)
    if padding is not None and not (frames_geometry is not None and frames_geometry.rescale_varies):
        header.extra["padding_hu"] = padding
    if frames_geometry is not None:
        header.extra["frames"] = frames_geometry
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
    # imported here: the JPEG 2000 path (threads of its own) never needs it
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


