"""Explanations of a full-size CT: memory of the whole-volume methods, time of the app's slice-by-slice map.

    python bench/bench_explain_fullsize.py [--model assets/demo_models/coattention_image]
        [--ct ../shared/data/ct/example_ct_sm.nii.gz] [--shape 512,512,150]
        [--methods integrated_gradients,occlusion,smoothgrad] [--slice-methods detector_ig,saliency]

The real abdominal CT in ../shared/data is resampled (linearly) to a full-size study (512 x 512 in plane, 150
slices by default) in a temp cohort. Each method then runs once in a fresh process (``core.explain.attribute``,
the whole volume, as the app's overlay job and ``explain`` do) twice: with the copies per forward pass that
``core.explain.batch_for`` allows (the product), and with 8 copies whatever the study's size (the reference: the
behaviour before session 33). Printed per method: seconds and peak resident memory (ru_maxrss) of each, and the
ratios product / reference.

Then the map the app's overlay shows for a per-slice 2D encoder (``core.app.attribution_volume.whole_map``: one
``attribute`` call per slice), timed against the same calls without the case's context (each call then masks and
encodes the whole CT again, as before session 33); both maps are compared. Since session 34 the shipped models read
a study at another slice spacing than their 6 mm as slabs, in one whole-volume call; this part runs on a copy of
the model without its working slice spacing (``slice_mm`` removed), the per-slice path it measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from core import explain
from core.cohort import load_cohort
from core.registry import load_model
if {forced}:
    explain.BATCH_VOXELS = 1 << 62  # the reference: 8 copies per pass whatever the study's size
model = load_model(Path({model!r}))
inputs = model.case_inputs(load_cohort(Path({cohort!r}), for_training=False), "P1")
t0 = time.perf_counter()
explain.attribute(model, inputs, {method!r}, 365.0, None, with_events=False)
print(json.dumps({{"s": time.perf_counter() - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "shape": list(inputs.image.shape)}}))
"""


def _study(ct: Path, shape: tuple[int, int, int], folder: Path) -> Path:
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import zoom

    img = nib.load(str(ct))
    data = np.asarray(img.dataobj, dtype=np.float32)
    factors = [t / s for t, s in zip(shape, data.shape)]
    big = zoom(data, factors, order=1).astype(np.int16)
    affine = img.affine.copy()
    for i, f in enumerate(factors):
        affine[:3, i] /= f
    (folder / "studies").mkdir(parents=True)
    nib.save(nib.Nifti1Image(big, affine), str(folder / "studies" / "P1.nii.gz"))
    (folder / "cohort.csv").write_text("subject_id,study\nP1,studies/P1.nii.gz\n")
    return folder


def _child(code: str) -> dict[str, float]:
    """Run ``code`` in a fresh Python process (its own peak memory) and read the JSON line it prints last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(model: Path, cohort: Path, method: str, forced: bool) -> dict[str, float]:
    return _child(CHILD.format(root=str(ROOT), model=str(model), cohort=str(cohort), method=method, forced=forced))


SLICES = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from core.app.attribution_volume import whole_map
from core.cohort import load_cohort
from core.explain import attribute
from core.registry import load_model
model = load_model(Path({model!r}))
inputs = model.case_inputs(load_cohort(Path({cohort!r}), for_training=False), "P1")
t0 = time.perf_counter()
got = whole_map(model, inputs, {method!r}, 365.0, per_slice=True)
t1 = time.perf_counter()
ref = np.stack([attribute(model, inputs, {method!r}, 365.0, k, with_events=False).map[k] for k in range(got.shape[0])])
t2 = time.perf_counter()
print(json.dumps({{"product": t1 - t0, "reference": t2 - t1, "max_diff": float(np.abs(got - ref).max()),
                  "scale": float(np.abs(ref).max())}}))
"""


def _slices(model: Path, cohort: Path, method: str) -> dict[str, float]:
    return _child(SLICES.format(root=str(ROOT), model=str(model), cohort=str(cohort), method=method))


def _without_slabs(model: Path, out: Path) -> Path:
    """A copy of ``model`` without a working slice spacing: every study read slice by slice (its per-slice path)."""
    import shutil

    shutil.copytree(model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["image"].pop("slice_mm", None)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "assets/demo_models/coattention_image")
    ap.add_argument("--ct", type=Path, default=ROOT.parent / "shared/data/ct/example_ct_sm.nii.gz")
    ap.add_argument("--shape", default="512,512,150", help="x,y,z of the resampled study (NIfTI axes)")
    ap.add_argument("--methods", default="integrated_gradients,occlusion,smoothgrad")
    ap.add_argument("--slice-methods", default="detector_ig,saliency")
    args = ap.parse_args()
    if not args.ct.is_file():
        sys.exit(f"error: ct: got {args.ct}, no such file; fix: pass --ct with a NIfTI CT")
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        cohort = _study(args.ct, shape, Path(tmp) / "cohort")  # type: ignore[arg-type]
        print(f"study {shape[0]} x {shape[1]} x {shape[2]} voxels (from {args.ct.name}); model {args.model.name}")
        print("| method | product: s | product: peak MB | 8 copies: s | 8 copies: peak MB | time ratio | memory ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for method in [m for m in args.methods.split(",") if m]:
            got, ref = _run(args.model, cohort, method, False), _run(args.model, cohort, method, True)
            print(f"| {method} | {got['s']:.1f} | {got['peak_mb']:.0f} | {ref['s']:.1f} | {ref['peak_mb']:.0f} | "
                  f"{got['s'] / ref['s']:.2f} | {got['peak_mb'] / ref['peak_mb']:.2f} |", flush=True)
        print("\n| slice by slice (the app's overlay) | product: s | each call alone: s | time ratio | max difference |")
        print("| --- | --- | --- | --- | --- |")
        per_slice_model = _without_slabs(args.model, Path(tmp) / "model")
        for method in [m for m in args.slice_methods.split(",") if m]:
            r = _slices(per_slice_model, cohort, method)
            print(f"| {method} | {r['product']:.1f} | {r['reference']:.1f} | {r['product'] / r['reference']:.2f} | "
                  f"{r['max_diff']:.2g} (of {r['scale']:.2g}) |", flush=True)


if __name__ == "__main__":
    main()
