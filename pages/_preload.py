"""Warm the browser while the server is still busy: start the front-end code Case review's first screen needs.

Streamlit's front end loads the code of an element type the first time an element of
that type arrives, each chunk one more round trip (and its imports another) after
the element itself. :func:`warm_browser` sends, at the start of every script run and
before app.py's heavier imports, a hidden ``st.html`` whose script imports those
chunks at once by the very URL the front end uses (resolved against the front end's
own entry script), so the browser's module map holds them when the elements arrive:
the custom-component frame of the CT viewer, the Vega-Lite chart of the survival
curve and the first screen's widgets.

Plotly's chunk (4.7 MB, about a second of the browser's one main thread to evaluate
on 2 cores) is needed only by the charts below the viewer, which wait for the viewer
(``pages/_viewer.below_fold_waits``): it is imported once the viewer has loaded its
CT (or after ``LATER_AFTER_S`` at the latest), so it never holds the viewer back.

Chunk file names are read from the installed Streamlit package; a name not found
(another Streamlit build) is left to the front end. This module imports only the
standard library and Streamlit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import streamlit as st

# imported at once: the CT viewer's component frame, the survival chart, the first screen's widgets
FIRST = ("ComponentInstance", "ArrowVegaLiteChart", "Metric", "Selectbox", "Slider", "Checkbox", "Button")
# imported once the CT viewer holds its scan: the charts below it
LATER = ("PlotlyChart",)
LATER_AFTER_S = 15  # ... or this long after the page opened, whichever comes first
CONTAINER_KEY = "ctehr_preload"  # the element's own style hides this container


@functools.lru_cache(maxsize=4)
def chunk_files(stems: tuple[str, ...]) -> tuple[str, ...]:
    """File names of the chunks ``stems`` in the installed Streamlit's front end (``PlotlyChart.<hash>.js``, ...)."""
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    found = []
    for stem in stems:
        matches = sorted(p.name for p in folder.glob(f"{stem}.*.js"))
        if len(matches) == 1:  # ambiguous or absent: leave it to the front end
            found.append(matches[0])
    return tuple(found)


def preload_script(first: tuple[str, ...], later: tuple[str, ...]) -> str:
    """The script: import ``first`` now and ``later`` once the CT viewer has loaded, relative to the entry module."""
    return (
        f"<style>.st-key-{CONTAINER_KEY} {{ display: none; }}</style>"
        "<script>(() => {"
        "const entry = document.querySelector('script[type=\"module\"][src*=\"/static/js/index.\"]');"
        "if (!entry || window.__ctehrPreload) return;"
        "const load = (files) => files.map((f) => import(new URL(f, entry.src).href)"
        ".catch((e) => console.warn('preload of ' + f + ' failed; the page loads it when needed', e)));"
        f"window.__ctehrPreload = load({json.dumps(list(first))});"
        f"const later = {json.dumps(list(later))}; const started = performance.now();"
        "const viewerLoaded = () => Array.from(document.querySelectorAll('iframe')).some((fr) => {"
        "try { return (fr.src || '').includes('ctehr_ct_viewer') && fr.contentWindow.ctehrViewer.loaded; }"
        " catch (e) { return false; } });"
        "const poll = setInterval(() => {"
        f"if (viewerLoaded() || performance.now() - started > {LATER_AFTER_S * 1000}) {{"
        " clearInterval(poll); load(later); } }, 250);"
        "})();</script>"
    )


def warm_browser() -> None:
    """Send the preload script (a hidden element; the script runs once per browser tab)."""
    first, later = chunk_files(FIRST), chunk_files(LATER)
    if first or later:
        with st.container(key=CONTAINER_KEY):
            st.html(preload_script(first, later), unsafe_allow_javascript=True)
