"""The same CT at another slice spacing: how far the shipped models' risks move, with and without a working spacing.

    python bench/slice_spacing.py [--demo DIR] [--n 160] [--factor 3] [--models image_only,coattention_image]

The demo cohort's test split (written with ``python -m core demo`` into ``--demo`` when absent) is written again
with every study at 1/``factor`` of its slice spacing, twice: each slice repeated ``factor`` times (the same voxels,
thinner slices: a perfect thin reconstruction of the thick one) and linearly interpolated along the scan axis
(``scipy.ndimage.zoom``, order 1, slice edges aligned: thin slices that blur the thick ones). Each shipped model is run on the original
and on both thin copies, as shipped (``slice_mm`` 6 mm in config.json: slabs at the training spacing) and with
``slice_mm`` removed (every study read slice by slice, as before session 34). Printed per model and copy: the
Spearman correlation of the 1-year risks with the original's, the mean absolute difference, and Harrell's C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.demo_copies import copy_tables, demo_test_split, risks_1y  # noqa: E402 - after the path


def _thin_copy(src: Path, out: Path, test: pd.DataFrame, factor: int, how: str) -> Path:
    import nibabel as nib
    from scipy.ndimage import zoom

    (out / "studies").mkdir(parents=True)
    copy_tables(src, out, test)
    test.to_csv(out / "cohort.csv", index=False)
    for study in test["study"]:
        img = nib.load(str(src / study))
        data = np.asarray(img.dataobj, dtype=np.float32)
        axis = int(np.argmax(nib.affines.voxel_sizes(img.affine)))  # the slice axis: the largest spacing
        affine = img.affine.copy()
        affine[:3, axis] /= factor
        affine[:3, 3] -= affine[:3, axis] * (factor - 1) / 2  # the first thin slice's centre: the slab starts where it did
        if how == "repeat":
            thin = np.repeat(data, factor, axis=axis)
        else:
            scale = [1.0, 1.0, 1.0]
            scale[axis] = float(factor)
            thin = zoom(data, scale, order=1, grid_mode=True, mode="nearest")  # slice edges aligned, as slabs are
        nib.save(nib.Nifti1Image(thin.astype(np.int16), affine), str(out / study))
    return out


def main() -> None:
    from lifelines.utils import concordance_index
    from scipy.stats import spearmanr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path(tempfile.gettempdir()) / "ctehr_demo_800")
    ap.add_argument("--n", type=int, default=160, help="test subjects (default: the whole test split of 160)")
    ap.add_argument("--factor", type=int, default=3, help="thin slices per thick one (6 mm -> 2 mm at 3)")
    ap.add_argument("--models", default="image_only,coattention_image")
    args = ap.parse_args()
    test, ids = demo_test_split(args.demo, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        copies = {how: _thin_copy(args.demo, Path(tmp) / how, test, args.factor, how) for how in ("repeat", "linear")}
        print(f"{len(ids)} test subjects, slices {args.factor}x thinner")
        print("| model | slice_mm | copy | Spearman with the original | mean abs. difference of the 1-year risk | C original | C copy |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in [m for m in args.models.split(",") if m]:
            shipped = ROOT / "assets" / "demo_models" / name
            before = Path(tmp) / f"{name}_before"
            shutil.copytree(shipped, before)
            cfg = json.loads((before / "config.json").read_text())
            cfg["image"].pop("slice_mm", None)
            (before / "config.json").write_text(json.dumps(cfg))
            for label, model_dir in (("none (before)", before), ("6 mm (shipped)", shipped)):
                orig = risks_1y(model_dir, args.demo, ids)
                c0 = concordance_index(test["time"], -orig, test["event"])
                for how, cohort in copies.items():
                    got = risks_1y(model_dir, cohort, ids)
                    rho = spearmanr(orig, got).correlation
                    c1 = concordance_index(test["time"], -got, test["event"])
                    print(f"| {name} | {label} | {how} | {rho:.3f} | {np.mean(np.abs(orig - got)):.3f} | {c0:.3f} | {c1:.3f} |",
                          flush=True)


if __name__ == "__main__":
    main()
