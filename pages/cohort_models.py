"""Cohort & models: discrimination, calibration, risk groups, strategy comparison, training."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from core import figures as F
from core import horizons, runtime
from core.app import demo_install, workspace
from core.evaluate.metrics import oe_text
from core.models import BODY_CROP_HELP, FUSIONS
from pages import _chrome as chrome
from pages import _cohort_cases
from pages import _cohort_preview
from pages import _jobs
from pages import _meds
from pages import _metric_views as metric_views
from pages._metric_views import ci_text
from pages import _recalibration
from pages import _model_views as views
from pages import _reference as refs
from pages import _session as session
from pages import _state as K
from pages import _training as training
from pages import _validations
from pages import _whose
from pages import _worst_patients

chrome.require_app_navigation()

st.title("Cohort & models", anchor=False)


def saved_metrics_path(name: str, path: Path) -> Path:
    """Where a model's test-split evaluation is kept on disk (beside the model, tagged with its stamp)."""
    return Path(path) / ("test_metrics.json" if name in st.session_state.get(K.TRAINED_MODELS, {}) else
                         "demo_test_metrics.json")


def evaluate(name: str, path: Path, cohort_dir: Path) -> dict | None:
    """The model's test-split metrics: read from disk when kept, else computed once as a background job.

    Returns None while the job runs (its progress is drawn) or when it failed (its error is drawn).
    """
    from core.app.background import evaluate_job
    from core.evaluation import model_fingerprint, read_saved_metrics

    saved, stamp = saved_metrics_path(name, path), model_fingerprint(path)
    found = read_saved_metrics(saved, stamp)
    if found is not None:
        return found
    key = f"evaluate:{path}@{stamp}"
    job = _jobs.find(key) or _jobs.submit(f"Evaluating {name} on the test split", evaluate_job,
                                          {name: (str(path), str(cohort_dir), str(saved), stamp)},
                                          runtime.device_name(), key=key, heavy=True)
    if job is None:
        return None
    if job.active:
        _jobs.show(job)
        return None
    if not _jobs.outcome(job):
        return None
    result = job.result[name]
    if "error" in result:
        st.error(f"{chrome.md(name)}: {chrome.md(result['error'])}")
        return None
    return result


models = views.available_models()
demo_dir = demo_install.demo_paths().cohort
trained = st.session_state.get(K.TRAINED_MODELS, {})
name = views.current_model_name()

tab_model, tab_compare, tab_validate, tab_train, tab_meds = st.tabs(
    ["Selected model", "Compare strategies", "Validate on your cohort", "Train on your cohort", "Cohort from MEDS"])


def show_evaluation(m: dict, what: str, risk_groups: Callable[[], dict], key: str) -> None:
    """One evaluation (``core.evaluation.evaluate_model``): metrics, what the model could not read, Kaplan-Meier by
    predicted risk group (``risk_groups()``: ``core.evaluate.km_by_risk_group``'s dict), calibration, decision
    curves and the coverage of the bounds. ``what`` names the subjects ("test split"); ``key`` keeps the charts of
    two evaluations on one page apart."""
    from core.ehr_read import split_feature_reads_text, split_timeline_reads_text
    from core.predict import split_image_reads_text

    cols = st.container(key=f"wrap_{key}_metrics").columns(4)  # two by two on a narrow page (assets/style.css)
    cols[0].metric("Harrell's C-index", ci_text(m.get("c_index"), None), help=metric_views.metric_help(m, "c_index"))
    cols[1].metric("Uno's C", ci_text(m.get("uno_c"), None), help=metric_views.metric_help(m, "uno_c"))
    cols[2].metric("Integrated Brier score", ci_text(m.get("ibs"), None), help=metric_views.metric_help(m, "ibs"))
    cols[3].metric("Subjects / events", f"{m.get('n')} / {m.get('events')}", help=what)
    row = metric_views.comparison_shown(pd.DataFrame([metric_views.metrics_row(name, m)])).drop(columns=["model"])
    st.dataframe(row, hide_index=True, width="stretch", placeholder=metric_views.NOT_AVAILABLE)
    if m.get("oracle_c_index") is not None:
        st.caption(f"Oracle C-index of the ground-truth risk on the same subjects: {m['oracle_c_index']:.3f}.")
    if m.get("unread"):
        st.warning(f"The model read nothing of {m['unread']} of the {m.get('n')} subjects (no study, timeline or "
                   "features it can read): their curves are the training average.", icon=":material/warning:")
    for note in m.get("notes") or []:  # what the cohort gives the model (core.evaluation.evaluation_notes)
        st.warning(chrome.md(note) + ".", icon=":material/warning:")
    for label, line in (("CTs", split_image_reads_text(m.get("ct_profile"))),
                        ("Timelines", split_timeline_reads_text(m.get("timeline_codes"))),
                        ("Features", split_feature_reads_text(m.get("features")))):
        if line:
            st.warning(f"{label} ({what}): {chrome.md(line)}.", icon=":material/warning:")
    g1, g2 = st.container(key=f"stack_{key}_plots").columns(2, gap="large")
    with g1:
        st.markdown(f"**Kaplan-Meier by predicted risk group ({what})**")
        ref = risk_groups()
        curves = {f"{g['label']} risk (n={g['n']}, {g['events']} events)": (g["t"], g["s"], g["lower"], g["upper"])
                  for g in ref["groups"]}
        palette = [F.RISK_GROUP_COLORS.get(g["label"]) for g in ref["groups"]]
        km = F.survival_compare_figure(curves, colors=None if None in palette else palette)  # type: ignore[arg-type]
        km.update_layout(width=None, height=420)
        st.plotly_chart(km, width="stretch", key=f"{key}_km_groups", config=chrome.PLOTLY_CONFIG)
        if (caption := metric_views.km_caption(ref)):
            st.caption(caption)
    with g2:
        st.markdown("**Calibration (predicted vs observed risk by group)**")
        cal = m.get("calibration") or {}
        if any(cal.values()):
            st.plotly_chart(F.calibration_figure(cal), width="stretch", key=f"{key}_calibration", config=chrome.PLOTLY_CONFIG)
            slopes = [f"{horizons.horizon_label(float(h))} {c['slope']:.2f} / {c['intercept']:+.2f}"
                      for h, c in cal.items() if c and c.get("slope") is not None]
            if slopes:
                st.caption("Calibration slope / intercept (observed on predicted risk over the groups; 1 / 0 is "
                           f"ideal; a slope below 1: predictions too extreme, above 1: too close together): {'; '.join(slopes)}.")
            if (oe := oe_text(cal)):
                st.caption(f"Observed / expected risk (calibration in the large, 1 ideal; above 1 the model "
                           f"under-predicts, below 1 it over-predicts), with 95 % intervals: {oe}.")
        else:
            st.info(f"Calibration is not estimable on the {what} (follow-up ends before the horizons).")
    st.markdown("**Clinical utility: net benefit against the risk threshold (decision curves)**")
    dc = m.get("decision_curve") or {}
    if any((dc.get("horizons") or {}).values()):
        st.plotly_chart(F.decision_curve_figure(dc), width="stretch", key=f"{key}_decision_curve", config=chrome.PLOTLY_CONFIG)
        st.caption("Treat every patient whose predicted risk by the horizon is at or above the threshold: the "
                   "model is useful where its net benefit is above both treat-all and treat-none "
                   "(time-to-event decision curves, dcurves).")
    else:
        st.info(f"Decision curves need follow-up past the horizons on the {what}.")
    st.markdown(f"**Coverage of the uncertainty bounds (IPCW, {what})**")
    st.dataframe(pd.DataFrame(metric_views.coverage_rows(m)), hide_index=True, width="stretch",
                 placeholder=metric_views.NOT_AVAILABLE)


with tab_model:
    cohort_dir = Path(st.session_state.get(K.TRAINED_COHORTS, {}).get(name, demo_dir))
    # a site model's cohort is the site's, not yours (a copy of it recalibrated to your cohort is evaluated there too)
    site = str(cohort_dir) in _whose.site_cohorts()
    own = name in trained and cohort_dir != demo_dir and not site
    cohort_text = (_whose.cohort_label(str(cohort_dir), 0) if site else _cohort_cases.label_of(cohort_dir) if own
                   else "the synthetic demo cohort")
    st.caption(f"Model **{name}**, evaluated on the test split of {cohort_text}.")
    views.own_model_controls(name)  # delete one of your own models (the disk quota counts them)
    _cohort_cases.review_button(cohort_dir)  # its test patients, one by one in Case review
    m = evaluate(name, models[name], cohort_dir)
    with chrome.core_errors(stop=False):
        if m is not None:
            _validations.report_button({name: m}, name, "model", cohort=cohort_text, split="test",
                                       risk_groups=lambda: refs.reference_curves(name))
            show_evaluation(m, "test split", lambda: refs.reference_curves(name), key="model")
            if not site:  # the site cohort's patients are not listed to every user
                _worst_patients.show(m, cohort_dir, name)  # which patients it orders wrong, each opened in Case review
            if name not in trained:
                st.markdown("**Subgroups**")
                cohort_cols = views.demo_cohort().column_names()
                default = next((c for c in ("sex_female", "age", "sex") if c in cohort_cols), cohort_cols[0])
                st.session_state.setdefault(K.SUBGROUP_COLUMN, default)
                column = st.selectbox("Group the test patients by", cohort_cols, key=K.SUBGROUP_COLUMN,
                                      help="A column of cohort.csv or features.csv; numbers with many values are cut "
                                           "into quantile bands.")
                with st.spinner("Computing subgroup metrics..."):
                    sub = refs.subgroup_table(name, column)
                metric_views.show_subgroups(sub, m.get("c_index"), key="model")
            elif own:
                metric_views.own_subgroups(name, Path(models[name]), cohort_dir, m.get("c_index"))


@st.cache_data(show_spinner="Comparing the best fusion with the best single modality...", max_entries=32)
def fusion_gain(cohort_dir: str, key: str, _results: dict[str, dict]) -> dict | None:
    """``core.evaluation.paired_fusion_gain`` of one cohort's evaluated models, once per ``key`` (the models and
    their evaluations' stamps) for every session; None where it cannot be computed (said by its error)."""
    from core.evaluation import paired_fusion_gain

    with chrome.core_errors(stop=False, what="Paired comparison not computed: "):
        return paired_fusion_gain(_results, cohort_dir)
    return None


with tab_compare:
    from core.app.background import evaluate_job
    from core.evaluation import model_fingerprint, read_saved_metrics

    groups: dict[str, dict[str, tuple[str, str, str | None, float]]] = {}  # cohort folder -> the models trained on it
    for mname, mpath in models.items():
        cdir = Path(st.session_state.get(K.TRAINED_COHORTS, {}).get(mname, demo_dir))
        if cdir == demo_dir or mname in trained:
            saved = str(saved_metrics_path(mname, Path(mpath)))
            groups.setdefault(str(cdir), {})[mname] = (str(mpath), str(cdir), saved, model_fingerprint(mpath))
    for c, g in groups.items():  # each cohort's models in the strategies' order (the user's are listed newest first)
        groups[c] = dict(sorted(g.items(), key=lambda kv: FUSIONS.index(kv[0].split(" (")[0])
                                if kv[0].split(" (")[0] in FUSIONS else len(FUSIONS)))
    here = next((c for c, g in groups.items() if name in g), next(iter(groups), None))
    if len(groups) > 1:  # models of different cohorts are not compared: each is scored on its own cohort's test split
        here = st.selectbox("Models trained on", list(groups), index=list(groups).index(here), key="compare_cohort",
                            format_func={c: _whose.cohort_label(c, len(g)) for c, g in groups.items()}.__getitem__)
    todo = groups.get(here, {}) if here else {}
    st.caption("Every model trained on this cohort, on the same test split: the best fusion depends on the task. "
               "Evaluations are kept on disk, so the table appears at once after the first time.")
    # an evaluation kept without each patient's risk (before the paired comparison) is computed again here
    kept = {n: read_saved_metrics(Path(v[2]), v[3], with_risk=True) if v[2] else None for n, v in todo.items()}
    compare_key = "compare:" + "|".join(f"{n}@{v[3]}" for n, v in todo.items())
    if len(todo) > 1 and all(m is not None for m in kept.values()):  # every evaluation already on disk
        results = {n: m for n, m in kept.items() if m is not None}
        metric_views.show_comparison(results, name, "compare", "strategy_comparison.csv",
                                     paired=fusion_gain(str(here), compare_key, results))
    elif len(todo) == 1:
        st.info(f"Only {next(iter(todo))} was trained on this cohort: its metrics are on the Selected model tab. "
                + ("The administrator adds other strategies trained on it as site models to compare them."
                   if _whose.is_site(next(iter(todo))) else
                   f"Train more strategies on it (Train on your cohort, \"{training.EVERY}\") to compare them."),
                icon=":material/info:")
    elif todo:
        job = _jobs.find(compare_key)
        older = [n for n, v in todo.items() if kept[n] is None and v[2] and read_saved_metrics(Path(v[2]), v[3])]
        if job is None and older:
            st.caption(f"{len(older)} of these evaluations were kept before each patient's risk was: computed again, "
                       "they also give the paired comparison of the best fusion with the best single-modality model.")
        if job is None and st.button("Compute the comparison table", key="compare_button", type="primary"):
            job = _jobs.submit("Comparing the strategies", evaluate_job, todo, runtime.device_name(), key=compare_key,
                               heavy=True)
        if job is not None and job.active:
            _jobs.show(job)
        elif job is not None and _jobs.outcome(job):
            metric_views.show_comparison(job.result, name, "compare", "strategy_comparison.csv",
                                         paired=fusion_gain(str(here), compare_key, job.result))

VALIDATE_KEY = "validate"


def start_validation(upload: bytes, upload_name: str, subgroup: str, every: bool, recalibrate: bool = False,
                     site: str = "") -> None:
    """Queue the external validation of the selected model (``every``: of every model in the sidebar's list, the
    selected one first) on an uploaded cohort zip (file name ``upload_name``) from ``site`` (what reports and the pooling
    of sites call it; "": the file name) as this user's background job (per group of ``subgroup`` too, when it names a
    column), kept in the user's folder when it ends; ``recalibrate``: also save a copy recalibrated to it."""
    import json

    from core.app.background import validate_uploaded_job
    from core.app.validations import site_name

    user, site = _jobs.owner(), site_name(site, upload_name)
    workspace.check_quota(user, len(upload))  # unpacked while it is evaluated, removed after
    workspace.check_cohort_zip(upload)  # the table's errors now, not after a job has started
    chosen = {name: str(models[name]), **({n: str(p) for n, p in models.items() if n != name} if every else {})}
    fusion = json.loads((Path(models[name]) / "config.json").read_text()).get("fusion", "model")  # a slug, not a label
    session.audit("validate", str(fusion), source=_whose.whose(name), models=len(chosen),
                  recalibrate=recalibrate)
    recal = _recalibration.spec(name, Path(models[name]), user, site) if recalibrate else None
    job = _jobs.submit(f"Validating {name}" + (f" and {len(chosen) - 1} more" if len(chosen) > 1 else ""),
                       validate_uploaded_job, upload, str(workspace.user_root(user) / "cohorts"), chosen,
                       runtime.device_name(), subgroup.strip() or None, recal, upload_name, site,
                       key=f"{VALIDATE_KEY}:{'|'.join(chosen)}:{subgroup.strip()}:{bool(recal)}:{site}:"
                           f"{hashlib.sha256(upload).hexdigest()[:16]}",
                       heavy=True)
    if job is not None:
        st.session_state[K.VALIDATE_JOB] = (job.id, name)
        st.rerun()


def show_validation(results: dict[str, dict], validated: str, key: str = "validate") -> None:
    """An external validation's results: the comparison table when several models were evaluated, then the
    selected model's metrics, curves and subgroups (``key`` keeps two validations on one page apart)."""
    if len(results) > 1:
        st.markdown("**Every model on your cohort**")
    metric_views.show_comparison(results, name, key, "external_validation.csv", "Download the metrics (CSV)",
                                 paired=(results.get(validated) or {}).get("fusion_gain"))
    m = results.get(validated)
    if not m or "error" in m:
        return
    _validations.warn_not_kept(m)
    _validations.report_button(results, validated, key)
    st.markdown(f"**{validated}** on every patient of the uploaded cohort (censoring weights from that cohort's own "
                "follow-up).")
    show_evaluation(m, "your cohort", lambda: m["risk_groups"], key=key)
    _worst_patients.show(m, None, validated, "uploaded cohort", key=f"{key}_worst")  # its patients in your records
    if m.get("subgroups"):
        st.markdown(f"**Subgroups by {chrome.md(m['subgroups'].get('column'))}**")
        metric_views.show_subgroups(m["subgroups"], m.get("c_index"), key=key)
    if m.get("recalibration"):
        _recalibration.show(m["recalibration"], listed=m["recalibration"].get("label") in models)


with tab_validate:
    st.markdown(
        f"Evaluate **{name}** on a cohort it never saw, every patient of it (an external validation): upload a "
        "**zip of a cohort folder** laid out as for training (`cohort.csv` with outcomes, and the model's inputs: "
        "studies, timeline, features). Studies are checked for identifying data first; the cohort is removed when "
        "the evaluation ends.")
    up_val = st.file_uploader(f"Cohort folder to validate on (zip, up to {chrome.upload_mb()} MB)", type=["zip"],
                              key="validate_zip")
    c1, c2 = st.container(key="stack_validate_options").columns(2)  # stacked on a narrow page
    site = c1.text_input("Site (optional)", key="validate_site", max_chars=60,
                         placeholder=up_val.name if up_val is not None else "e.g. Hospital B 2025",
                         help="What the kept validation, its report and the pooling of sites call this cohort (the "
                              "zip's file name when left empty). Validations with the same site count as one site "
                              "when a model's validations are pooled.")
    group_by = c2.text_input("Also per group of (optional)", key="validate_subgroup", placeholder="e.g. sex, site, age",
                             help="A column of the cohort's cohort.csv or features.csv: C-index and calibration per "
                                  "group; numbers with many values are cut into quantile bands.")
    others = len(models) - 1
    every = st.checkbox(f"Also the other {others} model{'' if others == 1 else 's'}", value=False, disabled=others < 1,
                        key="validate_every", help="Every model in the sidebar's list, compared side by side (a forest "
                                                   "plot and a table). Each model is evaluated in turn: with CT studies "
                                                   "this takes about as many times longer.")
    recal = st.checkbox(f"Also save a copy of {name} recalibrated to this cohort", value=False,
                        key="validate_recalibrate", help=_recalibration.HELP)
    ready = up_val is not None and _cohort_preview.show(up_val, for_training=False, what="validated on")
    if up_val is not None and st.button(f"Validate {name}" + (" and the others" if every else ""), type="primary",
                                        key="validate_button", disabled=not ready,
                                        help=None if ready else "Fix what is said above, then upload the zip again"):
        with chrome.core_errors(stop=False, what="Validation not started: "):
            start_validation(up_val.getvalue(), up_val.name, group_by, every, recal, site)
    from core.jobs import default_queue

    job_id, validated = st.session_state.get(K.VALIDATE_JOB) or (None, None)
    vjob = default_queue().get(job_id, _jobs.owner()) if job_id else _jobs.latest(VALIDATE_KEY + ":")
    if vjob is not None and not job_id and vjob.state == "done":  # a page opened anew: its result's first model
        validated = next(iter(vjob.result or {}), None)
    if vjob is not None and vjob.active:
        _jobs.show(vjob)
    elif vjob is not None and _jobs.outcome(vjob):
        with chrome.core_errors(stop=False):
            show_validation(vjob.result, str(validated))
    if (earlier := _validations.pick()) is not None:  # kept in the user's folder: after a restart too
        with chrome.core_errors(stop=False):
            show_validation(*earlier, key="kept_validation")
    _validations.pooled_view()

with tab_train:
    st.markdown(
        "Upload a **zip of a cohort folder**: `cohort.csv` (subject_id, time in days or index_time and end_time "
        "dates, event 1 / 0 or yes / no, optional split, study, index_time) and any of `timeline.parquet|csv`, "
        "`features.csv` (numbers, and categories such as sex F / M as text), studies, embeddings. Every study is "
        "checked for identifying data in memory before anything is kept; the model (or all seven, compared) is "
        "trained on this machine in the background and kept in your models folder."
    )
    up = st.file_uploader(f"Cohort folder (zip, up to {chrome.upload_mb()} MB)", type=["zip"], key="cohort_zip")
    c1, c2, c3 = st.container(key="stack_train_options").columns([2, 3, 1])  # stacked on a narrow page
    fusion = c1.selectbox("Fusion strategy", [*FUSIONS, training.EVERY], index=FUSIONS.index("concat"), key="train_fusion",
                          help=f"'{training.EVERY}': one job trains each strategy in turn on the cohort (they share its image "
                               "encoder) and compares them on its test split; each model joins your list.")
    kinds = training.image_kinds()
    image_kind = c2.selectbox(
        "Image encoder", list(kinds), format_func=kinds.__getitem__, key="train_image_kind",
        help="Whole CT: a slice CNN first learns to find synthetic lesions inserted into your cohort's own "
             "slices, then survival from what it finds anywhere in the body (liver, bone, lung, spleen lesions; about "
             "10-20 more CPU minutes per model on a 400-subject cohort). Lung-focused: the slice CNN sees only the "
             "lungs (fast; chest CT with lung findings).")
    epochs = c3.number_input("Epochs", 1, 200, 10, key="train_epochs")
    crop = st.checkbox("Crop each CT to the body first", value=False, key="train_body_crop", help=BODY_CROP_HELP)
    ready = up is not None and _cohort_preview.show(up, for_training=True, what="trained on")
    if up is not None and st.button(f"Train all {len(FUSIONS)} and compare" if fusion == training.EVERY else "Train", type="primary",
                                    key="train_button", disabled=not ready,
                                    help=None if ready else "Fix what is said above, then upload the zip again"):
        with chrome.core_errors(stop=False, what="Training not started: "):
            training.start_training(None, fusion, int(epochs), upload=up.getvalue(), image_encoder_kind=image_kind,
                           body_crop=crop)
    training.training_status(name)

with tab_meds:
    st.markdown(
        "Define the cohort as a **task** on MEDS events (ACES: the index event, the outcome predicate, windows, "
        "censoring) instead of writing `cohort.csv` by hand. The task file names the index event (e.g. the first "
        "hospital admission) and the outcome (e.g. `MEDS_DEATH`); time is counted in days from the index, "
        "patients without the outcome are censored at their last recorded event."
    )
    built = _meds.build_section()
    if built:
        info = built["summary"]
        cols = st.columns(4)
        cols[0].metric("Patients", info.get("n_subjects"))
        cols[1].metric("Events", info.get("events"))
        cols[2].metric("Censored", info.get("censored"))
        cols[3].metric("Follow-up", f"{float(info.get('median_time_days', 0)):.0f} d", help=_cohort_preview.FOLLOW_UP_HELP)
        st.caption(f"Splits: {', '.join(f'{k} {v}' for k, v in (info.get('splits') or {}).items())}; "
                   f"{int(info.get('timeline_events') or 0):,} timeline events kept"
                   + (f"; a CT study for {info['studies']} of {info.get('n_subjects')} patients." if info.get("studies")
                      else "; no CT studies."))
        for note in info.get("notes") or []:  # what reading the MEDS files left out (core.meds_cohort)
            st.warning(chrome.md(note) + ".", icon=":material/warning:")
        c3, c4 = st.columns(2)
        if info.get("studies"):  # built with CT studies: every strategy
            mfusion = c3.selectbox("Strategy", [*FUSIONS, training.EVERY], index=FUSIONS.index("concat"), key="meds_fusion_ct",
                                   help=f"{info['studies']} patients have a CT study. '{training.EVERY}': one job trains each "
                                        "strategy in turn and compares them on the test split.")
        else:
            mfusion = c3.selectbox("Strategy (EHR only: no CT studies were added to this cohort)", ["ehr_only"],
                                   key="meds_fusion")
        mepochs = c4.number_input("Epochs", 1, 200, 10, key="meds_epochs")
        summarise = st.checkbox(
            "Also read a summary of each whole timeline (age, counts and last values of the commonest codes)",
            value=False, key="meds_summary",
            help="The events model reads each patient's last 64 events; the summary adds what falls outside them "
                 "(age, older history), and an uploaded timeline is then read through it too. It helped on an "
                 "800-patient cohort and did worse on 100-400 patients (docs/BENCHMARKS.md): try it on large cohorts.")
        if st.button("Train on this cohort", key="meds_train"):
            with chrome.core_errors(stop=False, what="Training not started: "):
                training.start_training(Path(built["dir"]), mfusion, int(mepochs), ehr_encoder="summary" if summarise else "auto",
                               place="meds")
        training.training_status(name, "meds")
