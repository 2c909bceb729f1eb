"""Every page of the app under streamlit's AppTest, on a tiny prebuilt demo.

The demo (48 synthetic patients, 1 epoch, 3 strategies) is built once per test
session in a temp dir that ``CTEHR_DATA_DIR`` points at.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from core.app import demo_install, reference, workspace
from pages import _state as K
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TEST_FUSIONS = ("image_only", "ehr_only", demo_install.DEFAULT_FUSION)
PAGES = ("pages/case_review.py", "pages/upload.py", "pages/cohort_models.py", "pages/export.py", "pages/about.py")
TIMEOUT = 180


def build_test_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo, built once per pytest session (shared with tests/test_browser.py)."""
    base = tmp_path_factory.getbasetemp() / "ctehr-app-demo"
    demo_install.ensure_demo(base, n=48, epochs=1, fusions=TEST_FUSIONS)
    return base


@contextmanager
def using_data_dir(base: Path) -> Iterator[Path]:
    """``CTEHR_DATA_DIR`` set to ``base`` inside the block, put back after it (module-scoped fixtures)."""
    old = os.environ.get("CTEHR_DATA_DIR")
    os.environ["CTEHR_DATA_DIR"] = str(base)
    try:
        yield base
    finally:
        if old is None:
            os.environ.pop("CTEHR_DATA_DIR", None)
        else:
            os.environ["CTEHR_DATA_DIR"] = old


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with using_data_dir(build_test_demo(tmp_path_factory)) as base:
        yield base


def _stored_map(base: Path, key: str | None) -> np.ndarray:
    """The whole-volume map a finished map job (its ``key``) wrote to the server's folder of demo cases' maps."""
    from core.app import attribution_volume as AV

    found = AV.MapStore(str(base / "cache" / "maps")).cache().get(str(key))
    assert found is not None, f"no map {key} in {base / 'cache' / 'maps'}"
    return np.asarray(found)


def _app():  # type: ignore[no-untyped-def]
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def _no_exception(at) -> None:  # type: ignore[no-untyped-def]
    assert not at.exception, [e.value for e in at.exception]
    for err in at.error:
        assert "Traceback" not in str(err.value)


def _plotly_array(value: object) -> np.ndarray:
    """A figure array from its JSON: a plain list, or plotly's typed array {dtype, bdata (base64), shape}."""
    if isinstance(value, dict):
        import base64

        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return arr.reshape([int(v) for v in str(shape).split(",")] if shape else arr.shape).astype(float)
    return np.asarray(value, dtype=float)


def _charts(at) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _survival_chart(at) -> dict:  # type: ignore[no-untyped-def]
    """Case review's survival chart (a Vega-Lite spec) and the names of its curves."""
    (el,) = at.get("vega_lite_chart")
    return json.loads(el.proto.spec)


def _curve_names(spec: dict) -> set[str]:
    return {r["curve"] for layer in spec["layer"] for r in layer.get("data", {}).get("values", []) if "curve" in r}


def _viewer(at) -> tuple[dict, dict[str, bytes]]:  # type: ignore[no-untyped-def]
    """The CT viewer component's arguments and its byte arguments (the NIfTI volumes)."""
    (el,) = at.get("component_instance")
    return json.loads(el.proto.json_args), {a.key: a.bytes for a in el.proto.special_args}


def _viewer_holds_its_ct(at) -> None:  # type: ignore[no-untyped-def]
    """What the browser's viewer does once NiiVue has the CT: report its id (the charts below it are then drawn)."""
    args, _ = _viewer(at)
    at.session_state["ct_viewer"] = {"held": [args["volume_id"]], "volume_id": args["volume_id"], "seq": 1}
    at.run()


def _nifti_shape(data: bytes) -> tuple[int, ...]:
    import gzip

    import nibabel as nib

    return tuple(nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).shape)


def test_demo_build_is_complete_and_idempotent(data_dir: Path) -> None:
    info = demo_install.demo_build_info(data_dir)
    assert info["n"] == 48 and info["fusions"] == list(TEST_FUSIONS)
    models = demo_install.list_models(demo_install.demo_paths(data_dir).models)
    assert list(models) == list(TEST_FUSIONS)
    stamp = (demo_install.demo_paths(data_dir).ready_file.stat().st_mtime_ns)
    calls: list[float] = []
    demo_install.ensure_demo(data_dir, progress=lambda f, _l: calls.append(f))
    assert calls == [1.0]  # nothing rebuilt
    assert demo_install.demo_paths(data_dir).ready_file.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs(data_dir: Path, page: str) -> None:
    at = _app()
    at.run()
    _no_exception(at)
    # sidebar: model picker, device, horizon (AppTest shows the sidebar of the first run)
    assert at.sidebar.selectbox(key="model_name").value == demo_install.DEFAULT_FUSION
    assert any("Device: **CPU" in c.value or "Device: **GPU" in c.value for c in at.sidebar.caption)
    assert at.sidebar.select_slider(key="horizon_days").value == 365
    if page != PAGES[0]:
        at.switch_page(page)
        at.run()
    _no_exception(at)
    titles = {PAGES[0]: "Case review", PAGES[1]: "Upload a case", PAGES[2]: "Cohort & models", PAGES[3]: "Export",
              PAGES[4]: "About"}
    assert at.title[0].value == titles[page]


def test_case_review_shows_ct_survival_and_risks(data_dir: Path) -> None:
    at = _app()
    at.run()
    _no_exception(at)
    args, data = _viewer(at)  # the NiiVue viewer gets the case's CT as NIfTI (RAS grid: cols, rows, slices)
    assert _nifti_shape(data["volume"]) == (96, 96, 32) and args["overlay"] is None
    assert 0 <= at.session_state["axial_slice"] < 32
    risks = [m for m in at.metric if m.label.endswith(" risk")]
    assert [m.label for m in risks] == ["30-day risk", "1-year risk", "5-year risk"]
    values = [float(m.value.rstrip(" %")) for m in risks]
    assert all(0.0 <= v <= 100.0 for v in values) and values == sorted(values)
    spec = _survival_chart(at)
    assert {"cohort Kaplan-Meier", "similar-risk patients, Kaplan-Meier"} <= _curve_names(spec)
    (line,) = [layer for layer in spec["layer"] if layer["mark"]["type"] == "line"]
    case = [r for r in line["data"]["values"] if r["curve"].startswith("this case")]
    assert case[0]["day"] == 0.0 and case[0]["S"] == 1.0 and all(a["S"] >= b["S"] for a, b in itertools.pairwise(case))
    # the charts below the viewer wait until the viewer has the CT (AppTest runs no browser, so it never reports):
    # a note and a button stand in their place
    assert not _charts(at) and any("appear once the CT viewer has loaded" in c.value for c in at.caption)
    at.button(key="show_below_fold_strategies").click().run()
    _no_exception(at)
    names = {tr.get("name") for ch in _charts(at) for tr in ch["data"]}
    assert set(TEST_FUSIONS) <= names  # the same case under every strategy


def test_the_viewer_report_draws_the_charts_below_it(data_dir: Path) -> None:
    """The viewer's first report that it holds the CT reruns the page with the charts it held back."""
    at = _app()
    at.run()
    _no_exception(at)
    assert not _charts(at)
    at.session_state["ct_viewer"] = {"held": ["ct-not-this-one"], "volume_id": "ct-not-this-one", "seq": 1}
    at.run()
    assert not _charts(at)  # a report about another volume changes nothing
    _viewer_holds_its_ct(at)
    _no_exception(at)
    names = {tr.get("name") for ch in _charts(at) for tr in ch["data"]}
    assert set(TEST_FUSIONS) <= names and not any("appear once the CT viewer" in c.value for c in at.caption)
    volume, _ = _viewer(at)
    assert volume["volume"] is None  # held: the CT is not sent again with the rerun


def test_a_case_seen_before_is_drawn_from_the_prediction_cache(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new session (a restarted server's first visitor) reopens a case without a model call: same numbers."""
    from core.registry import LoadedModel

    first = _app()
    first.run()
    _no_exception(first)
    assert list((data_dir / "cache" / "predictions").glob("*.npz")), "no prediction kept on disk"
    shown = [(m.label, m.value) for m in first.metric]
    curves = _survival_chart(first)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was called for a case already predicted")

    monkeypatch.setattr(LoadedModel, "predict_case", refuse)
    monkeypatch.setattr(LoadedModel, "case_inputs", refuse)
    again = _app()
    again.run()
    _no_exception(again)
    assert [(m.label, m.value) for m in again.metric] == shown
    assert _survival_chart(again) == curves


def test_a_warm_first_page_loads_no_decoder_model_or_torch(data_dir: Path) -> None:
    """A restarted server's first page (the case seen before): the CT from the study cache, the curve from the
    prediction cache; neither nibabel nor pydicom nor torch is imported (each costs a fresh server 0.3-2 s)."""
    first = _app()
    first.run()
    _no_exception(first)
    code = ("import sys; from streamlit.testing.v1 import AppTest; at = AppTest.from_file('app.py', default_timeout=180); "
            "at.run(); assert not at.exception, at.exception; assert at.get('component_instance'); "
            "print(sorted(m for m in ('nibabel', 'pydicom', 'torch', 'captum', 'lifelines') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "CTEHR_DATA_DIR": str(data_dir)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_viewer_slice_window_saliency_and_fusion(data_dir: Path) -> None:
    from core.jobs import default_queue

    at = _app()
    at.run()
    at.selectbox(key="window").set_value("lung").run()
    _no_exception(at)
    args, _ = _viewer(at)
    assert args["window"] == [-1350.0, 150.0] and args["window_id"].endswith(":lung")
    for earlier in default_queue().jobs("local"):  # maps that earlier page runs queued (a per-user limit applies)
        default_queue().wait(earlier.id, timeout=600)
    at.toggle(key="show_saliency").set_value(True).run()
    at.selectbox(key="method").set_value("gradcam").run()  # a method no other test puts in the map cache
    _no_exception(at)
    # the whole-volume map is computed once in the background, then sent as a second NIfTI volume
    jobs = [j for j in default_queue().jobs("local") + default_queue().jobs("anonymous") if j.title.startswith("Grad-CAM map, ")]
    assert jobs, "no background job for the saliency map"
    done = default_queue().wait(jobs[-1].id, timeout=600)
    assert done.state == "done", done.error
    assert done.result is None  # written to the server's folder of demo maps: the finished job holds no copy
    amap = _stored_map(data_dir, done.key)
    assert amap.shape == (32, 96, 96) and float(np.abs(amap).max()) > 0
    at.run()
    _no_exception(at)
    args, data = _viewer(at)
    assert args["show_overlay"] and args["overlay_id"] and _nifti_shape(data["overlay"]) == (96, 96, 32)
    shown = args["overlay_id"]  # the map's content id (pages/_viewer.py)
    at.slider(key="opacity").set_value(0.3).run()
    args, _ = _viewer(at)
    assert args["opacity"] == pytest.approx(0.3) and args["overlay_id"] == shown  # the same map, only its opacity
    # AppTest does not return the sidebar's widgets after reruns of a page run by
    # st.navigation, so the strategy is switched through the widget's state key
    # (the browser test switches it with the real select box).
    at.session_state["model_name"] = "ehr_only"
    at.run()
    _no_exception(at)
    assert any(m.label == "Fusion strategy" and m.value == "ehr_only" for m in at.metric)
    assert any("does not use the CT" in w.value for w in at.warning)


def test_viewer_settings_survive_a_page_switch(data_dir: Path) -> None:
    """Export draws the slice and window last shown in Case review, and Case review reopens there."""
    at = _app()
    at.run()
    at.session_state["axial_slice"] = 20  # what the viewer reports back when the crosshair moves
    at.selectbox(key="window").set_value("lung").run()
    at.switch_page(PAGES[3])
    at.run()
    _no_exception(at)
    assert any(c.value.startswith("Axial slice 21/32 (as in Case review), window lung") for c in at.caption)
    at.run()  # a second run of Export: the case-review widgets are no longer drawn, their values are kept
    _no_exception(at)
    assert any(c.value.startswith("Axial slice 21/32 (as in Case review), window lung") for c in at.caption)
    at.switch_page(PAGES[0])
    at.run()
    _no_exception(at)
    assert at.session_state["axial_slice"] == 20
    assert _viewer(at)[0]["window"] == [-1350.0, 150.0]
    assert at.selectbox(key="window").value == "lung"


def test_default_slice_skips_a_flat_attention() -> None:
    """A case opens on the attended slice only when the attention over slices has a clear peak."""
    from core.app.viewer import default_slice

    flat = np.full(32, 1 / 32) + np.linspace(0, 0.003, 32)  # the shipped models' near-uniform attention
    assert default_slice(flat, 32) == 16
    peaked = np.full(32, 0.02)
    peaked[22] = 0.3
    assert default_slice(peaked, 32) == 22
    assert default_slice(peaked, 30) == 15  # weights for another number of slices: ignored
    assert default_slice(np.full(32, np.nan), 32) == 16


def test_uploaded_case_without_timeline_shows_missing_modality(data_dir: Path) -> None:
    import nibabel as nib

    from core.app import cases

    rng = np.random.default_rng(0)
    hu = (rng.standard_normal((64, 64, 20)) * 30 - 100).astype(np.float32)
    info = cases.save_case("local", study=nib.Nifti1Image(hu, np.diag([1.0, 1.0, 3.0, 1.0])).to_bytes(),
                           study_name="ct.nii", base=data_dir)  # a saved case of the local user
    try:
        at = _app()
        at.run()
        assert at.selectbox(key="case").value[0] == "demo"  # a new session opens on a demo case
        assert f"Uploaded: {info.describe()}" in at.selectbox(key="case").options
        at.selectbox(key="case").set_value(("uploaded", info.case_id)).run()
        _no_exception(at)
        assert any("Missing modality" in w.value and "no ehr data" in w.value.lower() for w in at.warning)
        # noise, not a body: the CT is withheld from the model, which then reads nothing and draws no curve
        assert any("The CT is withheld from" in w.value and "other anatomy" in w.value for w in at.warning)
        assert not [m for m in at.metric if m.label.endswith(" risk")]
        assert any(i.value.startswith("No curve:") and "cannot read this CT" in i.value for i in at.info)
        _viewer_holds_its_ct(at)
        # read anyway on request: the model reads the CT, its curve and its attention over the slices come back
        at.toggle(key=f"read_ood_uploaded_{info.case_id}").set_value(True).run()
        _no_exception(at)
        assert not any("The CT is withheld from" in w.value for w in at.warning)
        assert any(w.value.startswith("The CT was read on request") and "not reliable" in w.value for w in at.warning)
        assert [m.label for m in at.metric if m.label.endswith(" risk")] == [
            "30-day risk", "1-year risk", "5-year risk"]
        strip = next(c for c in _charts(at) if (c["layout"].get("title") or {}).get("text") == "Attention over slices")
        assert len(_plotly_array(strip["data"][0]["x"])) == 20  # the uploaded CT's 20 slices
    finally:
        cases.delete_case("local", info.case_id, data_dir)


def test_core_errors_become_one_line_messages() -> None:
    from streamlit.testing.v1 import AppTest

    def script() -> None:
        import streamlit as st

        from core.errors import InputError
        from pages import _chrome as chrome

        with chrome.core_errors(stop=False, what="Study not loaded: "):
            raise InputError("upload", "x.nii.gz", "is a text file, not a DICOM, NIfTI or zip file", "upload a study")
        with chrome.core_errors(stop=False):
            raise OSError("disk trouble /secret/path")
        with chrome.core_errors(stop=False):  # a zip entry's name: shown as text, not fetched as an image
            raise InputError("zip entry", "../![z](http://127.0.0.1:9/a.png)", "contains '..'", "re-create the zip")
        st.write("after")

    at = AppTest.from_function(script, default_timeout=30)
    at.run()
    assert not at.exception
    assert at.error[0].value == ("Study not loaded: upload: got x.nii.gz, is a text file, not a DICOM, NIfTI or zip "
                                 "file; fix: upload a study")
    assert "secret" not in at.error[1].value and "OSError" in at.error[1].value
    # (the address gets an invisible word joiner: a bare address is not made a link either)
    assert at.error[2].value.startswith("zip entry: got ../!\\[z\\](http\u2060://127.0.0.1:9/a.png), contains")
    assert at.markdown[-1].value == "after"


def test_shipped_models_are_installed_instead_of_trained(data_dir: Path, tmp_path: Path) -> None:
    """A cohort with the manifest's cohort.csv bytes gets the shipped models copied, nothing trained."""
    import hashlib
    import shutil

    built = demo_install.demo_paths(data_dir)
    shipped = tmp_path / "shipped"
    for fusion in TEST_FUSIONS:
        shutil.copytree(built.models / fusion, shipped / fusion)
    sha = hashlib.sha256((built.cohort / "cohort.csv").read_bytes()).hexdigest()
    (shipped / "MANIFEST.json").write_text(json.dumps({"n": 48, "seed": 0, "cohort_sha256": sha}))
    base = tmp_path / "fresh"
    demo_install.ensure_demo(base, fusions=TEST_FUSIONS, shipped=shipped)
    info = demo_install.demo_build_info(base)
    assert info["n"] == 48
    assert info["shipped_models"] == list(TEST_FUSIONS) and info["trained_here"] == []
    for fusion in TEST_FUSIONS:
        got = (demo_install.demo_paths(base).models / fusion / "model.safetensors").read_bytes()
        assert got == (shipped / fusion / "model.safetensors").read_bytes()
    # A manifest for another cohort is ignored: the model is trained instead.
    (shipped / "MANIFEST.json").write_text(json.dumps({"n": 48, "seed": 0, "cohort_sha256": "0" * 64}))
    other = tmp_path / "other"
    demo_install.ensure_demo(other, fusions=("ehr_only",), epochs=1, shipped=shipped)
    assert demo_install.demo_build_info(other)["trained_here"] == ["ehr_only"]


def test_reference_predictions_are_kept_on_disk(data_dir: Path, tmp_path: Path) -> None:
    """The demo's reference curves are predicted once and read back on later server starts."""
    from core.cohort import load_cohort
    from core.registry import load_model

    paths = demo_install.demo_paths(data_dir)
    cohort = load_cohort(paths.cohort)
    model = load_model(paths.models / "ehr_only")
    ids = reference.reference_ids(cohort)
    assert ids == cohort.ids("test")
    cache = tmp_path / "reference_predictions.npz"
    first = reference.reference_curves(model, cohort, ids, cache=cache)
    assert cache.is_file()
    with np.load(cache) as saved:
        assert saved["ids"].tolist() == ids and saved["surv"].shape == (len(ids), len(model.times))
    again = reference.reference_curves(model, cohort, ids, cache=cache)
    np.testing.assert_array_equal(first["risk"], again["risk"])
    other = reference.reference_curves(model, cohort, ids[:-1], cache=cache)  # other ids: predicted anew
    assert other["n"] == len(ids) - 1
    with np.load(cache) as saved:
        assert saved["ids"].tolist() == ids[:-1]


def test_the_session_memo_is_bounded_in_bytes() -> None:
    from streamlit.testing.v1 import AppTest

    def script() -> None:
        import numpy as np
        import streamlit as st

        from pages import _memo

        _memo.MEMO_BYTES = 10 * 2**20  # 10 MB for this session
        for i in range(8):  # 8 maps of 2 MB each (float32 512 x 1024): only the last five fit
            _memo.memo(("map", i), lambda: np.zeros((512, 1024), np.float32))
        big = _memo.memo(("huge",), lambda: np.zeros((4096, 1024), np.float32))  # 16 MB: returned, not kept
        kept = [k for k in st.session_state["_memo"]]
        st.write(repr((kept, big.nbytes, sum(st.session_state["_memo_sizes"].values()))))

    at = AppTest.from_function(script, default_timeout=30)
    at.run()
    assert not at.exception
    kept, big, held = eval(at.markdown[0].value)  # noqa: S307 - the script's own repr of tuples and ints
    assert kept == [("map", i) for i in range(3, 8)] and big == 16 * 2**20 and held == 5 * 2 * 2**20


def test_the_device_line_of_a_warm_start_needs_no_torch(tmp_path: Path) -> None:
    """The sidebar's device line before torch is imported: the label kept by the last start when nothing it depends
    on changed (no torch import), measured again otherwise."""
    import subprocess
    import sys

    script = ("import json, sys; from pages import _chrome as chrome; "
              "print(json.dumps([chrome.device_label(), 'torch' in sys.modules]))")

    def run() -> list:
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "CTEHR_DATA_DIR": str(tmp_path)}, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    measured, imported = run()  # nothing kept yet: measured (torch imported) and kept
    assert imported and measured.startswith(("CPU (", "GPU: "))
    kept = tmp_path / "cache" / "device.json"
    saved = json.loads(kept.read_text())
    assert saved["label"] == measured
    kept.write_text(json.dumps({**saved, "label": "CPU (kept label)"}))
    assert run() == ["CPU (kept label)", False]  # same machine: read back, torch not imported
    kept.write_text(json.dumps({**saved, "fingerprint": "another machine", "label": "CPU (kept label)"}))
    assert run() == [measured, True]  # something changed: measured again


def test_a_detector_model_opens_on_its_own_method_and_a_lung_model_falls_back(data_dir: Path, tmp_path: Path) -> None:
    """The shipped demo image_only model (a lesion-detector encoder) beside the tiny demo's lung-focused models:
    Case review offers it "Detector evidence (IG)" first and computes that map; switching to a model without a
    detector drops the method from the picker and falls back to saliency, with no error."""
    import shutil

    from core.jobs import default_queue

    base = tmp_path / "data"
    shutil.copytree(data_dir, base)
    shutil.copytree(ROOT / "assets" / "demo_models" / "image_only", base / "demo" / "models" / "detector_image_only")
    with using_data_dir(base):
        at = _app()
        at.session_state["model_name"] = "detector_image_only"
        at.run()
        _no_exception(at)
        method = at.selectbox(key="method")
        assert method.value == "detector_ig" and list(method.options)[0] == "Detector evidence (IG)"
        assert any("Detector evidence (IG)" in m.value and "threshold" in m.value for m in at.markdown)
        for earlier in default_queue().jobs("local"):
            default_queue().wait(earlier.id, timeout=600)
        at.toggle(key="show_saliency").set_value(True).run()
        _no_exception(at)
        jobs = [j for j in default_queue().jobs("local") + default_queue().jobs("anonymous")
                if j.title.startswith("Detector evidence (IG) map, ")]
        assert jobs, "no background job for the detector-evidence map"
        done = default_queue().wait(jobs[-1].id, timeout=600)
        assert done.state == "done", done.error
        # non-zero only where the detector calls a lesion: a small share of the volume
        amap = _stored_map(base, done.key)
        assert amap.shape == (32, 96, 96) and 0 < float((amap != 0).mean()) < 0.2
        at.session_state["model_name"] = "image_only"  # the tiny demo's lung-focused model: no detector
        at.run()
        _no_exception(at)
        method = at.selectbox(key="method")
        assert method.value == "saliency" and "Detector evidence (IG)" not in list(method.options)
        at.session_state["model_name"] = "detector_image_only"  # back: the method chosen before, not the stand-in
        at.run()
        _no_exception(at)
        assert at.selectbox(key="method").value == "detector_ig"


def test_the_sidebar_tells_which_jobs_a_server_restart_stopped(data_dir: Path) -> None:
    """A job of a server that is gone (no heartbeat) is shown in the sidebar with what was removed, until dismissed."""
    from core.app import job_journal, workspace

    user_dir = workspace.user_root("local", data_dir)
    stamp = time.time() - 300
    job_journal._write(user_dir / "jobs" / "deadbeef0001-job2.json",
                       {"title": "Training image_only", "queued_at": stamp, "server": "deadbeef0001"})
    orphan = user_dir / "cohorts" / time.strftime(job_journal.STAMP, time.localtime(stamp + 20))
    orphan.mkdir(parents=True)
    # a validation of an upload, whose own process removed its unpacked cohort as the server went (the usual case)
    job_journal._write(user_dir / "jobs" / "deadbeef0001-job3.json",
                       {"title": "Validating ehr_only", "queued_at": stamp + 60, "server": "deadbeef0001",
                        "upload": True})
    at = _app()
    at.run()
    _no_exception(at)
    notes = [w.value for w in at.sidebar.warning if "stopped when the server restarted" in w.value]
    assert len(notes) == 2 and notes[0].startswith("Training image_only (queued ")
    assert "the cohort it had unpacked was removed" in notes[0] and not orphan.exists()
    assert notes[0].endswith(". Start it again.")
    assert notes[1].startswith("Validating ehr_only (queued ") and "; nothing of its upload was kept" in notes[1]
    assert notes[1].endswith("Upload the cohort zip again to start it again.")
    job_journal.dismiss(user_dir, "deadbeef0001-job3")
    assert at.sidebar.button(key="dismiss_deadbeef0001-job2").label == "Dismiss"  # clicked in Chromium (AppTest
    job_journal.dismiss(user_dir, "deadbeef0001-job2")  # does not return the sidebar of a rerun under st.navigation)
    assert not [w for w in _app().run().sidebar.warning if "server restarted" in w.value]

    # a build from MEDS that the restart stopped: its half-written folder (no summary yet) goes, and is named so
    job_journal._write(user_dir / "jobs" / "deadbeef0001-job4.json",
                       {"title": "Cohort from MEDS (mimic_death_after_admission.yaml)", "queued_at": stamp,
                        "server": "deadbeef0001"})
    half = user_dir / "cohorts" / f"meds-{time.strftime(job_journal.STAMP, time.localtime(stamp + 5))}-abcdef"
    half.mkdir(parents=True)
    notes = [w.value for w in _app().run().sidebar.warning if "stopped when the server restarted" in w.value]
    assert len(notes) == 1 and "; the cohort it was building from MEDS was removed. Start it again." in notes[0], notes
    assert not half.exists()
    job_journal.dismiss(user_dir, "deadbeef0001-job4")


def test_the_sidebar_offers_to_start_a_stopped_training_again(data_dir: Path) -> None:
    """A stopped training with its settings on record gets a "Start again" button (an upload's, once its unpacked
    cohort is kept); one that cannot be started again says why in the same line."""
    from core.app import job_journal, job_restart, workspace
    from core.app.background import UNPACKED, train_every_job, train_job

    user_dir = workspace.user_root("local", data_dir)
    stamp = time.time() - 300
    cohort = user_dir / "cohorts" / time.strftime(job_journal.STAMP, time.localtime(stamp + 5))
    cohort.mkdir(parents=True)
    (cohort / "cohort.csv").write_text("subject_id\n")
    (cohort / UNPACKED).write_text("tag7")
    runs = {f: (str(user_dir / "models" / f"{f}-r"), f) for f in ("ehr_only", "late")}
    specs = {"job5": ("Training all 7 strategies",  # an upload: its unpacked cohort kept, then started from it
                      job_restart.spec(train_every_job, (b"zip", str(user_dir / "cohorts"), runs, 2), {"tag": "tag7"},
                                       "train1"), True),
             "job6": ("Training late", job_restart.spec(train_job, (str(user_dir / "cohorts" / "gone"), "late",
                                                                    str(user_dir / "models" / "late-r"), 2), {}, "t"),
                      False),
             # a training that finished as its server stopped, before its record went (a SIGTERM under uvicorn runs
             # no exit hook): not a stopped job, its record goes unseen
             "job7": ("Training concat", job_restart.spec(train_job, (str(cohort), "concat",
                                                                      str(user_dir / "models" / "concat-r"), 2), {}, "t"),
                      False)}
    (user_dir / "models" / "concat-r").mkdir(parents=True)
    (user_dir / "models" / "concat-r" / workspace.TRAINED_MARKER).write_text("{}")
    for name, (title, text, upload) in specs.items():
        job_journal._write(user_dir / "jobs" / f"deadbeef0001-{name}.json",
                           {"title": title, "queued_at": stamp + int(name[-1]), "server": "deadbeef0001",
                            "upload": upload, "restart": text})
    try:
        at = _app()
        at.run()
        _no_exception(at)
        notes = [w.value for w in at.sidebar.warning if "stopped when the server restarted" in w.value]
        assert len(notes) == 2, notes
        assert notes[0].startswith("Training all 7 strategies (queued ")
        assert notes[0].endswith("; the cohort it unpacked is kept to start it again. Start it again with the same "
                                 "settings (the 2 strategies not finished).")
        assert at.sidebar.button(key="restart_deadbeef0001-job5").label == "Start again"  # clicked in Chromium
        assert notes[1].endswith("; it cannot be started again here: its cohort folder is gone. Start it again from "
                                 "its page.")
        assert not [b for b in at.sidebar.button if b.key == "restart_deadbeef0001-job6"]
        assert not (user_dir / "jobs" / "deadbeef0001-job7.json").exists()
    finally:
        __import__("shutil").rmtree(user_dir / "models" / "concat-r")
        for name in specs:
            job_journal.dismiss(user_dir, f"deadbeef0001-{name}")
    assert not cohort.exists()  # dismissed without starting it again: the kept cohort goes


def _seed_map(data_dir: Path, method: str | None, draw: Callable[[np.ndarray], None]) -> tuple[str, str, np.ndarray]:
    """A map of the opening case (the demo's first test subject) under the default model, at the default horizon,
    put into the server's folder of demo maps: ``draw`` marks a zero map (the case's HU volume is passed beside it).
    ``method`` None: the model's own first method. Its key, the method and the case's HU volume."""
    from core.app import attribution_volume as AV
    from core.app.demo_install import DEFAULT_FUSION, demo_paths
    from core.cohort import load_cohort
    from core.explain import methods_for
    from core.horizons import DEFAULT_HORIZON
    from core.registry import load_model

    paths = demo_paths(data_dir)
    cohort = load_cohort(paths.cohort)
    sid = cohort.ids("test")[0]
    model = load_model(paths.models / DEFAULT_FUSION)
    method = method or methods_for(model)[0]
    hu = cohort.load_volume(sid).hu
    values = np.zeros(hu.shape, np.float32)
    draw(values)
    key = AV.map_key(AV.case_digest(model.case_inputs(cohort, sid)), AV.model_stamp(model.model_dir), method,
                     DEFAULT_HORIZON)
    for f in (data_dir / "cache" / "maps").glob(f"{key}*"):  # a map (and its kept spot) of this key from before
        f.unlink()
    assert AV.MapCache(data_dir / "cache" / "maps").put(key, values)
    return key, method, hu


def test_an_export_is_kept_on_disk_in_the_sessions_folder_not_in_its_state(data_dir: Path) -> None:
    """A prepared export was held as bytes in the session's state (266 MB for a full-resolution DICOM zip), hashed
    and copied again at each rerun; it is now a file in this session's exports, read when the user clicks. The
    report draws the map the viewer shows (kept in its store), not one computed again in the server."""
    from tests.test_report import pdf_text

    def slab(values: np.ndarray) -> None:
        values[3, 20:40, 20:40] = 1.0  # one slice near the bottom: no model's own map of this case

    key, _, hu = _seed_map(data_dir, None, slab)
    try:
        at = _app()
        at.run()
        at.switch_page("pages/export.py")
        at.run()
        _no_exception(at)
        at.button(key="prepare_report").click()
        at.run()
        _no_exception(at)
        ready = at.session_state[K.EXPORTS]["report"]
    finally:
        for f in (data_dir / "cache" / "maps").glob(f"{key}*"):
            f.unlink()
    assert not any(isinstance(v, (bytes, bytearray)) for v in ready.values()), list(ready)
    path = Path(ready["path"])
    assert path.read_bytes()[:5] == b"%PDF-" and path.name == ready["name"]
    shown = re.findall(r"axial slice (\d+)/(\d+) \(", pdf_text(path.read_bytes()))
    assert shown == [("4", str(hu.shape[0]))], shown  # the stored map's one slice, and only it
    session_dir = path.parent.parent
    assert session_dir.name.startswith(workspace.WORKSPACE_PREFIX) and session_dir.parent.name == "exports"
    assert (data_dir / "scratch" / session_dir.name).is_dir()  # the session's own: it goes with the session
    size = workspace.human_bytes(path.stat().st_size)
    assert any(size in str(b.proto.label) for b in at.get("download_button")), size
    path.unlink()  # swept (the session's workspace was replaced): no button to a file that is gone, prepare again
    at.run()
    _no_exception(at)
    assert "report" not in at.session_state[K.EXPORTS]
    assert not any("case report" in str(b.proto.label) for b in at.get("download_button"))


def test_a_map_pointing_outside_the_body_is_said_so(data_dir: Path) -> None:
    """On an out-of-distribution CT the map's strongest spot can lie in the air around the patient; the viewer's
    "go to the strongest spot" led there without a word. A map seeded with its peak in a corner of the opening case
    (air in the demo's CTs) gets the warning; the same case's body holds none."""
    from core.sanity import in_body

    def corner(values: np.ndarray) -> None:
        values[values.shape[0] // 2, :6, :6] = 1.0

    key, _, hu = _seed_map(data_dir, "occlusion", corner)
    s, r, c = hu.shape
    assert not in_body(hu, (s // 2, 2, 2)) and in_body(hu, (s // 2, r // 2, c // 2))
    try:
        at = _app()
        at.run()
        at.toggle(key="show_saliency").set_value(True).run()
        at.selectbox(key="method").set_value("occlusion").run()
        _no_exception(at)
        outside = [w.value for w in at.warning if "strongest spot" in w.value]
        assert outside and f"(slice {s // 2 + 1})" in outside[0] and "outside the patient's body" in outside[0]

        def inside(values: np.ndarray) -> None:  # the same case, a map in the body
            values[s // 2, r // 2 - 2:r // 2 + 3, c // 2 - 2:c // 2 + 3] = 1.0

        _seed_map(data_dir, "occlusion", inside)
        at2 = _app()
        at2.run()
        at2.toggle(key="show_saliency").set_value(True).run()
        at2.selectbox(key="method").set_value("occlusion").run()
        _no_exception(at2)
        assert not [w.value for w in at2.warning if "strongest spot" in w.value]
        assert any("strongest spot" in b.label for b in at2.button)
    finally:
        for f in (data_dir / "cache" / "maps").glob(f"{key}*"):
            f.unlink()


def test_a_bad_heavy_threads_setting_is_one_line_on_the_page(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CTEHR_HEAVY_THREADS is read when the job queue starts (the sidebar's job list): a bad value is said in one line
    naming the variable and the fix, not a failed page."""
    from core import jobs

    monkeypatch.setenv("CTEHR_HEAVY_THREADS", "lots")
    monkeypatch.setattr(jobs, "_DEFAULT", None)  # a server started with the setting
    at = _app()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["Server setting: CTEHR_HEAVY_THREADS: got lots, must be a whole number of "
                                           "threads, 1 or more; fix: set it to e.g. 4, or unset it (every CPU but one)"]


def test_a_cohort_is_built_from_an_uploaded_meds_file_on_the_cohort_page(data_dir: Path, tmp_path: Path) -> None:
    """Cohort & models > Cohort from MEDS: an uploaded MEDS parquet and the bundled task give the cohort's numbers
    (the six-subject file of tests/test_meds_cohort.py: four subjects, two deaths) and its splits in words. The build
    is a heavy job: a hospital's extract (minutes, gigabytes) is read in its own process, not in the server."""
    from tests.test_meds_cohort import _write_synthetic

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    at = _app()
    at.run()
    at.switch_page(PAGES[2])
    at.run()
    at.file_uploader(key="meds_file").set_value(("events.parquet", meds.read_bytes(), "application/octet-stream"))
    at.run()
    at.button(key="meds_build").click()
    at.run()  # queued as a heavy job (its own process), not built in the page's run
    from core.jobs import default_queue

    jobs = [j for j in default_queue().jobs("local") if j.title.startswith("Cohort from MEDS")]
    assert jobs and jobs[-1].heavy, [j.title for j in default_queue().jobs("local")]
    site = jobs[-1].site  # it waited its turn in the site's heavy queue, shared with the other replicas
    assert site is not None and site.folder.resolve() == (data_dir / "jobs" / "heavy").resolve()
    done = default_queue().wait(jobs[-1].id, timeout=300)
    assert done.state == "done", done.error
    assert list(site.folder.glob("*.json")) == []  # its ticket given back
    at.run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    numbers = {m.label: m.value for m in at.metric}
    assert numbers["Patients"] == "4" and numbers["Events"] == "2" and numbers["Censored"] == "2", numbers
    splits = next(c.value for c in at.caption if c.value.startswith("Splits: "))
    assert re.fullmatch(r"Splits: train \d, val \d, test \d; 1[0-9] timeline events kept; no CT studies\.", splits), splits
    from core.app.audit import audit_path

    lines = [json.loads(line) for line in audit_path().read_text().splitlines()]
    assert any(e["action"] == "upload" and e["target"] == "meds_cohort" for e in lines)  # the build is audited
    built = done.result["out"]
    assert at.selectbox(key="meds_pick").value == built

    again = _app()  # a reload (a new session): the built cohort is still the user's, not lost with the session
    again.run()
    again.switch_page(PAGES[2])
    again.run()
    _no_exception(again)
    pick = again.selectbox(key="meds_pick")
    assert pick.value == built and pick.label.startswith("Your cohorts built from MEDS"), pick.options
    assert {m.label: m.value for m in again.metric}["Patients"] == "4"
    again.button(key="meds_delete").click()
    again.run()
    _no_exception(again)
    assert not Path(built).exists() and not [s for s in again.selectbox if s.key == "meds_pick"]
    assert "Patients" not in {m.label for m in again.metric}  # nothing left to show or train on


def test_a_meds_cohort_built_with_ct_studies_offers_every_strategy(data_dir: Path, tmp_path: Path) -> None:
    """Cohort from MEDS with a zip of CT studies named by subject id: the build adds them (after the PHI check),
    the page says how many patients have one and offers every fusion strategy (and all of them, compared), where a
    cohort without studies offers ehr_only only."""
    import io
    import zipfile

    from tests.test_meds_cohort import _nifti, _write_synthetic

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for sid in ("1", "2", "6"):
            _nifti(tmp_path / f"{sid}.nii.gz", seed=int(sid))
            zf.write(tmp_path / f"{sid}.nii.gz", f"{sid}.nii.gz")
    at = _app()
    at.run()
    at.switch_page(PAGES[2])
    at.run()
    at.file_uploader(key="meds_file").set_value(("events.parquet", meds.read_bytes(), "application/octet-stream"))
    at.file_uploader(key="meds_studies").set_value(("ct.zip", buf.getvalue(), "application/zip"))
    at.run()
    at.button(key="meds_build").click()
    at.run()
    from core.jobs import default_queue

    job = [j for j in default_queue().jobs("local") if j.title.startswith("Cohort from MEDS")][-1]
    done = default_queue().wait(job.id, timeout=300)
    assert done.state == "done", done.error
    at.run()
    _no_exception(at)
    splits = next(c.value for c in at.caption if c.value.startswith("Splits: "))
    assert splits.endswith("timeline events kept; a CT study for 3 of 4 patients."), splits
    options = at.selectbox(key="meds_fusion_ct").options  # its own key: the ehr_only picker's value is not kept
    assert len(options) == 8 and "image_only" in options and options[-1].startswith("all 7"), options
    assert at.selectbox(key="meds_fusion_ct").value == "concat"

    at.button(key="meds_train").click()  # a training from this tab: its status drawn here only, not in Train too
    at.run()
    _no_exception(at)  # two tabs drawing one running job repeated its Cancel button's key (an exception)
    train = [j for j in default_queue().jobs("local") if j.title == "Training concat"][-1]
    shown = [b for b in at.button if b.key == f"cancel_{train.id}"] + \
        [e for e in at.error if str(e.value).startswith("Training concat failed")] + \
        [e for e in at.success if str(e.value).startswith("Trained concat")]
    assert len(shown) == 1, [b.key for b in at.button]
    default_queue().cancel(train.id, "local")
    default_queue().wait(train.id, timeout=120)


def test_every_page_run_counts_as_a_use_of_the_sessions_workspace(data_dir: Path, tmp_path: Path) -> None:
    """The closed-session sweep (core.app.session_sweep) takes a session whose page ran since its last look for one
    seen connected: a run of any page (here Case review, which makes no export) counts a use of the session's
    workspace (``touch``, which also marks its folder), not only the Export page's."""
    import os

    from core.app.workspace import new_session_workspace

    ws = new_session_workspace(tmp_path / "scratch")
    os.utime(ws.path, (1_000_000, 1_000_000))
    at = _app()
    at.session_state["workspace"] = ws  # as a prepared export leaves it
    at.run()
    _no_exception(at)
    assert at.session_state["workspace"].uses == 1 and ws.path.stat().st_mtime > 1_000_000


def test_a_reloaded_tab_opens_the_same_case_model_and_view(data_dir: Path) -> None:
    """A reload (F5) or a bookmark started a tab on the default case and model: the tab's address now carries a token
    (``?review=``, nothing else) and a new session with it opens the case, model, horizon, window and slice the tab
    last showed, then goes on under a token of its own. A token the user does not have opens the default case, and a
    model deleted meanwhile is said, both in a toast."""
    from core.app import kept_reviews

    at = _app()
    at.session_state["model_name"] = "ehr_only"
    at.session_state["horizon_days"] = 1825
    at.run()
    _no_exception(at)
    token = at.query_params["review"]
    assert kept_reviews.is_token(token)
    default_case = at.session_state["case"]
    from core.cohort import load_cohort

    other = next(s for s in load_cohort(demo_install.demo_paths().cohort).ids("test") if ("demo", s) != default_case)
    at.selectbox(key="case").set_value(("demo", other)).run()
    at.selectbox(key="window").set_value("lung").run()
    _no_exception(at)
    case, slice_ = at.session_state["case"], at.session_state["axial_slice"]
    assert case == ("demo", other) != default_case

    again = _app()
    again.query_params["review"] = token
    again.run()
    _no_exception(again)
    assert again.session_state["case"] == case and again.session_state["model_name"] == "ehr_only"
    assert again.session_state["horizon_days"] == 1825 and again.session_state["window"] == "lung"
    assert again.session_state["axial_slice"] == slice_ and not again.toast  # nothing to say
    assert again.session_state["case_numbers"] == at.session_state["case_numbers"]  # "Demo case 2" stays case 2
    kept = kept_reviews.load("local", token, base=data_dir)
    assert again.query_params["review"] == token  # opened, not changed: the bookmark's review, nothing written
    again.selectbox(key="window").set_value("bone").run()  # the first change: a token of its own from now on
    _no_exception(again)
    assert again.query_params["review"] != token and kept_reviews.load("local", token, base=data_dir) == kept
    assert kept_reviews.load("local", again.query_params["review"], base=data_dir)["window"] == "bone"

    unknown = _app()
    unknown.query_params["review"] = kept_reviews.new_token()
    unknown.run()
    _no_exception(unknown)
    assert unknown.session_state["case"] == default_case
    assert "no longer kept" in unknown.toast[0].value
    tampered = _app()
    tampered.query_params["review"] = "../" + token
    tampered.run()
    _no_exception(tampered)
    assert "review token is not valid" in tampered.toast[0].value

    gone = kept_reviews.new_token()
    kept_reviews.save("local", gone, {"model_name": "a model deleted since", "case": list(case)}, base=data_dir)
    deleted = _app()
    deleted.query_params["review"] = gone
    deleted.run()
    _no_exception(deleted)
    assert deleted.session_state["case"] == case and deleted.session_state["model_name"] != "a model deleted since"
    assert "a model deleted since is no longer among your models" in deleted.toast[0].value

    removed = kept_reviews.new_token()  # a saved case deleted since the address was bookmarked: said too
    kept_reviews.save("local", removed, {"case": ["uploaded", "a-case-deleted-since"]}, base=data_dir)
    bookmark = _app()
    bookmark.query_params["review"] = removed
    bookmark.run()
    _no_exception(bookmark)
    assert bookmark.session_state["case"] == default_case
    assert bookmark.toast[0].value.startswith("The case under review is no longer among your cases (deleted): now "
                                              "showing Demo ")


def test_a_patient_of_the_users_own_cohort_opens_in_case_review(data_dir: Path) -> None:
    """The test patients of a cohort the user trained a model on are listed in Case review's picker and open like
    a demo case (CT, curve, the cohort's own reference), with their caches in the user's folder, not the server's;
    once the model and its cohort are deleted, the page falls back to a demo case."""
    import shutil

    from core.app.background import TRAINED_MARKER, delete_trained_model
    from core.cohort import load_cohort

    demo = demo_install.demo_paths()
    user = workspace.user_root("local", base=data_dir)
    cohort = user / "cohorts" / "20261128-120000"  # named as an uploaded cohort is (the time it was unpacked)
    model = workspace.user_models_dir("local", base=data_dir) / "concat-mine"
    shutil.copytree(demo.cohort, cohort)
    shutil.copytree(demo.models / demo_install.DEFAULT_FUSION, model, ignore=shutil.ignore_patterns("*_predictions.npz"))
    label = f"{demo_install.DEFAULT_FUSION} (your cohort, 28 Nov 12:00)"
    (model / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(cohort), "fusion": demo_install.DEFAULT_FUSION,
                                                    "label": label}))
    test_ids = load_cohort(cohort).ids("test")
    # the first test patient's CT as a de-identified DICOM series dated 2024-09-17, a week after its index_time
    import pandas as pd

    from tests.dicom_factory import edit_file, write_deidentified_series, zip_folder

    table = pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})
    import tempfile

    series = write_deidentified_series(Path(tempfile.mkdtemp()) / "dated", shape=(32, 96, 96),
                                       spacing_mm=(6.0, 4.0, 4.0)).folder
    for f in series.iterdir():
        edit_file(f, lambda ds: setattr(ds, "StudyDate", "20240917"))
    (cohort / "studies" / f"{test_ids[0]}.zip").write_bytes(zip_folder(series))  # a file: kept in the study cache
    shutil.rmtree(series.parent)
    table.loc[table["subject_id"] == test_ids[0], ["study", "index_time"]] = [f"studies/{test_ids[0]}.zip",
                                                                             "2024-09-10 09:00"]
    table.to_csv(cohort / "cohort.csv", index=False)
    server_cache = data_dir / "cache"
    try:
        at = _app()
        at.session_state["model_name"] = label
        at.run()
        _no_exception(at)
        picker = at.selectbox(key="case")
        assert picker.value[0] == "demo"
        source = "cohort:20261128-120000"
        ours = [o for o in picker.options if o.startswith("Your cohort uploaded 28 Nov 12:00: ")]
        assert ours[0] == f"Your cohort uploaded 28 Nov 12:00: {test_ids[0]} (test)" and len(ours) == 48
        before = {p.name for p in server_cache.rglob("*") if p.is_file()}
        # Cohort & models, the model's tab: one click opens its first test patient in Case review
        at.switch_page("pages/cohort_models.py").run()
        _no_exception(at)
        assert any(c.value == f"Model **{label}**, evaluated on the test split of your cohort uploaded 28 Nov 12:00."
                   for c in at.caption)
        review = at.button(key="review_cohort_20261128-120000")
        assert review.label == f"Review its test patients in Case review ({len(test_ids)})"
        review.click().run()  # st.switch_page: Case review runs once on the new case
        _no_exception(at)
        assert at.selectbox(key="case").value == (source, test_ids[0])
        at.switch_page("pages/case_review.py").run()  # AppTest's own page follows (its later runs rerun that page)
        _no_exception(at)
        args, data = _viewer(at)
        assert _nifti_shape(data["volume"]) == (96, 96, 32)  # the cohort patient's own CT
        from core.app import audit  # the audit log names the patient by its keyed pseudonym, not by its id

        opened = [r for r in audit.records_of(test_ids[0]) if r["action"] == "open"]
        assert opened and opened[-1]["details"]["source"] == "cohort" and test_ids[0] not in json.dumps(opened)
        risks = [float(m.value.rstrip(" %")) for m in at.metric if m.label.endswith(" risk")]
        assert len(risks) == 3 and risks == sorted(risks)
        said = [w for w in [*at.warning, *at.info] if "before the CT was taken" in w.value]
        assert len(said) == 1 and "The index date 2024-09-10 is 7 days before the CT was taken (2024-09-17)" in said[0].value
        assert said[0].icon == ":material/warning:"  # a CT after the index date is a leak, warned as train warns of it
        # the strategy as the metric (a long label was cut there), the model's whole label under it
        assert any(m.label == "Fusion strategy" and m.value == demo_install.DEFAULT_FUSION for m in at.metric)
        assert any(c.value == label for c in at.caption)
        captions = " ".join(c.value for c in at.caption)
        assert f"Kaplan-Meier of {len(test_ids)} patients of the cohort this model was trained on" in captions
        # "every strategy" compares the models trained on this model's cohort only: the demo's models are another
        # population, whose risks must not raise the disagreement flag
        at.button(key="show_below_fold_strategies").click().run()
        _no_exception(at)
        assert {tr.get("name") for ch in _charts(at) for tr in ch["data"]} & {*TEST_FUSIONS, label} == {label}
        assert any(c.value.startswith(f"Only the models trained on the same cohort as {label} are compared; "
                                      f"{len(TEST_FUSIONS)} models trained on another cohort are left out")
                   for c in at.caption)
        assert not any("fusion strategies disagree" in w.value for w in at.warning)
        after = {p.name for p in server_cache.rglob("*") if p.is_file()}
        assert after == before  # nothing of the user's cohort in the server's shared caches
        kept = user / "cache"
        assert list((kept / "predictions").glob("*.npz")) and list((kept / workspace.STUDIES).glob("*.npz"))
        at.switch_page("pages/export.py").run()
        _no_exception(at)
        assert any(m.value.startswith("**Cohort case ") and f"({test_ids[0]} of your cohort uploaded 28 Nov 12:00 in "
                   "Case review)" in m.value for m in at.markdown)
        _wait_for_jobs()  # the evaluation Cohort & models started: not on a model being deleted, nor at exit
        delete_trained_model(workspace.user_models_dir("local", base=data_dir), model, user / "cohorts")
        assert not cohort.exists()
        at.switch_page("pages/case_review.py").run()
        _no_exception(at)
        assert at.selectbox(key="case").value[0] == "demo"
        assert not [o for o in at.selectbox(key="case").options if o.startswith("Your cohort")]
        later = _app()  # the sidebar runs in app.py's main, which AppTest runs on a first run only
        later.session_state["model_name"] = label  # a session still on the deleted model (another tab deleted it)
        later.run()
        _no_exception(later)
        assert [t.value for t in later.toast] == [f"{label} is no longer among your models (deleted): now showing "
                                                  f"{demo_install.DEFAULT_FUSION}."]  # said, not switched in silence
    finally:
        _wait_for_jobs()
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(cohort, ignore_errors=True)
        shutil.rmtree(user / "cache", ignore_errors=True)


def test_a_patient_past_the_pickers_list_opens_by_id(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hospital cohort holds more patients than the picker lists (MAX_LISTED of each cohort, test split first): the
    others could not be opened at all. A box under the picker, shown only then, opens one by its id (the picker then
    lists it too, and it stays after a rerun); part of an id lists the ids that contain it, to open one; an id that no
    cohort of the user holds gets a one-line error."""
    import shutil

    from core.cohort import load_cohort
    from pages import _cohort_cases

    user = workspace.user_root("local", base=data_dir)
    cohort, model, label = _own_cohort_model(data_dir, "20261129-090000")
    loaded = load_cohort(cohort)
    train_ids = loaded.ids("train")
    monkeypatch.setattr(_cohort_cases, "MAX_LISTED", 10)
    prefix = "Your cohort uploaded 29 Nov 09:00: "
    try:
        at = _app()
        at.session_state["model_name"] = label
        at.run()
        _no_exception(at)
        assert len(label) > 26 and any(c.value == label for c in at.sidebar.caption)  # the box cuts it: said whole
        assert len([o for o in at.selectbox(key="case").options if o.startswith(prefix)]) == 10
        box = at.text_input(key=_cohort_cases.FIND)
        assert f"{len(loaded.ids()) - 10:,} more are opened here by their id" in box.help
        box.input(f" {train_ids[-1]} ").run()  # the last patient of the train split, far past the list
        _no_exception(at)
        picker = at.selectbox(key="case")
        assert picker.value == ("cohort:20261129-090000", train_ids[-1])
        ours = [o for o in picker.options if o.startswith(prefix)]
        assert len(ours) == 11 and ours[-1] == f"{prefix}{train_ids[-1]} (train)"
        assert at.text_input(key=_cohort_cases.FIND).value == ""
        at.run()  # it stays the case under review on the next run
        _no_exception(at)
        assert at.selectbox(key="case").value == ("cohort:20261129-090000", train_ids[-1])
        at.text_input(key=_cohort_cases.FIND).input(train_ids[-2].upper()).run()  # capitals only differ: that id
        assert at.selectbox(key="case").value == ("cohort:20261129-090000", train_ids[-2])
        # part of an id: the ids that contain it are offered as buttons, and none is opened by itself
        part = train_ids[-3][-3:].upper()
        at.text_input(key=_cohort_cases.FIND).input(part).run()
        _no_exception(at)
        assert at.selectbox(key="case").value == ("cohort:20261129-090000", train_ids[-2])
        assert at.warning[0].value.startswith(f"No patient of your cohorts has the id {part} exactly; ")
        hits = {b.label.split(" (")[0]: b for b in at.button if b.key.startswith(f"{_cohort_cases.FIND}_hit_")}
        assert train_ids[-3] in hits and all(part.casefold() in h.casefold() for h in hits)
        hits[train_ids[-3]].click().run()
        _no_exception(at)
        assert at.selectbox(key="case").value == ("cohort:20261129-090000", train_ids[-3])
        assert not [b for b in at.button if b.key.startswith(f"{_cohort_cases.FIND}_hit_")]
        at.text_input(key=_cohort_cases.FIND).input(train_ids[-2]).run()
        assert at.selectbox(key="case").value == ("cohort:20261129-090000", train_ids[-2])
        at.text_input(key=_cohort_cases.FIND).input("P-nobody ![x](http://127.0.0.1:9/a.png)").run()
        _no_exception(at)
        assert [e.value for e in at.error] == ["patient id: got P-nobody !\\[x\\](http\u2060://127.0.0.1:9/a.png), is in none of "
                                               "your cohorts; fix: type the subject id as cohort.csv writes it"]
        at.text_input(key=_cohort_cases.FIND).input("x" * 5000).run()  # the error's line stays one line
        assert len(at.error[0].value) < 200
        assert at.selectbox(key="case").value == ("cohort:20261129-090000", train_ids[-2])  # the case stays
        monkeypatch.setattr(_cohort_cases, "MAX_LISTED", 1000)
        at.run()
        assert not [t for t in at.text_input if t.key == _cohort_cases.FIND]  # every patient listed: no box
    finally:
        _wait_for_jobs()
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(cohort, ignore_errors=True)
        shutil.rmtree(user / "cache", ignore_errors=True)


def _own_cohort_model(data_dir: Path, stamp: str) -> tuple[Path, Path, str]:
    """A copy of the demo cohort as the user's cohort uploaded at ``stamp`` (%Y%m%d-%H%M%S) and a copy of the default
    demo model as their model trained on it: (cohort folder, model folder, the model's label)."""
    import shutil

    from core.app.background import TRAINED_MARKER

    demo = demo_install.demo_paths()
    cohort = workspace.user_root("local", base=data_dir) / "cohorts" / stamp
    model = workspace.user_models_dir("local", base=data_dir) / f"concat-{stamp}"
    shutil.copytree(demo.cohort, cohort)
    shutil.copytree(demo.models / demo_install.DEFAULT_FUSION, model, ignore=shutil.ignore_patterns("*_predictions.npz"))
    when = time.strptime(stamp, "%Y%m%d-%H%M%S")
    label = f"{demo_install.DEFAULT_FUSION} (your cohort, {time.strftime('%d %b %H:%M', when)})"
    (model / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(cohort), "fusion": demo_install.DEFAULT_FUSION,
                                                    "label": label}))
    return cohort, model, label


def test_a_model_of_the_users_cohort_is_shown_by_subgroup(data_dir: Path) -> None:
    """Subgroups (C-index and calibration per group) were offered for the demo's models only: a hospital could not
    see how its own model does by sex, age or site. A column of the user's cohort is picked, a background job
    predicts the test split again, and the per-group table and forest plot follow."""
    import shutil

    from core.cohort import load_cohort

    import pandas as pd

    from core.jobs import default_queue

    cohort, model, label = _own_cohort_model(data_dir, "20261129-100000")
    table = pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})
    table.assign(site="Hospital A").to_csv(cohort / "cohort.csv", index=False)  # one site: nothing to compare
    try:
        at = _app()
        at.session_state["model_name"] = label
        at.run()
        at.switch_page("pages/cohort_models.py").run()
        _wait_for_jobs()  # its evaluation on the test split
        at.run()
        _no_exception(at)
        picker = at.selectbox(key="own_subgroup_column")
        assert picker.value == "sex_female" and "site" in picker.options and "time" not in picker.options
        # a column with one value fails at once, before any patient is predicted again
        picker.set_value("site").run()
        at.button(key="own_subgroup_go").click().run()
        _wait_for_jobs()
        at.run()
        assert [e.value for e in at.error] == [f"{label}: subgroup: got site, has one value in the test split: no "
                                               "groups to compare; fix: pick a column whose values differ between patients"]
        # a cancelled job can be run again (its button came back only after the queue forgot the job, an hour later)
        at.selectbox(key="own_subgroup_column").set_value("age").run()
        at.button(key="own_subgroup_go").click().run()
        job = [j for j in default_queue().jobs("local") if j.title == f"Subgroups of {label} by age"][-1]
        default_queue().cancel(job.id, "local")
        default_queue().wait(job.id, timeout=120)
        at.run()
        assert at.button(key="own_subgroup_go").label == "Compute again"
        at.selectbox(key="own_subgroup_column").set_value("sex_female").run()
        at.button(key="own_subgroup_go").click().run()
        _wait_for_jobs()
        at.run()
        _no_exception(at)
        table = next(d.value for d in at.dataframe if "n / events" in d.value.columns)
        loaded = load_cohort(cohort)
        test = loaded.table.set_index("subject_id").loc[loaded.ids("test")]
        sexes = loaded.column_values("sex_female", loaded.ids("test"))
        want = {str(v): (sum(x == v for x in sexes), int(test["event"][[x == v for x in sexes]].sum())) for v in set(sexes)}
        assert sorted(table["n / events"]) == sorted(f"{n} / {e}" for n, e in want.values())
    finally:
        _wait_for_jobs()
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(cohort, ignore_errors=True)
        shutil.rmtree(workspace.user_root("local", base=data_dir) / "cache", ignore_errors=True)


def test_the_test_patients_a_model_orders_worst_open_in_case_review(data_dir: Path) -> None:
    """A C-index does not say which patients a model gets wrong. Cohort & models lists the ten test patients whose
    comparable pairs the model orders right least often (Harrell's C patient by patient), worst first, and opens the
    one picked in Case review; the shares are those of the model's kept evaluation."""
    from core.evaluate import harrell_c
    from core.evaluate.patient_pairs import patient_concordance
    from pages import _worst_patients

    at = _app()
    at.run()
    model = at.session_state["model_name"]
    at.switch_page("pages/cohort_models.py").run()
    _wait_for_jobs()  # the model's evaluation on the test split, unless an earlier test kept it
    at.run()
    _no_exception(at)
    table = next(d.value for d in at.dataframe if "pairs ordered right" in d.value.columns)
    assert 5 <= len(table) <= 10  # the tiny demo's test split: its patients in at least 5 comparable pairs
    assert any(m.value == f"**The {len(table)} patients of the test split the model orders worst**" for m in at.markdown)
    shares = [int(v.split("%")[0]) for v in table["pairs ordered right"]]
    assert shares == sorted(shares)  # worst first
    # the same numbers from the kept evaluation and the cohort's outcomes
    saved = json.loads((demo_install.demo_paths().models / model / "demo_test_metrics.json").read_text())["metrics"]
    cohort = demo_install.demo_paths().cohort
    outcomes = _worst_patients._outcomes(str(cohort), (cohort / "cohort.csv").stat().st_mtime)
    ids, risk = saved["subject_risk"]["ids"], np.asarray(saved["subject_risk"]["risk"])
    time_, event = outcomes.loc[ids, "time"].to_numpy(), outcomes.loc[ids, "event"].to_numpy()
    conc, comp = patient_concordance(time_, event, risk)
    assert conc.sum() / comp.sum() == pytest.approx(harrell_c(time_, event, risk), abs=1e-9)
    first = ids.index(table["patient"].iloc[0])
    assert table["pairs ordered right"].iloc[0] == f"{conc[first] / comp[first]:.0%} of {int(comp[first]):,}"
    assert table["model's risk rank"].iloc[0] == f"{int((risk > risk[first]).sum()) + 1} of {len(ids)}"
    every = _worst_patients.patient_pairs(saved, cohort)  # what the CSV download holds: every test patient
    enough = every[every["comparable"] >= _worst_patients.MIN_PAIRS]
    assert len(every) == len(ids) and list(enough["subject_id"][:len(table)]) == list(table["patient"])
    assert every["concordant"].sum() / every["comparable"].sum() == pytest.approx(saved["c_index"], abs=1e-6)
    assert [b.proto.label for b in at.get("download_button") if b.proto.label.startswith("Every patient of")] == [
        "Every patient of the test split: rank and pairs (CSV)"]
    picker = at.selectbox(key="worst_patient")
    assert [o.split(":")[0] for o in picker.options] == list(table["patient"])
    assert picker.value == table["patient"].iloc[0]
    picker.set_value(table["patient"].iloc[3]).run()
    at.button(key="worst_open").click().run()  # st.switch_page: Case review runs once on that patient
    _no_exception(at)
    assert at.selectbox(key="case").value == ("demo", table["patient"].iloc[3])
    # Case review steps through the list: which one this is, then the next
    at.switch_page("pages/case_review.py").run()  # AppTest's own page follows (its later runs rerun that page)
    _no_exception(at)
    note = picker.options[3].split(": ", 1)[1]
    assert any(c.value == f"Patient 4 of the {len(table)} of the test split that {model} orders worst (Cohort & "
                          f"models): {note}." for c in at.caption)
    at.button(key="worst_next").click().run()
    _no_exception(at)
    assert at.selectbox(key="case").value == ("demo", table["patient"].iloc[4])
    # its observed outcome, marked on the curve on request (a retrospective review), as cohort.csv records it
    assert not [layer for layer in _survival_chart(at)["layer"] if layer["mark"].get("shape")]
    at.toggle(key="show_outcome").set_value(True).run()
    _no_exception(at)
    days, event = outcomes.loc[table["patient"].iloc[4], ["time", "event"]]
    mark = next(layer for layer in _survival_chart(at)["layer"] if layer["mark"].get("shape"))
    assert mark["data"]["values"][0]["text"] == f"{'event' if event else 'censored'}, day {days:,.0f}"
    assert mark["mark"]["shape"] == ("cross" if event else "circle")
    assert any(c.value.startswith(f"Patient 5 of the {len(table)} ") for c in at.caption)
    at.selectbox(key="case").set_value(("demo", table["patient"].iloc[0])).run()  # the list's first: no Previous
    assert at.button(key="worst_previous").disabled and not at.button(key="worst_next").disabled
    # a reload (the tab's address) keeps the strip and where the user stood in the list
    again = _app()
    again.query_params["review"] = at.query_params["review"]
    again.run()
    _no_exception(again)
    assert again.selectbox(key="case").value == ("demo", table["patient"].iloc[0]) and again.session_state["model_name"] == model
    assert any(c.value.startswith(f"Patient 1 of the {len(table)} of the test split that {model} orders worst")
               for c in again.caption)


def _wait_for_jobs() -> None:
    """Every job of this process's queue finished (a job thread still in torch when the interpreter exits aborts it:
    "terminate called without an active exception")."""
    from core.jobs import default_queue

    for owner in ("local", "anonymous"):
        for job in default_queue().jobs(owner):
            default_queue().wait(job.id, timeout=600)
