"""A CT acquired with the gantry tilted: slices stacked along the table, not along their own normal.

Each slice's ImagePositionPatient steps off the slice normal, so stacking the slices as they are shears the anatomy.
The loader shifts every slice in-plane onto the first slice's grid, as dcm2niix and 3D Slicer do. The factory writes
"acquired" slices that are a known volume cut along such a tilted stack; the loaded volume must be that volume.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from core.io.dicom_frames import inplane_shifts
from core.io.study import load_study
from tests.dicom_factory import phantom_hu, write_series

SHAPE = (12, 40, 48)  # slices, rows, cols
SPACING = (2.5, 0.75, 0.75)


def acquire(truth: np.ndarray, rows_px: int, cols_px: int, fill: float) -> np.ndarray:
    """The slices a tilted acquisition stores: slice k of ``truth`` seen from a plane moved (rows_px, cols_px) * k
    pixels, so stored pixel (i, j) of slice k is truth pixel (i + k rows_px, j + k cols_px); ``fill`` outside."""
    out = np.full_like(truth, fill)
    n, rows, cols = truth.shape
    for k in range(n):
        di, dj = k * rows_px, k * cols_px
        src_i, src_j = slice(max(di, 0), rows + min(di, 0)), slice(max(dj, 0), cols + min(dj, 0))
        dst_i, dst_j = slice(max(-di, 0), rows + min(-di, 0)), slice(max(-dj, 0), cols + min(-dj, 0))
        out[k, dst_i, dst_j] = truth[k, src_i, src_j]
    return out


def valid(shape: tuple[int, int, int], rows_px: int, cols_px: int) -> np.ndarray:
    """Where the acquisition saw the truth: the voxels a tilted stack covers."""
    n, rows, cols = shape
    k, i, j = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (i - k * rows_px >= 0) & (i - k * rows_px < rows) & (j - k * cols_px >= 0) & (j - k * cols_px < cols)


def test_tilted_stack_is_shifted_back_onto_one_grid(tmp_path):
    """Slices 2 pixels down and 1 pixel left per slice: the loaded volume is the truth wherever the acquisition saw
    it, air (the volume's lowest value) elsewhere, with a warning that gives the tilt; stacked as they are, the slices
    would differ from the truth by hundreds of HU."""
    truth = phantom_hu(SHAPE, seed=3)
    fill = float(truth.min())
    stored = acquire(truth, 2, -1, fill)
    step = (-1 * SPACING[2], 2 * SPACING[1])  # mm per slice along (row_cos, col_cos)
    written = write_series(tmp_path / "tilted", stored, spacing_mm=SPACING, inplane_step_mm=step, identified=False,
                           shuffle=True)
    vol = load_study(written.folder)
    seen = valid(SHAPE, 2, -1)
    np.testing.assert_array_equal(vol.hu[seen], truth[seen])
    np.testing.assert_array_equal(vol.hu[~seen], fill)
    tilt = np.degrees(np.arctan(np.hypot(*step) / SPACING[0]))
    assert any("gantry tilt" in w and f"{tilt:.1f} deg" in w for w in vol.warnings), vol.warnings
    assert float(vol.meta["gantry_tilt_deg"]) == pytest.approx(tilt, abs=0.01)
    np.testing.assert_allclose(vol.spacing_mm, SPACING)
    assert np.abs(stored[seen] - truth[seen]).mean() > 50  # what stacking them as they are gives

    regular = load_study(write_series(tmp_path / "regular", stored, spacing_mm=SPACING, identified=False).folder)
    np.testing.assert_array_equal(regular.hu, stored)  # a regular stack is left as it is, without the warning
    assert not any("gantry tilt" in w for w in regular.warnings) and "gantry_tilt_deg" not in regular.meta


def test_half_pixel_steps_are_interpolated(tmp_path):
    """Slices half a pixel apart per slice, on an image that spline interpolation reproduces exactly (a ramp down
    the rows): the loaded volume is the ramp inside the field of view, away from its edges (there the spline
    meets the air beyond the image)."""
    n, rows, cols = SHAPE
    k, i, _ = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    stored = (10.0 * (i + 0.5 * k) + k - 500.0).astype(np.float32)  # slice k seen half a pixel lower per slice
    truth = 10.0 * i + k - 500.0
    written = write_series(tmp_path / "tilted", stored, spacing_mm=SPACING, inplane_step_mm=(0.0, 0.5 * SPACING[1]),
                           identified=False)
    vol = load_study(written.folder)
    inside = (i >= np.ceil(0.5 * k) + 4) & (i < rows - 4)
    np.testing.assert_allclose(vol.hu[inside], truth[inside], atol=0.01)
    assert any("gantry tilt" in w for w in vol.warnings)


def test_enhanced_ct_of_a_tilted_stack(tmp_path):
    """The same tilted stack in one Legacy Converted Enhanced CT instance: its per-frame positions are shifted
    the same way, to the same volume as the classic series."""
    legacy = pytest.importorskip("highdicom.legacy")
    truth = phantom_hu(SHAPE, seed=4)
    stored = acquire(truth, 3, 0, float(truth.min()))
    written = write_series(tmp_path / "classic", stored, spacing_mm=SPACING, inplane_step_mm=(0.0, 3 * SPACING[1]),
                           identified=False)
    ds = legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in written.paths], series_instance_uid=pydicom.uid.generate_uid(), series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    ds.save_as(tmp_path / "enhanced.dcm")
    enhanced, classic = load_study(tmp_path / "enhanced.dcm"), load_study(written.folder)
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    seen = valid(SHAPE, 3, 0)
    np.testing.assert_array_equal(enhanced.hu[seen], truth[seen])
    assert any("gantry tilt" in w for w in enhanced.warnings), enhanced.warnings


def test_tilted_image_planes_stacked_along_the_table():
    """The other way scanners write it: the image planes themselves tilted 15 degrees about the left-right axis,
    the positions moving straight along the table. The angle between them is the tilt; rounding of the positions
    (0.01 mm) is not."""
    t = np.radians(15.0)
    row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    positions = np.array([[0.0, 0.0, 5.0 * k] for k in range(20)])
    shifts = inplane_shifts(positions, row_cos, col_cos, (0.8, 0.8))
    assert shifts is not None and shifts.tilt_deg == pytest.approx(15.0, abs=1e-6)
    np.testing.assert_allclose(shifts.rows_px, -np.arange(20) * 5.0 * np.sin(t) / 0.8, atol=1e-9)  # 5 mm x sin t per slice
    rounded = np.round(positions + np.random.default_rng(0).uniform(-0.005, 0.005, positions.shape), 2)
    assert inplane_shifts(rounded, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.8, 0.8)) is None
    # an orientation written with 3 decimals: its normal 1e-3 rad off the true one, 0.3 mm over 300 mm of slices
    long = np.array([[0.0, 0.0, 1.0 * k] for k in range(300)])
    assert inplane_shifts(long, np.array([1.0, 0, 0]), np.array([0, 1.0, 0.001]) / np.hypot(1, 0.001), (0.7, 0.7)) is None


def test_sheared_nifti_is_shifted_back_too(tmp_path):
    """A tilted CT converted to NIfTI without tilt correction keeps the tilt in a sheared affine (the slice axis steps
    2 pixels down the rows per slice): the NIfTI loader undoes it as the DICOM loader does, and an orthogonal
    affine is left alone."""
    import nibabel as nib

    truth = phantom_hu(SHAPE, seed=5)
    stored = acquire(truth, 2, 0, float(truth.min()))
    lps = np.eye(4)
    lps[:3, 0] = (0.0, 2 * SPACING[1], SPACING[0])  # convention axes: slices up (S), rows back (P), cols left (L)
    lps[:3, 1] = (0.0, SPACING[1], 0.0)
    lps[:3, 2] = (SPACING[2], 0.0, 0.0)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nib.save(nib.Nifti1Image(stored.astype(np.int16), ras), tmp_path / "sheared.nii.gz")
    vol = load_study(tmp_path / "sheared.nii.gz")
    seen = valid(SHAPE, 2, 0)
    np.testing.assert_allclose(vol.hu[seen], truth[seen], atol=1e-3)
    np.testing.assert_allclose(vol.spacing_mm, SPACING)
    assert abs(float(vol.affine[:3, 0] @ vol.affine[:3, 1])) < 1e-9  # the slice axis is the normal now
    assert any("gantry tilt" in w for w in vol.warnings), vol.warnings

    lps[:3, 0] = (0.0, 0.0, SPACING[0])
    nib.save(nib.Nifti1Image(stored.astype(np.int16), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), tmp_path / "plain.nii.gz")
    plain = load_study(tmp_path / "plain.nii.gz")
    np.testing.assert_array_equal(plain.hu, stored)
    assert not any("gantry tilt" in w for w in plain.warnings)


def test_tilted_image_planes_load_unsheared_and_say_so(tmp_path):
    """A series written the other way: image planes tilted 15 degrees about the left-right axis, positions straight
    along the table. The loader shifts each slice back (5 mm x sin 15 deg = 1.29 mm, 1.73 pixels of 0.75 mm per
    slice), keeps the volume in the tilted frame and says both: the tilt and the orientation snapped to the axes."""
    from tests.dicom_factory import edit_file

    t = np.radians(15.0)
    truth = phantom_hu(SHAPE, seed=6)
    written = write_series(tmp_path / "tilted", truth, spacing_mm=(5.0, 0.75, 0.75), identified=False)
    origin = np.array([float(v) for v in pydicom.dcmread(written.paths[0]).ImagePositionPatient])

    def tilt(ds: pydicom.Dataset) -> None:
        k = int(round((float(ds.ImagePositionPatient[2]) - origin[2]) / 5.0))
        ds.ImageOrientationPatient = [1, 0, 0, 0, f"{np.cos(t):.6f}", f"{-np.sin(t):.6f}"]
        ds.ImagePositionPatient = [f"{origin[0]:.3f}", f"{origin[1]:.3f}", f"{origin[2] + 5.0 * k:.3f}"]

    for path in written.paths:
        edit_file(path, tilt)
    vol = load_study(written.folder)
    assert vol.shape == SHAPE
    assert any(w.startswith("gantry tilt: the slice positions step 15.0 deg") for w in vol.warnings), vol.warnings
    assert any(w.startswith("oblique orientation (15.0 degrees") for w in vol.warnings), vol.warnings
    np.testing.assert_allclose(vol.spacing_mm[0], 5.0 * np.cos(t), atol=1e-3)  # along the tilted normal
    # slice k's plane lies 1.73 k pixels further down the rows than the first slice's: its content moved up by that
    k, rows = 4, SHAPE[1]
    shift = int(round(k * 5.0 * np.sin(t) / 0.75))  # 7 (6.9)
    moved = np.abs(vol.hu[k, 5:rows - 5 - shift] - truth[k, 5 + shift:rows - 5]).mean()
    assert moved < 0.5 * np.abs(vol.hu[k, 5:rows - 5 - shift] - truth[k, 5:rows - 5 - shift]).mean()
