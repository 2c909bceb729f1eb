"""Cohort & models: the test patients a model orders worst, each opened in Case review with one click.

A model's C-index says how often it orders two patients right; it does not say which patients it gets wrong. Here
each test patient's share of the comparable pairs it is in that the model's risk orders right
(``core.evaluate.patient_pairs``: Harrell's C patient by patient) picks the ten worst-ordered ones, typically an early
event the model ranked low or a long survivor it ranked high, for a clinician to look at their CT and timeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from pages import _cohort_cases
from pages import _state as K
from pages._case_store import DEMO

SHOWN = 10  # patients listed
MIN_PAIRS = 5  # a patient in fewer comparable pairs says too little about the model (its share is 0, 1/2 or 1)


@st.cache_data(show_spinner=False, max_entries=16)
def _outcomes(root: str, stamp: float) -> pd.DataFrame:
    """(subject id, time, event) of a cohort's rows (``_cohort_cases.read_table``)."""
    table = _cohort_cases.read_table(root)
    return pd.DataFrame({"subject_id": table["subject_id"].astype(str), "time": table["time"].astype(float),
                         "event": table["event"].astype(int)}).drop_duplicates("subject_id").set_index("subject_id")


def patient_pairs(metrics: dict, cohort_dir: Path | None) -> pd.DataFrame | None:
    """Every evaluated patient, worst-ordered first (``core.evaluate.patient_pairs.patient_table``); None when the
    evaluation kept no patient's risk or has no event. The outcomes are the evaluation's own when it kept them (an
    external validation, whose cohort is removed after it), else read from ``cohort_dir``'s cohort.csv."""
    from core.evaluate.patient_pairs import patient_table

    kept = metrics.get("subject_risk") or {}
    if not kept.get("ids"):
        return None
    frame = pd.DataFrame({"subject_id": [str(i) for i in kept["ids"]], "risk": kept["risk"]})
    if "time" in kept and "event" in kept:
        frame = frame.assign(time=kept["time"], event=kept["event"])
    elif cohort_dir is not None:
        csv = Path(cohort_dir) / "cohort.csv"
        outcomes = _outcomes(str(cohort_dir), csv.stat().st_mtime if csv.exists() else 0.0)
        frame = frame[frame["subject_id"].isin(outcomes.index)].join(outcomes, on="subject_id")
    else:
        return None
    if len(frame) < 2 or not frame["event"].astype(bool).any():
        return None
    return patient_table(frame["subject_id"].tolist(), frame["time"].to_numpy(), frame["event"].to_numpy(),
                         frame["risk"].to_numpy())


def worst_ordered(metrics: dict, cohort_dir: Path | None) -> pd.DataFrame | None:
    """The :data:`SHOWN` patients of :func:`patient_pairs` in at least :data:`MIN_PAIRS` comparable pairs whose pairs
    the model orders right least often; None when there are none."""
    frame = patient_pairs(metrics, cohort_dir)
    frame = None if frame is None else frame[frame["comparable"] >= MIN_PAIRS]
    return None if frame is None or frame.empty else frame.head(SHOWN)


def _outcome_text(time: float, event: int) -> str:
    return f"{'event' if event else 'censored'} at day {time:,.0f}"


def show(metrics: dict, cohort_dir: Path | None, model: str, what: str = "test split", key: str = "worst") -> None:
    """The section: the table, and a picker that opens one of its patients in Case review (the demo's patients, or
    those of the user's own cohort; nothing to open for another cohort, nor without ``cohort_dir``: an external
    validation's cohort is removed after it), where :func:`strip` steps through the list. ``key``: the prefix of
    its widgets' keys (two lists can be drawn in one run of a page with tabs)."""
    every = patient_pairs(metrics, cohort_dir)
    worst = worst_ordered(metrics, cohort_dir)
    if every is None or worst is None:
        return
    from core.app.demo_install import demo_paths

    own = _cohort_cases.of_folder(cohort_dir) if cohort_dir is not None else None
    source = _cohort_cases.source_of(own.name) if own is not None else \
        DEMO if cohort_dir is not None and Path(cohort_dir).resolve() == Path(demo_paths().cohort).resolve() else None
    st.markdown(f"**The {len(worst)} patients of the {what} the model orders worst**")
    from pages._chrome import sheet_cell  # an id from the user's cohort: no spreadsheet formula in a download

    st.dataframe(pd.DataFrame({
        "patient": [sheet_cell(i) for i in worst["subject_id"]],
        "outcome": [_outcome_text(t, e) for t, e in zip(worst["time"], worst["event"])],
        "model's risk rank": [f"{r:,} of {n:,}" for r, n in zip(worst["rank"], worst["n"])],
        "pairs ordered right": [f"{s:.0%} of {c:,}" for s, c in zip(worst["share"], worst["comparable"])],
    }), hide_index=True, width="stretch")
    st.caption("Harrell's C patient by patient: of the comparable pairs a patient is in (one of the two had the event "
               "first), the share the model's risk orders right; a rank of 1 is the highest risk. These are its "
               "worst-ordered patients with at least 5 pairs: typically an early event ranked low or a long survivor "
               "ranked high. Summed over every patient, the pairs ordered right over all pairs give the C-index."
               + ("" if cohort_dir is not None else " The uploaded cohort was removed after the evaluation, so they "
                  "are not opened here: look them up in your own records by their subject id."))
    table = every.drop(columns=["n"]).assign(subject_id=[sheet_cell(i) for i in every["subject_id"]])
    st.download_button(f"Every patient of the {what}: rank and pairs (CSV)", table.to_csv(index=False).encode(),
                       f"{what.replace(' ', '_')}_patient_pairs.csv", mime="text/csv", key=f"{key}_csv",
                       icon=":material/download:")
    if source is None:  # not a cohort Case review opens
        return
    ids: list[Any] = worst["subject_id"].tolist()
    notes = dict(zip(ids, (f"{_outcome_text(t, e)}, risk rank {r:,}" for t, e, r in
                           zip(worst["time"], worst["event"], worst["rank"]))))
    labels = {i: f"{i}: {notes[i]}" for i in ids}
    c1, c2 = st.container(key=f"stack_{key}_open").columns([3, 1], vertical_alignment="bottom")  # stacked when narrow
    picked = c1.selectbox("Open one in Case review", ids, format_func=labels.__getitem__, key=f"{key}_patient")
    if c2.button("Open in Case review", icon=":material/person_search:", key=f"{key}_open", width="stretch"):
        st.session_state[K.WORST_LIST] = {"model": model, "what": what, "cases": [(source, str(i)) for i in ids],
                                          "notes": {str(i): notes[i] for i in ids}}
        _cohort_cases.open_in_review((source, str(picked)))


def strip(where: Any, case: tuple[str, str], model: str) -> None:
    """In Case review (in ``where``), on a patient of the worst-ordered list last opened from Cohort & models, for the
    model that list is of: which one it is, its outcome and rank, and buttons to the previous and next of the list."""
    kept = st.session_state.get(K.WORST_LIST)
    if not kept or kept["model"] != model or tuple(case) not in [tuple(c) for c in kept["cases"]]:
        return
    cases = [tuple(c) for c in kept["cases"]]
    i = cases.index(tuple(case))
    box = where.container(key="worst_strip", border=True)
    box.caption(f"Patient {i + 1} of the {len(cases)} of the {kept['what']} that {model} orders worst (Cohort & "
                f"models): {kept['notes'].get(case[1], '')}.")
    back, ahead = box.columns(2)
    back.button("Previous", key="worst_previous", icon=":material/arrow_back:", disabled=i == 0, width="stretch",
                on_click=_cohort_cases.set_case, args=(cases[i - 1],) if i else (cases[0],))
    ahead.button("Next", key="worst_next", icon=":material/arrow_forward:", disabled=i == len(cases) - 1,
                 width="stretch", on_click=_cohort_cases.set_case, args=(cases[min(i + 1, len(cases) - 1)],))
