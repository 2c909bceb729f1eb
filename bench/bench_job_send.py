"""A heavy job's arguments sent to its process: a full-resolution CT by value (pickle) or by its file's name.

    python bench/bench_job_send.py [--shape 512,512,150] [--ct ../shared/data/ct/example_ct_sm.nii.gz]

The real abdominal CT in ../shared/data is resampled (linearly) to a full-size NIfTI study (as
bench/bench_explain_fullsize.py does) and saved as a user's case in a temp data folder; its volume is opened as the
app opens it (``core.app.cases.load_case_volume``: decoded once, then memory-mapped from the case's decoded copy), a
map of its size is put in a map store, and the Export page's DICOM job (``core.app.export_jobs.dicom_export_job``) runs
through the app's job queue as a heavy job, twice: with the arguments pickled as ``multiprocessing`` does (the
reference: every heavy job before session 65) and with ``core.job_pickle`` (the product: a memory-mapped array goes
by its file's name). Printed for each: bytes sent, seconds to the finished zip, the server's peak private memory
(RssAnon) above its level before the job, and the job process's peak private memory (sampled every 20 ms from /proc;
a memory-mapped file's pages are the operating system's shared cache, not counted).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PAGE = os.sysconf("SC_PAGE_SIZE")


def _private(pid: int) -> int:
    """The process's private resident memory (RssAnon: a mapped file's pages are the shared page cache)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    """Every child of the process, whichever of its threads started it (the queue's worker thread does)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(p) for p in fh.read().split()]
        except OSError:
            continue
    return found


class Peaks:
    """The server's and its job processes' peak private memory while running (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.base = _private(os.getpid())
        self.server = self.child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.server = max(self.server, _private(os.getpid()) - self.base)
            self.child = max([self.child] + [_private(p) for p in _children(os.getpid())])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _run(volume: object, store: object, key: str, model_dir: Path, out: Path, by_name: bool) -> dict[str, float]:
    from core import job_pickle
    from core.app.export_jobs import dicom_export_job
    from core.jobs import JobQueue

    args = (volume, store, key, None, {365: 0.42}, ["image", "ehr_features"], None, str(model_dir),
            "integrated_gradients", str(out), "dicom.zip", None)
    sent = len((job_pickle.dumps if by_name else pickle.dumps)((dicom_export_job, args)))
    original = job_pickle.dumps
    if not by_name:  # the reference: the arguments pickled value by value, as Connection.send did
        job_pickle.dumps = lambda obj: pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[assignment]
    queue = JobQueue(workers=1, heavy_threads=1)
    peaks = Peaks()
    try:
        t0 = time.perf_counter()
        job = queue.wait(queue.submit("bench", "DICOM objects", dicom_export_job, *args, heavy=True).id, 3600)
        seconds = time.perf_counter() - t0
    finally:
        peaks.stop()
        queue.close()
        job_pickle.dumps = original  # type: ignore[assignment]
    if job.state != "done":
        raise SystemExit(f"the DICOM job ended {job.state}: {job.error}")
    return {"sent_mb": sent / 2**20, "s": seconds, "server_gb": peaks.server / 2**30, "child_gb": peaks.child / 2**30,
            "zip_mb": Path(job.result[0]).stat().st_size / 2**20}


def main() -> None:
    import numpy as np

    from bench_explain_fullsize import _study

    from core.app import attribution_volume as AV
    from core.app.cases import get_case, load_case_volume, maps_dir, save_case

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=Path, default=ROOT.parent / "shared/data/ct/example_ct_sm.nii.gz")
    ap.add_argument("--shape", default="512,512,150", help="x,y,z of the resampled study (NIfTI axes)")
    ap.add_argument("--model", type=Path, default=ROOT / "assets/demo_models/coattention_image")
    args = ap.parse_args()
    if not args.ct.is_file():
        raise SystemExit(f"--ct {args.ct}: no such file (the shared real CT); pass --ct FILE")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "data"
        os.environ["CTEHR_DATA_DIR"] = str(base)
        cohort = _study(args.ct, tuple(int(v) for v in args.shape.split(",")), Path(tmp) / "cohort")  # type: ignore[arg-type]
        info = save_case("local", study=(cohort / "studies" / "P1.nii.gz").read_bytes(), study_name="ct.nii.gz",
                         base=base)
        info = get_case("local", info.case_id, base)
        load_case_volume(info, "local", base)  # decoded and kept, as the case's first opening does
        volume = load_case_volume(info, "local", base)  # then memory-mapped, as every later page run has it
        print(f"study {args.shape}: HU array {type(volume.hu).__name__} {volume.hu.dtype} "
              f"{volume.hu.nbytes / 2**20:.0f} MB", flush=True)
        store = AV.MapStore(str(maps_dir(info)), owner="local", base=str(base))
        key = "b" * 40  # a hex digest, as map_key makes
        rng = np.random.default_rng(0)
        if not store.cache().put(key, rng.standard_normal(volume.shape).astype(np.float32)):
            raise SystemExit("the map store had no room for the map")
        rows = {}
        for label, by_name in (("pickle (reference)", False), ("job_pickle (product)", True)):
            rows[label] = r = _run(volume, store, key, args.model, Path(tmp) / label.split()[0], by_name)
            print(f"{label}: sent {r['sent_mb']:.1f} MB, done in {r['s']:.1f} s, server peak +{r['server_gb']:.2f} GB, "
                  f"job process peak {r['child_gb']:.2f} GB (zip {r['zip_mb']:.1f} MB)", flush=True)
        ref, new = rows["pickle (reference)"], rows["job_pickle (product)"]
        print(f"ratio reference / product: time {ref['s'] / new['s']:.2f}, server peak "
              f"{ref['server_gb'] / max(new['server_gb'], 1e-3):.1f}, job process peak {ref['child_gb'] / max(new['child_gb'], 1e-3):.2f}")


if __name__ == "__main__":
    main()
