"""DICOM exports of a case for PACS: saliency Parametric Map, top-region Segmentation, prediction SR.

``export_dicom`` works from arrays (for the app's Export page: an uploaded case
has a Volume and maybe its DICOM files); ``export_case_dicom`` runs a model on
a cohort subject first (``python -m core export-dicom``). Output folder::

    OUT/CT/CT00001.dcm ...        derived CT series (only when the study was not DICOM)
    OUT/saliency_pm.dcm           Parametric Map, 32-bit float, identity Real World Value Mapping
    OUT/saliency_seg.dcm          binary Segmentation of the map's top region
    OUT/prediction_sr.dcm         Comprehensive SR: risk at 30 d / 1 y / 5 y, model, card, modalities

All three share the source series' Frame of Reference and reference its instances.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.dicom_export.objects import (
    ModelInfo,
    parametric_map,
    save,
    segmentation,
    structured_report,
    top_region,
)
from core.dicom_export.series import (
    SourceSeries,
    derive_ct_series,
    place_instances,
    series_instances,
)
from core.errors import InputError
from core.explain import check_method
from core.io.volume import Volume

__all__ = ["ExportResult", "ModelInfo", "SourceSeries", "export_dicom", "export_case_dicom", "model_info",
           "source_series_for"]



@dataclass
class ExportResult:
    """What was written (paths relative to nothing: absolute) and the numbers a caller may show."""

    out: str
    parametric_map: str
    segmentation: str
    structured_report: str
    derived_series: list[str]          # derived CT files (empty when the source was DICOM)
    source_series_uid: str
    frame_of_reference_uid: str
    n_frames: int
    method: str
    map_min: float
    map_max: float
    region_threshold: float            # |map| threshold of the segment
    region_percentile: float
    region_voxels: int
    risk_at: dict[int, float]
    modalities_used: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["risk_at"] = {str(k): v for k, v in self.risk_at.items()}
        data["n_derived_files"] = len(self.derived_series)
        del data["derived_series"]
        return data


def model_info(model_dir: Path) -> ModelInfo:
    """Name, version (package + weights digest) and card reference of a model folder.

    Read from the folder's files (config.json, model.safetensors, MODEL_CARD.md), so any
    loaded-model object works with it.
    """
    from core import __version__

    model_dir = Path(model_dir)
    config: dict[str, object] = {}
    if (model_dir / "config.json").is_file():
        try:
            loaded = json.loads((model_dir / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError("model", str(model_dir / "config.json"), f"is not valid JSON ({err})",
                             "retrain or re-copy the model folder") from None
        config = loaded if isinstance(loaded, dict) else {}
    weights = model_dir / "model.safetensors"
    card = model_dir / "MODEL_CARD.md"
    digest = _sha256(weights) if weights.exists() else "unknown"
    card_ref = f"{model_dir.name}/MODEL_CARD.md sha256:{_sha256(card)[:16]}" if card.exists() else "no model card"
    name = f"{config.get('fusion', model_dir.name)} fusion, {config.get('head', '?')} head"
    return ModelInfo(name=name, version=f"core {__version__}; weights sha256:{digest[:16]}", card=card_ref,
                     device_serial=digest[:16])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_series_for(volume: Volume, out: Path, study_path: Path | None = None,
                      members: Sequence[tuple[str, bytes]] | None = None) -> SourceSeries:
    """The source series of ``volume``: its DICOM instances when it was loaded from DICOM, else a derived series."""
    if volume.format == "dicom":
        sources: Iterable[Path | tuple[str, bytes]]
        if members is not None:
            sources = members
        elif study_path is not None and study_path.is_dir():
            sources = sorted(p for p in study_path.rglob("*") if p.is_file())
        elif study_path is not None and study_path.suffix.lower() == ".zip":
            from core.io.safezip import read_zip

            sources = [(m.name, m.data) for m in read_zip(study_path)]
        elif study_path is not None and study_path.is_file():
            sources = [study_path]
        else:
            raise InputError("study", str(study_path), "the DICOM files of this volume are not available",
                             "pass the study folder, file or zip the volume was loaded from")
        instances = series_instances(sources, volume)
        try:
            return place_instances(volume, instances)
        except InputError as err:
            if err.field != "source series":
                raise
            # e.g. a missing slice: the instances are not the voxels of the Volume; export on a derived series in
            # the source's patient and study (the header of one of its instances, already read)
            datasets, _, enhanced = instances
            identity = datasets[0] if datasets else (enhanced[0][0] if enhanced else None)
            series = derive_ct_series(volume, out / "CT", series_description="Derived from the loaded volume",
                                      identity=identity)
            series.warnings.append(f"the DICOM series could not be the source of the objects ({err.value} "
                                   f"{err.problem}): they refer to a derived CT series (OUT/CT) written as loaded, in "
                                   + ("the same patient and study" if identity is not None else "a new study"))
            return series
    return derive_ct_series(volume, out / "CT")


def export_dicom(volume: Volume, saliency: np.ndarray, risk_at: dict[int, float], modalities_used: Sequence[str],
                 model: ModelInfo, method: str, out: Path, *, source: SourceSeries | None = None,
                 percentile: float = 99.0, cautions: Sequence[str] = (), times: Sequence[float] | None = None,
                 ) -> ExportResult:
    """Write the Parametric Map, Segmentation and SR of one case into ``out`` (created; existing files replaced);
    ``cautions`` go into the SR as comments beside the risks (a CT read although outside the model's anatomy).

    ``times`` is the model's time grid: a horizon past its end has no risk (the curve stops there), so it is left
    out of the SR and a comment and a warning say why."""
    from core.horizons import past_grid_note

    past = {int(h): note for h in risk_at if times is not None and (note := past_grid_note(times, h))}
    risk_at = {int(h): v for h, v in risk_at.items() if int(h) not in past}
    cautions = [*cautions, *(f"{note}; left out of this report" for note in past.values())]
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != volume.shape:
        raise InputError("saliency map", list(saliency.shape), f"does not match the volume {list(volume.shape)}",
                         "compute the attribution on this case's volume")
    out.mkdir(parents=True, exist_ok=True)
    series = source if source is not None else source_series_for(volume, out)
    region, threshold = top_region(saliency, percentile)
    pm = parametric_map(series, saliency, model, method)
    seg = segmentation(series, region, model, method, percentile)
    pm_path, seg_path = save(pm, out / "saliency_pm.dcm"), save(seg, out / "saliency_seg.dcm")
    sr = structured_report(series, model, risk_at, modalities_used, method, derived_objects=[pm, seg],
                           cautions=cautions)
    sr_path = save(sr, out / "prediction_sr.dcm")
    return ExportResult(
        out=str(out), parametric_map=str(pm_path), segmentation=str(seg_path), structured_report=str(sr_path),
        derived_series=[str(p) for p in series.files] if series.derived else [],
        source_series_uid=series.series_instance_uid, frame_of_reference_uid=series.frame_of_reference_uid,
        n_frames=len(series.indices), method=method, map_min=float(saliency.min()), map_max=float(saliency.max()),
        region_threshold=threshold, region_percentile=percentile, region_voxels=int(region.sum()),
        risk_at={int(k): float(v) for k, v in risk_at.items()}, modalities_used=[str(m) for m in modalities_used],
        warnings=[*volume.warnings, *series.warnings, *(f"{note}; left out of the SR" for note in past.values())],
    )


def export_case_dicom(model_dir: Path, cohort_dir: Path, subject_id: str, out: Path, *, method: str = "saliency",
                      percentile: float = 99.0, device: str = "cpu", return_map: bool = False,
                      allow_ood: bool = False) -> ExportResult | tuple[ExportResult, np.ndarray]:
    """Predict and attribute one cohort subject with a model, then :func:`export_dicom` it.

    With ``return_map`` also the attribution map ``[S, R, C]`` on the Volume grid. A CT far outside the model's
    training anatomy (``core.predict.image_read``) is refused unless ``allow_ood``: the objects would carry a map
    and a risk read from something the model never saw.
    """
    check_method(method)
    from core.cohort import load_cohort
    from core.explain import attribute
    from core.registry import load_model

    model = load_model(Path(model_dir), device=device)
    cohort = load_cohort(Path(cohort_dir), for_training=False)
    subject_id = str(subject_id)
    inputs = model.case_inputs(cohort, subject_id)
    volume = cohort.load_volume(subject_id)
    if volume is None:
        raise InputError("subject", subject_id, "has no CT study in this cohort", "pick a subject with a study")
    from core.ehr_read import feature_read, timeline_read
    from core.predict import image_read

    read = image_read(model, volume)
    if read.withheld and not allow_ood:
        raise InputError("--subject", "this subject's CT", f"is withheld from this model: {read.withheld}",
                         "use a model trained on such studies, or pass --allow-ood to export a map and risk read "
                         "from it anyway (not reliable)")
    prediction = model.predict_case(inputs)
    attribution = attribute(model, inputs, method)
    study = _study_path(Path(cohort_dir), subject_id)
    source = source_series_for(volume, Path(out), study_path=study)
    notice = read.note(model.fusion, read_anyway=True)
    result = export_dicom(volume, attribution.map, prediction.risk_at, prediction.modalities_used,
                          model_info(Path(model_dir)), method, Path(out), source=source,
                          percentile=percentile, cautions=[notice] if notice else [], times=model.times)
    # the risk in the report reads the timeline too
    result.warnings += [*read.warnings, *([notice] if notice else []), *timeline_read(model, inputs.events),
                        *feature_read(model, cohort, subject_id)]
    return (result, np.asarray(attribution.map, dtype=np.float32)) if return_map else result


def _study_path(cohort_dir: Path, subject_id: str) -> Path | None:
    """The subject's study path from the folder's ``cohort.csv`` (``study`` column, relative to the folder)."""
    from core.io.columns import COHORT_ALIASES, rename_aliases
    from core.io.delimited import read_csv_any

    table = rename_aliases(read_csv_any(cohort_dir / "cohort.csv", dtype=str), COHORT_ALIASES)  # as load_cohort names them
    if "study" not in table.columns or "subject_id" not in table.columns:
        return None
    rows = table.loc[table["subject_id"].str.strip() == subject_id, "study"].dropna()
    if rows.empty or not rows.iloc[0].strip():
        return None
    path = Path(rows.iloc[0].strip())
    return path if path.is_absolute() else cohort_dir / path


def zip_folder(folder: Path, dest: Path) -> Path:
    """The files under ``folder`` (an export) written as one zip archive to ``dest`` (outside ``folder``), with paths
    relative to it: streamed to disk, so a full-resolution export (hundreds of MB) is never held in memory."""
    import zipfile

    folder, dest = Path(folder), Path(dest)
    if dest.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"zip_folder: dest {dest} lies inside {folder}; write the archive beside the folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, path.relative_to(folder).as_posix())
    return dest
