"""Opening a real compressed CT series vs SimpleITK's ImageSeriesReader, whole process.

Builds real series from the shared real CT ``../shared/data/ct/example_ct_sm.nii.gz``
(read in place, never copied into the repository): the central ``--slices``
axial slices, each upsampled (linear) to ``--size`` x ``--size`` like a
scanner's matrix, rounded to integer HU and written as single-frame CT
instances (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, RescaleSlope 1 / RescaleIntercept -1024, int16 with
PixelRepresentation 1, shuffled file names) by ``tests/dicom_factory.py`` into
a temp folder, one folder per transfer syntax:

* ``j2k``: JPEG 2000 Lossless, pydicom 3 ``ds.compress(JPEG2000Lossless)`` with pylibjpeg-openjpeg
* ``jls``: JPEG-LS Lossless, ``ds.compress(JPEGLSLossless)`` with pyjpegls (when installed)
* ``jpeg_lossless``: JPEG Lossless process 14 SV1, transcoded by GDCM (pydicom has no such encoder)
* ``rle``: RLE Lossless, ``ds.compress(RLELossless)`` with pylibjpeg-rle
* ``none``: Explicit VR Little Endian, for reference

Then, per folder, times two cold processes, interleaved (one warm-up each, then
``--repeats`` pairs; median reported):

* ours:      ``python -c "from core.io.study import load_study; load_study(PATH)"``
* SimpleITK: ``python -c`` with ``ImageSeriesReader`` (GetGDCMSeriesFileNames + Execute) and
  ``GetArrayFromImage``

The HU arrays of both are checked identical once in-process (SimpleITK
reoriented with ``DICOMOrient(..., "LPS")``), and against the uncompressed series.
Prints per syntax the medians, the ratio ours / SimpleITK of the medians (goal
<= 0.8 for JPEG 2000), CPU time of each and the load average.

Both run with the same environment: by default with a bytecode cache (a fresh
PYTHONPYCACHEPREFIX in the temp folder, filled by the warm-up runs, as an
installed app has its .pyc files); ``--no-bytecode-cache`` keeps the caller's
environment (PYTHONDONTWRITEBYTECODE=1 here: our modules compiled every run).

``--baseline DIR`` times a third command in the same rounds: the loader of
another checkout (for before/after: ``git archive <commit> core assets/deid | tar -x -C DIR``;
the PHI gate reads its table from ``assets/deid``).

Prints which JPEG 2000 decoder the loader uses: OpenJPEG through ctypes
(``core.io.j2k``: the GIL released, slices decoded on threads, a folder's
slices decoded ahead while numpy and pydicom import) or, without a loadable
libopenjp2, pydicom's plugins in forked processes.

    python bench/bench_load_j2k.py [--slices 20] [--size 512] [--repeats 7] [--syntaxes j2k,jls,jpeg_lossless,rle,none] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL_CT = ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"

TARGET_RATIO = 0.8  # issue 18: opening a real JPEG 2000 series in at most 0.8x SimpleITK's time, whole process
OURS_SCRIPT = "import sys; from core.io.study import load_study; load_study(sys.argv[1])"
SITK_SCRIPT = (
    "import sys; import SimpleITK as sitk; r = sitk.ImageSeriesReader(); "
    "r.SetFileNames(r.GetGDCMSeriesFileNames(sys.argv[1])); a = sitk.GetArrayFromImage(r.Execute())"
)


def available_syntaxes() -> dict[str, str]:
    """Syntax name -> '' when its encoder is installed, else why not."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    out: dict[str, str] = {"none": ""}
    j2k = get_encoder(JPEG2000Lossless)
    out["j2k"] = "" if j2k.is_available and "pylibjpeg" in j2k.available_plugins else "pylibjpeg-openjpeg encoder missing"
    jls = get_encoder(JPEGLSLossless)
    out["jls"] = "" if jls.is_available and "pyjpegls" in jls.available_plugins else "pyjpegls encoder missing"
    rle = get_encoder(RLELossless)
    out["rle"] = "" if rle.is_available and "pylibjpeg" in rle.available_plugins else "pylibjpeg-rle encoder missing"
    try:
        import gdcm  # noqa: F401  # python-gdcm transcodes to JPEG Lossless process 14

        out["jpeg_lossless"] = ""
    except ImportError:
        out["jpeg_lossless"] = "python-gdcm missing (pydicom has no JPEG Lossless encoder)"
    return out


def real_ct_hu(slices: int, size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The shared real CT's central ``slices`` axial slices upsampled to ``size`` x ``size``, integer HU."""
    from scipy.ndimage import zoom

    from core.io.study import load_study

    if not REAL_CT.is_file():
        raise SystemExit(f"real CT not found: {REAL_CT} (the shared data folder must sit beside the checkout)")
    vol = load_study(REAL_CT)
    hu = vol.hu
    n = min(slices, hu.shape[0])
    start = (hu.shape[0] - n) // 2
    hu = hu[start : start + n]
    factors = (1.0, size / hu.shape[1], size / hu.shape[2])
    up = zoom(hu, factors, order=1, grid_mode=True, mode="nearest")
    spacing = (
        float(vol.spacing_mm[0]),
        round(float(vol.spacing_mm[1]) * hu.shape[1] / size, 6),
        round(float(vol.spacing_mm[2]) * hu.shape[2] / size, 6),
    )
    return np.clip(np.round(up), -1024, 3071).astype(np.float32), spacing


CHILD_ENV: dict[str, str] = {}


def child_env(pycache: Path | None) -> dict[str, str]:
    """The environment of the timed processes: bytecode cached in ``pycache`` (as in an installed app), or none.

    With ``pycache`` the variable PYTHONDONTWRITEBYTECODE is dropped and every
    module (ours, pydicom's, SimpleITK's) is compiled once, in the warm-up
    runs, into that folder; without it, the caller's environment is used as is
    (with PYTHONDONTWRITEBYTECODE=1 the project's own modules are compiled
    from source in every process: ~40 ms more for ours).
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _run(cmd: list[str], root: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys of the child); ``root`` is the checkout whose ``core`` is imported."""
    env = dict(CHILD_ENV or os.environ, PYTHONPATH=str(root))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_interleaved(commands: dict[str, tuple[list[str], Path]], repeats: int) -> dict[str, list[float]]:
    """Run the commands in turn (after one warm-up each), ``repeats`` rounds, so all see the same machine load."""
    for cmd, root in commands.values():
        _run(cmd, root)
    out: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, (cmd, root) in commands.items():
            wall, cpu = _run(cmd, root)
            out.setdefault(name, []).append(wall)
            out.setdefault(f"{name}_cpu", []).append(cpu)
    return out


def check_same(folder: Path, truth: np.ndarray) -> str:
    import SimpleITK as sitk

    from core.io.study import load_study

    vol = load_study(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(reader.Execute(), "LPS")).astype(np.float32)
    if not np.array_equal(vol.hu, ref):
        return f"DIFFERENT from SimpleITK (max |diff| {np.abs(vol.hu - ref).max()})"
    if not np.array_equal(vol.hu, truth):
        return "DIFFERENT from the written HU"
    return "identical"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--syntaxes", default="j2k,jls,jpeg_lossless,rle,none")
    parser.add_argument("--keep", type=Path, default=None, help="write the series here (kept) instead of a temp folder")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout's files (`git archive <commit> core assets/deid | tar -x -C DIR`) whose loader is timed in the same rounds")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="run the timed processes in the caller's environment as is (see child_env)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()

    from tests.dicom_factory import write_series

    encoders = available_syntaxes()
    from core.io import j2k

    lib = j2k._library()
    print(f"JPEG 2000 decoding: {'OpenJPEG ' + lib.opj_version().decode() + ' through ctypes (core.io.j2k)' if lib else 'pydicom plugins (no libopenjp2 loads)'}", flush=True)
    print("encoders: " + ", ".join(f"{k} {'available' if not v else 'NOT available (' + v + ')'}" for k, v in encoders.items()), flush=True)
    hu, spacing = real_ct_hu(args.slices, args.size)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_load_j2k_") as tmp:
        root = args.keep or Path(tmp)
        CHILD_ENV.update(child_env(None if args.no_bytecode_cache else Path(tmp) / "pycache"))
        print(f"bytecode: {'as the environment says (PYTHONDONTWRITEBYTECODE=' + os.environ.get('PYTHONDONTWRITEBYTECODE', '') + ')' if args.no_bytecode_cache else 'cached (compiled in the warm-up runs)'}", flush=True)
        for syntax in [s.strip() for s in args.syntaxes.split(",") if s.strip()]:
            if encoders.get(syntax, "unknown syntax"):
                print(f"{syntax}: skipped ({encoders.get(syntax, 'unknown syntax')})", flush=True)
                continue
            folder = root / syntax
            t0 = time.perf_counter()
            written = write_series(folder, hu=hu, spacing_mm=spacing, compression=syntax, signed=True, intercept=-1024.0, shuffle=True, seed=0)  # type: ignore[arg-type]
            made = time.perf_counter() - t0
            size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            same = check_same(folder, written.hu)
            load_before = os.getloadavg()[0]
            commands = {"ours": ([sys.executable, "-c", OURS_SCRIPT, str(folder)], ROOT), "sitk": ([sys.executable, "-c", SITK_SCRIPT, str(folder)], ROOT)}
            if args.baseline is not None:
                commands["baseline"] = ([sys.executable, "-c", OURS_SCRIPT, str(folder)], args.baseline)
            times = time_interleaved(commands, args.repeats)
            load_after = os.getloadavg()[0]
            ours, sitk = statistics.median(times["ours"]), statistics.median(times["sitk"])
            row = {
                "series": f"{hu.shape[0]}x{args.size}x{args.size} {syntax}",
                "transfer_syntax": written.transfer_syntax,
                "files_mb": round(size_mb, 2),
                "ours_median_s": round(ours, 3),
                "simpleitk_median_s": round(sitk, 3),
                "ratio_median": round(ours / sitk, 3),
                "ours_cpu_median_s": round(statistics.median(times["ours_cpu"]), 3),
                "simpleitk_cpu_median_s": round(statistics.median(times["sitk_cpu"]), 3),
                "ours_all": [round(t, 3) for t in times["ours"]],
                "simpleitk_all": [round(t, 3) for t in times["sitk"]],
                "load_average": [round(load_before, 2), round(load_after, 2)],
                "hu": same,
                "write_s": round(made, 1),
            }
            if args.baseline is not None:
                base = statistics.median(times["baseline"])
                row.update(
                    baseline_median_s=round(base, 3),
                    baseline_ratio_median=round(base / sitk, 3),
                    baseline_cpu_median_s=round(statistics.median(times["baseline_cpu"]), 3),
                    baseline_all=[round(t, 3) for t in times["baseline"]],
                )
            results.append(row)
            print(
                f"{row['series']:<26} {row['files_mb']:>6.2f} MB  ours {ours:6.3f} s (cpu {row['ours_cpu_median_s']:.3f})  "
                f"SimpleITK {sitk:6.3f} s (cpu {row['simpleitk_cpu_median_s']:.3f})  ratio {row['ratio_median']:.3f}  "
                f"load {row['load_average']}  HU {same}\n    runs ours {row['ours_all']}\n    runs sitk {row['simpleitk_all']}",
                flush=True,
            )
            if args.baseline is not None:
                print(
                    f"    baseline ({args.baseline}) {row['baseline_median_s']:.3f} s (cpu {row['baseline_cpu_median_s']:.3f})  "
                    f"ratio {row['baseline_ratio_median']:.3f}  runs {row['baseline_all']}",
                    flush=True,
                )
    for row in results:
        if row["series"].endswith(" j2k"):
            verdict = "met" if row["ratio_median"] <= TARGET_RATIO else "NOT met"
            print(
                f"JPEG 2000 ({row['series']}): ours / SimpleITK = {row['ratio_median']:.3f} (target <= {TARGET_RATIO}: {verdict}); "
                f"wall {row['ours_median_s']:.3f} s vs {row['simpleitk_median_s']:.3f} s; CPU {row['ours_cpu_median_s']:.3f} s vs "
                f"{row['simpleitk_cpu_median_s']:.3f} s; load average {row['load_average'][0]:.2f} -> {row['load_average'][1]:.2f} "
                f"on {os.cpu_count()} cores",
                flush=True,
            )
    if args.json:
        print(json.dumps({"cpu_count": os.cpu_count(), "encoders": encoders, "bytecode_cache": not args.no_bytecode_cache, "results": results}))


if __name__ == "__main__":
    main()
