"""Real tabular survival data: our ehr_only model against CoxPH (lifelines) and a random survival forest (sksurv).

For each SurvSet dataset (written as a cohort by ``bench/survset_cohorts.py``,
seeded 60/20/20 split stratified by event), on the same test subjects:

- **ehr_only**: ``core.train.train_model(cohort, "ehr_only", ...)`` with the
  tabular encoder (train split for fitting, val split for early stopping); by
  default 5 networks, 5 ridge linear members and a random survival forest member
  (weight 0.2, ``core.train.ehr.forest_member``; docs/BENCHMARKS.md);
  C-index from its survival curves (risk = minus restricted mean survival time).
- **CoxPH**: lifelines ``CoxPHFitter`` (L2 penalizer 0.01, raised to 0.1 or 1.0
  only when Newton-Raphson does not converge) on the train split after median
  imputation + missing indicators + standardisation fitted on train;
  risk = partial hazard.
- **CoxPH, penalized**: the same with the L2 penalizer of ``PEN_GRID`` whose
  partial-hazard C on the val split is best (the split ehr_only uses for early stopping).
- **RSF**: scikit-survival ``RandomSurvivalForest`` (200 trees,
  min_samples_leaf=15, max_features="sqrt") on the same preprocessed train split.

Every C-index is Harrell's C from ``core.evaluate.survival_metrics`` (with a
200-resample bootstrap interval). Prints a markdown table, the averages and
ehr_only's gap to the better of CoxPH and RSF per dataset (mean over seeds: mean,
worst, how many more than 0.01 below) and to the penalized CoxPH; ``--json``
writes every number (rewritten after each dataset).

    python bench/bench_survset.py [--datasets GBSG2,whas500,...|all] [--seeds 0,1,2] [--json results.json]
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

from survset_cohorts import DEFAULT_DATASETS, all_datasets, write_survset_cohort  # noqa: E402

from core.cohort import Cohort, load_cohort  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.evaluate import harrell_c, survival_metrics  # noqa: E402

COX_PENALIZERS = (0.01, 0.1, 1.0)
PEN_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # penalized CoxPH: chosen on the val split
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
        if not self.with_missing:
            return out
        # all indicator columns at once (one insert per column fragments the frame: a PerformanceWarning per column)
        miss = df[self.with_missing].isna().astype(float).add_suffix("__missing")
        return pd.concat([out, miss], axis=1)

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


def fit_cox(x: pd.DataFrame, time_: np.ndarray, event: np.ndarray,
            penalizers: tuple[float, ...] = COX_PENALIZERS) -> tuple[Any, float]:
    """lifelines CoxPHFitter with the smallest penalizer of (0.01, 0.1, 1.0) whose Newton-Raphson converges.

    lifelines only warns when Newton-Raphson stops short (flchain and support2 do at
    0.01 with all one-hot levels kept); a non-converged fit can rank worse than chance,
    so that warning is treated as a failure here.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    df = x.assign(_time=time_, _event=event)
    for penalizer in penalizers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low-variance notes on one-hot columns
            warnings.filterwarnings("error", message="Newton-Raphson failed", category=ConvergenceWarning)
            try:
                return CoxPHFitter(penalizer=penalizer).fit(df, duration_col="_time", event_col="_event",
                                                            fit_options=COX_FIT_OPTIONS), penalizer
            except (ConvergenceError, ConvergenceWarning):
                continue
    raise RuntimeError(f"CoxPHFitter did not converge with penalizers {penalizers}")


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

    t0 = time.perf_counter()  # penalized CoxPH: the L2 penalizer of PEN_GRID with the best C on the val split
    va_ids = cohort.ids("val")
    x_va, val = pre.transform(feats.loc[va_ids]), table.loc[va_ids]
    best: tuple[float, Any, float] | None = None
    for pen in PEN_GRID:
        try:
            fitted, used = fit_cox(x_tr, train["time"].to_numpy(), train["event"].to_numpy(),
                                   tuple(p for p in PEN_GRID if p >= pen))
        except RuntimeError:
            continue
        c_val = float(harrell_c(val["time"].to_numpy(), val["event"].to_numpy().astype(bool),
                                fitted.predict_partial_hazard(x_va).to_numpy()))
        if best is None or c_val > best[0] + 1e-9:
            best = (c_val, fitted, used)
    assert best is not None
    surv = best[1].predict_survival_function(x_te, times=grid).to_numpy().T
    out["coxph_pen"] = _metrics(grid, surv, test, train, best[1].predict_partial_hazard(x_te).to_numpy(), seed)
    out["coxph_pen"].update(seconds=time.perf_counter() - t0, penalizer=best[2], val_c_index=best[0])

    t0 = time.perf_counter()
    rsf = RandomSurvivalForest(**RSF_PARAMS, n_jobs=int(os.environ.get("BENCH_JOBS", "2")), random_state=seed)
    rsf.fit(x_tr.to_numpy(), Surv.from_arrays(train["event"].astype(bool).to_numpy(), train["time"].to_numpy()))
    fns = rsf.predict_survival_function(x_te.to_numpy())
    surv = np.stack([fn(np.clip(grid, fn.x[0], fn.x[-1])) for fn in fns])
    out["rsf"] = _metrics(grid, surv, test, train, rsf.predict(x_te.to_numpy()), seed)
    out["rsf"]["seconds"] = time.perf_counter() - t0
    return out


def run_ehr_only(cohort_dir: Path, seed: int, device: str, overrides: dict[str, Any] | None = None) -> dict:
    from core.train import train_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_model(cohort_dir, "ehr_only", Path(tmp) / "model", seed=seed, device=device, overrides=overrides)
    res = dict(metrics["test"])
    res.update(seconds=time.perf_counter() - t0, epochs_run=metrics.get("epochs_run"),
               val_c_index=metrics.get("val_c_index"))
    return res


def _fmt(m: dict | None) -> str:
    if not m:
        return "n/a"
    ci = m.get("c_index_ci")
    return f"{m['c_index']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Per dataset the mean over seeds; ehr_only's gap to max(CoxPH, RSF) and to the val-tuned penalized CoxPH."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["dataset"], []).append(r)
    per: dict[str, dict[str, float]] = {}
    for name, rs in by.items():
        per[name] = {m: float(np.mean([r[m]["c_index"] for r in rs])) for m in ("ehr_only", "coxph", "coxph_pen", "rsf") if m in rs[0]}
        per[name]["seeds"] = len(rs)
    out: dict[str, Any] = {"per_dataset": per}
    if per and all("ehr_only" in v for v in per.values()):
        gap_best = {k: v["ehr_only"] - max(v["coxph"], v["rsf"]) for k, v in per.items()}
        gap_pen = {k: v["ehr_only"] - v["coxph_pen"] for k, v in per.items()}
        worst = min(gap_best, key=gap_best.get)
        out.update(mean_gap_best=float(np.mean(list(gap_best.values()))), worst_gap_best=gap_best[worst], worst_dataset=worst,
                   n_more_than_001_below=int(sum(g < -0.01 for g in gap_best.values())),
                   mean_gap_pen=float(np.mean(list(gap_pen.values()))), n_below_pen=int(sum(g < 0 for g in gap_pen.values())),
                   gap_best=gap_best, gap_pen=gap_pen)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help="comma-separated SurvSet names, or 'all' (every non-time-varying dataset with "
                             "100-10000 rows and < 200 columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, help="comma-separated split/training seeds (overrides --seed)")
    parser.add_argument("--cohorts", type=Path, default=None, help="where to write the cohorts (default: a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-model", action="store_true", help="baselines only")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a training setting for ehr_only, e.g. --set 'ehr_only_linear_penalty_cv=[0.1,0.3,1]'")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=JSON, e.g. ehr_only_linear_penalty=0.3")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError as err:
            parser.error(f"--set {item!r}: the value is not JSON ({err.msg}); quote strings, e.g. KEY='\"text\"'")
    names = all_datasets() if args.datasets == "all" else [d.strip() for d in args.datasets.split(",") if d.strip()]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    tmp = tempfile.TemporaryDirectory() if args.cohorts is None else None
    root = Path(tmp.name) if tmp is not None else args.cohorts
    rows: list[dict] = []
    for seed in seeds:
        base = root / f"seed{seed}"
        for name in names:
            info = write_survset_cohort(name, base, seed=seed)
            try:
                cohort = load_cohort(base / name)
            except InputError as err:  # e.g. follic: competing events coded 2
                print(f"{name} seed {seed}: skipped ({err})", file=sys.stderr, flush=True)
                continue
            res = run_baselines(cohort, seed)
            if not args.skip_model:
                res["ehr_only"] = run_ehr_only(base / name, seed, args.device, overrides or None)
            row = {"dataset": name, "seed": seed, "n": info["n"], "events": info["events"], "features": info["n_features"],
                   "missing": info["missing_cells"], "cox_penalizer": res["coxph"]["penalizer"], "n_test": res["coxph"]["n"],
                   "events_test": res["coxph"]["events"], **{k: v for k, v in res.items()}}
            rows.append(row)
            print(f"{name} seed {seed}: cox {_fmt(res['coxph'])} cox_pen {_fmt(res['coxph_pen'])} rsf {_fmt(res['rsf'])} "
                  f"ehr_only {_fmt(res.get('ehr_only'))} (" + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in res.items()) + ")",
                  file=sys.stderr, flush=True)
            if args.json is not None:  # written as it goes: a long run can be read before it ends
                args.json.write_text(json.dumps({"seeds": seeds, "rows": rows, "summary": summarize(rows)}, indent=1, default=float))
    models = ["ehr_only", "coxph", "coxph_pen", "rsf"] if not args.skip_model else ["coxph", "coxph_pen", "rsf"]
    print("| dataset | seed | n | events | features (missing cells) | test n / events | "
          + " | ".join(f"{m} C [95% CI]" for m in models) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(models))
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {r['n']} | {r['events']} | {r['features']} ({r['missing']}) | "
              f"{r['n_test']} / {r['events_test']} | " + " | ".join(_fmt(r[m]) for m in models) + " |")
    means = {m: float(np.mean([r[m]["c_index"] for r in rows])) for m in models}
    print("| **mean** | | | | | | " + " | ".join(f"**{means[m]:.3f}**" for m in models) + " |")
    summary = summarize(rows)
    if "mean_gap_best" in summary:
        print(f"\nehr_only - max(coxph, rsf) per dataset (mean over seeds): mean {summary['mean_gap_best']:+.3f}, worst "
              f"{summary['worst_gap_best']:+.3f} ({summary['worst_dataset']}), more than 0.01 below on "
              f"{summary['n_more_than_001_below']}/{len(summary['per_dataset'])}; ehr_only - penalized coxph: mean "
              f"{summary['mean_gap_pen']:+.3f}, below on {summary['n_below_pen']}/{len(summary['per_dataset'])}")
    if args.json is not None:
        args.json.write_text(json.dumps({"seeds": seeds, "rows": rows, "means": means, "summary": summary}, indent=1, default=float))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
