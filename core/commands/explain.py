"""``python -m core explain --model M --cohort DIR --subject ID --method M --out FILE [--horizon DAYS] [--slice K]``.

Writes the attribution figure (one axial slice with the overlay: ``--slice``, or
the slice with the largest share of |attribution|) as PNG (>= 300 dpi), SVG or
PDF by the suffix of ``--out``, with a caption (model, fusion, method, target
horizon, slice, window), and prints the top slices and events. The subject id
goes into neither the figure, its caption, its metadata nor any printed line:
the figure is labelled with a neutral case label.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

HELP = "attribution figure (saliency, IG, Grad-CAM, occlusion, SmoothGrad, detector evidence) for one subject"
from core.explain import METHODS, check_method

if TYPE_CHECKING:
    import numpy as np

    from core.io.volume import Volume
    from core.models.types import CaseInputs
    from core.registry import LoadedModel

SUFFIXES = (".png", ".svg", ".pdf")
MAP_SUFFIXES = (".npy", ".nii.gz", ".nii")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder")
    parser.add_argument("--subject", required=True, help="subject id (never written into the figure)")
    parser.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    parser.add_argument("--out", required=True, type=Path, help="figure file: .png, .svg or .pdf")
    parser.add_argument("--horizon", type=float, default=None,
                        help="target horizon in days (default 365, or the grid median when 365 is past it)")
    parser.add_argument("--slice", type=int, default=None, dest="slice_index",
                        help="0-based index of the axial slice to attribute and show (the app's slice K+1; per-slice mode "
                             "for 2D encoders)")
    parser.add_argument("--window", default="lung", help="display window preset (lung, soft_tissue, ...) or LO,HI in HU")
    parser.add_argument("--baseline", default="air", help="integrated gradients baseline: air or blur")
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients steps")
    parser.add_argument("--save-map", type=Path, default=None,
                        help="also save the map: .npy [S, R, C] float32, or .nii.gz / .nii on the study's own geometry "
                             "(opens over the CT in a NIfTI viewer)")
    parser.add_argument("--label", default="case", help="neutral case label for the figure title")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _window(text: str) -> tuple[tuple[float, float], str]:
    from core.errors import InputError
    from core.io.windows import WINDOWS

    if text in WINDOWS:
        w = WINDOWS[text]
        return (float(w.low), float(w.high)), text
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise InputError("window", text, "is not a preset or LO,HI", f"use one of {', '.join(WINDOWS)} or e.g. -160,240") from None
    if not lo < hi:
        raise InputError("window", text, "needs LO < HI", "pass e.g. -160,240")
    return (lo, hi), f"[{lo:g}, {hi:g}] HU"


def save_map(path: Path, values: np.ndarray, volume: Volume | None) -> None:
    """The map as ``.npy`` ``[S, R, C]`` float32, or as NIfTI (float32) with the study's own affine (``volume``,
    needed for NIfTI only)."""
    import numpy as np

    if path.name.lower().endswith(".npy"):
        np.save(path, values.astype(np.float32))
        return
    import gzip

    from core.app.volume_nifti import map_to_nifti

    if volume is None:
        raise ValueError("save_map: got no study, a NIfTI map needs its geometry; fix: pass the study's Volume")
    data = map_to_nifti(volume, values, as_source=True)  # gzipped; a NIfTI study's own axis order
    path.write_bytes(data if path.name.lower().endswith(".gz") else gzip.decompress(data))


def target_value(model: LoadedModel, inputs: CaseInputs, horizon_days: float) -> float:
    """The value the map attributes: the risk 1 - S(t) at ``horizon_days`` of one forward pass of the case with its CT
    (the ensemble's mean curve; cached image tokens are used where the model keeps them)."""
    import numpy as np
    import torch

    from core.explain import risk_at

    with torch.no_grad():
        survival = model.forward(inputs).survival
    return float(risk_at(survival, np.asarray(model.times, dtype=float), horizon_days)[0])


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError

    check_method(args.method, "--method")
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        raise InputError("--out", out.name, "has an unknown suffix", "end the file name in .png, .svg or .pdf")
    if not out.parent.exists():
        raise InputError("--out", str(out.parent), "folder does not exist", "create the folder first")
    if args.save_map is not None and not Path(args.save_map).name.lower().endswith(MAP_SUFFIXES):
        raise InputError("--save-map", Path(args.save_map).name, f"must end in {', '.join(MAP_SUFFIXES)}",
                         "pass e.g. map.nii.gz")
    window, window_name = _window(args.window)

    from core import figure_export
    from core import figures as F
    from core.cohort import load_cohort
    from core.explain import METHOD_LABELS, attribute
    from core.horizons import past_grid_note
    from core.registry import load_model

    model = load_model(args.model)
    cohort = load_cohort(args.cohort, for_training=False)
    inputs = model.case_inputs(cohort, str(args.subject))
    volume = cohort.load_volume(str(args.subject))
    if not model.config.image.voxels:
        raise InputError("--model", model.fusion, "reads no CT voxels, so there is no attribution on the CT to show",
                         "explain with a model that reads the CT (image_only or a fusion)")
    if volume is None or inputs.image is None:
        raise InputError("subject", "no CT", "this subject has no study to explain", "pick a subject with a CT")
    att = attribute(model, inputs, args.method, args.horizon, args.slice_index, baseline=args.baseline,
                    n_steps=args.steps)
    k = args.slice_index if args.slice_index is not None else (att.top_slices[0][0] if att.top_slices else volume.shape[0] // 2)
    model_label = model.model_dir.name
    fig = F.slice_overlay(volume.hu[k], att.map[k], window=window, spacing_mm=volume.spacing_mm,
                          title=f"{figure_export.safe_filename(args.label)}: {METHOD_LABELS[args.method]}, "
                                f"axial slice {k + 1}/{volume.shape[0]}")
    from core.predict import image_read

    read = image_read(model, volume)  # what the model cannot read here: the map explains it all the same
    value = target_value(model, inputs, att.horizon_days)
    # people read slices numbered from 1 (inferior), as in the app; --slice, --json and the saved map use 0-based indices
    caption = figure_export.caption_text(
        model=model_label, fusion=model.fusion, method=args.method, horizon_days=att.horizon_days, slice_index=k + 1,
        window=window_name, target_value=value, extra="outside the model's training CTs: predict withholds this CT" if read.withheld else None)
    figure_export.export(fig, out, caption=caption)
    if args.save_map is not None:
        save_map(Path(args.save_map), att.map, volume)
    notes = [*volume.warnings, *read.warnings]  # how the study was read, then what the model cannot read in it
    if read.withheld:
        notes.append(f"This CT would be withheld from {model.fusion} when predicting: {read.withheld}. "
                     "The map shows what the model reads in something it never saw in training.")
    if (past := past_grid_note(model.times, att.horizon_days)):
        notes.append(f"{past[0].upper() + past[1:]}: the map attributes the risk at day {float(model.times[-1]):.0f}, "
                     "its last time; pick a horizon within the curve.")
    result = {**att.to_dict(), "target_value": round(value, 6), "slice_shown": int(k), "model": model_label, "fusion": model.fusion,
              "window": window_name, "out": str(out), "warnings": notes}
    result.pop("shape", None)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.method} of {att.target} ({model.fusion}); figure: {out} (axial slice {k + 1} of {volume.shape[0]}, index {k})")
        print(f"the attributed {att.target.split(' (')[0]}: {value:.1%} for this case, its CT read"
              + (" (predict withholds this CT, so its risk differs)" if read.withheld else ""))
        print("top slices (index from 0): " + ", ".join(f"{i} ({s:.1%})" for i, s in att.top_slices))
        for row, code, when, score in att.top_events:
            print(f"  event {row}: {code} at {when}: {score:+.3g}")
        if not att.top_events:
            print("  no timeline events attributed")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0
