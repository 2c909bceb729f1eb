"""The in-memory CT volume every loader returns.

Orientation convention (documented once, used everywhere):

* ``hu`` is float32 ``[slices, rows, cols]`` in Hounsfield units.
* slices run inferior -> superior (axial slices first, index 0 = most inferior),
  rows run anterior -> posterior, columns run patient right -> patient left
  (the radiological display convention: the patient's right is on the image's left).
* ``affine`` (4x4) maps a voxel index ``(slice, row, col, 1)`` to patient
  coordinates in millimetres, LPS (DICOM) convention.
* ``spacing_mm`` is ``(slice, row, col)`` in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a study (non-identifying summary)."""

    key: str  # SeriesInstanceUID or a fallback key when the UID is blank
    n_instances: int
    modality: str
    rows: int
    cols: int
    description_present: bool = False
    derived: bool = False  # ImageType DERIVED: a reformat, a projection (MIP), a subtraction... not the acquisition
    contrast: str = ""  # "yes" / "no" as its header records it (core.io.contrast), "" when it records nothing


def series_labels(series: list[SeriesInfo]) -> dict[str, str]:
    """{key: label} for a series picker: each label is distinct (its place in the study, and the end of its UID), so
    two series alike in size can be told apart and chosen (a picker that matches labels would read the first).

    >>> a = SeriesInfo("1.2.840.99.17", 300, "CT", 512, 512); b = SeriesInfo("1.2.840.99.42", 300, "CT", 512, 512, contrast="yes")
    >>> list(series_labels([a, b]).values())
    ['1 of 2: CT series, 300 images, 512 x 512 (UID ...99.17)', '2 of 2: CT series, 300 images, 512 x 512, with contrast (UID ...99.42)']
    """
    out = {}
    for n, info in enumerate(series, 1):
        contrast = {"yes": ", with contrast", "no": ", without contrast"}.get(info.contrast, "")
        out[info.key] = (f"{n} of {len(series)}: {info.modality} series{' (derived)' if info.derived else ''}, "
                         f"{info.n_instances} images, {info.rows} x {info.cols}{contrast} (UID ...{info.key[-5:]})")
    return out


@dataclass
class Volume:
    """A CT (or other) volume in the convention of this module."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    modality: str = "CT"
    format: str = "nifti"  # "dicom" | "nifti"
    series: list[SeriesInfo] = field(default_factory=list)
    phi: list[str] = field(default_factory=list)  # attribute keywords still carrying identifying values
    # burned-in text risk: reasons such as "BurnedInAnnotation YES (2 of 6 instances)"; the app blocks until acknowledged
    burned_in: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. missing slices, uneven spacing
    meta: dict[str, str] = field(default_factory=dict)  # non-identifying metadata only
    # DICOM StudyDate (else SeriesDate, else AcquisitionDate; YYYYMMDD, "" when absent): a date, so kept apart from
    # meta and never exported; it is the default index date of an uploaded case
    study_date: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        s, r, c = self.hu.shape
        return int(s), int(r), int(c)

    @property
    def n_series(self) -> int:
        return max(1, len(self.series))


AIR_CEILING_HU = -200.0  # air reads about -1000 HU; a CT whose lowest voxel is above this has no air in HU


def hu_scale_warning(hu: np.ndarray, modality: str = "CT") -> str | None:
    """A warning when a CT volume holds no voxel that reads as air: the lowest value lies above
    ``AIR_CEILING_HU``. Outside the body, the lungs and bowel gas read about -1000 HU, so a CT that shows any of
    them has such voxels; stored pixel values whose RescaleIntercept (-1024) was lost on export do not. None for
    other modalities and for CT volumes that hold air.

    >>> hu_scale_warning(np.array([[[-1000.0, 40.0]]])) is None
    True
    >>> hu_scale_warning(np.array([[[0.0, 1064.0]]])).startswith("no voxel reads as air")
    True
    """
    if modality.strip().upper() not in ("CT", "") or hu.size == 0:
        return None
    lowest = float(np.min(hu))
    if lowest <= AIR_CEILING_HU:
        return None
    return (f"no voxel reads as air (the lowest is {lowest:.0f} HU; air is about -1000 HU): if this CT shows air "
            "(outside the body, the lungs, bowel gas), its values are not Hounsfield units, e.g. stored pixel values "
            "whose RescaleIntercept was lost on export; the models and checks read them as HU")


CT_SPACING_MM = (0.1, 15.0)  # a CT voxel's spacing along any axis lies within this (a micro-CT's or a scout's aside)


def spacing_warning(spacing_mm: tuple[float, float, float]) -> str | None:
    """A warning when a voxel spacing lies outside :data:`CT_SPACING_MM`: a header whose unit or pixdim is wrong
    (metres read as millimetres gives 3,000 mm voxels), which every size and volume read from it repeats.

    >>> spacing_warning((3.0, 0.7, 0.7)) is None
    True
    >>> spacing_warning((3000.0, 3000.0, 3000.0)).startswith("voxel spacing 3000 x 3000 x 3000 mm")
    True
    """
    lo, hi = CT_SPACING_MM
    if all(lo <= float(v) <= hi for v in spacing_mm):
        return None
    shown = " x ".join(f"{float(v):.4g}" for v in spacing_mm)
    return (f"voxel spacing {shown} mm is outside what a CT has ({lo:g}-{hi:g} mm): check the header's spacing and "
            "unit; sizes, volumes and the models' checks read it as given")
