"""Upload's clinical values: a case's curated features (age, sex, last lab results) entered by hand or taken from a
features table, checked against the selected model (not a page itself).

The values are named as a cohort's features.csv columns: models trained with features.csv read them
(``core.inputs.ehr_arrays``); a blank value is read as missing (the training mean). Only the columns some model on
offer reads are kept from a table (not an MRN or a postcode column). Nothing is stored here: the Upload page saves the
values with the case (``core.app.cases``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.app import cases as saved
from core.app import uploads
from core.ehr_read import renamed_columns
from core.feature_profile import training_text
from core.io.features import timeline_demographics, unreadable_note
from pages import _chrome as chrome
from pages import _model_views as views
from pages import _state as K


def read_table(upload: Any, state: dict) -> None:
    """Read an uploaded features table into ``state`` ("table", "name", "error"), replacing the one before; a text
    column holding a model column's categories (sex F / M for sex_female) is read as that column."""
    state.clear()
    state["name"] = uploads.upload_label([upload.name])
    try:
        table = uploads.read_features_bytes(upload.getvalue(), upload.name, names=sorted(read_by_any_model()))
        state["table"], state["error"] = table, ""
    except ValueError as exc:
        state["table"], state["error"] = None, chrome.one_line(exc)


def read_by_any_model() -> set[str]:
    """The curated features that any model on offer reads (the demo models and this user's own)."""
    names: set[str] = set()
    for name in views.available_models():
        with chrome.core_errors(stop=False):
            names.update(views.lazy_model(name).config.ehr.curated_features)
    return names


def section(nonce: int, subject_hint: str | None, saved_values: dict[str, float], events: pd.DataFrame | None = None,
            index_time: pd.Timestamp | None = None, header: dict[str, str] | None = None) -> dict[str, float] | None:
    """Draw the clinical values' inputs and return the values entered ({} when all are blank; None when there is
    nothing to enter: no model, or one that reads no curated features and no table or saved values).

    ``subject_hint``: the timeline's subject, picked first in a features table that has it; ``saved_values``: the
    values already saved with the case they will be added to (shown for editing); ``events`` and ``index_time``: the
    uploaded timeline's events of that subject, whose age (MEDS_BIRTH) and sex (GENDER//F) fill the table first;
    ``header``: the uploaded study's clinical attributes as read before de-identification (PatientAge, PatientSex),
    offered where the timeline gives none."""
    state: dict = st.session_state.setdefault(K.FEATURES_STATE, {})
    st.file_uploader("Fill from a features table (CSV, Excel .xlsx or parquet: subject_id and one column per value, "
                     "as a cohort's features.csv)", type=["csv", "xlsx", "xls", "parquet"], key=f"features_file_{nonce}",
                     help="Only the chosen subject's row is used; its subject id is not stored.")
    if state.get("error"):
        st.error(f"Features table not loaded: {state['error']}", icon=":material/error:")
    model_name, model = views.current_model_name(), None
    with chrome.core_errors(stop=False):
        model = views.current_lazy_model()  # its config only: no network is loaded for this section
    if model is None:
        return None
    tabular = dict(model.config.ehr.tabular or {})
    names = list(model.config.ehr.curated_features)
    read = read_by_any_model()
    table: pd.DataFrame | None = state.get("table")
    row: dict[str, float] = {}
    subject = ""
    if table is not None:
        head = st.columns([5, 1], vertical_alignment="center")
        subjects = sorted(table.index.astype(str).unique().tolist())
        head[0].markdown(f"In memory, not saved yet: **{chrome.md(state['name'])}** ({len(subjects)} subjects, {table.shape[1]} "
                         "columns).")
        if head[1].button("Discard", key="discard_features", icon=":material/close:"):
            state.clear()
            st.rerun()
        first = subjects.index(subject_hint) if subject_hint in subjects else 0
        subject = st.selectbox(f"Subject ({len(subjects)} in the table; its values fill the table below)", subjects,
                               index=first, key=f"features_subject_{nonce}")
        if table.attrs.get("other_sheets"):  # a workbook: its first sheet with rows is read
            st.caption(f"Sheet '{chrome.md(table.attrs['sheet'])}' read; the workbook's {table.attrs['other_sheets']} other "
                       "sheet(s) with rows are not.")
        unreadable = unreadable_note(table, "The features table")
        if unreadable:  # "<0.5", "n.d." in a number column: left blank below
            st.warning(chrome.md(unreadable) + ".", icon=":material/warning:")
        text = table.attrs.get("text_columns") or []
        if text:  # sex as F / M, a comment: no model reads text
            st.caption(f"Text column(s) not read: {chrome.md(', '.join(text[:4]))}{', ...' if len(text) > 4 else ''} (models read "
                       "numbers: one column per category, such as sex_female 1 / 0).")
        categories = table.attrs.get("categories") or {}
        if categories:  # sex F / M read as sex_female 1 / 0
            st.caption("Read from text: " + chrome.md(", ".join(f"{c} as {n} (1 / 0)" for n, c in categories.items())) + ".")
        renames = renamed_columns(names + sorted(read - set(names)), list(table.columns))
        if renames:  # "Age" for age: the same value under the models' own name
            st.caption("Read under the models' names: " + chrome.md(", ".join(f"{c} as {n}" for c, n in list(renames.items())[:6]))
                       + (", ..." if len(renames) > 6 else "") + ".")
        picked = table.loc[[subject]].iloc[0].rename(index=renames)
        row = {str(k): float(v) for k, v in picked.items() if pd.notna(v)}
        columns = [str(renames.get(c, c)) for c in table.columns]
    else:
        columns = list(saved_values)
    rows = names + [c for c in columns if c not in names and (c in read or c in saved_values)]
    dropped = [c for c in columns if c not in rows]
    if dropped:  # a table's other columns (an MRN, a postcode) are never stored: no model here reads them
        st.caption(f"{len(dropped)} column(s) of the table that no model here reads are not kept: "
                   f"{chrome.md(', '.join(dropped[:3]))}{', ...' if len(dropped) > 3 else ''}.")
    if not rows:
        st.caption(f"**{model_name}** reads no curated features. Values from a features table are kept with the case "
                   "for the models that do.")
        return None
    from_timeline = {k: v for k, v in timeline_demographics(events, index_time, rows).items()
                     if k not in saved_values and k not in row}
    if from_timeline:  # MEDS conventions, shown and editable: a site may define age or sex otherwise
        st.caption(f"From the timeline: {', '.join(f'{k} {v:g}' for k, v in from_timeline.items())} (age at the index "
                   "date from MEDS_BIRTH, sex from GENDER//F or //M). Change them if your model reads them otherwise.")
    from_header = {k: v for k, v in uploads.header_demographics(header or {}, rows).items()
                   if k not in saved_values and k not in row and k not in from_timeline}
    if from_header:  # the DICOM header's age and sex: de-identification removes them from the stored study
        st.caption(f"From the study's DICOM header: {', '.join(f'{k} {v:g}' for k, v in from_header.items())} "
                   "(PatientAge and PatientSex as uploaded; de-identification removes them from the stored study). "
                   "Change them if they are wrong.")
    # a table's row, then the saved values, then the timeline, then the study's header
    start = {**from_header, **from_timeline, **saved_values, **row}
    frame = pd.DataFrame({"value": [start.get(n) for n in rows], "training": [training_text(tabular, n) for n in rows]},
                         index=pd.Index(rows, name="clinical value"), dtype=object)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    st.caption(f"**{model_name}** reads {len(names)} curated features" + (" (first in the table; "
               "'training' is their mean ± SD in its training data)" if names else "")
               + ". Leave a value blank when it is unknown: it is read as missing (the training average).")
    edited = st.data_editor(frame, key=f"features_editor_{nonce}_{subject}_{subject_hint}_{index_time}_{model_name}",
                            width="stretch",
                            height=min(36 * (len(rows) + 1) + 4, 760),  # every row in sight up to about 20
                            disabled=["training"], num_rows="fixed",
                            placeholder="",  # a blank cell is a missing value, as the caption says (not "None")
                            column_config={"value": st.column_config.NumberColumn("value", format="%.4g"),
                                           "training": st.column_config.TextColumn("training (mean ± SD)")})
    values: dict[str, float] = {}
    with chrome.core_errors(stop=False, what="Clinical values not accepted: "):
        values = saved.check_case_features(dict(zip(edited.index.astype(str), edited["value"].tolist())))
        from core.ehr_read import case_feature_read

        for note in case_feature_read(model, values):  # values the model reads as missing, or far from training
            st.warning(f"**{model_name}**: {chrome.md(note)}", icon=":material/warning:")
    return values
