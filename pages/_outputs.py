"""What the Export page writes for a case: the case report PDF, the DICOM objects and the NIfTI map (not a page itself)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pages import _model_views as views
from pages import _reference as refs
from pages import _review as review
from pages import _session as session
from pages._memo import memo


def case_report(build: Callable[..., Any], model: Any, source: str, subject_id: str, method: str, horizon: int,
                out: Path, amap: Any = None, window: str = "soft_tissue") -> Path:
    """Write the case report PDF through ``core.report.case_report_pdf`` (see docs/CONTRACTS.md), its slices in the
    viewer's ``window``.

    ``amap``: the whole-volume map the viewer shows (``pages._viewer.overlay_map``), drawn as it is; computed here
    (in the server, for the whole CT) only when None. Its warnings are Case review's, and the viewer's when that map's
    strongest spot lies outside the body (``pages._viewer.map_peak``)."""
    from core.explain import attribute, event_attributions
    from core.report import card_summary

    inputs = views.case_inputs(model, source, subject_id)
    pred = views.case_prediction(model, source, subject_id)
    volume = views.case_volume(source, subject_id)
    key = ("report-parts", str(model.model_dir), source, subject_id, views.upload_token(source, subject_id), method,
           horizon, amap is not None)

    def parts() -> tuple[Any, Any]:
        from core.app.attribution_volume import as_attribution

        att = None
        if "image" in pred.modalities_used:
            att = (as_attribution(model, amap, method, horizon) if amap is not None
                   else attribute(model, inputs, method, float(horizon), None, with_events=False))
        return att, event_attributions(model, inputs, float(horizon))

    attribution, events = memo(key, parts)
    name = next((n for n, p in views.available_models().items() if Path(p) == Path(model.model_dir)), "")
    ref = refs.reference_curves(name) if name else None
    cohort_km = ref["cohort_km"] if ref else None
    group = refs.case_risk_group(model, source, subject_id, ref["groups"]) if ref and pred.modalities_used else None
    every = review.strategies(source, subject_id, name)
    warnings = [w.text for w in review.case_warnings(name, model, source, subject_id, every)]  # as Case review's
    if amap is not None and attribution is not None:  # the viewer's warning of a map that reads no anatomy
        from pages import _viewer

        outside = _viewer.map_peak(model, inputs, source, subject_id, method, horizon, amap, volume)[1]
        warnings += [outside] if outside else []
    bound = refs.case_conformal_bound(model, source, subject_id) if pred.modalities_used else None  # as on the page
    features = views.case_cohort(source, subject_id).features
    values = {} if features is None or subject_id not in features.index else features.loc[subject_id].dropna().to_dict()
    return Path(build(out, model=model, inputs=inputs, prediction=pred,
                      volume_hu=None if volume is None else volume.hu,
                      spacing_mm=None if volume is None else volume.spacing_mm, attribution=attribution,
                      events_table=events, cohort_km=cohort_km, model_card_summary=card_summary(model.card),
                      case_label=views.case_label(source, subject_id), warnings=warnings, window=window,
                      strategy_risks=every.table, strategies_skipped=list(every.skipped.values()),
                      clinical_values=values,
                      conformal_bound=None if bound is None else (*bound, 1 - refs.CONFORMAL_ALPHA),
                      group_km=None if group is None else ((group["t"], group["s"], group["lower"], group["upper"]),
                                                           f"{group['label']}-risk group ({group['n']} patients)")))


def _map_job(folder: Path, what: str, model: Any, source: str, subject_id: str, method: str, horizon: int,
             amap: Any, fn: Any, *args: Any) -> Any:
    """Queue ``fn(ctx, volume, store, key, map or None, *args)``, an export of the case's whole-volume map (``amap``,
    the one the viewer shows: ``pages._viewer.overlay_map``) as ``what`` into ``folder`` (one job at a time per
    folder); the job, or None when the user's job limit refused it. The job reads the map from its store (a map the
    store had no room for is sent as it is); a large CT's export runs in the job's own process, one heavy job at a
    time, as its map did (its CT goes there by the decoded copy's file name, ``core.job_pickle``)."""
    from core.app import attribution_volume as AV
    from pages import _jobs
    from pages import _viewer

    inputs = views.case_inputs(model, source, subject_id)
    key = _viewer.map_key(model, inputs, source, subject_id, method, horizon)
    store = _viewer.map_store(model, source, subject_id)
    sent = None if store.cache().get(key) is not None else amap
    return _jobs.submit(f"{what}, {views.case_label(source, subject_id)}, {views.label_of(model)}", fn,
                        views.case_volume(source, subject_id), store, key, sent, *args,
                        key=f"export:{folder}", heavy=AV.is_heavy(inputs), fresh=True,
                        journal=False)


def dicom_job(model: Any, source: str, subject_id: str, method: str, horizon: int, name: str, amap: Any) -> Any:
    """Queue the case's Parametric Map, Segmentation and SR (``core.app.export_jobs.dicom_export_job``), zipped to
    ``name`` in this session's exports (see :func:`_map_job`)."""
    from core.app.export_jobs import dicom_export_job

    pred = views.case_prediction(model, source, subject_id)
    if source == views.UPLOADED:
        case = views.uploaded_case(subject_id) or {}
        study = Path(case["study_path"]) if case.get("study_path") else None
    else:
        study = views.case_cohort(source, subject_id).study_path(subject_id)
    folder = session.exports_dir("dicom")
    return _map_job(folder, "DICOM objects", model, source, subject_id, method, horizon, amap, dicom_export_job,
                    dict(pred.risk_at), list(pred.modalities_used), pred.times, str(model.model_dir), method,
                    str(folder), name, None if study is None else str(study))


def nifti_job(model: Any, source: str, subject_id: str, method: str, horizon: int, name: str, amap: Any) -> Any:
    """Queue the case's map as NIfTI (``core.app.export_jobs.nifti_map_job``), written to ``name`` in this session's
    exports (see :func:`_map_job`)."""
    from core.app.export_jobs import nifti_map_job

    folder = session.exports_dir("nifti")
    return _map_job(folder, "NIfTI map", model, source, subject_id, method, horizon, amap, nifti_map_job,
                    str(folder), name)
