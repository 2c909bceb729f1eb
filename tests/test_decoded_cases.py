"""A saved case's CT decoded once: kept in its folder inside the quota, read back memory-mapped, and never decoded
again at every page section that asks (a full-resolution CT is larger than the session memo's whole budget)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.app import cases, workspace
from core.errors import InputError
from core.io.study_cache import HU, StudyCache
from core.io.volume import Volume


def _nifti(shape: tuple[int, int, int] = (8, 40, 40)) -> bytes:
    import nibabel as nib

    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 400, size=(shape[2], shape[1], shape[0])).astype(np.int16)  # (x, y, z) on disk
    return nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes()


def test_a_kept_study_reads_back_memory_mapped_copy_on_write(tmp_path: Path) -> None:
    study = tmp_path / "ct.nii"
    study.write_bytes(b"stand-in: only the stamp matters here")
    hu = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    cache = StudyCache(tmp_path / "cache")
    kept = cache.load(study, lambda: Volume(hu=hu.copy(), spacing_mm=(3.0, 1.0, 1.0), affine=np.eye(4)))
    assert isinstance(kept.hu, np.memmap) and np.array_equal(kept.hu, hu)
    kept.hu[0, 0, 0] = 99.0  # a session's write stays its own: the file keeps the decoded values
    again = cache.get(study)
    assert again is not None and again.hu[0, 0, 0] == 0.0
    assert cache.get(study, series="1.2.3") is None  # another series of the file is another entry


def test_the_bytes_bound_counts_the_hu_arrays_beside_the_entries(tmp_path: Path) -> None:
    volume = Volume(hu=np.zeros((4, 64, 64), np.float32), spacing_mm=(1.0, 1.0, 1.0), affine=np.eye(4))  # 64 KiB
    cache = StudyCache(tmp_path / "cache", max_entries=10, max_bytes=100 * 1024)  # room for one array, not two
    studies = []
    for i in range(2):
        p = tmp_path / f"ct{i}.nii"
        p.write_bytes(bytes([i]) * 10)
        studies.append(p)
        cache.put(p, volume)
        if i == 0:
            os.utime(tmp_path / "cache" / f"{StudyCache.key(p)}.npz", ns=(1, 1))  # used long ago
    assert cache.get(studies[0]) is None and cache.get(studies[1]) is not None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        sorted(f"{StudyCache.key(studies[1])}{s}" for s in (".npz", HU))
    # no room (a user's quota): decoded, returned, not kept
    third = tmp_path / "ct2.nii"
    third.write_bytes(b"third")
    asked: list[int] = []
    got = cache.load(third, lambda: volume, room=lambda n: asked.append(n) or False)
    assert got is volume and asked == [volume.hu.nbytes] and cache.get(third) is None


def test_a_case_is_decoded_once_inside_the_quota_and_deleted_with_the_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = cases.save_case("alice", study=_nifti(), study_name="ct.nii", base=tmp_path)
    plain = cases.load_case_volume(info)  # no user: decoded, nothing kept
    assert not (info.path / cases.DECODED).exists() and not isinstance(plain.hu, np.memmap)
    before = workspace.user_usage("alice", tmp_path)
    first = cases.load_case_volume(info, "alice", tmp_path)
    assert isinstance(first.hu, np.memmap) and np.array_equal(first.hu, plain.hu) and first.shape == (8, 40, 40)
    assert first.spacing_mm == plain.spacing_mm and np.array_equal(first.affine, plain.affine)
    assert workspace.user_usage("alice", tmp_path) - before >= plain.hu.nbytes  # counted in the user's quota
    import core.io.study as study_module

    def no_decoding(*args: object, **kwargs: object) -> Volume:
        raise AssertionError("decoded again")

    monkeypatch.setattr(study_module, "load_study_bytes", no_decoding)
    again = cases.load_case_volume(info, "alice", tmp_path)
    assert np.array_equal(again.hu, plain.hu)
    built = cases.case_viewer_nifti(info, "alice", lambda: b"viewer bytes", tmp_path)
    assert cases.case_viewer_nifti(info, "alice", lambda: b"built again", tmp_path) == built == b"viewer bytes"
    cases.delete_case("alice", info.case_id, tmp_path)
    assert not info.path.exists()


def test_a_case_over_the_quota_is_read_but_its_decoded_copy_is_not_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = cases.save_case("bob", study=_nifti(), study_name="ct.nii", base=tmp_path)
    used = workspace.user_usage("bob", tmp_path)
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, str((used + 1000) / workspace.GB))  # the study fits, a copy not
    volume = cases.load_case_volume(info, "bob", tmp_path)
    assert volume.shape == (8, 40, 40) and not isinstance(volume.hu, np.memmap)
    assert cases.case_viewer_nifti(info, "bob", lambda: b"x" * 5000, tmp_path) == b"x" * 5000
    assert workspace.user_usage("bob", tmp_path) == used  # nothing written past the quota


def test_the_session_memo_holds_a_value_over_its_budget_for_one_run_and_keeps_mapped_arrays() -> None:
    from streamlit.testing.v1 import AppTest

    def script() -> None:
        import tempfile

        import numpy as np
        import streamlit as st

        from pages import _memo

        _memo.MEMO_BYTES = 4 * 2**20
        calls = st.session_state.setdefault("calls", [])

        def decode() -> np.ndarray:
            calls.append(1)
            return np.zeros((2048, 1024), np.float32)  # 8 MB: over the whole budget

        for _ in range(5):  # five page sections ask for the same CT in one run
            _memo.memo(("volume", "big"), decode)
        path = tempfile.mkdtemp() + "/hu.npy"
        np.save(path, np.zeros((2048, 1024), np.float32))
        _memo.memo(("mapped",), lambda: np.load(path, mmap_mode="c"))
        if st.session_state.setdefault("runs", 0) == 0:
            st.session_state["runs"] = 1
            _memo.new_run()  # what app.py does at the start of the next run
            _memo.memo(("volume", "big"), decode)
        st.write(repr((len(calls), list(st.session_state["_memo"]), sum(st.session_state["_memo_sizes"].values()))))

    at = AppTest.from_function(script, default_timeout=30)
    at.run()
    assert not at.exception
    n_calls, kept, held_bytes = eval(at.markdown[0].value)  # noqa: S307 - the script's own repr
    assert n_calls == 2  # once in the run, once after new_run
    assert kept == [("mapped",)] and held_bytes == 0  # the mapped array is kept and counts no session memory


def test_decoded_copies_give_way_to_a_new_case_at_the_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = cases.save_case("carol", study=_nifti(), study_name="ct.nii", base=tmp_path)
    bare = workspace.user_usage("carol", tmp_path)
    cases.load_case_volume(info, "carol", tmp_path)
    copy = workspace.user_usage("carol", tmp_path) - bare
    assert copy > 40_000  # the float32 copy of 8 x 40 x 40 voxels and its entry
    study = _nifti()
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, str((bare + len(study) + 2000) / workspace.GB))  # no room for both
    second = cases.save_case("carol", study=study, study_name="ct.nii", base=tmp_path)
    assert second.study_path is not None and second.study_path.is_file()
    assert list((info.path / cases.DECODED).iterdir()) == []  # the copy gave way, the folder stays private
    assert oct((info.path / cases.DECODED).stat().st_mode & 0o777) == "0o700"
    assert cases.load_case_volume(info, "carol", tmp_path).shape == (8, 40, 40)  # read, not kept: no room
    with pytest.raises(InputError, match="disk quota"):
        cases.save_case("carol", study=study, study_name="ct.nii", base=tmp_path)  # a real refusal stays one


def test_a_decoded_copy_that_does_not_fit_evicts_no_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = cases.save_case("dan", study=_nifti(), study_name="ct.nii", base=tmp_path)
    second = cases.save_case("dan", study=_nifti(), study_name="ct.nii", base=tmp_path)
    cases.load_case_volume(first, "dan", tmp_path)
    kept = sorted(p.name for p in (first.path / cases.DECODED).iterdir())
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, str((workspace.user_usage("dan", tmp_path) + 1000) / workspace.GB))
    assert cases.load_case_volume(second, "dan", tmp_path).shape == (8, 40, 40)  # read, not kept
    assert sorted(p.name for p in (first.path / cases.DECODED).iterdir()) == kept  # the first case's copy stays
    assert not list((second.path / cases.DECODED).glob("*.npy"))
