"""Train the demo models that the app ships in ``assets/demo_models``.

The app regenerates the demo cohort deterministically on first start
(``core.demo``, same ``n`` and ``seed`` give the same bytes) and installs these
models when the SHA-256 of its ``cohort.csv`` matches the manifest, so the first
start does not have to train seven models. Reproduce with::

    python scripts/build_demo_models.py --work /tmp/demo_build

Weights are safetensors; nothing is pickled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_FILES = ("config.json", "model.safetensors", "metrics.json", "MODEL_CARD.md")


def write_app_caches(models_dir: Path, cohort_dir: Path, fusions: tuple[str, ...]) -> None:
    """What the app would compute on a first start, kept beside each shipped model (content-stamped).

    ``demo_test_metrics.json`` (the Cohort & models table), ``reference_predictions.npz`` (the reference
    curves and subgroups of the test split) and ``val_predictions.npz`` (the conformal calibration).
    """
    from core.app import reference
    from core.cohort import load_cohort
    from core.evaluation import evaluate_model, model_fingerprint, save_metrics
    from core.registry import load_model

    cohort = load_cohort(cohort_dir)
    for fusion in fusions:
        folder = models_dir / fusion
        started = time.perf_counter()
        save_metrics(folder / "demo_test_metrics.json",
                     evaluate_model(folder, cohort_dir, split="test", device="cpu", keep_risk=True),
                     model_fingerprint(folder))
        model = load_model(folder, device="cpu")
        reference.reference_curves(model, cohort, reference.reference_ids(cohort), cache=folder / "reference_predictions.npz")
        # the cache holds the val split's predictions only; the app applies its own alpha to them
        reference.conformal_calibration(model, cohort, cache=folder / "val_predictions.npz")
        print(f"{fusion}: app caches in {time.perf_counter() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the cohort and the runs")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "demo_models")
    parser.add_argument("--n", type=int, default=None, help="demo size (default core.demo.DEFAULT_N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=None,
                        help="already trained model folders (one per strategy) on the same cohort: ship them as they are")
    parser.add_argument("--fusions", default=None,
                        help="comma-separated strategies to (re)build; the others in --out, and their manifest entries, "
                             "stay as they are (default: all seven)")
    parser.add_argument("--caches-only", action="store_true",
                        help="only (re)compute the app's caches of the models already in --out, on --work's cohort")
    args = parser.parse_args(argv)

    from core.demo import DEFAULT_N, write_demo_cohort
    from core.models import FUSIONS

    n = args.n or DEFAULT_N
    chosen = tuple(FUSIONS) if not args.fusions else tuple(f.strip() for f in args.fusions.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FUSIONS]
    if unknown:
        parser.error(f"--fusions: {', '.join(unknown)} is not a strategy; use some of {', '.join(FUSIONS)}")
    cohort = args.work / "cohort"
    if not (cohort / "cohort.csv").exists():
        write_demo_cohort(cohort, n=n, seed=args.seed)
    kept = args.out / "MANIFEST.json"
    previous = json.loads(kept.read_text()) if kept.is_file() and chosen != tuple(FUSIONS) else {}
    if previous and previous.get("cohort_sha256") != hashlib.sha256((cohort / "cohort.csv").read_bytes()).hexdigest():
        parser.error("--fusions: the other shipped models were trained on another demo cohort; rebuild all seven")
    if args.caches_only:
        write_app_caches(args.out, cohort, chosen)
        return 0
    started = time.perf_counter()
    runs = args.models
    if runs is None:
        from core.train.compare import compare_strategies

        runs = args.work / "runs"
        # the whole-CT lesion detector: the demo has lesions in two organs (lung and liver)
        compare_strategies(cohort, runs, fusions=chosen, seed=args.seed, device="cpu", image_encoder_kind="detector")
    seconds = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {f: v for f, v in (previous.get("test_metrics") or {}).items() if f not in chosen}
    for fusion in chosen:
        src = runs / fusion
        dst = args.out / fusion
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        for name in MODEL_FILES:
            shutil.copy2(src / name, dst / name)
        test = json.loads((src / "metrics.json").read_text()).get("test", {})
        metrics[fusion] = {k: test.get(k) for k in ("c_index", "c_index_ci", "n", "events") if k in test}
    manifest = {
        "n": n,
        "seed": args.seed,
        "cohort_sha256": hashlib.sha256((cohort / "cohort.csv").read_bytes()).hexdigest(),
        "command": "python scripts/build_demo_models.py --work DIR",
        "train_seconds": seconds if args.models is None and chosen == tuple(FUSIONS) else previous.get("train_seconds"),
        "image_encoder_kind": "detector",
        "test_metrics": {f: metrics[f] for f in FUSIONS if f in metrics},
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    write_app_caches(args.out, cohort, chosen)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
