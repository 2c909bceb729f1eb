"""Study loading vs SimpleITK's ImageSeriesReader, whole process included.

Writes two synthetic CT series with tests/dicom_factory.py into a temp folder
(uncompressed and RLE Lossless, 512 x 512 x 300 by default), then times, each
in a fresh subprocess, ``--repeats`` times:

* ours:      ``python -m core inspect FOLDER --json`` (load + HU stats + PHI scan)
* SimpleITK: ``python -c`` that imports SimpleITK, lists the series files with
  GetGDCMSeriesFileNames, reads them with ImageSeriesReader and computes the
  same HU min/max/mean.

Both processes read the same files; the HU values are compared once in-process
(they must be identical). The two commands alternate (after a warm-up run
each) so that both see the same machine load. Prints best-of times, the
ratio ours / SimpleITK of the best runs and of the medians (goal: <= 1.0).

    python bench/bench_load.py [--slices 300] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SITK_SCRIPT = r"""
import sys
import SimpleITK as sitk
folder = sys.argv[1]
reader = sitk.ImageSeriesReader()
names = reader.GetGDCMSeriesFileNames(folder)
reader.SetFileNames(names)
img = reader.Execute()
arr = sitk.GetArrayViewFromImage(img)
print(float(arr.min()), float(arr.max()), float(arr.mean()), arr.shape)
"""


def _run(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def _time_pair(ours: list[str], ref: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Alternate the two commands (after one warm-up each) so both see the same machine load."""
    _run(ours)
    _run(ref)
    ours_times: list[float] = []
    ref_times: list[float] = []
    for _ in range(repeats):
        ours_times.append(_run(ours))
        ref_times.append(_run(ref))
    return ours_times, ref_times


def _check_same(folder: Path) -> str:
    import numpy as np
    import SimpleITK as sitk

    from core.io.study import load_study

    vol = load_study(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(reader.Execute(), "LPS")).astype(np.float32)
    return "identical" if np.array_equal(vol.hu, ref) else f"DIFFERENT (max |diff| {np.abs(vol.hu - ref).max()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()

    from tests.dicom_factory import write_series

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        for compression in ("none", "rle"):
            folder = Path(tmp) / compression
            t0 = time.perf_counter()
            write_series(folder, shape=(args.slices, args.size, args.size), spacing_mm=(1.0, 0.7, 0.7), compression=compression, shuffle=True)
            made = time.perf_counter() - t0
            size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            same = _check_same(folder)
            ours_all, sitk_all = _time_pair(
                [sys.executable, "-m", "core", "inspect", str(folder), "--json"],
                [sys.executable, "-c", SITK_SCRIPT, str(folder)],
                args.repeats,
            )
            ours, sitk = min(ours_all), min(sitk_all)
            row = {
                "series": f"{args.slices}x{args.size}x{args.size} {compression}",
                "files_mb": round(size_mb, 1),
                "ours_s": round(ours, 3),
                "simpleitk_s": round(sitk, 3),
                "ratio": round(ours / sitk, 3),
                "ratio_median": round(statistics.median(ours_all) / statistics.median(sitk_all), 3),
                "ours_all": [round(t, 3) for t in ours_all],
                "simpleitk_all": [round(t, 3) for t in sitk_all],
                "hu": same,
                "write_s": round(made, 1),
            }
            results.append(row)
            print(
                f"{row['series']:<22} {row['files_mb']:>7.1f} MB  ours {ours:6.3f} s  SimpleITK {sitk:6.3f} s  "
                f"ratio {row['ratio']:.3f} (median {row['ratio_median']:.3f})  (HU {same}; runs ours {row['ours_all']}, sitk {row['simpleitk_all']})",
                flush=True,
            )
    if args.json:
        print(json.dumps({"cpu_count": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
