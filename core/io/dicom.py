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
   UID is blank. The largest CT series (or, without one, the largest series) is
   taken unless ``series=`` names one, acquired (ImageType ORIGINAL) series
   before DERIVED ones (a MIP or a reformat); another modality gets a warning.
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
``core/io/volume.py``). A series that repeats an acquisition at the same
positions loads one acquisition whole (the one with the most slices), never a
slice-by-slice mix. Slices whose positions step off their normal (a tilted
gantry) are shifted in-plane onto one regular grid, with a warning. Oblique
data are snapped to the nearest patient axes (with a warning), not resampled.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from core.errors import InputError
from core.io.dicom_headers import (  # noqa: F401 - also the names tests and callers use from core.io.dicom
    PADDING_HU,
    _Header,
    _map,
    _read_header,
    _Skip,
)
from core.io.dicom_pixels import (  # noqa: F401 - also the names tests and callers use from core.io.dicom
    _pixels,
    acquisition_key,
    _sort_and_check,
    decode_j2k_into,
    j2k_direct,
    store_prefetched_j2k,
    to_convention,
)
from core.io.dicom_source import (  # noqa: F401 - also the names tests and callers use from core.io.dicom
    _NATIVE,
    DECODE_WORKERS,
    FORK_DECODE,
    FORK_MIN_PIXELS,
    MAX_DECODED_BYTES,
    MAX_FILE_BYTES,
    DicomSource,
    note_pydicom_warnings,
    pydicom_warnings,
    sources_from_folder,
)
from core.io.contrast import dicom_contrast, with_record
from core.io.dicom_frames import FrameGeometry, frame_order, inplane_shifts, shift_slices
from core.io.fork_decode import decode_in_processes, shared_empty
from core.io.j2k_prefetch import Prefetch
from core.io.study_date import day_of
from core.io.volume import SeriesInfo, Volume, hu_scale_warning, spacing_warning

# the public names of the DICOM loader live in its submodules; callers keep importing them from here
from core.io.dicom_headers import gate_fingerprint as gate_fingerprint
from core.io.dicom_source import looks_like_dicom as looks_like_dicom
from core.io.dicom_source import meta_transfer_syntax as meta_transfer_syntax
from core.io.dicom_source import undeflate_dicom as undeflate_dicom



def _other_threads_alive() -> bool:
    """True when this process runs other threads (a server): forking it then is unsafe, decoding stays on threads."""
    return threading.active_count() != 1


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
    if not FORK_DECODE or not hasattr(os, "fork") or _other_threads_alive():
        return 1
    if len(ordered) < 4 or any(h.ts in _NATIVE for h in ordered):  # uncompressed: numpy threads already run in parallel
        return 1
    if all(j2k_direct(h) for h in ordered):  # JPEG 2000 through ctypes releases the GIL: threads run in parallel
        return 1
    if sum(h.rows * h.cols * h.frames for h in ordered) < FORK_MIN_PIXELS:  # a fork costs ~7 ms: not for tiny series
        return 1
    return max(1, min(DECODE_WORKERS, _usable_cpus(), len(ordered) // 2))


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


def _maybe_ct(modality: str) -> bool:
    """True for a CT series, and for one that names no modality (a converted or anonymised export)."""
    return modality.strip().upper() in ("CT", "")


def _derived(ds: Any) -> bool:
    """True when ImageType's first value is DERIVED (a reformat, a MIP or another image computed from the acquired
    ones: its values need not be the scanner's HU at each voxel)."""
    value = ds.get("ImageType", None)
    values = [value] if isinstance(value, str) else list(value or [])
    return bool(values) and str(values[0]).strip().upper() == "DERIVED"


def _series_info(key: str, hs: list[_Header]) -> SeriesInfo:
    first = hs[0].ds
    return SeriesInfo(
        key=key,
        n_instances=sum(h.frames for h in hs),
        modality=str(first.get("Modality", "") or ""),
        rows=hs[0].rows,
        cols=hs[0].cols,
        description_present=bool(str(first.get("SeriesDescription", "") or "").strip()),
        derived=_derived(first),
        contrast=dicom_contrast(first)[0],
    )


def load_dicom_sources(
    sources: Sequence[DicomSource],
    series: str | None = None,
    *,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    label: str = "study",
    prefetched: Prefetch | None = None,
) -> Volume:
    """Load the largest CT (or the chosen) series of ``sources`` into a Volume.

    pydicom's own warnings (invalid values, unknown character sets, ...) are
    collected and summarised in ``Volume.warnings`` instead of being printed: per
    thread, from pydicom's logger (``pydicom_warnings``), so overlapping loads
    never touch the process's warning filters.
    """
    with pydicom_warnings() as caught:
        volume = _load_dicom_sources(sources, series, max_decoded_bytes=max_decoded_bytes, label=label, prefetched=prefetched)
    messages = sorted({" ".join(str(m).split())[:100] for m in caught})
    if messages:
        volume.warnings.append(f"{len(messages)} DICOM reading warning(s), e.g. {messages[0]}")
    return volume


def _load_dicom_sources(
    sources: Sequence[DicomSource],
    series: str | None,
    *,
    max_decoded_bytes: int,
    label: str,
    prefetched: Prefetch | None = None,
) -> Volume:
    scan = scan_headers(sources)
    headers, skipped = scan.headers, scan.skipped
    if not headers:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        zips = [s.name for s in sources if s.name.lower().endswith(".zip")]
        if zips:  # a folder that holds the study zipped: the zip is the study
            raise InputError("study", label, f"holds no readable DICOM image but a zip ({', '.join(zips[:3])})",
                             f"point at the zip itself ({zips[0]}) or unzip it into this folder")
        niftis = [s.name for s in sources if s.name.lower().endswith((".nii", ".nii.gz"))]
        if niftis:  # a folder that holds a NIfTI volume: the file is the study
            raise InputError("study", label, f"holds no readable DICOM image but NIfTI ({', '.join(niftis[:3])})",
                             f"point at the NIfTI file itself ({niftis[0]})")
        raise InputError("study", label, f"holds no readable DICOM image ({reasons})", "point at a DICOM series (files with pixel data), a zip of one, or a NIfTI file")
    groups = group_series(headers)
    infos = [_series_info(k, hs) for k, hs in groups.items()]
    # a CT series (or one that names no modality) before any other (a PET/CT or MR export), an acquired (ORIGINAL)
    # one before a DERIVED one (a MIP or a reformat, which may hold more images): then the largest
    infos.sort(key=lambda s: (not _maybe_ct(s.modality), s.derived, -s.n_instances, s.key))
    if series is None:
        key = infos[0].key
    else:
        matches = [i.key for i in infos if i.key == series] or [i.key for i in infos if i.key.startswith(series)]
        if len(matches) != 1:
            problem = "matches several series" if matches else "is not a series of this study"
            raise InputError("series", series, problem, f"choose one of: {', '.join(i.key for i in infos)}")
        key = matches[0]
    chosen = groups[key]
    info = next(i for i in infos if i.key == key)
    warnings: list[str] = []
    if skipped:
        warnings.append("ignored files: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    if len(infos) > 1:
        warnings.append(f"{len(infos)} series found; loaded {key} ({info.n_instances} images)")
    if info.derived:
        warnings.append("the loaded series is DERIVED (ImageType): a reformat or projection (MIP), not the acquired "
                        "slices; its values may not be the scanner's HU at each voxel")
    modality = info.modality
    if not _maybe_ct(modality):
        warnings.append(f"modality {modality}, not CT: the values are read as Hounsfield units, which they are not; "
                        "the models, windows and checks assume CT")
    # one geometry per volume: keep the commonest matrix size / orientation / pixel spacing
    shapes: dict[tuple, list[_Header]] = {}
    for h in chosen:
        spacing = tuple(np.round(h.pixel_spacing, 4)) if h.frames == 1 else ()  # an enhanced image: per frame
        shapes.setdefault((h.rows, h.cols, tuple(np.round(np.r_[h.row_cos, h.col_cos], 3)), spacing), []).append(h)
    if len(shapes) > 1:
        best = max(shapes.values(), key=len)
        warnings.append(f"{len(chosen) - len(best)} image(s) with another size, pixel spacing or orientation left out of "
                        "the series")
        chosen = best
    multi = [h for h in chosen if h.frames > 1]
    if multi and len(chosen) > 1:
        raise InputError("series", key, "mixes multi-frame and single-frame images", "export the series as one kind")
    ordered, slice_spacing, geo_warnings = _sort_and_check(chosen)
    warnings.extend(geo_warnings)
    acquisitions = {acquisition_key(h.ds) for h in chosen}
    # the loaded acquisition of a series that repeats one: a DICOM export refers to its instances only
    acquisition = acquisition_key(ordered[0].ds) if len(acquisitions) > 1 and len({acquisition_key(h.ds) for h in ordered}) == 1 else ""
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

    direct = [j2k_direct(h) for h in ordered]
    if prefetched is not None and not all(direct):
        prefetched.close()  # its threads end here: the other codecs may decode in forked processes
    forked = _fork_workers(ordered)
    # with decoding processes, the output lives in shared memory they write into (same size, same cap)
    out = shared_empty((n_slices, first.rows, first.cols)) if forked > 1 else np.empty((n_slices, first.rows, first.cols), dtype=np.float32)
    starts = np.cumsum([0] + [h.frames for h in ordered])

    def decode_into(h: _Header, i: int, target: np.ndarray) -> None:
        if direct[i]:  # OpenJPEG outside the GIL: threads decode in parallel
            early = prefetched.take(os.path.abspath(h.source.path), h.pixel_offset) if prefetched and h.source.path else None
            if early is not None and store_prefetched_j2k(h, early, target):
                return
            if decode_j2k_into(h, target):
                return
        arr = _pixels(h)
        if h.slope == 1.0:
            np.add(arr, np.float32(h.intercept), out=target, casting="unsafe")
        else:
            np.multiply(arr, np.float32(h.slope), out=target, casting="unsafe")
            target += np.float32(h.intercept)

    def decode(i: int) -> None:
        h = ordered[i]
        target = out[starts[i] : starts[i + 1]]
        decode_into(h, i, target)
        g = h.extra.get("frames")
        if isinstance(g, FrameGeometry) and g.rescale_varies:  # decoded with slope 1, intercept 0: now frame by frame
            target *= g.slopes.astype(np.float32)[:, None, None]  # type: ignore[union-attr]
            target += g.intercepts.astype(np.float32)[:, None, None]  # type: ignore[union-attr]
        padding = h.extra.get("padding_hu")
        if padding is not None:  # outside the scanner's field of view: air, not -2000 or -3024 HU
            lo, hi = padding  # type: ignore[misc]
            target[(target >= lo) & (target <= hi)] = PADDING_HU

    if forked > 1:
        decode_in_processes(decode, len(ordered), forked)
    elif prefetched is not None and all(direct):
        # beside the threads decoding ahead, this thread decodes every slice none of them has started (one at a
        # time, so they keep taking the others), then collects theirs: as many decoders as cores, few hand-overs
        later: list[int] = []
        for i, h in enumerate(ordered):
            if h.source.path is not None and prefetched.reserve(os.path.abspath(h.source.path)) == "busy":
                later.append(i)  # a thread is decoding it: collected at the end
            else:
                decode(i)  # not started (decoded here) or decoded ahead (stored and freed now)
        for i in later:
            decode(i)
    else:
        _map(decode, list(range(len(ordered))), DECODE_WORKERS)

    row_cos, col_cos = first.row_cos, first.col_cos
    origin = first.position if first.position is not None else np.zeros(3)
    positions = np.array([h.position for h in ordered]) if all(h.position is not None and h.frames == 1 for h in ordered) else None
    if first.frames > 1:
        placed = frame_order([h.extra.get("frames") for h in ordered], [h.frames for h in ordered], np.r_[row_cos, col_cos])  # type: ignore[misc]
        if placed is None:
            warnings.append("multi-frame image: frames stacked in file order with SliceThickness/SpacingBetweenSlices spacing")
        else:  # an enhanced image: every frame at its own PlanePositionSequence position
            if not np.array_equal(placed.index, np.arange(n_slices)):
                out = np.take(out, placed.index, axis=0)
            row_cos, col_cos, origin = placed.row_cos, placed.col_cos, placed.origin
            slice_spacing = placed.spacing if len(placed.index) > 1 else slice_spacing
            warnings.extend(placed.warnings)
            positions = np.concatenate([h.extra["frames"].positions for h in ordered])[placed.index]  # type: ignore[union-attr]
    row_sp, col_sp = first.pixel_spacing
    tilt = inplane_shifts(positions, row_cos, col_cos, (row_sp, col_sp)) if positions is not None else None
    if tilt is not None:  # a tilted gantry: slices stacked along the table, not along their normal
        shift_slices(out, tilt, DECODE_WORKERS)
        warnings.append(tilt.warning())
    if not first.extra.get("has_spacing"):
        warnings.append("PixelSpacing missing: 1 mm assumed")
    normal = np.cross(row_cos, col_cos)
    affine = np.eye(4)
    affine[:3, 0] = normal * slice_spacing
    affine[:3, 1] = col_cos * row_sp  # moving down a row follows the column direction cosine
    affine[:3, 2] = row_cos * col_sp
    affine[:3, 3] = origin
    hu, conv_affine, orient_warnings = to_convention(out, affine)
    warnings.extend(orient_warnings)
    hu = np.ascontiguousarray(hu)
    scale = hu_scale_warning(hu, modality)
    warnings.extend([scale] if scale else [])
    spacing = tuple(round(float(np.linalg.norm(conv_affine[:3, i])), 6) for i in range(3))
    odd = spacing_warning(spacing)  # type: ignore[arg-type]
    warnings.extend([odd] if odd else [])
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
        "gantry_tilt_deg": f"{tilt.tilt_deg:.2f}" if tilt is not None else "",
        "acquisition": acquisition,
    }
    meta = with_record(meta, *dicom_contrast(ds))
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
        study_date=day_of(ds),  # StudyDate, else SeriesDate, else AcquisitionDate
    )


def load_dicom(
    path: str | Path, series: str | None = None, *, max_decoded_bytes: int = MAX_DECODED_BYTES, prefetched: Prefetch | None = None
) -> Volume:
    """A DICOM file or a folder (searched recursively) -> Volume.

    ``prefetched``: the folder's JPEG 2000 slices already being decoded
    (:func:`core.io.j2k_prefetch.prefetch`, started before this module was imported);
    each is used only where this loader's own header parse agrees with it.
    """
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
    return load_dicom_sources(sources, series, max_decoded_bytes=max_decoded_bytes, label=str(path), prefetched=prefetched)


def load_dicom_members(members: Sequence[tuple[str, bytes]], series: str | None = None, *, label: str = "zip") -> Volume:
    """In-memory files (e.g. zip members) -> Volume."""
    sources = [DicomSource(name=name, data=data) for name, data in members]
    return load_dicom_sources(sources, series, label=label)
