"""Real tabular survival data: our ehr_only model against CoxPH (lifelines) and a random survival forest (sksurv).

For each SurvSet dataset (written as a cohort by ``bench/survset_cohorts.py``,
seeded 60/20/20 split stratified by event), on the same test subjects:

- **ehr_only**: ``core.train.train_model(cohort, "ehr_only", ...)`` with the
  tabular encoder (train split for fitting, val split for early stopping);
  C-index from its survival curves (risk = minus restricted mean survival time).
- **CoxPH**: lifelines ``CoxPHFitter`` (L2 penalizer 0.01, raised to 0.1 or 1.0
  only when Newton-Raphson does not converge) on the train split after median
  imputation + missing indicators + standardisation fitted on train;
  risk = partial hazard.
- **RSF**: scikit-survival ``RandomSurvivalForest`` (200 trees,
  min_samples_leaf=15, max_features="sqrt") on the same preprocessed train split.

Every C-index is Harrell's C from ``core.evaluate.survival_metrics`` (with a
200-resample bootstrap interval). Prints a markdown table and the averages;
``--json`` writes every number.

    python bench/bench_survset.py [--datasets GBSG2,whas500,...] [--seed 0] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from survset_cohorts import DEFAULT_DATASETS, write_survset_cohort  # noqa: E402

from core.cohort import Cohort, load_cohort  # noqa: E402
from core.evaluate import survival_metrics  # noqa: E402

COX_PENALIZERS = (0.01, 0.1, 1.0)
COX_FIT_OPTIONS = {"step_size": 0.2, "max_steps": 500}
RSF_PARAMS: dict[str, Any] = {"n_estimators": 200, "min_samples_leaf": 15, "max_features": "sqrt"}
N_BOOT = 200


class TrainPreprocessor:
    """Median imputation + missing indicators + standardisation, fitted on the train split only."""

    def __init__(self, train: pd.DataFrame) -> None:
        self.median = train.median(skipna=True).fillna(0.0)
        self.with_missing = [c for c in train.columns if train[c].isna().any()]
        filled = self._fill(train)
        self.mean = filled.mean()
        self.std = filled.std(ddof=0)
        self.keep = [c for c in filled.columns if self.std[c] > 1e-12]

    def _fill(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.fillna(self.median)
        for c in self.with_missing:
            out[f"{c}__missing"] = df[c].isna().astype(float)
        return out

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        filled = self._fill(df)
        return ((filled - self.mean) / self.std)[self.keep]


def _grid(train_time: np.ndarray, train_event: np.ndarray, n: int = 60) -> np.ndarray:
    ev = train_time[train_event.astype(bool)]
    return np.unique(np.quantile(ev, np.linspace(0.0, 1.0, n)))


def _metrics(grid: np.ndarray, surv: np.ndarray, test: pd.DataFrame, train: pd.DataFrame,
             risk: np.ndarray | None, seed: int) -> dict:
    surv = np.minimum.accumulate(np.clip(surv, 0.0, 1.0), axis=1)
    return survival_metrics(grid, surv, test["time"].to_numpy(), test["event"].to_numpy(), train["time"].to_numpy(),
                            train["event"].to_numpy(), n_boot=N_BOOT, seed=seed, risk=risk)


def fit_cox(x: pd.DataFrame, time_: np.ndarray, event: np.ndarray) -> tuple[Any, float]:
    """lifelines CoxPHFitter with the smallest penalizer of (0.01, 0.1, 1.0) whose Newton-Raphson converges.

    lifelines only warns when Newton-Raphson stops short (flchain and support2 do at
    0.01 with all one-hot levels kept); a non-converged fit can rank worse than chance,
    so that warning is treated as a failure here.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    df = x.assign(_time=time_, _event=event)
    for penalizer in COX_PENALIZERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low-variance notes on one-hot columns
            warnings.filterwarnings("error", message="Newton-Raphson failed", category=ConvergenceWarning)
            try:
                return CoxPHFitter(penalizer=penalizer).fit(df, duration_col="_time", event_col="_event",
                                                            fit_options=COX_FIT_OPTIONS), penalizer
            except (ConvergenceError, ConvergenceWarning):
                continue
    raise RuntimeError(f"CoxPHFitter did not converge with penalizers {COX_PENALIZERS}")


def run_baselines(cohort: Cohort, seed: int) -> dict[str, dict]:
    from sksurv.ensemble import RandomSurvivalForest
    from sksurv.util import Surv

    table = cohort.table.set_index("subject_id")
    feats = cohort.features
    assert feats is not None, "SurvSet cohorts have features.csv"
    tr_ids, te_ids = cohort.ids("train"), cohort.ids("test")
    pre = TrainPreprocessor(feats.loc[tr_ids])
    x_tr, x_te = pre.transform(feats.loc[tr_ids]), pre.transform(feats.loc[te_ids])
    train, test = table.loc[tr_ids], table.loc[te_ids]
    grid = _grid(train["time"].to_numpy(), train["event"].to_numpy())
    out: dict[str, dict] = {}

    t0 = time.perf_counter()
    cph, penalizer = fit_cox(x_tr, train["time"].to_numpy(), train["event"].to_numpy())
    surv = cph.predict_survival_function(x_te, times=grid).to_numpy().T
    risk = cph.predict_partial_hazard(x_te).to_numpy()
    out["coxph"] = _metrics(grid, surv, test, train, risk, seed)
    out["coxph"].update(seconds=time.perf_counter() - t0, penalizer=penalizer)

    t0 = time.perf_counter()
    rsf = RandomSurvivalForest(**RSF_PARAMS, n_jobs=int(os.environ.get("BENCH_JOBS", "2")), random_state=seed)
    rsf.fit(x_tr.to_numpy(), Surv.from_arrays(train["event"].astype(bool).to_numpy(), train["time"].to_numpy()))
    fns = rsf.predict_survival_function(x_te.to_numpy())
    surv = np.stack([fn(np.clip(grid, fn.x[0], fn.x[-1])) for fn in fns])
    out["rsf"] = _metrics(grid, surv, test, train, rsf.predict(x_te.to_numpy()), seed)
    out["rsf"]["seconds"] = time.perf_counter() - t0
    return out


def run_ehr_only(cohort_dir: Path, seed: int, device: str) -> dict:
    from core.train import train_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_model(cohort_dir, "ehr_only", Path(tmp) / "model", seed=seed, device=device)
    res = dict(metrics["test"])
    res.update(seconds=time.perf_counter() - t0, epochs_run=metrics.get("epochs_run"),
               val_c_index=metrics.get("val_c_index"))
    return res


def _fmt(m: dict | None) -> str:
    if not m:
        return "n/a"
    ci = m.get("c_index_ci")
    return f"{m['c_index']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cohorts", type=Path, default=None, help="where to write the cohorts (default: a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-model", action="store_true", help="baselines only")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = parser.parse_args(argv)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    tmp = tempfile.TemporaryDirectory() if args.cohorts is None else None
    base = Path(tmp.name) if tmp is not None else args.cohorts
    rows: list[dict] = []
    for name in names:
        info = write_survset_cohort(name, base, seed=args.seed)
        cohort = load_cohort(base / name)
        res = run_baselines(cohort, args.seed)
        if not args.skip_model:
            res["ehr_only"] = run_ehr_only(base / name, args.seed, args.device)
        row = {"dataset": name, "n": info["n"], "events": info["events"], "features": info["n_features"],
               "missing": info["missing_cells"], "cox_penalizer": res["coxph"]["penalizer"], "n_test": res["coxph"]["n"], "events_test": res["coxph"]["events"],
               **{k: v for k, v in res.items()}}
        rows.append(row)
        print(f"{name}: cox {_fmt(res['coxph'])} rsf {_fmt(res['rsf'])} ehr_only {_fmt(res.get('ehr_only'))} "
              "(" + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in res.items()) + ")", file=sys.stderr, flush=True)
    models = ["ehr_only", "coxph", "rsf"] if not args.skip_model else ["coxph", "rsf"]
    print("| dataset | n | events | features (missing cells) | test n / events | "
          + " | ".join(f"{m} C [95% CI]" for m in models) + " |")
    print("|---|---|---|---|---|" + "---|" * len(models))
    for r in rows:
        print(f"| {r['dataset']} | {r['n']} | {r['events']} | {r['features']} ({r['missing']}) | "
              f"{r['n_test']} / {r['events_test']} | " + " | ".join(_fmt(r[m]) for m in models) + " |")
    means = {m: float(np.mean([r[m]["c_index"] for r in rows])) for m in models}
    print("| **mean** | | | | | " + " | ".join(f"**{means[m]:.3f}**" for m in models) + " |")
    if "ehr_only" in means:
        wins = {b: sum(r["ehr_only"]["c_index"] >= r[b]["c_index"] for r in rows) for b in ("coxph", "rsf")}
        print(f"\nmean C: ehr_only - coxph = {means['ehr_only'] - means['coxph']:+.3f}, "
              f"ehr_only - rsf = {means['ehr_only'] - means['rsf']:+.3f}; ehr_only >= coxph on {wins['coxph']}/{len(rows)}, "
              f">= rsf on {wins['rsf']}/{len(rows)} datasets")
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, "rows": rows, "means": means}, indent=1, default=float))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
