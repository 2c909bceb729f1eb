"""Enhanced (multi-frame) CT: geometry and HU from the functional groups, not from top-level attributes.

The instances are Legacy Converted Enhanced CT images written by highdicom from the test factory's classic
series, so the expected volume is the factory's own ``hu``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from core.io.dicom_frames import frame_geometry
from core.io.study import load_study
from tests.dicom_factory import SeriesWritten, write_series

legacy = pytest.importorskip("highdicom.legacy")

SHAPE = (10, 24, 32)  # slices, rows, cols


def enhanced(folder: Path, written: SeriesWritten) -> pydicom.Dataset:
    """One Legacy Converted Enhanced CT instance holding every slice of ``written``."""
    sources = [pydicom.dcmread(p) for p in written.paths]
    return legacy.LegacyConvertedEnhancedCTImage(
        sources, series_instance_uid=pydicom.uid.generate_uid(), series_number=90,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)


def frames_of(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))


def rewrite(ds: pydicom.Dataset, pixels: np.ndarray, groups: list[Dataset]) -> None:
    """Replace the frames (uncompressed) and their per-frame functional groups."""
    dtype = ds.pixel_array.dtype
    ds.NumberOfFrames = len(groups)
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)


@pytest.mark.parametrize("orientation", ["axial", "axial_feet_first", "coronal", "sagittal"])
def test_enhanced_ct_gives_the_classic_series_volume(tmp_path, orientation):
    """No top-level RescaleIntercept, PixelSpacing or ImagePositionPatient: the HU (intercept -1024), the spacing and
    the slice order come from the functional groups, whatever the stored orientation."""
    written = write_series(tmp_path / "classic", shape=SHAPE, orientation=orientation, identified=False)
    ds = enhanced(tmp_path, written)
    assert "RescaleIntercept" not in ds and "PixelSpacing" not in ds and "ImagePositionPatient" not in ds
    ds.save_as(tmp_path / "enhanced.dcm")
    vol = load_study(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(vol.hu, written.hu)
    np.testing.assert_allclose(vol.spacing_mm, (2.5, 0.75, 0.75))
    assert not any("1 mm assumed" in w or "file order" in w for w in vol.warnings), vol.warnings
    classic = load_study(written.folder)
    np.testing.assert_allclose(vol.affine, classic.affine, atol=1e-6)


def test_frames_in_any_order_and_rescale_per_frame(tmp_path):
    """Frames stored shuffled, every other one with its own rescale (slope 0.5, the stored values doubled): the
    volume is still the classic series', and the gate of the shared rescale does not apply to them."""
    written = write_series(tmp_path / "classic", shape=SHAPE, identified=False)
    ds = enhanced(tmp_path, written)
    pixels = frames_of(ds).astype(np.int64)
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    shared = ds.SharedFunctionalGroupsSequence[0]
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    del shared.PixelValueTransformationSequence
    for k, group in enumerate(groups):
        item = Dataset()
        item.RescaleIntercept = intercept
        item.RescaleSlope = 0.5 if k % 2 else 1
        item.RescaleType = "HU"
        group.PixelValueTransformationSequence = DicomSequence([item])
        if k % 2:
            pixels[k] = pixels[k] * 2
    order = np.random.default_rng(0).permutation(len(groups))
    rewrite(ds, pixels[order], [groups[i] for i in order])
    ds.save_as(tmp_path / "shuffled.dcm")
    geometry = frame_geometry(pydicom.dcmread(tmp_path / "shuffled.dcm", stop_before_pixels=True), len(groups))
    assert geometry is not None and geometry.rescale_varies
    vol = load_study(tmp_path / "shuffled.dcm")
    np.testing.assert_array_equal(vol.hu, written.hu)


def test_second_orientation_and_repeated_positions_are_left_out(tmp_path):
    """Two frames of another orientation (a second stack) and a second time point of one position are left out
    with a warning each; the rest is the classic volume."""
    written = write_series(tmp_path / "classic", shape=SHAPE, identified=False)
    ds = enhanced(tmp_path, written)
    pixels = frames_of(ds)
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    shared = ds.SharedFunctionalGroupsSequence[0]
    plane = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    del shared.PlaneOrientationSequence
    extra = []
    for k, group in enumerate(groups + [copy.deepcopy(groups[3]), copy.deepcopy(groups[4])]):
        item = Dataset()
        item.ImageOrientationPatient = list(plane)
        group.PlaneOrientationSequence = DicomSequence([item])
        extra.append(group)
    for group in extra[-2:]:  # a coronal stack of two frames
        group.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    repeat = copy.deepcopy(groups[5])  # frame 5 again: a later time point at the same position
    rewrite(ds, np.concatenate([pixels, pixels[[3, 4]], pixels[[5]]]), extra + [repeat])
    ds.save_as(tmp_path / "stacks.dcm")
    vol = load_study(tmp_path / "stacks.dcm")
    np.testing.assert_array_equal(vol.hu, written.hu)
    assert any("2 frame(s) of another orientation" in w for w in vol.warnings), vol.warnings
    assert any("duplicate positions" in w for w in vol.warnings), vol.warnings


def test_compressed_enhanced_ct(tmp_path):
    """An instance with its frames in JPEG 2000 Lossless (one fragment per frame): exact HU."""
    pytest.importorskip("openjpeg")
    written = write_series(tmp_path / "classic", shape=(6, 40, 48), orientation="axial_feet_first", identified=False)
    ds = enhanced(tmp_path, written)
    ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(tmp_path / "j2k.dcm")
    np.testing.assert_array_equal(load_study(tmp_path / "j2k.dcm").hu, written.hu)


def test_identifying_values_of_an_enhanced_ct_are_found(tmp_path):
    """The PHI gate reads an enhanced instance's nested functional groups: a name written into a per-frame
    group's converted attributes is reported like a top-level one."""
    written = write_series(tmp_path / "classic", shape=SHAPE, identified=False)
    ds = enhanced(tmp_path, written)
    ds.PerFrameFunctionalGroupsSequence[2].UnassignedPerFrameConvertedAttributesSequence[0].OperatorsName = "CHASE^ROBERT"
    ds.save_as(tmp_path / "named.dcm")
    vol = load_study(tmp_path / "named.dcm")
    assert "OperatorsName" in vol.phi, vol.phi
