"""Per-call replica or per-model lock for hooked attributions on a network shared by concurrent sessions.

Usage::

    python bench/bench_replica.py [--seconds 20] [--foundation MODEL_DIR]

For each of three shipped demo models: the cost of one ``net_replica`` (what
every attribution pays), the duration of one hooked attribution (per-slice
Grad-CAM; what a lock would hold), and the prediction latency p50/p95 of one
session while another runs Grad-CAM in a loop, with replicas (no lock) and with
one per-model lock around the hooked section that predictions must take too (a
forward pass through a hooked module fires the hooks, so a lock that predictions
skip is not safe). ``--foundation`` adds a model folder whose encoder is the
foundation backbone: replica cost and one Grad-CAM through the backbone.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("concat", "cross_attention", "coattention_image")


def _median_ms(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _contended(model: Any, inputs: Any, k: int, seconds: float, lock: threading.Lock | None) -> dict[str, float]:
    """Prediction latencies of one thread while another runs per-slice Grad-CAM for ``seconds``."""
    from core.explain import attribute

    guard: Any = lock if lock is not None else contextlib.nullcontext()
    stop = threading.Event()
    n_attr = [0]

    def explain() -> None:
        while not stop.is_set():
            with guard:
                attribute(model, inputs, "gradcam", 365.0, k, with_events=False)
            n_attr[0] += 1

    lat: list[float] = []
    worker = threading.Thread(target=explain)
    worker.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        with guard:
            model.predict_case(inputs)
        lat.append(time.perf_counter() - t)
    stop.set()
    worker.join()
    return {"p50_ms": 1e3 * float(np.percentile(lat, 50)), "p95_ms": 1e3 * float(np.percentile(lat, 95)),
            "predictions": len(lat), "attributions": n_attr[0]}


@contextlib.contextmanager
def _demo_case() -> Iterator[tuple[Any, str]]:
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort

    with tempfile.TemporaryDirectory(prefix="bench-replica-") as tmp:
        cohort = load_cohort(write_demo_cohort(Path(tmp) / "cohort", n=10, seed=3))
        yield cohort, next(s for s in cohort.ids() if cohort.load_volume(s) is not None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="contended run per design and model")
    ap.add_argument("--foundation", type=Path, default=None, help="a model folder with the foundation encoder")
    args = ap.parse_args(argv)

    import torch

    from core.explain import attribute
    from core.models.replica import net_replica
    from core.registry import load_model

    print(f"torch threads {torch.get_num_threads()}")
    with _demo_case() as (cohort, sid):
        for name in MODELS:
            model = load_model(ROOT / "assets" / "demo_models" / name)
            inputs = model.case_inputs(cohort, sid)
            k = int(inputs.image.shape[1]) // 2
            n_modules = sum(1 for _ in model.net.modules())
            rep = _median_ms(lambda m=model: net_replica(m.net), 30)
            cam = _median_ms(lambda m=model, x=inputs, k=k: attribute(m, x, "gradcam", 365.0, k, with_events=False), 5)
            pred = _median_ms(lambda m=model, x=inputs: m.predict_case(x), 10)
            print(f"{name}: {n_modules} modules; replica {rep:.2f} ms; per-slice Grad-CAM {cam:.0f} ms; "
                  f"prediction {pred:.0f} ms")
            for design, lock in (("replica", None), ("lock", threading.Lock())):
                r = _contended(model, inputs, k, args.seconds, lock)
                print(f"  {design:7s}: prediction p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms "
                      f"({r['predictions']} predictions, {r['attributions']} Grad-CAMs in {args.seconds:g} s)")
    if args.foundation is not None:
        model = load_model(args.foundation)
        n_modules = sum(1 for _ in model.net.modules())
        rep = _median_ms(lambda: net_replica(model.net), 30)
        print(f"foundation {args.foundation.name}: {n_modules} modules in the tree (backbone held outside it); "
              f"replica {rep:.2f} ms")
        with _demo_case() as (cohort, sid):
            inputs = model.case_inputs(cohort, sid)
            t = time.perf_counter()
            attribute(model, inputs, "gradcam", 365.0, None, with_events=False)
            print(f"  one Grad-CAM through the backbone (what a lock would hold): {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
