"""Case review (landing page): CT viewer with saliency, survival, attention, strategies."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core import cohort as cohorts
from core import figures as F
from core import horizons
from core.app import viewer
from core.app.reference import risk_group_of
from core.explain import METHODS
from pages import _shared as ui
from pages import _state as K

ui.require_app_navigation()

METHOD_LABELS = {
    "saliency": "Saliency (gradient)",
    "integrated_gradients": "Integrated gradients",
    "gradcam": "Grad-CAM",
    "occlusion": "Occlusion",
    "smoothgrad": "SmoothGrad",
}

st.title("Case review")

# ----------------------------------------------------------------- case picker
cohort = ui.demo_cohort()
cases: dict[tuple[str, str], str] = {}  # (source, subject id) -> label
upload = ui.uploaded_case()
if upload is not None:
    cases[(ui.UPLOADED, cohorts.UPLOAD_SUBJECT)] = f"Uploaded case ({upload['label']})"
for split in ("test", "val", "train"):
    for sid in cohort.ids(split):
        cases[(ui.DEMO, sid)] = f"Demo {sid} ({split})"

top = st.columns([3, 2, 2])
ui.restore_viewer_settings()
if st.session_state.get(K.CASE) not in cases:
    st.session_state[K.CASE] = next(iter(cases))
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
attribution_map: np.ndarray | None = None
with left:
    st.subheader("CT viewer")
    if volume is None:
        st.info("No CT for this case.")
    else:
        from core.io.windows import WINDOWS

        n_slices = volume.shape[0]
        if st.session_state.get(K.SLICE_CASE) != (source, subject_id):
            st.session_state[K.AXIAL_SLICE] = viewer.default_slice(pred.slice_weights, n_slices)
            st.session_state[K.SLICE_CASE] = (source, subject_id)
        start = st.session_state.get(K.AXIAL_SLICE, n_slices // 2)
        st.session_state[K.AXIAL_SLICE] = min(max(int(start), 0), n_slices - 1)
        c1, c2 = st.columns([1, 1])
        window_names = list(WINDOWS)
        st.session_state.setdefault(K.WINDOW, "soft_tissue" if "soft_tissue" in WINDOWS else window_names[0])
        window_name = c1.selectbox("Window", window_names, key=K.WINDOW,
                                   format_func=lambda w: f"{WINDOWS[w].label} [{WINDOWS[w].low:g}, {WINDOWS[w].high:g}] HU")
        window = (WINDOWS[window_name].low, WINDOWS[window_name].high)
        st.session_state.setdefault(K.SHOW_SALIENCY, False)  # defaults set here, not in the widgets: values
        st.session_state.setdefault(K.OPACITY, 0.6)          # restored from another page are set via session state
        show = c2.toggle("Saliency overlay", key=K.SHOW_SALIENCY,
                         disabled="image" not in pred.modalities_used,
                         help="Captum attribution of the predicted risk at the sidebar horizon."
                         )
        c3, c4 = st.columns([1, 1])
        method = c3.selectbox("Method", METHODS, key=K.METHOD, format_func=METHOD_LABELS.get, disabled=not show)
        opacity = c4.slider("Opacity", 0.0, 1.0, step=0.05, key=K.OPACITY, disabled=not show)
        z = st.slider("Axial slice (inferior → superior)", 0, n_slices - 1, key=K.AXIAL_SLICE)
        ui.save_viewer_settings()
        if show:
            with st.spinner(f"Computing {METHOD_LABELS[method]}..."), ui.core_errors(stop=False):
                attribution_map = ui.case_attribution(model, source, subject_id, method, ui.horizon_days(), z)
        overlay = None if attribution_map is None else F.normalize_map(attribution_map)
        axial = F.slice_overlay(
            viewer.plane_slice(volume.hu, "axial", z),
            None if overlay is None else viewer.plane_slice(overlay, "axial", z),
            window=window, opacity=opacity, spacing_mm=viewer.plane_spacing(volume.spacing_mm, "axial"),
            normalize=False, title=f"axial {z + 1}/{n_slices}",
        )
        axial.update_layout(width=None, height=460)
        st.plotly_chart(axial, width="stretch", key="axial_fig", config={"displaylogo": False})
        r_idx = st.session_state.get(K.CORONAL_ROW, volume.shape[1] // 2)
        c_idx = st.session_state.get(K.SAGITTAL_COL, volume.shape[2] // 2)
        v1, v2 = st.columns(2)
        for col, plane, idx in ((v1, "coronal", r_idx), (v2, "sagittal", c_idx)):
            fig = F.slice_overlay(
                viewer.plane_slice(volume.hu, plane, idx),
                None if overlay is None else viewer.plane_slice(overlay, plane, idx),
                window=window, opacity=opacity, spacing_mm=viewer.plane_spacing(volume.spacing_mm, plane),
                normalize=False, title=plane,
            )
            # mark the axial slice position (superior at the top: row = n_slices - 1 - z)
            dz = viewer.plane_spacing(volume.spacing_mm, plane)[0]
            fig.add_hline(y=(n_slices - 1 - z) * dz, line={"color": "#00c8ff", "width": 1})
            fig.update_layout(width=None, height=300, showlegend=False)
            fig.update_traces(showscale=False)
            col.plotly_chart(fig, width="stretch", key=f"{plane}_fig", config={"displaylogo": False})
        with st.expander("Reformat positions"):
            st.slider("Coronal plane (anterior → posterior)", 0, volume.shape[1] - 1, volume.shape[1] // 2,
                      key=K.CORONAL_ROW)
            st.slider("Sagittal plane (patient right → left)", 0, volume.shape[2] - 1, volume.shape[2] // 2,
                      key=K.SAGITTAL_COL)
        if pred.slice_weights is not None and np.size(pred.slice_weights) == n_slices and np.max(pred.slice_weights) > 0:
            strip = F.slice_strip(pred.slice_weights, selected=z, title="Attention over slices")
            strip.update_layout(width=None, height=200)
            st.plotly_chart(strip, width="stretch", key="slice_strip")
        st.caption(
            f"{volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]} voxels, spacing "
            f"{' x '.join(f'{s:g}' for s in volume.spacing_mm)} mm. Displayed in radiological convention "
            "(patient right on the image left); reformats use the true voxel aspect."
        )

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
