"""What the benchmarks that rewrite the demo's test split share: the split itself (the demo written first when
absent), a copy of its tables for a subset of subjects, and a shipped model's 1-year risks on a cohort."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def demo_test_split(demo: Path, n: int) -> tuple[pd.DataFrame, list[str]]:
    """The first ``n`` rows of the demo cohort's test split (``python -m core demo`` writes ``demo`` when absent)
    and their subject ids."""
    if not (demo / "cohort.csv").is_file():
        subprocess.run([sys.executable, "-m", "core", "demo", str(demo)], cwd=ROOT, check=True)
    table = pd.read_csv(demo / "cohort.csv")
    test = table[table["split"] == "test"].head(n)
    return test, [str(s) for s in test["subject_id"]]


def copy_tables(src: Path, out: Path, test: pd.DataFrame) -> None:
    """``features.csv`` and ``timeline.parquet`` of ``src`` for the subjects of ``test`` only, into ``out``."""
    keep = set(test["subject_id"])
    out.mkdir(parents=True, exist_ok=True)
    feats = pd.read_csv(src / "features.csv")
    feats[feats["subject_id"].isin(keep)].to_csv(out / "features.csv", index=False)
    timeline = pd.read_parquet(src / "timeline.parquet")
    timeline[timeline["subject_id"].isin(keep)].to_parquet(out / "timeline.parquet")


def risks_1y(model_dir: Path, cohort: Path, ids: list[str]) -> np.ndarray:
    """The model's 1-year risk of every subject in ``ids`` (one pass, no ensemble sampling)."""
    from core.cohort import load_cohort
    from core.registry import load_model

    model = load_model(model_dir)
    c = load_cohort(cohort, for_training=False)
    return np.array([model.predict_case(model.case_inputs(c, s), n_samples=1).risk_at[365] for s in ids])
