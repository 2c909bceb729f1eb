"""A timeline summarised as tabular features (``core.models.ehr_summary``) for cohorts without features.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.models.ehr_summary import columns, fit_recipe, summary_row


def test_recipe_and_row() -> None:
    """The codes held by most train subjects (at least ``min_subjects``), last values for the codes that usually
    carry one, the age from MEDS_BIRTH; a subject without a code gets count 0 and no last value (missing)."""
    def timeline(codes: list[str], values: list[float]) -> pd.DataFrame:
        times = pd.date_range("2020-01-01", periods=len(codes), freq="D")
        return pd.DataFrame({"time": times, "code": codes, "numeric_value": values})

    nan = float("nan")
    train = [timeline(["LAB//na", "DX//I10", "LAB//na"], [140.0, nan, 135.0]),
             timeline(["LAB//na", "DX//rare"], [138.0, nan]),
             timeline(["DX//I10", "LAB//na"], [nan, 141.0])]
    recipe = fit_recipe(train, min_subjects=2)
    assert recipe == {"codes": ["LAB//na", "DX//I10"], "valued": ["LAB//na"], "birth": False}
    assert columns(recipe) == ["events_log", "days_since_last", "count::LAB//na", "count::DX//I10", "last::LAB//na"]
    row = summary_row(train[0], pd.Timestamp("2020-01-10"), recipe)
    assert row["last::LAB//na"] == 135.0 and row["count::LAB//na"] == pytest.approx(np.log1p(2))
    assert row["days_since_last"] == pytest.approx(7.0) and row["events_log"] == pytest.approx(np.log1p(3))
    other = summary_row(train[1], None, recipe)
    assert other["count::DX//I10"] == 0.0 and other["days_since_last"] == 0.0
    assert np.isnan(summary_row(train[2].iloc[:1], None, recipe)["last::LAB//na"])
    assert all(np.isnan(v) for v in summary_row(train[0].iloc[:0], None, recipe).values())


@pytest.mark.slow
def test_timeline_only_cohort_reads_its_summary(tmp_path: Path) -> None:
    """A demo cohort without features.csv, ``--ehr-encoder summary``: ehr_only gets the timeline's summary as its
    tabular input (recorded in config.json), so an uploaded timeline (events only, no features.csv row) is read
    through it: risks differ from case to case. The shipped ehr_only model (features.csv) gives every such case the
    same risk (SD < 0.001). ``auto`` on the same cohort reads the events alone, as before."""
    from core.cohort import UPLOAD_SUBJECT, load_cohort, uploaded_case_cohort
    from core.demo import write_demo_cohort
    from core.ehr_read import feature_read
    from core.registry import load_model
    from core.errors import InputError
    from core.train import train_model
    from core.train.ehr import ehr_config

    root = write_demo_cohort(tmp_path / "cohort", n=40, seed=2)
    (root / "features.csv").unlink()
    out = tmp_path / "ehr_only"
    small = {"dim": 16, "batch_size": 16, "patience": 3}
    train_model(root, "ehr_only", out, epochs=3, device="cpu", ehr_encoder="summary", overrides=small)
    tabular = json.loads((out / "config.json").read_text())["ehr"]["tabular"]
    assert tabular["source"] == "timeline_summary" and tabular["summary"]["birth"] is True
    assert tabular["columns"][:3] == ["age_years", "events_log", "days_since_last"]
    counts = [c for c in tabular["columns"] if c.startswith("count::")]
    assert len(counts) == 4 and any(c.startswith("last::") for c in tabular["columns"])  # 24 train subjects: 4 codes
    model = load_model(out)
    assert model.config.ehr.curated_features == [] and model.config.ehr.summarises_timeline
    assert "## Curated features this model reads" not in (out / "MODEL_CARD.md").read_text()  # not features.csv's
    assert "- Tabular features: the timeline's summary (`core.models.ehr_summary`, not features.csv), " \
           f"{len(tabular['columns'])} columns: age from MEDS_BIRTH" in (out / "MODEL_CARD.md").read_text()
    cohort = load_cohort(root)
    assert feature_read(model, cohort, cohort.ids("test")[0]) == []  # nothing to ask of features.csv

    def uploaded_risks(model_dir: Path) -> np.ndarray:
        m = load_model(model_dir)
        risks = []
        for sid in cohort.ids("test"):
            case = uploaded_case_cohort(tmp_path, volume=None, events=cohort.events(sid), index_time=cohort.index_time(sid))
            inputs = m.case_inputs(case, UPLOAD_SUBJECT)
            risks.append(m.predict_case(inputs).risk_at[365])
        return np.asarray(risks)

    assert uploaded_risks(out).std() > 0.01
    shipped = Path(__file__).resolve().parents[1] / "assets" / "demo_models" / "ehr_only"
    assert uploaded_risks(shipped).std() > 0.01  # since session 40 it reads the events too (feature_dropout)
    plain = tmp_path / "plain"
    train_model(root, "ehr_only", plain, epochs=3, device="cpu", overrides=small)
    assert json.loads((plain / "config.json").read_text())["ehr"]["tabular"] is None
    (root / "timeline.parquet").unlink()
    with pytest.raises(InputError, match="ehr_encoder: got summary, the cohort has no timeline to summarise"):
        ehr_config(load_cohort(root), "summary", 64, 64)
