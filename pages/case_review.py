"""Case review (landing page): CT viewer with saliency, survival, attention, strategies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core import figures as F
from core import horizons
from core.explain import methods_for
from pages import _chrome as chrome
from pages import _cohort_cases, _jobs, _viewer
from pages import _model_views as views
from pages import _reference as refs
from pages import _review as review
from pages import _session as session
from pages import _state as K
from pages import _whose
from pages import _worst_patients

chrome.require_app_navigation()

st.title("Case review", anchor=False)

# ----------------------------------------------------------------- case picker
cohort = views.demo_cohort()
chrome.restore_viewer_settings()
cases: dict[tuple[str, str], str] = dict(views.user_cases())  # (source, subject id) -> label: this user's uploads first
# then the patients of the user's own cohorts (test split first; the case under review too when it lies past the list)
cases.update(_cohort_cases.picker_entries(st.session_state.get(K.CASE)))
for split in ("test", "val", "train"):
    for sid in cohort.ids(split):
        cases[(views.DEMO, sid)] = f"Demo {sid} ({split})"

top = st.container(key="lead_top").columns([3, 2, 2])  # on a narrow page: the case alone, then the rest (assets/style.css)
if st.session_state.get(K.CASE) not in cases:
    gone = st.session_state.get(K.CASE)  # deleted meanwhile (another tab), or named by a reloaded or bookmarked address
    st.session_state[K.CASE] = next((c for c in cases if c[0] == views.DEMO), next(iter(cases)))  # a demo case first
    if gone is not None:  # said, not switched in silence
        st.toast(chrome.md(f"The case under review is no longer among your cases (deleted): now showing "
                           f"{cases[st.session_state[K.CASE]]}."), icon=":material/info:")
source, subject_id = top[0].selectbox("Case", list(cases), key=K.CASE, format_func=cases.__getitem__,
                                      help="Demo patients are synthetic. Upload your own de-identified study on the Upload page. "
                                           "The patients of your cohorts (those your models were trained on, and those "
                                           f"built from MEDS) follow your uploads, test split first, {_cohort_cases.MAX_LISTED:,} "
                                           "of each cohort in this list; the box below it opens the others by id.")
_cohort_cases.find_box(top[0])  # only where a cohort of the user has more patients than the list holds
chrome.save_viewer_settings()
model_name = views.current_model_name()
_worst_patients.strip(top[0], (source, subject_id), model_name)  # stepping through the list Cohort & models opened
with chrome.core_errors():
    # drawn from the prediction cache when the case was seen before (no model loaded, no torch imported);
    # the model and its inputs load on first use (the overlay, a sanity check)
    model = views.current_lazy_model()
    session.audit("open", "case", once=True, source=source.split(":")[0], case=views.case_number(source, subject_id),
                  patient=_cohort_cases.audited_patient(source, subject_id),
                  **_whose.audit_details(model_name, model.config.fusion))
    volume = views.case_volume(source, subject_id)
    view = views.case_view(model, source, subject_id)
    pred, events = view.prediction, view.events
    inputs = views.LazyInputs(model, source, subject_id)
n_events = 0 if events is None else len(events)
top[1].metric("Fusion strategy", model.config.fusion)
if model_name != model.config.fusion:  # a model of the user's, a recalibrated copy: its whole label, wrapped, not cut
    top[1].caption(chrome.md(model_name))
top[2].markdown(f"**Modalities used**  \n{' + '.join(pred.modalities_used) or 'none'}")  # wraps, never cut off

# ------------------------------------------- warnings (the report PDF carries the same list)
# shown at once; the strategies' disagreement (the list's last item) is added to the same box once every
# strategy has scored the case further down, so the viewer does not wait for the other models
warning_box = st.container()
with warning_box:
    review.show_warnings(review.case_warnings(model_name, model, source, subject_id))
unscored = review.CW.cannot_score_reason(model_name, *views.model_reads(model), pred.modalities_used,
                                         views.withholds_ct(model, source, subject_id))
scored = unscored is None
# the CT controls below come and go with the model (a model that withholds the CT, one of another phase); drawn in a
# container that is always there, so the viewer after them keeps its place in the page, and with it its frame and the
# CT it holds (a new frame would take the whole CT again: 80 MB at full resolution)
with st.container():
    if views.model_reads(model)[0] and views.image_read(model, source, subject_id).withheld:
        # the CT is far outside the model's training anatomy or scale: withheld unless the user asks to see it read anyway
        anyway = st.toggle("Read this CT anyway (out of distribution: not reliable)",
                           value=views.read_ood(source, subject_id), key=f"read_ood_{source}_{subject_id}",
                           help="Every strategy then reads the CT although it shows other anatomy, or the body at another "
                                "scale, than its training studies; the warnings stay. For research on what the model does with such a scan, "
                                "never for a patient.")
        if anyway != views.read_ood(source, subject_id):
            views.set_read_ood(source, subject_id, anyway)
            session.audit("open", "case", source=source.split(":")[0], case=views.case_number(source, subject_id),
                          ct=("read_anyway" if anyway else "withheld"), patient=_cohort_cases.audited_patient(source, subject_id),
                          **_whose.audit_details(model_name, model.config.fusion))
            st.rerun()

    like = views.image_read(model, source, subject_id).like_training if views.model_reads(model)[0] else None
    if like and source == views.UPLOADED and volume is not None and like != volume.meta.get("series_key"):
        # a multi-phase study saved in the phase the model was not trained on: read its other phase, in one click
        other = next((s for s in volume.series if s.key == like), None)
        label = f"Read the series acquired like {model_name}'s training studies ({other.n_instances if other else '?'} images)"
        if st.button(label, key=f"like_training_{subject_id}", icon=":material/swap_horiz:",
                     help=f"Series {chrome.md(like)} of this study. The case is then read in it by every model (changed on the "
                          "case, not only here); the Upload page's series list shows the study's series."):
            with chrome.core_errors(stop=False, what="Series not changed: "):
                from pages import _cases

                info = _cases.read_series(subject_id, like)
                session.audit("open", "case", source=source.split(":")[0], case=info.number, series="like_training")
                st.rerun()

left, right = st.container(key="stack_viewer").columns([1.15, 1], gap="large")

# ------------------------------------------------------------------ CT viewer
# sent first: the browser's longest chain (the component frame, NiiVue, the CT) starts as early as it can
with left:
    st.subheader("CT viewer", anchor=False)
    if volume is None:
        st.info("No CT for this case.")
    else:
        _viewer.show(volume, model, inputs, pred, source, subject_id)

# ------------------------------------------------------------------- survival
# after the viewer, so the browser starts NiiVue first; a Vega-Lite chart (its code already loading, pages/_preload),
# so it needs none of plotly's code, which waits until the viewer holds its CT
with right:
    st.subheader("Survival", anchor=False)
    if not scored:
        st.info(f"No curve: {unscored}. Pick a strategy that reads what this case has in the sidebar.",
                icon=":material/block:")
    else:
        m = st.columns(3)
        band = horizons.risk_band_at(pred.times, pred.lower, pred.upper)
        for col, h in zip(m, horizons.HORIZONS):
            past = horizons.past_grid_note(pred.times, h)
            risk = None if past else pred.risk_at.get(h)
            col.metric(f"{horizons.horizon_adjective(h)} risk", "n/a" if risk is None else f"{100 * risk:.1f} %",
                       help="1 - S(t) at the horizon, from the model's survival curve; below it, the same risk read "
                            f"off the edges of the curve's band ({model.uncertainty}).")
            if past:
                col.caption(past[0].upper() + past[1:] + ".")
            elif risk is not None:
                col.caption(f"{model.config.band_name}: {100 * band[h][0]:.1f}-{100 * band[h][1]:.1f} %")
    ref = None
    with chrome.core_errors(stop=False):
        ref = refs.reference_curves(model_name)
        own_ref = ref.get("source") == "own"
        if scored:
            group = refs.case_risk_group(model, source, subject_id, ref["groups"])
            bound = refs.case_conformal_bound(model, source, subject_id)
            level = f"{100 * (1 - refs.CONFORMAL_ALPHA):.0f} %"
            seen = review.observed_outcome(source, subject_id)
            shown = seen is not None and st.toggle(
                "Mark the observed outcome", key=K.SHOW_OUTCOME,
                help="This patient's outcome as its cohort records it (a retrospective review of a model's patients): "
                     "where it falls on the predicted curve. Off, the case is read without it.")
            chart = F.survival_chart(
                pred.times, pred.survival, pred.lower, pred.upper,
                cohort_km=ref["cohort_km"],
                group_km=(group["t"], group["s"], group["lower"], group["upper"]),
                label=f"this case (band: {model.config.band_name})",
                time_bound=None if bound is None else (bound[0], f"{level} conformal bound: T >= {bound[0]:.0f} d"),
                observed=seen if shown else None,
            )
            st.vega_lite_chart(chart, width="stretch", key="survival_fig")
            st.caption(
                f"Blue: this case; its band is the {model.uncertainty}. Grey: Kaplan-Meier of {ref['n']} "
                + ("patients of the cohort this model was trained on (its held-out test split). " if own_ref else
                   "demo patients (the held-out test split). ")
                + "Green: Kaplan-Meier of the "
                f"**{group['label']}-risk** group this case falls into ({group['n']} patients, {group['events']} events) "
                f"under {model_name}."
                + ("" if not (site := model.config.extra.get("recalibration")) else
                   f" This model's risks are recalibrated to {site['cohort']} ({site['n']} patients, {site['events']} "
                   "events); the grey and green curves are of "
                   + ("the cohort it was trained on" if own_ref else "the demo's patients")
                   + ", another site, and need not match its curve.")
                + ("" if bound is None else
                   f" Orange: the conformal lower bound on the event time, day {bound[0]:.0f} for this patient (capped at "
                   f"{bound[1]:.0f} days): of patients like the validation patients, at least {level} have their event no "
                   "earlier than their bound. It holds over such patients on average, not as this patient's own "
                   "probability (it can hold less often among the highest-risk ones). Candes-Lei-Ren "
                   "conformalized survival analysis calibrated on the "
                   + ("validation patients of the cohort this model was trained on" if own_ref else
                      "demo's validation patients") + "; it assumes this patient is "
                   "exchangeable with them and censoring independent of the event given the inputs).")
                + ("" if not shown or seen is None else
                   " Red: this patient's observed outcome in its cohort, "
                   + (f"the event at day {seen[0]:,.0f}." if seen[1] else
                      f"followed event-free to day {seen[0]:,.0f} (censored)."))
            )

# charts and tables below the viewer wait for it on a session's first view (the browser starts the viewer first)
charts_wait = _viewer.below_fold_waits(volume)

# ------------------------------------------- attribution methods: caveats and sanity (beside the method picker)
with left:
    if volume is not None and "image" in pred.modalities_used:
        method = chrome.method_setting(model)
        sanity = review.method_sanity(model)
        result = sanity.get(method)
        verdict = "not checked on this model" if result is None else result.label()
        st.markdown(f"**{_viewer.METHOD_LABELS.get(method, method)}**: {review.CW.METHOD_CAVEATS[method]}  \n"
                    f"Sanity: {verdict}.")
        if (past := horizons.past_grid_note(pred.times, chrome.horizon_days())):
            st.warning(f"Horizon for explanations: {past}; the maps attribute the risk at day "
                       f"{float(pred.times[-1]):.0f}, its last time. Pick a horizon within the curve.",
                       icon=":material/schedule:")
        with st.expander("What each attribution method can and cannot show"):
            if charts_wait:
                st.caption("The table appears once the CT viewer has loaded the scan.")
            else:
                st.table(pd.DataFrame([
                    {"method": _viewer.METHOD_LABELS.get(m, m), "what it can and cannot show": review.CW.METHOD_CAVEATS[m],
                     "model-randomisation check": ("not checked on this model" if sanity.get(m) is None
                                                   else ("passes" if sanity[m].passed else "FAILS")
                                                   + f" (Spearman {sanity[m].final_spearman:.2f}, {sanity[m].source})")}
                    for m in methods_for(model)]).set_index("method"))
            st.caption("Model-randomisation check (Adebayo et al. 2018): every layer is re-initialised from the head "
                       "backwards; a map that still correlates with the trained model's map (Spearman >= "
                       f"{review.CW.RANDOMIZATION_THRESHOLD:g}) does not depend on what the model learned.")
            if result is None:
                job_key = f"sanity:{model.model_dir}:{method}"
                job = _jobs.find(job_key)
                if job is not None and job.active:
                    _jobs.show(job)
                elif job is not None and job.state in ("failed", "cancelled"):
                    _jobs.outcome(job)
                if (job is None or not job.active) and st.button(f"Run the check for {_viewer.METHOD_LABELS.get(method, method)} on this case", key="run_sanity"):
                    _jobs.submit(f"Sanity check of {_viewer.METHOD_LABELS.get(method, method)}, {model_name}",
                                 review.run_sanity,
                                 views.loaded(model), views.case_inputs(model, source, subject_id), method,
                                 float(chrome.horizon_days()), key=job_key)
                    st.rerun()

# ------------------------------------------- every strategy (right-hand column, below the curve)
with right:
    st.subheader("Same case, every fusion strategy", anchor=False)
    every = review.Strategies()
    with st.spinner("Predicting under every strategy..."), chrome.core_errors(stop=False):
        every = review.strategies(source, subject_id, model_name)
    if every.flag:
        with warning_box:
            review.show_warnings([review.CW.CaseWarning("disagreement", every.flag)])
    with chrome.core_errors(stop=False):
        if charts_wait:
            _viewer.waiting_note("The comparison chart and table", "strategies")
        elif every.curves:
            cmp_fig = F.survival_compare_figure(every.curves, cohort_km=None if ref is None else ref["cohort_km"],
                                                current=model_name if model_name in every.curves else None)
            cmp_fig.update_layout(width=None, height=420 + 22 * len(every.curves))  # room for the legend below
            st.plotly_chart(cmp_fig, width="stretch", key="compare_fig", config=chrome.PLOTLY_CONFIG)
        if every.skipped and not charts_wait:
            st.caption("Not drawn (cannot score this case): " + "; ".join(every.skipped.values()) + ".")
        if every.other_cohorts and not charts_wait:
            n = every.other_cohorts
            st.caption(f"Only the models trained on the same cohort as {model_name} are compared; {n} model"
                       f"{'s' if n > 1 else ''} trained on another cohort {'are' if n > 1 else 'is'} left out (pick "
                       f"{'them' if n > 1 else 'it'} in the sidebar to see this case under {'them' if n > 1 else 'it'}).")
        if len(every.table) and not charts_wait:
            st.table(review.strategy_table_view(every.table.reset_index(drop=True)))
            st.caption(f"Risk 1 - S(t) of each strategy that can score the case (\"past grid\" beyond a model's time "
                       f"grid); the model in use, {model_name}, in bold. Strategies are flagged as disagreeing when "
                       f"their 5-year risks lie more than {100 * review.CW.DISAGREEMENT_THRESHOLD:g} percentage points "
                       "apart" + (": flagged, see the warning above." if every.flag else ": not flagged for this case."))

# ------------------------------------------------------ timeline and attention
st.subheader("Timeline and attention", anchor=False)
t1, t2 = st.container(key="stack_timeline").columns([1.2, 1], gap="large")
with t1:
    if n_events == 0:
        st.info("No timeline events before the index date for this case.")
    elif charts_wait:
        _viewer.waiting_note("The timeline and the attention maps", "timeline")
    else:
        with chrome.core_errors(stop=False):
            scores = views.case_event_scores(model, source, subject_id, chrome.horizon_days())
            unread = scores is not None and not np.any(scores)  # zero attention everywhere: no event was read
            if unread:
                st.info(f"{model_name} reads none of these {n_events} events (their codes are not among those it was "
                        "trained on, see the warnings above), so no attention over them is shown.")
            tl = F.timeline_figure(events, scores, views.case_index_time(source, subject_id), top_k=8,
                                   title="Events before the scan" + ("" if unread else " (most attended numbered)"),
                                   kind="attention" if scores is not None else "attribution")
            tl.update_layout(width=None)
            st.plotly_chart(tl, width="stretch", key="timeline_fig", config=chrome.PLOTLY_CONFIG)
            top_rows = tl.layout.meta["top"] if tl.layout.meta else []
            if top_rows:
                top_table = pd.DataFrame(top_rows).set_index("rank")
                top_table["value"] = ["" if v is None or pd.isna(v) else f"{v:g}" for v in top_table["value"]]
                top_table["day"] = [f"{v:.0f}" for v in top_table["day"]]
                top_table[top_table.columns[-1]] = [f"{v:.3f}" for v in top_table[top_table.columns[-1]]]
                top_table["code"] = [chrome.md(v) for v in top_table["code"]]  # a table's cells are markdown
                st.table(top_table)
            st.caption(("Events of the case, by code family." if unread else
                        "Attention of the fusion over the case's events (weights >= 0, not signed attributions: "
                        "what the model looked at, not whether it raised the risk).")
                       + (f" {tl.layout.meta['outside']} event(s) far before the case's active window are left of the "
                          "axis (counted at its left edge)." if tl.layout.meta and tl.layout.meta["outside"] else ""))
    case_values = (views.uploaded_case(subject_id) or {}).get("features") if source == views.UPLOADED else None
    if case_values:  # an uploaded case's clinical values, as the model reads them
        reads = set(model.config.ehr.curated_features)
        with st.expander(f"Clinical values of this case ({len(case_values)}; {len(reads & set(case_values))} read by "
                         f"{model_name})"):
            st.table(pd.DataFrame({"value": [f"{v:g}" for v in case_values.values()],
                                   f"read by {model_name}": ["yes" if k in reads else "no" for k in case_values]},
                                  index=pd.Index([chrome.md(k) for k in case_values], name="clinical value")))
            st.caption("Entered or taken from a features table on the Upload page, where they can be changed.")
with t2:
    read_any = pred.event_weights is None or bool(np.any(pred.event_weights))
    read_ct = "image" in pred.modalities_used  # a withheld CT: its slices' side of the attention is masked, not read
    maps = F.attention_maps(pred.attention, events) if n_events and read_any and read_ct else []
    if not read_ct and n_events:
        st.info(f"No attention between slices and events to show: {model_name} did not read this case's CT.")
    elif not read_any and n_events:
        st.info(f"No attention between slices and events to show: {model_name} reads none of this case's events.")
    elif n_events == 0:
        st.info("No attention over events to show: the case has no timeline events.")
    elif not maps:
        st.info(f"{model_name} has no cross-modal attention to show (only the cross- and co-attention "
                "strategies attend between slices and events).")
    for i, item in enumerate([] if charts_wait else maps):
        with chrome.core_errors(stop=False):
            hm = F.attention_heatmap(item["weights"], item["rows"], item["cols"], title=item["title"],
                                     x_title=item["x_title"])
            hm.update_layout(width=None)
            st.plotly_chart(hm, width="stretch", key=f"attention_fig_{i}", config=chrome.PLOTLY_CONFIG)
