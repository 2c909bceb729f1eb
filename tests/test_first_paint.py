"""Case review's first paint, without a browser: the preload script and the CT viewer's component folder.

The browser side (the order in which the chunks, the viewer and the charts arrive) is
``tests/test_case_review_browser.py::test_first_paint_viewer_before_plotly_and_the_charts_below``.
"""

from __future__ import annotations

import gzip
import re
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
