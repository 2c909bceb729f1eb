"""What a model could reach on a demo cohort's test split: oracle and linear Cox ceilings.

Prints test Harrell C of

* the generator's ``true_risk`` and its two parts (the oracle the issue measures against);
* lifelines' CoxPH on the true lesion variables (lesion, radius, central, upper lobe), i.e. a
  perfect image reader;
* CoxPH on the raw ``features.csv`` columns (median-imputed with missing indicators), the
  curated EHR a tabular model sees;
* CoxPH on both: the best a linear model could do from perfect image reading plus the
  curated EHR, with this training split size.

Usage::

    python -m core demo /tmp/demo800
    python bench/ceilings_demo.py --cohort /tmp/demo800
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cox_c(frame: pd.DataFrame, cols: list[str]) -> float:
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    train = frame[frame["split"] == "train"][cols + ["time", "event"]]
    test = frame[frame["split"] == "test"]
    model = CoxPHFitter(penalizer=0.01).fit(train, "time", "event")
    return float(concordance_index(test["time"], -model.predict_partial_hazard(test[cols]), test["event"]))


def main(argv: list[str] | None = None) -> int:
    from lifelines.utils import concordance_index

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="a folder written by `python -m core demo`")
    args = parser.parse_args(argv)
    cohort = pd.read_csv(args.cohort / "cohort.csv")
    features = pd.read_csv(args.cohort / "features.csv")
    test = cohort[cohort["split"] == "test"]
    rows = []
    for name, col in (("oracle true_risk", "true_risk"), ("image part", "risk_image"), ("EHR part", "risk_ehr")):
        rows.append((name, float(concordance_index(test["time"], -test[col], test["event"]))))
    frame = cohort.merge(features, on="subject_id")
    frame["radius"] = frame["lesion_radius_mm"].fillna(0.0)
    frame["central"] = (frame["lesion_zone"] == "central").astype(int)
    frame["upper"] = (frame["lesion_lobe"] == "upper").astype(int)
    image_cols = ["lesion", "radius", "central", "upper"]
    ehr_cols = [c for c in features.columns if c != "subject_id"]
    train = frame["split"] == "train"
    for col in list(ehr_cols):
        if frame[col].isna().any():
            frame[f"missing_{col}"] = frame[col].isna().astype(int)
            frame[col] = frame[col].fillna(frame.loc[train, col].median())
            ehr_cols.append(f"missing_{col}")
    rows.append(("CoxPH, true lesion variables", cox_c(frame, image_cols)))
    rows.append(("CoxPH, features.csv", cox_c(frame, ehr_cols)))
    rows.append(("CoxPH, true lesion variables + features.csv", cox_c(frame, image_cols + ehr_cols)))
    print(f"test split: n = {len(test)}, events = {int(test['event'].sum())}")
    print("| ceiling | test Harrell C |\n| --- | --- |")
    for name, c in rows:
        print(f"| {name} | {c:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
