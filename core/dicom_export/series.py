"""The source CT series a DICOM export refers to, and the map from its frames to the Volume grid.

A DICOM Parametric Map, Segmentation or SR has to point at real DICOM instances
(same Frame of Reference, one derived frame per source image, the same
ImageOrientation/ImagePositionPatient). Two cases:

* the study was DICOM: :func:`source_series_from_files` reads the instances of
  the loaded series (``Volume.meta["series_key"]``) and places every one of them
  on the Volume grid;
* the study was NIfTI (or anything without DICOM instances):
  :func:`derive_ct_series` writes a derived CT series from the Volume itself
  (one single-frame CT image per axial slice, int16 HU, geometry from
  ``Volume.affine``), with empty patient attributes: a NIfTI file carries no
  patient identity, so none is invented.

:meth:`SourceSeries.frames_from_volume` resamples (by index, no interpolation)
an array on the Volume grid ``[slices, rows, cols]`` to the pixel order of the
source frames, whatever the stored orientation (flipped, transposed or
reordered instances), and refuses grids that do not coincide.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from core.errors import InputError
from core.io.dicom import acquisition_key, undeflate_dicom
from core.io.volume import Volume

GRID_TOLERANCE = 0.02  # voxel units: how far a source pixel centre may sit from a Volume voxel centre
MANUFACTURER = "ct-ehr-survival-explorer"


@dataclass(frozen=True)
class Plane:
    """Where one source frame lies: ImagePositionPatient, ImageOrientationPatient (6), PixelSpacing (row, col) and
    the slice thickness (0 when not given)."""

    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    thickness: float

    @classmethod
    def of(cls, ds: Dataset) -> Plane:
        """The plane of a single-frame image."""
        return cls(np.asarray(ds.ImagePositionPatient, dtype=np.float64), np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
                   (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])), float(ds.get("SliceThickness", 0) or 0))


@dataclass
class SourceSeries:
    """Source instances in Volume slice order, with the Volume index of every pixel of every frame.

    ``planes`` and ``indices`` hold one entry per frame: one per instance of a series of single-frame images, one
    per frame of the single instance of an enhanced (multi-frame) image, in its frame order."""

    datasets: list[Dataset]
    volume_shape: tuple[int, int, int]
    # per frame: (slice, row, col) index arrays that broadcast to [rows, cols] (an axis they do not change along
    # is kept as length 1: an axis-aligned frame's slice index is [1, 1])
    indices: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    derived: bool  # True when written from the Volume (NIfTI source)
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    planes: list[Plane] = field(default_factory=list)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def frames_from_volume(self, array: np.ndarray) -> np.ndarray:
        """``array`` [S, R, C] on the Volume grid -> ``[frames, rows, cols]`` in the source frames' pixel order."""
        if tuple(array.shape) != self.volume_shape:
            raise InputError("map", list(array.shape), f"does not have the volume's shape {list(self.volume_shape)}",
                             "compute the attribution on the same study")
        return np.stack([array[k, r, c] for k, r, c in self.indices], axis=0)


def pixel_indices(ds: Dataset, affine: np.ndarray, shape: tuple[int, int, int],
                  plane: Plane | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volume indices ``(slice, row, col)`` of every pixel of a single-frame image ``ds`` (or of the frame of
    ``ds`` at ``plane``).

    DICOM: pixel (i, j) (row i, column j) lies at IPP + j * dc * row_cos + i * dr * col_cos,
    with PixelSpacing = (dr, dc) and ImageOrientationPatient = (row_cos, col_cos).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    plane = plane or Plane.of(ds)
    iop, ipp = plane.orientation, plane.position
    dr, dc = plane.spacing
    ii, jj = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    pos = ipp[:, None, None] + iop[:3, None, None] * (jj * dc)[None] + iop[3:, None, None] * (ii * dr)[None]
    inv = np.linalg.inv(affine)
    idx = np.einsum("ab,bij->aij", inv[:3, :3], pos) + inv[:3, 3][:, None, None]
    rounded = np.rint(idx)
    off = float(np.max(np.abs(idx - rounded)))
    inside = all((rounded[a] >= 0).all() and (rounded[a] < shape[a]).all() for a in range(3))
    if off > GRID_TOLERANCE or not inside:
        where = (f"lies {off:.2g} voxel off the loaded volume's regular grid" if off > GRID_TOLERANCE else
                 "lies outside the loaded volume's regular grid (missing slices stacked without the gap, or uneven "
                 "spacing)")
        raise InputError("source series", f"image {ds.get('InstanceNumber', '?')}", where,
                         "export from the series the volume was loaded from")
    k, r, c = (_compact(rounded[a].astype(np.intp)) for a in range(3))
    return k, r, c


def _compact(index: np.ndarray) -> np.ndarray:
    """``index`` [rows, cols] with each axis along which it does not change kept as length 1 (it broadcasts back).

    An axis-aligned frame's slice index is one number, its row and column indices one vector each: three arrays of
    ``rows x cols`` int64 per frame held 1.9 GB for a 512 x 512 x 300 series' export, where these hold kilobytes.

    >>> k, r = np.full((3, 4), 7), np.repeat(np.arange(3)[:, None], 4, axis=1)
    >>> _compact(k).shape, _compact(r).shape, _compact(r + np.arange(4)).shape
    ((1, 1), (3, 1), (3, 4))
    """
    if index.shape[1] > 1 and (index == index[:, :1]).all():
        index = index[:, :1]
    if index.shape[0] > 1 and (index == index[:1, :]).all():
        index = index[:1, :]
    return index.copy()  # not a view: a view would keep the whole rows x cols array alive


def _covers(indices: list[tuple[np.ndarray, np.ndarray, np.ndarray]], shape: tuple[int, int, int], what: str) -> None:
    covered = np.zeros(shape, dtype=bool)
    for k, r, c in indices:
        covered[k, r, c] = True
    if not covered.all():
        raise InputError("source series", what, f"cover {int(covered.sum())} of {covered.size} voxels of the loaded volume",
                         "export from the complete series the volume was loaded from")


def _place(datasets: list[Dataset], volume: Volume, derived: bool, files: list[Path]) -> SourceSeries:
    shape = volume.shape
    planes = [Plane.of(ds) for ds in datasets]  # each header read once, for the indices and the derived objects
    placed = sorted(((pixel_indices(ds, volume.affine, shape, p), ds, f, p) for ds, f, p in zip(datasets, files, planes)),
                    key=lambda item: float(item[0][0].mean()))
    _covers([item[0] for item in placed], shape, f"{len(datasets)} instances")
    return SourceSeries(
        datasets=[item[1] for item in placed], volume_shape=shape, indices=[item[0] for item in placed],
        derived=derived, files=[item[2] for item in placed], planes=[item[3] for item in placed],
    )


def _place_frames(ds: Dataset, volume: Volume, path: Path) -> SourceSeries:
    """The frames of one enhanced (multi-frame) image, in its frame order, each at its functional groups' plane.

    Refused (``InputError`` on ``source series``, so the caller derives a series instead) when the frames do not
    share one orientation in the shared functional group, as the derived objects' geometry requires, or when a
    frame does not lie on the volume's grid."""
    from core.io.dicom_frames import SHARED, frame_geometry

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    g = frame_geometry(ds, frames)
    shared = ds.get(SHARED, None)
    if (g is None or g.positions is None or g.orientations is None or g.pixel_spacing is None or not shared
            or "PlaneOrientationSequence" not in shared[0] or np.ptp(g.orientations, axis=0).max() > 1e-6):
        raise InputError("source series", str(path), "is a multi-frame image without one shared plane orientation and "
                         "per-frame positions", "export from a series of single-frame CT images (or from the NIfTI)")
    measures = g.pixel_spacing
    planes = [Plane(g.positions[k], g.orientations[k], measures, float(g.thickness or 0.0)) for k in range(frames)]
    indices = [pixel_indices(ds, volume.affine, volume.shape, plane) for plane in planes]
    _covers(indices, volume.shape, f"{frames} frames")
    return SourceSeries(datasets=[ds], volume_shape=volume.shape, indices=indices, derived=False, files=[path],
                        planes=planes)


#: a series' instances among the sources: single-frame datasets, their files, and enhanced (multi-frame) images
Instances = tuple[list[Dataset], list[Path], list[tuple[Dataset, Path]]]


def series_instances(sources: Iterable[Path | tuple[str, bytes]], volume: Volume) -> Instances:
    """The instances among ``sources`` (paths, or (name, bytes) zip members) that belong to the volume's series
    (and its acquisition), read once."""
    series_key = volume.meta.get("series_key", "")
    datasets: list[Dataset] = []
    files: list[Path] = []
    enhanced: list[tuple[Dataset, Path]] = []
    for source in sources:
        path = Path(source[0]) if isinstance(source, tuple) else Path(source)
        try:
            raw = source[1] if isinstance(source, tuple) else Path(source).read_bytes()
            ds = pydicom.dcmread(io.BytesIO(undeflate_dicom(raw, path.name)))  # bounded, before pydicom inflates
        except (pydicom.errors.InvalidDicomError, OSError):
            continue  # not DICOM (e.g. a README beside the series)
        multi_frame = int(ds.get("NumberOfFrames", 1) or 1) > 1
        if "PixelData" not in ds or ("ImagePositionPatient" not in ds and not multi_frame):
            continue
        if series_key and str(ds.get("SeriesInstanceUID", "")) not in {series_key, ""}:
            continue
        if volume.meta.get("acquisition") and acquisition_key(ds) != volume.meta["acquisition"]:
            continue  # another acquisition of a series that repeats one: not the voxels loaded
        for keyword in IDENTITY:  # type 2 in the objects derived from it: present, empty when the source left it out
            if keyword not in ds:
                setattr(ds, keyword, "")
        if multi_frame:
            enhanced.append((ds, Path(path)))
            continue
        datasets.append(ds)
        files.append(Path(path))
    return datasets, files, enhanced


def place_instances(volume: Volume, instances: Instances) -> SourceSeries:
    """The series' instances placed on the volume's grid: its single-frame images, or the frames of its one enhanced
    (multi-frame) image; InputError (field "source series") when they are not the volume's voxels."""
    datasets, files, enhanced = instances
    series_key = volume.meta.get("series_key", "")
    if enhanced and (datasets or len(enhanced) > 1):
        raise InputError("source series", series_key or "?", "holds several multi-frame images or both kinds",
                         "export from one enhanced CT image or a series of single-frame CT images (or from the NIfTI)")
    if enhanced:
        return _place_frames(enhanced[0][0], volume, enhanced[0][1])
    if not datasets:
        raise InputError("source series", series_key or "?", "no DICOM image of the loaded series found",
                         "point the cohort's study column at the DICOM folder the volume was loaded from")
    return _place(datasets, volume, derived=False, files=files)


def _uid(seed: bytes, part: str) -> str:
    return generate_uid(entropy_srcs=[seed.hex(), part])


#: the patient and study attributes a derived series copies from a DICOM source (empty when it has none)
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
            "AccessionNumber", "ReferringPhysicianName")


def derive_ct_series(volume: Volume, out_dir: Path, *, series_description: str = "Derived from NIfTI",
                     identity: Dataset | None = None) -> SourceSeries:
    """Write ``volume`` as a derived CT series (``CT00001.dcm`` ...) in ``out_dir`` and place it on the grid.

    UIDs are derived from the voxel data and the affine, so exporting the same
    study twice gives the same series. Patient and study identity attributes
    are present (type 2) but empty: a NIfTI source carries none. ``identity``: the source DICOM instance of a
    volume whose instances could not be the source (missing slices stacked without the gap): the series then
    joins that patient and study (``IDENTITY``, the StudyInstanceUID) in a frame of reference of its own.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    hu = np.asarray(volume.hu, dtype=np.float32)
    affine = np.asarray(volume.affine, dtype=np.float64)
    seed = hashlib.sha256(hu.tobytes() + affine.tobytes()).digest()[:16]
    study_uid, series_uid, for_uid = _uid(seed, "study"), _uid(seed, "series"), _uid(seed, "frame-of-reference")
    pixels = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    sp_slice, sp_row, sp_col = (float(v) for v in volume.spacing_mm)
    row_cos = affine[:3, 2] / np.linalg.norm(affine[:3, 2])  # along a row = increasing column index
    col_cos = affine[:3, 1] / np.linalg.norm(affine[:3, 1])  # down a column = increasing row index
    datasets: list[Dataset] = []
    files: list[Path] = []
    for k in range(hu.shape[0]):
        sop_uid = _uid(seed, f"instance-{k}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(out_dir / f"CT{k + 1:05d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = ("Converted from a NIfTI volume (HU rounded to integers)" if identity is None else
                                    "Restacked from the source DICOM series on one regular grid as loaded (HU rounded "
                                    "to integers)")
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "StudyID", "AccessionNumber", "ReferringPhysicianName", "PositionReferenceIndicator",
                        "KVP", "AcquisitionNumber", "Manufacturer", "Laterality", "PatientPosition"):
            setattr(ds, keyword, "" if keyword != "Manufacturer" else MANUFACTURER)
        if identity is not None:
            for keyword in IDENTITY:
                if keyword in identity:
                    setattr(ds, keyword, identity.data_element(keyword).value)
        ds.Modality = "CT"
        ds.StudyInstanceUID = str(identity.get("StudyInstanceUID", "") or study_uid) if identity is not None else study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = series_description
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = for_uid
        ds.PatientOrientation = ""
        ds.ImagePositionPatient = [round(float(v), 6) for v in affine[:3, :3] @ np.array([k, 0.0, 0.0]) + affine[:3, 3]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in np.r_[row_cos, col_cos]]
        ds.PixelSpacing = [round(sp_row, 6), round(sp_col, 6)]
        ds.SliceThickness = round(sp_slice, 6)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = out_dir / f"CT{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        datasets.append(ds)
        files.append(path)
    return _place(datasets, volume, derived=True, files=files)
