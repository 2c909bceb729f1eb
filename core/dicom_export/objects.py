"""highdicom builders: saliency Parametric Map, top-region Segmentation, prediction Comprehensive SR.

Every object is created on the geometry of a :class:`~core.dicom_export.series.SourceSeries`
(same Frame of Reference, one frame per source image with its position and
orientation, the source instances referenced), copies the patient and study
attributes of the source (highdicom does this) and adds nothing identifying.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from core.dicom_export.series import MANUFACTURER, SourceSeries
from core.errors import InputError

# Local coding scheme (PS3.16 8.2: designators starting with "99" are private).
SCHEME = "99CTEHR"
SALIENCY = CodedConcept("130404", "DCM", "Saliency")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
REPORT_TITLE = CodedConcept("SURVRISK", SCHEME, "Survival risk prediction report")
MODALITY_USED = CodedConcept("MODUSED", SCHEME, "Input modality used")
MODEL_CARD = CodedConcept("MODELCARD", SCHEME, "Model card reference")
DISCLAIMER = CodedConcept("DISCLAIM", SCHEME, "Intended use")
COMMENT = CodedConcept("121106", "DCM", "Comment")
ATTRIBUTION_METHOD = CodedConcept("ATTRMETH", SCHEME, "Attribution method")
DISCLAIMER_TEXT = "Research use only. Not a medical device; not for clinical decisions."


@dataclass(frozen=True)
class ModelInfo:
    """What the exported objects say about the model that produced them."""

    name: str       # e.g. "concat fusion, discrete head"
    version: str    # software version and weights digest
    card: str       # model card reference (file name and SHA-256)
    device_serial: str  # weights digest prefix, written as DeviceSerialNumber of the algorithm "device"


def _risk_concept(days: int) -> CodedConcept:
    label = {30: "30 days", 365: "1 year", 1825: "5 years"}.get(int(days), f"{int(days)} days")
    return CodedConcept(f"RISK{int(days)}D", SCHEME, f"Predicted risk of the event within {label}")


def algorithm(model: ModelInfo, parameters: dict[str, str] | None = None) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name[:64], family=codes.cid7162.ArtificialIntelligence, version=model.version[:64],
        source=MANUFACTURER, parameters=parameters,
    )


def _geometry(series: SourceSeries) -> dict[str, object]:
    first = series.planes[0]
    return {
        "pixel_measures": hd.PixelMeasuresSequence(pixel_spacing=list(first.spacing), slice_thickness=first.thickness or None),
        "plane_orientation": hd.PlaneOrientationSequence(
            coordinate_system="PATIENT", image_orientation=[float(v) for v in first.orientation]),
        "plane_positions": [
            hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=[float(v) for v in plane.position])
            for plane in series.planes
        ],
    }


def parametric_map(series: SourceSeries, saliency: np.ndarray, model: ModelInfo, method: str, *,
                   series_number: int = 901) -> hd.pm.ParametricMap:
    """The map as 32-bit float frames with an identity Real World Value Mapping (stored value = saliency)."""
    frames = series.frames_from_volume(np.asarray(saliency, dtype=np.float32)).astype(np.float32)
    if not np.all(np.isfinite(frames)):
        raise InputError("saliency map", "non-finite values", "cannot be stored", "recompute the attribution")
    lo, hi = float(frames.min()), float(frames.max())
    if hi <= lo:
        hi = lo + 1.0  # a constant map: the mapping needs a non-empty range
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation=f"{method} attribution of the predicted risk"[:64], unit=NO_UNITS,
        value_range=(lo, hi), slope=1.0, intercept=0.0, quantity_definition=SALIENCY,
    )
    peak = float(np.max(np.abs(frames))) or 1.0
    # LINEAR_EXACT: the window of a saliency map is far below 1 (PS3.3 C.11.2.1.2 forbids that for LINEAR)
    voi = hd.VOILUTTransformation(window_center=0.0, window_width=2.0 * peak, voi_lut_function="LINEAR_EXACT")
    pm = hd.pm.ParametricMap(
        source_images=series.datasets, pixel_array=frames, series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=model.name[:64], software_versions=model.version[:64],
        device_serial_number=model.device_serial, contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping], voi_lut_transformations=[voi],
        content_label="SALIENCY", content_description=f"{method} saliency map"[:64],
        series_description=f"Saliency map ({method})"[:64], **_geometry(series),
    )
    return _series_type2(pm, series)


def top_region(saliency: np.ndarray, percentile: float = 99.0) -> tuple[np.ndarray, float]:
    """Voxels whose |map| is at or above the ``percentile`` of the non-zero |map| values, and that threshold."""
    if not 0.0 < percentile < 100.0:
        raise InputError("percentile", percentile, "must be between 0 and 100", "use e.g. 99")
    magnitude = np.abs(np.asarray(saliency, dtype=np.float32))
    nonzero = magnitude[magnitude > 0]
    if nonzero.size == 0:
        raise InputError("saliency map", "all zero", "has no region to segment", "use another method or model")
    threshold = float(np.percentile(nonzero, percentile, overwrite_input=True))  # nonzero is our own copy
    return (magnitude >= threshold) & (magnitude > 0), threshold


def segmentation(series: SourceSeries, region: np.ndarray, model: ModelInfo, method: str, percentile: float, *,
                 series_number: int = 902) -> hd.seg.Segmentation:
    """One binary segment: the top region of the saliency map."""
    frames = series.frames_from_volume(region.astype(np.uint8)).astype(np.uint8)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"Saliency top {100 - percentile:g}%"[:64],
        segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=CodedConcept("130488", "DCM", "Region in Space"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm(model, {"method": method, "percentile of |map|": f"{percentile:g}"}),
        tracking_uid=generate_uid(), tracking_id="saliency top region",
    )
    seg = hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name[:64], software_versions=model.version[:64],
        device_serial_number=model.device_serial, content_label="SALIENCY_TOP",
        content_description=f"Top region of the {method} saliency map"[:64],
        series_description=f"Saliency top region ({method})"[:64], omit_empty_frames=False, **_geometry(series),
    )
    return seg


def _series_type2(obj: Dataset, series: SourceSeries) -> Dataset:
    """General Series Laterality (type 2C): the source's value, else empty (unknown, not invented)."""
    if "Laterality" not in obj:
        obj.Laterality = series.datasets[0].get("Laterality", "")
    return obj


def _image_ref(ds: Dataset) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(
        name=CodedConcept("121112", "DCM", "Source of Measurement"), referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def structured_report(series: SourceSeries, model: ModelInfo, risk_at: dict[int, float],
                      modalities_used: Sequence[str], method: str | None,
                      derived_objects: Sequence[Dataset] = (), *, series_number: int = 903,
                      cautions: Sequence[str] = ()) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR: risk at each horizon (NUM, no units, 0..1), model name/version/card, modalities used, and
    each of ``cautions`` (e.g. a CT read on request although outside the model's training anatomy) as a Comment."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(name=CodedConcept("111001", "DCM", "Algorithm Name"), value=model.name,
                              relationship_type=contains),
        hd.sr.TextContentItem(name=CodedConcept("111003", "DCM", "Algorithm Version"), value=model.version,
                              relationship_type=contains),
        hd.sr.TextContentItem(name=MODEL_CARD, value=model.card, relationship_type=contains),
        hd.sr.TextContentItem(name=DISCLAIMER, value=DISCLAIMER_TEXT, relationship_type=contains),
    ]
    for days in sorted(risk_at):
        value = float(risk_at[days])
        if not np.isfinite(value) or not 0.0 <= value <= 1.0:
            raise InputError("risk_at", value, f"is not a probability at {days} days", "check the model's prediction")
        items.append(hd.sr.NumContentItem(name=_risk_concept(days), value=round(value, 6), unit=NO_UNITS,
                                          relationship_type=contains))
    for modality in modalities_used:
        items.append(hd.sr.TextContentItem(name=MODALITY_USED, value=str(modality), relationship_type=contains))
    if method:
        items.append(hd.sr.TextContentItem(name=ATTRIBUTION_METHOD, value=method, relationship_type=contains))
    for text in cautions:  # UT values: no length limit that matters here
        items.append(hd.sr.TextContentItem(name=COMMENT, value=str(text), relationship_type=contains))
    items.extend(_image_ref(ds) for ds in derived_objects)
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=[*series.datasets, *derived_objects], content=root, series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="Survival risk prediction",
    )
    scheme = Dataset()  # declare the private coding scheme (PS3.3 C.12.1.1.2.1)
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "CT + EHR survival explorer local codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def save(obj: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.save_as(path, enforce_file_format=True)
    return path
