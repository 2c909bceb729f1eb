"""An uploaded cohort zip at a glance, shown as soon as it is uploaded (``core.app.cohort_preview``): its patients,
events and splits, whom each modality covers, the notes the trained model would carry, and what would stop the job
(the button that queues it waits until that is fixed). Not a page itself."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.app.cohort_preview import CohortPreview, preview_cohort_zip
from pages import _chrome as chrome
from pages import _memo as memo
from pages import _metric_views as metric_views

#: the follow-up tile's help (its label is short: four tiles share a narrow page)
FOLLOW_UP_HELP = "The median follow-up of every patient, to the event or to the last contact (censored)."


def _read(upload: Any, for_training: bool) -> CohortPreview | str:
    """The preview of ``upload`` (a Streamlit UploadedFile), or the one-line reason the job would stop at once;
    kept for this upload (its ``file_id``), so that the page's reruns do not read the zip again."""

    def compute() -> CohortPreview | str:
        try:
            return preview_cohort_zip(upload.getvalue(), for_training=for_training)
        except (ValueError, FileNotFoundError) as exc:  # InputError: what the job would stop with
            return chrome.one_line(exc)

    with st.spinner("Reading the cohort..."):
        return memo.memo(("cohort_preview", upload.file_id, for_training), compute)


def _counts(p: CohortPreview, splits: bool) -> str:
    """The splits (for a training: a validation reads every patient) and the modalities in one caption."""
    parts = [f"Splits: {', '.join(f'{k} {v}' for k, v in p.splits.items() if v)}"
             + (" (drawn at random by event, 60/20/20: add a split column to choose them)" if p.drawn else "")] if splits else []
    parts.append(f"a CT study for {p.studies} of {p.subjects} patients" if p.studies else "no CT studies")
    if p.timeline_subjects is not None:
        parts.append(f"a timeline for {p.timeline_subjects} ({p.timeline_events:,} events)")
    if p.feature_columns is not None:
        parts.append(f"features.csv: {p.feature_columns} columns")
    parts += [f"{stem.replace('_', ' ')}" for stem in p.embeddings]
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def show(upload: Any, *, for_training: bool, what: str) -> bool:
    """Show what the uploaded cohort zip gives a model (``what``: "trained on" or "validated on", for the error);
    True when nothing found stops its job."""
    read = _read(upload, for_training)
    if isinstance(read, str):
        st.error(f"This cohort cannot be {what} as it is: {read}", icon=":material/error:")
        return False
    with st.container(border=True, key=f"cohort_preview_{'train' if for_training else 'validate'}"):
        cols = st.columns(4)
        cols[0].metric("Patients", f"{read.subjects:,}")
        cols[1].metric("Events", f"{read.events:,}")
        cols[2].metric("Censored", f"{read.subjects - read.events:,}")
        cols[3].metric("Follow-up", "n/a" if read.median_follow_up_days is None
                       else f"{read.median_follow_up_days:.0f} d", help=FOLLOW_UP_HELP)
        st.caption(_counts(read, for_training))
        for line in read.blocking:
            st.error(chrome.md(line) + ".", icon=":material/error:")
        metric_views.data_notes({"data_notes": list(read.notes)})
    return not read.blocking
