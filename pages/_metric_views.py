"""Cohort & models' evaluation tables and plots (not a page itself): metrics with intervals, the coverage of the
bounds, several models side by side (forest plot and table) and one model by subgroup. The numbers come from
``core.evaluation.evaluate_model``; the figures from ``core.figures``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import figures as F
from core import horizons
from core.evaluate.metrics import NOT_AVAILABLE, ci_text, metric_spans  # noqa: F401  (the pages import them from here)
from pages import _chrome as chrome



def metric_help(m: dict, key: str) -> str:
    """The help of a metric's tile: its interval and, for Uno's C and the integrated Brier score, the span of days it
    covers (values over other spans are not comparable).

    >>> metric_help({"ibs": 0.2, "ibs_ci": [0.15, 0.25], "ibs_range": [35, 2019]}, "ibs")
    '95% bootstrap CI 0.200 [0.150, 0.250]; averages days 35-2019 (values over other days are not comparable)'
    """
    text = f"95% bootstrap CI {ci_text(m.get(key), m.get(key + '_ci'))}"
    if key == "uno_c" and m.get("uno_tau") is not None:
        text += f"; compares pairs up to day {float(m['uno_tau']):.0f} (values truncated elsewhere are not comparable)"
    if key == "ibs" and m.get("ibs_range"):
        a, b = m["ibs_range"]
        text += f"; averages days {float(a):.0f}-{float(b):.0f} (values over other days are not comparable)"
    return text


def km_caption(ref: dict) -> str:
    """The caption under the Kaplan-Meier curves by risk group: the log-rank test and the numbers at risk (how many
    of each group are still followed at day 0 and each year: why the bands widen late).

    >>> km_caption({"logrank_p": 0.0012, "at_risk_days": [0, 365, 730],
    ...             "groups": [{"label": "low", "at_risk": [54, 43, 35]}, {"label": "high", "at_risk": [53, 16, 5]}]})
    'Log-rank test across groups: p = 0.0012. Numbers at risk at day 0 / 1 y / 2 y: low 54 / 43 / 35; high 53 / 16 / 5.'
    """
    parts = [] if ref.get("logrank_p") is None else [f"Log-rank test across groups: p = {ref['logrank_p']:.3g}."]
    days = ref.get("at_risk_days")
    if days and all("at_risk" in g for g in ref["groups"]):
        when = " / ".join("day 0" if d == 0 else horizons.horizon_label(d, short=True) for d in days)
        parts.append(f"Numbers at risk at {when}: "
                     + "; ".join(f"{g['label']} " + " / ".join(str(n) for n in g["at_risk"]) for g in ref["groups"]) + ".")
    return " ".join(parts)


def metrics_row(name: str, m: dict) -> dict:
    td = m.get("td_auc") or {}
    row = {
        "model": name,
        "fusion": m.get("fusion", name),
        "C-index [95% CI]": ci_text(m.get("c_index"), m.get("c_index_ci")),
        "Uno C [95% CI]": ci_text(m.get("uno_c"), m.get("uno_c_ci")),
    }
    for h in horizons.HORIZONS:
        v = horizons.at_horizon(td, h)
        row[f"td-AUC {horizons.HORIZON_LABELS[h]}"] = NOT_AVAILABLE if v is None else f"{float(v):.3f}"
    row["IBS [95% CI]"] = ci_text(m.get("ibs"), m.get("ibs_ci"))
    row["n / events"] = f"{m.get('n')} / {m.get('events')}"
    if m.get("unread"):  # subjects of whom the model read nothing (an image model on a cohort without CT)
        row["read nothing of"] = f"{m['unread']} subjects"
    return row


def coverage_rows(m: dict) -> list[dict]:
    """One row per horizon: nominal level, the ensemble band's and the conformal bound's empirical coverage."""
    cov, conf = m.get("coverage") or {}, m.get("conformal") or {}
    level = 1.0 - float(cov.get("alpha", 0.1))
    rows = []
    for h in horizons.HORIZONS:
        c = horizons.at_horizon(cov.get("horizons"), h)
        k = horizons.at_horizon(conf.get("horizons"), h)

        def fmt(res: dict | None) -> str:
            return NOT_AVAILABLE if not res or res.get("coverage") is None else f"{res['coverage']:.3f} (n known {res['n_known']})"
        row = {"horizon": horizons.HORIZON_LABELS[h], "nominal": f"{level:.2f}",
               "point curve": fmt((c or {}).get("curve")), "conformal bound (val-calibrated)": fmt(k)}
        if cov.get("band"):  # the ensemble band costs one prediction per patient: shown when it was computed
            row["ensemble band"] = fmt((c or {}).get("band"))
        rows.append(row)
    return rows


def shared_suffix(names: list[str]) -> str:
    """The parenthesis that ends every one of several model names, such as the cohort and time of the models
    trained together in the app, else "".

    >>> shared_suffix(["concat (your cohort, 27 Nov 04:51)", "ehr_only (your cohort, 27 Nov 04:51)"])
    ' (your cohort, 27 Nov 04:51)'
    >>> shared_suffix(["concat (your cohort, 27 Nov 04:51)", "ehr_only"]), shared_suffix(["a (x)"])
    ('', '')
    """
    tails = {n[n.rfind(" ("):] if n.endswith(")") and " (" in n else "" for n in names}
    return next(iter(tails)) if len(names) > 1 and len(tails) == 1 else ""


def failure_lines(errors: dict[str, str]) -> list[str]:
    """Markdown bullets of the models that could not be trained or evaluated: the strategies refused for the same
    reason ("fusion: got concat, needs images but the cohort has none; ...") on one line, named once.

    >>> failure_lines({"concat (c)": "fusion: got concat, needs images; fix: add CT",
    ...                "image_only (c)": "fusion: got image_only, needs images; fix: add CT", "x": "model: got y, gone"})
    ['- **concat, image_only** (c): needs images; fix: add CT', '- **x**: model: got y, gone']
    """
    reasons: dict[str, list[str]] = {}
    for n, text in errors.items():
        why = text.split(", ", 1)[1] if text.startswith("fusion: got ") and ", " in text else text
        reasons.setdefault(why, []).append(n)
    lines = []
    for why, names in reasons.items():
        suffix = shared_suffix(names)
        lines.append(f"- **{chrome.md(', '.join(n.removesuffix(suffix) for n in names))}**{chrome.md(suffix)}: {chrome.md(why)}")
    return lines


def comparison_shown(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison ``table`` (one ``metrics_row`` per model) as shown: the fusion column only where some model's
    name is not its fusion's (a model trained here), subjects / events only where they differ between the models
    (the caption above the table names them otherwise), and the td-AUC of every horizon in one column, so that the
    table fits a 1366-pixel laptop screen beside the sidebar (its IBS was cut mid-number). The CSV keeps every
    column.

    >>> t = pd.DataFrame([metrics_row("concat", {"c_index": 0.7, "td_auc": {30: 0.71, 365: None, 1825: 0.69}})])
    >>> list(comparison_shown(t).columns), comparison_shown(t).iloc[0, 3]
    (['model', 'C-index [95% CI]', 'Uno C [95% CI]', 'td-AUC 30 d / 1 y / 5 y', 'IBS [95% CI]'], '0.710 / n/a / 0.690')
    """
    if (table["model"] == table["fusion"]).all():
        table = table.drop(columns=["fusion"])
    if table["n / events"].nunique() == 1:
        table = table.drop(columns=["n / events"])
    td = [f"td-AUC {horizons.HORIZON_LABELS[h]}" for h in horizons.HORIZONS]
    if all(c in table.columns for c in td):
        merged = table[td].astype(str).agg(" / ".join, axis=1)
        at = list(table.columns).index(td[0])
        table = table.drop(columns=td)
        table.insert(at, "td-AUC " + " / ".join(horizons.horizon_label(h, short=True) for h in horizons.HORIZONS), merged)
    return table


def gain_text(paired: dict, names: dict[str, str] | None = None) -> str:
    """The paired comparison of the best fusion with the best single-modality model
    (``core.evaluation.paired_fusion_gain``) as one sentence; ``names`` shortens the model names."""
    from core.evaluate import tie_note

    names = names or {}
    ci = f"95 % CI {paired['ci'][0]:+.3f} to {paired['ci'][1]:+.3f}, " if paired.get("ci") else ""
    return (f"Best fusion **{names.get(paired['fusion'], paired['fusion'])}** against the best single-modality model "
            f"**{names.get(paired['unimodal'], paired['unimodal'])}** on the same {paired['n']} subjects: "
            f"C-index {paired['delta_c']:+.3f} ({ci}paired bootstrap, p = {paired['p_value']:.2g})"
            + (f"; {tie}." if (tie := tie_note(paired.get("tied"))) else "."))


def show_comparison(results: dict[str, dict], current: str, key: str, filename: str,
                    label: str = "Download the table (CSV)", paired: dict | None = None) -> None:
    """Several models on one evaluation: the forest plot of their C-index and integrated Brier score (the model
    in use, ``current``, coloured), the paired comparison of the best fusion with the best single-modality model
    when given (``paired``) and the table (one model: neither, its own metrics follow), then the CSV; a model whose
    evaluation failed is named with its error."""
    failed = failure_lines({n: m["error"] for n, m in results.items() if "error" in m})
    if failed:  # one notice for all of them (a cohort without CT stops every strategy that reads one)
        st.warning("Not in the comparison:\n" + "\n".join(failed), icon=":material/warning:")
    ok = {n: m for n, m in results.items() if "error" not in m}
    if not ok:
        return
    table = pd.DataFrame([metrics_row(n, m) for n, m in ok.items()])
    if len(ok) > 1:
        suffix = shared_suffix(list(ok))  # " (your cohort, 27 Nov 04:51)": said once in the caption, not per row
        short = {n: n.removesuffix(suffix) for n in ok}
        st.plotly_chart(F.model_comparison_figure({short[n]: m for n, m in ok.items()},
                                                  current=short[current] if current in ok else None),
                        width="stretch", key=f"{key}_forest", config=chrome.PLOTLY_CONFIG)
        counts = {f"{m.get('n')} subjects ({m.get('events')} events)" for m in ok.values()}
        st.caption(f"{f'Each name ends in {suffix.strip()}, left out here. ' if suffix else ''}"
                   f"{'Every model on the same ' + next(iter(counts)) + '. ' if len(counts) == 1 else ''}"
                   f"Diamonds: each model's value; bars: its 95 % bootstrap interval"
                   f"{f'; the model in use ({current}) in colour' if current in ok else ''}. The intervals are each model's "
                   "own, not of the difference between two models: bars that overlap do not show that two models are "
                   "alike; the paired comparison of the same subjects tells whether they differ."
                   + ("" if len(spans := {metric_spans(m) for m in ok.values()}) != 1 or not next(iter(spans)) else
                      f" {next(iter(spans))[0].upper() + next(iter(spans))[1:]}."))
        if paired:
            st.markdown(gain_text(paired, short))
        shown = table.assign(model=table["model"].map(short))
        st.dataframe(comparison_shown(shown), hide_index=True, width="stretch", placeholder=NOT_AVAILABLE,
                     column_config={"model": st.column_config.TextColumn(width=220)})  # room for a trained model's name
    st.download_button(label, table.to_csv(index=False).encode(), filename, mime="text/csv", key=f"{key}_csv")


def subgroup_rows(sub: dict) -> list[dict]:
    from core.evaluate.subgroups import readable_label

    rows = []
    labels = [str(g["label"]) for g in sub.get("groups", [])]
    for g in sub.get("groups", []):
        # the group's label and the column's name come from the user's cohort: no formula in the CSV download
        row = {chrome.sheet_cell(str(sub.get("column", "group"))): chrome.sheet_cell(readable_label(str(g["label"]), labels)),
               "n / events": f"{g['n']} / {g['events']}",
               "C-index [95% CI]": ci_text(g.get("c_index"), g.get("c_index_ci"))}
        for h in horizons.HORIZONS:
            cal = horizons.at_horizon(g.get("calibration"), h)  # read back from JSON, the horizons are text
            row[f"{horizons.HORIZON_LABELS[h]} (pred. / obs.)"] = (
                NOT_AVAILABLE if not cal or cal.get("observed") is None
                else f"{cal['predicted']:.2f} / {cal['observed']:.2f}")
        rows.append(row)
    return rows


def show_subgroups(sub: dict, overall_c: float | None, key: str) -> None:
    """One model by subgroup: the forest plot (C-index; predicted against observed risk at 1 year, or the first
    horizon the groups' follow-up reaches) above the table of every horizon."""
    from core.evaluate.subgroups import readable_label

    groups = sub.get("groups", [])
    reached = [h for h in horizons.HORIZONS
               if any(horizons.at_horizon(g.get("calibration"), h) for g in groups)]
    labels = [str(g["label"]) for g in groups]
    if groups:
        horizon = 365 if 365 in reached else (reached[0] if reached else 365)
        fig = F.subgroup_figure(groups, [readable_label(v, labels) for v in labels], horizon, overall_c=overall_c)
        st.plotly_chart(fig, width="stretch", key=f"{key}_subgroups", config=chrome.PLOTLY_CONFIG)
    st.dataframe(pd.DataFrame(subgroup_rows(sub)), hide_index=True, width="stretch", placeholder=NOT_AVAILABLE)
    st.caption("Per group: the C-index with its 95 % bootstrap interval (dashed: all subjects together), and at each "
               "horizon the mean predicted risk beside the observed risk (1 - Kaplan-Meier of the group, with its 95 % "
               "interval in the plot). Small groups have wide intervals.")
    notes = [f"{chrome.md(readable_label(str(g['label']), labels))}: {chrome.md(g['note'])}" for g in groups if g.get("note")]
    if notes:
        st.caption("  \n".join(notes))


def data_notes(result: dict) -> None:
    """A training result's notes on what the cohort left out of what the model read (also in its model card); one
    that warns of a possible leak (``core.cohort_notes.is_leak_note``) as a warning."""
    from core.cohort_notes import is_leak_note

    for note in result.get("data_notes") or []:
        if is_leak_note(note):
            st.warning(chrome.md(note) + ".", icon=":material/warning:")
        else:
            st.info(chrome.md(note) + ".", icon=":material/info:")


def own_subgroups(name: str, path: Path, cohort_dir: Path, overall_c: float | None) -> None:
    """A model of the user's own cohort by subgroup of a column of that cohort (sex, age, site...): C-index and
    calibration per group of its test split, computed as a background job (every test patient predicted again)."""
    from core import runtime
    from core.app.background import evaluate_job
    from core.evaluation import model_fingerprint
    from pages import _cohort_cases, _jobs

    cols = _cohort_cases.columns(cohort_dir)
    st.markdown("**Subgroups**")
    if not cols:
        st.caption("Your cohort has no column to group its patients by (cohort.csv holds only its outcomes and "
                   "split, and it has no features.csv); add one (sex, age, site) to cohort.csv to see the model by group.")
        return
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    st.session_state.setdefault("own_subgroup_column", next((c for c in ("sex_female", "sex", "age", "site")
                                                             if c in cols), cols[0]))
    column = c1.selectbox("Group the test patients by", cols, key="own_subgroup_column",
                          help="A column of your cohort's cohort.csv or features.csv; numbers with many values are cut "
                               "into quantile bands. Every test patient is predicted again (a background job).")
    key = f"subgroups:{path}@{model_fingerprint(path)}:{column}"
    job = _jobs.find(key)
    ended = job is not None and job.state in ("failed", "cancelled")
    if (job is None or ended) and c2.button("Compute again" if ended else "Compute", key="own_subgroup_go",
                                            icon=":material/group:", width="stretch"):
        job = _jobs.submit(f"Subgroups of {name} by {column}", evaluate_job, {name: (str(path), str(cohort_dir), None, 0.0)},
                           runtime.device_name(), column, key=key, heavy=True, fresh=True)
        st.rerun()  # drawn again without the button, with the job's progress
    if job is not None and job.active:
        _jobs.show(job)
    elif job is not None and _jobs.outcome(job):
        result = job.result[name]
        if "error" in result:
            st.error(f"{chrome.md(name)}: {chrome.md(result['error'])}")
        else:
            show_subgroups(result["subgroups"], overall_c, key="model")
