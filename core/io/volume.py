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
    # DICOM StudyDate (YYYYMMDD, "" when absent): a date, so kept apart from meta and never exported; it is the
    # default index date of an uploaded case
    study_date: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        s, r, c = self.hu.shape
        return int(s), int(r), int(c)

    @property
    def n_series(self) -> int:
        return max(1, len(self.series))
