"""Case review helpers shared with Export (not a page itself): the case's warnings, the strategies' risks, the
attribution methods' caveats and sanity results. The logic is ``core.app.case_warnings``; this module only
reads the session (models, the case, the chosen method)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.app import case_warnings as CW
from core.io.study_date import scan_date_note
from pages import _chrome as chrome
from pages import _cohort_cases
from pages import _model_views as views

SANITY_FILE = "sanity_checks.json"  # randomisation results run from the app, kept in the model folder


def observed_outcome(source: str, subject_id: str) -> tuple[float, int] | None:
    """``(days, event)`` of a demo patient or a patient of the user's cohort, as its cohort.csv records it (for a
    retrospective review: Case review marks it on the curve when asked); None for an uploaded case (no outcome) or a
    patient whose row has none."""
    import math

    if source == views.UPLOADED:
        return None
    table = views.case_cohort(source, subject_id).table
    if not {"time", "event"} <= set(table.columns):
        return None
    rows = table[table["subject_id"].astype(str) == str(subject_id)]
    if rows.empty:
        return None
    days, event = float(rows["time"].iloc[0]), float(rows["event"].iloc[0])
    return None if not (math.isfinite(days) and math.isfinite(event)) else (days, int(event))


@dataclass
class Strategies:
    """The models trained on the current model's cohort, on the case: curves of those that can score it, the reasons
    of those that cannot, and how many models of other cohorts were left out."""

    curves: dict[str, tuple[Any, Any, Any, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    flag: str | None = None
    other_cohorts: int = 0


def strategies(source: str, subject_id: str, current: str) -> Strategies:
    """The case under every strategy trained on the same cohort as ``current`` (the demo's models beside a demo
    model; the user's models of one cohort beside each other): a model trained on another population would differ
    for that reason, not for its strategy, and must not raise the disagreement flag."""
    out = Strategies()
    models = views.available_models()
    family = views.training_cohort(current)
    peers = [name for name in models if views.training_cohort(name) == family]
    out.other_cohorts = len(models) - len(peers)
    for name in peers:
        other = views.lazy_model(name)  # a cached prediction needs no model loaded
        p = views.case_prediction(other, source, subject_id)
        reason = CW.cannot_score_reason(name, *views.model_reads(other), p.modalities_used,
                                        views.withholds_ct(other, source, subject_id))
        if reason:
            out.skipped[name] = reason
        else:
            out.curves[name] = (p.times, p.survival, p.lower, p.upper)
    out.table = CW.strategy_risk_table({n: (c[0], c[1]) for n, c in out.curves.items()}, current=current)
    out.flag = CW.disagreement(out.table)
    return out


# short headers (a narrow column), apart from the page's "1-year risk" metrics above the table
STRATEGY_COLUMNS = {"risk 30 days": "30-d risk", "risk 1 year": "1-y risk", "risk 5 years": "5-y risk"}


def strategy_table_view(table: pd.DataFrame) -> Any:
    """The strategies' risk table as Case review shows it (a pandas Styler for ``st.table``): one column per risk,
    as percentages that do not break inside a cell on a narrow column ("past grid" where a model's time grid ends
    first), the model in use in bold, no index column. The 5-year survival is left out: it is 1 minus the 5-year
    risk beside it, and the page gives every number as a risk.

    >>> t = pd.DataFrame({"strategy": ["a", "b"], "current": [False, True], "risk 30 days": [0.1, float("nan")],
    ...                   "survival 5 years": [0.5, 0.25]})
    >>> v = strategy_table_view(t)
    >>> list(v.data.columns), v.data.iloc[0, 1], v.data.iloc[1, 1]
    (['strategy', '30-d risk'], '10.0\xa0%', 'past grid')
    """
    shown = table.drop(columns=["current", "survival 5 years"], errors="ignore").rename(columns=STRATEGY_COLUMNS)
    for c in shown.columns[1:]:
        shown[c] = ["past grid" if pd.isna(v) else f"{100 * v:.1f}\u00a0%" for v in shown[c]]
    bold = table["current"].to_numpy(dtype=bool)
    return (shown.style.apply(lambda row: ["font-weight: 700" if bold[row.name] else ""] * len(row), axis=1)
            .hide(axis="index"))


def method_sanity(model: Any) -> dict[str, CW.SanityResult]:
    """The randomisation results known for ``model``: its model card, then checks run from the app (newer)."""
    found = CW.sanity_from_card(getattr(model, "card", "") or "")
    path = Path(model.model_dir) / SANITY_FILE
    if path.is_file():
        for method, row in json.loads(path.read_text()).items():
            found[method] = CW.SanityResult(method, float(row["final_spearman"]), None, row.get("source", "this app"))
    return found


def run_sanity(ctx: Any, model: Any, inputs: Any, method: str, horizon: float) -> CW.SanityResult:
    """The background job: the cascading randomisation test of ``method`` on one case, saved in the model folder."""
    from core.sanity import cascading_randomization

    ctx.progress(0.05, f"randomising the layers of {Path(model.model_dir).name} one group at a time")
    table, _ = cascading_randomization(model, inputs, method, horizon)
    result = CW.sanity_from_table(method, table)
    path = Path(model.model_dir) / SANITY_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[method] = {"final_spearman": result.final_spearman, "source": "one case, run from the app"}
    path.write_text(json.dumps(saved, indent=1))
    ctx.progress(1.0, "done")
    return result


def timeline_notes(source: str, subject_id: str) -> list[str]:
    """What was removed from an uploaded timeline (outcomes, events after the index date)."""
    case = views.uploaded_case(subject_id) if source == views.UPLOADED else None
    if case is None:
        return []
    return CW.timeline_messages(case.get("events"), views.case_index_time(source, subject_id))


def scan_note(source: str, subject_id: str) -> str | None:
    """A CT taken after the index date or long before it (``core.io.study_date.scan_date_note``): an uploaded case's
    (kept with its dates and read with a timeline), or a patient of the user's cohort (its study's date against
    cohort.csv's index_time, as ``train`` names them)."""
    if _cohort_cases.is_cohort(source):
        volume = views.case_volume(source, subject_id)
        return scan_date_note(volume.study_date, views.case_index_time(source, subject_id)) if volume is not None else None
    case = views.uploaded_case(subject_id) if source == views.UPLOADED else None
    if case is None or case.get("volume") is None or case.get("events") is None:
        return None
    if getattr(case.get("info"), "deidentified", False):  # de-identified: its dates were shifted
        return None
    return scan_date_note(case["volume"].study_date, views.case_index_time(source, subject_id))


def prediction_warnings(model: Any, source: str, subject_id: str) -> list[str]:
    """What the model cannot read in this CT (``core.predict.image_read``: its training profile), worded for a CT
    withheld from the prediction or read on request."""
    return list(views.image_read(model, source, subject_id).details(views.read_ood(source, subject_id)))


def ehr_read_notes(model: Any, source: str, subject_id: str) -> list[str]:
    """What the model cannot read in the case's timeline (``core.ehr_read.timeline_read``: codes it was not trained
    on, values far from training) and, for an uploaded case, in its clinical values (``case_feature_read``)."""
    from core.ehr_read import case_feature_read, timeline_read

    notes = timeline_read(model, views.case_view(model, source, subject_id).events)
    case = views.uploaded_case(subject_id) if source == views.UPLOADED else None
    return notes + (case_feature_read(model, case["features"]) if case is not None else [])


def withheld_note(model_name: str, model: Any, source: str, subject_id: str) -> str | None:
    """The notice of a CT the model withholds, or reads only because the user asked (None when it reads the CT)."""
    return views.image_read(model, source, subject_id).note(model_name, views.read_ood(source, subject_id))


def case_warnings(model_name: str, model: Any, source: str, subject_id: str,
                  strategies_: Strategies | None = None) -> list[CW.CaseWarning]:
    """The one list of warnings the page shows and the report prints (same order, same text)."""
    pred = views.case_prediction(model, source, subject_id)
    volume = views.case_volume(source, subject_id)
    uses_image = "image" in pred.modalities_used
    method = chrome.method_setting(model)
    has_image, has_ehr = views.model_reads(model)
    withheld = withheld_note(model_name, model, source, subject_id) if has_image else None
    return CW.gather_case_warnings(
        model_name=model_name, has_image=has_image, has_ehr=has_ehr, modalities_used=pred.modalities_used,
        ct_present=volume is not None,
        coverage=None,  # the warnings below: the model's training profile, or the lung check without one
        prediction_warnings=prediction_warnings(model, source, subject_id) if uses_image or withheld else [],
        timeline=timeline_notes(source, subject_id),
        scan_date=scan_note(source, subject_id),
        codes=ehr_read_notes(model, source, subject_id),
        sanity=method_sanity(model).get(method) if uses_image else None,
        disagreement_flag=None if strategies_ is None else strategies_.flag,
        image_withheld=withheld,
        study=volume.warnings if volume is not None else (),
        features=model.config.ehr.curated_features,
    )


def show_warnings(items: list[CW.CaseWarning]) -> None:
    for w in items:
        st.warning(chrome.md(w.text), icon=":material/info:" if w.kind == "timeline" else ":material/warning:")
