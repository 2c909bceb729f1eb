"""Export: the saliency figure (PNG, SVG, PDF), the case report PDF, the DICOM objects and the map as NIfTI, with
neutral file names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import streamlit as st

from core import figure_export, horizons
from core import figures as F
from core.app import viewer
from core.app import workspace as workspaces
from pages import _chrome as chrome
from pages import _cohort_cases
from pages import _jobs
from pages import _model_views as views
from pages import _outputs as outputs
from pages import _session as session
from pages import _state as K
from pages import _viewer
from pages import _whose
from pages._memo import memo

chrome.require_app_navigation()

FORMATS = ("png", "svg", "pdf")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}

st.title("Export", anchor=False)
st.caption(
    "Figures and reports carry a caption (model, fusion, method, horizon, slice, window) and nothing identifying: "
    "no names, IDs or dates in the image, its metadata or the file name."
)

chosen = chrome.viewer_setting(K.CASE, None)  # (source, subject id) last reviewed, as values
if chosen is not None and views.case_exists(*chosen):
    source, subject_id = chosen
else:
    cohort = views.demo_cohort()
    test_ids = cohort.ids("test")
    source, subject_id = views.DEMO, (test_ids[0] if test_ids else cohort.ids()[0])
model_name = views.current_model_name()
number = views.case_number(source, subject_id)
is_demo = source != views.UPLOADED  # a demo case's number is named apart from the saved cases' own numbers
of_cohort = _cohort_cases.is_cohort(source)  # a patient of one of the user's cohorts: numbered like a demo case
kind = "Cohort case" if of_cohort else "Demo case" if is_demo else "Case"
audit_source = "cohort" if of_cohort else "demo" if is_demo else "upload"
audited = _cohort_cases.audited_patient(source, subject_id)  # a cohort patient: its keyed pseudonym in the audit log
where = (f" ({subject_id} of {_cohort_cases.label(source)} in Case review)" if of_cohort
         else f" (Demo {subject_id} in Case review)" if is_demo else " (uploaded)")
method = chrome.method_setting(views.current_lazy_model())  # the model's config only: nothing loaded for this
horizon = chrome.horizon_days()
st.markdown(
    f"**{kind} {number}**{chrome.md(where)}, model **{model_name}**, "
    f"method **{_viewer.METHOD_LABELS.get(method, method)}**, horizon **{horizons.HORIZON_LABELS.get(horizon, f'{horizon} days')}**. "
    "Change them on the Case review page and in the sidebar."
)

with chrome.core_errors():
    model = views.current_model()
    volume = views.case_volume(source, subject_id)
    pred = views.case_prediction(model, source, subject_id)

exports: dict = st.session_state.setdefault(K.EXPORTS, {})
if exports:
    session.workspace()  # marks this session's prepared files as in use (another session's prepare sweeps stale ones)
withheld = volume is not None and views.withholds_ct(model, source, subject_id)  # Case review may read it anyway
read_on_request = volume is not None and not withheld and views.image_read(model, source, subject_id).withheld is not None
no_ct = ("The selected model withholds this case's CT (other anatomy or another scale than its training studies; Case review can "
         "read it anyway)" if withheld else "This case has no CT used by the selected model")
if read_on_request:
    st.warning(f"This case's CT is read on request although {chrome.md(model_name)} would withhold it (Case review): "
               "what is exported here reads something the model never saw in training. The figure's caption and the "
               "report say so.", icon=":material/warning:")

st.subheader("Saliency figure", anchor=False)
amap = None
if volume is None or "image" not in pred.modalities_used:
    st.info(f"{no_ct}, so there is no saliency figure to export.")
else:
    from core.io.windows import WINDOWS

    z = int(chrome.viewer_setting("axial_slice", volume.shape[0] // 2))  # the slice last shown in Case review
    z = shown_z = min(max(z, 0), volume.shape[0] - 1)
    wname = chrome.viewer_setting("window", "soft_tissue")
    win = (WINDOWS[wname].low, WINDOWS[wname].high) if wname in WINDOWS else (-160.0, 240.0)
    # the same whole-volume map the viewer shows (computed once in the background, shared with Case review)
    amap = _viewer.overlay_map(model, views.case_inputs(model, source, subject_id), source, subject_id, method, horizon)
    if amap is not None:
        per = memo(("map_slice_mass", source, subject_id, model_name, method, horizon),  # once per map, not per rerun
                   lambda: np.abs(np.asarray(amap)).sum(axis=(1, 2)))  # each slice's share of the map
        shares = per / per.sum() if per.sum() > 0 else per
        best = int(np.argmax(per))
        if shares[z] < 0.5 / len(per) and best != z:  # the slice shown holds little of the map: say where it lies
            st.warning(f"Axial slice {z + 1} (the one last shown in Case review) holds {100 * shares[z]:.1f} % of the "
                       f"map: its figure shows little or no colour. The map's top slice is {best + 1} "
                       f"({100 * shares[best]:.0f} %).", icon=":material/visibility_off:")
            if st.checkbox(f"Export slice {best + 1} instead", value=False, key="figure_top_slice"):
                z = best
    key = (source, subject_id, model_name, method, horizon, z, wname, read_on_request)
    if amap is None:
        st.caption("The figure, the report and the DICOM objects use the case's whole-volume attribution map: it is "
                   "being computed (above); they can be prepared when it is ready.")
    if st.button("Prepare the saliency figure", type="primary", key="prepare_figure", disabled=amap is None):
        with st.spinner("Rendering..."), chrome.core_errors(stop=False, what="Export failed: "):
            session.audit("export", "saliency_figure", case=number, method=method, source=audit_source, patient=audited,
                          **_whose.audit_details(model_name, model.config.fusion))
            fig = F.slice_overlay(
                viewer.plane_slice(volume.hu, "axial", z),
                F.scale_map(viewer.plane_slice(amap, "axial", z),  # the one slice, by the whole map's top (kept)
                            memo(("map_top", source, subject_id, model_name, method, horizon), lambda: F.map_top(amap))),
                window=win, opacity=float(chrome.viewer_setting("opacity", 0.6)),
                spacing_mm=viewer.plane_spacing(volume.spacing_mm, "axial"), normalize=False,
                title=f"{_viewer.METHOD_LABELS.get(method, method)} on axial slice {z + 1}/{volume.shape[0]}",
            )
            # slices are numbered from 1 (inferior) for people everywhere: title, caption and file name
            # what the page says beside the map goes with the figure, which is copied without the page
            outside = _viewer.map_peak(model, views.case_inputs(model, source, subject_id), source, subject_id, method,
                                       horizon, amap, volume)[1]
            notes = (["CT read on request: outside the model's training CTs, which predict withholds"]
                     if read_on_request else []) + (["the map's strongest spot lies outside the body"] if outside else [])
            caption = figure_export.caption_text(model=model_name, fusion=model.fusion, method=method,
                                                 horizon_days=horizon, slice_index=z + 1, window=win,
                                                 extra="; ".join(notes) or None)
            folder = session.exports_dir("figure")
            files = {}
            for fmt in FORMATS:
                name = figure_export.export_name("saliency", number, fmt, method=method, slice_index=z + 1,
                                                 demo=is_demo, cohort=of_cohort)
                files[fmt] = (name, figure_export.export(fig, folder / name, caption=caption))
            exports["figure"] = {"key": key, "files": files}
    ready = exports.get("figure")
    if ready and ready["key"] == key and not all(path.is_file() for _, path in ready["files"].values()):
        exports.pop("figure")  # the session's files were swept: prepare again
        ready = None
    if ready and ready["key"] == key:
        cols = st.columns(len(FORMATS))
        for col, fmt in zip(cols, FORMATS):
            name, path = ready["files"][fmt]
            col.download_button(f"Download {fmt.upper()}", path.read_bytes, file_name=name, mime=MIME[fmt],
                                key=f"download_{fmt}", icon=":material/download:", on_click="ignore")
        st.caption(f"Axial slice {z + 1}/{volume.shape[0]} ({'as in Case review' if z == shown_z else 'the top slice'}; slices are numbered from 1, inferior "
                   f"to superior, in the viewer, captions, file names and the report). "
                   f"Files: {', '.join(n for n, _ in ready['files'].values())}")
    else:
        st.caption(f"Axial slice {z + 1}/{volume.shape[0]} ({'as in Case review' if z == shown_z else 'the top slice'}), window {wname}, opacity "
                   f"{chrome.viewer_setting('opacity', 0.6)}. Slices are numbered from 1, inferior to superior, in the "
                   "viewer, captions, file names and the report.")

ckey = (source, subject_id, model_name, method, horizon, read_on_request)  # what a prepared export was made for
window = str(chrome.viewer_setting("window", "soft_tissue"))  # the report's slices are drawn in it


def prepare(slot: str, label: str, target: str, what: str, build: Callable[[], dict], *, disabled: bool = False,
            made_for: tuple = ckey) -> None:
    """A "Prepare ..." button: ``build()`` (audited as ``target``, errors in one line) kept in ``exports[slot]``: the
    file's name and its ``path`` in this session's exports (on disk, not in the session's memory), for ``made_for``."""
    if st.button(label, key=f"prepare_{slot}", disabled=disabled):
        with st.spinner(f"Writing the {what}..."), chrome.core_errors(stop=False, what=f"The {what} failed: "):
            session.audit("export", target, case=number, method=method, source=audit_source, patient=audited,
                          **_whose.audit_details(model_name, model.config.fusion))
            exports[slot] = {"key": made_for, **build()}


def offer(slot: str, label: str, mime: str, made_for: tuple = ckey) -> dict | None:
    """The download button of ``exports[slot]`` when it was prepared for the case, model, method and horizon shown
    and its file is still there. The file is read only when the user clicks (a full-resolution DICOM zip or NIfTI map
    is hundreds of MB: never held in the session's state, nor hashed and copied at each rerun)."""
    ready = exports.get(slot)
    if not ready or ready["key"] != made_for:
        return None
    path: Path = ready["path"]
    if not path.is_file():  # the session's exports were swept (a new workspace): prepare again
        exports.pop(slot)
        return None
    st.download_button(f"{label}, {workspaces.human_bytes(path.stat().st_size)}", path.read_bytes,
                       file_name=ready["name"], mime=mime, key=f"download_{slot}", icon=":material/download:",
                       on_click="ignore")
    return ready


def _report() -> dict:
    from core.report import case_report_pdf

    name = figure_export.export_name("case-report", number, "pdf", method=method, demo=is_demo, cohort=of_cohort)
    path = outputs.case_report(case_report_pdf, model, source, subject_id, method, horizon,
                               session.exports_dir("report") / name, amap, window)
    return {"name": name, "path": path}


def prepare_job(slot: str, label: str, target: str, what: str, stem: str, ext: str, submit: Callable[..., object],
                kept: Callable[[object], dict]) -> None:
    """A "Prepare ..." button whose file a background job writes (``submit``: ``pages._outputs.dicom_job`` or
    ``nifti_job``; a large CT's in the job's own process, as its map): a progress bar with Cancel meanwhile, then
    ``exports[slot]`` as :func:`prepare` keeps it, plus ``kept(job.result)`` (its ``path``, ...)."""
    pending = exports.get(f"{slot}_job")
    job = _jobs.find(pending[1]) if pending and pending[0] == ckey else None
    if st.button(label, key=f"prepare_{slot}", disabled=amap is None or (job is not None and job.active)):
        with chrome.core_errors(stop=False, what=f"The {what} failed: "):
            session.audit("export", target, case=number, method=method, source=audit_source, patient=audited,
                          **_whose.audit_details(model_name, model.config.fusion))
            name = figure_export.export_name(stem, number, ext, method=method, demo=is_demo, cohort=of_cohort)
            job = submit(model, source, subject_id, method, horizon, name, amap)
            if job is not None:
                exports[f"{slot}_job"] = (ckey, job.key, name)
        if job is not None:
            st.rerun()  # once more, so that the sidebar's job list (drawn before this button) counts it
    ended = _jobs.follow(job)
    if ended is not None:
        if ended:
            exports[slot] = {"key": ckey, "name": exports[f"{slot}_job"][2], **kept(job.result)}
        exports.pop(f"{slot}_job", None)


st.subheader("Case report (PDF)", anchor=False)
st.caption("One page: the survival curve, risks, top slices with the map, the strategies' risks, top events, the "
           "model card, and every warning Case review shows for this case, word for word (a block that does not fit "
           "continues whole on a second page).")
prepare("report", "Prepare the case report", "case_report_pdf", "report", _report, made_for=(*ckey, window),
        disabled=amap is None and volume is not None and "image" in pred.modalities_used)  # it draws the same map
offer("report", "Download the case report (PDF)", "application/pdf", made_for=(*ckey, window))

st.subheader("DICOM for PACS", anchor=False)
st.caption(
    "The attribution map as a DICOM Parametric Map, its top region (|map| at or above the 99th percentile) as a "
    "DICOM Segmentation and the prediction as a Structured Report (risk at each horizon, model, version, model card, "
    "modalities used), on the study's own geometry: same Frame of Reference, referencing its instances. A NIfTI "
    "study gets a derived CT series first. A radiologist's viewer (OHIF, a PACS) shows the map over the study."
)
if volume is None or "image" not in pred.modalities_used:
    st.info(f"{no_ct}, so there is nothing to place on a DICOM series.")
else:
    prepare_job("dicom", "Prepare the DICOM objects", "dicom_zip", "DICOM export", "dicom", "zip", outputs.dicom_job,
                lambda result: {"path": Path(result[0]), "summary": result[1]})
ready = offer("dicom", "Download the DICOM objects (zip)", "application/zip")
if ready:
    st.caption(chrome.md(ready["summary"]))

st.subheader("The map as NIfTI", anchor=False)
st.caption("The whole attribution map (float32, signed as computed) on the study's own geometry and affine: it opens "
           "over the CT in 3D Slicer, ITK-SNAP or any NIfTI viewer (`python -m core explain --save-map map.nii.gz` "
           "writes the same for a cohort's subject).")
if volume is None or "image" not in pred.modalities_used:
    st.info(f"{no_ct}, so there is no map to save.")
else:
    prepare_job("nifti", "Prepare the map (NIfTI)", "map_nifti", "NIfTI export", "saliency-map", "nii.gz",
                outputs.nifti_job, lambda result: {"path": Path(str(result))})
offer("nifti", "Download the map (NIfTI)", "application/gzip")
