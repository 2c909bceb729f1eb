"""core.io.nifti: real CT from ../shared/data, reorientation, broken geometry and voxels."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from core.errors import InputError
from core.io.nifti import gunzip_bounded, load_nifti, load_nifti_bytes
from core.io.study import inspect_study, load_study, load_study_bytes


def _write(path, data, affine, **header):
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def test_real_ct_inspect_numbers(real_ct):
    info = inspect_study(real_ct)
    assert info["format"] == "nifti" and info["modality"] == "CT"
    assert info["shape"] == [30, 101, 122]
    assert info["spacing_mm"] == [3.0, 3.0, 3.0]
    assert info["hu_min"] == -1100.0 and info["hu_max"] == 1207.0
    ref = np.asanyarray(nib.load(str(real_ct)).dataobj).astype(np.float64)
    assert info["hu_mean"] == pytest.approx(ref.mean(), abs=1e-3)
    assert info["n_series"] == 1 and info["phi"] == [] and info["warnings"] == []
    # its one volume is listed, as n_series counts it (the list was empty)
    assert info["series"] == [{"key": "volume", "n_instances": 1, "modality": "CT", "rows": 101, "cols": 122,
                               "derived": None, "contrast": None}]


def test_real_ct_orientation_matches_nibabel(real_ct):
    vol = load_study(real_ct)
    ras = np.asanyarray(nib.load(str(real_ct)).dataobj).astype(np.float32)  # [x: R, y: A, z: S], axes point to R, A, S
    # convention [S, P, L]: slices ascend superior, rows go anterior->posterior, cols right->left
    expected = np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.hu.flags.c_contiguous and vol.hu.dtype == np.float32
    # LPS affine: voxel (0, 0, 0) is the most inferior, anterior, patient-right corner
    corner_ras = nib.load(str(real_ct)).affine @ np.array([ras.shape[0] - 1, ras.shape[1] - 1, 0, 1])
    np.testing.assert_allclose(vol.affine[:3, 3], [-corner_ras[0], -corner_ras[1], corner_ras[2]], atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, 3.0], [0, 3.0, 0], [3.0, 0, 0]], atol=1e-6)


def test_bytes_and_suffixless_copies_load_identically(real_ct, tmp_path):
    data = real_ct.read_bytes()
    from_bytes = load_study_bytes(data, "scan.nii.gz")
    raw = tmp_path / "scan_without_suffix"
    raw.write_bytes(gzip.decompress(data))
    np.testing.assert_array_equal(from_bytes.hu, load_study(raw).hu)
    np.testing.assert_array_equal(from_bytes.hu, load_study_bytes(gzip.decompress(data), "x.nii").hu)


def test_zipped_nifti_loads_from_memory(real_ct):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(real_ct, "case/ct.nii.gz")
    vol = load_study_bytes(buf.getvalue(), "case.zip")
    np.testing.assert_array_equal(vol.hu, load_study(real_ct).hu)


def test_any_orientation_gives_the_same_convention_volume(tmp_path):
    rng = np.random.default_rng(0)
    ras = rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)
    ras_affine = np.diag([2.0, 3.0, 4.0, 1.0])
    base = load_nifti(_write(tmp_path / "ras.nii.gz", ras, ras_affine))
    assert base.hu.shape == (4, 5, 6) and base.spacing_mm == (4.0, 3.0, 2.0)
    # the same image stored LPI-style: flip x and z, permute axes
    lpi = np.transpose(ras[::-1, :, ::-1], (2, 0, 1))
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    affine[:3, 0] = [0, 0, -4.0]
    affine[:3, 1] = [-2.0, 0, 0]
    affine[:3, 2] = [0, 3.0, 0]
    affine[:3, 3] = ras_affine[:3, :3] @ np.array([5, 0, 3])
    other = load_nifti(_write(tmp_path / "lpi.nii", lpi, affine))
    np.testing.assert_array_equal(other.hu, base.hu)
    np.testing.assert_allclose(other.affine, base.affine, atol=1e-6)


def test_scaling_is_applied(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    vol = load_nifti(_write(tmp_path / "s.nii", data, np.eye(4), scl_slope=2.0, scl_inter=-1024.0))
    assert vol.hu.min() == -1024.0 and vol.hu.max() == 23 * 2 - 1024.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_rejected(tmp_path, bad):
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[1, 2, 3] = bad
    path = _write(tmp_path / "bad.nii.gz", data, np.eye(4))
    with pytest.raises(InputError, match=r"NIfTI voxels: got bad.nii.gz, (1 NaN and 0 inf|0 NaN and 1 inf) values"):
        load_study(path)


def test_zero_spacing_and_singular_or_nan_affine_are_rejected(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "zero.nii"))
    with pytest.raises(InputError, match=r"NIfTI pixdim: got zero.nii, voxel spacing \[1.0, 0.0, 1.0\] is not positive and finite"):
        load_study(tmp_path / "zero.nii")
    singular = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    with pytest.raises(InputError, match=r"NIfTI affine: got singular.nii, is singular \(determinant 0\)"):
        load_nifti_bytes(_with_sform(data, singular), "singular.nii")
    nan_rows = np.eye(4, dtype=np.float32)[:3]
    nan_rows[0, 3] = np.nan
    with pytest.raises(InputError, match="NIfTI affine: got nan.nii, contains NaN or inf"):
        load_nifti_bytes(_with_sform(data, nan_rows), "nan.nii")


def _with_sform(data: np.ndarray, rows: np.ndarray) -> bytes:
    """NIfTI-1 bytes whose sform (srow_x/y/z at bytes 280..327, code at 254) is ``rows`` as written."""
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_qform(None, code=0)
    raw = bytearray(img.to_bytes())
    raw[254:256] = np.int16(1).tobytes()
    raw[280:328] = np.asarray(rows, dtype="<f4").tobytes()
    return bytes(raw)


def test_text_named_nii_gz_and_truncated_gzip(tmp_path, real_ct):
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n" * 5)
    with pytest.raises(InputError, match="notes.nii.gz, is a text file, not a DICOM, NIfTI or zip file"):
        load_study(text)
    cut = real_ct.read_bytes()[:5000]
    with pytest.raises(InputError, match="truncated"):
        load_study_bytes(cut, "cut.nii.gz")


def test_gunzip_is_bounded():
    blob = gzip.compress(bytes(10_000_000), compresslevel=1)
    with pytest.raises(InputError, match="expands beyond 1000000 bytes"):
        gunzip_bounded(blob, "big.nii.gz", limit=1_000_000)
    assert gunzip_bounded(blob, "big.nii.gz", limit=20_000_000) == bytes(10_000_000)


def test_a_header_without_orientation_or_spacing_is_named(tmp_path):
    """No sform and no qform (nibabel guesses the axes from pixdim), or an identity affine (1 mm voxels at the
    origin): each loads with a warning that says what is missing; a proper affine loads without one."""
    data = np.full((6, 8, 10), -1000, dtype=np.int16)
    data[:, 2:6, 2:8] = 40
    bare = nib.Nifti1Image(data, None)
    nib.save(bare, str(tmp_path / "bare.nii.gz"))
    assert [w for w in load_study(tmp_path / "bare.nii.gz").warnings if "without orientation" in w]
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "eye.nii.gz"))
    assert [w for w in load_study(tmp_path / "eye.nii.gz").warnings if w.startswith("NIfTI affine is the identity")]
    nib.save(nib.Nifti1Image(data, np.diag([-0.7, -0.7, 2.5, 1.0])), str(tmp_path / "ok.nii.gz"))
    assert load_study(tmp_path / "ok.nii.gz").warnings == []
