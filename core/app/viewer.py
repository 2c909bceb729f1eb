"""The CT viewer's planes: axial, coronal and sagittal reformats of a volume, their spacing, the opening slice."""

from __future__ import annotations

import numpy as np

from core.errors import InputError

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


def plane_count(shape: tuple[int, int, int], plane: str) -> int:
    """How many slices a plane has for a ``[slices, rows, cols]`` volume."""
    s, r, c = shape
    return {"axial": s, "coronal": r, "sagittal": c}[_check_plane(plane)]


def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise InputError("plane", plane, f"must be one of {', '.join(PLANES)}", "pick a listed plane")
    return plane


ATTENTION_PEAK_RATIO = 1.5  # attention over slices counts as peaked when its maximum is this many times uniform


def default_slice(weights: np.ndarray | None, n_slices: int) -> int:
    """The axial slice a case opens on.

    The slice the model attends to most when its attention over slices has a
    clear peak (maximum at least ``ATTENTION_PEAK_RATIO`` times the uniform
    weight ``1 / n_slices``); otherwise the middle slice. A nearly flat attention
    (the shipped demo models' is within 10 % of uniform) would otherwise open on
    an arbitrary slice, often an apex with no lung.

    >>> default_slice(np.full(32, 1 / 32), 32), default_slice(np.r_[np.full(31, 0.02), 0.38], 32), default_slice(None, 5)
    (16, 31, 2)
    """
    middle = n_slices // 2
    if weights is None:
        return middle
    w = np.asarray(weights, dtype=float).ravel()
    if w.size != n_slices or n_slices == 0 or not np.isfinite(w).all() or w.max() <= 0:
        return middle
    return int(np.argmax(w)) if w.max() >= ATTENTION_PEAK_RATIO * w.sum() / n_slices else middle


def plane_slice(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One 2D plane of a ``[slices, rows, cols]`` array, oriented for display.

    axial: rows (anterior at top) x cols (patient right on the left);
    coronal and sagittal: superior at the top (slice 0 is inferior, so flipped).
    """
    n = plane_count(array.shape, plane)  # type: ignore[arg-type]
    if not 0 <= index < n:
        raise InputError("slice", index, f"must be in 0..{n - 1} for the {plane} plane", "move the slider into range")
    if plane == "axial":
        return array[index]
    if plane == "coronal":
        return array[::-1, index, :]
    return array[::-1, :, index]


def plane_spacing(spacing_mm: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(vertical, horizontal) pixel spacing in mm of a displayed plane."""
    s, r, c = (float(x) for x in spacing_mm)
    return {"axial": (r, c), "coronal": (s, c), "sagittal": (s, r)}[_check_plane(plane)]
