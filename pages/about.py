"""About: the selected model's card, intended use, data licences."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.app import demo_install, paths
from core.report import card_sections, metric_rows, readable_line
from pages import _chrome as chrome
from pages import _model_views as views

chrome.require_app_navigation()

ASSETS = paths.ROOT / "assets"


def show_card(text: str) -> None:
    """The model card with its metrics as a table (horizon values written out), not as raw dictionaries."""
    for heading, body in card_sections(text):
        if heading:
            st.markdown(f"#### {heading}")
        rows = metric_rows(body) if heading.lower().startswith("metrics") else []
        if rows:
            st.table(pd.DataFrame(rows).set_index("metric"))
        elif body:  # the card's own title ("# Model card: ...") one level under the page's, as the other tabs' are
            st.markdown("\n".join("### " + line[2:] if line.startswith("# ") else readable_line(line)
                                   for line in body.splitlines()))


st.title("About", anchor=False)
st.error(
    "**Research use only — not a medical device.** Do not use for diagnosis, treatment or any "
    "decision about an individual patient.",
    icon=":material/gpp_maybe:",
)

tab_card, tab_use, tab_lic = st.tabs(["Model card", "Intended use", "Data licences"])

with tab_card:
    name = views.current_model_name()
    path = views.available_models().get(name)
    if path is None:
        st.info("No model is available yet.")
    else:
        card = path / "MODEL_CARD.md"
        st.caption(f"Selected model: **{name}**")
        if card.exists():
            show_card(card.read_text(encoding="utf-8"))
        else:
            st.warning(f"The model folder of {name!r} has no MODEL_CARD.md.")
    st.divider()
    st.markdown((ASSETS / "model_card_app.md").read_text(encoding="utf-8"))
    info = demo_install.demo_build_info()
    if info:
        trained = info.get("trained_here") or []
        models = (f"{len(trained)} strategies trained here for up to {info['epochs']} epochs each"
                  if trained and info.get("epochs") else
                  "the models shipped with the app (trained with early stopping: see each model card)")
        st.caption(f"Demo built in this installation: {info['n']} synthetic patients (generator seed {info['seed']}), "
                   f"{models}; built in {info['build_seconds']} s.")

with tab_use:
    st.markdown((ASSETS / "intended_use.md").read_text(encoding="utf-8"))

with tab_lic:
    st.markdown((ASSETS / "licences.md").read_text(encoding="utf-8"))
