"""What a model can read of a timeline: the share of its events with a code the model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.timeline_profile import build_timeline_profile, known_shares, timeline_warning, warn_below

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "demo_models"


def test_shares_and_rule() -> None:
    codes = np.array([[2, 3, 4, 0], [2, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_allclose(known_shares(codes, (codes > 0).astype(float)), [1.0, 0.25, np.nan])
    profile = build_timeline_profile(codes, (codes > 0).astype(float), n_codes=3)
    assert profile is not None and profile["n_subjects"] == 2  # a subject without events is not counted
    assert build_timeline_profile(codes[2:], np.zeros((1, 4)), n_codes=3) is None
    full = {"n_subjects": 100, "n_codes": 2, "margin": 0.15, "known_share": {"min": 0.9, "p05": 0.95, "median": 1.0}}
    assert warn_below(full) == pytest.approx(0.80)
    vocabulary = ["LAB//creatinine//mg/dL", "DX//I10"]
    # 4 of 5 known: 0.80, at the limit: no warning; 3 of 5: a warning that counts the others by the model's prefixes
    assert timeline_warning(full, vocabulary, ["DX//I10"] * 4 + ["LAB//50912//mg/dL"]) is None
    text = timeline_warning(full, vocabulary, ["DX//I10"] * 3 + ["LAB//50912//mg/dL", "COMMENT//John called"])
    assert text is not None and text.startswith("Timeline unlike the training timelines: 3 of the 5 events")
    assert "(1 LAB; 1 of kinds the model has no code of)" in text and "John" not in text and "COMMENT" not in text
    assert "(60%; at least 95% in 95 % of 100 training timelines of its training site)" in text
    assert "e.g. LAB//creatinine//mg/dL, DX//I10" in text


def test_shipped_models_warn_on_another_sites_codes(real_meds: Path, tmp_path: Path) -> None:
    """The shipped demo models were trained on the demo's codes; a real MIMIC-IV timeline (another site's coding:
    LAB//<itemid>//<unit>) gave ehr_only a 1-year risk of 41 % without a word. Now `predict --json` warns, and the
    Upload check of a timeline not yet saved says the same; a demo subject gets no warning."""
    from core.demo import write_demo_cohort
    from core.io.timeline import read_timeline
    from core.ehr_read import upload_timeline_read
    from core.predict import predict_subject
    from core.registry import load_model

    for name in ("ehr_only", "concat", "coattention_ehr"):
        profile = json.loads((SHIPPED / name / "config.json").read_text())["timeline_profile"]
        # measured on the 160 validation patients, read with the train split's vocabulary
        assert (profile["n_subjects"], profile["split"], profile["known_share"]["p05"]) == (160, "validation", 1.0)
        assert "## Timeline codes this model reads" in (SHIPPED / name / "MODEL_CARD.md").read_text()
    assert "timeline_profile" not in json.loads((SHIPPED / "image_only" / "config.json").read_text())

    events = read_timeline(real_meds, ["10000032"])
    root = tmp_path / "mimic"
    root.mkdir()
    events.to_parquet(root / "timeline.parquet", index=False)
    index_time = events["time"].dropna().iloc[len(events) // 2]
    pd.DataFrame({"subject_id": ["10000032"], "index_time": [index_time]}).to_csv(root / "cohort.csv", index=False)
    out = predict_subject(SHIPPED / "ehr_only", root, "10000032")
    warned = [w for w in out["warnings"] if w.startswith("Timeline unlike the training timelines")]
    assert out["n_events_used"] == 64 and len(warned) == 1, out["warnings"]
    assert warned[0].startswith("Timeline unlike the training timelines: 0 of the 64 events this model reads")
    assert "VITAL//systolic_bp//mmHg" in warned[0] and "the model does not read this timeline" in warned[0]
    # with no code it knows, ehr_only reads none of its events (a 41 % risk for everyone before): only the age and sex
    # that MEDS_BIRTH and GENDER give (the same codes at every site), and it says so
    assert out["modalities_used"] == ["ehr_features"] and out["scored"] is True
    assert any(w.startswith("This cohort has no features.csv: age and sex_female are read from the subject's timeline")
               for w in out["warnings"]), out["warnings"]
    assert upload_timeline_read(load_model(SHIPPED / "ehr_only"), events, index_time) == warned

    demo = write_demo_cohort(tmp_path / "demo", n=10, seed=3)
    sid = str(pd.read_csv(demo / "cohort.csv")["subject_id"].iloc[0])
    assert not [w for w in predict_subject(SHIPPED / "ehr_only", demo, sid)["warnings"] if w.startswith("Timeline")]


def test_evaluate_counts_the_timelines_of_another_site(real_meds: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate` of the shipped ehr_only model on a cohort built from the real MIMIC-IV timelines (`cohort`
    command) counts the test timelines whose codes the model does not know, in JSON and in its text output."""
    from core.cli import main
    from core.meds_cohort import cohort_from_meds

    cohort = cohort_from_meds(real_meds, tmp_path / "mimic")
    assert main(["evaluate", "--model", str(SHIPPED / "ehr_only"), "--cohort", str(cohort), "--json", "--no-band"]) == 0
    out = json.loads(capsys.readouterr().out)
    codes = out["timeline_codes"]
    assert codes["timelines"] == out["n"] and codes["warned"] == codes["timelines"] > 0
    assert codes["median_known_share"] < 0.1
    assert main(["evaluate", "--model", str(SHIPPED / "ehr_only"), "--cohort", str(cohort), "--no-band"]) == 0
    assert f"timelines   {codes['warned']} of {codes['timelines']} timelines have far fewer" in capsys.readouterr().out


def test_feature_columns_the_cohort_does_not_give(tmp_path: Path) -> None:
    """A cohort whose features.csv names a model's columns otherwise, or has no row for a subject: the features were
    read as missing without a word. `predict --json` now warns per subject and `evaluate` counts both."""
    from core.demo import write_demo_cohort
    from core.evaluation import evaluate_model
    from core.ehr_read import split_feature_reads_text
    from core.predict import predict_subject

    demo = write_demo_cohort(tmp_path / "demo", n=10, seed=3)
    table = pd.read_csv(demo / "cohort.csv")
    sids = [str(s) for s in table.loc[table["split"] == "test", "subject_id"]]
    features = pd.read_csv(demo / "features.csv")
    assert not [w for w in predict_subject(SHIPPED / "ehr_only", demo, sids[0])["warnings"] if "features.csv" in w]
    renamed = features.rename(columns={"age": "Age", "last_bnp": "BNP"})
    renamed[renamed["subject_id"].astype(str) != sids[1]].to_csv(demo / "features.csv", index=False)
    warned = predict_subject(SHIPPED / "ehr_only", demo, sids[0])["warnings"]
    assert ("features.csv lacks 2 of the model's 19 feature columns (age, last_bnp): they are read as missing for "
            "every subject (age from the subject's timeline). Name the columns as the model card lists them "
            "(features.csv has Age for age).") in warned
    assert any(w.startswith(f"features.csv has no row for subject {sids[1]}")
               for w in predict_subject(SHIPPED / "ehr_only", demo, sids[1])["warnings"])
    (demo / "features.csv").rename(demo / "kept.csv")
    assert ("This cohort has no features.csv: age and sex_female are read from the subject's timeline (MEDS_BIRTH, "
            "GENDER); the model's other 17 curated features (n_visits, n_admissions, n_dx_heart_failure, ...) are read "
            "as the training average") in predict_subject(SHIPPED / "ehr_only", demo, sids[0])["warnings"][-1]
    (demo / "kept.csv").rename(demo / "features.csv")
    summary = evaluate_model(SHIPPED / "ehr_only", demo, band=False, n_boot=10)["features"]
    assert summary == {"columns": 19, "absent": ["age", "last_bnp"], "without_row": 1, "far_values": {}, "unreadable": {},
                       "from_timeline": 2}  # the test split's two ages, from MEDS_BIRTH
    assert split_feature_reads_text(summary) == ("features.csv lacks 2 of the model's 19 feature columns (age, "
                                                 "last_bnp); 1 subject has no features.csv row: read as missing (age "
                                                 "or sex of 2 subjects read from the timeline)")


def test_values_in_another_unit(tmp_path: Path) -> None:
    """Creatinine written in umol/L under the demo's mg/dL code (x 88.4): the network clips the values at 5 SDs and
    read a normal-looking timeline. `predict --json` now names the code, the case's median and the training values
    when every one of at least 3 values lies that far (one extreme value is a sick patient); `evaluate` names the
    code when the split's median does. The same timelines in mg/dL get no warning."""
    from core.demo import write_demo_cohort
    from core.evaluation import evaluate_model
    from core.predict import predict_subject
    from core.timeline_profile import value_warning

    demo = write_demo_cohort(tmp_path / "demo", n=20, seed=3)
    table = pd.read_csv(demo / "cohort.csv")
    timeline = pd.read_parquet(demo / "timeline.parquet")
    code = "LAB//creatinine//mg/dL"
    index = table.set_index(table["subject_id"].astype(str))["index_time"].map(pd.Timestamp)
    read = timeline[timeline["time"] <= timeline["subject_id"].astype(str).map(index)]
    counts = read[read["code"] == code].groupby(read["subject_id"].astype(str)).size()
    test_ids = set(table.loc[table["split"] == "test", "subject_id"].astype(str))
    sid = next(s for s, n in counts.items() if n >= 3 and s in test_ids)

    def warned() -> list[str]:
        return [w for w in predict_subject(SHIPPED / "ehr_only", demo, sid)["warnings"] if w.startswith("Values")]

    assert not warned()
    assert evaluate_model(SHIPPED / "ehr_only", demo, band=False, n_boot=10)["timeline_codes"]["unit_suspects"] == []
    creatinine = timeline["code"] == code
    timeline.loc[creatinine, "numeric_value"] *= 88.4  # the whole site writes umol/L
    timeline.to_parquet(demo / "timeline.parquet", index=False)
    text = warned()
    assert len(text) == 1 and f"Values unlike the training timelines: {code} (" in text[0]
    assert "training typically 1.09" in text[0] and "another unit or scale" in text[0]  # read on the log scale
    suspects = evaluate_model(SHIPPED / "ehr_only", demo, band=False, n_boot=10)["timeline_codes"]["unit_suspects"]
    assert [s["code"] for s in suspects] == [code] and suspects[0]["median"] > 50
    logged = {"codes": ["LAB//bnp//pg/mL"], "value_mean": [np.log1p(200.0)], "value_std": [1.0], "log": ["LAB//bnp//pg/mL"]}
    assert value_warning(logged, ["LAB//bnp//pg/mL"] * 3, [900.0] * 3) is None  # 1.5 log units above: a sick patient
    assert "typically 200" in str(value_warning(logged, ["LAB//bnp//pg/mL"] * 3, [2.0e6] * 3))  # 9 log units
