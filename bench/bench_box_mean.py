"""The local-contrast mean of the detector encoder: ``core.preprocess.transforms.box_mean`` against torch's
``avg_pool2d(count_include_pad=False)``, the reference it replaces, at the shapes training and prediction use.

Prints, per shape and kernel, the median milliseconds of each (forward; forward + backward), the ratio
box_mean / avg_pool2d (below 1: faster) and the largest difference.

    python bench/bench_box_mean.py [--threads 1] [--repeats 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from core.preprocess.transforms import box_mean

#: (what, shape [N, 1, H, W], kernel): one window channel of a pretext batch, of a study's slices, the pretext's
#: local statistics (the parenchyma rule's 5 px and the low-density rule's 3 px), and 32 slices of 160 px
CASES = (("pretext batch, one window", (32, 1, 96, 96), 9), ("a study's 100 slices, one window", (100, 1, 96, 96), 9),
         ("pretext parenchyma statistics", (32, 1, 96, 96), 5), ("pretext low-density mean", (32, 1, 96, 96), 3),
         ("32 slices of 160 px", (32, 1, 160, 160), 9))


def _reference(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print("| case | shape | k | avg_pool2d ms | box_mean ms | ratio | fwd+bwd avg_pool2d ms | fwd+bwd box_mean ms | ratio | max diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    gen = torch.Generator().manual_seed(0)
    for what, shape, k in CASES:
        x = torch.rand(*shape, generator=gen) * 2 - 1
        x[..., : shape[-2] // 3, :] = -1.0  # air at the window's floor
        ref_ms = _median_ms(lambda: _reference(x, k), args.repeats)
        box_ms = _median_ms(lambda: box_mean(x, k), args.repeats)
        xg = x.clone().requires_grad_(True)
        ref_bw = _median_ms(lambda: _reference(xg, k).sum().backward(), args.repeats)
        box_bw = _median_ms(lambda: box_mean(xg, k).sum().backward(), args.repeats)
        diff = float((box_mean(x, k) - _reference(x, k)).abs().max())
        print(f"| {what} | {list(shape)} | {k} | {ref_ms:.1f} | {box_ms:.1f} | {box_ms / ref_ms:.2f} | {ref_bw:.1f} | "
              f"{box_bw:.1f} | {box_bw / ref_bw:.2f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
