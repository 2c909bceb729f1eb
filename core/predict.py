"""Individual predictions: one subject (the ``predict --json`` object) or a batch for evaluation.

``predict_subject`` returns ``times`` (days, increasing, starting at 0),
``survival`` (non-increasing, in [0, 1]), ``lower``/``upper`` (the band:
range of the ensemble's members, or MC dropout for a single network, as
``uncertainty`` says; ``lower <= survival <= upper``), ``risk_at`` {30, 365, 1825} (1 - S at the
horizon, read from the step curve; a horizon past the grid reads the last grid
value and is listed in ``beyond_grid``), ``risk`` and ``modalities_used``.

:class:`PredictionCache` keeps a case's prediction on disk (the app reopens a case without a model call):
keyed by the model's fingerprint (:func:`model_fingerprint`), the case's content (:func:`case_digest`),
its index date and the horizons; bounded in entries and bytes. This module imports torch only when it
predicts, so the app can read the cache before torch is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core import disk_cache
from core.cohort import Cohort, load_cohort
from core.errors import InputError
from core.ehr_read import feature_read, timeline_read
from core.horizons import HORIZONS, beyond_grid, risk_band_at
from core.io.study_date import scan_date_note
from core.io.volume import Volume
from core.models.config import CT_UNREAD
from core.models.types import CaseInputs, CasePrediction
from core.study_profile import (STATS, contrast_warning, model_profile, model_study_stats, outside, profile_warnings,
                                series_like_training, withhold_reason)

if TYPE_CHECKING:
    from core.registry import LoadedModel

def _clean(a: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in a]


@dataclass(frozen=True)
class ImageRead:
    """What a model may read of one CT: ``warnings`` (outside its training profile) and ``withheld``, why its
    image part must not read the CT at all (``core.study_profile.withhold_reason``), or None."""

    warnings: tuple[str, ...] = ()
    withheld: str | None = None
    like_training: str | None = None  # the key of the study's series recorded like the training studies (contrast)

    def details(self, read_anyway: bool = False) -> tuple[str, ...]:
        """The :attr:`warnings` worded for what happens to the CT: where it is withheld (and not ``read_anyway``),
        a warning's advice not to rely on the image part (``study_profile.RELY``) says that the prediction is made
        without the CT instead: there is no image part to rely on."""
        from core.study_profile import RELY, WITHOUT

        if self.withheld is None or read_anyway:
            return self.warnings
        return tuple(w.replace(RELY, WITHOUT) for w in self.warnings)

    def note(self, model_name: str, read_anyway: bool = False) -> str | None:
        """The one-line notice of a withheld CT, or of one read on request (``read_anyway``); None when the CT
        is not withheld."""
        if self.withheld is None:
            return None
        if read_anyway:
            return (f"The CT was read on request although it would be withheld from {model_name}: {self.withheld}. "
                    "This prediction reads something the model never saw in training: not reliable.")
        return (f"The CT is withheld from {model_name}: {self.withheld}. Its image part would read something it "
                "never saw in training, so the prediction is made without the CT (the EHR alone, or nothing).")


def image_read(model: LoadedModel, volume: Volume | None, stats: Mapping[str, float] | None = None) -> ImageRead:
    """What the model cannot read in this CT: outside its training profile (``core.study_profile``, a rule from
    the model's own training studies; far outside in anatomy: withheld); for a model saved without a profile,
    the lung-coverage check (a warning only). A series of another modality (MR, PET) is withheld: its values are
    not Hounsfield units. ``stats``: the CT's ``study_stats`` when already measured (this model's encoder pixel is
    added here unless ``stats`` came from ``model_study_stats`` with its transforms)."""
    if volume is None or not model.config.image.voxels:
        return ImageRead()
    read = _image_read(model, volume, stats)
    modality = (volume.modality or "").strip().upper()
    if modality not in ("CT", ""):  # the first reason, ahead of anatomy measured in values that are not HU
        return dataclasses.replace(read, withheld=f"the series is {modality}, not CT: its values are not Hounsfield "
                                                  "units, and every model here was trained on CT")
    return read


def _image_read(model: LoadedModel, volume: Volume, stats: Mapping[str, float] | None) -> ImageRead:
    if model.config.extra.get(CT_UNREAD):
        return ImageRead(("This model's risk does not change with the CT: in training, the linear term of the tabular "
                          "features gave its network weight 0, so it reads the features alone (its model card, Data).",))
    profile = model_profile(model.config)
    if profile is not None:
        if stats is None or "encoder_px_mm" not in stats:
            stats = model_study_stats(volume.hu, volume.spacing_mm, model.config.image.transforms(), stats)
        stats = dict(stats)
        working = model.config.image.slice_mm
        if isinstance(working, float) and stats.get("slice_mm", 0) > 0:
            from core.preprocess.slices import SliceSpacing

            k = SliceSpacing(working).factor(stats["slice_mm"])
            stats["slice_mm"] *= max(k, 1)  # thinner slices are read as slabs of k of them (thicker ones: as they are)
        contrast = contrast_warning(profile, volume.meta, volume.series)
        like = series_like_training(profile, volume.meta, volume.series)
        return ImageRead(tuple(profile_warnings(profile, stats)) + ((contrast,) if contrast else ()),
                         withhold_reason(profile, stats), None if like is None else str(like.key))
    from core.preprocess.lung import lung_coverage_warning

    note = lung_coverage_warning(volume.hu, volume.spacing_mm)
    return ImageRead((note,) if note else ())


def image_warnings(model: LoadedModel, volume: Volume | None) -> list[str]:
    """The warnings of :func:`image_read`."""
    return list(image_read(model, volume).warnings)


def split_image_reads(model: LoadedModel, cohort: Cohort, ids: Sequence[str]) -> dict[str, Any] | None:
    """How the model's CT gate (:func:`image_read`) treats the studies of ``ids``: ``studies`` (with a CT),
    ``warned`` (outside the training profile), ``withheld`` (other anatomy or scale: ``predict`` and the app read them
    without the CT), and ``outside``, per statistic label, how many studies lie outside its training range.
    None when the model reads no voxels or was saved without a training profile. ``evaluate`` reads every study
    as it is; this says how far the split departs from what the model was trained on."""
    profile = model_profile(model.config)
    if profile is None or not model.config.image.voxels:
        return None
    studies = warned = withheld = 0
    counts: dict[str, int] = {}
    for sid in ids:
        volume = cohort.load_volume(sid)
        if volume is None:
            continue
        stats = model_study_stats(volume.hu, volume.spacing_mm, model.config.image.transforms())
        read = image_read(model, volume, stats)
        studies += 1
        warned += bool(read.warnings)
        withheld += read.withheld is not None
        labels = [STATS[key][0] for key, _, _ in outside(profile, stats)]
        for label in labels + (["contrast"] if contrast_warning(profile, volume.meta) else []):
            counts[label] = counts.get(label, 0) + 1
    return {"studies": studies, "warned": warned, "withheld": withheld,
            "outside": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def split_image_reads_text(summary: Mapping[str, Any] | None) -> str | None:
    """One line on a :func:`split_image_reads` summary, or None when no study lies outside the profile."""
    if not summary or not summary.get("warned"):
        return None
    worst = ", ".join(f"{label}: {n}" for label, n in list(summary["outside"].items())[:3])
    return (f"{summary['warned']} of {summary['studies']} studies lie outside the model's training profile ({worst}); "
            f"{summary['withheld']} would be withheld by predict and the app (read as they are in these metrics)")


def without_image(inputs: CaseInputs) -> CaseInputs:
    """The case's inputs with its CT masked out (as for a case without one)."""
    return dataclasses.replace(inputs, image=None, image_mask=inputs.image_mask * 0)


def gated_inputs(inputs: CaseInputs, read: ImageRead, allow_ood: bool = False) -> CaseInputs:
    """``inputs`` without the CT when ``read`` withholds it (unless ``allow_ood``), else unchanged."""
    return without_image(inputs) if read.withheld and not allow_ood and inputs.image is not None else inputs


def prediction_json(model: LoadedModel, cohort: Cohort, subject_id: str, horizons: Sequence[int] = HORIZONS,
                    allow_ood: bool = False) -> dict:
    """The ``predict --json`` object. A CT far outside the model's training anatomy is withheld (the
    prediction is made without it; ``image_withheld`` says why) unless ``allow_ood``; ``scored`` is false
    when the model read nothing of the case (its curve is then not a prediction for this case)."""
    inputs = model.case_inputs(cohort, subject_id)
    volume = cohort.load_volume(subject_id) if inputs.image is not None else None
    read = image_read(model, volume) if volume is not None else ImageRead()
    inputs = gated_inputs(inputs, read, allow_ood)
    p = model.predict_case(inputs, tuple(int(h) for h in horizons))
    top_slices = [] if p.slice_weights is None or "image" not in p.modalities_used else [
        int(i) for i in np.argsort(-p.slice_weights)[:5]]
    warnings: list[str] = [*(volume.warnings if volume is not None else ()),  # how the study was read (tilt, gaps, MR)
                           *read.details(allow_ood), *timeline_read(model, inputs.events),
                           *feature_read(model, cohort, subject_id)]
    if model.config.ehr.sequence or model.config.ehr.summarises_timeline:  # no event read: a mismatched id?
        from core.cohort_notes import coverage_notes

        warnings += coverage_notes(cohort, timeline=True, ids=[str(subject_id)])
    scan_note = scan_date_note(volume.study_date, cohort.index_time(subject_id)) if volume is not None else None
    warnings += [scan_note] if scan_note else []  # a CT after the index time: the risk reads what came later
    withheld = None if allow_ood else read.note(model.fusion)
    notice = read.note(model.fusion, read_anyway=allow_ood)
    if notice:
        warnings.append(notice)
    if not p.modalities_used:
        warnings.append(f"{model.fusion} read nothing of this case: its curve is not a prediction for this case.")
    scored = bool(p.modalities_used)  # a model that read nothing of the case: no numbers a reader could take for it
    return {
        "subject_id": str(subject_id),
        "fusion": model.fusion,
        "head": model.config.head,
        "times": _clean(p.times),
        "survival": _clean(p.survival) if scored else None,
        "lower": _clean(p.lower) if scored else None,
        "upper": _clean(p.upper) if scored else None,
        "risk_at": {str(h): round(v, 6) if scored else None for h, v in p.risk_at.items()},
        "risk_band_at": {str(h): list(band) if scored else None  # the risk at each horizon, read off the band's edges
                         for h, band in risk_band_at(p.times, p.lower, p.upper, horizons).items()},
        "beyond_grid": beyond_grid(p.times, horizons),
        "risk": round(p.risk, 6) if scored else None,
        "modalities_used": p.modalities_used,
        "uncertainty": "ensemble" if model.ensemble_size > 1 else "mc_dropout",
        "ensemble_size": model.ensemble_size,
        "top_slices": top_slices,
        "n_events_used": int(len(inputs.events)),
        "warnings": warnings,
        "image_withheld": withheld,
        "scored": scored,
        "recalibration": model.config.extra.get("recalibration"),  # the site this copy was recalibrated to, or None
    }


def predict_subject(model_dir: Path | str, cohort_dir: Path | str, subject_id: str,
                    horizons: Sequence[int] = HORIZONS, device: str = "cpu", allow_ood: bool = False) -> dict:
    """The ``predict --json`` object for one subject of a cohort folder."""
    from core.registry import load_model

    model = load_model(Path(model_dir), device=device)
    cohort = load_cohort(Path(cohort_dir), for_training=False)
    return prediction_json(model, cohort, str(subject_id), horizons, allow_ood)


def predict_cohort(model: LoadedModel, cohort: Cohort, ids: list[str],
                   progress: Callable[[float, str], None] | None = None,
                   unread: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(times [T], surv [len(ids), T])`` in the order of ``ids``, from voxels/events (no gradients);
    ``progress(fraction, message)`` before each subject; ``unread`` collects the subjects of whom the model read
    nothing (no study, timeline or features it can read: their curve is the training average)."""
    import torch

    rows = []
    with torch.inference_mode():  # read-only on the shared network
        for i, sid in enumerate(ids):
            if progress is not None:
                progress(i / max(len(ids), 1), f"predicting subject {i + 1} of {len(ids)}")
            inputs = model.case_inputs(cohort, sid)
            if unread is not None and not model.modalities_used(inputs):
                unread.append(sid)
            out = model.forward(inputs)
            rows.append(out.survival[0].float().cpu().numpy())
    surv = np.clip(np.stack(rows), 0.0, 1.0) if rows else np.zeros((0, len(model.times)))
    return model.times, surv


# ----------------------------------------------------------------- the prediction cache

CACHE_VERSION = "6"  # 2: a CT far outside the model's training anatomy is withheld; 3: a timeline without a known code is not read;
#                     4: a features row without a value in any of the model's columns is not read;
#                     5: blank age and sex are read from the timeline (core.io.features.filled_from_timeline)
#                     6: a series of another modality than CT (MR, PET) is withheld


def model_fingerprint(model_dir: Path | str) -> str:
    """A hash of what defines a model folder: ``config.json``'s bytes and each ``*.safetensors`` file's name,
    size and modification time (retraining in place changes it; the app's caches written beside it do not)."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise InputError("model", str(root), "has no config.json", "pass a model folder written by `python -m core train`")
    h = hashlib.sha256(str(root.resolve()).encode())
    h.update((root / "config.json").read_bytes())
    for path in sorted(root.glob("*.safetensors")):
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _hash_frame(h: Any, frame: pd.DataFrame | None) -> None:
    if frame is None or frame.empty:
        h.update(b"-")
        return
    h.update(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame.astype(str), index=True).to_numpy().tobytes())


def case_digest(cohort: Cohort, subject_id: str, volume: Volume | None) -> str:
    """A hash of everything a model can read of one case: the CT's voxels and spacing, the cohort row (index
    date included), the events before the index date, the static rows without a time (a MIMIC GENDER row gives the
    sex a model reads where features.csv has none), the tabular features and precomputed embeddings."""
    sid = str(subject_id)
    h = hashlib.sha256(f"{CACHE_VERSION}:{sid}".encode())
    if volume is None:
        h.update(b"no-ct")
    else:
        hu = np.ascontiguousarray(volume.hu)
        h.update(f"{hu.shape}:{hu.dtype}:{tuple(float(x) for x in volume.spacing_mm)}".encode())
        h.update(hashlib.sha256(hu.tobytes()).digest())
    _hash_frame(h, cohort.row(sid).to_frame())
    _hash_frame(h, cohort.events(sid))
    rows = cohort.timeline_rows(sid)
    _hash_frame(h, None if rows is None else rows[rows["time"].isna()])
    for table in (cohort.features, cohort.image_embeddings, cohort.ehr_embeddings):
        _hash_frame(h, None if table is None or sid not in table.index else table.loc[[sid]])
    return h.hexdigest()[:32]


@dataclass
class CachedCase:
    """A case's prediction and the timeline events the model read (what the app draws), from the cache or fresh."""

    prediction: CasePrediction
    events: pd.DataFrame
    key: str


def _frame_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """The columns of ``frame`` as pickle-free arrays, or None when a column would not round-trip exactly."""
    out: dict[str, np.ndarray] = {}
    for i, col in enumerate(frame.columns):
        values = frame[col]
        if values.dtype.kind in "Mfiub":
            out[f"ev{i}"] = values.to_numpy()
        elif values.dtype == object and all(isinstance(v, str) for v in values):
            out[f"ev{i}"] = np.asarray(values.tolist(), dtype=str)
        else:
            return None
    return out


class PredictionCache(disk_cache.BoundedFolder):
    """Predictions of cases on disk: one ``.npz`` per (model, case, index date, horizons), pickle-free.

    Bounded: at most ``max_entries`` files and ``max_bytes`` bytes; the least recently used go first.
    A torn or foreign file is deleted and counts as a miss.
    """

    def __init__(self, root: Path | str, max_entries: int = 2000, max_bytes: int = 256 * 2**20) -> None:
        super().__init__(root, max_entries, max_bytes, "prediction cache")

    @staticmethod
    def key(model_fp: str, case: str, index_time: Any, horizons: Sequence[int] = HORIZONS) -> str:
        text = "\n".join([CACHE_VERSION, model_fp, case, str(index_time), ",".join(str(int(h)) for h in horizons)])
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise InputError("key", key, "must be a hex digest", "build it with PredictionCache.key")
        return self.root / f"{key}.npz"

    def get(self, key: str) -> CachedCase | None:
        def build(z: Mapping[str, Any], meta: dict[str, Any]) -> CachedCase:
            pred = CasePrediction(
                times=z["times"], survival=z["survival"], lower=z["lower"], upper=z["upper"], risk=float(z["risk"]),
                risk_at={int(h): float(v) for h, v in zip(z["risk_h"], z["risk_v"])},
                modalities_used=[str(m) for m in z["modalities"]],
                slice_weights=z.get("slice_weights"), event_weights=z.get("event_weights"),
                attention={name: z[f"att{i}"] for i, name in enumerate(meta["attention"])},
            )
            events = pd.DataFrame({col: (z[f"ev{i}"] if kind in "Mfiub" else pd.Series(z[f"ev{i}"].tolist(), dtype=object))
                                   for i, (col, kind) in enumerate(zip(meta["columns"], meta["kinds"]))},
                                  columns=meta["columns"])
            for col, dtype in zip(meta["columns"], meta["dtypes"]):
                if str(events[col].dtype) != dtype:
                    events[col] = events[col].astype(dtype)
            return CachedCase(pred, events, key)

        return disk_cache.load_npz(self._path(key), build)  # torn or foreign: None, predicted again

    def put(self, key: str, prediction: CasePrediction, events: pd.DataFrame) -> CachedCase:
        """Store a fresh prediction (when its events round-trip; otherwise it is returned without being kept)."""
        found = CachedCase(prediction, events, key)
        cols = _frame_arrays(events)
        if cols is None:
            return found
        meta = {"attention": list(prediction.attention), "columns": [str(c) for c in events.columns],
                "kinds": [events[c].dtype.kind for c in events.columns], "dtypes": [str(events[c].dtype) for c in events.columns]}
        arrays: dict[str, Any] = {
            "meta": np.asarray(json.dumps(meta)), "times": np.asarray(prediction.times, float),
            "survival": np.asarray(prediction.survival), "lower": np.asarray(prediction.lower),
            "upper": np.asarray(prediction.upper), "risk": np.asarray(float(prediction.risk)),
            "risk_h": np.asarray(list(prediction.risk_at), dtype=np.int64),
            "risk_v": np.asarray(list(prediction.risk_at.values()), dtype=float),
            "modalities": np.asarray(list(prediction.modalities_used), dtype=str), **cols,
        }
        if prediction.slice_weights is not None:
            arrays["slice_weights"] = np.asarray(prediction.slice_weights)
        if prediction.event_weights is not None:
            arrays["event_weights"] = np.asarray(prediction.event_weights)
        for i, name in enumerate(prediction.attention):
            arrays[f"att{i}"] = np.asarray(prediction.attention[name])
        disk_cache.save_npz(self._path(key), arrays)
        self._trim()
        return found

    def derived(self, key: str, name: str, compute: Callable[[], Any]) -> Any:
        """A JSON value derived from the case's prediction (e.g. its conformal bound), kept beside it."""
        path = self._path(key).with_suffix(".json")
        saved: dict = {}
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
            if name in saved:
                return saved[name]
        value = compute()
        saved[name] = value
        disk_cache.write_bytes_atomic(path, json.dumps(saved).encode())
        return value

    def _trim(self) -> None:
        disk_cache.trim(self.root, self.max_entries, self.max_bytes, companions=(".json",))

    def case(self, key: str, fresh: Callable[[], tuple[CasePrediction, pd.DataFrame]]) -> CachedCase:
        """The cached case, else ``fresh()`` (the model's prediction and the events it read), stored."""
        found = self.get(key)
        if found is not None:
            return found
        prediction, events = fresh()
        return self.put(key, prediction, events)
