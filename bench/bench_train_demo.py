"""Benchmark: train all seven fusion strategies on the default demo cohort and time them.

Target (issue 3): all seven in <= 600 s on 2 CPU cores; best fusion test C-index
>= best unimodal + 0.02 and within 0.03 of the oracle C-index (true_risk).

Usage::

    python bench/bench_train_demo.py [--cohort DIR] [--out DIR] [--head discrete] [--threads 2]
        [--image-encoder-kind detector] [--seed 0]

Prints one line per strategy (seconds, test C-index with 95 % CI) and a summary
with the measured total against the 600 s budget. The first strategy also pays
for reading the CTs and training the shared image encoder (cached after that).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", type=Path, default=Path("/tmp/bench_demo_cohort"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_demo_models"))
    ap.add_argument("--head", default="discrete")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="delete the cohort's cache first (includes encoder training)")
    ap.add_argument("--image-encoder-kind", default="detector",
                    help="detector (the shipped demo models' whole-CT encoder) or 2d (lung-focused, fast)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the demo generator (a new --cohort) and of training")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from core.demo import write_demo_cohort
    from core.models import FUSIONS
    from core.train import train_model

    if not (args.cohort / "cohort.csv").exists():
        t = time.perf_counter()
        write_demo_cohort(args.cohort, seed=args.seed)
        print(f"demo cohort written in {time.perf_counter() - t:.0f} s")
    if args.fresh and (args.cohort / ".cache").exists():
        shutil.rmtree(args.cohort / ".cache")
    rows = []
    t_all = time.perf_counter()
    for fusion in FUSIONS:
        t = time.perf_counter()
        m = train_model(args.cohort, fusion, args.out / fusion, head=args.head, device="cpu", seed=args.seed,
                        image_encoder_kind=args.image_encoder_kind)
        dt = time.perf_counter() - t
        test = m["test"]
        rows.append({"fusion": fusion, "seconds": round(dt, 1), "c_index": test["c_index"], "ci": test["c_index_ci"],
                     "uno_c": test.get("uno_c"), "ibs": test.get("ibs"), "oracle": test.get("oracle_c_index")})
        print(f"{fusion:18s} {dt:6.1f} s  C {test['c_index']:.3f} [{test['c_index_ci'][0]:.3f}, {test['c_index_ci'][1]:.3f}]"
              f"  Uno {test.get('uno_c') or float('nan'):.3f}  IBS {test.get('ibs') or float('nan'):.3f}", flush=True)
    total = time.perf_counter() - t_all
    uni = max(r["c_index"] for r in rows if r["fusion"] in ("image_only", "ehr_only"))
    best = max((r for r in rows if r["fusion"] not in ("image_only", "ehr_only")), key=lambda r: r["c_index"])
    oracle = rows[0]["oracle"]
    print(f"total {total:.0f} s for 7 strategies (budget 600 s, ratio {total / 600:.2f}); threads {args.threads}")
    print(f"best unimodal C {uni:.3f}; best fusion {best['fusion']} C {best['c_index']:.3f} "
          f"(gain {best['c_index'] - uni:+.3f}, target >= +0.020); oracle C {oracle:.3f} (gap {oracle - best['c_index']:.3f}, target <= 0.030)")
    print(json.dumps({"total_seconds": round(total, 1), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
