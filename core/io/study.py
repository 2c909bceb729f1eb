"""One entry point for studies: a path or uploaded bytes -> :class:`~core.io.volume.Volume`.

The format is decided by content, not by the file name: a zip (``PK``), a
gzip stream (``.nii.gz``), a NIfTI header, a DICOM file (``DICM`` preamble or
a raw dataset), or a folder of DICOM files. Zips are read in memory by
:mod:`core.io.safezip`; nothing from an upload is written to disk.

``inspect_study`` gives the ``inspect --json`` object.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from core.errors import InputError

if TYPE_CHECKING:  # numpy and the loaders are imported when used: a folder of JPEG 2000 starts decoding first
    import numpy as np

    from core.io.volume import Volume

MAX_UPLOAD_BYTES = 2 * 1024**3  # one uploaded file or zip
_HEAD = 544


def describe_head(head: bytes) -> str:
    """What a file that is no study is, from its first bytes (the problem of an ``InputError``)."""
    if not head:
        return "is empty (0 bytes)"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head[:256])
    if printable >= 0.95 * min(len(head), 256):
        return "is a text file, not a DICOM, NIfTI or zip file"
    return "is not a DICOM, NIfTI or zip file (unknown content)"


def _kind(head: bytes) -> str:
    from core.io.dicom import looks_like_dicom
    from core.io.nifti import GZIP_MAGIC, nifti_header_kind
    from core.io.safezip import is_zip

    if is_zip(head):
        return "zip"
    if head[:2] == GZIP_MAGIC or nifti_header_kind(head):
        return "nifti"
    if looks_like_dicom(head):
        return "dicom"
    return ""


def _prefetch_threads() -> int:
    """One core fewer than usable: the importing thread keeps one (its imports are the longer path on 2 cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def _idle_blas_threads_sleep() -> None:
    """Before a process's first numpy import: OpenBLAS's idle worker threads sleep at once instead of spinning.

    numpy's OpenBLAS starts its worker threads at import and lets each
    busy-wait for work for about 0.1 s (``OPENBLAS_THREAD_TIMEOUT``, 2^28
    cycles by default): about 0.045 CPU s taken from the JPEG 2000 decoding
    threads beside the import, 0.04 s of a 0.4 s load on two cores. Only when
    numpy is not imported yet (a command-line process; the app imported it long
    before) and the variable is not set already; nothing else in numpy changes.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def load_study(path: str | Path, series: str | None = None, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Volume:
    """Load a DICOM file, a DICOM folder (recursive), a zip of either, or a NIfTI file."""
    _idle_blas_threads_sleep()
    path = Path(path)
    if not path.exists():
        raise InputError("study", str(path), "does not exist", "check the path (a DICOM file or folder, a zip, or a .nii/.nii.gz file)")
    if path.is_dir():
        # JPEG 2000 slices start decoding on threads (GIL released) while the DICOM loader and pydicom import
        from core.io.j2k_prefetch import prefetch

        early = prefetch(str(path), workers=_prefetch_threads())
        try:
            from core.io.dicom import load_dicom

            return load_dicom(path, series, prefetched=early)
        finally:
            if early is not None:
                early.close()
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError("study", str(path), f"is {size} bytes (limit {max_bytes})", "load a smaller study or raise the limit")
    with open(path, "rb") as fh:
        head = fh.read(_HEAD)
    kind = _kind(head)
    if kind == "zip":
        return _load_zip(path.read_bytes(), str(path), series)
    if kind == "nifti":
        from core.io.nifti import load_nifti

        _no_series(series, "NIfTI")
        return load_nifti(path)
    if kind == "dicom":
        from core.io.dicom import load_dicom

        return load_dicom(path, series)
    raise InputError("study", str(path), describe_head(head), "load a DICOM file or folder, a zip of a DICOM series, or a .nii/.nii.gz file")


def load_study_bytes(data: bytes, name: str, series: str | None = None, *, max_bytes: int = MAX_UPLOAD_BYTES) -> Volume:
    """Load an upload held in memory (zip, single DICOM file, .nii or .nii.gz)."""
    label = PurePosixPath(str(name).replace("\\", "/")).name or "upload"
    if len(data) > max_bytes:
        raise InputError("upload", label, f"is {len(data)} bytes (limit {max_bytes})", "upload a smaller study")
    head = bytes(data[:_HEAD])
    kind = _kind(head)
    if kind == "zip":
        return _load_zip(data, label, series)
    if kind == "nifti":
        from core.io.nifti import load_nifti_bytes

        _no_series(series, "NIfTI")
        return load_nifti_bytes(bytes(data), label)
    if kind == "dicom":
        from core.io.dicom import load_dicom_members

        return load_dicom_members([(label, bytes(data))], series, label=label)
    raise InputError("upload", label, describe_head(head), "upload a zip of a DICOM series, a .dcm file, or a .nii/.nii.gz file")


def _no_series(series: str | None, what: str) -> None:
    if series is not None:
        raise InputError("series", series, f"was given but a {what} file holds one volume", "leave out --series")


def _load_zip(data: bytes, label: str, series: str | None) -> Volume:
    from core.io.safezip import read_zip

    members = read_zip(data, label=label)
    nifti = [m for m in members if _kind(m.data[:_HEAD]) == "nifti"]
    dicom_like = [m for m in members if m not in nifti]
    if nifti and not any(_kind(m.data[:_HEAD]) == "dicom" for m in dicom_like):
        if len(nifti) > 1:
            names = ", ".join(m.name for m in nifti[:5])
            raise InputError("zip", label, f"holds {len(nifti)} NIfTI files ({names})", "zip one volume per upload")
        from core.io.nifti import load_nifti_bytes

        _no_series(series, "NIfTI")
        return load_nifti_bytes(nifti[0].data, nifti[0].name)
    from core.io.dicom import load_dicom_members
    from core.io.nifti import nifti_header_phi, nifti_prefix

    volume = load_dicom_members([(m.name, m.data) for m in dicom_like], series, label=label)
    # NIfTI files beside the series are not loaded, but their header text is gated like the rest
    extra = {key for m in nifti for key in nifti_header_phi(nifti_prefix(m.data, m.name))}
    if extra:
        volume.phi = sorted(set(volume.phi) | extra)
    return volume


def hu_stats(hu: np.ndarray) -> tuple[float, float, float]:
    """(min, max, mean) of a volume, in slabs on a few threads (numpy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    if hu.size == 0:
        raise InputError("volume", list(hu.shape), "is empty", "load a study with at least one voxel")
    n = hu.shape[0]
    workers = min(4, os.cpu_count() or 1, n)

    def slab(bounds: tuple[int, int]) -> tuple[float, float, float]:
        block = hu[bounds[0] : bounds[1]]
        return float(block.min()), float(block.max()), float(block.sum(dtype=np.float64))

    edges = np.linspace(0, n, workers + 1).astype(int)
    parts = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    if len(parts) == 1:
        results = [slab(parts[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            results = list(pool.map(slab, parts))
    return min(r[0] for r in results), max(r[1] for r in results), sum(r[2] for r in results) / hu.size


def summarize_volume(volume: Volume) -> dict[str, Any]:
    """The ``inspect --json`` object of a loaded volume (plus ``series`` and ``warnings``)."""
    hu_min, hu_max, hu_mean = hu_stats(volume.hu)
    return {
        "format": volume.format,
        "modality": volume.modality,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(v), 6) for v in volume.spacing_mm],
        "hu_min": hu_min,
        "hu_max": hu_max,
        "hu_mean": round(hu_mean, 4),
        "n_series": volume.n_series,
        "phi": list(volume.phi),
        "burned_in": bool(volume.burned_in),
        "burned_in_reasons": list(volume.burned_in),
        "series": [
            {"key": s.key, "n_instances": s.n_instances, "modality": s.modality, "rows": s.rows, "cols": s.cols,
             "derived": s.derived, "contrast": s.contrast or None}
            for s in volume.series
        ] or [  # a NIfTI file: its one volume (n_series 1), which records neither derivation nor series UID
            {"key": "volume", "n_instances": 1, "modality": volume.modality, "rows": volume.shape[1],
             "cols": volume.shape[2], "derived": None, "contrast": volume.meta.get("contrast") or None}
        ],
        # "yes" / "no" as the header records it (core.io.contrast), None when it records nothing
        "contrast": volume.meta.get("contrast") or None,
        "contrast_source": volume.meta.get("contrast_source") or None,
        "warnings": list(volume.warnings),
    }


def inspect_study(path: str | Path, series: str | None = None) -> dict[str, Any]:
    """Load a study and return format, modality, shape, spacing, HU range/mean, series count and PHI keywords."""
    return summarize_volume(load_study(path, series))
