"""Cohort & models: discrimination, calibration, risk groups, strategy comparison, training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import figures as F
from core import horizons, runtime
from core.app import demo_install, reference, workspace
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


@st.cache_data(show_spinner="Evaluating on the demo test split...", max_entries=32)
def _evaluate_demo(model_dir: str, cohort_dir: str, stamp: float) -> dict:
    """Metrics of a demo model on the synthetic demo cohort (not patient data)."""
    from core.evaluate import evaluate_model

    return evaluate_model(Path(model_dir), Path(cohort_dir), split="test", device=runtime.device_name())


def evaluate(name: str, path: Path, cohort_dir: Path) -> dict:
    trained = st.session_state.get(K.TRAINED_MODELS, {})
    if name in trained:
        from core.evaluate import evaluate_model

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


models = ui.available_models()
demo_dir = demo_install.demo_paths().cohort
trained = st.session_state.get(K.TRAINED_MODELS, {})
name = ui.current_model_name()

tab_model, tab_compare, tab_train = st.tabs(["Selected model", "Compare strategies", "Train on your cohort"])

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
            from core.train import train_model

            ui.audit("train", fusion, epochs=int(epochs))
            ws = ui.workspace()
            cdir = workspace.unpack_cohort_zip(up.getvalue(), ws.fresh_dir("cohort"))
            cohort = load_cohort(cdir)
            st.write(f"Cohort: {len(cohort.table)} subjects, {int(cohort.table['event'].sum())} events; "
                     f"modalities: {', '.join(k for k in ('features', 'timeline') if getattr(cohort, k) is not None) or 'none'}"
                     f"{', CT' if cohort.has_studies else ''}.")
            out = ws.fresh_dir(f"model-{fusion}")
            bar = st.progress(0.0, text="training")
            metrics = train_model(cdir, fusion, out, epochs=int(epochs), device="auto",
                                  progress=lambda f, label: bar.progress(min(max(f, 0.0), 1.0), text=label))
            bar.progress(1.0, text="done")
            label = f"{fusion} (your cohort)"
            st.session_state.setdefault(K.TRAINED_MODELS, {})[label] = str(out)
            st.session_state.setdefault(K.TRAINED_COHORTS, {})[label] = str(cdir)
            st.success(f"Trained {label}: test C-index {_ci(metrics.get('c_index'), metrics.get('c_index_ci'))}. "
                       "Pick it in the sidebar to review cases and metrics.")
