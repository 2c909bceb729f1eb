"""NIfTI-1/2 (``.nii`` or ``.nii.gz``, from a path or bytes) -> :class:`~core.io.volume.Volume`.

The file is read into memory (gzip inflated in bounded steps: at most 3 GiB
and, past 8 MiB, at most ``MAX_GZIP_RATIO`` = 100 times the compressed file,
since real CTs compress only a few times; a gzip bomb is refused before it is
inflated), parsed with nibabel, checked (finite voxels, usable spacing, an invertible finite
affine) and reoriented with ``nibabel.orientations`` to the project convention
(``core/io/volume.py``): axis 0 -> superior, axis 1 -> posterior, axis 2 ->
patient left, i.e. axis codes ("S", "P", "L"). A sheared affine whose slice axis
steps off the slices' normal (a tilted-gantry CT converted without tilt
correction) is undone as the DICOM loader does: each slice shifted in-plane.

The header's free text (``descrip``, ``aux_file``, ``intent_name``,
``db_name``, ``data_type``) and extensions are reported in ``Volume.phi`` as
``nifti.<field>`` / ``nifti.extensions`` (:func:`nifti_header_phi`).
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.io.inflate import WBITS_GZIP, inflate_bounded
from core.io.volume import Volume, hu_scale_warning, spacing_warning

MAX_NIFTI_BYTES = 3 * 1024**3  # uncompressed file size
MAX_VOXELS = 800 * 1024 * 1024
MAX_GZIP_RATIO = 100.0  # a real CT compresses a few times; 100x more than its file is a bomb
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


def gunzip_bounded(data: bytes, name: str, limit: int = MAX_NIFTI_BYTES, *, max_ratio: float | None = None) -> bytes:
    """Decompress gzip ``data`` in bounded steps, refusing output larger than ``limit``.

    With ``max_ratio`` the output must also stay within ``max_ratio`` times the
    compressed size once past a few MiB (:func:`core.io.inflate.inflate_bounded`).
    """
    return inflate_bounded(
        data,
        wbits=WBITS_GZIP,
        field="NIfTI file",
        name=name,
        max_bytes=limit,
        max_ratio=max_ratio,
        fix="load a smaller volume (a real CT compresses only a few times)",
    )


# (field, offset, length) of the free-text fields of the NIfTI-1 and NIfTI-2 headers
NIFTI1_TEXT_FIELDS = (("data_type", 4, 10), ("db_name", 14, 18), ("descrip", 148, 80), ("aux_file", 228, 24), ("intent_name", 328, 16))
NIFTI2_TEXT_FIELDS = (("descrip", 240, 80), ("aux_file", 320, 24), ("intent_name", 508, 16), ("unused_str", 525, 15))


def nifti_header_phi(data: bytes) -> list[str]:
    """Header fields of uncompressed NIfTI bytes that carry text, as ``nifti.<field>`` (sorted).

    The free-text fields (``descrip``, ``aux_file``, ``intent_name``,
    ``db_name``, ``data_type``; in NIfTI-2 ``unused_str``) can hold a name or an
    ID typed by whoever wrote the file, and header extensions (DICOM headers,
    AFNI XML, comments) often do: any non-blank one is reported as
    ``nifti.extensions``. ``data`` needs the header and its extensions (the
    bytes up to ``vox_offset``); fewer bytes are read as far as they go.
    """
    kind = nifti_header_kind(data[:540])
    if kind == 0:
        return []
    fields = NIFTI1_TEXT_FIELDS if kind == 1 else NIFTI2_TEXT_FIELDS
    found = [f"nifti.{name}" for name, start, length in fields if data[start : start + length].strip(b"\x00 \t\r\n")]
    size = 348 if kind == 1 else 540
    endian = "<" if int.from_bytes(data[:4], "little") == size else ">"
    if len(data) >= size + 4 and data[size] != 0:
        if kind == 1:
            (vox_offset,) = struct.unpack(endian + "f", data[108:112])
        else:
            (vox_offset,) = struct.unpack(endian + "q", data[168:176])
        end = int(vox_offset) if np.isfinite(vox_offset) and vox_offset > size else len(data)
        pos = size + 4
        while pos + 8 <= min(end, len(data)):
            esize, _ecode = struct.unpack(endian + "ii", data[pos : pos + 8])
            if esize < 8:
                break
            if data[pos + 8 : pos + esize].strip(b"\x00 \t\r\n"):
                found.append("nifti.extensions")
                break
            pos += esize
    return sorted(found)


def nifti_prefix(data: bytes, name: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """The header and extensions of NIfTI bytes (gzip or not) without inflating the voxels.

    Used by the PHI gate when only the header matters (cohort checks).
    """
    if data[:2] != GZIP_MAGIC:
        return data[:max_bytes]
    inflater = zlib.decompressobj(wbits=WBITS_GZIP)
    try:
        head = inflater.decompress(data[: 1 << 20], 544)
        kind = nifti_header_kind(head)
        want = 544
        if kind == 1 and len(head) >= 112:
            endian = "<" if int.from_bytes(head[:4], "little") == 348 else ">"
            (vox,) = struct.unpack(endian + "f", head[108:112])
            want = int(vox) if np.isfinite(vox) and 352 <= vox <= max_bytes else 544
        elif kind == 2 and len(head) >= 176:
            endian = "<" if int.from_bytes(head[:4], "little") == 540 else ">"
            (vox,) = struct.unpack(endian + "q", head[168:176])
            want = int(vox) if 544 <= vox <= max_bytes else 544
        parts = [head]
        got = len(head)
        tail = inflater.unconsumed_tail
        offset = min(len(data), 1 << 20)
        while got < want and not inflater.eof:
            if not tail:
                tail = data[offset : offset + (1 << 20)]
                offset += len(tail)
                if not tail:
                    break
            piece = inflater.decompress(tail, want - got)
            tail = inflater.unconsumed_tail
            parts.append(piece)
            got += len(piece)
    except zlib.error as err:
        raise InputError("NIfTI file", name, f"is not valid gzip data ({err})", "re-save the file as .nii or .nii.gz") from None
    return b"".join(parts)[:want]


def load_nifti_bytes(data: bytes, name: str = "volume.nii.gz") -> Volume:
    """Parse NIfTI bytes (gzip-compressed or not) into a Volume in the project convention.

    numpy's floating-point warnings on broken affines are kept off stderr with
    ``np.errstate`` (a context variable: this thread only; the process's warning
    filters are never touched); every problem that matters is an ``InputError``.
    """
    with np.errstate(all="ignore"):
        return _load_nifti_bytes(data, name)


def _load_nifti_bytes(data: bytes, name: str) -> Volume:
    if data[:2] == GZIP_MAGIC:
        data = gunzip_bounded(data, name, max_ratio=MAX_GZIP_RATIO)
    kind = nifti_header_kind(data[:540])
    if kind == 0:
        raise InputError("NIfTI file", name, "has no NIfTI-1/2 header", "load a .nii or .nii.gz file (or a DICOM series)")
    import nibabel as nib  # lazily: nibabel takes ~0.4 s to import
    from nibabel import orientations as ornt

    if (data[344:347] if kind == 1 else data[4:7]) in (b"ni1", b"ni2"):
        raise InputError("NIfTI file", name, "is the header of an .hdr/.img pair (its voxels are in another file)",
                         "convert the pair to one .nii or .nii.gz file (e.g. nibabel: nib.save(nib.load('scan.hdr'), 'scan.nii.gz'))")
    cls = nib.Nifti1Image if kind == 1 else nib.Nifti2Image
    try:
        # the header as written: nibabel's checks would silently "fix" zero pixdim; its bytes only (an extension,
        # several kB in every AFNI file, runs past them and is read with the image below)
        raw_header = cls.header_class(data[: cls.header_class.sizeof_hdr], check=False)
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
    while len(shape) > 3 and shape[-1] == 1:  # a 3-D volume stored with singleton time (or further) axes
        shape = shape[:-1]
    if img.get_data_dtype().names:
        raise InputError("NIfTI datatype", name, f"is colour ({'+'.join(img.get_data_dtype().names)}), not a greyscale CT",
                         "load the CT itself (a greyscale int16 or float NIfTI in HU)")
    if len(shape) != 3:
        raise InputError("NIfTI file", name, f"has shape {list(shape)}, not a 3-D volume", "load a single 3-D CT volume")
    if min(shape) < 1:
        raise InputError("NIfTI file", name, f"has an empty dimension (shape {list(shape)})", "re-export the file")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise InputError("NIfTI file", name, f"has {int(np.prod(shape))} voxels (limit {MAX_VOXELS})", "load a smaller volume")
    # the header's spatial unit (xyzt_units): metres and microns are converted to mm, as ITK does, unless that makes a
    # CT's voxels implausible where the values as written are not (3 mm voxels labelled metres); unknown is read as mm
    unit = str(img.header.get_xyzt_units()[0])
    stated = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    written = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    kept_mm = stated != 1.0 and spacing_warning(tuple(written * stated)) is not None and spacing_warning(tuple(written)) is None
    to_mm = 1.0 if kept_mm else stated
    zooms = written * to_mm
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError("NIfTI pixdim", name, f"voxel spacing {zooms.tolist()} is not positive and finite", "fix pixdim[1:4] in the header")
    affine = np.asarray(img.affine, dtype=np.float64)
    affine[:3] *= to_mm
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
    out, lps, tilt = _unshear(out, lps)
    spacing = tuple(float(v) for v in np.linalg.norm(lps[:3, :3], axis=0))
    notes: list[str] = [tilt] if tilt else []
    notes += _orientation_notes(img.header, affine)
    if to_mm != 1.0:
        notes.append(f"NIfTI spatial unit is {unit}s (xyzt_units): spacing and positions converted to mm")
    if kept_mm:
        notes.append(f"NIfTI spatial unit is {unit}s (xyzt_units), but its voxels would then be "
                     f"{' x '.join(f'{v * stated:.4g}' for v in written)} mm, "
                     "not a CT's: its spacing is read as mm (check the header)")
    scale, odd = hu_scale_warning(out), spacing_warning(spacing)  # type: ignore[arg-type]
    notes += [w for w in (scale, odd) if w]
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
        phi=nifti_header_phi(data),
        warnings=notes,
        meta=meta,
    )


def _orientation_notes(header: object, affine: np.ndarray) -> list[str]:
    """Warnings for a header that says nothing of where the voxels lie: no sform and no qform (nibabel then guesses
    an orientation from pixdim alone), or an identity affine (1 mm voxels at the origin: spacing and orientation
    most likely lost when the file was written)."""
    codes = (int(header["sform_code"]), int(header["qform_code"]))  # type: ignore[index]
    if codes == (0, 0):
        return ["NIfTI without orientation (sform and qform codes 0): the axes were read as nibabel's default "
                "(first axis to the patient's left); check in the viewer that the anatomy is the right way round"]
    if min(codes) > 0:
        import nibabel as nib

        sform, qform = nib.aff2axcodes(header.get_sform()), nib.aff2axcodes(header.get_qform())  # type: ignore[attr-defined]
        if sform != qform:
            return [f"NIfTI sform ({''.join(sform)}) and qform ({''.join(qform)}) disagree: the sform was used, as nibabel "
                    "does (tools that read the qform show the volume another way round); check the anatomy's sides in the viewer"]
    if np.allclose(affine, np.eye(4)):
        return ["NIfTI affine is the identity (1 mm voxels, no orientation): the voxel spacing and orientation were "
                "probably lost when the file was written; the spacing-based checks and the working slice spacing "
                "read 1 mm"]
    return []


def _unshear(hu: np.ndarray, lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A slice axis that steps off the slices' own normal (a tilted-gantry CT converted without tilt correction: a
    sheared affine) -> each slice shifted in-plane onto the first one's grid, as the DICOM loader does, the affine
    made orthogonal, and a warning; anything else is returned as it is.

    ``hu`` is in the convention's axes [slices, rows, cols] and ``lps`` its affine (columns: slice, row, col steps).
    """
    from core.io.dicom_frames import inplane_shifts, shift_slices

    step, down, across = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_sp, col_sp = float(np.linalg.norm(down)), float(np.linalg.norm(across))
    if hu.shape[0] < 2 or abs(float(down @ across)) > 1e-3 * row_sp * col_sp:  # a shear within the slice: not a tilt
        return hu, lps, None
    row_cos, col_cos = across / col_sp, down / row_sp  # DICOM's names: along a row, down a column
    shifts = inplane_shifts(lps[:3, 3] + np.arange(hu.shape[0])[:, None] * step[None], row_cos, col_cos, (row_sp, col_sp))
    if shifts is None:
        return hu, lps, None
    hu = np.array(hu, dtype=np.float32)  # a writable copy: the reorientation may have given a view
    shift_slices(hu, shifts)
    normal = np.cross(row_cos, col_cos)
    fixed = lps.copy()
    fixed[:3, 0] = float(step @ normal) * normal
    return hu, fixed, shifts.warning()


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
