"""The demo's CT phantoms rendered on several cores, byte for byte as on one.

Each subject's phantom draws from its own random stream (``SeedSequence([seed, i, 2])``),
so the subjects can be split into shards: shard ``k`` of ``K`` renders subjects
``k, k + K, k + 2K, ...``. Shard 0 runs in the calling process (and reports progress);
the others run in fresh interpreters, ``python -m core.demo.shards OUT N SEED K START``
(not ``multiprocessing``'s spawn, which under Streamlit would re-run the app script),
which print the lesion voxels of their subjects (lung nodule and liver lesion) as one JSON line.

On two cores this halves the phantoms' share of a first start (about two thirds of it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from core.demo import latents as L
from core.demo.phantom import render_phantom, write_nifti
from core.errors import InputError

Voxel = tuple[int, int, int] | None
Voxels = tuple[Voxel, Voxel]  # centres of the lung nodule and of the liver lesion (None: no such lesion)
MIN_PER_SHARD = 50  # fewer subjects than this per extra core: one process (starting an interpreter costs ~1 s)
MAX_WORKERS = 4


def default_workers(n: int) -> int:
    """``$CTEHR_DEMO_WORKERS``, else the cores this process may use (at most 4), fewer for a small cohort."""
    env = os.environ.get("CTEHR_DEMO_WORKERS")
    if env is not None:
        if not env.isdigit() or int(env) < 1:
            raise InputError("CTEHR_DEMO_WORKERS", repr(env), "expected a whole number >= 1", "unset it or set 1-8")
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS, n // MIN_PER_SHARD))


def render_subjects(studies: Path, lat: pd.DataFrame, seed: int, indices: Iterable[int], *, volumes: bool,
                    done: Callable[[], None] | None = None) -> dict[str, Voxels]:
    """Render (and with ``volumes`` write) the phantoms of the rows ``indices`` of ``lat``; their lesion voxels."""
    voxels: dict[str, Voxels] = {}
    for i in indices:
        row = lat.iloc[i]
        phantom = render_phantom(row, np.random.default_rng(np.random.SeedSequence([int(seed), int(i), 2])))
        voxels[str(row["subject_id"])] = (phantom.lesion_voxel, phantom.liver_lesion_voxel)
        if volumes:
            write_nifti(phantom, studies / f"{row['subject_id']}.nii.gz")
        if done is not None:
            done()
    return voxels


def render_all(studies: Path, lat: pd.DataFrame, seed: int, *, volumes: bool, workers: int,
               progress: Callable[[float], None]) -> dict[str, Voxels]:
    """Every subject's phantom over ``workers`` processes; ``progress`` gets the fraction done (shard 0's pace)."""
    n = len(lat)
    k = max(1, min(int(workers), n))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "core.demo.shards", str(studies), str(n), str(int(seed)), str(k),
                               str(start), "1" if volumes else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                              text=True)
             for start in range(1, k)]
    count = [0]

    def one_done() -> None:
        count[0] += 1
        progress(min(count[0] * k / n, 1.0))

    try:
        voxels = render_subjects(studies, lat, seed, range(0, n, k), volumes=volumes, done=one_done)
        for start, proc in enumerate(procs, start=1):
            out, err = proc.communicate()
            if proc.returncode != 0:
                tail = (err or "").strip().splitlines()[-1:] or ["no message"]
                raise RuntimeError(f"demo phantoms: shard {start} of {k} stopped (exit {proc.returncode}): {tail[0]}")
            got = json.loads(out.strip().splitlines()[-1])
            voxels.update({sid: (_voxel(lung), _voxel(liver)) for sid, (lung, liver) in got.items()})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {sid: voxels[sid] for sid in lat["subject_id"].astype(str)}  # the cohort's order


def _voxel(v: list[int] | None) -> Voxel:
    return None if v is None else (int(v[0]), int(v[1]), int(v[2]))


def main(argv: list[str]) -> int:
    out, n, seed, k, start, volumes = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]), argv[5]
    lat = L.sample_latents(n, seed)
    voxels = render_subjects(out, lat, seed, range(start, n, k), volumes=volumes == "1")
    print(json.dumps({sid: [None if v is None else [int(x) for x in v] for v in pair] for sid, pair in voxels.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
