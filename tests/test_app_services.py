"""core.app: the app's non-UI services (no streamlit, no model needed)."""

from __future__ import annotations

import gc
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import cohort as cohorts
from core import figure_export
from core import figures as F
from core.app import demo_install, paths, reference, viewer, workspace
from core.errors import InputError


def test_app_data_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CTEHR_DATA_DIR", str(tmp_path))
    assert paths.data_dir() == tmp_path.resolve()
    assert demo_install.demo_paths().cohort == tmp_path.resolve() / "demo" / "cohort"
    assert not demo_install.demo_ready()
    monkeypatch.delenv("CTEHR_DATA_DIR")
    assert paths.data_dir() == paths.ROOT / "data"


def test_planes_are_oriented_and_spaced() -> None:
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # [slices, rows, cols]
    assert viewer.plane_slice(vol, "axial", 2).shape == (5, 6)
    np.testing.assert_array_equal(viewer.plane_slice(vol, "axial", 2), vol[2])
    cor = viewer.plane_slice(vol, "coronal", 1)
    assert cor.shape == (4, 6)
    np.testing.assert_array_equal(cor[0], vol[3, 1, :])  # superior (last slice) at the top
    sag = viewer.plane_slice(vol, "sagittal", 5)
    assert sag.shape == (4, 5)
    np.testing.assert_array_equal(sag[-1], vol[0, :, 5])  # inferior at the bottom
    assert viewer.plane_spacing((3.0, 0.7, 0.8), "axial") == (0.7, 0.8)
    assert viewer.plane_spacing((3.0, 0.7, 0.8), "coronal") == (3.0, 0.8)
    assert viewer.plane_spacing((3.0, 0.7, 0.8), "sagittal") == (3.0, 0.7)
    assert viewer.plane_count(vol.shape, "sagittal") == 6


@pytest.mark.parametrize("plane,index", [("axial", 4), ("axial", -1), ("oblique", 0)])
def test_planes_reject_bad_index(plane: str, index: int) -> None:
    with pytest.raises(InputError) as err:
        viewer.plane_slice(np.zeros((4, 5, 6), np.float32), plane, index)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)


def test_session_workspace_is_private_and_removed_on_gc(tmp_path: Path) -> None:
    ws = workspace.new_session_workspace(tmp_path)
    path = ws.path
    assert path.is_dir() and path.name.startswith(workspace.WORKSPACE_PREFIX)
    assert (path.stat().st_mode & 0o777) == 0o700
    sub = ws.fresh_dir("study")
    (sub / "x.bin").write_bytes(b"1")
    assert ws.fresh_dir("study").exists() and not (sub / "x.bin").exists()
    with pytest.raises(InputError):
        ws.fresh_dir("../escape")
    del ws, sub
    gc.collect()
    assert not path.exists()


def test_sweep_removes_only_stale_workspaces(tmp_path: Path) -> None:
    old = workspace.new_session_workspace(tmp_path)
    new = workspace.new_session_workspace(tmp_path)
    import os

    os.utime(old.path, (1, 1))
    assert workspace.sweep_stale_workspaces(max_age_s=3600, root=tmp_path) == 1
    assert not old.path.exists() and new.path.exists()


def test_export_names_carry_nothing_identifying() -> None:
    name = figure_export.export_name("saliency", 3, "png", method="integrated_gradients", slice_index=7)
    assert name == "saliency_case03_integratedgradients_slice007.png"
    assert figure_export.export_name("case-report", 12, ".pdf") == "case-report_case12.pdf"
    assert figure_export.export_name("case-report", 12, ".pdf", demo=True) == "case-report_demo12.pdf"  # not case 12
    assert figure_export.export_name("case-report", 4, "pdf", demo=True, cohort=True) == "case-report_cohort04.pdf"


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_unpack_cohort_zip_strips_the_top_folder(tmp_path: Path) -> None:
    data = _zip({"mycohort/cohort.csv": b"subject_id,time,event\n1,10,1\n", "mycohort/features.csv": b"subject_id,a\n1,2\n",
                 "mycohort/studies/a/s1.nii.gz": b"x", "other/ignored.txt": b"x"})
    root = workspace.unpack_cohort_zip(data, tmp_path / "c")
    assert sorted(p.name for p in root.iterdir()) == ["cohort.csv", "features.csv", "studies"]
    assert (root / "cohort.csv").read_bytes().startswith(b"subject_id")
    for folder in (root, root / "studies", root / "studies" / "a"):  # private, as the user's folders above them
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder


@pytest.mark.parametrize(
    "entries,needle",
    [
        ({"../cohort.csv": b"x"}, ".."),
        ({"/abs/cohort.csv": b"x"}, "absolute"),
        ({"a.csv": b"x"}, "cohort.csv"),
        ({"a/cohort.csv": b"x", "b/cohort.csv": b"y"}, "exactly one"),
    ],
)
def test_unpack_cohort_zip_refuses_bad_archives(tmp_path: Path, entries: dict[str, bytes], needle: str) -> None:
    with pytest.raises(InputError) as err:
        workspace.unpack_cohort_zip(_zip(entries), tmp_path / "c")
    assert needle in str(err.value)
    assert not any((tmp_path.parent).glob("cohort.csv"))


@pytest.mark.parametrize(("entries", "kwargs", "message"), [
    ({"c/cohort.csv": b"subject_id,time,event\n1,-3,1\n2,9,0\n"}, {},
     "time: got -3 (subject '1'), must be a finite number of days >= 0"),
    ({"c/cohort.csv": b"subject_id,time,event,split\n1,3,1,train\n2,9,0,test\n", "c/timeline.parquet": b"x"},
     {"fusion": "concat", "for_training": True}, "fusion: got concat, needs images but the cohort has none"),
    ({"c/cohort.csv": b"subject_id,time,event,study\n1,3,1,s/1.nii.gz\n2,9,0,s/2.nii.gz\n"},
     {"fusion": "ehr_only", "for_training": True}, "fusion: got ehr_only, needs EHR data but the cohort has none"),
    ({"c/cohort.csv": b"subject_id,time,event,split\n1,3,1,test\n2,9,0,test\n"}, {"for_training": True},
     "split: got no 'train' rows"),
    ({"c/cohort.csv": b"id,days\n1,3\n"}, {}, "columns: got subject_id, time, event, required column(s) missing from cohort.csv (has: id, days)"),
])
def test_an_uploaded_cohort_tables_errors_come_before_any_job(entries: dict[str, bytes], kwargs: dict,
                                                                message: str) -> None:
    """``check_cohort_zip`` reads cohort.csv alone (the bogus timeline and studies are never opened) and says what a
    job would say after its start."""
    with pytest.raises(InputError, match=re.escape(message)):
        workspace.check_cohort_zip(_zip(entries), **kwargs)


def test_a_sound_cohort_zip_passes_the_quick_checks_for_what_it_holds() -> None:
    good = {"top/cohort.csv": b"subject_id,time,event,study\n1,3,1,s/1.nii.gz\n2,9,0,\n", "top/features.csv": b"x",
            "__MACOSX/top/._cohort.csv": b"junk"}
    for fusion in ("image_only", "ehr_only", "concat", None):
        assert workspace.check_cohort_zip(_zip(good), fusion=fusion, for_training=True) == (True, True)
    # patients to score: no outcomes needed; what the zip holds decides what "all 7" counts against the quota
    assert workspace.check_cohort_zip(_zip({"cohort.csv": b"subject_id\n1\n"})) == (False, False)
    tabular = {"c/cohort.csv": b"subject_id,time,event,split\n1,3,1,train\n", "c/features.csv": b"x"}
    assert workspace.check_cohort_zip(_zip(tabular), for_training=True) == (False, True)


def test_upload_cohort_holds_the_volume_and_events(tmp_path: Path) -> None:
    from core.io.volume import Volume

    vol = Volume(hu=np.zeros((3, 4, 4), np.float32), spacing_mm=(3.0, 1.0, 1.0), affine=np.eye(4))
    events = pd.DataFrame({"subject_id": ["p9", "p9"], "time": pd.to_datetime(["2020-01-01", "2020-02-01"]),
                           "code": ["DIAGNOSIS//I10", "LAB//BNP"], "numeric_value": [np.nan, 120.0]})
    cohort = cohorts.uploaded_case_cohort(tmp_path, volume=vol, events=events)
    sid = cohorts.UPLOAD_SUBJECT
    assert cohort.ids() == [sid]
    assert cohort.load_volume(sid) is vol
    assert cohort.study_path(sid) is None
    ev = cohort.events(sid)
    assert len(ev) == 2 and set(ev["subject_id"]) == {sid}
    assert cohort.index_time(sid) == pd.Timestamp("2020-02-01")
    early = cohorts.uploaded_case_cohort(tmp_path, volume=None, events=events, index_time=pd.Timestamp("2020-01-15"))
    assert len(early.events(sid)) == 1  # nothing after the index date reaches the model
    with pytest.raises(InputError):
        cohorts.uploaded_case_cohort(tmp_path, volume=None, events=None)


def test_attention_maps_average_queries() -> None:
    att = {"img<-ehr": np.random.default_rng(0).random((1, 2, 5, 4)).astype(np.float32)}  # 4 event tokens, 1 padding
    events = pd.DataFrame({"code": ["LAB//K", "LAB//Na", "DX//I10"], "time": pd.to_datetime(["2020-01-01"] * 3)})
    maps = F.attention_maps(att, events)
    assert len(maps) == 1
    w = maps[0]["weights"]
    assert w.shape == (2, 3)  # the padding token is dropped
    np.testing.assert_allclose(w, att["img<-ehr"][0, :, :, :3].mean(axis=1), rtol=1e-6)
    assert maps[0]["cols"] == ["0: K", "1: Na", "2: I10"]
    assert F.attention_maps({}, events) == []
    assert F.attention_maps(att, None) == []  # no events: nothing drawn for events that do not exist


def test_risk_group_of_uses_the_group_ranges() -> None:
    class Pred:
        times = np.array([1.0, 2.0, 4.0])
        survival = np.array([0.9, 0.5, 0.1])  # risk = -(1*1 + 0.9*1 + 0.5*2) = -2.9

    groups = [{"label": "low", "risk_range": [-4.0, -3.5]}, {"label": "intermediate", "risk_range": [-3.4, -3.0]},
              {"label": "high", "risk_range": [-2.95, -1.0]}]
    assert reference.risk_group_of(Pred(), groups)["label"] == "high"
    Pred.survival = np.array([0.95, 0.9, 0.9])  # risk = -(1 + 0.95 + 1.8) = -3.75
    assert reference.risk_group_of(Pred(), groups)["label"] == "low"


def test_demo_build_runs_once_in_the_background_and_retries_after_a_failure(tmp_path: Path) -> None:
    import threading

    gate = threading.Event()
    calls: list[int] = []

    def build(progress: demo_install.Progress) -> None:
        calls.append(1)
        progress(0.4, "demo cohort: CT phantoms")
        progress(0.2, "a sub-step restarting its own count")
        assert gate.wait(10.0)
        if len(calls) == 1:
            raise ValueError("cohort: got a broken disk; fix: free space")
        progress(1.0, "demo ready")

    first = demo_install.background_build(tmp_path, target=build)
    second = demo_install.background_build(tmp_path, target=build)
    assert second is first  # a second visitor watches the same build
    for _ in range(200):
        if first.progress[0] > 0:
            break
        first.wait(0.01)
    assert first.progress == (0.4, "a sub-step restarting its own count")  # the bar never moves back
    assert not first.done and not first.wait(0.05)
    gate.set()
    assert first.wait(10.0)
    assert isinstance(first.error, ValueError) and "free space" in str(first.error)
    retry = demo_install.background_build(tmp_path, target=build)  # a reload after a failure starts again
    assert retry is not first
    assert retry.wait(10.0) and retry.error is None and retry.progress == (1.0, "demo ready")
    assert demo_install.background_build(tmp_path, target=build) is retry  # finished well: kept
    assert len(calls) == 2


def test_changed_shipped_models_are_installed_again(tmp_path: Path) -> None:
    """A demo built by an older version keeps its models on disk: shipped models that changed since (another
    config.json, model card or weights) replace them at the next server start, only those installed from the shipped folder and
    only while the demo cohort is the one they were trained on; unchanged ones are left as they are, and the app's own
    files beside a replaced model are kept while its weights are the same."""
    import hashlib
    import json

    shipped, base = tmp_path / "shipped", tmp_path / "data"
    paths_ = demo_install.demo_paths(base)
    paths_.cohort.mkdir(parents=True)
    (paths_.cohort / "cohort.csv").write_text("subject_id,time,event\n1,10,1\n")
    digest = hashlib.sha256((paths_.cohort / "cohort.csv").read_bytes()).hexdigest()
    shipped.mkdir()
    (shipped / "MANIFEST.json").write_text(json.dumps({"cohort_sha256": digest}))
    for name in ("concat", "ehr_only", "image_only"):
        for folder in (shipped / name, paths_.models / name):
            folder.mkdir(parents=True)
            (folder / "config.json").write_text('{"fusion": "%s"}' % name)
            (folder / "model.safetensors").write_bytes(b"w" * 8)
    paths_.ready_file.write_text(json.dumps({"shipped_models": ["concat", "ehr_only"], "trained_here": ["image_only"]}))
    assert demo_install.refresh_shipped(base, shipped) == []  # nothing changed

    (shipped / "concat" / "config.json").write_text('{"fusion": "concat", "timeline_profile": {}}')
    (shipped / "image_only" / "config.json").write_text('{"fusion": "image_only", "new": 1}')  # trained here: kept
    (paths_.models / "ehr_only" / "sanity.json").write_text("{}")  # the app's own file beside an unchanged model
    assert demo_install.refresh_shipped(base, shipped) == ["concat"]
    assert "timeline_profile" in (paths_.models / "concat" / "config.json").read_text()
    assert (paths_.models / "ehr_only" / "sanity.json").exists()
    assert '"new"' not in (paths_.models / "image_only" / "config.json").read_text()
    assert sorted(p.name for p in paths_.models.iterdir()) == ["concat", "ehr_only", "image_only"]  # no leftovers
    (shipped / "ehr_only" / "model.safetensors").write_bytes(b"w" * 9)  # rebuilt weights
    assert demo_install.refresh_shipped(base, shipped) == ["ehr_only"]
    (paths_.models / "ehr_only" / "sanity.json").write_text('{"saliency": {}}')  # run on the rebuilt weights
    (paths_.models / "concat" / "sanity.json").write_text('{"saliency": {}}')
    (shipped / "concat" / "MODEL_CARD.md").write_text("# card\n## Curated features this model reads\n")  # a section added
    (shipped / "ehr_only" / "model.safetensors").write_bytes(b"v" * 9)  # weights of the same size, rebuilt again
    assert demo_install.refresh_shipped(base, shipped) == ["concat", "ehr_only"]
    assert "Curated features" in (paths_.models / "concat" / "MODEL_CARD.md").read_text()
    # the app's own check holds for the same weights (only the card changed), not for other weights
    assert (paths_.models / "concat" / "sanity.json").exists()
    assert not (paths_.models / "ehr_only" / "sanity.json").exists()
    (shipped / "concat" / "demo_test_metrics.json").write_text('{"stamp": 1, "metrics": {"subject_risk": {}}}')
    assert demo_install.refresh_shipped(base, shipped) == ["concat"]  # its kept evaluation, now with each risk
    assert "subject_risk" in (paths_.models / "concat" / "demo_test_metrics.json").read_text()
    assert demo_install.refresh_shipped(base, shipped) == []
    (shipped / "concat" / "config.json").write_text('{"fusion": "concat", "v": 3}')
    (paths_.cohort / "cohort.csv").write_text("subject_id,time,event\n1,11,1\n")  # another cohort: not theirs
    assert demo_install.refresh_shipped(base, shipped) == []
