"""What a model could reach on a demo cohort's test split, and where trained models fall short of it.

Prints test Harrell C of

* the generator's ``true_risk`` and its parts (the oracle the issue measures against);
* the image part read without the lung nodule's location (its size and the liver lesion's only), and
  from lesion presence alone: what a reader that finds every lesion but cannot tell where it lies, or
  how large it is, would reach;
* lifelines' CoxPH on the true lesion variables of both organs (lung nodule: presence, radius, central,
  upper lobe; liver lesion: presence, radius), i.e. a perfect image reader;
* CoxPH on the raw ``features.csv`` columns (median-imputed with missing indicators), the curated EHR a
  tabular model sees, and on both.

With ``--models`` (model folders, e.g. the shipped ``assets/demo_models/image_only`` and ``ehr_only``),
each model scores every subject (``core.predict.predict_cohort``; risk = minus the area under its
curve) and the script adds:

* each model's test C;
* for a model that reads the CT: the AUC of its risk for a lesion subject against the lesion-free ones,
  per organ and radius band, and the Spearman correlation of its risk with the true image part among
  the lesion subjects (detection against grading);
* with an ``image_only`` and an ``ehr_only`` model: late stacking, a CoxPH of their two risks fitted on
  the validation split (which their training did not fit), scored on test: what a fusion of the two
  unimodal models' outputs reaches.

Usage::

    python -m core demo /tmp/demo800
    python bench/ceilings_demo.py --cohort /tmp/demo800 \\
        --models assets/demo_models/image_only assets/demo_models/ehr_only assets/demo_models/cross_attention
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RADIUS_BANDS_MM = ((0, 8), (8, 10), (10, 13), (13, 99))


def cox_c(frame: pd.DataFrame, cols: list[str], fit_on: str = "train") -> float:
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    fit = frame[frame["split"] == fit_on][cols + ["time", "event"]]
    test = frame[frame["split"] == "test"]
    model = CoxPHFitter(penalizer=0.01).fit(fit, "time", "event")
    return float(concordance_index(test["time"], -model.predict_partial_hazard(test[cols]), test["event"]))


def generator_ceilings(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """Test C of the true risk, its parts, and the image part without location or size (the generator's terms)."""
    from lifelines.utils import concordance_index

    from core.demo import latents as L

    test = frame[frame["split"] == "test"]
    lung, liver = test["lesion"].to_numpy(float), test["liver_lesion"].to_numpy(float)
    radius = test["lesion_radius_mm"].fillna(13.0).to_numpy(float)
    mean_location = 0.5 * L.LESION_CENTRAL + 0.5 * L.LESION_UPPER
    size_only = (lung * (L.LESION_BASE + L.LESION_PER_MM * (radius - 13.0) + mean_location)
                 + L.liver_part(liver, test["liver_lesion_radius_mm"].to_numpy(float)))
    presence = lung * (L.LESION_BASE + mean_location) + liver * L.LIVER_BASE
    rows = [(name, test[col].to_numpy(float)) for name, col in
            (("oracle true_risk", "true_risk"), ("image part", "risk_image"), ("EHR part", "risk_ehr"))]
    rows += [("image part without the nodule's location", size_only), ("image part from lesion presence alone", presence)]
    return [(name, float(concordance_index(test["time"], -risk, test["event"]))) for name, risk in rows]


def model_risks(cohort_dir: Path, model_dirs: list[Path]) -> dict[str, np.ndarray]:
    """``{model folder name: risk per subject of cohort.csv}``, risk = minus the area under the predicted curve."""
    from core.cohort import load_cohort
    from core.predict import predict_cohort
    from core.registry import load_model

    cohort = load_cohort(cohort_dir)
    ids = [str(s) for s in cohort.table["subject_id"]]
    out = {}
    for folder in model_dirs:
        times, surv = predict_cohort(load_model(folder, device="cpu"), cohort, ids)
        out[folder.name] = -np.trapezoid(surv, times, axis=1)
        print(f"scored {len(ids)} subjects with {folder}", file=sys.stderr, flush=True)
    return out


def reading(frame: pd.DataFrame, risk: np.ndarray) -> list[str]:
    """Detection AUC per organ and radius band (lesion subjects against lesion-free ones), and grading."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    none = ((frame["lesion"] == 0) & (frame["liver_lesion"] == 0)).to_numpy()
    lines = []
    for organ, flag, rad in (("lung nodule", "lesion", "lesion_radius_mm"),
                             ("liver lesion", "liver_lesion", "liver_lesion_radius_mm")):
        cells = []
        for lo, hi in RADIUS_BANDS_MM:
            band = ((frame[flag] == 1) & (frame[rad] >= lo) & (frame[rad] < hi)).to_numpy()
            if band.sum() >= 3:
                auc = roc_auc_score(np.r_[np.ones(band.sum()), np.zeros(none.sum())], np.r_[risk[band], risk[none]])
                cells.append(f"{lo}-{hi if hi < 99 else ''} mm {auc:.2f} (n={int(band.sum())})")
        lines.append(f"  {organ}, AUC against the {int(none.sum())} lesion-free subjects: " + ", ".join(cells))
    les = ~none
    rho = float(spearmanr(risk[les], frame["risk_image"].to_numpy()[les])[0])
    lines.append(f"  Spearman with the true image part among the {int(les.sum())} lesion subjects: {rho:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from lifelines.utils import concordance_index

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="a folder written by `python -m core demo`")
    parser.add_argument("--models", type=Path, nargs="*", default=[],
                        help="model folders to score on the cohort (slow: every subject is predicted)")
    args = parser.parse_args(argv)
    cohort = pd.read_csv(args.cohort / "cohort.csv", dtype={"subject_id": str})
    features = pd.read_csv(args.cohort / "features.csv", dtype={"subject_id": str})
    frame = cohort.merge(features, on="subject_id", how="left", validate="one_to_one")
    rows = generator_ceilings(frame)
    frame["radius"] = frame["lesion_radius_mm"].fillna(0.0)
    frame["central"] = (frame["lesion_zone"] == "central").astype(int)
    frame["upper"] = (frame["lesion_lobe"] == "upper").astype(int)
    frame["liver_radius"] = frame["liver_lesion_radius_mm"].fillna(0.0)
    image_cols = ["lesion", "radius", "central", "upper", "liver_lesion", "liver_radius"]
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
    notes: list[str] = []
    if args.models:
        risks = model_risks(args.cohort, args.models)
        test = (frame["split"] == "test").to_numpy()
        for name, risk in risks.items():
            rows.append((f"model {name}", float(concordance_index(frame["time"][test], -risk[test], frame["event"][test]))))
            if name != "ehr_only":
                notes += [f"{name}:"] + reading(frame, risk)
        if {"image_only", "ehr_only"} <= set(risks):
            for name in ("image_only", "ehr_only"):
                frame[f"risk_{name}"] = (risks[name] - risks[name][train].mean()) / risks[name][train].std()
            rows.append(("CoxPH of image_only's and ehr_only's risks, fitted on val (late stacking)",
                         cox_c(frame, ["risk_image_only", "risk_ehr_only"], fit_on="val")))
    test_rows = frame[frame["split"] == "test"]
    print(f"test split: n = {len(test_rows)}, events = {int(test_rows['event'].sum())}")
    print("| ceiling | test Harrell C |\n| --- | --- |")
    for name, c in rows:
        print(f"| {name} | {c:.3f} |")
    if notes:
        print("\nReading of the CT (all subjects):\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
