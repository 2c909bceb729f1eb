"""NIfTI-1/2 (``.nii`` or ``.nii.gz``, from a path or bytes) -> :class:`~core.io.volume.Volume`.

The file is read into memory (gzip decompressed in chunks up to a cap), parsed
with nibabel, checked (finite voxels, usable spacing, an invertible finite
affine) and reoriented with ``nibabel.orientations`` to the project convention
(``core/io/volume.py``): axis 0 -> superior, axis 1 -> posterior, axis 2 ->
patient left, i.e. axis codes ("S", "P", "L").
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.io.volume import Volume

MAX_NIFTI_BYTES = 3 * 1024**3  # uncompressed file size
MAX_VOXELS = 800 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
CONVENTION_AXCODES = ("S", "P", "L")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# nibabel logs header "fixes" to stderr; every problem we care about becomes an InputError instead
logging.getLogger("nibabel.global").setLevel(logging.ERROR)


def nifti_header_kind(head: bytes) -> int:
    """1 or 2 when ``head`` (uncompressed first bytes) is a NIfTI-1/2 header, else 0."""
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return 1
    if len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
        return 2
    return 0


def gunzip_bounded(data: bytes, name: str, limit: int = MAX_NIFTI_BYTES) -> bytes:
    """Decompress gzip ``data`` in chunks, refusing output larger than ``limit``."""
    inflater = zlib.decompressobj(wbits=31)
    parts: list[bytes] = []
    total = 0
    view = memoryview(data)
    step = 1 << 20
    try:
        for start in range(0, len(data), step):
            chunk = view[start : start + step]
            while chunk:
                piece = inflater.decompress(chunk, limit + 1 - total)
                total += len(piece)
                parts.append(piece)
                if total > limit:
                    raise InputError("NIfTI file", name, f"expands beyond {limit} bytes (limit)", "load a smaller volume")
                chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if inflater.eof:
                break
        parts.append(inflater.flush())
    except zlib.error as err:
        raise InputError("NIfTI file", name, f"is not valid gzip data ({err})", "re-save the file as .nii or .nii.gz") from None
    if not inflater.eof:
        raise InputError("NIfTI file", name, "is truncated (gzip stream cut off)", "re-copy or re-export the file")
    return b"".join(parts)


def load_nifti_bytes(data: bytes, name: str = "volume.nii.gz") -> Volume:
    """Parse NIfTI bytes (gzip-compressed or not) into a Volume in the project convention.

    Library warnings (nibabel header fixes, numpy on broken affines) are kept
    off stderr; every problem that matters is an ``InputError``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load_nifti_bytes(data, name)


def _load_nifti_bytes(data: bytes, name: str) -> Volume:
    if data[:2] == GZIP_MAGIC:
        data = gunzip_bounded(data, name)
    kind = nifti_header_kind(data[:540])
    if kind == 0:
        raise InputError("NIfTI file", name, "has no NIfTI-1/2 header", "load a .nii or .nii.gz file (or a DICOM series)")
    import nibabel as nib  # lazily: nibabel takes ~0.4 s to import
    from nibabel import orientations as ornt

    cls = nib.Nifti1Image if kind == 1 else nib.Nifti2Image
    try:
        # the header as written: nibabel's checks would silently "fix" zero pixdim
        raw_header = cls.header_class.from_fileobj(io.BytesIO(data[:540]), check=False)
        raw_zooms = np.asarray(raw_header["pixdim"][1:4], dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for broken headers
        raise InputError("NIfTI file", name, f"has a broken header ({type(err).__name__}: {_first_line(err)})", "re-export the file") from None
    dims = int(raw_header["dim"][0])
    if dims >= 1 and (not np.all(np.isfinite(raw_zooms[: min(dims, 3)])) or np.any(raw_zooms[: min(dims, 3)] == 0)):
        raise InputError("NIfTI pixdim", name, f"voxel spacing {raw_zooms.tolist()} is not positive and finite", "fix pixdim[1:4] in the header")
    try:
        img = cls.from_bytes(data)
        shape = tuple(int(v) for v in img.shape)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for broken headers
        raise InputError("NIfTI file", name, f"has a broken header ({type(err).__name__}: {_first_line(err)})", "re-export the file") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError("NIfTI file", name, f"has shape {list(shape)}, not a 3-D volume", "load a single 3-D CT volume")
    if min(shape) < 1:
        raise InputError("NIfTI file", name, f"has an empty dimension (shape {list(shape)})", "re-export the file")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise InputError("NIfTI file", name, f"has {int(np.prod(shape))} voxels (limit {MAX_VOXELS})", "load a smaller volume")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError("NIfTI pixdim", name, f"voxel spacing {zooms.tolist()} is not positive and finite", "fix pixdim[1:4] in the header")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError("NIfTI affine", name, "contains NaN or inf", "fix the sform/qform of the file")
    det = float(np.linalg.det(affine[:3, :3]))
    if not np.isfinite(det) or abs(det) < 1e-6 * float(np.prod(zooms)):
        raise InputError("NIfTI affine", name, f"is singular (determinant {det:.3g})", "fix the sform/qform of the file")
    try:
        hu = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as err:  # noqa: BLE001 - truncated data, bad dtype
        raise InputError("NIfTI file", name, f"voxel data cannot be read ({type(err).__name__}: {_first_line(err)})", "re-copy or re-export the file") from None
    finite = np.isfinite(hu)
    if not finite.all():
        n_nan = int(np.isnan(hu).sum())
        n_inf = int(hu.size - finite.sum()) - n_nan
        raise InputError("NIfTI voxels", name, f"{n_nan} NaN and {n_inf} inf values", "replace non-finite voxels (e.g. with -1024 HU) before loading")

    current = ornt.io_orientation(affine)
    transform = ornt.ornt_transform(current, ornt.axcodes2ornt(CONVENTION_AXCODES))
    out = ornt.apply_orientation(hu, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, shape)
    lps = _RAS_TO_LPS @ new_affine
    spacing = tuple(float(v) for v in np.linalg.norm(lps[:3, :3], axis=0))
    notes: list[str] = []
    directions = lps[:3, :3] / np.asarray(spacing)
    off_axis = float(np.degrees(np.arccos(np.clip(np.min(np.max(np.abs(directions), axis=0)), 0.0, 1.0))))
    if off_axis > 0.5:
        notes.append(f"oblique orientation ({off_axis:.1f} degrees off the patient axes): axes snapped to the nearest patient axes, not resampled")
    header = img.header
    meta = {
        "nifti_version": str(kind),
        "datatype": str(header.get_data_dtype()),
        "source_axcodes": "".join(nib.aff2axcodes(affine)),
    }
    return Volume(
        hu=np.ascontiguousarray(out, dtype=np.float32),
        spacing_mm=spacing,  # type: ignore[arg-type]
        affine=lps,
        modality="CT",
        format="nifti",
        series=[],
        phi=[],
        warnings=notes,
        meta=meta,
    )


def load_nifti(path: str | Path) -> Volume:
    """A ``.nii`` / ``.nii.gz`` file on disk -> Volume."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_NIFTI_BYTES:
        raise InputError("NIfTI file", str(path), f"is {size} bytes (limit {MAX_NIFTI_BYTES})", "load a smaller volume")
    return load_nifti_bytes(path.read_bytes(), path.name)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:120]
