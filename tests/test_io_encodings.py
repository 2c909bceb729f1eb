"""Studies as real senders write them: DICOM whose file meta is missing or names another encoding than the body's,
big-endian DICOM, slices without ImagePositionPatient, and NIfTI files with long header extensions."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian

from core.errors import InputError
from core.io.study import load_study
from tests.dicom_factory import write_series

SHAPE = (6, 40, 48)


def _rewrite(folder: Path, edit) -> None:
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        edit(path, ds)


def test_explicit_vr_without_file_meta_loads_the_right_pixels(tmp_path: Path) -> None:
    """A raw dataset (no preamble, no file meta) written in Explicit VR: the pixel element's own bytes say so. The
    loader read its length field as two pixels (small images) or refused it as truncated (large ones)."""
    made = write_series(tmp_path / "s", shape=SHAPE, signed=True, intercept=0.0, seed=3)

    def no_meta(path: Path, ds: pydicom.Dataset) -> None:
        pydicom.Dataset(ds).save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)  # no preamble

    _rewrite(made.folder, no_meta)
    assert made.paths[0].read_bytes()[128:132] != b"DICM"
    vol = load_study(made.folder)
    np.testing.assert_array_equal(vol.hu, made.hu)


@pytest.mark.filterwarnings("ignore:Expected implicit VR, but found explicit VR")
def test_file_meta_naming_implicit_vr_over_an_explicit_body(tmp_path: Path) -> None:
    """Some writers put Implicit VR Little Endian in the file meta of a body written Explicit VR."""
    made = write_series(tmp_path / "s", shape=SHAPE, seed=4)
    for path in made.paths:
        data = path.read_bytes()
        at = data.index(b"1.2.840.10008.1.2.1\x00")
        path.write_bytes(data[:at] + b"1.2.840.10008.1.2\x00\x00\x00" + data[at + 20:])  # same length: the group stays valid
    vol = load_study(made.folder)
    np.testing.assert_array_equal(vol.hu, made.hu)
    assert any("Expected implicit VR, but found explicit VR" in w for w in vol.warnings)  # pydicom's, passed on


def test_explicit_vr_big_endian_series(tmp_path: Path) -> None:
    """The retired big-endian syntax: its PixelData tag is byte-swapped too (it was taken for "no pixel data")."""
    made = write_series(tmp_path / "s", shape=SHAPE, signed=True, intercept=0.0, seed=5)

    def big_endian(path: Path, ds: pydicom.Dataset) -> None:
        out = pydicom.Dataset(ds)
        out.PixelData = ds.pixel_array.astype(">i2").tobytes()
        out.file_meta = ds.file_meta
        out.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        out.save_as(path, enforce_file_format=True)

    _rewrite(made.folder, big_endian)
    vol = load_study(made.folder)
    np.testing.assert_array_equal(vol.hu, made.hu)


def _without_positions(made, *, keep_location: bool, keep_number: bool, reverse_numbers: bool = False) -> None:
    rng = random.Random(0)
    n = len(made.paths)
    z0 = min(float(pydicom.dcmread(path).ImagePositionPatient[2]) for path in made.paths)
    for path in made.paths:
        ds = pydicom.dcmread(path)
        z = float(ds.ImagePositionPatient[2])
        k = int(round((z - z0) / made.spacing_mm[0]))
        del ds.ImagePositionPatient
        if keep_location:
            ds.SliceLocation = z
        elif "SliceLocation" in ds:
            del ds.SliceLocation
        if not keep_number:
            del ds.InstanceNumber
        elif reverse_numbers:
            ds.InstanceNumber = n - k  # counted from the head, as some scanners do
        path.unlink()
        ds.save_as(path.with_name(f"{rng.randrange(10**9):09d}"), enforce_file_format=True)  # names in no order


def test_slices_without_positions_are_ordered_by_slice_location(tmp_path: Path) -> None:
    """InstanceNumber counts from the head here: ordering by it put the head at slice 0 (upside down)."""
    made = write_series(tmp_path / "s", shape=SHAPE, seed=6)
    _without_positions(made, keep_location=True, keep_number=True, reverse_numbers=True)
    vol = load_study(made.folder)
    np.testing.assert_array_equal(vol.hu, made.hu)
    assert vol.spacing_mm[0] == pytest.approx(made.spacing_mm[0])
    assert any("ordered by SliceLocation" in w for w in vol.warnings)


def test_slices_without_positions_or_locations_follow_instance_numbers_with_a_warning(tmp_path: Path) -> None:
    made = write_series(tmp_path / "s", shape=SHAPE, seed=7)
    _without_positions(made, keep_location=False, keep_number=True)
    vol = load_study(made.folder)
    np.testing.assert_array_equal(vol.hu, made.hu)
    assert any("ordered by InstanceNumber (the head-foot direction is not known)" in w for w in vol.warnings)


def test_slices_with_no_order_at_all_are_refused(tmp_path: Path) -> None:
    """No position, location or instance number: stacking the files by name made a scrambled volume, silently."""
    made = write_series(tmp_path / "s", shape=SHAPE, seed=8)
    _without_positions(made, keep_location=False, keep_number=False)
    with pytest.raises(InputError, match="without ImagePositionPatient, SliceLocation or distinct InstanceNumbers: their order is unknown"):
        load_study(made.folder)


def test_nifti_with_a_long_header_extension_loads(tmp_path: Path) -> None:
    """AFNI writes several kB of extension into every .nii; the header was parsed from its first 540 bytes only."""
    hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4) - 1000  # x, y, z
    img = nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"<AFNI_attributes>" + b"x" * 4000 + b"</AFNI_attributes>"))
    path = tmp_path / "afni.nii"
    img.to_filename(path)
    vol = load_study(path)
    assert vol.spacing_mm == pytest.approx((3.0, 2.0, 2.0))
    assert sorted(vol.hu.ravel().tolist()) == sorted(hu.astype(np.float32).ravel().tolist())


def _nifti(tmp_path: Path, name: str, data: np.ndarray | None = None, **header: object) -> Path:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4) - 1000 if data is None else data
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    for key, value in header.items():
        img.header[key] = value
    path = tmp_path / name
    img.to_filename(path)
    return path


def test_nifti_units_singleton_axes_and_orientation_conflicts(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.002, 0.002, 0.003, 1.0]))
    img.header.set_xyzt_units("meter")
    img.to_filename(tmp_path / "metres.nii")
    vol = load_study(tmp_path / "metres.nii")
    assert vol.spacing_mm == pytest.approx((3.0, 2.0, 2.0))  # as ITK reads it
    assert any("spatial unit is meters (xyzt_units): spacing and positions converted to mm" in w for w in vol.warnings)
    # 3 mm voxels labelled metres (a wrong unit, not 3 m voxels): read as mm, with a warning
    wrong = load_study(_nifti(tmp_path, "m.nii", np.zeros((6, 5, 4), np.int16), xyzt_units=1))
    assert wrong.spacing_mm == pytest.approx((3.0, 2.0, 2.0))
    assert any("but its voxels would then be 2000 x 2000 x 3000 mm" in w for w in wrong.warnings)
    nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([40.0, 40.0, 40.0, 1.0])).to_filename(tmp_path / "big.nii")
    big = load_study(tmp_path / "big.nii")
    assert any(w.startswith("voxel spacing 40 x 40 x 40 mm is outside what a CT has") for w in big.warnings)
    assert load_study(_nifti(tmp_path, "mm.nii", xyzt_units=2)).spacing_mm == pytest.approx((3.0, 2.0, 2.0))
    five = _nifti(tmp_path, "5d.nii", np.zeros((6, 5, 4, 1, 1), np.int16))
    assert load_study(five).shape == (4, 5, 6)
    img = nib.load(_nifti(tmp_path, "c.nii"))
    flipped = np.diag([-2.0, 2.0, 3.0, 1.0])
    img.set_qform(flipped, code=1)
    img.to_filename(tmp_path / "conflict.nii")
    assert any("sform (RAS) and qform (LAS) disagree" in w for w in load_study(tmp_path / "conflict.nii").warnings)


def test_unreadable_kinds_of_nifti_and_dicom_say_what_they_are(tmp_path: Path) -> None:
    pair = tmp_path / "pair.hdr"
    nib.save(nib.Nifti1Pair(np.zeros((4, 4, 4), np.int16), np.eye(4)), pair)
    with pytest.raises(InputError, match=r"header of an \.hdr/\.img pair"):
        load_study(pair)
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(InputError, match=r"NIfTI datatype: got rgb\.nii, is colour \(R\+G\+B\)"):
        load_study(_nifti(tmp_path, "rgb.nii", rgb))
    folder = tmp_path / "folder"
    folder.mkdir()
    _nifti(folder, "ct.nii.gz")
    with pytest.raises(InputError, match=r"but NIfTI \(ct\.nii\.gz\); fix: point at the NIfTI file itself"):
        load_study(folder)
    made = write_series(tmp_path / "float", shape=(2, 8, 8), seed=9)
    for path in made.paths:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.FloatPixelData = np.zeros((8, 8), np.float32).tobytes()
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match=r"2 float pixel data \(FloatPixelData"):
        load_study(made.folder)
