"""Upload: a CT study (DICOM files or zip, NIfTI) and/or a timeline (MEDS parquet, CSV or an .xlsx sheet), kept as the user's cases.

Uploaded bytes are checked in memory (core.app.uploads: size and decompression caps, the PHI gate) and
nothing is written until the study has passed the gate (or was de-identified here, and any burned-in risk
acknowledged). A saved case lives in the signed-in user's own folder (core.app.cases) and stays until the
user deletes it; other users cannot list or open it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import figures as F
from core.app import cases as saved
from core.app import uploads
from core.app import workspace as workspaces
from core.io.contrast import describe as describe_contrast
from core.io.timeline import unreadable_values_note
from core.io.volume import series_labels
from pages import _cases
from pages import _chrome as chrome
from pages import _clinical
from pages import _model_views as views
from pages import _session as session
from pages import _state as K
from pages._memo import forget, memo

chrome.require_app_navigation()

STUDY_HELP = (
    "A zip of a DICOM series (or several files of one series), a single .dcm file, or a NIfTI file "
    "(.nii / .nii.gz). Identifying DICOM attributes or NIfTI header text block the study until you "
    "de-identify it here. Choosing files again replaces the study."
)
TIMELINE_TYPES = ["parquet", "csv", "xlsx"]
NEW_CASE = "__new__"

st.title("Upload a case", anchor=False)
st.caption(
    "Files are checked in memory (size, decompression, identifying data) before anything is stored. A saved case is "
    "kept in your own private folder on this server until you delete it; other users cannot see it."
)
user = _cases.user()
study_state: dict = st.session_state.setdefault(K.UPLOAD_STATE, {})
tl_state: dict = st.session_state.setdefault(K.TIMELINE_STATE, {})
nonce = int(st.session_state.get(K.STUDY_NONCE, 0))


def _read(what: str, fn: object) -> tuple[object | None, str]:
    """``fn()`` and "", or None and the one-line reason it failed (kept in the state: the uploader is emptied)."""
    try:
        return fn(), ""  # type: ignore[operator]
    except (ValueError, FileNotFoundError) as exc:
        return None, chrome.one_line(exc)
    except (OSError, EOFError, RuntimeError, KeyError, IndexError, TypeError) as exc:
        chrome.LOG.exception("unexpected failure reading an uploaded %s", what)
        return None, f"could not process the {what} ({type(exc).__name__}); check the file and try again"


# The uploaders' files are read before the uploaders are drawn and the uploaders are then drawn under a new
# key, empty: a new choice of files replaces the study (or timeline) instead of adding to it.
new_files = st.session_state.get(f"study_files_{nonce}") or []
new_timeline = st.session_state.get(f"timeline_file_{nonce}")
new_features = st.session_state.get(f"features_file_{nonce}")
if new_files:
    study_state.clear()
    st.session_state.pop(K.BURNED_IN_OK, None)  # an acknowledgement is for the study it was given for
    st.session_state.pop(K.CONTRAST_STATED, None)  # and so is a statement of its contrast
    with st.spinner(f"Reading {len(new_files)} file(s) and checking them for identifying data (nothing is stored)...",
                    show_time=True):
        study_state["checked"], study_state["error"] = _read(
            "study", lambda: uploads.check_study([(f.name, f.getvalue()) for f in new_files]))
if new_timeline is not None:
    from core.io.timeline import read_timeline_bytes

    tl_state.clear()
    with st.spinner("Reading the timeline...", show_time=True):
        tl_state["frame"], tl_state["error"] = _read(
            "timeline", lambda: read_timeline_bytes(new_timeline.getvalue(), new_timeline.name))
    if tl_state["frame"] is not None and tl_state["frame"].empty:
        tl_state["frame"], tl_state["error"] = None, "timeline: got 0 events, the file has no rows; fix: upload a file with MEDS rows"
    tl_state["name"] = uploads.upload_label([new_timeline.name])
if new_features is not None:
    _clinical.read_table(new_features, st.session_state.setdefault(K.FEATURES_STATE, {}))
if new_files or new_timeline is not None or new_features is not None:
    nonce += 1
    st.session_state[K.STUDY_NONCE] = nonce


# ---------------------------------------------------------------- your cases
st.subheader("Your cases", anchor=False)
infos = _cases.case_list()
used, quota = workspaces.user_usage(user), workspaces.user_quota_bytes()
st.caption(f"{len(infos)} saved case(s); {workspaces.human_bytes(used)} of your {workspaces.human_bytes(quota)} in use "
           "(with the decoded copies of CTs opened on Case review, which give way first when you save more).")
pending_delete = st.session_state.get(K.DELETE_CASE)
for info in infos:
    row = st.container(key=f"stack_case_{info.case_id}").columns([5, 2], vertical_alignment="center")
    buttons = row[1].container(horizontal=True)  # side by side, under the label on a narrow page (assets/style.css)
    row[0].markdown(f"**{info.label}** · {' + '.join(info.modalities)} · added {info.added[:16].replace('T', ' ')} UTC"
                    + (" · de-identified here" if info.deidentified else ""))
    if buttons.button("Review", key=f"review_{info.case_id}", icon=":material/radiology:"):
        _cases.open_in_review(info.case_id)
        st.switch_page("pages/case_review.py")
    if buttons.button("Delete", key=f"delete_{info.case_id}", icon=":material/delete:"):
        st.session_state[K.DELETE_CASE] = info.case_id
        st.rerun()
    if pending_delete == info.case_id:
        st.warning(f"Delete **{info.label}** and its files from this server? This cannot be undone.",
                   icon=":material/delete_forever:")
        confirm = st.container(horizontal=True)  # the two buttons side by side, each as wide as its label
        if confirm.button(f"Delete {info.label}", type="primary", key="confirm_delete"):
            with chrome.core_errors(stop=False, what="Not deleted: "):
                saved.delete_case(user, info.case_id)
                session.audit("upload", "delete", case=info.number)
                for prefix in ("inputs", "prediction", "saved-case"):
                    forget(prefix)
            st.session_state.pop(K.DELETE_CASE, None)
            st.rerun()
        if confirm.button("Keep it", key="cancel_delete"):
            st.session_state.pop(K.DELETE_CASE, None)
            st.rerun()
if not infos:
    st.caption("No saved cases yet: upload a study and/or a timeline below.")

# ---------------------------------------------------------------------- study
st.subheader("1. CT study", anchor=False)
max_mb = chrome.upload_mb()  # stated in the labels: Streamlit's drop-zone text ("1GB") is hidden (assets/style.css)
st.file_uploader(f"CT study (DICOM files or zip, NIfTI; up to {max_mb} MB per file)", accept_multiple_files=True,
                 help=STUDY_HELP, key=f"study_files_{nonce}")
st.caption(f"This server accepts files of up to {max_mb} MB (server.maxUploadSize). Several files of one series can "
           "be chosen at once; choosing again replaces them.")
checked: uploads.CheckedStudy | None = study_state.get("checked")
if study_state.get("error"):
    st.error(f"Study not loaded: {study_state['error']}", icon=":material/error:")
    st.info("Fix the file and choose it again. Nothing was stored.")
volume = None
stated = ""  # the contrast the user states for a study whose file records none
if checked is not None:
    head = st.container(key="stack_study_head").columns([5, 1], vertical_alignment="center")
    head[0].markdown(f"In memory, not saved yet: **{chrome.md(checked.name)}** ({checked.volume.format.upper()}, "
                     f"{workspaces.human_bytes(len(checked.data))}).")
    if head[1].button("Discard", key="discard_button", icon=":material/close:"):
        study_state.clear()
        st.session_state.pop(K.BURNED_IN_OK, None)
        st.session_state.pop(K.CONTRAST_STATED, None)
        st.rerun()
    findings = checked.findings()
    identifying = pd.DataFrame([{"attribute": f.attribute, "value": f.value} for f in findings if f.group == "identifying"])
    clinical = pd.DataFrame([{"attribute": f.attribute, "value": f.value} for f in findings if f.group != "identifying"])
    if checked.blocked:
        st.error(
            f"**Blocked: this study still carries identifying data** ({len(checked.identifying)} attributes). "
            "Nothing has been stored. It is not shown or used until it is de-identified (DICOM PS3.15 basic profile: "
            "identifiers removed, UIDs replaced, dates shifted, private tags removed; pixel data unchanged).",
            icon=":material/block:",
        )
        st.markdown("**Identifying** (values hidden; removed by de-identification): "
                    + ", ".join(f"`{name}`" for name in identifying["attribute"]))
        if len(clinical):
            st.markdown("**Clinical, not identifying on their own**: "
                        + ", ".join(f"{r.attribute} **{chrome.md(r.value)}**" for r in clinical.itertuples())
                        + " (the basic profile removes these as well when you de-identify).")
        if st.button("De-identify and continue", type="primary", key="deid_button"):
            with st.spinner("De-identifying in memory..."), chrome.core_errors(stop=False, what="De-identification failed: "):
                study_state["checked"] = uploads.deidentify(checked)
                st.rerun()
    else:
        volume = checked.volume
        if checked.deidentified:
            st.success(f"De-identified in memory: {checked.deid_summary}", icon=":material/verified_user:")
        if len(clinical):
            st.info("Clinical attributes kept as they are (not identifying on their own; the model does not read "
                    "them): " + ", ".join(f"{r.attribute} {chrome.md(r.value)}" for r in clinical.itertuples()) + ".",
                    icon=":material/info:")
        if volume.burned_in:
            st.warning("**Possible burned-in text** in the pixels: " + chrome.md("; ".join(volume.burned_in))
                       + ". Look at the images before you save: a name or ID drawn into a screenshot cannot be "
                       "removed by de-identification.", icon=":material/warning:")
            st.checkbox("I looked at the images: they show no names, IDs or dates", key=K.BURNED_IN_OK)
        if volume.n_series > 1:
            keys = [s.key for s in volume.series]
            labels = series_labels(volume.series)
            current = checked.series or volume.meta.get("series_key", keys[0])
            choice = st.selectbox(
                f"Series ({volume.n_series} in this study; the largest acquired CT series is loaded by default)", keys,
                index=keys.index(current) if current in keys else 0, format_func=labels.__getitem__,
                key="series_choice",
            )
            if choice != current:
                with chrome.core_errors(stop=False, what="Series not loaded: "):
                    study_state["checked"] = uploads.with_series(checked, choice)
                    st.rerun()
        recorded = describe_contrast(volume.meta)
        stated = "" if recorded else str(st.session_state.get(K.CONTRAST_STATED) or "")
        volume = saved.stated_contrast(volume, stated)  # what the model's checks below compare with its training
        c1, c2 = st.container(key="stack_study_preview").columns([1, 1.4])
        with c1:
            z = volume.shape[0] // 2
            fig = F.slice_overlay(volume.hu[z], None, window=(-160, 240), spacing_mm=volume.spacing_mm,
                                  title=f"middle axial slice ({z + 1}/{volume.shape[0]})")
            fig.update_layout(width=None, height=340)
            st.plotly_chart(fig, width="stretch", key="upload_preview", config=chrome.PLOTLY_CONFIG)
        with c2:
            hu = volume.hu
            st.markdown(
                f"- format: **{volume.format}**, modality **{chrome.md(volume.modality)}**\n"
                f"- shape: **{volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]}** (slices, rows, cols)\n"
                f"- spacing: **{' x '.join(f'{s:g}' for s in volume.spacing_mm)} mm**\n"
                f"- HU range: **{float(hu.min()):.0f} .. {float(hu.max()):.0f}** (mean {float(hu.mean()):.0f})\n"
                f"- series in the study: **{volume.n_series}**"
                + (f"\n- acquired **{recorded}**" if recorded else "")
            )
            if not recorded:
                st.selectbox("Contrast (this file records none)", ["", "yes", "no"], key=K.CONTRAST_STATED,
                             format_func={"": "not stated", "yes": "with contrast", "no": "without contrast"}.get,
                             help="A NIfTI file, and a DICOM header without its Contrast/Bolus module, do not say whether "
                             "contrast was given. Stated here, it is kept with the case, and a model whose training "
                             "studies were all acquired otherwise warns.")
            for w in volume.warnings:
                st.warning(chrome.md(w), icon=":material/warning:")
            from core.predict import image_read

            with chrome.core_errors(stop=False):
                model_name = views.current_model_name()
                model = views.current_model()
                read = memo(("upload_read", id(checked), checked.series, volume.shape, str(model.model_dir), stated),
                            lambda: image_read(model, volume))
                for note in [read.note(model_name), *read.details()]:  # what the selected model cannot read here
                    if note:
                        st.warning(f"**{model_name}**: {chrome.md(note)}", icon=":material/warning:")
                other = next((s for s in volume.series if s.key == read.like_training), None)
                if other is not None and st.button(  # the phase the model was trained on, in one click
                        f"Load the series acquired like {model_name}'s training studies ({other.n_instances} images)",
                        key="like_training_upload", icon=":material/swap_horiz:",
                        help=f"Series {chrome.md(other.key)}; the case is saved in the series loaded here."):
                    with chrome.core_errors(stop=False, what="Series not loaded: "):
                        study_state["checked"] = uploads.with_series(checked, other.key)
                        st.session_state.pop("series_choice", None)  # the list above then shows the loaded series
                        st.rerun()

# ------------------------------------------------------------------- timeline
st.subheader("2. Timeline (optional)", anchor=False)
st.file_uploader(f"MEDS timeline (parquet, CSV or .xlsx; up to {max_mb} MB)", type=TIMELINE_TYPES,
                 key=f"timeline_file_{nonce}",
                 help="MEDS rows: subject_id, time, code, numeric_value (aliases such as value, "
                 "timestamp are accepted). In a workbook, the first sheet with a subject id header is read; "
                 "date cells are dates. Only events at or before the index date reach the model.")
st.caption("A timeline can be added to a saved case below, without uploading its CT again.")
if tl_state.get("error"):
    st.error(f"Timeline not loaded: {tl_state['error']}", icon=":material/error:")
frame = tl_state.get("frame")
events = None
index_time = None
target = NEW_CASE
target_label = ""
if frame is not None:
    head = st.container(key="stack_timeline_head").columns([5, 1], vertical_alignment="center")
    head[0].markdown(f"In memory, not saved yet: **{chrome.md(tl_state['name'])}** ({len(frame)} events, "
                     f"{frame['subject_id'].nunique()} subjects).")
    unreadable = unreadable_values_note(frame)
    if unreadable:
        st.warning(chrome.md(unreadable[0].upper() + unreadable[1:]) + ".", icon=":material/warning:")
    if head[1].button("Discard", key="discard_timeline", icon=":material/close:"):
        tl_state.clear()
        st.rerun()
    ct_cases = {c.case_id: c for c in infos if "CT" in c.modalities}
    if checked is None and ct_cases:
        options = [NEW_CASE, *ct_cases]
        target = st.selectbox("Save the timeline to", options, key="timeline_target",
                              format_func=lambda k: "a new case (timeline only)" if k == NEW_CASE
                              else f"{ct_cases[k].describe()} (its CT is kept)")
        target_label = ct_cases[target].label if target != NEW_CASE else ""
    subjects = sorted(frame["subject_id"].unique().tolist())
    c1, c2 = st.columns(2)
    subject = c1.selectbox(f"Subject ({len(subjects)} in the file)", subjects, key="timeline_subject")
    events = frame[frame["subject_id"] == subject].sort_values("time", kind="stable")
    from core.io.study_date import scan_date_note
    from core.io.timeline import OUTCOME_CODES, default_index_time, index_overlap_note

    study_date = volume.study_date if volume is not None else None
    shifted_note = ""
    if checked is not None and checked.date_shift_days:
        # the study's dates were shifted by de-identification: move the timeline by the same offset (in memory)
        events = uploads.shift_events(events, checked.date_shift_days)
        shifted_note = (" The timeline's dates were shifted by the same offset as the de-identified study's, so "
                        "the two stay on one calendar (the offset is not stored).")
    if target != NEW_CASE:
        case = _cases.uploaded_case(target)
        study_date = case["volume"].study_date if case and case["volume"] is not None else None
        if case is not None and case["info"].deidentified:
            study_date = None  # its dates were shifted when it was saved: they are not on the timeline's calendar
            shifted_note = (" This CT was de-identified here, which shifted its dates, so its study date cannot be "
                            "matched with the timeline: set the index date to the scan's date on the timeline's "
                            "calendar.")
    default, source = default_index_time(events, study_date)
    date = c2.date_input("Index date (scan date): events after it are not used",
                         value=(default or pd.Timestamp(events["time"].max())).date(), key=f"index_date_{target}")
    index_time = pd.Timestamp(date) + pd.Timedelta(hours=23, minutes=59, seconds=59)
    before = int((events["time"] <= index_time).sum())
    st.caption(f"{len(events)} events for this subject, {before} at or before the index date, "
               f"{events['code'].nunique()} distinct codes. Default index date: {source}. The subject id is not "
               "stored: the saved events carry the case's own id." + shifted_note)
    overlap = index_overlap_note(events, index_time)
    if overlap:
        st.warning(chrome.md(overlap), icon=":material/event_busy:")
    scan_note = scan_date_note(study_date, index_time)
    if scan_note:
        st.warning(scan_note, icon=":material/event_busy:")
    from core.ehr_read import upload_timeline_read

    with chrome.core_errors(stop=False):
        model_name, model = views.current_model_name(), views.current_model()
        notes = memo(("upload_timeline_read", id(frame), subject, str(index_time), str(model.model_dir),
                      checked.date_shift_days if checked is not None else 0),
                     lambda: upload_timeline_read(model, events, index_time))
        for note in notes:  # what the selected model cannot read here: codes of another site, values in another unit
            st.warning(f"**{model_name}**: {chrome.md(note)}", icon=":material/warning:")
    outcomes = events[events["code"].isin(OUTCOME_CODES)]
    if len(outcomes):
        st.warning(f"This timeline records the outcome ({', '.join(sorted(set(outcomes['code'])))}). An outcome is "
                   "never a model input, whatever its date; events after the index date are not used either.",
                   icon=":material/info:")

# ------------------------------------------------------------ clinical values
st.subheader("3. Clinical values (optional)", anchor=False)
st.caption("Values such as age, sex or the last lab results, named as the columns of a cohort's features.csv: "
           "models trained with a features.csv read them as their curated features.")
if checked is None and frame is None and infos:
    target = st.selectbox("Save the clinical values to", [c.case_id for c in infos], key="values_target",
                          format_func=lambda k: next(c.describe() for c in infos if c.case_id == k))
    target_label = next(c.label for c in infos if c.case_id == target)
target_info = next((c for c in infos if c.case_id == target), None)
saved_values = saved.case_features(target_info) if target_info is not None else {}
values = _clinical.section(nonce, str(subject) if frame is not None else None, saved_values,
                           events if frame is not None else None, index_time,
                           header=checked.header_clinical if checked is not None else None)
values_new = values or None  # a new case is saved with the values entered (None: without)

# ---------------------------------------------------------------------- save
st.subheader("4. Save and review", anchor=False)
ready_study = checked is not None and not checked.blocked
burned_ok = bool(st.session_state.get(K.BURNED_IN_OK)) or not (ready_study and checked.volume.burned_in)
has_events = events is not None and not events.empty
values_changed = values is not None and target != NEW_CASE and values != saved_values
ready = (ready_study and burned_ok) or (checked is None and (has_events or values_changed))
if target == NEW_CASE:
    label = "Save as a new case"
else:
    label = (f"Add the timeline{' and clinical values' if values_changed else ''} to {target_label}" if has_events
             else f"Save the clinical values of {target_label}")
if st.button(label, type="primary", disabled=not ready, key="use_case", icon=":material/save:"):
    with chrome.core_errors(stop=False, what="Case not saved: "):
        if target != NEW_CASE:
            info = saved.add_timeline(user, target, events, index_time) if has_events else saved.get_case(user, target)
            if values_changed:
                info = saved.set_features(user, target, values)
        else:
            info = uploads.save_checked_case(user, checked if ready_study else None, events=events,
                                             index_time=index_time, burned_in_acknowledged=burned_ok,
                                             contrast=stated, features=values_new)
        session.audit("upload", "-".join(m.lower().replace(" ", "_") for m in info.modalities), case=info.number)
        study_state.clear()
        tl_state.clear()
        st.session_state.pop(K.FEATURES_STATE, None)
        st.session_state.pop(K.BURNED_IN_OK, None)
        st.session_state.pop(K.CONTRAST_STATED, None)
        _cases.open_in_review(info.case_id)
        st.switch_page("pages/case_review.py")
if not ready:
    if checked is not None and checked.blocked:
        st.caption("De-identify the study (or discard it) first.")
    elif ready_study and not burned_ok:
        st.caption("Confirm that the images show no burned-in names or IDs first.")
    else:
        st.caption("Upload a study or a timeline first (or change the clinical values of a saved case).")
