"""The geometry of a DICOM series (slice order, spacing, orientation to the project convention) and the decoding
of one slice's pixels (native or compressed, with the fastest installed plugin). Used by :mod:`core.io.dicom`."""

from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

from core.io.pydicom_import import pydicom  # noqa: F401 - first: no downloader

# isort: split
from pydicom.dataset import Dataset
from pydicom.uid import UID

from core.errors import InputError
from core.io import j2k
from core.io.dicom_frames import FrameGeometry, order_by_projection
from core.io.dicom_headers import (  # noqa: F401 - also the names tests and callers use from core.io.dicom
    _floats,
    _Header,
    _int,
)
from core.io.dicom_source import (  # noqa: F401 - also the names tests and callers use from core.io.dicom
    _ITEM,
    _LONG_VRS,
    _NATIVE,
    _SEQ_DELIM,
)

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


def _sort_and_check(headers: list[_Header]) -> tuple[list[_Header], float, list[str]]:
    """Sort slices along the normal; return them, the slice spacing and warnings."""
    warnings: list[str] = []
    first = headers[0]
    normal = np.cross(first.row_cos, first.col_cos)
    if any(h.position is None for h in headers) and len(headers) > 1:
        return _order_without_positions(headers)
    if len(headers) == 1:
        return list(headers), _thickness(first), warnings
    # at a position held twice, the lower InstanceNumber is kept (not whichever file was listed first)
    headers = sorted(headers, key=lambda h: (_safe_int(h.ds, "InstanceNumber"), h.source.name))
    proj = np.array([float(np.dot(h.position, normal)) for h in headers])  # type: ignore[arg-type]
    headers, proj, warnings = _one_acquisition(headers, proj)
    keep, spacing, more = order_by_projection(proj)
    return [headers[i] for i in keep], spacing, warnings + more


def _order_without_positions(headers: list[_Header]) -> tuple[list[_Header], float, list[str]]:
    """Slices without ImagePositionPatient: ordered by SliceLocation when every slice has one (lowest first, the
    spacing from their differences), else by distinct InstanceNumbers (the head-foot direction then unknown, the
    spacing from SliceThickness); with neither, the order is unknown and the series is refused (stacking the files
    in name order would make a scrambled volume)."""
    locations = [_floats(h.ds, "SliceLocation", 1) for h in headers]
    if all(loc is not None for loc in locations):
        keep, spacing, more = order_by_projection(np.array([loc[0] for loc in locations if loc is not None]))
        return [headers[i] for i in keep], spacing, ["ImagePositionPatient missing: slices ordered by SliceLocation (lowest first), spacing from SliceLocation", *more]
    numbers = [_safe_int(h.ds, "InstanceNumber") for h in headers]
    if len(set(numbers)) < len(numbers):
        raise InputError("DICOM series", headers[0].key or headers[0].source.name,
                         f"has {len(headers)} slices without ImagePositionPatient, SliceLocation or distinct InstanceNumbers: their order is unknown",
                         "re-export the series with ImagePositionPatient (every CT scanner writes it)")
    ordered = [h for _, h in sorted(zip(numbers, headers), key=lambda pair: pair[0])]
    return ordered, _thickness(headers[0]), ["ImagePositionPatient and SliceLocation missing: slices ordered by InstanceNumber (the head-foot direction is not known), spacing from SliceThickness"]


def acquisition_key(ds: Dataset) -> str:
    """Which acquisition of its series an image belongs to: ``AcquisitionNumber/TemporalPositionIdentifier``
    (either may be blank)."""
    return "/".join(str(ds.get(k, "") or "").strip() for k in ("AcquisitionNumber", "TemporalPositionIdentifier"))


def _one_acquisition(headers: list[_Header], proj: np.ndarray) -> tuple[list[_Header], np.ndarray, list[str]]:
    """The slices of one acquisition when several acquisitions of a series (AcquisitionNumber, or
    TemporalPositionIdentifier) share slice positions: a scan repeated in one series, which slice-by-slice
    deduplication would mix into one volume. The one with the most slices is kept (the first on a tie), with a
    warning; acquisitions at different positions (one after the other along the table) are all kept."""
    keys = [acquisition_key(h.ds) for h in headers]
    at: dict[float, set[str]] = {}
    for key, z in zip(keys, np.round(proj, 3).tolist()):
        at.setdefault(z, set()).add(key)
    if all(len(held) < 2 for held in at.values()):
        return headers, proj, []
    groups = sorted(set(keys), key=lambda k: (-keys.count(k), [(0, int(v), "") if v.isdigit() else (1, 0, v)
                                                               for v in k.split("/")]))
    kept = [i for i, k in enumerate(keys) if k == groups[0]]
    names = ", ".join(k.strip("/") or "none" for k in groups)
    warning = (f"{len(groups)} acquisitions share the slice positions of this series (acquisition numbers {names}): "
               f"loaded acquisition {groups[0].strip('/') or 'none'} ({len(kept)} slices), the others left out")
    return [headers[i] for i in kept], proj[kept], [warning]


def _thickness(h: _Header) -> float:
    """The slice spacing of a series without positions (or of one instance): SpacingBetweenSlices, else
    SliceThickness (top-level, else from the functional groups of a multi-frame image), else 1 mm."""
    frames = h.extra.get("frames")
    thickness = _floats(h.ds, "SpacingBetweenSlices", 1) or _floats(h.ds, "SliceThickness", 1)
    if thickness is None and isinstance(frames, FrameGeometry) and frames.thickness is not None:
        thickness = [frames.thickness]
    return abs(float((thickness or [1.0])[0])) or 1.0



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


J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})  # JPEG 2000 Lossless, JPEG 2000


def j2k_direct(h: _Header) -> bool:
    """True when ``h``'s slices can go to OpenJPEG directly (:mod:`core.io.j2k`, outside the GIL)."""
    if h.ts not in J2K_SYNTAXES or h.samples != 1 or h.bits_allocated not in (8, 16, 32):
        return False
    return j2k.available()


def _items(value: bytes) -> list[bytes]:
    """The items of an encapsulated PixelData value (as :func:`_encapsulated_value` returns it): BOT first."""
    out: list[bytes] = []
    pos = 0
    while pos + 8 <= len(value):
        (length,) = struct.unpack("<I", value[pos + 4 : pos + 8])
        out.append(value[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return out


def decode_j2k_into(h: _Header, target: np.ndarray) -> bool:
    """Decode ``h``'s JPEG 2000 frames with OpenJPEG (GIL released) into ``target`` as float32 HU.

    ``target`` has shape (frames, rows, cols). False (``target`` untouched or
    partly written) when the fast path does not apply to this instance: the
    caller then decodes it through pydicom, which gives the same values (or
    the error the user sees). Truncated pixel data raises ``InputError`` here
    as there; so does a codestream that declares another size than Rows x
    Columns (refused after its header is read, before anything is allocated
    for its pixels: pydicom's decoders would decode whatever size it claims).
    """
    raw = h.source.read_from(h.pixel_offset)
    items = _items(_encapsulated_value(raw, h.source.name))
    del raw
    if len(items) < 2:
        return False
    if h.frames == 1:
        streams = [b"".join(items[1:]) if len(items) > 2 else items[1]]
    elif len(items) - 1 == h.frames:  # one fragment per frame
        streams = items[1:]
    else:
        return False
    for k, stream in enumerate(streams):
        try:
            decoded = j2k.decode(stream, h.rows, h.cols, h.signed, max_precision=h.bits_allocated)
        except j2k.J2KSizeMismatch as err:  # refused before anything is decoded (a codestream may claim any size)
            raise InputError("DICOM file", h.source.name, f"holds {err} but Columns x Rows say {h.cols} x {h.rows}", "re-export the series") from None
        except j2k.J2KUnsupported:
            return False
        with decoded:
            _store_j2k(decoded, target[k], h.slope, h.intercept)
    return True


def _store_j2k(decoded: j2k.DecodedJ2K, target: np.ndarray, slope: float, intercept: float) -> None:
    values = np.frombuffer(decoded.buffer(), dtype=decoded.dtype).reshape(decoded.rows, decoded.cols)
    # in float32, as pydicom's int16/uint16 array would be converted (exact for integers below 2**24)
    if slope == 1.0:
        np.add(values, np.float32(intercept), out=target, dtype=np.float32, casting="unsafe")
    else:
        np.multiply(values, np.float32(slope), out=target, dtype=np.float32, casting="unsafe")
        target += np.float32(intercept)


def store_prefetched_j2k(h: _Header, decoded: j2k.DecodedJ2K, target: np.ndarray) -> bool:
    """Write a slice decoded ahead (:class:`core.io.j2k_prefetch.Prefetch`) into ``target`` when it is what ``h`` describes.

    It must be a single-frame JPEG 2000 instance of ``h``'s size and
    signedness, within its BitsAllocated; otherwise False (the caller decodes
    the file itself). ``decoded`` is closed either way.
    """
    with decoded:
        if not (h.frames == 1 and j2k_direct(h) and (decoded.rows, decoded.cols) == (h.rows, h.cols)
                and decoded.signed == h.signed and decoded.precision <= h.bits_allocated):
            return False
        _store_j2k(decoded, target[0], h.slope, h.intercept)
    return True


def _pixels(h: _Header) -> np.ndarray:
    raw = h.source.read_from(h.pixel_offset)
    arr = _native_pixels(h, raw) if h.ts in _NATIVE else _compressed_pixels(h, raw)
    if h.samples != 1:
        raise InputError("DICOM file", h.source.name, f"has {h.samples} samples per pixel (colour), not a CT image", "load a greyscale CT series")
    return arr.reshape(h.frames, h.rows, h.cols)


