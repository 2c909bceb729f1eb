"""Real timelines: a MIMIC-IV demo MEDS cohort (index = first hospital admission, outcome = death)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cohort import load_cohort
from core.meds_cohort import cohort_from_meds

SMALL = {"dim": 16, "batch_size": 16, "patience": 3, "max_events": 32}


@pytest.fixture(scope="session")
def mimic_cohort(real_meds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cohort_from_meds(real_meds, tmp_path_factory.mktemp("mimic") / "cohort")


@pytest.fixture(scope="session")
def mimic_model(mimic_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from core.train import train_model

    out = tmp_path_factory.mktemp("mimic_model") / "ehr_only"
    metrics = train_model(mimic_cohort, "ehr_only", out, ehr_encoder="sequence", epochs=4, device="cpu", overrides=SMALL)
    return out, metrics


@pytest.mark.slow
def test_mimic_cohort_definition(mimic_cohort: Path) -> None:
    c = load_cohort(mimic_cohort)
    t = c.table
    assert 80 <= len(t) <= 100 and 10 <= int(t["event"].sum()) <= 31
    assert (t["time"] >= 0).all() and t["index_time"].notna().all()
    sid = c.ids()[0]
    ev = c.events(sid)
    assert (ev["time"] <= c.index_time(sid)).all()
    assert c.timeline is not None and (c.timeline["time"] > c.timeline["subject_id"].map(t.set_index("subject_id")["index_time"])).any()


@pytest.mark.slow
def test_mimic_trains_with_sequence_encoder(mimic_model: tuple[Path, dict]) -> None:
    folder, metrics = mimic_model
    assert metrics["modalities"]["ehr"] == ["sequence"] and metrics["modalities"]["image"] == "none"
    assert 0.0 <= metrics["test"]["c_index"] <= 1.0


@pytest.mark.slow
def test_post_index_events_never_reach_the_model(mimic_cohort: Path, mimic_model: tuple[Path, dict], tmp_path: Path) -> None:
    from core.predict import predict_subject

    folder, _ = mimic_model
    c = load_cohort(mimic_cohort)
    subjects = [s for s in c.ids() if len(c.events(s)) > 0][:3]
    assert subjects
    before = [predict_subject(folder, mimic_cohort, s) for s in subjects]
    assert any(b["n_events_used"] > 0 for b in before) and all("ehr_events" in b["modalities_used"] for b in before)
    # same cohort with every post-index event deleted
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "cohort.csv").write_bytes((mimic_cohort / "cohort.csv").read_bytes())
    tl = pd.read_parquet(mimic_cohort / "timeline.parquet")
    idx = pd.to_datetime(c.table.set_index("subject_id")["index_time"])
    keep = pd.to_datetime(tl["time"]) <= tl["subject_id"].astype(str).map(idx)
    assert (~keep).sum() > 1000
    tl[keep].to_parquet(cut / "timeline.parquet", index=False)
    after = [predict_subject(folder, cut, s) for s in subjects]
    for b, a in zip(before, after):
        assert a["survival"] == b["survival"] and a["risk"] == b["risk"] and a["n_events_used"] == b["n_events_used"]
    # a death recorded at or before the index is an outcome, never an input: the prediction is unchanged
    day_before = idx[subjects[0]] - pd.Timedelta(days=1)
    death = pd.DataFrame({"subject_id": [subjects[0]], "time": [day_before], "code": ["MEDS_DEATH"], "numeric_value": [np.nan]})
    pd.concat([tl[keep], death]).to_parquet(cut / "timeline.parquet", index=False)
    with_death = predict_subject(folder, cut, subjects[0])
    assert with_death["survival"] == before[0]["survival"] and with_death["n_events_used"] == before[0]["n_events_used"]
    # and an extra ordinary event before the index does change the prediction (the test can fail)
    code = str(c.events(subjects[0])["code"].iloc[-1])
    extra = pd.DataFrame({"subject_id": [subjects[0]] * 5, "time": [day_before] * 5, "code": [code] * 5,
                          "numeric_value": [np.nan] * 5})
    pd.concat([tl[keep], extra]).to_parquet(cut / "timeline.parquet", index=False)
    changed = predict_subject(folder, cut, subjects[0])
    assert changed["survival"] != before[0]["survival"]
