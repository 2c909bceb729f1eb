"""A ``Volume`` (and an optional map on its voxel grid) as NIfTI bytes for the browser's CT viewer.

The viewer (NiiVue) reads the orientation from the NIfTI affine, so the bytes
carry the study's true geometry. ``Volume.affine`` maps ``(slice, row, col)``
to LPS millimetres; the written image has axes ``(i, j, k)`` and an affine to
RAS millimetres, reordered to the closest canonical RAS+ (``i`` runs towards
the patient's right, ``j`` towards anterior, ``k`` towards superior for the axis-aligned studies the loaders produce; an oblique study
keeps its rotation in the affine, since ``nibabel.as_closest_canonical`` only
permutes and flips axes). The viewer's orientation letters then follow.

Voxel values are HU: int16 when every voxel is a whole number inside the int16
range (what scanners store), float32 otherwise. Maps are float32.
"""

from __future__ import annotations

import gzip
import io

import numpy as np

from core.errors import InputError
from core.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# (i, j, k) = (col, row, slice): voxel (i, j, k, 1) -> (slice, row, col, 1)
IJK_TO_SRC = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
GZIP_LEVEL = 1  # the bytes go to a browser on the same network: speed over size


def nifti_affine(volume: Volume) -> np.ndarray:
    """The RAS affine of ``volume.hu.transpose(2, 1, 0)`` (axes col, row, slice)."""
    affine = np.asarray(volume.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError("affine", affine.shape, "must be a finite 4x4 matrix", "load the study with core.io.study.load_study")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        raise InputError("affine", "singular", "has a zero determinant", "load the study with core.io.study.load_study")
    return LPS_TO_RAS @ affine @ IJK_TO_SRC


def _grid_image(array: np.ndarray, volume: Volume, *, hu: bool, as_source: bool = False):  # type: ignore[no-untyped-def]
    import nibabel as nib
    from nibabel import orientations as ornt

    data = np.asarray(array)
    if data.ndim != 3 or tuple(data.shape) != volume.shape:
        raise InputError("map", tuple(data.shape), f"must have the volume's shape {volume.shape} [slices, rows, cols]",
                         "compute the map on the case's own voxel grid")
    if not np.all(np.isfinite(data)):
        raise InputError("map" if not hu else "volume", "NaN/inf", "contains non-finite values", "replace them first")
    if hu and np.all(np.mod(data, 1) == 0) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), nifti_affine(volume))
    img = nib.as_closest_canonical(img)
    codes = volume.meta.get("source_axcodes") if as_source and volume.format == "nifti" else None
    if codes and len(codes) == 3:  # the NIfTI study's own axis order: the map lies voxel for voxel on its array
        img = img.as_reoriented(ornt.ornt_transform(ornt.io_orientation(img.affine), ornt.axcodes2ornt(tuple(codes))))
    header = img.header
    header.set_xyzt_units("mm")
    header.set_sform(img.affine, code=1)  # scanner
    header.set_qform(img.affine, code=1)
    if hu:
        header["descrip"] = b"CT HU"
    low, high = float(np.min(data)), float(np.max(data))
    header["cal_min"], header["cal_max"] = low, high
    return img


def _to_bytes(img) -> bytes:  # type: ignore[no-untyped-def]
    import nibabel as nib

    raw = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(file_map)
    return gzip.compress(raw.getvalue(), compresslevel=GZIP_LEVEL, mtime=0)


def volume_to_nifti(volume: Volume) -> bytes:
    """``volume`` as gzipped NIfTI-1 bytes in HU with its true affine (``.nii.gz``)."""
    return _to_bytes(_grid_image(volume.hu, volume, hu=True))


def map_to_nifti(volume: Volume, values: np.ndarray, *, unit_uint8: bool = False, as_source: bool = False) -> bytes:
    """A ``[slices, rows, cols]`` map on ``volume``'s grid as NIfTI bytes with the same geometry.

    ``as_source``: for a study read from NIfTI, in that file's own axis order (``meta["source_axcodes"]``), so
    that the map's array and affine match the study's (a file to keep beside it; the viewer's copy is RAS+).

    float32 and gzipped by default. ``unit_uint8``: a map scaled to 0..1 (``core.figures.normalize_map``)
    stored as uint8 with ``scl_slope = 1/255`` (steps of 0.004, what a colormap shows) and not gzipped:
    a quarter of the float bytes and nothing for the browser to inflate, so the overlay appears sooner.
    """
    if not unit_uint8:
        return _to_bytes(_grid_image(values, volume, hu=False, as_source=as_source))
    arr = np.asarray(values, dtype=np.float32)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1):
        raise InputError("map", f"range {np.nanmin(arr):g}..{np.nanmax(arr):g}", "must lie in 0..1 for unit_uint8",
                         "scale it with core.figures.normalize_map first")
    img = _grid_image(np.rint(arr * 255.0).astype(np.float32), volume, hu=False)
    import nibabel as nib

    out = nib.Nifti1Image(np.asarray(img.dataobj).astype(np.uint8), img.affine, img.header)
    out.header.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0 / 255.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0.0, 1.0
    raw = io.BytesIO()
    out.to_file_map(nib.Nifti1Image.make_file_map({"image": raw, "header": raw}))
    return raw.getvalue()


def nifti_to_grid(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read bytes written here back as ``(values [slices, rows, cols], LPS affine of (slice, row, col))``.

    The inverse of :func:`volume_to_nifti` / :func:`map_to_nifti`, for tests and checks.
    """
    import nibabel as nib
    from nibabel import orientations as ornt

    img = nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    # back to (col R->L, row A->P, slice I->S), i.e. LPS axis codes, then to (slice, row, col)
    current = ornt.io_orientation(img.affine)
    target = ornt.axcodes2ornt(("L", "P", "S"))
    transform = ornt.ornt_transform(current, target)
    values = ornt.apply_orientation(np.asarray(img.dataobj), transform)
    affine = img.affine @ ornt.inv_ornt_aff(transform, img.shape)
    lps = LPS_TO_RAS @ affine @ IJK_TO_SRC  # IJK_TO_SRC is its own inverse (a swap of i and k)
    return np.ascontiguousarray(values.transpose(2, 1, 0)), lps


def index_to_ras_mm(volume: Volume, index: tuple[int, int, int]) -> list[float]:
    """RAS millimetres (the viewer's coordinates) of voxel ``(slice, row, col)`` of ``volume``."""
    s, r, c = (int(v) for v in index)
    for name, v, n in (("slice", s, volume.shape[0]), ("row", r, volume.shape[1]), ("col", c, volume.shape[2])):
        if not 0 <= v < n:
            raise InputError(name, v, f"must be in 0..{n - 1}", "pick a voxel inside the volume")
    lps = np.asarray(volume.affine, dtype=np.float64) @ np.array([s, r, c, 1.0])
    return [float(-lps[0]), float(-lps[1]), float(lps[2])]


def ras_mm_to_index(volume: Volume, mm: list[float] | tuple[float, ...]) -> tuple[int, int, int]:
    """The voxel ``(slice, row, col)`` of ``volume`` nearest to RAS millimetres ``mm``, clipped into the volume."""
    values = [float(v) for v in list(mm)[:3]]
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise InputError("position", mm, "must be three finite millimetre coordinates", "send [x, y, z] in RAS mm")
    lps = np.array([-values[0], -values[1], values[2], 1.0])
    idx = np.linalg.solve(np.asarray(volume.affine, dtype=np.float64), lps)[:3]
    return tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(idx, volume.shape))  # type: ignore[return-value]
