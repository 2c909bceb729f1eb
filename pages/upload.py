"""Upload: a CT study (DICOM files or zip, NIfTI) and/or a timeline (MEDS parquet or CSV).

Nothing here is cached across sessions: the upload lives in ``st.session_state``
and in this session's private temp folder, both gone when the session ends.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

import pandas as pd
import streamlit as st

from core import cohort as cohorts
from core import figures as F
from pages import _shared as ui
from pages import _state as K

ui.require_app_navigation()

STUDY_HELP = (
    "A zip of a DICOM series (or several files of one series), a single .dcm file, or a NIfTI file "
    "(.nii / .nii.gz). Studies must be de-identified; identifying DICOM attributes block the study "
    "until you de-identify it here."
)
TIMELINE_TYPES = ["parquet", "csv"]

st.title("Upload a case")
st.caption(
    "Files are validated, kept in a private temporary folder of this browser session and deleted when the "
    "session ends. Nothing is shared with other users."
)


def _study_payload(files: list) -> tuple[bytes, str]:
    """One upload, or several DICOM files packed into an in-memory zip (never extracted to disk)."""
    if len(files) == 1:
        return files[0].getvalue(), files[0].name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, f in enumerate(files):
            # entry names are labels only; keep the base name, never a path
            zf.writestr(f"{i:05d}_{PurePosixPath(f.name.replace(chr(92), '/')).name}", f.getvalue())
    return buf.getvalue(), "series.zip"


def _suffix(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return PurePosixPath(lower).suffix or ".dcm"


state: dict = st.session_state.setdefault(K.UPLOAD_STATE, {})

# ---------------------------------------------------------------------- study
st.subheader("1. CT study")
nonce = int(st.session_state.get(K.STUDY_NONCE, 0))
files = st.file_uploader("CT study", accept_multiple_files=True, help=STUDY_HELP, key=f"study_files_{nonce}")
token = tuple((f.name, f.size) for f in files) if files else ()
if token != state.get("token"):
    state.clear()
    state["token"] = token
    if files:
        data, name = _study_payload(files)
        state["name"], state["suffix"] = name, _suffix(name)
        stored = ui.workspace().fresh_dir("study") / ("original" + state["suffix"])
        stored.write_bytes(data)
        state["path"] = str(stored)
        with ui.core_errors(stop=False, what="Study not loaded: "):
            from core.io.study import load_study_bytes

            state["volume"] = load_study_bytes(data, name)
            state["deidentified"] = False

volume = state.get("volume")
if files and volume is None:
    st.info("Fix the file and upload it again.")
if volume is not None and volume.phi and not state.get("deidentified"):
    st.error(
        f"**Blocked: this study still carries identifying DICOM attributes** ({len(volume.phi)}). "
        "It is not shown or used until it is de-identified (DICOM PS3.15 basic profile: identifiers removed, "
        "UIDs replaced, dates shifted, private tags removed; pixel data unchanged).",
        icon=":material/block:",
    )
    st.dataframe(pd.DataFrame({"attribute": volume.phi}), hide_index=True, width="content")
    b1, b2 = st.columns([1, 3])
    if b1.button("De-identify and continue", type="primary", key="deid_button"):
        with st.spinner("De-identifying..."), ui.core_errors(stop=False, what="De-identification failed: "):
            from core.deid import deidentify_bytes
            from core.io.study import load_study_bytes

            with open(state["path"], "rb") as fh:
                raw = fh.read()
            clean, report = deidentify_bytes(raw, state["name"])
            cleaned = ui.workspace().fresh_dir("study") / "deidentified.zip"
            cleaned.write_bytes(clean)
            state.update(path=str(cleaned), name="deidentified.zip", suffix=".zip")
            vol = load_study_bytes(clean, "deidentified.zip")
            state["volume"], state["deidentified"], state["deid_report"] = vol, True, report
            st.rerun()
    if b2.button("Discard this study", key="discard_button"):
        state.clear()
        st.session_state[K.STUDY_NONCE] = nonce + 1  # a fresh, empty uploader
        st.rerun()
    volume = None
elif volume is not None:
    if state.get("deidentified"):
        st.success(
            "De-identified: " + (state["deid_report"].summary() if state.get("deid_report") else "identifying attributes removed.")
            + (f" Remaining flags: {', '.join(volume.phi)}." if volume.phi else ""),
            icon=":material/verified_user:",
        )
    if volume.n_series > 1:
        keys = [s.key for s in volume.series]
        info = {s.key: s for s in volume.series}
        choice = st.selectbox(
            f"Series ({volume.n_series} in this study; the largest is loaded by default)", keys,
            index=keys.index(state.get("series", keys[0])) if state.get("series", keys[0]) in keys else 0,
            format_func=lambda k: f"{info[k].modality} series, {info[k].n_instances} images, "
            f"{info[k].rows} x {info[k].cols}",
            key="series_choice",
        )
        if choice != state.get("series") and choice != volume.meta.get("series_key"):
            with ui.core_errors(stop=False, what="Series not loaded: "):
                from core.io.study import load_study_bytes

                with open(state["path"], "rb") as fh:
                    state["volume"] = load_study_bytes(fh.read(), state["name"], series=choice)
                state["series"] = choice
                st.rerun()
    c1, c2 = st.columns([1, 1.4])
    with c1:
        z = volume.shape[0] // 2
        fig = F.slice_overlay(volume.hu[z], None, window=(-160, 240), spacing_mm=volume.spacing_mm,
                              title=f"middle axial slice ({z + 1}/{volume.shape[0]})")
        fig.update_layout(width=None, height=340)
        st.plotly_chart(fig, width="stretch", key="upload_preview")
    with c2:
        hu = volume.hu
        st.markdown(
            f"- format: **{volume.format}**, modality **{volume.modality}**\n"
            f"- shape: **{volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]}** (slices, rows, cols)\n"
            f"- spacing: **{' x '.join(f'{s:g}' for s in volume.spacing_mm)} mm**\n"
            f"- HU range: **{float(hu.min()):.0f} .. {float(hu.max()):.0f}** (mean {float(hu.mean()):.0f})\n"
            f"- series in the study: **{volume.n_series}**"
        )
        for w in volume.warnings:
            st.warning(w, icon=":material/warning:")
        from core.preprocess.lung import lung_coverage_warning

        coverage = ui.memo(("upload_coverage", state.get("name"), state.get("series"), volume.shape),
                           lambda: lung_coverage_warning(volume.hu, volume.spacing_mm))
        if coverage:
            st.warning(coverage, icon=":material/warning:")

# ------------------------------------------------------------------- timeline
st.subheader("2. Timeline (optional)")
tl_file = st.file_uploader("MEDS timeline", type=TIMELINE_TYPES, key="timeline_file",
                           help="MEDS rows: subject_id, time, code, numeric_value (aliases such as value, "
                           "timestamp are accepted). Only events at or before the index date reach the model.")
tl_state: dict = st.session_state.setdefault(K.TIMELINE_STATE, {})
tl_token = (tl_file.name, tl_file.size) if tl_file else None
if tl_token != tl_state.get("token"):
    tl_state.clear()
    tl_state["token"] = tl_token
    if tl_file is not None:
        suffix = ".parquet" if tl_file.name.lower().endswith(".parquet") else ".csv"
        path = ui.workspace().fresh_dir("timeline") / ("timeline" + suffix)
        path.write_bytes(tl_file.getvalue())
        with ui.core_errors(stop=False, what="Timeline not loaded: "):
            from core.io.timeline import read_timeline

            frame = read_timeline(path)
            if frame.empty:
                raise ValueError("timeline: got 0 events, the file has no rows; fix: upload a file with MEDS rows")
            tl_state["frame"] = frame
events = None
index_time = None
frame = tl_state.get("frame")
if frame is not None:
    subjects = sorted(frame["subject_id"].unique().tolist())
    c1, c2 = st.columns(2)
    subject = c1.selectbox(f"Subject ({len(subjects)} in the file)", subjects, key="timeline_subject")
    events = frame[frame["subject_id"] == subject].sort_values("time", kind="stable")
    from core.io.timeline import OUTCOME_CODES, default_index_time

    study_date = volume.study_date if volume is not None else None
    default, source = default_index_time(events, study_date)
    date = c2.date_input("Index date (scan date): events after it are not used",
                         value=(default or pd.Timestamp(events["time"].max())).date(), key="index_date")
    index_time = pd.Timestamp(date) + pd.Timedelta(hours=23, minutes=59, seconds=59)
    before = int((events["time"] <= index_time).sum())
    st.caption(f"{len(events)} events for this subject, {before} at or before the index date, "
               f"{events['code'].nunique()} distinct codes. Default index date: {source}.")
    outcomes = events[events["code"].isin(OUTCOME_CODES)]
    if len(outcomes):
        st.warning(f"This timeline records the outcome ({', '.join(sorted(set(outcomes['code'])))}). An outcome is "
                   "never a model input, whatever its date; events after the index date are not used either.",
                   icon=":material/info:")

# ---------------------------------------------------------------------- use it
st.subheader("3. Review")
ready = volume is not None or (events is not None and not events.empty)
if st.button("Use this case", type="primary", disabled=not ready, key="use_case"):
    with ui.core_errors(stop=False, what="Case not created: "):
        number = int(st.session_state.get(K.UPLOAD_COUNTER, 0)) + 1
        cohort = cohorts.uploaded_case_cohort(ui.workspace().fresh_dir("case"), volume=volume, events=events,
                                       index_time=index_time)
        st.session_state[K.UPLOAD_COUNTER] = number
        parts = (["CT"] if volume is not None else []) + (["timeline"] if events is not None else [])
        ui.audit("upload", "-".join(part.lower() for part in parts), case=number)
        st.session_state[K.UPLOADED_CASE] = {
            "cohort": cohort, "volume": volume, "events": events, "number": number,
            "study_path": state.get("path") if volume is not None else None,  # the (de-identified) file, for DICOM export
            "label": f"#{number}: {' + '.join(parts)}",
        }
        ui.forget("inputs")
        ui.forget("prediction")
        st.session_state[K.CASE] = (ui.UPLOADED, cohorts.UPLOAD_SUBJECT)
        st.switch_page("pages/case_review.py")
if not ready:
    st.caption("Upload a study or a timeline first.")
