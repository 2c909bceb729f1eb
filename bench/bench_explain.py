"""Time the explanations the app computes: per displayed slice, whole-volume Grad-CAM, IG 32 steps.

    python bench/bench_explain.py [--n 40] [--threads 2] [--repeats 3]

Builds a demo cohort (n subjects) and a 1-epoch cross-attention model (2D
per-slice encoder, lung mask) in a temp dir, then times ``core.explain.attribute``
on one test case (32 x 96 x 96 voxels). Reference for the per-slice ratio: the
same method on the whole volume (what the app would pay without the lazy
per-slice mode). Goals: per displayed slice <= 1 s, whole-volume Grad-CAM <= 5 s
on 2 CPU cores.

Last, integrated gradients on the same case resampled to a real CT's slice size
(40 x 512 x 512): the lung mask of the CT computed once and held fixed
(``SliceEncoder2D.pinned_mask``, what ``attribute`` does) against recomputed for
every perturbed copy (the reference, as before 2026-11-22).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.explain import attribute
    from core.registry import load_model
    from core.train import train_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo_cohort(root / "cohort", n=args.n, seed=0)
        train_model(root / "cohort", "cross_attention", root / "model", epochs=1, device="cpu", seed=0,
                    image_encoder_kind="2d")  # the fast lung-focused encoder
        model = load_model(root / "model")
        cohort = load_cohort(root / "cohort")
        sid = cohort.ids("test")[0]
        inputs = model.case_inputs(cohort, sid)
        shape = tuple(inputs.image.shape[1:])
        k = shape[0] // 2
        print(f"torch {torch.__version__}, {args.threads} threads, CPU only (no GPU lent to this task); "
              f"volume {shape}, model cross_attention 2D encoder (lung mask), median of {args.repeats}")
        rows = []
        for method, slice_index, kw in (
            ("saliency", k, {}), ("gradcam", k, {}), ("integrated_gradients", k, {"n_steps": 32}),
            ("occlusion", k, {}), ("smoothgrad", k, {}),
            ("saliency", None, {}), ("gradcam", None, {}), ("integrated_gradients", None, {"n_steps": 32}),
            ("smoothgrad", None, {}), ("occlusion", None, {}),
        ):
            sec = _time(lambda: attribute(model, inputs, method, 365.0, slice_index, with_events=False, **kw),
                        args.repeats)
            rows.append((method, "slice" if slice_index is not None else "volume", sec))
            print(f"{method:22s} {'per slice' if slice_index is not None else 'whole volume':12s} {sec:7.3f} s", flush=True)
        ev = _time(lambda: attribute(model, inputs, "saliency", 365.0, k), args.repeats)
        print(f"{'saliency + events IG':22s} {'per slice':12s} {ev:7.3f} s  (what the app pays per displayed slice)")
        times = {(m, mode): s for m, mode, s in rows}
        for m in ("saliency", "integrated_gradients", "smoothgrad"):
            print(f"ratio whole volume / per slice, {m}: {times[(m, 'volume')] / times[(m, 'slice')]:.1f}x")
        print(f"goal per displayed slice <= 1 s: {'met' if ev <= 1.0 else 'NOT met'} ({ev:.3f} s)")
        print(f"goal whole-volume Grad-CAM <= 5 s: {'met' if times[('gradcam', 'volume')] <= 5 else 'NOT met'} "
              f"({times[('gradcam', 'volume')]:.3f} s)")

        import core.explain as explain

        big = torch.nn.functional.interpolate(inputs.image[:, None], size=(40, 512, 512), mode="trilinear")[:, 0]
        big_inputs = dataclasses.replace(inputs, image=big.contiguous())
        ig = lambda: attribute(model, big_inputs, "integrated_gradients", 365.0, None, n_steps=32,  # noqa: E731
                               internal_batch_size=8, with_events=False).map
        pinned_map = ig()
        pinned = _time(ig, args.repeats)
        real_pin = explain._lung_mask_pinned
        explain._lung_mask_pinned = lambda *a, **k: contextlib.nullcontext()  # the reference: a mask per copy
        try:
            per_copy_map = ig()
            per_copy = _time(ig, args.repeats)
        finally:
            explain._lung_mask_pinned = real_pin
        same = float(abs(pinned_map - per_copy_map).sum() / max(abs(per_copy_map).sum(), 1e-12))
        print(f"IG 32 steps, whole volume 40 x 512 x 512: mask pinned {pinned:.2f} s, mask per copy {per_copy:.2f} s, "
              f"ratio {per_copy / pinned:.1f}x; relative L1 difference of the maps {same:.3f}")


if __name__ == "__main__":
    main()
