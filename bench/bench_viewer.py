"""Server-side cost of a slice change in the Case review viewer, on the CPU.

What the page does when the axial slider moves (the attribution map is already
computed, as it is for a 3D encoder or a slice seen before): take the new axial
plane and the coronal / sagittal reformats of the CT and of the normalised map,
build the three plotly figures with ``core.figures.slice_overlay`` and serialise
them the way ``st.plotly_chart`` does (``plotly.io.to_json``). The reference is
matplotlib rendering the same three planes with overlay to PNG (what a
``st.pyplot`` viewer would do). Goal: <= 300 ms per slice change.

    python bench/bench_viewer.py [--ct PATH] [--repeats 30]

Prints one JSON line per volume with the median / p95 milliseconds and the
ratio to the matplotlib reference and to the 300 ms budget.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from core import figures as F  # noqa: E402
from core.app import viewer  # noqa: E402

BUDGET_MS = 300.0


def slice_change(hu: np.ndarray, overlay: np.ndarray, spacing: tuple[float, float, float], z: int,
                 window: tuple[float, float]) -> int:
    """Everything the page computes for a new axial index; returns the JSON size sent to the browser."""
    import plotly.io as pio

    s, r, c = hu.shape
    size = 0
    for plane, idx in (("axial", z), ("coronal", r // 2), ("sagittal", c // 2)):
        fig = F.slice_overlay(viewer.plane_slice(hu, plane, idx), viewer.plane_slice(overlay, plane, idx),
                              window=window, opacity=0.6, spacing_mm=viewer.plane_spacing(spacing, plane),
                              normalize=False, title=f"{plane} {idx}")
        size += len(pio.to_json(fig, validate=False))
    return size


def reference_matplotlib(hu: np.ndarray, overlay: np.ndarray, spacing: tuple[float, float, float], z: int,
                         window: tuple[float, float]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, r, c = hu.shape
    fig, axes = plt.subplots(1, 3, figsize=(9, 3), dpi=100)
    for ax, (plane, idx) in zip(axes, (("axial", z), ("coronal", r // 2), ("sagittal", c // 2))):
        dy, dx = viewer.plane_spacing(spacing, plane)
        ax.imshow(viewer.plane_slice(hu, plane, idx), cmap="gray", vmin=window[0], vmax=window[1], aspect=dy / dx)
        ax.imshow(viewer.plane_slice(overlay, plane, idx), cmap="hot", alpha=0.5, aspect=dy / dx)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.tell()


def timed(fn, hu, overlay, spacing, window, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    fn(hu, overlay, spacing, hu.shape[0] // 2, window)  # warm-up (imports, templates)
    out = []
    for _ in range(repeats):
        z = int(rng.integers(0, hu.shape[0]))
        t0 = time.perf_counter()
        fn(hu, overlay, spacing, z, window)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(label: str, hu: np.ndarray, spacing: tuple[float, float, float], repeats: int) -> dict:
    from core.io.windows import WINDOWS

    window = (WINDOWS["soft_tissue"].low, WINDOWS["soft_tissue"].high)
    rng = np.random.default_rng(1)
    attribution = rng.standard_normal(hu.shape).astype(np.float32)
    t0 = time.perf_counter()
    overlay = F.normalize_map(attribution)  # once per attribution, not per slice change
    norm_ms = (time.perf_counter() - t0) * 1000
    ours = timed(slice_change, hu, overlay, spacing, window, repeats)
    ref = timed(reference_matplotlib, hu, overlay, spacing, window, max(5, repeats // 3))
    med, ref_med = statistics.median(ours), statistics.median(ref)
    return {
        "volume": label, "shape": list(hu.shape), "repeats": repeats,
        "slice_change_ms_median": round(med, 1),
        "slice_change_ms_p95": round(sorted(ours)[int(0.95 * (len(ours) - 1))], 1),
        "matplotlib_ms_median": round(ref_med, 1),
        "ratio_vs_matplotlib": round(med / ref_med, 3),
        "ratio_vs_budget_300ms": round(med / BUDGET_MS, 3),
        "normalize_map_once_ms": round(norm_ms, 1),
        "payload_kb": round(slice_change(hu, overlay, spacing, hu.shape[0] // 2, window) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from core.demo.phantom import SHAPE, SPACING_MM

    rng = np.random.default_rng(0)
    phantom = (rng.standard_normal(SHAPE) * 40 - 200).astype(np.float32)
    results = [run("demo-size phantom", phantom, tuple(SPACING_MM), args.repeats)]
    if args.ct.exists():
        from core.io.study import load_study

        vol = load_study(args.ct)
        results.append(run(f"real CT {args.ct.name}", vol.hu, vol.spacing_mm, args.repeats))
    big = (rng.standard_normal((300, 512, 512)) * 40 - 200).astype(np.float32)
    results.append(run("clinical-size 300x512x512", big, (1.0, 0.7, 0.7), max(5, args.repeats // 3)))
    for r in results:
        print(json.dumps(r))
    return 0 if all(r["slice_change_ms_median"] <= BUDGET_MS for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
