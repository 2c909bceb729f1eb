"""Training at a working slice spacing (``ImageConfig.slice_mm``, ``core.preprocess.slices.SliceSpacing``).

The training cache keeps every study's prepared slices at the study's own slice spacing (``image_slice_mm``, one
value per subject). :func:`check_slice_mm` validates the setting; :func:`resolve_slice_mm` turns ``"auto"`` into
the median slice spacing of the training studies (a cohort scanned at one spacing is then read exactly as before);
:func:`to_working_slices` bins every study's cached slices into slabs near it, with the chain's own step, so
training sees what prediction and explanation compute from the study's HU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.cohort import Cohort
from core.errors import InputError
from core.preprocess.slices import SliceSpacing


def check_slice_mm(value: Any) -> float | str | None:
    """The ``slice_mm`` setting: None (each study's own slices), ``"auto"`` or a positive spacing in mm."""
    if value is None or value == "auto":
        return value
    try:
        mm = float(value)
    except (TypeError, ValueError):
        raise InputError("slice_mm", value, "is not a spacing", "use auto, off or a number of mm such as 5") from None
    if not np.isfinite(mm) or mm <= 0:
        raise InputError("slice_mm", value, "must be a positive number of mm", "use auto, off or e.g. 5")
    return mm


def resolve_slice_mm(icfg: dict[str, Any], spacing_mm: torch.Tensor, rows: np.ndarray) -> float | None:
    """Set ``icfg["slice_mm"]`` from ``"auto"`` to the median slice spacing of the studies at ``rows`` (the
    training subjects with a CT; rounded to 0.01 mm); return the working spacing (None when off)."""
    value = icfg.get("slice_mm")
    if value != "auto":
        return None if value is None else float(value)
    picked = spacing_mm[torch.as_tensor(rows, dtype=torch.long)] if len(rows) else spacing_mm[spacing_mm > 0]
    picked = picked[picked > 0]
    if not len(picked):
        raise InputError("slice_mm", "auto", "no training study has a slice spacing", "give a number of mm")
    icfg["slice_mm"] = round(float(np.median(picked.numpy())), 2)
    return float(icfg["slice_mm"])


def to_working_slices(pre: dict[str, torch.Tensor], slice_mm: float | None) -> dict[str, torch.Tensor]:
    """The training cache's prepared studies (``image_preprocessed`` ``[N, S, H, W]``, ``image_token_mask``,
    ``image_slice_mm``) with every study's slices in slabs near ``slice_mm`` (``SliceSpacing``): padded again to the
    longest; unchanged when ``slice_mm`` is None or every study is read as it is."""
    if slice_mm is None:
        return pre
    if "image_slice_mm" not in pre:
        raise InputError("training cache", "no slice spacings", "was written before slice spacings were kept",
                         "delete the cohort's .cache folder and train again")
    step = SliceSpacing(float(slice_mm))
    x, mask, spacing = pre["image_preprocessed"], pre["image_token_mask"], pre["image_slice_mm"]
    counts = mask.sum(dim=1).long()
    present = pre["image_present"] > 0
    if all(step.identity(float(spacing[i])) for i in range(len(spacing)) if bool(present[i])):
        return pre
    out: list[torch.Tensor | None] = []
    for i in range(x.shape[0]):
        n = int(counts[i])
        if not bool(present[i]) or n == 0:
            out.append(None)
            continue
        out.append(step(x[i:i + 1, :n].float(), float(spacing[i]))[0].to(x.dtype))
    s_max = max(int(a.shape[0]) for a in out if a is not None)
    new_x = torch.zeros((x.shape[0], s_max, *x.shape[2:]), dtype=x.dtype)
    new_mask = torch.zeros(x.shape[0], s_max)
    for i, a in enumerate(out):
        if a is not None:
            new_x[i, :a.shape[0]] = a
            new_mask[i, :a.shape[0]] = 1
    return {**pre, "image_preprocessed": new_x, "image_token_mask": new_mask}


def working_slices(pre: dict[str, torch.Tensor], icfg: dict[str, Any], cohort: Cohort) -> dict[str, torch.Tensor]:
    """``pre`` at the config's working slice spacing (``"auto"``: set here from the training studies)."""
    if icfg.get("kind") != "2d" or icfg.get("slice_mm") is None:
        return pre
    rows = np.flatnonzero((cohort.table["split"] == "train").to_numpy() & (pre["image_present"].numpy() > 0))
    return to_working_slices(pre, resolve_slice_mm(icfg, pre["image_slice_mm"], rows))
