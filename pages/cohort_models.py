"""Cohort & models: discrimination, calibration, risk groups, strategy comparison, training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import figures as F
from core import horizons, runtime
from core.app import demo_install, paths, reference, workspace
from core.models import FUSIONS
from pages import _shared as ui
from pages import _state as K

ui.require_app_navigation()

st.title("Cohort & models")


def _ci(value: object, ci: object) -> str:
    if value is None:
        return "n/a"
    text = f"{float(value):.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" [{float(ci[0]):.3f}, {float(ci[1]):.3f}]"
    return text


@st.cache_data(show_spinner="Evaluating on the demo test split (once; kept with the demo model)...", max_entries=32)
def _evaluate_demo(model_dir: str, cohort_dir: str, stamp: float) -> dict:
    """Metrics of a demo model on the synthetic demo cohort (not patient data), kept on disk between server starts."""
    from core.evaluation import evaluate_model, read_saved_metrics, save_metrics

    saved = Path(model_dir) / "demo_test_metrics.json"
    found = read_saved_metrics(saved, stamp)
    if found is not None:
        return found
    result = evaluate_model(Path(model_dir), Path(cohort_dir), split="test", device=runtime.device_name())
    save_metrics(saved, result, stamp)
    return result


def evaluate(name: str, path: Path, cohort_dir: Path) -> dict:
    trained = st.session_state.get(K.TRAINED_MODELS, {})
    if name in trained:
        from core.evaluation import evaluate_model

        return ui.memo(("evaluate", str(path), str(cohort_dir)),
                       lambda: evaluate_model(path, cohort_dir, split="test", device=runtime.device_name()))
    return _evaluate_demo(str(path), str(cohort_dir), ui.stamp(path))


def metrics_row(name: str, m: dict) -> dict:
    td = m.get("td_auc") or {}
    row = {
        "model": name,
        "fusion": m.get("fusion", name),
        "C-index [95% CI]": _ci(m.get("c_index"), m.get("c_index_ci")),
        "Uno C [95% CI]": _ci(m.get("uno_c"), m.get("uno_c_ci")),
    }
    for h in horizons.HORIZONS:
        v = td.get(h, td.get(str(h)))
        row[f"td-AUC {horizons.HORIZON_LABELS[h]}"] = "n/a" if v is None else f"{float(v):.3f}"
    row["IBS [95% CI]"] = _ci(m.get("ibs"), m.get("ibs_ci"))
    row["n / events"] = f"{m.get('n')} / {m.get('events')}"
    return row


def coverage_rows(m: dict) -> list[dict]:
    """One row per horizon: nominal level, the ensemble band's and the conformal bound's empirical coverage."""
    cov, conf = m.get("coverage") or {}, m.get("conformal") or {}
    level = 1.0 - float(cov.get("alpha", 0.1))
    rows = []
    for h in horizons.HORIZONS:
        c = (cov.get("horizons") or {}).get(h, (cov.get("horizons") or {}).get(str(h)))
        k = (conf.get("horizons") or {}).get(h, (conf.get("horizons") or {}).get(str(h)))

        def fmt(res: dict | None) -> str:
            return "n/a" if not res or res.get("coverage") is None else f"{res['coverage']:.3f} (n known {res['n_known']})"
        row = {"horizon": horizons.HORIZON_LABELS[h], "nominal": f"{level:.2f}",
               "point curve": fmt((c or {}).get("curve")), "conformal bound (val-calibrated)": fmt(k)}
        if cov.get("band"):  # the ensemble band costs one prediction per patient: shown when it was computed
            row["ensemble band"] = fmt((c or {}).get("band"))
        rows.append(row)
    return rows


def subgroup_rows(sub: dict) -> list[dict]:
    rows = []
    for g in sub.get("groups", []):
        row = {sub.get("column", "group"): g["label"], "n / events": f"{g['n']} / {g['events']}",
               "C-index [95% CI]": _ci(g.get("c_index"), g.get("c_index_ci"))}
        for h in horizons.HORIZONS:
            cal = (g.get("calibration") or {}).get(h)
            row[f"risk {horizons.HORIZON_LABELS[h]}: predicted / observed"] = (
                "n/a" if not cal or cal.get("observed") is None
                else f"{cal['predicted']:.2f} / {cal['observed']:.2f}")
        rows.append(row)
    return rows


models = ui.available_models()
demo_dir = demo_install.demo_paths().cohort
trained = st.session_state.get(K.TRAINED_MODELS, {})
name = ui.current_model_name()

tab_model, tab_compare, tab_train, tab_meds = st.tabs(
    ["Selected model", "Compare strategies", "Train on your cohort", "Cohort from MEDS"])


def train_here(cdir: Path, fusion: str, epochs: int) -> None:
    """Train ``fusion`` on the cohort folder ``cdir`` with a progress bar; the model is kept for this session."""
    from core.train import train_model

    ui.audit("train", fusion, epochs=int(epochs))
    ws = ui.workspace()
    out = ws.fresh_dir(f"model-{fusion}")
    bar = st.progress(0.0, text="training")
    metrics = train_model(cdir, fusion, out, epochs=int(epochs), device="auto",
                          progress=lambda f, label: bar.progress(min(max(f, 0.0), 1.0), text=label))
    bar.progress(1.0, text="done")
    label = f"{fusion} (your cohort)"
    st.session_state.setdefault(K.TRAINED_MODELS, {})[label] = str(out)
    st.session_state.setdefault(K.TRAINED_COHORTS, {})[label] = str(cdir)
    test = metrics.get("test") or {}
    st.success(f"Trained {label}: test C-index {_ci(test.get('c_index'), test.get('c_index_ci'))}. "
               "Pick it in the sidebar to review cases and metrics.")

with tab_model:
    cohort_dir = Path(st.session_state.get(K.TRAINED_COHORTS, {}).get(name, demo_dir))
    st.caption(f"Model **{name}**, evaluated on the test split of "
               f"{'your uploaded cohort' if name in trained else 'the synthetic demo cohort'}.")
    with ui.core_errors(stop=False):
        m = evaluate(name, models[name], cohort_dir)
        cols = st.columns(4)
        cols[0].metric("Harrell's C-index", _ci(m.get("c_index"), None),
                       help=f"95% bootstrap CI {_ci(m.get('c_index'), m.get('c_index_ci'))}")
        cols[1].metric("Uno's C", _ci(m.get("uno_c"), None), help=_ci(m.get("uno_c"), m.get("uno_c_ci")))
        cols[2].metric("Integrated Brier score", _ci(m.get("ibs"), None), help=_ci(m.get("ibs"), m.get("ibs_ci")))
        cols[3].metric("Test subjects / events", f"{m.get('n')} / {m.get('events')}")
        st.dataframe(pd.DataFrame([metrics_row(name, m)]).drop(columns=["model"]), hide_index=True,
                     width="stretch")
        if m.get("oracle_c_index") is not None:
            st.caption(f"Oracle C-index of the ground-truth risk on the same subjects: {m['oracle_c_index']:.3f}.")
        g1, g2 = st.columns(2, gap="large")
        with g1:
            st.markdown("**Kaplan-Meier by predicted risk group (test split)**")
            if name in trained:
                from core.cohort import load_cohort

                cohort = ui.memo(("cohort", str(cohort_dir)), lambda: load_cohort(cohort_dir))
            else:
                cohort = ui.demo_cohort()
            ref = ui.memo(("groups", str(models[name]), str(cohort_dir)),
                          lambda: reference.reference_curves(ui.model_by_name(name), cohort, cohort.ids("test")))
            curves = {f"{g['label']} risk (n={g['n']}, {g['events']} events)": (g["t"], g["s"], g["lower"], g["upper"])
                      for g in ref["groups"]}
            palette = [F.RISK_GROUP_COLORS.get(g["label"]) for g in ref["groups"]]
            km = F.survival_compare_figure(curves, colors=None if None in palette else palette)  # type: ignore[arg-type]
            km.update_layout(width=None, height=420)
            st.plotly_chart(km, width="stretch", key="km_groups")
            if ref["logrank_p"] is not None:
                st.caption(f"Log-rank test across groups: p = {ref['logrank_p']:.3g}.")
        with g2:
            st.markdown("**Calibration (predicted vs observed risk by group)**")
            cal = m.get("calibration") or {}
            if any(cal.values()):
                fig = F.calibration_figure(cal)
                st.plotly_chart(fig, width="stretch", key="calibration")
            else:
                st.info("Calibration is not estimable on this split (follow-up ends before the horizons).")
        st.markdown("**Clinical utility: net benefit against the risk threshold (decision curves)**")
        dc = m.get("decision_curve") or {}
        if any((dc.get("horizons") or {}).values()):
            st.plotly_chart(F.decision_curve_figure(dc), width="stretch", key="decision_curve")
            st.caption("Treat every patient whose predicted risk by the horizon is at or above the threshold: the "
                       "model is useful where its net benefit is above both treat-all and treat-none "
                       "(time-to-event decision curves, dcurves).")
        else:
            st.info("Decision curves need follow-up past the horizons on this split.")
        st.markdown("**Coverage of the uncertainty bounds (IPCW, test split)**")
        st.dataframe(pd.DataFrame(coverage_rows(m)), hide_index=True, width="stretch")
        if name not in trained:
            st.markdown("**Subgroups**")
            cohort_cols = ui.demo_cohort().column_names()
            default = next((c for c in ("sex_female", "age", "sex") if c in cohort_cols), cohort_cols[0])
            st.session_state.setdefault(K.SUBGROUP_COLUMN, default)
            column = st.selectbox("Group the test patients by", cohort_cols, key=K.SUBGROUP_COLUMN,
                                  help="A column of cohort.csv or features.csv; numbers with many values are cut "
                                       "into quantile bands.")
            with st.spinner("Computing subgroup metrics..."):
                sub = ui.subgroup_table(name, column)
            st.dataframe(pd.DataFrame(subgroup_rows(sub)), hide_index=True, width="stretch")

with tab_compare:
    st.caption("Every strategy on the same test split: the best fusion depends on the task.")
    if st.button("Compute the comparison table", key="compare_button", type="primary") or st.session_state.get(K.COMPARED):
        st.session_state[K.COMPARED] = True
        rows = []
        bar = st.progress(0.0, text="evaluating")
        for i, (mname, mpath) in enumerate(models.items()):
            with ui.core_errors(stop=False, what=f"{mname}: "):
                cdir = Path(st.session_state.get(K.TRAINED_COHORTS, {}).get(mname, demo_dir))
                if cdir != demo_dir and mname not in trained:
                    continue
                rows.append(metrics_row(mname, evaluate(mname, mpath, cdir)))
            bar.progress((i + 1) / len(models), text=f"evaluated {mname}")
        bar.empty()
        if rows:
            table = pd.DataFrame(rows)
            st.dataframe(table, hide_index=True, width="stretch")
            st.download_button("Download the table (CSV)", table.to_csv(index=False).encode(), "strategy_comparison.csv",
                               mime="text/csv", key="compare_csv")

with tab_train:
    st.markdown(
        "Upload a **zip of a cohort folder**: `cohort.csv` (subject_id, time, event, optional split, study, "
        "index_time) and any of `timeline.parquet|csv`, `features.csv`, studies, embeddings. The model is trained "
        "on this machine and kept for this session only."
    )
    up = st.file_uploader("Cohort folder (zip)", type=["zip"], key="cohort_zip")
    c1, c2 = st.columns(2)
    fusion = c1.selectbox("Fusion strategy", FUSIONS, index=FUSIONS.index("concat"), key="train_fusion")
    epochs = c2.number_input("Epochs", 1, 200, 10, key="train_epochs")
    if up is not None and st.button("Train", type="primary", key="train_button"):
        with ui.core_errors(stop=False, what="Training not started: "):
            from core.cohort import load_cohort

            cdir = workspace.unpack_cohort_zip(up.getvalue(), ui.workspace().fresh_dir("cohort"))
            cohort = load_cohort(cdir)
            st.write(f"Cohort: {len(cohort.table)} subjects, {int(cohort.table['event'].sum())} events; "
                     f"modalities: {', '.join(k for k in ('features', 'timeline') if getattr(cohort, k) is not None) or 'none'}"
                     f"{', CT' if cohort.has_studies else ''}.")
            train_here(cdir, fusion, int(epochs))

with tab_meds:
    st.markdown(
        "Define the cohort as a **task** on MEDS events (ACES: the index event, the outcome predicate, windows, "
        "censoring) instead of writing `cohort.csv` by hand. The task file names the index event (e.g. the first "
        "hospital admission) and the outcome (e.g. `MEDS_DEATH`); time is counted in days from the index, "
        "patients without the outcome are censored at their last recorded event."
    )
    tasks = {p.name: p for p in sorted((paths.ASSETS / "tasks").glob("*.yaml"))}
    c1, c2 = st.columns(2)
    meds_file = c1.file_uploader("MEDS events (parquet or CSV)", type=["parquet", "csv"], key="meds_file")
    task_choice = c2.selectbox("Task", [*tasks, "upload a task file"], key="meds_task")
    task_file = c2.file_uploader("Task (ACES YAML)", type=["yaml", "yml"], key="meds_task_file") \
        if task_choice == "upload a task file" else None
    if meds_file is not None and st.button("Build the cohort", type="primary", key="meds_build"):
        with ui.core_errors(stop=False, what="Cohort not built: "):
            from core.meds_cohort import build_meds_cohort

            ws = ui.workspace()
            src = ws.fresh_dir("meds") / ("events." + meds_file.name.rsplit(".", 1)[-1].lower())
            src.write_bytes(meds_file.getvalue())
            task = tasks.get(task_choice)
            if task is None:
                if task_file is None:
                    raise ValueError("task: got no file; fix: upload an ACES task YAML or pick a bundled task")
                task = src.parent / "task.yaml"
                task.write_bytes(task_file.getvalue())
            bar = st.progress(0.0, text="reading the task")
            summary = build_meds_cohort(src, task, ws.fresh_dir("meds-cohort"),
                                        progress=lambda f, label: bar.progress(min(max(f, 0.0), 1.0), text=label))
            st.session_state[K.MEDS_COHORT] = {"dir": str(summary["out"]), "summary": summary}
    built = st.session_state.get(K.MEDS_COHORT)
    if built:
        info = built["summary"]
        cols = st.columns(4)
        cols[0].metric("Patients", info.get("n_subjects"))
        cols[1].metric("Events", info.get("events"))
        cols[2].metric("Censored", info.get("censored"))
        cols[3].metric("Median follow-up", f"{float(info.get('median_time_days', 0)):.0f} d")
        st.caption(f"Splits: {info.get('splits')}; {info.get('timeline_events')} timeline events kept.")
        c3, c4 = st.columns(2)
        mfusion = c3.selectbox("Strategy (EHR only: MEDS cohorts have no CT)", ["ehr_only"], key="meds_fusion")
        mepochs = c4.number_input("Epochs", 1, 200, 10, key="meds_epochs")
        if st.button("Train on this cohort", key="meds_train"):
            with ui.core_errors(stop=False, what="Training not started: "):
                train_here(Path(built["dir"]), mfusion, int(mepochs))
