"""De-identify a NIfTI file's header: blank its free-text fields and drop its extensions.

A NIfTI header has no patient attributes, but its text fields (``descrip``,
``aux_file``, ``intent_name``, ``db_name``, ``data_type``) and its extensions
(DICOM headers, AFNI XML, comments) may carry names and IDs; the PHI gate
reports them as ``nifti.<field>`` (:func:`core.io.nifti.nifti_header_phi`).
This writes the same volume with those fields zeroed and no extensions; the
voxels and the geometry are untouched.
"""

from __future__ import annotations

import gzip
import struct

from core.errors import InputError
from core.io.nifti import (
    GZIP_MAGIC,
    MAX_GZIP_RATIO,
    MAX_NIFTI_BYTES,
    NIFTI1_TEXT_FIELDS,
    NIFTI2_TEXT_FIELDS,
    gunzip_bounded,
    nifti_header_kind,
    nifti_header_phi,
)


def deidentify_nifti_bytes(data: bytes, name: str = "volume.nii.gz") -> tuple[bytes, list[str]]:
    """(cleaned bytes, the ``nifti.<field>`` names that were cleared); gzip in, gzip out."""
    compressed = data[:2] == GZIP_MAGIC
    raw = gunzip_bounded(data, name, MAX_NIFTI_BYTES, max_ratio=MAX_GZIP_RATIO) if compressed else bytes(data)
    kind = nifti_header_kind(raw[:540])
    if kind == 0:
        raise InputError("NIfTI file", name, "has no NIfTI-1/2 header", "give a .nii or .nii.gz file")
    cleared = nifti_header_phi(raw)
    size = 348 if kind == 1 else 540
    endian = "<" if int.from_bytes(raw[:4], "little") == size else ">"
    header = bytearray(raw[:size])
    for _field, start, length in NIFTI1_TEXT_FIELDS if kind == 1 else NIFTI2_TEXT_FIELDS:
        header[start : start + length] = bytes(length)
    if kind == 1:
        (vox_offset,) = struct.unpack(endian + "f", raw[108:112])
    else:
        (vox_offset,) = struct.unpack(endian + "q", raw[168:176])
    start = int(vox_offset)
    if start < size + 4 or start > len(raw):
        raise InputError("NIfTI vox_offset", name, f"is {vox_offset} (file of {len(raw)} bytes)", "re-export the file")
    new_offset = size + 4  # 352 / 544: multiples of 16, as NIfTI requires
    if kind == 1:
        header[108:112] = struct.pack(endian + "f", float(new_offset))
    else:
        header[168:176] = struct.pack(endian + "q", new_offset)
    out = bytes(header) + bytes(4) + raw[start:]  # extension flag 0, no extensions
    if compressed:
        out = gzip.compress(out, compresslevel=6, mtime=0)
    return out, cleared
