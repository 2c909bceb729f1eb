"""Clinical values of an uploaded case (age, sex, last lab results): stored with the case, read as the curated
features of models trained with a features.csv. Before, an uploaded case could carry only a CT and a timeline, so
every such model read the training average for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.app import cases as saved
from core.cohort import UPLOAD_SUBJECT, load_cohort, uploaded_case_cohort
from core.errors import InputError

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "demo_models"


def _events() -> pd.DataFrame:
    return pd.DataFrame({"subject_id": "7", "time": pd.to_datetime(["2020-01-01", "2020-01-15"]),
                         "code": ["DX//A", "LAB//B"], "numeric_value": [float("nan"), 1.5]})


def test_values_are_kept_with_the_case_and_replaced(tmp_path: Path) -> None:
    info = saved.save_case("alice", events=_events(), index_time="2020-02-01", base=tmp_path,
                           features={"age": "61.5", "sex_female": 1, "last_bnp": None, "last_sodium": ""})
    assert info.modalities == ("timeline", "clinical values")
    assert saved.case_features(info) == {"age": 61.5, "sex_female": 1.0}  # blanks are not stored: read as missing
    assert oct((info.path / saved.FEATURES_FILE).stat().st_mode & 0o777) == "0o600"
    changed = saved.set_features("alice", info.case_id, {"age": 62, "last_creatinine": 2.1}, base=tmp_path)
    assert changed.version == info.version + 1  # the pages' memo of the case is keyed by its version
    assert saved.case_features(changed) == {"age": 62.0, "last_creatinine": 2.1}
    emptied = saved.set_features("alice", info.case_id, {"age": None}, base=tmp_path)
    assert emptied.features_path is None and emptied.modalities == ("timeline",)
    with pytest.raises(InputError, match="is not one of your saved cases"):  # another user's case is not found
        saved.set_features("bob", info.case_id, {"age": 50}, base=tmp_path)
    with pytest.raises(InputError, match=r"clinical value age: got sixty, is not a number; fix: enter a number"):
        saved.save_case("alice", events=_events(), base=tmp_path, features={"age": "sixty"})
    with pytest.raises(InputError, match="clinical value age: got inf, is not finite"):
        saved.set_features("alice", info.case_id, {"age": float("inf")}, base=tmp_path)
    with pytest.raises(InputError, match="clinical value name"):
        saved.check_case_features({"x" * 65: 1.0})
    assert [c.number for c in saved.list_cases("alice", base=tmp_path)] == [1]  # refused saves wrote nothing


def test_features_table_upload() -> None:
    from core.app.uploads import read_features_bytes

    # text columns (sex as F / M, a comment) are left out and named, not a reason to refuse the whole table
    mixed = read_features_bytes(b"subject_id,age,sex,comment\n7,61.5,F,called back\n8,70,M,\n", "f.csv")
    assert list(mixed.columns) == ["age"] and mixed.attrs["text_columns"] == ["sex", "comment"]
    # ... unless a model reads their categories: sex F / M / unknown as sex_female 1 / 0 / missing
    names = ["age", "sex_female", "smoker_yes", "smoker_no"]
    coded = read_features_bytes(b"subject_id;Sex;smoker;comment\n7;F;Yes;x\n8;m;no;\n9;U;;\n10;female;N;\n",
                                "f.csv", names=names)
    assert coded.attrs["categories"] == {"sex_female": "Sex", "smoker_yes": "smoker", "smoker_no": "smoker"}
    assert coded.attrs["text_columns"] == ["comment"]
    assert coded["sex_female"].tolist() == pytest.approx([1.0, 0.0, np.nan, 1.0], nan_ok=True)
    assert coded["smoker_yes"].tolist() == pytest.approx([1.0, 0.0, np.nan, 0.0], nan_ok=True)
    assert coded["smoker_no"].tolist() == pytest.approx([0.0, 1.0, np.nan, 1.0], nan_ok=True)
    from core.io.features import unreadable_note

    lab = read_features_bytes(b"subject_id,last_bnp\n7,<50\n8,310\n9,n.d.\n", "f.csv")
    assert lab["last_bnp"].tolist()[1] == 310.0 and unreadable_note(lab, "The features table") == (
        "The features table: 2 values are not numbers and are read as missing (last_bnp 2; e.g. '<50', 'n.d.'): write a "
        "value reported beyond a limit as a number (the limit), or leave the cell blank")
    numbered = read_features_bytes(b"subject_id,sex,sex_female\n7,F,0\n", "f.csv", names=names)  # its own column wins
    assert numbered.loc["7", "sex_female"] == 0.0 and numbered.attrs["text_columns"] == ["sex"]

    table = read_features_bytes(b"subject_id,age,sex_female,last_bnp\n7,61.5,1,\n8,70,0,310\n", "features.csv")
    assert table.loc["7"].to_dict() == pytest.approx({"age": 61.5, "sex_female": 1.0, "last_bnp": np.nan}, nan_ok=True)
    for data, name, message in [(b"", "f.csv", "is an empty file"), (b"id,age\n7,61\n", "f.csv", "no subject_id column"),
                                (b"subject_id,age\n7,61\n", "f.json", "is neither CSV, an .xlsx workbook nor parquet"),
                                (b"subject_id,age\n", "f.csv", "has no rows")]:
        with pytest.raises(InputError, match=message):
            read_features_bytes(data, name)


def test_shipped_model_reads_the_values_of_an_uploaded_case(tmp_path: Path) -> None:
    """The shipped ehr_only read every uploaded timeline as the training average of its 19 curated features. With the
    case's clinical values it reads them: its risk moves with them, as it does for the same subject in the demo
    cohort; values under other names (another model's columns) are not read at all, as if none were given."""
    from core.demo import write_demo_cohort
    from core.ehr_read import case_feature_read
    from core.registry import load_model

    cohort = load_cohort(write_demo_cohort(tmp_path / "demo", n=24, seed=3))
    model = load_model(SHIPPED / "ehr_only")
    names = model.config.ehr.curated_features
    assert len(names) == 19

    def case_risk(sid: str, features: dict[str, float] | None) -> tuple[float, list[str]]:
        case = uploaded_case_cohort(tmp_path, volume=None, events=cohort.events(sid), index_time=cohort.index_time(sid),
                                    features=features)
        p = model.predict_case(model.case_inputs(case, UPLOAD_SUBJECT))
        return p.risk_at[365], p.modalities_used

    ids = cohort.ids()[:12]
    cohort_risks = np.asarray([model.predict_case(model.case_inputs(cohort, s)).risk_at[365] for s in ids])
    with_values, without = [], []
    for sid in ids:
        row = cohort.features.loc[sid].dropna().to_dict()
        risk, used = case_risk(sid, row)
        with_values.append(risk)
        assert "ehr_features" in used
        bare, used = case_risk(sid, None)
        without.append(bare)
        assert "ehr_features" not in used
        assert case_risk(sid, {"another_models_column": 3.0}) == (bare, used)  # features_present 0, as without
    with_values, without = np.asarray(with_values), np.asarray(without)
    # the demo subject's own features.csv row, entered as clinical values, gives the cohort's prediction
    np.testing.assert_allclose(with_values, cohort_risks, atol=1e-5)
    # the timeline alone gives a risk of its own (features hidden in training: feature_dropout), the values more
    assert 0.01 < without.std() < with_values.std() and with_values.std() > 0.05, (without.std(), with_values.std())

    sid = ids[0]
    row = cohort.features.loc[sid].dropna().to_dict()
    partial = {k: row[k] for k in ("age", "sex_female")}
    assert case_feature_read(model, partial) == [
        "This case gives 2 of the model's 19 curated features; the other 17 (n_visits, n_admissions, n_dx_heart_failure, "
        "n_dx_copd, n_dx_ckd, ...) are read as the training average. With most of its values at the training "
        "average, this risk is close to that of an average training patient with the values given; its band and "
        "conformal bound come from patients who had every value and do not widen for the missing ones."]
    tabular = json.loads((SHIPPED / "ehr_only" / "config.json").read_text())["ehr"]["tabular"]
    typical = {c: float(np.expm1(m)) if c in tabular.get("log", []) else m for c, m in zip(tabular["columns"], tabular["mean"])}
    assert case_feature_read(model, {**typical, **row}) == []  # every column given, the subject's own where known
    # age in months (a typing slip or another unit): named with its training mean and SD
    slip = case_feature_read(model, {**row, "age": row["age"] * 12})
    assert slip[-1].startswith(f"Clinical values unlike the training values: age {row['age'] * 12:.4g} (training ")
    assert case_feature_read(model, {"another_models_column": 3.0}) == []  # the modality notice says it: none given
    # the warnings say "name the columns as the model card lists them": the card lists them, with their training values
    card = (SHIPPED / "ehr_only" / "MODEL_CARD.md").read_text()
    listed = card.split("## Curated features this model reads")[1].split("## ")[0]
    assert all(f"`{n}` " in listed for n in names) and "`age` 67 +- 9.87" in listed  # shipped cards were written before ±
    assert "## Curated features" not in (SHIPPED / "image_only" / "MODEL_CARD.md").read_text()


def test_features_csv_values_far_from_training(tmp_path: Path) -> None:
    """`predict --json` names a features.csv value far from training (creatinine in umol/L) for that subject only."""
    from core.demo import write_demo_cohort
    from core.predict import predict_subject

    root = write_demo_cohort(tmp_path / "demo", n=10, seed=3)
    features = pd.read_csv(root / "features.csv")
    first, second = pd.read_csv(root / "cohort.csv").query("split == 'test'")["subject_id"].astype(str).iloc[:2]
    features.loc[features["subject_id"].astype(str) == first, "last_creatinine"] = 97.0
    features.to_csv(root / "features.csv", index=False)
    # evaluate counts such values over the test split, per column
    from core.ehr_read import split_feature_reads_text
    from core.evaluation import evaluate_model

    summary = evaluate_model(SHIPPED / "ehr_only", root, band=False, n_boot=10)["features"]
    assert summary["far_values"] == {"last_creatinine": 1}
    assert split_feature_reads_text(summary) == ("last_creatinine: 1 subject with a value more than 5 training SDs and "
                                                 "a factor 3 from the training mean (another unit?)")
    warned = [w for w in predict_subject(SHIPPED / "ehr_only", root, first)["warnings"] if w.startswith("Clinical")]
    assert len(warned) == 1 and warned[0].startswith("Clinical values unlike the training values: last_creatinine 97 ")
    assert not [w for w in predict_subject(SHIPPED / "ehr_only", root, second)["warnings"] if w.startswith("Clinical")]
    # another site's spelling of a column is read as missing, and the warning names the column to rename
    features.rename(columns={"age": "Age", "last_sodium": "Last Sodium"}).to_csv(root / "features.csv", index=False)
    warned = [w for w in predict_subject(SHIPPED / "ehr_only", root, second)["warnings"] if w.startswith("features.csv")]
    assert warned == ["features.csv lacks 2 of the model's 19 feature columns (age, last_sodium): they are read as "
                      "missing for every subject (age from the subject's timeline). Name the columns as the model card "
                      "lists them (features.csv has Age for age, Last Sodium for last_sodium)."]


def test_age_and_sex_of_an_uploaded_timeline(tmp_path: Path, real_meds: Path) -> None:
    """An uploaded timeline gives a model's age and sex by MEDS convention (MEDS_BIRTH, GENDER//F): Upload fills them
    first. On demo subjects they equal the cohort's features.csv; on the real MIMIC-IV demo every patient gets both."""
    from core.demo import write_demo_cohort
    from core.io.features import timeline_demographics
    from core.io.timeline import read_timeline_bytes

    cohort = load_cohort(write_demo_cohort(tmp_path / "demo", n=24, seed=3, volumes=False))
    for sid in cohort.ids():
        given = timeline_demographics(cohort.timeline[cohort.timeline["subject_id"] == sid], cohort.index_time(sid),
                                      ["age", "sex_female", "last_bnp"])
        assert given == pytest.approx(cohort.features.loc[sid, ["age", "sex_female"]].to_dict(), abs=0.006)
    events = read_timeline_bytes(real_meds.read_bytes(), real_meds.name)
    sexes = []
    for sid, rows in list(events.groupby("subject_id"))[:10]:
        index = rows["time"].max()
        given = timeline_demographics(rows, index, ["age_years", "sex_male"])  # another model's names
        assert set(given) == {"age_years", "sex_male"} and 18 <= given["age_years"] <= 100, (sid, given)
        sexes.append(given["sex_male"])
    assert set(sexes) == {0.0, 1.0}
    assert timeline_demographics(events.iloc[:0], None, ["age"]) == {}
    # an index date before the birth (a de-identified study's shifted date beside MIMIC's 2100s) is no age: it was
    # -104 years, saved and read by the model
    rows = events[events["subject_id"] == events["subject_id"].iloc[0]]
    early = pd.Timestamp("2017-02-20 23:59:59")
    assert "age" not in timeline_demographics(rows, early, ["age", "sex_female"])
    from core.io.timeline import index_overlap_note

    note = index_overlap_note(rows, early)
    dated = int((rows["time"].notna() & (rows["code"] != "MEDS_DEATH")).sum())  # the outcome aside
    assert note is not None and note.startswith(f"None of the {dated} dated events lies at")
    assert index_overlap_note(rows, rows["time"].max()) is None


def test_a_cohort_without_features_gets_age_and_sex_from_its_timelines(tmp_path: Path) -> None:
    """A hospital cohort with MEDS timelines and no features.csv (or rows without age): MEDS_BIRTH and GENDER give
    the model's age and sex_female, as the Upload page fills them; the other columns stay missing. Before, all 19
    were the training average. On 400 new demo patients this took the shipped ehr_only from C 0.630 to 0.654 (the
    same as a features.csv holding age and sex only; docs/BENCHMARKS.md)."""
    import shutil

    from core.demo import write_demo_cohort
    from core.ehr_read import feature_read, split_feature_reads, split_feature_reads_text
    from core.inputs import ehr_arrays
    from core.predict import predict_cohort
    from core.registry import load_model

    src = write_demo_cohort(tmp_path / "demo", n=24, seed=3, volumes=False)
    only = tmp_path / "age_sex"
    shutil.copytree(src, only)
    features = pd.read_csv(src / "features.csv")
    features[["subject_id", "age", "sex_female"]].to_csv(only / "features.csv", index=False)
    none = tmp_path / "none"
    shutil.copytree(src, none)
    (none / "features.csv").unlink()
    model = load_model(SHIPPED / "ehr_only")
    with_two, without = load_cohort(only), load_cohort(none)
    ids = with_two.ids()
    given = ehr_arrays(with_two, ids, model.config.ehr)
    filled = ehr_arrays(without, ids, model.config.ehr)
    np.testing.assert_allclose(filled["features"], given["features"], atol=1e-4)  # ages to 0.01 y, the same sex
    assert filled["features_present"].all() and filled["feature_missing"].sum(axis=1).tolist() == [17.0] * len(ids)
    np.testing.assert_allclose(predict_cohort(model, without, ids)[1], predict_cohort(model, with_two, ids)[1],
                               atol=1e-4)
    sid = ids[0]
    assert feature_read(model, without, sid) == [
        "This cohort has no features.csv: age and sex_female are read from the subject's timeline (MEDS_BIRTH, GENDER); "
        "the model's other 17 curated features (n_visits, n_admissions, n_dx_heart_failure, ...) are read as the "
        "training average."]
    summary = split_feature_reads(model, without, ids)
    assert summary is not None and summary["from_timeline"] == len(ids) and summary["without_row"] == len(ids)
    assert f"(age or sex of {len(ids)} subjects read from the timeline)" in str(split_feature_reads_text(summary))
    blank = features.copy()
    blank.loc[0, "age"] = np.nan  # one blank age in a full features.csv: read from that subject's timeline
    blank.to_csv(only / "features.csv", index=False)
    one_blank = load_cohort(only)
    np.testing.assert_allclose(ehr_arrays(one_blank, ids, model.config.ehr)["features"],
                               ehr_arrays(load_cohort(src), ids, model.config.ehr)["features"], atol=1e-4)
    assert feature_read(model, one_blank, sid) == feature_read(model, load_cohort(src), sid)  # no warning for it


def test_a_changed_static_gender_row_is_another_cached_case(tmp_path: Path) -> None:
    """MIMIC writes GENDER without a time. Such a row gives the sex a model reads where features.csv has none, so a
    changed one must renew a cached prediction; the case digest hashed only the timed events before the index."""
    from core.demo import write_demo_cohort
    from core.predict import case_digest, predict_cohort
    from core.registry import load_model

    src = write_demo_cohort(tmp_path / "demo", n=10, seed=3, volumes=False)
    (src / "features.csv").unlink()
    timeline = pd.read_parquet(src / "timeline.parquet")
    gender = timeline["code"].str.startswith("GENDER//")
    timeline.loc[gender, "time"] = pd.NaT  # as MIMIC-IV's MEDS export writes it
    timeline.to_parquet(src / "timeline.parquet", index=False)
    cohort = load_cohort(src)
    sid = cohort.ids()[0]
    model = load_model(SHIPPED / "ehr_only")
    before, risk_before = case_digest(cohort, sid, None), predict_cohort(model, cohort, [sid])[1]
    row = gender & (timeline["subject_id"] == sid)
    timeline.loc[row, "code"] = timeline.loc[row, "code"].map({"GENDER//F": "GENDER//M", "GENDER//M": "GENDER//F"})
    timeline.to_parquet(src / "timeline.parquet", index=False)
    changed = load_cohort(src)
    assert changed.events(sid).equals(cohort.events(sid))  # the events a model reads as a sequence are the same
    assert not np.allclose(predict_cohort(model, changed, [sid])[1], risk_before, atol=1e-4)  # the sex it reads is not
    assert case_digest(changed, sid, None) != before


def test_linear_members_are_left_out_for_a_case_without_clinical_values(tmp_path: Path) -> None:
    """The shipped ehr_only is 5 networks and 5 linear models of the features. Without any clinical value a linear
    member gives the training mean's curve: averaged in, it halved the spread of the networks' risks (400 demo timelines
    without age or sex: 1-year risk SD 0.022 against 0.044, IBS 0.227 against 0.223). It is now left out for that case,
    and kept for a case with values."""
    import torch

    from core.demo import write_demo_cohort
    from core.registry import load_model

    model = load_model(SHIPPED / "ehr_only", device="cpu")
    net = model.net
    assert net.feature_only_members() == [False] * 5 + [True] * 5
    assert model.uncertainty == "range of an ensemble of 5 networks and 5 linear models"  # the band's label
    cohort = load_cohort(write_demo_cohort(tmp_path / "c", n=12, seed=4, volumes=False), for_training=False)
    sid = cohort.ids()[0]
    for features in (None, cohort.features.loc[sid].dropna().to_dict()):
        case = uploaded_case_cohort(tmp_path / str(features is None), volume=None, events=cohort.events(sid),
                                    index_time=cohort.index_time(sid), features=features)
        inputs = model.case_inputs(case, UPLOAD_SUBJECT)
        p = model.predict_case(inputs)
        with torch.inference_mode():
            batch = model.encoded_batch(inputs)
            members = torch.stack([m(batch)["survival"][0] for m in net.members]).float().numpy()
        kept = members[:5] if features is None else members
        np.testing.assert_allclose(p.survival, kept.mean(0), atol=1e-5)
        assert (p.lower <= kept.min(0) + 1e-5).all() and (p.upper >= kept.max(0) - 1e-5).all()


def test_a_cohort_with_neither_features_nor_timelines_says_the_ehr_side_reads_nothing(tmp_path: Path) -> None:
    """cohort.csv and studies only: the warning said the EHR side "reads the timeline alone" where there was none."""
    import shutil

    from core.demo import write_demo_cohort
    from core.ehr_read import feature_read
    from core.registry import load_model

    src = write_demo_cohort(tmp_path / "demo", n=12, seed=4, volumes=False)
    model = load_model(SHIPPED / "concat")
    (src / "features.csv").unlink()
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    (bare / "timeline.parquet").unlink()
    with_timeline, without = load_cohort(src), load_cohort(bare)
    sid = with_timeline.ids()[0]
    # the demo's timelines hold MEDS_BIRTH and GENDER: age and sex come from them
    assert feature_read(model, with_timeline, sid)[0].startswith("This cohort has no features.csv: age and sex_female are read")
    assert feature_read(model, without, sid) == [
        "This cohort has no features.csv: the model's 19 curated features (age, sex_female, n_visits, ...) are read as "
        "the training average, and this subject has no timeline either: its EHR side reads nothing of this patient."]
