"""A heavy job's torch threads: one full-resolution CT's map made by the app's own job, at 1 thread and at N.

    python bench/bench_heavy_threads.py [--threads N] [--method integrated_gradients] [--shape 512,512,150]
        [--model assets/demo_models/coattention_image] [--ct ../shared/data/ct/example_ct_sm.nii.gz]

The real abdominal CT in ../shared/data is resampled (linearly) to a full-size study in a temp cohort (as
bench/bench_explain_fullsize.py does). The map of ``--method`` is then made through the server's job queue exactly as
Case review asks for a large CT's map (``core.app.attribution_volume.map_job`` as a heavy job: its own process, the
case's inputs as numpy arrays), once by a queue whose heavy jobs get 1 torch thread (the reference: every heavy job
before session 64) and once with ``--threads`` (default ``core.cpus.heavy_threads()``: every CPU but one; on a 2-core
machine that is 1 as well, so pass ``--threads 2`` there). Printed: seconds to the map for each, the ratio
reference / product, and the largest difference between the two maps (the same map, only faster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _one(model_dir: Path, cohort: Path, method: str, threads: int, maps: Path) -> tuple[float, object]:
    import numpy as np

    from core.app import attribution_volume as AV
    from core.cohort import load_cohort
    from core.jobs import JobQueue
    from core.registry import load_model

    model = load_model(model_dir)
    inputs = model.case_inputs(load_cohort(cohort, for_training=False), "P1")
    store = AV.MapStore(str(maps))
    key = AV.map_key(AV.case_digest(inputs), AV.model_stamp(model_dir), method, 365.0)
    queue = JobQueue(workers=1, heavy_threads=threads)
    try:
        t0 = time.perf_counter()
        job = queue.submit("bench", f"map, {threads} threads", AV.map_job, store, key, str(model_dir),
                           AV.portable(inputs), method, 365.0, "cpu", heavy=True)
        queue.wait(job.id, timeout=3600)
        seconds = time.perf_counter() - t0
    finally:
        queue.close()
    if job.state != "done":
        raise SystemExit(f"the map job ended {job.state}: {job.error}")
    found = store.cache().get(key)
    return seconds, np.array(found if found is not None else job.result)


def main() -> None:
    from bench_explain_fullsize import _study

    from core.cpus import heavy_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "assets/demo_models/coattention_image")
    ap.add_argument("--ct", type=Path, default=ROOT.parent / "shared/data/ct/example_ct_sm.nii.gz")
    ap.add_argument("--shape", default="512,512,150", help="x,y,z of the resampled study (NIfTI axes)")
    ap.add_argument("--method", default="integrated_gradients")
    ap.add_argument("--threads", type=int, default=heavy_threads())
    args = ap.parse_args()
    if not args.ct.is_file():
        raise SystemExit(f"--ct {args.ct}: no such file (the shared real CT); pass --ct FILE")
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        cohort = _study(args.ct, shape, Path(tmp) / "cohort")  # type: ignore[arg-type]
        ref_s, ref = _one(args.model, cohort, args.method, 1, Path(tmp) / "maps1")
        print(f"{args.method}, study {args.shape}: 1 thread (reference) {ref_s:.1f} s", flush=True)
        new_s, new = _one(args.model, cohort, args.method, args.threads, Path(tmp) / f"maps{args.threads}")
        diff = float(abs(new - ref).max()) / (float(abs(ref).max()) or 1.0)  # type: ignore[operator]
        print(f"{args.threads} threads (product) {new_s:.1f} s; ratio reference / product {ref_s / new_s:.2f}; "
              f"largest difference {diff:.1e} of the map's peak")


if __name__ == "__main__":
    main()
