"""Case review's first paint, without a browser: the server's warm-up, the preload script and the CT viewer's
component folder.

The browser side (the order in which the chunks, the viewer and the charts arrive) is
``tests/test_case_review_browser.py::test_first_paint_viewer_before_plotly_and_the_charts_below``.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pages import _preload
from pages import _viewer as V


def test_every_preloaded_chunk_is_in_the_installed_streamlit() -> None:
    first, later = _preload.chunk_files(_preload.FIRST), _preload.chunk_files(_preload.LATER)
    assert [f.split(".")[0] for f in first] == list(_preload.FIRST)
    assert [f.split(".")[0] for f in later] == ["PlotlyChart"]
    folder = Path(V.st.__file__).parent / "static" / "static" / "js"
    assert all((folder / f).is_file() for f in first + later)
    assert _preload.chunk_files(("NoSuchChunk",)) == ()  # another Streamlit build: left to the front end


def test_preload_script_imports_the_first_chunks_at_once_and_plotly_after_the_viewer() -> None:
    script = _preload.preload_script(("ComponentInstance.abc.js", "Metric.def.js"), ("PlotlyChart.xyz.js",))
    # hidden, imported relative to the front end's own entry module, once per tab
    assert f".st-key-{_preload.CONTAINER_KEY} {{ display: none; }}" in script
    assert "new URL(f, entry.src)" in script and "window.__ctehrPreload" in script
    first = re.search(r"window.__ctehrPreload = load\((\[[^\]]*\])\)", script)
    assert first is not None and first.group(1) == '["ComponentInstance.abc.js", "Metric.def.js"]'
    later = re.search(r"const later = (\[[^\]]*\]);", script)
    assert later is not None and later.group(1) == '["PlotlyChart.xyz.js"]'
    # the later list waits for the viewer's CT, or LATER_AFTER_S at most
    assert "ctehrViewer.loaded" in script and f"> {_preload.LATER_AFTER_S * 1000}" in script


def test_component_folder_holds_niivue_gzipped_and_is_not_rebuilt_per_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTEHR_DATA_DIR", str(tmp_path))
    V._component_dir.cache_clear()
    folder = V.component_dir()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*V.COMPONENT_FILES, V.NIIVUE_FILE])
    module = gzip.decompress((folder / V.NIIVUE_FILE).read_bytes()).decode("utf-8")
    assert module == V.niivue_bundle() and re.search(r"export\{\w+ as default,\w+ as Niivue\};\n$", module)

    def refuse() -> str:
        raise AssertionError("the NiiVue bundle was read again although nothing changed")

    monkeypatch.setattr(V, "niivue_bundle", refuse)
    assert V.component_dir() == folder  # the next run: nothing read or hashed again
    (folder / "index.html").unlink()  # removed while the server runs: built again
    monkeypatch.undo()
    monkeypatch.setenv("CTEHR_DATA_DIR", str(tmp_path))
    assert (V.component_dir() / "index.html").is_file()
    V._component_dir.cache_clear()


def test_replicas_started_together_each_build_the_component_folder(tmp_path: Path) -> None:
    """Two replicas started at once built it in one shared ``.partial`` folder and deleted each other's files
    ("warm-up stopped: [Errno 2] No such file or directory: '.../viewer-....partial/niivue.js.gz'")."""
    import subprocess
    import sys

    code = ("import sys; from pages import _viewer as V; d = V._component_dir(sys.argv[1], ()); "
            "assert (d / 'index.html').is_file() and (d / V.NIIVUE_FILE).is_file(); print(d)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-800:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(outs[0][0].strip()).name]  # no part left


ROOT = Path(__file__).resolve().parents[1]


def test_streamlit_run_serves_app_py_as_an_asgi_app_whose_script_is_app_py() -> None:
    from streamlit.web.server.app_discovery import discover_asgi_app

    from pages import _server

    found = discover_asgi_app(ROOT / "app.py")
    assert (found.is_asgi_app, found.app_name, found.import_string) == (True, "app", "app:app")
    assert _server.SCRIPT == ROOT / "app.py"


WARM_UP_PROBE = """
import json, sys
from pages import _server
waited = _server.wait_until_warm(timeout_s=0.01)  # never started: a script run goes on at once
before = set(sys.modules)
_server.start_warm_up()
ok = _server.wait_until_warm(timeout_s=120)
from pages import _viewer
print(json.dumps({"waited": waited, "ok": ok, "new": sorted(set(sys.modules) - before), "took": _server.took_s,
                  "viewer_dirs": _viewer._component_dir.cache_info().currsize}))
"""


def test_warm_up_imports_the_first_page_but_no_model_code_and_script_runs_never_wait_without_it(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", WARM_UP_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={"CTEHR_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["waited"] is True and res["ok"] is True
    new = set(res["new"])
    assert {"pandas", "pages._model_views", "pages._viewer", "pages._review", "core.cohort", "pyarrow.dataset"} <= new
    assert not new & {"torch", "nibabel", "pydicom", "captum", "lifelines"}  # later interactions load those
    assert 0 < res["took"]["imports"] <= res["took"]["total"]
    assert res["viewer_dirs"] == 1 and list(tmp_path.rglob("index.html"))  # the viewer's component folder is written
