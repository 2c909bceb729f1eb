"""core.io.dicom / core.io.study on synthetic DICOM series, HU checked against SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.errors import InputError
from core.io.dicom import to_convention
from core.io.study import inspect_study, load_study, load_study_bytes
from tests.dicom_factory import (
    PHI_KEYWORDS,
    edit_file,
    phantom_hu,
    write_series,
    write_two_series,
    zip_folder,
)

sitk = pytest.importorskip("SimpleITK")

SHAPE = (12, 40, 48)  # slices, rows, cols: rows != cols so that transposes show


def sitk_hu(folder: Path, series_uid: str | None = None) -> np.ndarray:
    """HU from SimpleITK's ImageSeriesReader, reoriented to our convention (LPS index order)."""
    reader = sitk.ImageSeriesReader()
    if series_uid is None:
        names = reader.GetGDCMSeriesFileNames(str(folder))
    else:
        names = reader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader.SetFileNames(names)
    image = sitk.DICOMOrient(reader.Execute(), "LPS")  # x -> L, y -> P, z -> S; array is [z, y, x]
    return sitk.GetArrayFromImage(image).astype(np.float32)


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("dicom")
    made = {
        "plain": write_series(root / "plain", shape=SHAPE, seed=1),
        "rle": write_series(root / "rle", shape=SHAPE, compression="rle", seed=2, shuffle=True),
        "blank_rle": write_series(root / "blank_rle", shape=SHAPE, compression="rle", series_uid="", seed=3),
        "slope": write_series(root / "slope", shape=SHAPE, slope=0.5, intercept=-1000.0, signed=True, seed=4,
                              hu=np.round(phantom_hu(SHAPE, seed=4) * 2) / 2),
        "signed": write_series(root / "signed", shape=SHAPE, signed=True, intercept=0.0, seed=5),
        "rot180": write_series(root / "rot180", shape=SHAPE, orientation="axial_rot180", seed=6, shuffle=True),
        "feet_first": write_series(root / "feet_first", shape=SHAPE, orientation="axial_feet_first", seed=7),
        "coronal": write_series(root / "coronal", shape=SHAPE, orientation="coronal", seed=8),
        "j2k": write_series(root / "j2k", shape=SHAPE, compression="j2k", signed=True, intercept=0.0, seed=9, shuffle=True),
        "jls": write_series(root / "jls", shape=SHAPE, compression="jls", seed=10),
        "jpeg_lossless": write_series(root / "jpeg_lossless", shape=SHAPE, compression="jpeg_lossless", series_uid="", seed=11),
    }
    return {"root": root, **made}


@pytest.mark.parametrize("name", ["plain", "rle", "blank_rle", "slope", "signed", "rot180", "feet_first", "coronal", "j2k", "jls", "jpeg_lossless"])
def test_folder_matches_truth_and_simpleitk(series_dir, name):
    written = series_dir[name]
    vol = load_study(written.folder)
    ts = str(pydicom.dcmread(written.paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert ts == written.transfer_syntax
    assert vol.format == "dicom" and vol.modality == "CT"
    assert vol.hu.dtype == np.float32 and vol.hu.shape == SHAPE
    assert vol.spacing_mm == pytest.approx(written.spacing_mm)
    np.testing.assert_array_equal(vol.hu, written.hu)
    np.testing.assert_array_equal(vol.hu, sitk_hu(written.folder))
    assert vol.warnings == []
    # the affine maps voxel (0, 0, 0) to the position the factory gave the convention origin
    np.testing.assert_allclose(vol.affine[:3, 3], [-100.0, -120.0, -300.0], atol=1e-4)
    # LPS affine: axis 0 -> +z (superior), axis 1 -> +y (posterior), axis 2 -> +x (patient left)
    np.testing.assert_allclose(vol.affine[:3, :3], np.array([[0, 0, 0.75], [0, 0.75, 0], [2.5, 0, 0]]), atol=1e-6)


@pytest.mark.parametrize("name", ["plain", "blank_rle"])
def test_zip_bytes_and_zip_file_give_the_same_volume(series_dir, name, tmp_path):
    written = series_dir[name]
    data = zip_folder(written.folder)
    from_bytes = load_study_bytes(data, "upload.zip")
    np.testing.assert_array_equal(from_bytes.hu, sitk_hu(written.folder))
    path = tmp_path / "study.bin"  # content decides, not the suffix
    path.write_bytes(data)
    np.testing.assert_array_equal(load_study(path).hu, written.hu)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.bin"]  # nothing extracted


def test_single_file_and_single_file_bytes(series_dir):
    written = series_dir["plain"]
    path = sorted(written.paths)[3]
    vol = load_study(path)
    assert vol.hu.shape == (1, SHAPE[1], SHAPE[2])
    z = int(round((float(pydicom.dcmread(path).ImagePositionPatient[2]) + 300.0) / 2.5))
    np.testing.assert_array_equal(vol.hu[0], written.hu[z])
    same = load_study_bytes(path.read_bytes(), "slice.dcm")
    np.testing.assert_array_equal(same.hu, vol.hu)


def test_ct_series_is_chosen_over_a_larger_pet_series(tmp_path):
    """A PET/CT export: the CT series is loaded by default though the PET series has more images; the PET series,
    chosen by name, loads with a one-line warning that its values are not Hounsfield units."""
    study = pydicom.uid.generate_uid()
    ct = write_series(tmp_path, shape=(6, 32, 32), study_uid=study, series_number=2, prefix="CT", identified=False)
    pet = write_series(tmp_path, shape=(12, 24, 24), study_uid=study, series_number=3, prefix="PT", modality="PT",
                       identified=False, seed=1)
    vol = load_study(tmp_path)
    np.testing.assert_array_equal(vol.hu, ct.hu)
    assert [s.modality for s in vol.series] == ["CT", "PT"]
    assert not any("not CT" in w for w in vol.warnings)
    other = load_study(tmp_path, series=pet.series_uid)
    np.testing.assert_array_equal(other.hu, pet.hu)
    assert any(w.startswith("modality PT, not CT:") for w in other.warnings), other.warnings


def test_blank_series_uid_gets_a_fallback_key(series_dir):
    vol = load_study(series_dir["blank_rle"].folder)
    assert len(vol.series) == 1 and vol.series[0].key.startswith("noUID-1-")
    assert vol.series[0].n_instances == SHAPE[0]


@pytest.mark.parametrize("blank", [False, True])
def test_two_series_in_one_folder(tmp_path, blank):
    big, small = write_two_series(tmp_path, big_shape=(10, 40, 40), small_shape=(5, 32, 32), blank_uids=blank)
    vol = load_study(tmp_path)
    assert vol.n_series == 2
    assert [s.n_instances for s in vol.series] == [10, 5]  # largest first
    np.testing.assert_array_equal(vol.hu, big.hu)
    assert any("2 series found" in w for w in vol.warnings)
    other = load_study(tmp_path, series=vol.series[1].key)
    np.testing.assert_array_equal(other.hu, small.hu)
    assert other.spacing_mm == pytest.approx((5.0, 1.0, 1.0))
    if not blank:
        np.testing.assert_array_equal(other.hu, sitk_hu(tmp_path, small.series_uid))
    with pytest.raises(InputError) as info:
        load_study(tmp_path, series="1.2.3.nope")
    message = str(info.value)
    assert message.startswith("series: got 1.2.3.nope, is not a series of this study; fix: choose one of: ")
    assert vol.series[0].key in message and vol.series[1].key in message


def test_inspect_study_keys_and_phi(series_dir):
    info = inspect_study(series_dir["rle"].folder)
    expected = {"format", "modality", "shape", "spacing_mm", "hu_min", "hu_max", "hu_mean", "n_series", "phi", "burned_in", "burned_in_reasons", "series", "warnings",
                "contrast", "contrast_source"}
    assert set(info) == expected
    hu = series_dir["rle"].hu
    assert info["shape"] == list(SHAPE) and info["spacing_mm"] == [2.5, 0.75, 0.75]
    assert info["hu_min"] == float(hu.min()) and info["hu_max"] == float(hu.max())
    assert info["hu_mean"] == pytest.approx(float(hu.mean(dtype=np.float64)), abs=1e-3)
    assert info["n_series"] == 1
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName", "AccessionNumber"):
        assert keyword in info["phi"]
    assert set(info["phi"]) >= {k for k in PHI_KEYWORDS if k not in {"SeriesDescription"}} - {"StationName"}


def test_deidentified_study_reports_no_phi(tmp_path):
    write_series(tmp_path, shape=(4, 32, 32), identified=False)
    assert inspect_study(tmp_path)["phi"] == []


def test_missing_and_uneven_slices_are_reported(tmp_path):
    gap = write_series(tmp_path / "gap", shape=(10, 32, 32), drop_slices=[4, 5])
    vol = load_study(gap.folder)
    assert vol.hu.shape == (8, 32, 32)
    assert any(w.startswith("missing slices: about 2 slice(s) absent") for w in vol.warnings)
    np.testing.assert_array_equal(vol.hu, gap.hu[[0, 1, 2, 3, 6, 7, 8, 9]])
    uneven = write_series(tmp_path / "uneven", shape=(10, 32, 32), z_jitter_mm={3: 0.6})
    vol = load_study(uneven.folder)
    assert any(w.startswith("uneven slice spacing") for w in vol.warnings)
    np.testing.assert_array_equal(vol.hu, uneven.hu)


def test_oblique_series_is_snapped_with_a_warning(tmp_path):
    written = write_series(tmp_path, shape=(6, 40, 40), inplane_rotation_deg=12.0)
    vol = load_study(tmp_path)
    assert any(w.startswith("oblique orientation (12.0 degrees") for w in vol.warnings)
    np.testing.assert_array_equal(vol.hu, written.hu)


def test_truncated_dicom_is_one_line_input_error(series_dir, tmp_path):
    data = series_dir["plain"].paths[0].read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputError, match=r"cut.dcm, is truncated \(pixel data shorter than Rows x Columns\)"):
        load_study(cut)
    head_only = tmp_path / "head.dcm"
    head_only.write_bytes(data[:200])
    with pytest.raises(InputError, match="holds no readable DICOM image"):
        load_study(head_only)
    rle = series_dir["rle"].paths[0].read_bytes()
    cut_rle = tmp_path / "cut_rle.dcm"
    cut_rle.write_bytes(rle[: len(rle) - 500])
    with pytest.raises(InputError, match="is truncated"):
        load_study(cut_rle)


def test_memory_cap_is_checked_before_decoding(series_dir):
    from core.io.dicom import load_dicom

    with pytest.raises(InputError, match=r"would need 0.0 GiB decoded \(12 x 40 x 48; limit"):
        load_dicom(series_dir["rle"].folder, max_decoded_bytes=1000)


def test_non_dicom_files_in_folder_are_ignored_with_a_warning(tmp_path):
    written = write_series(tmp_path, shape=(4, 32, 32))
    (tmp_path / "README.txt").write_text("notes about the study\n")
    vol = load_study(tmp_path)
    np.testing.assert_array_equal(vol.hu, written.hu)
    assert "ignored files: 1 not DICOM" in vol.warnings


def test_to_convention_undoes_any_axis_permutation_and_flip():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 4, 5)).astype(np.float32)
    # LPS step of each convention axis: slices +z 2 mm, rows +y 3 mm, cols +x 4 mm
    lps_cols = {0: np.array([0, 0, 2.0]), 1: np.array([0, 3.0, 0]), 2: np.array([4.0, 0, 0])}
    for perm in [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0)]:
        for flips in [(False, False, False), (True, False, True), (False, True, False)]:
            data = np.transpose(truth, perm)
            affine = np.eye(4)
            for data_axis, conv_axis in enumerate(perm):
                affine[:3, data_axis] = lps_cols[conv_axis]
            for data_axis, flip in enumerate(flips):
                if flip:
                    data = np.flip(data, data_axis)
                    affine[:3, 3] += affine[:3, data_axis] * (data.shape[data_axis] - 1)
                    affine[:3, data_axis] *= -1
            out, new_affine, warnings = to_convention(data, affine)
            np.testing.assert_array_equal(out, truth)
            np.testing.assert_allclose(new_affine[:3, :3], np.array([[0, 0, 4.0], [0, 3.0, 0], [2.0, 0, 0]]))
            np.testing.assert_allclose(new_affine[:3, 3], 0.0, atol=1e-12)
            assert warnings == []


def _real_ct_slices(path: Path, n: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``n`` central axial slices of the shared real CT, integer HU (JPEG 2000 / int16 representable)."""
    vol = load_study(path)
    start = (vol.shape[0] - n) // 2
    hu = np.clip(np.round(vol.hu[start : start + n]), -1024, 3071).astype(np.float32)
    return hu, vol.spacing_mm


@pytest.mark.parametrize(("openjpeg", "fork"), [(True, False), (False, True), (False, False)], ids=["openjpeg_threads", "forked_decoders", "threads"])
def test_real_ct_jpeg2000_lossless_series_loads_to_the_uncompressed_hu(real_ct, tmp_path, monkeypatch, openjpeg, fork):
    """The real CT written twice, uncompressed and JPEG 2000 Lossless: the same HU array, voxel for voxel.

    Through OpenJPEG directly (ctypes, threads: ``core.io.j2k``, with the slices
    decoded ahead while the loader starts), and through pydicom's decoders
    (where no OpenJPEG library loads) in forked processes or on threads.
    """
    from core.io import dicom, j2k, j2k_prefetch

    if openjpeg and not j2k.available():
        pytest.skip("no OpenJPEG library (libopenjp2) to load")
    monkeypatch.setattr(j2k, "available", lambda: openjpeg and j2k._library() is not None)
    monkeypatch.setattr(dicom, "FORK_DECODE", fork)
    monkeypatch.setattr(dicom, "_usable_cpus", lambda: 2)  # two decoding processes even on a 1-core runner
    monkeypatch.setattr(dicom, "FORK_MIN_PIXELS", 0)  # and for a small series
    monkeypatch.setattr(dicom, "_other_threads_alive", lambda: False)  # as in a single-threaded process (the CLI)
    hu, spacing = _real_ct_slices(real_ct, 8)
    plain = write_series(tmp_path / "plain", hu=hu, spacing_mm=spacing, signed=True, intercept=-1024.0, seed=1)
    j2k_series = write_series(tmp_path / "j2k", hu=hu, spacing_mm=spacing, signed=True, intercept=-1024.0, compression="j2k", shuffle=True, seed=2)
    assert pydicom.dcmread(j2k_series.paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert sum(p.stat().st_size for p in j2k_series.paths) < 0.8 * sum(p.stat().st_size for p in plain.paths)  # really compressed
    taken: list[bool] = []
    take = j2k_prefetch.Prefetch.take
    monkeypatch.setattr(j2k_prefetch.Prefetch, "take", lambda self, path, offset: taken.append(bool(r := take(self, path, offset))) or r)
    vol_plain, vol_j2k = load_study(plain.folder), load_study(j2k_series.folder)
    assert dicom._fork_workers(sorted(dicom.scan_headers(dicom.sources_from_folder(j2k_series.folder)).headers, key=lambda h: h.source.name)) == (2 if fork else 1)
    if openjpeg:  # every slice looked up among those decoded ahead (found there or decoded by the loader's threads)
        assert len(taken) == 8
    else:
        assert taken == []
    assert vol_j2k.hu.dtype == np.float32 and vol_j2k.shape == hu.shape
    assert vol_j2k.hu.min() < -900 and vol_j2k.hu.max() > 200  # air and bone: signed values through the codec
    np.testing.assert_array_equal(vol_j2k.hu, vol_plain.hu)
    np.testing.assert_array_equal(vol_j2k.hu, hu)
    np.testing.assert_allclose(vol_j2k.affine, vol_plain.affine)
    assert vol_j2k.spacing_mm == vol_plain.spacing_mm
    assert vol_j2k.phi == vol_plain.phi and vol_j2k.warnings == vol_plain.warnings == []


MODES = [(False, True), (False, False), (True, False)]  # (OpenJPEG through ctypes, forked decoders)


def test_a_broken_slice_decoded_by_a_forked_process_is_one_line_input_error(series_dir, tmp_path, monkeypatch):
    """A slice that cannot be decoded is the same one-line error with forked decoders, in-process and through OpenJPEG."""
    import shutil

    from core.io import dicom, j2k

    monkeypatch.setattr(dicom, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(dicom, "FORK_MIN_PIXELS", 0)
    monkeypatch.setattr(dicom, "_other_threads_alive", lambda: False)  # as in a single-threaded process (the CLI)
    have_openjpeg = j2k.available()
    folder = tmp_path / "j2k"
    shutil.copytree(series_dir["j2k"].folder, folder)
    headers = dicom.scan_headers(dicom.sources_from_folder(folder)).headers
    ordered, _, _ = dicom._sort_and_check(headers)
    monkeypatch.setattr(j2k, "available", lambda: False)
    assert dicom._fork_workers(ordered) == 2
    victim = ordered[1].source.path  # decoded by the parent or the child, whichever claims it first
    data = victim.read_bytes()
    at = data.index(b"\xff\x4f\xff\x51")  # the JPEG 2000 codestream (SOC, SIZ)
    name = victim.name.replace(".", r"\.")
    modes = [m for m in MODES if have_openjpeg or not m[0]]
    # the codestream cut off (the item runs past the file's end): the child's InputError keeps its fields
    victim.write_bytes(data[: at + 200])
    for openjpeg, fork in modes:
        monkeypatch.setattr(j2k, "available", lambda openjpeg=openjpeg: openjpeg)
        monkeypatch.setattr(dicom, "FORK_DECODE", fork)
        with pytest.raises(InputError, match=rf"^DICOM file: got {name}, is truncated \(compressed pixel data cut off\); fix: re-export"):
            load_study(folder)
    # the codestream overwritten, the DICOM structure intact: the codec's error, one line
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # the sequence delimiter ends the file
    victim.write_bytes(data[:at] + b"\x00" * (len(data) - at - 8) + data[-8:])
    for openjpeg, fork in modes:
        monkeypatch.setattr(j2k, "available", lambda openjpeg=openjpeg: openjpeg)
        monkeypatch.setattr(dicom, "FORK_DECODE", fork)
        with pytest.raises(InputError, match=r"pixel data cannot be decoded") as caught:
            load_study(folder)
        assert "\n" not in str(caught.value)


def test_a_jpeg2000_codestream_larger_than_rows_and_columns_is_refused_before_decoding(series_dir, tmp_path):
    """A codestream whose SIZ claims 20000 x 20000 pixels (one tile) in a 48 x 40 slice: one line, nothing decoded.

    Decoding it would allocate 1.6 GB of int32 for a file of a few kB; the
    size is checked once OpenJPEG has read the header, before it decodes.
    """
    import resource
    import shutil

    from core.io import j2k, j2k_prefetch

    if not j2k.available():
        pytest.skip("no OpenJPEG library (libopenjp2) to load")
    folder = tmp_path / "j2k"
    shutil.copytree(series_dir["j2k"].folder, folder)
    victim = sorted(folder.iterdir())[3]
    data = bytearray(victim.read_bytes())
    at = data.index(b"\xff\x4f\xff\x51")
    assert (int.from_bytes(data[at + 8 : at + 12], "big"), int.from_bytes(data[at + 12 : at + 16], "big")) == (SHAPE[2], SHAPE[1])
    for offset in (8, 12, 24, 28):  # Xsiz, Ysiz, XTsiz, YTsiz: one tile of 20000 x 20000
        data[at + offset : at + offset + 4] = (20000).to_bytes(4, "big")
    victim.write_bytes(bytes(data))
    assert j2k_prefetch._size(bytes(data[at:])) == (20000, 20000, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    name = victim.name.replace(".", r"\.")
    with pytest.raises(InputError, match=rf"^DICOM file: got {name}, holds a JPEG 2000 codestream of 20000 x 20000 pixels but Columns x Rows say 48 x 40; fix: re-export"):
        load_study(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: far below the 1.6 GB it claims


def test_slices_decoded_ahead_are_used_only_where_the_header_agrees(series_dir, tmp_path):
    """Prefetch: every slice of a JPEG 2000 folder decoded on a thread, found by path and PixelData offset."""
    import os

    from core.io import dicom, j2k, j2k_prefetch
    from core.io.dicom_pixels import store_prefetched_j2k

    if not j2k.available():
        pytest.skip("no OpenJPEG library (libopenjp2) to load")
    written = series_dir["j2k"]
    ordered, _, _ = dicom._sort_and_check(dicom.scan_headers(dicom.sources_from_folder(written.folder)).headers)
    early = j2k_prefetch.Prefetch(str(written.folder), workers=1)
    for thread in early._threads:
        thread.join()  # all decoded
    try:
        assert early.reserve(os.path.abspath(ordered[1].source.path)) == "ready"  # decoded: taken at once
        assert early.reserve(str(written.folder / "not-listed.dcm")) == "mine"  # never started: the caller's
        assert early.take(os.path.abspath(ordered[0].source.path), ordered[0].pixel_offset + 2) is None  # another offset
        out = np.full((len(ordered), SHAPE[1], SHAPE[2]), np.nan, dtype=np.float32)
        for i, h in enumerate(ordered[1:], start=1):
            decoded = early.take(os.path.abspath(h.source.path), h.pixel_offset)
            assert decoded is not None and (decoded.rows, decoded.cols, decoded.signed) == (SHAPE[1], SHAPE[2], True)
            assert store_prefetched_j2k(h, decoded, out[i : i + 1])
        np.testing.assert_array_equal(out[1:], written.hu[1:])
        # a decoded slice that does not match the header (here: another slice's size) is refused and freed
        again = j2k_prefetch.Prefetch(str(written.folder), workers=1)
        for thread in again._threads:
            thread.join()
        h = ordered[1]
        wrong = dicom._Header(**{**h.__dict__, "rows": h.rows + 1})
        decoded = again.take(os.path.abspath(h.source.path), h.pixel_offset)
        assert decoded is not None and not store_prefetched_j2k(wrong, decoded, out[1:2])
        with pytest.raises(ValueError, match="closed"):
            decoded.buffer()
        again.close()
    finally:
        early.close()


def test_forked_decoders_write_shared_memory_and_report_errors_and_warnings():
    """Slices decoded in the children land in the parent's array; a child's InputError and warnings come back."""
    import os
    import warnings

    from core.io import fork_decode

    parent = os.getpid()
    out = fork_decode.shared_empty((40, 2, 3))
    seen = fork_decode.shared_empty((40, 1, 1))

    def decode(i: int) -> None:
        out[i] = i
        seen[i] = 1.0 if os.getpid() != parent else 2.0
        if os.getpid() != parent:
            warnings.warn(f"child warning {i}", UserWarning)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fork_decode.decode_in_processes(decode, 40, 3)
    np.testing.assert_array_equal(out[:, 0, 0], np.arange(40))
    assert set(np.unique(seen)) <= {1.0, 2.0}
    child_slices = int((seen == 1.0).sum())
    assert sum("child warning" in str(w.message) for w in caught) == child_slices

    def fail_in_child(i: int) -> None:
        if os.getpid() != parent:
            raise InputError("DICOM file", f"slice{i}.dcm", "is truncated (compressed pixel data cut off)", "re-export or re-copy the series")
        import time

        time.sleep(0.05)  # leave slices to the children

    with pytest.raises(InputError, match=r"^DICOM file: got slice\d+\.dcm, is truncated \(compressed pixel data cut off\); fix: re-export"):
        fork_decode.decode_in_processes(fail_in_child, 8, 2)

    def crash_in_child(i: int) -> None:
        if os.getpid() != parent:
            os._exit(9)  # a codec that kills its process
        import time

        time.sleep(0.05)

    with pytest.raises(InputError, match=r"pixel data cannot be decoded \(exit status 9\)"):
        fork_decode.decode_in_processes(crash_in_child, 8, 2)


def test_no_fork_while_other_threads_run(series_dir, monkeypatch):
    """Forking a process with other live threads (a server) is unsafe: the decoding then stays on threads."""
    import threading

    from core.io import dicom

    monkeypatch.setattr(dicom, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(dicom, "FORK_MIN_PIXELS", 0)
    # the test process may hold other threads already (earlier tests' servers): count only the one started here
    baseline = threading.active_count()
    monkeypatch.setattr(dicom, "_other_threads_alive", lambda: threading.active_count() > baseline)
    ordered, _, _ = dicom._sort_and_check(dicom.scan_headers(dicom.sources_from_folder(series_dir["jls"].folder)).headers)
    assert dicom._fork_workers(ordered) == 2  # JPEG-LS: pydicom's codec holds the GIL
    plain, _, _ = dicom._sort_and_check(dicom.scan_headers(dicom.sources_from_folder(series_dir["plain"].folder)).headers)
    assert dicom._fork_workers(plain) == 1  # uncompressed: numpy releases the GIL, threads suffice
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert dicom._fork_workers(ordered) == 1
        vol = load_study(series_dir["jls"].folder)
    finally:
        release.set()
        other.join()
    np.testing.assert_array_equal(vol.hu, series_dir["jls"].hu)


@pytest.mark.parametrize("openjpeg", [True, False], ids=["openjpeg", "pydicom"])
def test_multiframe_jpeg2000_instance_one_fragment_per_frame(series_dir, tmp_path, monkeypatch, openjpeg):
    """A 3-frame JPEG 2000 Lossless instance (one fragment per frame): frames stacked in file order, exact HU."""
    from pydicom.uid import JPEG2000Lossless

    from core.io import j2k

    if openjpeg and not j2k.available():
        pytest.skip("no OpenJPEG library (libopenjp2) to load")
    monkeypatch.setattr(j2k, "available", lambda: openjpeg and j2k._library() is not None)
    ds = pydicom.dcmread(min(series_dir["signed"].paths))
    frames = np.stack([np.arange(SHAPE[1] * SHAPE[2], dtype=np.int16).reshape(SHAPE[1], SHAPE[2]) * (k + 1) - 1000 for k in range(3)])
    ds.NumberOfFrames = 3
    ds.compress(JPEG2000Lossless, frames, encoding_plugin="pylibjpeg")
    path = tmp_path / "multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    vol = load_study(path)
    assert vol.hu.shape == (3, SHAPE[1], SHAPE[2])
    assert any("multi-frame" in w for w in vol.warnings)
    assert float(ds.RescaleIntercept) == 0.0 and float(ds.RescaleSlope) == 1.0
    np.testing.assert_array_equal(vol.hu, frames.astype(np.float32))  # axial, head first: no axis flipped


def test_acquired_series_is_chosen_over_a_larger_derived_one(tmp_path):
    """A CT export with a MIP series (ImageType DERIVED) of more images than the acquired axial series: the acquired
    one is loaded by default; the MIP, when it is all there is or chosen by name, loads with a warning."""
    study = pydicom.uid.generate_uid()
    axial = write_series(tmp_path / "both", shape=(6, 32, 32), study_uid=study, series_number=2, prefix="AX",
                         identified=False)
    mip = write_series(tmp_path / "both", shape=(12, 32, 32), study_uid=study, series_number=3, prefix="MIP",
                       identified=False, seed=1)
    for path in mip.paths:
        edit_file(path, lambda ds: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "MIP"]))
    vol = load_study(tmp_path / "both")
    np.testing.assert_array_equal(vol.hu, axial.hu)
    assert [s.derived for s in vol.series] == [False, True]
    assert not any("DERIVED" in w for w in vol.warnings), vol.warnings
    chosen = load_study(tmp_path / "both", series=mip.series_uid)
    np.testing.assert_array_equal(chosen.hu, mip.hu)
    assert any(w.startswith("the loaded series is DERIVED") for w in chosen.warnings), chosen.warnings
    for path in axial.paths:
        path.unlink()
    only = load_study(tmp_path / "both")
    np.testing.assert_array_equal(only.hu, mip.hu)
    assert any(w.startswith("the loaded series is DERIVED") for w in only.warnings), only.warnings


def test_repeated_acquisition_in_one_series_is_not_mixed(tmp_path):
    """Two acquisitions of one series at the same slice positions (a repeated scan), files shuffled: the volume is
    one whole acquisition (the one with more slices), not a slice-by-slice mix of both, with a warning; two
    acquisitions one after the other along the table are stacked together, as before."""
    uids = {"series_uid": pydicom.uid.generate_uid(), "study_uid": pydicom.uid.generate_uid(),
            "frame_of_reference_uid": pydicom.uid.generate_uid(), "identified": False, "shuffle": True}
    first = write_series(tmp_path / "repeat", shape=(8, 32, 32), acquisition_number=1, seed=1, prefix="A", **uids)
    second = write_series(tmp_path / "repeat", shape=(10, 32, 32), acquisition_number=2, seed=2, prefix="B", **uids)
    vol = load_study(tmp_path / "repeat")
    np.testing.assert_array_equal(vol.hu, second.hu)
    assert any(w.startswith("2 acquisitions share the slice positions") and "loaded acquisition 2 (10 slices)" in w
               for w in vol.warnings), vol.warnings
    assert not np.array_equal(first.hu, second.hu[:8])

    uids["series_uid"] = pydicom.uid.generate_uid()
    lower = write_series(tmp_path / "along", shape=(6, 32, 32), acquisition_number=1, seed=3, prefix="A", **uids)
    upper = write_series(tmp_path / "along", shape=(6, 32, 32), acquisition_number=2, seed=4, prefix="B",
                         origin_lps=(-100.0, -120.0, -300.0 + 6 * 2.5), **uids)
    both = load_study(tmp_path / "along")
    np.testing.assert_array_equal(both.hu, np.concatenate([lower.hu, upper.hu]))
    assert not any("acquisitions" in w for w in both.warnings), both.warnings


def test_stored_values_without_their_rescale_are_named(tmp_path, real_ct):
    """A CT exported without its RescaleIntercept (stored values, air at about 0): the volume loads with a warning
    that no voxel reads as air; the same series with its intercept, and the real CT, load without it."""
    truth = phantom_hu((6, 32, 32), seed=2)
    assert truth.min() <= -1000
    raw = write_series(tmp_path / "raw", truth + 1024, intercept=0.0, identified=False)
    vol = load_study(raw.folder)
    assert any(w.startswith("no voxel reads as air (the lowest is") for w in vol.warnings), vol.warnings
    fine = load_study(write_series(tmp_path / "fine", truth, identified=False).folder)
    assert not any("reads as air" in w for w in fine.warnings)
    assert not any("reads as air" in w for w in load_study(real_ct).warnings)


def test_slices_of_another_pixel_spacing_are_left_out(tmp_path):
    """Two slices of a series reconstructed at another field of view (same matrix, other PixelSpacing): stacking
    them would put their anatomy at the wrong scale, so they are left out with a warning."""
    written = write_series(tmp_path / "s", shape=(8, 32, 32), identified=False)
    for path in written.paths[:2]:
        edit_file(path, lambda ds: setattr(ds, "PixelSpacing", ["0.5", "0.5"]))
    vol = load_study(written.folder)
    assert vol.shape[0] == 6 and np.allclose(vol.spacing_mm[1:], written.spacing_mm[1:])
    assert any(w.startswith("2 image(s) with another size, pixel spacing or orientation left out") for w in vol.warnings)


def test_a_folder_holding_the_study_zipped_names_the_zip(tmp_path: Path) -> None:
    """A folder with the series zipped inside it (and a note beside it) is no series: the error names the zip to
    point at, where it said only "2 not DICOM"."""
    written = write_series(tmp_path / "series", shape=(4, 16, 16))
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "study.zip").write_bytes(zip_folder(written.folder))
    (folder / "notes.txt").write_text("CT chest")
    with pytest.raises(InputError, match=r"but a zip \(study\.zip\); fix: point at the zip itself \(study\.zip\)"):
        load_study(folder)
    assert load_study(folder / "study.zip").shape == (4, 16, 16)


@pytest.mark.parametrize(("signed", "stored_pad", "replaced"), [
    (True, -2000, True),  # outside the field of view at -3024 HU: read as air
    (False, 1024, False),  # a padding value of water (0 HU) is a header error: those pixels stay as they are
])
def test_padding_outside_the_field_of_view_is_read_as_air(tmp_path: Path, signed: bool, stored_pad: int,
                                                           replaced: bool) -> None:
    """A scanner marks the corners outside its round field of view with PixelPaddingValue (-2000 stored, -3024 HU
    on many): they are air, not a density below air (inspect reported -3024 as the HU minimum)."""
    hu = phantom_hu((4, 24, 24))
    pad_hu = stored_pad - 1024.0  # the factory's intercept
    hu[:, :4, :4] = pad_hu
    written = write_series(tmp_path / "s", hu, signed=signed, identified=False)
    for path in written.paths:
        edit_file(path, lambda ds: ds.add_new("PixelPaddingValue", "SS" if signed else "US", stored_pad))
    vol = load_study(written.folder)
    expect = written.hu.copy()
    if replaced:
        expect[:, :4, :4] = -1024.0
    np.testing.assert_array_equal(vol.hu, expect)
    assert float(vol.hu[:, :4, :4].max()) == (-1024.0 if replaced else 0.0)
