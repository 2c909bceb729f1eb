"""Where the viewer's whole-volume attribution maps live, and where they are computed.

A map is 315 MB on a full-resolution CT: a saved case's maps are kept in its own folder (in the user's quota, given
way to a real save, deleted with the case), the server's folder of demo cases is bounded, and a large CT's map is
computed in a job's own process, one at a time, so two users' maps neither share the server's cores nor add their
gigabytes to its memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.app import attribution_volume as AV
from core.app import cases, workspace
from core.errors import InputError
from core.jobs import JobContext, JobQueue
from tests.test_app import data_dir  # noqa: F401  (the tiny demo, shared with the app tests)
from tests.test_decoded_cases import _nifti


def _ctx(seen: list[tuple[float, str]]) -> JobContext:
    return JobContext(lambda f, m: seen.append((f, m)), lambda: False)


def test_a_saved_cases_maps_count_in_the_quota_give_way_and_go_with_the_case(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = cases.save_case("erin", study=_nifti(), study_name="ct.nii", base=tmp_path)
    folder = cases.maps_dir(info)
    assert folder.parent == info.path and oct(folder.stat().st_mode & 0o777) == "0o700"
    store = AV.MapStore(str(folder), 8, workspace.user_quota_bytes(), "erin", str(tmp_path))
    amap = np.random.default_rng(0).random((8, 40, 40), dtype=np.float32)  # 51 KB
    key = AV.map_key("digest", "stamp", "saliency", 365)
    before = workspace.user_usage("erin", tmp_path)
    seen: list[tuple[float, str]] = []
    assert store.cache().put(key, amap)
    assert AV.map_job(_ctx(seen), store, key, SimpleNamespace(model_dir=tmp_path), None, "saliency", 365.0) is None
    assert seen == [(1.0, "cached")]  # the job finds it kept and computes nothing
    assert workspace.user_usage("erin", tmp_path) - before >= amap.nbytes  # counted in the user's quota
    np.testing.assert_array_equal(store.cache().get(key), amap)
    assert workspace.drop_caches("erin", tmp_path) >= amap.nbytes  # maps give way to a real save, as decoded copies
    assert store.cache().get(key) is None and folder.is_dir()
    # no room in the quota: the map is not written, the job hands it back itself
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, str((workspace.user_usage("erin", tmp_path) + 1000) / workspace.GB))

    def fake_whole_map(model: object, inputs: object, method: str, horizon: float, **kw: object) -> np.ndarray:
        return amap  # the computation itself is the demo test's; here a stand-in of the right shape

    monkeypatch.setattr(AV, "whole_map", fake_whole_map)
    back = AV.map_job(_ctx([]), store, key, SimpleNamespace(model_dir=tmp_path), None, "saliency", 365.0)
    assert back is amap and store.cache().get(key) is None and not list(folder.iterdir())
    monkeypatch.delenv(workspace.USER_QUOTA_ENV)
    assert AV.map_job(_ctx([]), store, key, SimpleNamespace(model_dir=tmp_path), None, "saliency", 365.0) is None
    assert store.cache().get(key) is not None
    from core.sanity import map_peak

    peak_file = folder / f"{key}{AV.PEAK}"  # the job also leaves the map's strongest spot beside it
    assert AV.read_peak(peak_file.read_bytes()) == map_peak(amap) is not None
    cases.delete_case("erin", info.case_id, tmp_path)  # deleted with the case: nothing of it stays on the server
    assert not folder.exists() and not info.path.exists()
    # a map that ends after its case was deleted is not written (no folder made again, no bytes left in the quota)
    other = AV.map_key("digest", "stamp", "gradcam", 365)
    late = AV.map_job(_ctx([]), store, other, SimpleNamespace(model_dir=tmp_path), None, "gradcam", 365.0)
    assert late is amap and not info.path.exists()


def test_a_large_ct_is_heavy_and_a_small_one_is_not() -> None:
    small = SimpleNamespace(image=torch.zeros(1, 32, 96, 96))  # the demo's grid: seconds in a server thread
    large = SimpleNamespace(image=torch.zeros(1, 300, 512, 512, dtype=torch.uint8))  # a full-resolution CT
    assert not AV.is_heavy(small) and AV.is_heavy(large) and not AV.is_heavy(SimpleNamespace(image=None))


def test_a_heavy_map_job_runs_in_its_own_process_and_leaves_the_map_in_its_store(
        data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from core.app.demo_install import DEFAULT_FUSION, demo_paths
    from core.cohort import load_cohort
    from core.registry import load_model

    paths = demo_paths(data_dir)
    cohort = load_cohort(paths.cohort)
    model = load_model(paths.models / DEFAULT_FUSION)
    inputs = model.case_inputs(cohort, cohort.ids("test")[0])
    key = AV.map_key(AV.case_digest(inputs), AV.model_stamp(model.model_dir), "saliency", 365)
    store = AV.MapStore(str(tmp_path / "maps"), max_files=4, max_bytes=10**8)
    queue = JobQueue(workers=1, heavy_threads=1)
    try:  # the model goes by its folder: the job's process loads it (a loaded model is not sent)
        volume = cohort.load_volume(cohort.ids("test")[0])
        job = queue.submit("u", "map", AV.map_job, store, key, str(model.model_dir), AV.portable(inputs), "saliency",
                           365.0, "cpu", AV.Grid.of(volume), key=key, heavy=True)
        done = queue.wait(job.id, 300)
        assert done.state == "done", done.error
        assert done.result is None  # written: the queue keeps no copy of the map for the hour it keeps the job
        assert queue.submit("u", "map", AV.map_job, key=key) is done  # a done job of the key stands for its map ...
        again = queue.submit("u", "map", AV.map_job, store, key, model, inputs, "saliency", 365.0, key=key, fresh=True)
        assert again is not done  # ... unless its map is known to be gone
        assert queue.wait(again.id, 60).result is None  # (found in the store: nothing computed)
    finally:
        queue.close()
    kept = store.cache().get(key)
    assert isinstance(kept, np.memmap) and kept.shape == tuple(inputs.image.shape[1:])
    here = AV.whole_map(model, inputs, "saliency", 365.0)  # the map this process would have made
    np.testing.assert_allclose(np.asarray(kept), here, rtol=1e-3, atol=1e-6 * float(np.abs(here).max()))
    assert float(np.abs(kept).sum()) > 0
    # the spot and the viewer's copy made by the job too (not by the first session that shows the map), the same
    # bytes as the viewer's own NIfTI of the map on the CT
    assert sorted(os.listdir(tmp_path / "maps")) == [f"{key}.npy", f"{key}{AV.PEAK}", f"{key}{AV.VIEWER}"]
    from core.app.volume_nifti import map_to_nifti
    from core.figures import normalize_map

    made = (tmp_path / "maps" / f"{key}{AV.VIEWER}").read_bytes()
    assert made == map_to_nifti(volume, normalize_map(np.asarray(kept)), unit_uint8=True)


def test_start_up_removes_the_unbounded_map_folder_of_earlier_versions(tmp_path: Path) -> None:
    legacy = tmp_path / "cache" / workspace.LEGACY_MAPS  # every case's maps, a deleted upload's too, never trimmed
    legacy.mkdir(parents=True)
    (legacy / "0123abcd.npy").write_bytes(b"a map of a case deleted since")
    kept = tmp_path / "cache" / workspace.MAPS
    kept.mkdir()
    (kept / "4567ef.npy").write_bytes(b"a demo case's map")
    workspace.start_up(tmp_path)
    assert not legacy.exists() and (kept / "4567ef.npy").is_file()


def test_what_is_made_from_a_map_is_kept_beside_it_and_goes_with_it(tmp_path: Path) -> None:
    cache = AV.MapCache(tmp_path, max_files=1)
    ka, kb = AV.map_key("a", "stamp", "saliency", 365), AV.map_key("b", "stamp", "saliency", 365)
    built: list[str] = []

    def build(text: str) -> bytes:
        built.append(text)
        return text.encode()

    assert cache.derived(ka, AV.VIEWER, lambda: build("no map yet")) == b"no map yet"
    assert not list(tmp_path.iterdir())  # nothing kept for a map that is not kept
    assert cache.put(ka, np.ones((2, 3, 4), np.float32))
    assert cache.derived(ka, AV.VIEWER, lambda: build("viewer of a")) == b"viewer of a"
    assert cache.derived(ka, AV.VIEWER, lambda: build("again")) == b"viewer of a"  # read back, not made again
    assert AV.MapCache(tmp_path).derived(ka, AV.VIEWER, lambda: build("restart")) == b"viewer of a"
    assert built == ["no map yet", "viewer of a"] and (tmp_path / f"{ka}{AV.VIEWER}").is_file()
    assert cache.put(kb, np.ones((2, 3, 4), np.float32))  # one map at most: a goes, and what was made from it
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kb}.npy"]
    refusing = AV.MapCache(tmp_path, room=lambda n: False)
    assert refusing.derived(kb, AV.PEAK, lambda: b"[0, 0, 0]") == b"[0, 0, 0]" and not (tmp_path / f"{kb}{AV.PEAK}").exists()
    with pytest.raises(InputError, match="suffix"):
        cache.derived(kb, ".exe", lambda: b"")
