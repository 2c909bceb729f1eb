"""The CT viewer's data path (core.app.volume_nifti) and the overlay's map cache (core.app.attribution_volume)."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from core.app import attribution_volume as AV
from core.app import volume_nifti as VN
from core.errors import InputError
from core.io.study import load_study
from core.io.volume import Volume
from tests.conftest import ROOT
from tests.test_app import data_dir  # noqa: F401  (the tiny demo, shared with the app tests)

REAL_CT = ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"


def _nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


@pytest.fixture(scope="module")
def real_ct() -> Volume:
    if not REAL_CT.is_file():
        pytest.skip(f"shared real CT not found at {REAL_CT}")
    return load_study(REAL_CT)


@pytest.fixture(scope="module")
def demo_ct() -> Volume:
    """A demo phantom case as the demo writes it (its NIfTI file loaded by load_study)."""
    from core.demo.latents import sample_latents
    from core.demo.phantom import affine_ras_nifti, render_phantom

    row = sample_latents(10, seed=3).iloc[0]
    ph = render_phantom(row, np.random.default_rng(3))
    hu = np.asarray(ph.hu)
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine_ras_nifti(hu.shape))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.nii.gz"
        nib.save(img, path)
        return load_study(path)


def test_real_ct_round_trips_values_and_affine(real_ct: Volume) -> None:
    data = VN.volume_to_nifti(real_ct)
    img = _nifti(data)
    original = nib.load(REAL_CT)
    # the study is RAS+ on disk, so the canonical bytes are the file's own voxels and affine
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.shape == original.shape == (122, 101, 30)
    np.testing.assert_allclose(img.affine, original.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(original.dataobj))
    assert img.get_data_dtype() == np.int16  # whole HU stay int16
    assert img.header.get_xyzt_units()[0] == "mm"
    values, lps = VN.nifti_to_grid(data)
    np.testing.assert_array_equal(values, real_ct.hu)
    np.testing.assert_allclose(lps, real_ct.affine, atol=1e-4)
    # plausible HU where they must be: air at a corner, soft tissue at the body centre
    assert values[15, 2, 2] < -900
    assert -100 < float(np.median(values[15, 45:55, 55:65])) < 150


def test_demo_case_round_trips_and_voxel_positions(demo_ct: Volume) -> None:
    data = VN.volume_to_nifti(demo_ct)
    values, lps = VN.nifti_to_grid(data)
    np.testing.assert_allclose(values, demo_ct.hu, atol=1e-3)
    np.testing.assert_allclose(lps, demo_ct.affine, atol=1e-4)
    img = _nifti(data)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # voxel (slice, row, col) lands at the same RAS millimetres in the written image
    s, r, c = (v // 3 for v in demo_ct.shape)
    mm = VN.index_to_ras_mm(demo_ct, (s, r, c))
    ijk = np.linalg.solve(img.affine, np.r_[mm, 1.0])[:3]
    ijk = tuple(int(np.rint(v)) for v in ijk)
    assert float(np.asarray(img.dataobj)[ijk]) == pytest.approx(float(demo_ct.hu[s, r, c]), abs=1e-3)
    assert VN.ras_mm_to_index(demo_ct, mm) == (s, r, c)


def test_orientation_letters_follow_the_study(real_ct: Volume) -> None:
    # slice 0 is inferior, row 0 anterior, col 0 patient right: check in RAS millimetres
    s, r, c = real_ct.shape
    base = np.array(VN.index_to_ras_mm(real_ct, (0, 0, 0)))
    assert VN.index_to_ras_mm(real_ct, (s - 1, 0, 0))[2] > base[2]      # superior: +z
    assert VN.index_to_ras_mm(real_ct, (0, r - 1, 0))[1] < base[1]      # posterior: -y
    assert VN.index_to_ras_mm(real_ct, (0, 0, c - 1))[0] < base[0]      # patient left: -x in RAS
    assert VN.ras_mm_to_index(real_ct, [1e6, 1e6, 1e6]) == (s - 1, 0, 0)  # clipped into the volume


def test_map_round_trip_and_bad_input(real_ct: Volume) -> None:
    rng = np.random.default_rng(0)
    values = rng.random(real_ct.shape).astype(np.float32)
    back, _ = VN.nifti_to_grid(VN.map_to_nifti(real_ct, values))
    np.testing.assert_array_equal(back, values)
    assert _nifti(VN.map_to_nifti(real_ct, values)).get_data_dtype() == np.float32
    # the page's overlay: 0..1 stored as uint8 with slope 1/255, not gzipped (a quarter of the bytes)
    small = VN.map_to_nifti(real_ct, values, unit_uint8=True)
    assert small[:2] != b"\x1f\x8b" and len(small) < real_ct.hu.size + 1024
    assert nib.Nifti1Image.from_bytes(small).get_data_dtype() == np.uint8
    back8, lps8 = VN.nifti_to_grid(small)
    np.testing.assert_allclose(back8, values, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(lps8, real_ct.affine, atol=1e-4)
    with pytest.raises(InputError, match="0..1"):
        VN.map_to_nifti(real_ct, values * 2, unit_uint8=True)
    with pytest.raises(InputError, match="volume's shape"):
        VN.map_to_nifti(real_ct, values[:-1])
    bad = values.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        VN.map_to_nifti(real_ct, bad)
    with pytest.raises(InputError, match="slice"):
        VN.index_to_ras_mm(real_ct, (real_ct.shape[0], 0, 0))


def test_map_cache_memory_bound_disk_and_reload(tmp_path: Path) -> None:
    import os
    import time

    a = np.full((4, 8, 8), 1.0, dtype=np.float32)  # 1024 bytes each
    b = np.full((4, 8, 8), 2.0, dtype=np.float32)
    ka, kb = AV.map_key("case-a", "stamp", "saliency", 365), AV.map_key("case-b", "stamp", "saliency", 365)
    assert ka != kb and ka != AV.map_key("case-a", "stamp", "saliency", 30)
    memory = AV.MapCache(None, max_bytes=1500)  # no folder: an LRU in memory bounded in bytes
    assert memory.put(ka, a) and memory.put(kb, b)
    assert memory.bytes_in_memory == 1024 and memory.get(ka) is None  # a evicted (over 1500 bytes) ...
    np.testing.assert_array_equal(memory.get(kb), b)
    cache = AV.MapCache(tmp_path)  # a folder: files read back memory-mapped, nothing held in memory
    cache.put(ka, a)
    cache.put(kb, b)
    assert cache.bytes_in_memory == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{ka}.npy", f"{kb}.npy"])
    fresh = AV.MapCache(tmp_path)  # ... and both come back from disk after a restart
    np.testing.assert_array_equal(fresh.get(ka), a)
    assert isinstance(fresh.get(kb), np.memmap) and not fresh.get(kb).flags.writeable
    np.testing.assert_array_equal(fresh.get(kb), b)
    calls: list[float] = []
    out = fresh.get_or_compute(ka, lambda p: np.zeros(1), progress=lambda f, m: calls.append(f))
    np.testing.assert_array_equal(out, a)
    assert calls == [1.0]  # cached: reported done, nothing computed
    # bounded: at most max_files maps (the least recently used goes: a was read last, so b goes) ...
    old = time.time() - 100
    os.utime(tmp_path / f"{kb}.npy", (old, old))
    bounded = AV.MapCache(tmp_path, max_files=2)
    kd = AV.map_key("case-d", "stamp", "saliency", 365)
    assert bounded.put(kd, a * 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{ka}.npy", f"{kd}.npy"])
    assert bounded.get(kb) is None
    # ... at most max_disk_bytes (a map over the bound is not kept at all), and only where room() allows
    assert not AV.MapCache(tmp_path, max_disk_bytes=1000).put(kb, b) and bounded.get(kb) is None
    assert bounded.get(ka) is not None and bounded.get(kd) is not None  # (and pushes no other map out)
    asked: list[int] = []
    refusing = AV.MapCache(tmp_path, room=lambda n: asked.append(n) or False)
    assert not refusing.put(kb, b) and asked and asked[0] >= b.nbytes and refusing.get(kb) is None
    made_anyway = refusing.get_or_compute(kb, lambda p: b, None)  # no room: computed and returned, not kept
    np.testing.assert_array_equal(made_anyway, b)
    assert refusing.get(kb) is None
    kc = AV.map_key("case-c", "stamp", "gradcam", 365)
    made = fresh.get_or_compute(kc, lambda p: np.full((2, 2, 2), 3.0), None)
    assert not made.flags.writeable
    assert made.dtype == np.float32 and float(made.sum()) == 24.0
    (tmp_path / f"{kc}.npy").write_bytes(b"torn")
    assert AV.MapCache(tmp_path).get(kc) is None  # a torn file is dropped, not shown
    with pytest.raises(InputError, match="method"):
        AV.map_key("case", "stamp", "nonsense", 365)
    with pytest.raises(InputError, match="horizon"):
        AV.map_key("case", "stamp", "saliency", -1)


class _Stop(Exception):
    pass


def test_whole_map_is_the_per_slice_maps_and_is_cached(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from core.app.demo_install import DEFAULT_FUSION, demo_paths
    from core.cohort import load_cohort
    from core.explain import attribute
    from core.registry import load_model

    paths = demo_paths(data_dir)
    cohort = load_cohort(paths.cohort)
    model = load_model(paths.models / DEFAULT_FUSION)
    inputs = model.case_inputs(cohort, cohort.ids("test")[0])
    cache = AV.MapCache(tmp_path)
    # a cancel (the job's progress raising) stops the loop and stores nothing
    def cancel_early(fraction: float, message: str) -> None:
        if fraction > 0.1:
            raise _Stop()

    with pytest.raises(_Stop):
        AV.case_map(cache, model, inputs, "gradcam", 365, progress=cancel_early)
    assert list(tmp_path.iterdir()) == []
    seen: list[tuple[float, str]] = []
    full = AV.case_map(cache, model, inputs, "gradcam", 365, progress=lambda f, m: seen.append((f, m)))
    s = int(inputs.image.shape[1])
    assert full.shape == tuple(int(v) for v in inputs.image.shape[1:]) and full.dtype == np.float32
    assert len(seen) == s + 1 and [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1] == (1.0, "done")
    assert float(np.abs(full).sum()) > 0
    for k in (s // 2, s // 2 + 3):  # the same map the page used to compute one slice at a time
        single = attribute(model, inputs, "gradcam", 365.0, k, with_events=False).map
        np.testing.assert_allclose(full[k], single[k], rtol=1e-4, atol=1e-6)
    from core.registry import LoadedModel

    whole: list[int] = []  # the CT encoded whole: once per map, not once per slice (O(S^2) on a 300-slice CT)
    encode = LoadedModel.encode_image

    def counted(self: LoadedModel, image: Any, *args: Any, **kwargs: Any) -> Any:
        whole.append(int(image.shape[1] == s))
        return encode(self, image, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LoadedModel, "encode_image", counted)
        by_slice = AV.whole_map(model, inputs, "saliency", 365.0, per_slice=True)
    assert sum(whole) == 1 and len(whole) == s + 1
    np.testing.assert_allclose(by_slice[s // 2], attribute(model, inputs, "saliency", 365.0, s // 2, with_events=False).map[s // 2],
                               rtol=1e-4, atol=1e-7)
    stamp = AV.model_stamp(model.model_dir)
    probe = model.model_dir / "cache_probe.npz"  # a cache the app writes beside the model changes no map
    probe.write_bytes(b"x")
    try:
        assert AV.model_stamp(model.model_dir) == stamp
    finally:
        probe.unlink()
    calls: list[str] = []
    again = AV.case_map(AV.MapCache(tmp_path), model, inputs, "gradcam", 365, progress=lambda f, m: calls.append(m))
    assert calls == ["cached"]  # a fresh cache (a server restart) reads it from disk
    np.testing.assert_array_equal(again, full)
    # the same CT and events with other clinical values (changed on a saved case) is another map: the risk whose
    # attribution it is reads them
    import dataclasses

    name = "features" if "features" in inputs.ehr else sorted(inputs.ehr)[0]
    other = dataclasses.replace(inputs, ehr={**inputs.ehr, name: inputs.ehr[name] + 1.0})
    assert AV.case_digest(other) != AV.case_digest(inputs)
    assert AV.case_digest(dataclasses.replace(inputs, ehr=dict(inputs.ehr))) == AV.case_digest(inputs)


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("R", "A", "S"), ("P", "S", "R")])
def test_a_saved_map_lies_voxel_for_voxel_on_its_nifti_study(tmp_path: Path, codes: tuple[str, str, str]) -> None:
    """The map a user saves (explain --save-map, Export's NIfTI map) keeps the NIfTI study's own axis order and
    affine: it was written RAS+ (the viewer's copy), mirrored against an L,P,S study's array, which tools that pair
    arrays voxel by voxel (or refuse differing affines, as nilearn does) got wrong."""
    from nibabel import orientations as ornt

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(12, 10, 8)).astype(np.int16)
    ras = np.diag([0.8, 0.9, 2.5, 1.0])
    ras[:3, 3] = [-40.0, 12.0, 30.0]
    to_codes = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(codes))
    source = nib.Nifti1Image(data, ras).as_reoriented(to_codes)
    nib.save(source, tmp_path / "ct.nii.gz")
    volume = load_study(tmp_path / "ct.nii.gz")
    saved = nib.Nifti1Image.from_bytes(gzip.decompress(VN.map_to_nifti(volume, volume.hu, as_source=True)))
    assert nib.aff2axcodes(saved.affine) == codes
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), np.asarray(source.dataobj))
    viewer = nib.Nifti1Image.from_bytes(gzip.decompress(VN.map_to_nifti(volume, volume.hu)))
    assert nib.aff2axcodes(viewer.affine) == ("R", "A", "S")  # the browser viewer's copy stays RAS+
