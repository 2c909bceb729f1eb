"""What reading an uploaded cohort zip at once costs (``core.app.cohort_preview.preview_cohort_zip``: cohort.csv, the
timeline and features.csv parsed in memory, one DICOM header's first bytes per study), against what the job does
with the same zip first: the PHI check of every header (``core.deid.cohort_gate.gate_cohort_zip``) and unpacking it
(``zipfile.ZipFile.extractall``, the reference tool: Python's own).

The cohort: the demo's timeline and features for ``--n`` subjects, each with a DICOM series of ``--slices`` slices of
256 x 256 (one phantom series written once, its bytes zipped under every subject's folder, deflated), cohort.csv
with an index_time per subject.

    python bench/bench_cohort_preview.py --n 200 --slices 60 [--dated] [--work /tmp/preview_bench]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd

from core.app.cohort_preview import preview_cohort_zip
from core.deid.cohort_gate import gate_cohort_zip
from core.demo import write_demo_cohort
from tests.dicom_factory import edit_file, write_series


def build(work: Path, n: int, slices: int, dated: bool = False) -> bytes:
    """The cohort zip (see the module docstring); ``dated``: its studies keep a StudyDate (de-identified ones have
    none, and the preview reads one header of each)."""
    root = write_demo_cohort(work / "site", n=n, seed=3, volumes=False)
    series = write_series(work / "series", shape=(slices, 256, 256), identified=False)
    if dated:
        for path in series.paths:
            edit_file(path, lambda ds: setattr(ds, "StudyDate", "20240917"))
    table = pd.read_csv(root / "cohort.csv", dtype={"subject_id": str})
    table["study"] = [f"studies/{s}" for s in table["subject_id"]]
    table["index_time"] = "2024-09-20 09:00"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cohort.csv", table.to_csv(index=False))
        for name in ("timeline.parquet", "features.csv"):
            zf.write(root / name, name)
        slices_bytes = [(p.name, p.read_bytes()) for p in sorted(series.paths)]
        for sid in table["subject_id"]:
            for name, data in slices_bytes:
                zf.writestr(f"studies/{sid}/{name}", data)
    return buf.getvalue()


def timed(fn: object, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--slices", type=int, default=60)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--dated", action="store_true", help="the studies keep a StudyDate")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="preview_bench_"))
    try:
        data = build(work, args.n, args.slices, args.dated)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            files, inflated = len(zf.infolist()), sum(i.file_size for i in zf.infolist())
        print(f"cohort zip: {args.n} subjects x {args.slices} slices ({'dated' if args.dated else 'no dates'}), {files} files, {len(data) / 2**20:.0f} MiB "
              f"({inflated / 2**20:.0f} MiB inflated)")
        preview = preview_cohort_zip(data)
        assert preview.studies == args.n and not preview.blocking, preview
        t_preview = timed(lambda: preview_cohort_zip(data), 3)
        t_gate = timed(lambda: gate_cohort_zip(data))

        def unpack() -> None:
            out = work / "unpacked"
            shutil.rmtree(out, ignore_errors=True)
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                zf.extractall(out)

        t_unpack = timed(unpack)
        print(f"preview_cohort_zip      {t_preview:7.2f} s  (best of 3; notes: {len(preview.notes)})")
        print(f"gate_cohort_zip (PHI)   {t_gate:7.2f} s  preview / gate   = {t_preview / t_gate:.3f}")
        print(f"zipfile extractall      {t_unpack:7.2f} s  preview / unpack = {t_preview / t_unpack:.3f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
