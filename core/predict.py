"""Individual predictions: one subject (the ``predict --json`` object) or a batch for evaluation.

``predict_subject`` returns ``times`` (days, increasing, starting at 0),
``survival`` (non-increasing, in [0, 1]), ``lower``/``upper`` (the band:
range of the ensemble's members, or MC dropout for a single network, as
``uncertainty`` says; ``lower <= survival <= upper``), ``risk_at`` {30, 365, 1825} (1 - S at the
horizon, read from the step curve; a horizon past the grid reads the last grid
value and is listed in ``beyond_grid``), ``risk`` and ``modalities_used``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from core.cohort import Cohort, load_cohort
from core.horizons import HORIZONS, beyond_grid
from core.io.volume import Volume
from core.registry import LoadedModel, load_model
from core.study_profile import model_profile, study_warnings


def _clean(a: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in a]


def image_warnings(model: LoadedModel, volume: Volume | None) -> list[str]:
    """What the model cannot read in this CT: outside its training profile (``core.study_profile``, a rule from
    the model's own training studies); for a model saved without a profile, the lung-coverage check."""
    if volume is None:
        return []
    profile = model_profile(model.config)
    if profile is not None:
        return study_warnings(profile, volume.hu, volume.spacing_mm)
    from core.preprocess.lung import lung_coverage_warning

    note = lung_coverage_warning(volume.hu, volume.spacing_mm)
    return [note] if note else []


def prediction_json(model: LoadedModel, cohort: Cohort, subject_id: str, horizons: Sequence[int] = HORIZONS) -> dict:
    inputs = model.case_inputs(cohort, subject_id)
    p = model.predict_case(inputs, tuple(int(h) for h in horizons))
    top_slices = [] if p.slice_weights is None else [int(i) for i in np.argsort(-p.slice_weights)[:5]]
    warnings: list[str] = []
    if "image" in p.modalities_used and inputs.image is not None:
        warnings += image_warnings(model, cohort.load_volume(subject_id))
    return {
        "subject_id": str(subject_id),
        "fusion": model.fusion,
        "head": model.config.head,
        "times": _clean(p.times),
        "survival": _clean(p.survival),
        "lower": _clean(p.lower),
        "upper": _clean(p.upper),
        "risk_at": {str(h): round(v, 6) for h, v in p.risk_at.items()},
        "beyond_grid": beyond_grid(p.times, horizons),
        "risk": round(p.risk, 6),
        "modalities_used": p.modalities_used,
        "uncertainty": "ensemble" if model.ensemble_size > 1 else "mc_dropout",
        "ensemble_size": model.ensemble_size,
        "top_slices": top_slices,
        "n_events_used": int(len(inputs.events)),
        "warnings": warnings,
    }


def predict_subject(model_dir: Path | str, cohort_dir: Path | str, subject_id: str,
                    horizons: Sequence[int] = HORIZONS, device: str = "cpu") -> dict:
    """The ``predict --json`` object for one subject of a cohort folder."""
    model = load_model(Path(model_dir), device=device)
    cohort = load_cohort(Path(cohort_dir), for_training=False)
    return prediction_json(model, cohort, str(subject_id), horizons)


def predict_cohort(model: LoadedModel, cohort: Cohort, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(times [T], surv [len(ids), T])`` in the order of ``ids``, from voxels/events (no gradients)."""
    import torch

    rows = []
    with torch.inference_mode():  # read-only on the shared network
        for sid in ids:
            out = model.forward(model.case_inputs(cohort, sid))
            rows.append(out.survival[0].float().cpu().numpy())
    surv = np.clip(np.stack(rows), 0.0, 1.0) if rows else np.zeros((0, len(model.times)))
    return model.times, surv
