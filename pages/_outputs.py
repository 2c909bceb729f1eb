"""What the Export page writes for a case: the case report PDF and the DICOM objects (not a page itself)."""

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
                out: Path, amap: Any = None) -> Path:
    """Write the case report PDF through ``core.report.case_report_pdf`` (see docs/CONTRACTS.md).

    ``amap``: the whole-volume map the viewer shows (``pages._viewer.overlay_map``), drawn as it is; computed here
    (in the server, for the whole CT) only when None."""
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
    warnings = review.case_warnings(name, model, source, subject_id, every)  # exactly the list Case review shows
    bound = refs.case_conformal_bound(model, source, subject_id) if pred.modalities_used else None  # as on the page
    features = views.case_cohort(source, subject_id).features
    values = {} if features is None or subject_id not in features.index else features.loc[subject_id].dropna().to_dict()
    return Path(build(out, model=model, inputs=inputs, prediction=pred,
                      volume_hu=None if volume is None else volume.hu,
                      spacing_mm=None if volume is None else volume.spacing_mm, attribution=attribution,
                      events_table=events, cohort_km=cohort_km, model_card_summary=card_summary(model.card),
                      case_label=views.case_label(source, subject_id), warnings=[w.text for w in warnings],
                      strategy_risks=every.table, strategies_skipped=list(every.skipped.values()),
                      clinical_values=values,
                      conformal_bound=None if bound is None else (*bound, 1 - refs.CONFORMAL_ALPHA),
                      group_km=None if group is None else ((group["t"], group["s"], group["lower"], group["upper"]),
                                                           f"{group['label']}-risk group ({group['n']} patients)")))


def case_dicom_export(model: Any, source: str, subject_id: str, method: str, horizon: int, name: str,
                      amap: Any = None) -> tuple[Path, str]:
    """The case's Parametric Map, Segmentation and SR (``core.dicom_export``) as a zip file called ``name`` in this
    session's exports (the objects themselves are not kept beside it), and a one-line summary.

    ``amap`` is the whole-volume map the viewer shows (``pages._viewer.overlay_map``); computed here when None."""
    import shutil

    from core.dicom_export import (
        export_dicom,
        model_info,
        source_series_for,
        zip_folder,
    )
    from core.explain import attribute

    inputs = views.case_inputs(model, source, subject_id)
    pred = views.case_prediction(model, source, subject_id)
    volume = views.case_volume(source, subject_id)
    if amap is None:
        amap = attribute(model, inputs, method, float(horizon), None, with_events=False).map  # the whole volume
    if source == views.UPLOADED:
        case = views.uploaded_case(subject_id) or {}
        study = Path(case["study_path"]) if case.get("study_path") else None
    else:
        study = views.demo_cohort().study_path(subject_id)
    folder = session.exports_dir("dicom")
    out = folder / "objects"
    series = source_series_for(volume, out, study_path=study)
    result = export_dicom(volume, amap, pred.risk_at, pred.modalities_used, model_info(Path(model.model_dir)),
                          method, out, source=series, times=pred.times)
    parts = [f"{result.n_frames} frames", f"segment of {result.region_voxels} voxels"]
    parts += ["derived CT series included (the study was not DICOM)"] if result.derived_series else []
    summary = "; ".join(parts + list(result.warnings)) + "."
    archive = zip_folder(out, folder / name)
    shutil.rmtree(out, ignore_errors=True)  # the zip holds them: one copy on disk, in the user's quota
    return archive, summary
