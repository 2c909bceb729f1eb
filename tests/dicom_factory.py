"""Write realistic synthetic CT DICOM series for tests and benchmarks.

Everything here is made up: a CT-like phantom (air, body, lungs, soft tissue,
bone) written as one DICOM file per slice with real geometry
(ImagePositionPatient / ImageOrientationPatient / PixelSpacing), rescale
slope/intercept, optional compression (RLE Lossless, JPEG 2000 Lossless, JPEG-LS
Lossless via pyjpegls, JPEG Lossless SV1 via python-gdcm) and,
unless asked otherwise, a set of identifying attributes (``PHI_VALUES``,
``PHI_STRINGS``) so that PHI detection and de-identification can be tested.

The volume passed to :func:`write_series` is given in the project's convention
(``core/io/volume.py``: ``[slices, rows, cols]``, slice 0 inferior, rows
anterior -> posterior, cols patient right -> left); the factory stores it under
any axis-aligned orientation (and optionally a small in-plane rotation), so a
correct loader must give back exactly ``hu`` (``SeriesWritten.hu``).

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     s = write_series(pathlib.Path(tmp), shape=(4, 16, 16))
...     len(s.paths), s.hu.shape
(4, (4, 16, 16))
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

Compression = Literal["none", "rle", "j2k", "jls", "jpeg_lossless"]

# Identifying values written into every "identified" study. Tests check that
# none of PHI_STRINGS survives de-identification anywhere in the output bytes.
PHI_VALUES: dict[str, str] = {
    "PatientName": "DOE^JANE^Q",
    "PatientID": "MRN77889911",
    "PatientBirthDate": "19580214",
    "PatientAddress": "12 Elmwood Crescent, Springfield",
    "InstitutionName": "Saint Hypothetical General Hospital",
    "InstitutionAddress": "400 Harbour Road, Springfield",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "CAMERON^ALLISON",
    "OperatorsName": "CHASE^ROBERT",
    "AccessionNumber": "ACC20240917X",
    "StudyDescription": "CT CHEST Jane Doe follow up",
    "SeriesDescription": "AXIAL 2.5 MRN77889911",
    "StudyID": "STUDY4711",
    "ImageComments": "patient Jane Doe, call 555-0199",
    "StationName": "CTSCANNER-ROOM-7",
}
PRIVATE_CREATOR = "ACME_SCANNER 1.0"
PRIVATE_VALUE = "Jane Doe private note MRN77889911"  # (0011,1001) LO
NESTED_PHYSICIAN = "WILSON^JAMES"  # RequestAttributesSequence[0].RequestingPhysician
NESTED_OTHER_ID = "OTHERID556677"  # OtherPatientIDsSequence[0].PatientID
STUDY_DATE = "20240917"
PHI_STRINGS: tuple[str, ...] = tuple(
    sorted(
        {
            *PHI_VALUES.values(),
            "DOE",
            "Jane Doe",
            "MRN77889911",
            PRIVATE_VALUE,
            NESTED_PHYSICIAN,
            NESTED_OTHER_ID,
            "19580214",
        }
    )
)
# Keywords (top level) that carry identifying values in an identified study.
PHI_KEYWORDS: tuple[str, ...] = tuple(sorted(PHI_VALUES))


@dataclass
class SeriesWritten:
    """What :func:`write_series` wrote, and what a correct loader must return."""

    folder: Path
    paths: list[Path]
    hu: np.ndarray  # float32 [slices, rows, cols] in the project convention (the truth)
    spacing_mm: tuple[float, float, float]  # (slice, row, col) in the convention
    series_uid: str  # as written ("" when blank)
    study_uid: str
    frame_of_reference_uid: str
    row_cos: tuple[float, float, float]
    col_cos: tuple[float, float, float]
    transfer_syntax: str
    identified: bool
    extra: dict[str, object] = field(default_factory=dict)


def phantom_hu(shape: Sequence[int] = (20, 64, 64), seed: int = 0, noise: float = 10.0) -> np.ndarray:
    """A CT-like chest phantom in HU, float32 ``[slices, rows, cols]``.

    Air outside (-1000), soft-tissue body ellipse (~40), two lungs (~-850), a
    dense spine (~700) posterior, a contrast-filled aorta (~250), a left/right
    and anterior/posterior asymmetry (so flips are detectable), plus noise.
    Values are integers (stored exactly in int16 with slope 1).
    """
    s, r, c = (int(v) for v in shape)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, s, dtype=np.float32),
        np.linspace(-1, 1, r, dtype=np.float32),
        np.linspace(-1, 1, c, dtype=np.float32),
        indexing="ij",
    )
    hu = np.full((s, r, c), -1000.0, dtype=np.float32)
    body = (xx / 0.9) ** 2 + (yy / 0.7) ** 2 <= 1.0
    hu[body] = 40.0
    # lungs: bigger on the patient's right (cols near 0), shrink towards the feet
    taper = 0.75 + 0.25 * (zz + 1) / 2
    lung_r = ((xx + 0.42) / (0.32 * taper)) ** 2 + ((yy + 0.05) / 0.45) ** 2 <= 1.0
    lung_l = ((xx - 0.45) / (0.25 * taper)) ** 2 + ((yy + 0.05) / 0.42) ** 2 <= 1.0
    hu[body & (lung_r | lung_l)] = -850.0
    spine = (xx / 0.12) ** 2 + ((yy - 0.52) / 0.12) ** 2 <= 1.0  # posterior
    hu[spine] = 700.0
    aorta = ((xx - 0.1) / 0.08) ** 2 + ((yy - 0.25) / 0.08) ** 2 <= 1.0
    hu[aorta] = 250.0
    sternum = (xx / 0.15) ** 2 + ((yy + 0.62) / 0.04) ** 2 <= 1.0  # anterior
    hu[sternum] = 400.0
    # a superior marker so that z flips are detectable
    top = (zz > 0.6) & ((xx + 0.05) ** 2 + (yy - 0.0) ** 2 <= 0.01)
    hu[top] = 1200.0
    hu += np.round(rng.normal(0.0, noise, size=hu.shape)).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.float32)


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Named axis-aligned storage orientations: (row_cos, col_cos) in LPS.
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1, 0, 0), (0, 1, 0)),  # the usual head-first supine axial: already the convention
    "axial_rot180": ((-1, 0, 0), (0, -1, 0)),  # cols left->right, rows posterior->anterior
    "axial_feet_first": ((-1, 0, 0), (0, 1, 0)),  # normal points inferior
    "axial_flip_rows": ((1, 0, 0), (0, -1, 0)),  # normal points inferior
    "coronal": ((1, 0, 0), (0, 0, -1)),  # stored slices are coronal planes
    "sagittal": ((0, 1, 0), (0, 0, -1)),  # stored slices are sagittal planes
}


def write_series(
    folder: Path,
    hu: np.ndarray | None = None,
    *,
    shape: Sequence[int] = (20, 64, 64),
    spacing_mm: Sequence[float] = (2.5, 0.75, 0.75),
    origin_lps: Sequence[float] = (-100.0, -120.0, -300.0),
    orientation: str | tuple[Sequence[float], Sequence[float]] = "axial",
    inplane_rotation_deg: float = 0.0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    signed: bool = False,
    compression: Compression = "none",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    identified: bool = True,
    shuffle: bool = False,
    drop_slices: Iterable[int] = (),
    z_jitter_mm: dict[int, float] | None = None,
    inplane_step_mm: tuple[float, float] = (0.0, 0.0),
    prefix: str = "IM",
    seed: int = 0,
    modality: str = "CT",
    acquisition_number: int = 1,
) -> SeriesWritten:
    """Write one series (one file per slice) into ``folder``; return what a loader must give back.

    ``hu`` (or a phantom of ``shape``) is in the project convention with
    ``spacing_mm`` = (slice, row, col). ``orientation`` names an entry of
    ``ORIENTATIONS`` or gives ``(row_cos, col_cos)`` axis-aligned in LPS; the
    data are permuted/flipped so that the patient-space image is the same.
    ``series_uid=""`` writes a blank SeriesInstanceUID. ``drop_slices`` leaves
    out the given stored slice indices (a gap); ``z_jitter_mm`` moves given
    stored slices along the normal (uneven spacing). ``inplane_step_mm`` moves
    stored slice k by k times (along row_cos, along col_cos) mm in its own plane:
    slices stacked along a tilted line, as a tilted gantry writes them (the
    pixels are written as given). ``shuffle`` writes files
    with names in random order and InstanceNumber not matching position.
    ``hu`` values must be representable: (hu - intercept) / slope integral.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth = phantom_hu(shape, seed=seed) if hu is None else np.asarray(hu, dtype=np.float32)
    if truth.ndim != 3:
        raise ValueError("hu must be 3-D [slices, rows, cols]")
    sp = np.asarray(spacing_mm, dtype=np.float64)
    row_cos, col_cos = ORIENTATIONS[orientation] if isinstance(orientation, str) else orientation
    rc, cc = _unit(row_cos), _unit(col_cos)
    normal = np.cross(rc, cc)
    # Convention axes in LPS: slice -> +z (S), row -> +y (P), col -> +x (L).
    conv_axis_of_lps = {2: 0, 1: 1, 0: 2}

    def axis_sign(d: np.ndarray) -> tuple[int, int]:
        k = int(np.argmax(np.abs(d)))
        if not np.isclose(abs(d[k]), 1.0):
            raise ValueError("orientation must be axis-aligned (use inplane_rotation_deg for obliquity)")
        return conv_axis_of_lps[k], int(np.sign(d[k]))

    # stored axes: (slice k along normal, row i along col_cos, col j along row_cos)
    stored = [axis_sign(normal), axis_sign(cc), axis_sign(rc)]
    if len({a for a, _ in stored}) != 3:
        raise ValueError("row_cos and col_cos must be orthogonal")
    data = np.transpose(truth, [a for a, _ in stored])
    for ax, (_, sign) in enumerate(stored):
        if sign < 0:
            data = np.flip(data, axis=ax)
    data = np.ascontiguousarray(data)
    st_sp = [float(sp[a]) for a, _ in stored]  # spacing along stored (k, i, j)
    # LPS position of convention voxel (0,0,0) is origin_lps; find the stored first voxel.
    conv_first = [0, 0, 0]
    for ax, (a, sign) in enumerate(stored):
        if sign < 0:
            conv_first[a] = truth.shape[a] - 1
    o = np.asarray(origin_lps, dtype=np.float64)
    first_pos = o + np.array([conv_first[2] * sp[2], conv_first[1] * sp[1], conv_first[0] * sp[0]])

    if inplane_rotation_deg:
        # rotate the in-plane axes about the slice normal through the image centre
        t = np.deg2rad(inplane_rotation_deg)
        centre = first_pos + rc * st_sp[2] * (data.shape[2] - 1) / 2 + cc * st_sp[1] * (data.shape[1] - 1) / 2
        rc2 = np.cos(t) * rc + np.sin(t) * np.cross(normal, rc)
        cc2 = np.cos(t) * cc + np.sin(t) * np.cross(normal, cc)
        rc, cc = rc2, cc2
        first_pos = centre - rc * st_sp[2] * (data.shape[2] - 1) / 2 - cc * st_sp[1] * (data.shape[1] - 1) / 2

    if compression == "j2k" and min(data.shape[1:]) < 32:
        raise ValueError("JPEG 2000 encoding (openjpeg) needs slices of at least 32 x 32 pixels")
    stored_values = (data.astype(np.float64) - intercept) / slope
    if not np.allclose(stored_values, np.round(stored_values)):
        raise ValueError("hu not representable with this slope/intercept")
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored_values.min() < info.min or stored_values.max() > info.max:
        raise ValueError(f"stored values out of range for {dtype.__name__}")
    pixels = np.round(stored_values).astype(dtype)

    rng = random.Random(seed + 7919 * series_number)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid() if series_uid is None else series_uid
    for_uid = frame_of_reference_uid or generate_uid()
    n = data.shape[0]
    keep = [k for k in range(n) if k not in set(drop_slices)]
    order = list(keep)
    instance_numbers = list(range(1, len(keep) + 1))
    if shuffle:
        rng.shuffle(order)
        rng.shuffle(instance_numbers)
    jitter = z_jitter_mm or {}
    paths: list[Path] = []
    ts = {
        "none": ExplicitVRLittleEndian,
        "rle": RLELossless,
        "j2k": JPEG2000Lossless,
        "jls": JPEGLSLossless,
        "jpeg_lossless": JPEGLosslessSV1,
    }[compression]
    for file_no, k in enumerate(order):
        pos = first_pos + normal * (k * st_sp[0] + jitter.get(k, 0.0)) + k * (inplane_step_mm[0] * rc + inplane_step_mm[1] * cc)
        ds = _slice_dataset(
            pixels[k],
            pos=pos,
            row_cos=rc,
            col_cos=cc,
            pixel_spacing=(st_sp[1], st_sp[2]),
            thickness=st_sp[0],
            slope=slope,
            intercept=intercept,
            signed=signed,
            study_uid=study_uid,
            series_uid=series_uid,
            for_uid=for_uid,
            series_number=series_number,
            instance_number=instance_numbers[file_no],
            identified=identified,
            modality=modality,
            acquisition_number=acquisition_number,
        )
        if compression == "rle":
            ds.compress(RLELossless, encoding_plugin="pylibjpeg")
        elif compression == "j2k":
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        elif compression == "jls":
            ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
        name = f"{prefix}{file_no:04d}.dcm" if not shuffle else f"{prefix}{rng.randrange(10**8):08d}_{file_no}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        if compression == "jpeg_lossless":
            _gdcm_transcode(path, "JPEGLosslessProcess14_1")
        paths.append(path)
    expected = truth  # with drop_slices / z_jitter_mm the geometry is irregular: compare what applies
    return SeriesWritten(
        folder=folder,
        paths=paths,
        hu=expected.astype(np.float32),
        spacing_mm=(float(sp[0]), float(sp[1]), float(sp[2])),
        series_uid=series_uid,
        study_uid=study_uid,
        frame_of_reference_uid=for_uid,
        row_cos=tuple(float(v) for v in rc),  # type: ignore[arg-type]
        col_cos=tuple(float(v) for v in cc),  # type: ignore[arg-type]
        transfer_syntax=str(ts),
        identified=identified,
        extra={"kept_stored_slices": keep},
    )


def _ds_number(v: float) -> str:
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def _slice_dataset(
    pixels: np.ndarray,
    *,
    pos: np.ndarray,
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    pixel_spacing: tuple[float, float],
    thickness: float,
    slope: float,
    intercept: float,
    signed: bool,
    study_uid: str,
    series_uid: str,
    for_uid: str,
    series_number: int,
    instance_number: int,
    identified: bool,
    modality: str,
    acquisition_number: int,
) -> FileDataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.Manufacturer = "SyntheticCT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = acquisition_number
    ds.InstanceNumber = instance_number
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = "120"
    ds.SliceThickness = _ds_number(thickness)
    ds.ImagePositionPatient = [_ds_number(v) for v in pos]
    ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_cos, *col_cos)]
    ds.PixelSpacing = [_ds_number(pixel_spacing[0]), _ds_number(pixel_spacing[1])]
    ds.SliceLocation = _ds_number(float(pos[2]))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if identified:
        for keyword, value in PHI_VALUES.items():
            setattr(ds, keyword, value)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.PatientSex = "F"
        ds.PatientAge = "066Y"
        ds.BurnedInAnnotation = "NO"
        block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", PRIVATE_VALUE)
        req = Dataset()
        req.RequestedProcedureID = "RP998877"
        req.RequestingPhysician = NESTED_PHYSICIAN
        ds.RequestAttributesSequence = DicomSequence([req])
        other = Dataset()
        other.PatientID = NESTED_OTHER_ID
        other.IssuerOfPatientID = "Saint Hypothetical"
        ds.OtherPatientIDsSequence = DicomSequence([other])
    else:
        # a de-identified study (PS3.15 basic profile applied): type 2 emptied, others gone
        ds.PatientName = ""
        ds.PatientID = ""
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.ReferringPhysicianName = ""
        ds.AccessionNumber = ""
        ds.StudyID = ""
        ds.StudyDate = ""
        ds.StudyTime = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "synthetic test data (PS3.15 E.1.1 basic profile)"
        ds.BurnedInAnnotation = "NO"
    return ds


def _gdcm_transcode(path: Path, syntax: str) -> None:
    """Re-encode ``path`` in place with GDCM (pydicom has no JPEG Lossless encoder)."""
    import gdcm  # python-gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"gdcm cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm cannot transcode {path} to {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm cannot write {path}")


def write_deidentified_series(folder: Path, **kwargs: object) -> SeriesWritten:
    """Like :func:`write_series` but already de-identified (no PHI, no private tags)."""
    kwargs["identified"] = False
    return write_series(folder, **kwargs)  # type: ignore[arg-type]


def write_two_series(
    folder: Path,
    *,
    big_shape: Sequence[int] = (16, 48, 48),
    small_shape: Sequence[int] = (6, 32, 32),
    blank_uids: bool = False,
    compression: Compression = "none",
    seed: int = 0,
) -> tuple[SeriesWritten, SeriesWritten]:
    """Two series of one study in one folder (mixed file names); returns (bigger, smaller).

    With ``blank_uids`` both SeriesInstanceUIDs are blank, so a loader must
    tell them apart by its fallback key (different sizes / frames of reference).
    """
    study = generate_uid()
    big = write_series(
        folder,
        shape=big_shape,
        series_uid="" if blank_uids else None,
        study_uid=study,
        series_number=2,
        prefix="A",
        seed=seed,
        compression=compression,
    )
    small = write_series(
        folder,
        shape=small_shape,
        spacing_mm=(5.0, 1.0, 1.0),
        series_uid="" if blank_uids else None,
        study_uid=study,
        series_number=3,
        prefix="B",
        seed=seed + 1,
        compression=compression,
        acquisition_number=2,
    )
    return big, small


def zip_bytes(files: Iterable[Path], root: Path | None = None, *, compress: bool = True) -> bytes:
    """A zip (in memory) of ``files`` with names relative to ``root``."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        for path in files:
            path = Path(path)
            arc = path.relative_to(root).as_posix() if root else path.name
            zf.write(path, arc)
    return buf.getvalue()


def zip_folder(folder: Path, *, compress: bool = True) -> bytes:
    """A zip (in memory) of every file under ``folder``, with relative names."""
    folder = Path(folder)
    return zip_bytes(sorted(p for p in folder.rglob("*") if p.is_file()), folder, compress=compress)


def read_dataset(path: Path) -> pydicom.Dataset:
    """Read one written file back (helper for tests)."""
    return pydicom.dcmread(path)


# ---------------------------------------------------------------- crafted files for the PHI gate and the bomb tests


def edit_file(path: Path, edit: Callable[[pydicom.Dataset], None]) -> None:
    """Read ``path``, let ``edit`` change the dataset, write it back in place."""
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=False)


def _explicit_le(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" " if vr in (b"LO", b"SH", b"LT", b"ST", b"UT", b"CS", b"PN") else b"\x00"
    if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def append_private_after_pixels(path: Path, text: str, *, group: int = 0x7FE1, creator: str = "ACME TRAILER 1.0") -> None:
    """Append a private creator and one private LO element after PixelData (explicit VR little endian files)."""
    tail = _explicit_le((group << 16) | 0x0010, b"LO", creator.encode("latin-1"))
    tail += _explicit_le((group << 16) | 0x1001, b"LO", text.encode("latin-1"))
    with open(path, "ab") as fh:
        fh.write(tail)


def set_text_after_pixels(path: Path, keyword: str, value: str) -> None:
    """Append a public text element (e.g. a DigitalSignaturesSequence-era tag) after the pixels, as raw bytes."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = int(tag_for_keyword(keyword))
    with open(path, "ab") as fh:
        fh.write(_explicit_le(tag, dictionary_VR(tag).encode(), value.encode("latin-1")))


def _repeat_deflate(zeros_chunk: int, total: int, level: int = 9) -> tuple[bytes, int]:
    """A raw deflate segment for ``zeros_chunk`` zero bytes, ending in a full flush, and its repeat count."""
    co = zlib.compressobj(level, zlib.DEFLATED, -15)
    segment = co.compress(bytes(zeros_chunk)) + co.flush(zlib.Z_FULL_FLUSH)
    return segment, total // zeros_chunk


def deflate_bomb_dicom(path: Path, inflated_bytes: int = 1 << 30, *, meta_padding: int = 0) -> Path:
    """A DICOM file in the Deflated Explicit VR Little Endian syntax whose dataset inflates to ``inflated_bytes``.

    The dataset is a small CT header plus a PixelData element of zeros; the
    deflate stream is one full-flushed segment for 1 MiB of zeros repeated
    (valid deflate: the dictionary is reset at each full flush), so a 1 GiB
    dataset costs about 1 MB on disk and nothing to build. ``meta_padding``
    zero bytes in FileMetaInformationVersion push the transfer syntax UID far
    into the file (past any fixed-size look-ahead).
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    chunk = 1 << 20
    n_pixels = inflated_bytes - inflated_bytes % chunk
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 16384, n_pixels // (2 * 16384)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_pixels)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream_head = co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)
    segment, count = _repeat_deflate(chunk, n_pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if meta_padding:
        meta.FileMetaInformationVersion = b"\x00\x01" + bytes(meta_padding)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(out.getvalue())
        fh.write(stream_head)
        for _ in range(count):
            fh.write(segment)
        fh.write(b"\x03\x00")  # final empty fixed-Huffman block
    return path


def write_deflated(path: Path, source: Path) -> Path:
    """Re-save ``source`` in the Deflated Explicit VR Little Endian syntax (a genuine, small deflated file)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def secondary_capture(path: Path, *, burned_in: str = "YES", image_type: Sequence[str] = ("DERIVED", "SECONDARY", "SCREEN SAVE")) -> Path:
    """A de-identified secondary capture (SOP class 1.2.840.10008.5.1.4.1.1.7) with BurnedInAnnotation ``burned_in``."""
    from pydicom.uid import SecondaryCaptureImageStorage

    folder = Path(path).parent / "_sc_tmp"
    written = write_deidentified_series(folder, shape=(1, 32, 32))
    ds = pydicom.dcmread(written.paths[0])
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.BurnedInAnnotation = burned_in
    ds.ImageType = list(image_type)
    ds.Modality = "OT"
    ds.save_as(path, enforce_file_format=True)
    for p in written.paths:
        p.unlink()
    folder.rmdir()
    return Path(path)


def blank_sop_uids(path: Path) -> None:
    """Make SOPInstanceUID and SOPClassUID present but empty, in the dataset and the file meta (a real export seen in the wild)."""
    raw = pydicom.dcmread(path)
    raw.SOPInstanceUID = ""
    raw.SOPClassUID = ""
    raw.file_meta.MediaStorageSOPInstanceUID = ""
    raw.file_meta.MediaStorageSOPClassUID = ""
    raw.save_as(path, enforce_file_format=False)
