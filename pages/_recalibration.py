"""The Validate tab's recalibration: where a recalibrated copy goes, and what it changed (before / after)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core import figures as F
from core.app import demo_install, workspace
from core.horizons import horizon_label
from pages import _chrome as chrome
from pages._metric_views import NOT_AVAILABLE
from pages import _state as K

HELP = ("The model keeps its weights and its order of patients; its curves are recalibrated to your cohort's "
        "outcomes (three numbers fitted on your patients: the level of the risks, their spread between patients and "
        "their course over time), so that its absolute risks match your site. The copy is added to your models; the original is unchanged. Needs at least "
        "20 events.")


def spec(name: str, model_dir: Path, user: str, site: str) -> dict[str, str]:
    """Where the recalibrated copy of model ``name`` goes (the user's models folder) and how it is listed."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(model_dir).name).strip("-") or "model"
    base = st.session_state.get(K.TRAINED_COHORTS, {}).get(name) or str(demo_install.demo_paths().cohort)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return {"out": str(workspace.user_models_dir(user) / f"{slug}-recalibrated-{stamp}"), "base_cohort": base,
            "label": f"{name} recalibrated to {site} ({stamp[:8]})", "site": site}


def show(report: dict, listed: bool = True) -> None:
    """The recalibration's result: the copy's name, a and b, and calibration before and after (cross-fitted);
    ``listed``: the copy is still among the user's models (an earlier validation's copy may have been deleted)."""
    if "error" in report:
        st.warning(f"No recalibrated copy: {chrome.md(report['error'])}", icon=":material/warning:")
        return
    if listed:
        st.success(f"Saved **{report['label']}** to your models: pick it in the sidebar to score your patients with "
                   "risks recalibrated to this cohort.", icon=":material/check_circle:")
    else:
        st.info(f"A recalibrated copy was saved as **{report['label']}**; it is no longer among your models.",
                icon=":material/info:")
    def ci(key: str) -> str:
        v = report.get(f"{key}_ci")
        return f" (95% CI {v[0]:.2f} to {v[1]:.2f})" if v else ""

    st.markdown(f"**Recalibration** on {report['n']} patients, {report['events']} events: level a = "
                f"{report['a']:.3f}{ci('a')}, spread between patients b = {report['b']:.3f}{ci('b')}, course over time "
                f"c = {report['c']:.3f}{ci('c')} (log H' = a + c m(t) + b (log H - m(t)), H the cumulative hazard, m(t) "
                "its mean over your patients; b above 1: the model's risks were too close together).")
    before, after = report["before"], report["after"]
    rows = [{"horizon": horizon_label(float(h)), "mean predicted risk, before": cal["predicted"],
             "after": after["calibration"][h]["predicted"], "observed risk": cal["observed"],
             "calibration ICI, before": cal["ici"], "ICI after": after["calibration"][h]["ici"],
             "slope, before (1 ideal)": cal["slope"], "slope after": after["calibration"][h]["slope"]}
            for h, cal in before["calibration"].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", placeholder=NOT_AVAILABLE,
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in rows[0] if c != "horizon"})
    if before["ibs"] is not None and after["ibs"] is not None:
        st.markdown(f"Integrated Brier score **{before['ibs']:.3f}** before, **{after['ibs']:.3f}** after (lower is "
                    "better).")
    st.caption(f"After: {report['folds']}-fold cross-fitted (each fold recalibrated by a fit on the others), so the "
               "gain is not measured on the patients it was fitted on. Observed: 1 - Kaplan-Meier of all patients. "
               "The order of patients at each time is kept (the time-dependent AUC is the original's; the C-index, which ranks "
               "by the curve's restricted mean, can move a little)."
               + (f" {report['note']}." if report.get("note") else ""))
    c1, c2 = st.columns(2)
    c1.plotly_chart(F.calibration_figure(before["calibration"], "before"), width="stretch", key="recal_before",
                    config=chrome.PLOTLY_CONFIG)
    c2.plotly_chart(F.calibration_figure(after["calibration"], "after (cross-fitted)"), width="stretch",
                    key="recal_after", config=chrome.PLOTLY_CONFIG)
