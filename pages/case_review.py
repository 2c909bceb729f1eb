"""Case review (landing page): CT viewer with saliency, survival, attention, strategies."""

from __future__ import annotations

import streamlit as st

from core import figures as F
from core import horizons
from core.app.reference import risk_group_of
from pages import _shared as ui
from pages import _state as K
from pages import _viewer

ui.require_app_navigation()

st.title("Case review")

# ----------------------------------------------------------------- case picker
cohort = ui.demo_cohort()
cases: dict[tuple[str, str], str] = dict(ui.user_cases())  # (source, subject id) -> label: this user's uploads first
for split in ("test", "val", "train"):
    for sid in cohort.ids(split):
        cases[(ui.DEMO, sid)] = f"Demo {sid} ({split})"

top = st.columns([3, 2, 2])
ui.restore_viewer_settings()
if st.session_state.get(K.CASE) not in cases:
    st.session_state[K.CASE] = next((c for c in cases if c[0] == ui.DEMO), next(iter(cases)))  # a demo case first
source, subject_id = top[0].selectbox("Case", list(cases), key=K.CASE, format_func=cases.__getitem__,
                                      help="Demo patients are synthetic. Upload your own de-identified study on the Upload page.")
ui.save_viewer_settings()
ui.audit("open", "case", once=True, source=source, case=ui.case_number(source, subject_id))
model_name = ui.current_model_name()
with ui.core_errors():
    model = ui.current_model()
    volume = ui.case_volume(source, subject_id)
    inputs = ui.case_inputs(model, source, subject_id)
    pred = ui.case_prediction(model, source, subject_id)
n_events = 0 if inputs.events is None else len(inputs.events)
top[1].metric("Fusion strategy", model_name)
top[2].metric("Modalities used", " + ".join(pred.modalities_used) or "none")

# ---------------------------------------------------- missing modality notice
missing: list[str] = []
uses_ehr = any(m.startswith("ehr") for m in pred.modalities_used)
if not getattr(model.net, "has_image", True):
    missing.append(f"{model_name} **does not use the CT**")
elif volume is None or "image" not in pred.modalities_used:
    missing.append("**no CT study** for this case: the image side of the model is masked out")
if not getattr(model.net, "has_ehr", True):
    missing.append(f"{model_name} **does not use the EHR**")
elif not uses_ehr:
    missing.append("**no EHR data** (no timeline events before the index date, no features): the EHR side is masked out")
if missing:
    st.warning("Missing modality: " + "; ".join(missing) + ". The prediction below uses "
               f"{', '.join(pred.modalities_used) or 'no modality'} only.", icon=":material/warning:")

if "image" in pred.modalities_used:
    coverage = ui.case_coverage_warning(source, subject_id)
    if coverage:
        st.warning(coverage, icon=":material/warning:")

left, right = st.columns([1.15, 1], gap="large")

# ------------------------------------------------------------------ CT viewer
with left:
    st.subheader("CT viewer")
    if volume is None:
        st.info("No CT for this case.")
    else:
        _viewer.show(volume, model, inputs, pred, source, subject_id)

# ------------------------------------------------------------------- survival
with right:
    st.subheader("Survival")
    m = st.columns(3)
    for col, h in zip(m, horizons.HORIZONS):
        risk = pred.risk_at.get(h)
        col.metric(f"Risk at {horizons.HORIZON_LABELS[h]}", "n/a" if risk is None else f"{100 * risk:.1f} %",
                   help="1 - S(t) at the horizon, from the model's survival curve.")
    with ui.core_errors(stop=False):
        ref = ui.reference_curves(model_name)
        group = risk_group_of(pred, ref["groups"])
        bound = ui.conformal_bound(model_name, pred)
        level = f"{100 * (1 - ui.CONFORMAL_ALPHA):.0f} %"
        fig = F.survival_figure(
            pred.times, pred.survival, pred.lower, pred.upper,
            cohort_km=ref["cohort_km"],
            group_km=(group["t"], group["s"], group["lower"], group["upper"]),
            title="", label=f"this case (band: {model.uncertainty})",
            time_bound=None if bound is None else (bound[0], f"{level} conformal bound: T >= {bound[0]:.0f} d"),
        )
        fig.update_layout(width=None, height=420)
        st.plotly_chart(fig, width="stretch", key="survival_fig")
        st.caption(
            f"Grey: Kaplan-Meier of {ref['n']} demo patients (the held-out test split). Green: Kaplan-Meier of the "
            f"**{group['label']}-risk** group this case falls into ({group['n']} patients, {group['events']} events) "
            f"under {model_name}."
            + ("" if bound is None else
               f" Orange: the conformal lower bound on this patient's event time: with probability at least {level}, "
               f"the event comes no earlier than day {bound[0]:.0f} (bound capped at {bound[1]:.0f} days; Candes-Lei-Ren "
               "conformalized survival analysis calibrated on the demo's validation patients; it assumes this patient is "
               "exchangeable with them and censoring independent of the event given the inputs).")
        )

    st.subheader("Same case, every fusion strategy")
    with st.spinner("Predicting under every strategy..."), ui.core_errors(stop=False):
        curves = {}
        for name in ui.available_models():
            other = ui.model_by_name(name)
            p = ui.case_prediction(other, source, subject_id)
            curves[name] = (p.times, p.survival, p.lower, p.upper)
        cmp_fig = F.survival_compare_figure(curves, cohort_km=ref["cohort_km"])
        cmp_fig.update_layout(width=None, height=440)
        st.plotly_chart(cmp_fig, width="stretch", key="compare_fig")

# ------------------------------------------------------ timeline and attention
st.subheader("Timeline and attention")
t1, t2 = st.columns([1.2, 1], gap="large")
with t1:
    if n_events == 0:
        st.info("No timeline events before the index date for this case.")
    else:
        with ui.core_errors(stop=False):
            scores = ui.case_event_scores(model, source, subject_id, ui.horizon_days())
            tl = F.timeline_figure(inputs.events, scores, ui.case_index_time(source, subject_id), top_k=8,
                                   title="Events before the scan (top attributed outlined)")
            tl.update_layout(width=None)
            st.plotly_chart(tl, width="stretch", key="timeline_fig")
with t2:
    maps = F.attention_maps(pred.attention, inputs.events)
    if not maps:
        st.info(f"{model_name} has no cross-modal attention to show (only the cross- and co-attention "
                "strategies attend between slices and events).")
    for i, item in enumerate(maps):
        with ui.core_errors(stop=False):
            hm = F.attention_heatmap(item["weights"], item["rows"], item["cols"], title=item["title"],
                                     x_title=item["x_title"])
            hm.update_layout(width=None)
            st.plotly_chart(hm, width="stretch", key=f"attention_fig_{i}")
