"""core.io.study_cache: a decoded study file read back with numpy alone, the same volume, bounded and safe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.io.study import load_study
from core.io.study_cache import StudyCache
from tests.conftest import ROOT


def test_real_ct_round_trips_and_reopens_without_nibabel(real_ct: Path, tmp_path: Path) -> None:
    study = tmp_path / "ct.nii.gz"
    study.write_bytes(real_ct.read_bytes())
    cache = StudyCache(tmp_path / "cache")
    decoded = cache.load(study, lambda: load_study(study))
    again = cache.get(study)
    assert again is not None and again.shape == decoded.shape == (30, 101, 122)
    assert np.array_equal(again.hu, decoded.hu) and again.hu.dtype == decoded.hu.dtype
    assert again.spacing_mm == decoded.spacing_mm and np.array_equal(again.affine, decoded.affine)
    assert (again.format, again.modality, again.meta, again.warnings, again.series) == \
        (decoded.format, decoded.modality, decoded.meta, decoded.warnings, decoded.series)
    # a fresh process reads it back without importing any decoder
    code = ("import sys; from core.io.study_cache import StudyCache; "
            f"v = StudyCache({str(tmp_path / 'cache')!r}).get({str(study)!r}); "
            "print(v.shape, 'nibabel' in sys.modules, 'pydicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(30, 101, 122) False False"


def test_a_changed_file_a_torn_entry_and_a_folder_are_misses(real_ct: Path, tmp_path: Path) -> None:
    study = tmp_path / "ct.nii.gz"
    study.write_bytes(real_ct.read_bytes())
    cache = StudyCache(tmp_path / "cache")
    cache.put(study, load_study(study))
    assert cache.get(study) is not None
    st = study.stat()
    os.utime(study, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced: its stamp changed
    assert cache.get(study) is None
    cache.put(study, load_study(study))
    entry = tmp_path / "cache" / f"{StudyCache.key(study)}.npz"
    entry.write_bytes(b"torn")
    assert cache.get(study) is None and not entry.exists()  # deleted, decoded again next time
    assert StudyCache.key(tmp_path) is None and cache.get(tmp_path) is None  # a DICOM folder is never kept
    with pytest.raises(ValueError, match="study cache: got 0 entries"):
        StudyCache(tmp_path, max_entries=0)


def test_bounded_least_recently_used_first_out(real_ct: Path, tmp_path: Path) -> None:
    volume = load_study(real_ct)
    cache = StudyCache(tmp_path / "cache", max_entries=2)
    studies = []
    for i in range(3):
        p = tmp_path / f"ct{i}.nii.gz"
        p.write_bytes(real_ct.read_bytes())
        studies.append(p)
    cache.put(studies[0], volume)
    cache.put(studies[1], volume)
    os.utime(next(iter((tmp_path / "cache").glob(f"{StudyCache.key(studies[0])}.npz"))), ns=(1, 1))  # used long ago
    cache.put(studies[2], volume)
    assert cache.get(studies[0]) is None and cache.get(studies[1]) is not None and cache.get(studies[2]) is not None


def test_the_viewer_nifti_is_kept_beside_its_volume(real_ct: Path, tmp_path: Path) -> None:
    from core.app.volume_nifti import nifti_to_grid, volume_to_nifti
    from core.io.study_cache import VIEWER_NIFTI

    study = tmp_path / "ct.nii.gz"
    study.write_bytes(real_ct.read_bytes())
    cache = StudyCache(tmp_path / "cache", max_entries=1)
    volume = cache.load(study, lambda: load_study(study))
    built = cache.derived(study, VIEWER_NIFTI, lambda: volume_to_nifti(volume))

    def refuse() -> bytes:
        raise AssertionError("the viewer's NIfTI was built again")

    assert cache.derived(study, VIEWER_NIFTI, refuse) == built == volume_to_nifti(volume)
    values, _ = nifti_to_grid(built)
    assert np.array_equal(values, volume.hu)
    with pytest.raises(ValueError, match="name: got thumbnail, is not a kept derivative"):
        cache.derived(study, "thumbnail", refuse)
    other = tmp_path / "other.nii.gz"
    other.write_bytes(real_ct.read_bytes())
    cache.put(other, volume)  # one entry at most: the first study's volume goes, and its viewer NIfTI with it
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        sorted(f"{StudyCache.key(other)}{suffix}" for suffix in (".npz", ".hu.npy"))


def test_sessions_that_build_the_same_derivative_at_once_all_get_it(tmp_path: Path) -> None:
    """Two visitors opening one case compute its viewer NIfTI together, in threads of one server process: every
    one gets the bytes and none fails renaming a partial file another thread already renamed."""
    import threading

    from core.io.study_cache import VIEWER_NIFTI

    study = tmp_path / "ct.nii.gz"
    study.write_bytes(b"not decoded here")
    cache = StudyCache(tmp_path / "cache")
    threads, rounds = 8, 25
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    got: list[bytes] = []

    def visitor(k: int) -> None:
        for r in range(rounds):
            def build(r: int = r) -> bytes:
                return bytes([r]) * 65536
            barrier.wait()
            try:
                got.append(cache.derived(study, VIEWER_NIFTI, build))
            except OSError as exc:
                errors.append(exc)
            if barrier.wait() == 0:  # one thread clears the entry for the next round
                for p in (tmp_path / "cache").glob(f"*{VIEWER_NIFTI}"):
                    p.unlink()

    workers = [threading.Thread(target=visitor, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    assert len(got) == threads * rounds and all(len(b) == 65536 for b in got)
    assert not [p.name for p in (tmp_path / "cache").iterdir() if ".partial" in p.name]
