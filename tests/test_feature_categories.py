"""features.csv categories written as text (sex F / M, stage I / II / III): read as 1 / 0 columns in training, and
from the text again when a cohort to score holds only some of the values (core.io.features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cohort import load_cohort
from core.errors import InputError
from core.io.features import MAX_LEVELS, read_features_frame


def test_text_categories_become_indicator_columns() -> None:
    frame = pd.DataFrame({"subject_id": [1, 2, 3, 4], "age": [61.5, 70, 55, None],
                          "Sex": ["F", "male", None, "W"], "stage": ["I", "II", "III", "II"]})
    table, text = read_features_frame(frame)
    assert list(table.columns) == ["age", "Sex_female", "Sex_male", "stage_i", "stage_ii", "stage_iii"]
    assert table["Sex_female"].tolist() == pytest.approx([1.0, 0.0, np.nan, 1.0], nan_ok=True)  # W(eiblich) is F
    assert table.loc["2"].tolist()[1:] == [0.0, 1.0, 0.0, 1.0, 0.0] and text is not None and list(text.columns) == ["Sex", "stage"]
    assert read_features_frame(frame.drop(columns=["Sex", "stage"]))[1] is None  # numbers only: as before

    comments = frame.assign(comment=[f"note {i}" for i in range(4)])
    many = pd.concat([comments] * 7, ignore_index=True).assign(subject_id=range(28), comment=[f"n{i}" for i in range(28)])
    with pytest.raises(InputError, match=f"has 28 distinct text values, not a category \\(at most {MAX_LEVELS}\\)"):
        read_features_frame(many)
    with pytest.raises(InputError, match="got Sex_female, is both a column and a text column's category"):
        read_features_frame(frame.assign(Sex_female=1.0))


def test_a_level_that_repeats_its_column_name_is_the_same_level() -> None:
    """"Stage II" and "II" in a stage column were two values (stage_stageii beside stage_ii); the column's own name in
    front of a level is now cut, and a model from before still reads its stage_stageii."""
    from core.io.features import category_indicators

    frame = pd.DataFrame({"subject_id": [1, 2, 3, 4], "stage": ["Stage II", "II", "stage iii", "Stage  I"],
                          "Grade": ["grade 1", "Grade 2", "GRADE 2", None]})
    table, text = read_features_frame(frame)
    assert list(table.columns) == ["stage_i", "stage_ii", "stage_iii", "Grade_1", "Grade_2"]
    assert table["stage_ii"].tolist() == [1.0, 1.0, 0.0, 0.0] and table["Grade_2"].tolist()[:3] == [0.0, 1.0, 1.0]
    one = pd.DataFrame({"stage": ["Stage II"]})  # one patient: the model's other levels read 0
    found, _ = category_indicators(one, ["stage"], ["stage_i", "stage_ii", "stage_iii"])
    assert found.iloc[0].tolist() == [0.0, 1.0, 0.0]
    old, _ = category_indicators(one, ["stage"], ["stage_stagei", "stage_stageii"])  # named as written before
    assert old.iloc[0].tolist() == [0.0, 1.0]


def _cohort(folder: Path, n: int = 500, seed: int = 5) -> tuple[Path, float]:
    """Hazard from sex and stage (text in features.csv) and age; returns the folder and the true risk's test C."""
    from core.evaluate import harrell_c

    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    stage = rng.choice(["I", "II", "III"], n)
    age = rng.normal(65.0, 10.0, n)
    lp = -0.8 * (sex == "F") + pd.Series(stage).map({"I": 0.0, "II": 0.8, "III": 1.6}).to_numpy() + 0.03 * (age - 65)
    t_event, t_cens = rng.exponential(1000.0 / np.exp(lp)), rng.uniform(200.0, 3000.0, n)
    ids = [f"s{i:04d}" for i in range(n)]
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 5) + ["test"] * (n - n // 2 - n // 5))
    folder.mkdir(parents=True)
    time, event = np.round(np.minimum(t_event, t_cens), 1), (t_event <= t_cens).astype(int)
    pd.DataFrame({"subject_id": ids, "time": time, "event": event, "split": split}).to_csv(folder / "cohort.csv", index=False)
    ages = np.round(age, 1).astype(object)
    ages[:2] = ["n.d.", "<18"]  # as a lab system writes a value it did not measure, or one beyond a limit
    pd.DataFrame({"subject_id": ids, "age": ages, "sex": sex, "stage": stage}).to_csv(folder / "features.csv", index=False)
    test = split == "test"
    return folder, float(harrell_c(time[test], event[test].astype(bool), lp[test]))


def test_a_model_trained_on_text_categories_scores_one_patient(tmp_path: Path) -> None:
    """Before, features.csv with a text column was refused ("non-numeric column(s)"). Trained on sex F / M and stage
    I / II / III as text, ehr_only reads them (test C near the true risk's) and a one-patient cohort to score (sex F,
    stage I: the file holds no other value) gets the same risk as with every 1 / 0 column written out."""
    from core.ehr_read import feature_read
    from core.predict import predict_cohort
    from core.registry import load_model
    from core.train import train_model

    folder, oracle = _cohort(tmp_path / "cohort")
    metrics = train_model(folder, "ehr_only", tmp_path / "model", epochs=10, device="cpu", ensemble=1,
                          overrides={"dim": 16})
    columns = json.loads((tmp_path / "model" / "config.json").read_text())["ehr"]["tabular"]["columns"]
    assert columns == ["age", "sex_female", "sex_male", "stage_i", "stage_ii", "stage_iii"]
    assert metrics["test"]["c_index"] > oracle - 0.03, (metrics["test"]["c_index"], oracle)
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert metrics["data_notes"] == [
        "features.csv: text categories read as 1 / 0 columns: sex (sex_female, sex_male); stage (stage_i, stage_ii, "
        "stage_iii)", "features.csv: 2 values are not numbers and are read as missing (age 2; e.g. 'n.d.', '<18'): "
        "write a value reported beyond a limit as a number (the limit), or leave the cell blank"]
    assert all(f"- {note}." in card for note in metrics["data_notes"])

    trained = load_cohort(folder)  # the text is still there to group subjects by (evaluate --subgroup sex)
    assert trained.column_names()[:3] == ["sex", "stage", "age"]
    assert trained.column_values("sex", ["s0000", "s0001"]) == pd.read_csv(folder / "features.csv")["sex"][:2].tolist()

    model = load_model(tmp_path / "model")
    from core.ehr_read import split_feature_reads, split_feature_reads_text

    reads = split_feature_reads(model, trained, trained.ids("train"))  # evaluate's count, per split
    assert reads["unreadable"] == {"age": 2} and reads["absent"] == [] and not reads["without_row"]
    assert split_feature_reads_text(reads) == "2 values are no number (age 2): read as missing"
    assert split_feature_reads(model, trained, trained.ids("test"))["unreadable"] == {}
    risks = {}
    for name, features in [("text", "subject_id,age,sex,stage\nX,70,F,I\n"),
                           ("words", "subject_id;age;sex;stage\nX;70;female;i\n"),
                           ("numbers", "subject_id,age,sex_female,sex_male,stage_i,stage_ii,stage_iii\nX,70,1,0,1,0,0\n")]:
        one = tmp_path / name
        one.mkdir()
        (one / "cohort.csv").write_text("subject_id\nX\n")
        (one / "features.csv").write_text(features)
        cohort = load_cohort(one, for_training=False)
        assert feature_read(model, cohort, "X") == []  # every column of the model is there
        times, surv = predict_cohort(model, cohort, ["X"])
        risks[name] = 1.0 - surv[0, np.searchsorted(times, 365.0)]  # 1-year risk
    assert risks["text"] == pytest.approx(risks["numbers"], abs=1e-6) == pytest.approx(risks["words"], abs=1e-6)
    # stage_ii and stage_iii read as missing instead (a file that holds only some of the 1 / 0 columns): another risk
    one = tmp_path / "partial"
    one.mkdir()
    (one / "cohort.csv").write_text("subject_id\nX\n")
    (one / "features.csv").write_text("subject_id,age,sex,stage\nX,>89,F,I\n")  # an age written as a limit
    assert feature_read(model, load_cohort(one, for_training=False), "X") == [
        "features.csv's row for subject X has no number in age ('>89'): read as missing (the training mean). Write a "
        "value reported beyond a limit as a number (the limit)."]
    (one / "features.csv").write_text("subject_id,age,sex_female,stage_i\nX,70,1,1\n")
    partial = 1.0 - predict_cohort(model, load_cohort(one, for_training=False), ["X"])[1][0, np.searchsorted(times, 365.0)]
    assert abs(partial - risks["text"]) > 0.02, (partial, risks)
