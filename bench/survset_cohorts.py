"""Write real SurvSet datasets as cohort folders (cohort.csv + features.csv).

SurvSet ships its 77 real clinical datasets inside the installed package
(nothing is downloaded). Each dataset becomes::

    OUT/<name>/cohort.csv    subject_id, time (days), event (0/1), split (train/val/test)
    OUT/<name>/features.csv  subject_id + numeric columns

- ``num_*`` columns are kept as numbers, missing values stay NaN.
- ``fac_*`` columns are one-hot encoded with every level kept (``<column>=<level>``);
  SurvSet codes a missing category as the level ``missing``: those rows get NaN in
  all of that factor's columns, so each model imputes them its own way.
- ``split`` is a seeded 60/20/20 split stratified by event
  (:func:`core.cohort.auto_split`, the same one the app uses).
- time is converted to days where the source documents the unit (see ``UNITS``);
  other datasets keep SurvSet's unit and ``unit`` says ``"as shipped"``.
- Columns that are recorded after the index date and leak the outcome are
  dropped (``LEAKS``), e.g. flchain's cause-of-death chapter.

Datasets with time-varying rows (``is_td``) are refused.

Usage::

    python bench/survset_cohorts.py OUT [--datasets GBSG2,whas500,...] [--seed 0]

SurvSet stores its tables as pickles inside the package; they are read from the
installed package only (trusted, pinned in requirements-dev.txt), never from a user path.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.cohort import auto_split  # noqa: E402

DAYS_PER_MONTH = 365.25 / 12

#: dataset -> (days per unit of SurvSet's time, source of the unit)
UNITS: dict[str, tuple[float, str]] = {
    "GBSG2": (1.0, "days (TH.data::GBSG2 time)"),
    "whas500": (1.0, "days (lenfol)"),
    "veteran": (1.0, "days (survival::veteran time)"),
    "pbc": (1.0, "days (survival::pbc time)"),
    "colon": (1.0, "days (survival::colon time, death record)"),
    "rott2": (DAYS_PER_MONTH, "months (AF::rott2 os), converted to days"),
    "flchain": (1.0, "days (survival::flchain futime)"),
    "support2": (1.0, "days (d.time)"),
    "cancer": (1.0, "days (survival::cancer time)"),
    "Pbc3": (1.0, "days (pec::Pbc3 days)"),
    "LeukSurv": (1.0, "days (spBayesSurv::LeukSurv time)"),
    "mgus": (1.0, "days (survival::mgus futime)"),
    "actg": (1.0, "days (actg320 time)"),
    "nwtco": (1.0, "days (survival::nwtco edrel)"),
    "Framingham": (1.0, "days"),
}

#: columns recorded after the index date that reveal the outcome
LEAKS: dict[str, tuple[str, ...]] = {
    "flchain": ("fac_chapter",),  # cause of death, known only for those who died
    "support2": ("fac_sfdm2",),  # functional status at 2 months, includes "died before 2 months"
}

DEFAULT_DATASETS = ("GBSG2", "whas500", "veteran", "pbc", "colon", "rott2", "flchain", "support2",
                    "cancer", "Pbc3", "LeukSurv", "mgus")


def all_datasets(min_n: int = 100, max_n: int = 10000, max_columns: int = 200) -> list[str]:
    """Every SurvSet dataset without time-varying rows, with ``min_n``-``max_n`` rows and fewer than
    ``max_columns`` columns (the gene-expression sets with thousands of columns are left out), smallest first."""
    from SurvSet.data import SurvLoader

    d = SurvLoader().df_ds
    keep = d[(~d["is_td"].astype(bool)) & (d["n"] >= min_n) & (d["n"] <= max_n) & (d["n_num"] + d["n_ohe"] < max_columns)]
    return [str(x) for x in keep.sort_values("n")["ds"]]


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+<>-]+", "_", name).strip("_")


def load_survset(name: str) -> pd.DataFrame:
    """SurvSet's table for one dataset (columns pid, event, time, [time2], num_*, fac_*)."""
    from SurvSet.data import SurvLoader

    loader = SurvLoader()
    info = loader.df_ds.set_index("ds")
    if name not in info.index:
        raise SystemExit(f"error: dataset: got {name!r}, not in SurvSet; fix: use one of {', '.join(info.index)}")
    if bool(info.loc[name, "is_td"]):
        raise SystemExit(f"error: dataset: got {name!r}, has time-varying rows; fix: use a dataset with is_td False")
    return loader.load_dataset(name)["df"]


def to_cohort_tables(df: pd.DataFrame, name: str, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(cohort table, features table, info) for one SurvSet dataframe."""
    factor, unit = UNITS.get(name, (1.0, "as shipped (unit not documented here)"))
    df = df.drop(columns=[c for c in LEAKS.get(name, ()) if c in df.columns]).reset_index(drop=True)
    ids = df["pid"].astype(str) if df["pid"].is_unique else pd.Series([f"{name}_{i}" for i in range(len(df))])
    time = df["time"].astype(float).to_numpy() * factor
    event = df["event"].astype(int).to_numpy()
    cohort = pd.DataFrame({"subject_id": ids, "time": np.round(time, 3), "event": event,
                           "split": auto_split(ids.tolist(), event, seed=seed)})
    cols: dict[str, pd.Series] = {}
    for c in df.columns:
        if c.startswith("num_"):
            cols[_clean(c[4:])] = pd.to_numeric(df[c], errors="coerce").astype(float)
        elif c.startswith("fac_"):
            values = df[c].astype(str)
            missing = df[c].isna() | (values == "missing")
            for level in sorted(values[~missing].unique()):
                col = (values == level).astype(float)
                col[missing] = np.nan
                cols[_clean(f"{c[4:]}={level}")] = col
    features = pd.DataFrame(cols)
    features.insert(0, "subject_id", ids)
    info = {"dataset": name, "n": int(len(df)), "events": int(event.sum()), "unit": unit,
            "n_features": int(features.shape[1] - 1), "missing_cells": int(features.isna().sum().sum()),
            "dropped_leaks": [c for c in LEAKS.get(name, ())]}
    return cohort, features, info


def write_survset_cohort(name: str, out: Path, seed: int = 0) -> dict:
    """Write OUT/<name>/cohort.csv and features.csv; return the dataset info (also saved as survset.json)."""
    cohort, features, info = to_cohort_tables(load_survset(name), name, seed=seed)
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    cohort.to_csv(folder / "cohort.csv", index=False)
    features.to_csv(folder / "features.csv", index=False)
    (folder / "survset.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        info = write_survset_cohort(name, args.out, seed=args.seed)
        print(f"{name:10s} n={info['n']:5d} events={info['events']:5d} features={info['n_features']:3d} "
              f"missing={info['missing_cells']:6d} time: {info['unit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
