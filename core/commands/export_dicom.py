"""``python -m core export-dicom --model M --cohort DIR --subject ID --method saliency --out DIR [--json]``.

Writes the case's saliency map as a DICOM Parametric Map, its top region as a
DICOM Segmentation and the prediction as a Comprehensive SR into ``--out`` (a
new or empty folder), all on the source series' geometry; a study that was not
DICOM gets a derived CT series (``OUT/CT``) first. The subject id is written
neither into the objects nor into any printed line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "export a case as DICOM: saliency Parametric Map, top-region Segmentation, prediction SR"
from core.commands.explain import MAP_SUFFIXES
from core.explain import METHODS, check_method


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder")
    parser.add_argument("--subject", required=True, help="subject id")
    parser.add_argument("--method", default="saliency", help=f"one of {', '.join(METHODS)} (default saliency)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--percentile", type=float, default=99.0,
                        help="the Segmentation holds the voxels with |map| at or above this percentile of the "
                             "non-zero |map| values (default 99)")
    parser.add_argument("--save-map", type=Path, default=None,
                        help="also save the map: .npy [S, R, C] float32, or .nii.gz / .nii on the study's own geometry")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--allow-ood", action="store_true",
                        help="export even a CT that shows other anatomy, or the body at another scale, than the model's training studies "
                             "(refused by default: the map and risk would be read from something it never saw)")


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError

    check_method(args.method, "--method")
    if not 0.0 < args.percentile < 100.0:
        raise InputError("--percentile", args.percentile, "must be between 0 and 100", "use e.g. 99")
    for flag, path in (("--model", args.model), ("--cohort", args.cohort)):
        if not path.is_dir():
            raise InputError(flag, str(path), "is not a folder", f"pass an existing {flag[2:]} folder")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("--out", str(out), "exists and is not an empty folder", "pass a new or empty folder")
    if args.save_map is not None and not args.save_map.name.lower().endswith(MAP_SUFFIXES):  # as explain's
        raise InputError("--save-map", args.save_map.name, f"must end in {', '.join(MAP_SUFFIXES)}",
                         "pass e.g. map.nii.gz")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    from core.dicom_export import export_case_dicom

    result, saliency = export_case_dicom(args.model, args.cohort, str(args.subject), out, method=args.method,
                                         percentile=args.percentile, device=device, return_map=True,
                                         allow_ood=args.allow_ood)
    if args.save_map is not None:
        from core.cohort import load_cohort
        from core.commands.explain import save_map

        args.save_map.parent.mkdir(parents=True, exist_ok=True)
        nifti = not args.save_map.name.lower().endswith(".npy")  # a NIfTI map needs the study's geometry
        volume = load_cohort(args.cohort, for_training=False).load_volume(str(args.subject)) if nifti else None
        save_map(args.save_map, saliency, volume)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"wrote {out}: {Path(result.parametric_map).name} (Parametric Map, {result.n_frames} frames), "
          f"{Path(result.segmentation).name} (Segmentation, {result.region_voxels} voxels at |map| >= "
          f"{result.region_threshold:.3g}), {Path(result.structured_report).name} (SR)"
          + (f", CT/ ({len(result.derived_series)} derived CT images)" if result.derived_series else ""))
    print("risk: " + ", ".join(f"{k} d {v:.3f}" for k, v in result.risk_at.items())
          + f"; modalities used: {', '.join(result.modalities_used) or 'none'}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
