"""CT + EHR survival explorer: navigation, sidebar and the one-time demo build.

Run with ``streamlit run app.py``. Every page lives in ``pages/``; this file only
declares the navigation and the sidebar (model, device, horizon).
"""

from __future__ import annotations

import streamlit as st

from core.app import demo_install, paths
from core.models import FUSIONS
from pages import _shared as ui
from pages import _state as K

st.set_page_config(
    page_title="CT + EHR survival explorer",
    page_icon=":material/monitor_heart:",
    layout="wide",
    initial_sidebar_state="expanded",
)
ui.inject_style()
st.logo(str(paths.ASSETS / "logo.svg"), size="large")

# First start: build the demo cohort and one model per fusion strategy, once, on disk.
if not demo_install.demo_ready():
    st.title("Preparing the demo")
    st.write(
        "First start: generating the synthetic demo cohort (CT phantoms, MEDS timelines, outcomes) "
        "and installing one model per fusion strategy "
        f"({len(FUSIONS)} strategies; models that were not shipped in assets/demo_models are "
        "trained here). This happens once; later starts reuse it from disk."
    )
    bar = st.progress(0.0, text="starting")
    with ui.core_errors(stop=True):
        demo_install.ensure_demo(progress=lambda f, label: bar.progress(min(max(f, 0.0), 1.0), text=label))
    bar.empty()
    st.rerun()

pages = [
    st.Page("pages/case_review.py", title="Case review", icon=":material/radiology:", default=True),
    st.Page("pages/upload.py", title="Upload", icon=":material/upload_file:"),
    st.Page("pages/cohort_models.py", title="Cohort & models", icon=":material/monitoring:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
    st.Page("pages/about.py", title="About", icon=":material/info:"),
]
current = st.navigation(pages)
st.session_state[K.NAVIGATED] = True
ui.follow_deep_link()
ui.sidebar()
current.run()
