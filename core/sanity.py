"""Sanity checks of image attributions (Adebayo et al. 2018; the pointing game of Zhang et al. 2016).

* ``cascading_randomization``: re-initialise the network's layers one group at a
  time from the survival head backwards into the image encoder, and after each
  step compare the |map| with the trained model's |map| (Spearman rank
  correlation over the voxels where either map is non-zero: a lung-masked
  encoder gives exact zeros outside the lungs whatever its weights, and those
  ties alone would keep the correlation near 1). A method that explains the model must change
  when the weights it depends on are destroyed: correlations should fall.
* ``pointing_game``: on test cases with a lesion (cohort columns
  ``<p>_slice, <p>_row, <p>_col, <p>_radius_mm`` for each prefix ``<p>`` of
  ``LESION_PREFIXES``: the demo's lung nodule and liver lesion, a real-anatomy
  cohort's first and second lesion), a hit when the argmax voxel of the lightly
  smoothed |map| lies within the radius plus a tolerance of *any* of the case's
  lesion centres, in mm (voxel spacing).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.errors import InputError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from core.cohort import Cohort
    from core.models.types import CaseInputs
    from core.registry import LoadedModel

LESION_COLUMNS = ("lesion", "lesion_slice", "lesion_row", "lesion_col", "lesion_radius_mm")
LESION_PREFIXES = ("lesion", "liver_lesion", "lesion2")
TOLERANCE_MM = 10.0
SMOOTH_SIGMA_VOXELS = 1.0


def lesion_centres(row: pd.Series) -> list[tuple[np.ndarray, float]]:
    """``(centre voxel (slice, row, col), radius mm)`` of every lesion of a cohort.csv row.

    >>> row = pd.Series({"lesion_slice": 3, "lesion_row": 4, "lesion_col": 5, "lesion_radius_mm": 8.0,
    ...                  "liver_lesion_slice": None, "liver_lesion_row": None, "liver_lesion_col": None})
    >>> [(c.tolist(), r) for c, r in lesion_centres(row)]
    [([3.0, 4.0, 5.0], 8.0)]
    """
    out = []
    for p in LESION_PREFIXES:
        cols = [f"{p}_slice", f"{p}_row", f"{p}_col", f"{p}_radius_mm"]
        if all(c in row.index and pd.notna(row[c]) for c in cols):
            out.append((np.array([row[cols[0]], row[cols[1]], row[cols[2]]], dtype=float), float(row[cols[3]])))
    return out


def has_lesion(table: pd.DataFrame) -> pd.Series:
    """Rows of a cohort table with at least one annotated lesion centre (any of ``LESION_PREFIXES``)."""
    found = pd.Series(False, index=table.index)
    for p in LESION_PREFIXES:
        cols = [f"{p}_slice", f"{p}_row", f"{p}_col", f"{p}_radius_mm"]
        if all(c in table.columns for c in cols):
            found |= table[cols].notna().all(axis=1)
    return found


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0.0 when either is constant: no ranking to compare).

    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 35.0]))
    1.0
    >>> spearman(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    0.0
    """
    from scipy.stats import rankdata

    x, y = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if x.size != y.size:
        raise InputError("maps", f"{x.size} vs {y.size} voxels", "must have equal size", "attribute the same volume")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    r = float(np.corrcoef(rx, ry)[0, 1])
    return float(np.clip(r, -1.0, 1.0))


def randomization_steps(net: Any) -> list[tuple[str, list[Any]]]:
    """Layer groups in cascade order, from the head backwards: head, fusion, EHR encoders, image projection,
    then the image encoder's parameterised layers from the last to the first."""
    steps: list[tuple[str, list[Any]]] = []
    members = list(getattr(net, "members", [net]))  # an ensemble: the same layer of every member at once
    for name in ("head", "fusion", "seq", "tab", "ehr_emb_proj", "type_emb", "slice_pos", "slice_scales", "image_proj"):
        mods = [getattr(m, name, None) for m in members]
        mods = [m for m in mods if m is not None and any(True for _ in m.parameters())]
        if mods:
            steps.append((name, mods))
    enc = getattr(net, "image_encoder", None)
    if enc is not None:
        leaves = [(n, m) for n, m in enc.named_modules()
                  if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _norm_types())]
        for n, m in reversed(leaves):
            steps.append((f"image_encoder.{n}", [m]))
    return steps


def _norm_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _private_copy(net: Any) -> Any:
    """A deep copy of ``net`` with its own parameters, to randomize; modules held outside its module tree (the
    frozen foundation backbone, which no step randomizes) stay shared instead of being copied."""
    import torch

    tree = {id(m) for m in net.modules()}
    memo = {id(v): v for m in net.modules() for v in vars(m).values()
            if isinstance(v, torch.nn.Module) and id(v) not in tree}
    return copy.deepcopy(net, memo)


def _reinit(modules: list[Any], seed: int) -> None:
    """Re-initialise ``modules`` in place from a generator of their own, seeded with ``seed`` (the process-wide
    random state is left alone: this runs in a background thread beside other sessions). As the layers' own
    ``reset_parameters`` would: weights Kaiming-uniform (Linear, convolutions, attention projections), embeddings
    N(0, 1), biases U(+-1/sqrt(fan_in)), norm layers to ones and zeros; other parameters N(0, 0.02)."""
    import math

    import torch
    from torch import nn

    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for top in modules:
            for m in top.modules():
                own = list(m.named_parameters(recurse=False))
                if not own:
                    continue
                if isinstance(m, _norm_types()) and callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()  # ones and zeros: no random draw
                    continue
                initialises = callable(getattr(m, "reset_parameters", None)) or callable(getattr(m, "_reset_parameters", None))
                weights = [p for _, p in own if p.dim() >= 2]
                fan_in = nn.init._calculate_fan_in_and_fan_out(weights[0])[0] if weights else 0
                for _, p in own:
                    if not initialises:
                        p.normal_(0.0, 0.02, generator=g)
                    elif isinstance(m, nn.Embedding):
                        p.normal_(0.0, 1.0, generator=g)
                    elif p.dim() >= 2:
                        nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)
                    else:
                        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                        p.uniform_(-bound, bound, generator=g)


def cascading_randomization(model: LoadedModel, inputs: CaseInputs | list[CaseInputs], method: str = "saliency",
                            horizon_days: float | None = None, seed: int = 0) -> tuple[pd.DataFrame, go.Figure]:
    """Table ``step, layer, spearman`` (mean over cases; step 0 = trained model, 1.0) and a plotly line figure."""
    import plotly.graph_objects as go

    from core.explain import attribute

    cases = inputs if isinstance(inputs, list) else [inputs]
    if not cases:
        raise InputError("inputs", [], "is empty", "pass at least one case with a CT")
    originals = [np.abs(attribute(model, c, method, horizon_days, None, with_events=False).map) for c in cases]
    work = dataclasses.replace(model, net=_private_copy(model.net))  # randomized here; the shared net only read
    rows: list[dict[str, Any]] = [{"step": 0, "layer": "trained model", "spearman": 1.0}]
    for i, (name, mods) in enumerate(randomization_steps(work.net), start=1):
        _reinit(mods, seed + i)
        work.net.eval()
        corr = []
        for o, c in zip(originals, cases):
            after = np.abs(attribute(work, c, method, horizon_days, None, with_events=False).map)
            support = (o > 0) | (after > 0)  # voxels the input lets gradients reach (e.g. inside the lung mask)
            corr.append(spearman(o[support], after[support]) if support.any() else 0.0)
        rows.append({"step": i, "layer": name, "spearman": float(np.mean(corr))})
    table = pd.DataFrame(rows)
    fig = go.Figure(go.Scatter(x=table["layer"], y=table["spearman"], mode="lines+markers", name=method))
    fig.update_layout(title={"text": f"Cascading randomization ({method})"}, xaxis_title="layers re-initialised up to",
                      yaxis_title="Spearman rank correlation of |map|", yaxis={"range": [-1.05, 1.05]},
                      template="plotly_white", width=760, height=420)
    return table, fig


def pointing_game(model: LoadedModel, cohort: Cohort, method: str = "saliency", horizon_days: float | None = None,
                  max_cases: int = 10, split: str = "test", tolerance_mm: float = TOLERANCE_MM) -> dict[str, Any]:
    """``{rate, hits, n, tolerance_mm, cases: [{case, distance_mm, radius_mm, hit}]}`` over lesion cases of ``split``."""
    from core.explain import attribute

    t = cohort.table
    missing = [c for c in LESION_COLUMNS if c not in t.columns]
    if missing:
        raise InputError("cohort", ", ".join(missing), "lesion columns are missing",
                         "run the pointing game on a cohort with lesion annotations (python -m core demo)")
    if int(max_cases) < 1:
        raise InputError("max_cases", max_cases, "must be >= 1", "use e.g. 10")
    ids = set(cohort.ids(split))
    rows = t[(t["subject_id"].astype(str).isin(ids)) & has_lesion(t)].head(int(max_cases))
    cases: list[dict[str, Any]] = []
    for n, (_, row) in enumerate(rows.iterrows(), start=1):
        sid = str(row["subject_id"])
        vol = cohort.load_volume(sid)
        if vol is None:
            continue
        inputs = model.case_inputs(cohort, sid)
        amap = np.abs(attribute(model, inputs, method, horizon_days, None, with_events=False).map)
        peak = np.array(map_peak(amap) or (0, 0, 0), dtype=float)  # a map that is zero everywhere: its first voxel
        spacing = np.asarray(vol.spacing_mm, dtype=float)
        dists = [(float(np.linalg.norm((peak - centre) * spacing)), radius) for centre, radius in lesion_centres(row)]
        dist, radius = min(dists, key=lambda d: d[0] - d[1])  # the lesion the peak is nearest to hitting
        cases.append({"case": n, "distance_mm": round(dist, 2), "radius_mm": radius,
                      "hit": any(d <= r + tolerance_mm for d, r in dists)})
    hits = sum(c["hit"] for c in cases)
    return {"method": method, "rate": (hits / len(cases)) if cases else float("nan"), "hits": hits, "n": len(cases),
            "tolerance_mm": float(tolerance_mm), "cases": cases}


def map_peak(attribution: np.ndarray) -> tuple[int, int, int] | None:
    """Where a whole-volume map points: the ``(slice, row, col)`` of the largest |map| after a Gaussian smoothing of
    ``SMOOTH_SIGMA_VOXELS`` (a spot of colour, not one stray voxel); None for a map that is zero everywhere.

    The pointing game scores this voxel, and Case review's "go to the map's strongest spot" moves the crosshair to it.

    >>> m = np.zeros((5, 9, 9)); m[1, 0, 0] = 1.0; m[3, 3:6, 4:7] = 0.6
    >>> map_peak(m), map_peak(np.zeros((2, 2, 2)))
    ((3, 4, 5), None)
    """
    from scipy import ndimage

    a = np.abs(np.nan_to_num(np.asarray(attribution, dtype=np.float32)))  # float32: a full-size CT's map is 300 MB
    if a.ndim != 3 or not a.any():
        return None
    smooth = ndimage.gaussian_filter(a, SMOOTH_SIGMA_VOXELS)
    s, r, c = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return int(s), int(r), int(c)


def in_body(hu: np.ndarray, voxel: tuple[int, int, int]) -> bool:
    """Whether ``voxel`` (slice, row, col) of a CT (``hu`` [slices, rows, cols]) lies in the patient's body on its
    slice: the largest connected region above -500 HU, its enclosed holes (lungs, bowel gas) filled; the air around
    the patient and a table apart from the body are outside.

    >>> ct = np.full((1, 12, 12), -1000.0); ct[0, 2:9, 2:9] = 40.0; ct[0, 4:6, 4:6] = -900.0  # a body, a lung
    >>> ct[0, 11, :] = 200.0  # the table
    >>> in_body(ct, (0, 4, 4)), in_body(ct, (0, 0, 0)), in_body(ct, (0, 11, 3))
    (True, False, False)
    """
    from scipy import ndimage

    s, r, c = (int(v) for v in voxel)
    plane = np.asarray(hu[s], dtype=np.float32) > -500.0
    labels, n = ndimage.label(plane)
    if n == 0:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    body = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    return bool(body[r, c])


#: what the randomization test of a model on the frozen foundation backbone leaves out, said with its result
FROZEN_NOTE = ("The frozen foundation backbone (pretrained weights, not trained here) is not re-initialised: the "
               "steps cover the layers trained on this cohort, so a Spearman that stays high may be the backbone's.")


def randomization_note(model: LoadedModel) -> str | None:
    """:data:`FROZEN_NOTE` for a model on the frozen foundation backbone, else None."""
    return FROZEN_NOTE if model.config.image.kind == "foundation" else None


def model_card_section(table: pd.DataFrame, pointing: dict[str, Any], method: str, note: str | None = None,
                       source: str | None = None) -> str:
    """Markdown "Sanity checks" section for MODEL_CARD.md with the block of one method (``append_to_model_card``
    merges it with the blocks of other methods already on the card); ``note``: :func:`randomization_note`;
    ``source``: where the cases came from, e.g. "cohort demo40, test split, 2 randomization cases"."""
    return "## Sanity checks\n\n" + _method_block(table, pointing, method, note, source)


def _method_block(table: pd.DataFrame, pointing: dict[str, Any], method: str, note: str | None = None,
                  source: str | None = None) -> str:
    lines = [f"Method `{method}`{f' ({source})' if source else ''}. Cascading model-parameter randomization (head "
             "backwards; Spearman rank correlation of |map| with the trained model's map, mean over cases)"
             + (f". {note}" if note else "") + ":", "",
             "| step | re-initialised up to | Spearman |", "| --- | --- | --- |"]
    lines += [f"| {int(r.step)} | {r.layer} | {r.spearman:.3f} |" for r in table.itertuples()]
    rate = pointing.get("rate", float("nan"))
    lines += ["", f"Pointing game on {pointing.get('n', 0)} test cases with a lesion: {pointing.get('hits', 0)} hits, "
              f"rate {rate:.2f} (argmax of the smoothed |map| within radius + {pointing.get('tolerance_mm', TOLERANCE_MM):g} mm "
              "of the lesion centre).", ""]
    return "\n".join(lines)


def method_blocks(section: str) -> dict[str, str]:
    """``{method: its block}`` of a "Sanity checks" section body, in card order (a block starts at "Method `m`.").

    >>> list(method_blocks("Method `saliency`. a\\n| 0 | t | 1 |\\n\\nMethod `gradcam`. b\\n"))
    ['saliency', 'gradcam']
    """
    import re

    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^Method `([a-z_]+)`", section, flags=re.MULTILINE)]
    ends = [pos for pos, _ in starts[1:]] + [len(section)]
    return {name: section[pos:end].strip() + "\n" for (pos, name), end in zip(starts, ends)}


def append_to_model_card(model_dir: Any, section: str) -> None:
    """Put a ``model_card_section`` into ``MODEL_CARD.md``: its method's block replaces that method's earlier block,
    the other methods' blocks stay (one "Sanity checks" section, added at the end when the card has none)."""
    from pathlib import Path

    path = Path(model_dir) / "MODEL_CARD.md"
    text = path.read_text() if path.exists() else ""
    new = method_blocks(section.partition("## Sanity checks")[2])
    if "## Sanity checks" in text:
        head, _, rest = text.partition("## Sanity checks")
        nxt = rest.find("\n## ")
        body, tail = (rest[:nxt], rest[nxt + 1:]) if nxt >= 0 else (rest, "")
        blocks = {**method_blocks(body), **new}
        text = head.rstrip() + "\n\n## Sanity checks\n\n" + "\n".join(blocks.values()) + ("\n" + tail if tail else "")
    else:
        text = text.rstrip() + "\n\n## Sanity checks\n\n" + "\n".join(new.values())
    path.write_text(text)
