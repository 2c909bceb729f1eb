"""Saliency sanity on real-anatomy lesions: the pointing game and Spearman after full model randomisation.

For a trained model and a real-anatomy cohort (``bench/real_anatomy.py``;
cohort.csv columns ``lesion_slice/row/col/radius_mm`` and ``lesion2_*``):

* **pointing game** (Zhang et al. 2016): on the ``--split`` subjects with a
  lesion, the argmax voxel of the lightly smoothed |map| (Gaussian, 1 voxel;
  ``core.sanity.SMOOTH_SIGMA_VOXELS``) is a hit when it lies within the lesion
  radius plus ``--tolerance-mm`` of the centre of *any* of the subject's lesions
  (mm, on the study's own voxel spacing);
* **full model randomisation** (Adebayo et al. 2018): every layer re-initialised
  at once (``core.sanity.randomization_steps``, all steps), then the Spearman
  rank correlation of |map| with the trained model's |map| over the voxels
  where either is non-zero; mean over the cases. Target below 0.5.

Usage::

    python bench/pointing_game.py --model M --cohort C [--methods saliency,gradcam] [--max-cases 20] [--json OUT]

Without ``--methods``: the model's preferred method (``core.explain.methods_for``: ``detector_ig`` for a
lesion-detector model), saliency and gradcam.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lesion_organs(row: Any) -> list[str]:
    """The organs of a row's lesions: real-anatomy ``lesion_organ``/``lesion2_organ``, else the demo's lung and liver."""
    if "lesion_organ" in row.index:
        return [str(row[c]) for c in ("lesion_organ", "lesion2_organ") if c in row.index and isinstance(row[c], str) and row[c]]
    return [organ for organ, col in (("lung", "lesion"), ("liver", "liver_lesion")) if col in row.index and row[col] == 1]


def peak_voxel(amap: np.ndarray) -> np.ndarray:
    """Argmax of the lightly smoothed |map| (``core.sanity``'s smoothing)."""
    from scipy import ndimage

    from core.sanity import SMOOTH_SIGMA_VOXELS

    smooth = ndimage.gaussian_filter(np.abs(amap), SMOOTH_SIGMA_VOXELS)
    return np.array(np.unravel_index(int(np.argmax(smooth)), smooth.shape), dtype=float)


def full_randomisation(model: Any) -> Any:
    """A copy of the loaded model with every layer re-initialised (the last step of the cascading test)."""
    from core.sanity import _reinit, randomization_steps

    work = dataclasses.replace(model, net=copy.deepcopy(model.net))
    for i, (_, mods) in enumerate(randomization_steps(work.net), start=1):
        _reinit(mods, 1000 + i)
    work.net.eval()
    return work


def run(model_dir: Path, cohort_dir: Path, methods: list[str], split: str, max_cases: int, tolerance_mm: float,
        device: str) -> dict[str, Any]:
    from core.cohort import load_cohort
    from core.explain import attribute
    from core.registry import load_model
    from core.sanity import has_lesion, lesion_centres, spearman

    model = load_model(model_dir, device=device)
    cohort = load_cohort(cohort_dir)
    table = cohort.table
    ids = set(cohort.ids(split))
    rows = table[table["subject_id"].astype(str).isin(ids) & has_lesion(table)].head(int(max_cases))
    if not methods:  # the default: the model's own preferred method, then the two gradient references
        from core.explain import methods_for

        methods = list(dict.fromkeys([methods_for(model)[0], "saliency", "gradcam"]))
    rand = full_randomisation(model)
    result: dict[str, Any] = {"model": str(model_dir), "cohort": str(cohort_dir), "split": split,
                              "tolerance_mm": tolerance_mm, "methods": {}}
    for method in methods:
        cases, corr = [], []
        started = time.perf_counter()
        for _, row in rows.iterrows():
            sid = str(row["subject_id"])
            vol = cohort.load_volume(sid)
            if vol is None:
                continue
            inputs = model.case_inputs(cohort, sid)
            amap = np.abs(attribute(model, inputs, method, None, None, with_events=False).map)
            peak = peak_voxel(amap)
            spacing = np.asarray(vol.spacing_mm, dtype=float)
            dists = [(float(np.linalg.norm((peak - c) * spacing)), r) for c, r in lesion_centres(row)]
            hit = any(d <= r + tolerance_mm for d, r in dists)
            after = np.abs(attribute(rand, inputs, method, None, None, with_events=False).map)
            support = (amap > 0) | (after > 0)
            corr.append(spearman(amap[support], after[support]) if support.any() else 0.0)
            cases.append({"subject": sid, "organs": lesion_organs(row),
                          "distance_mm": round(min(d for d, _ in dists), 1), "hit": bool(hit)})
        hits = sum(c["hit"] for c in cases)
        result["methods"][method] = {
            "pointing_rate": hits / len(cases) if cases else float("nan"), "hits": hits, "n": len(cases),
            "spearman_full_randomisation": float(np.mean(corr)) if corr else float("nan"),
            "seconds": round(time.perf_counter() - started, 1), "cases": cases}
    return result


def main(argv: list[str] | None = None) -> int:
    from core.errors import InputError
    from core.explain import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (python -m core train)")
    parser.add_argument("--cohort", type=Path, required=True, help="real-anatomy cohort folder (bench/real_anatomy.py)")
    parser.add_argument("--methods", default="", help=f"comma-separated ({', '.join(METHODS)}); default: the model's "
                        "preferred method (detector_ig for a lesion-detector model), saliency and gradcam")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-cases", type=int, default=20)
    parser.add_argument("--tolerance-mm", type=float, default=10.0, help="hit: within lesion radius + this of a lesion centre")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        bad = [m for m in methods if m not in METHODS]
        if bad or (args.methods.strip() and not methods):
            raise InputError("--methods", ",".join(bad) or args.methods, "names no attribution method", f"use some of {','.join(METHODS)}")
        if args.max_cases < 1:
            raise InputError("--max-cases", args.max_cases, "must be >= 1", "use e.g. --max-cases 20")
        res = run(args.model, args.cohort, methods, args.split, args.max_cases, args.tolerance_mm, args.device)
    except (InputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| method | pointing game (hits / lesion cases) | Spearman after full randomisation | seconds |")
    print("| --- | --- | --- | --- |")
    for m, r in res["methods"].items():
        print(f"| {m} | {r['pointing_rate']:.2f} ({r['hits']}/{r['n']}) | {r['spearman_full_randomisation']:.3f} | {r['seconds']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
