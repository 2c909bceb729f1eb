"""Cohort loading: one validation function, one-line errors naming field, value and fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cohort import auto_split, load_cohort, validate_outcomes
from core.errors import InputError


def _write(tmp: Path, table: dict, features: dict | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(tmp / "cohort.csv", index=False)
    if features is not None:
        pd.DataFrame(features).to_csv(tmp / "features.csv", index=False)
    return tmp


GOOD = {"subject_id": [1, 2, 3, 4, 5], "time": [10.0, 20, 30, 40, 50], "event": [1, 0, 1, 0, 1]}


@pytest.mark.parametrize("bad, field, fix", [
    ({"time": [10.0, -1, 30, 40, 50]}, "time: got -1.0 (subject '2')", "correct or drop negative"),
    ({"time": [10.0, np.nan, 30, 40, 50]}, "time: got nan (subject '2')", "correct or drop negative"),
    ({"time": [10.0, np.inf, 30, 40, 50]}, "time: got inf (subject '2')", "correct or drop negative"),
    ({"event": [1, 2, 0, 0, 1]}, "event: got 2 (subject '2')", "recode the event column"),
    ({"event": [0, 0, 0, 0, 0]}, "event: got all 0", "check the event coding"),
    ({"subject_id": [1, 1, 3, 4, 5]}, "subject_id: got '1'", "keep one row per subject"),
    ({"split": ["train", "dev", "test", "val", "train"]}, "split: got 'dev'", "use train, val or test"),
])
def test_bad_outcomes_name_field_and_fix(bad: dict, field: str, fix: str) -> None:
    with pytest.raises(InputError) as err:
        validate_outcomes(pd.DataFrame({**GOOD, **bad}))
    msg = str(err.value)
    assert msg.startswith(field), msg
    assert fix in msg and "\n" not in msg


def test_missing_columns(tmp_path: Path) -> None:
    _write(tmp_path, {"subject_id": [1], "days": [3]})
    with pytest.raises(InputError, match=r"^columns: got time, event, required column\(s\) missing"):
        load_cohort(tmp_path)


def test_no_cohort_csv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has no cohort.csv; fix: add cohort.csv"):
        load_cohort(tmp_path)


def test_features_ids_must_match(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, {"subject_id": [1, 2, 99, 98], "age": [50, 60, 70, 80]})
    with pytest.raises(InputError) as err:
        load_cohort(tmp_path)
    assert str(err.value).startswith("features.csv subject_id: got '99', '98', 2 id(s) not in cohort.csv")


def test_auto_split_deterministic_and_stratified() -> None:
    ids = [str(i) for i in range(100)]
    event = np.array([i % 2 for i in range(100)])
    a, b = auto_split(ids, event, seed=3), auto_split(ids, event, seed=3)
    assert a == b and a != auto_split(ids, event, seed=4)
    assert a.count("train") == 60 and a.count("val") == 20 and a.count("test") == 20
    assert sum(e for e, s in zip(event, a) if s == "test") == 10


def test_load_cohort_with_features_and_embeddings(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, {"subject_id": [1, 2, 3], "age": [50, None, 70]})
    np.save(tmp_path / "image_embeddings.npy", np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4))
    c = load_cohort(tmp_path)
    assert c.ids() == ["1", "2", "3", "4", "5"]
    assert c.features is not None and np.isnan(c.features.loc["2", "age"])
    assert c.image_embeddings is not None and c.image_embeddings.shape == (5, 12)
    assert c.image_embeddings.attrs["token_shape"] == (3, 4)
    assert set(c.table["split"]) <= {"train", "val", "test"}
    assert c.load_volume("1") is None and len(c.events("1")) == 0
    with pytest.raises(InputError, match="^subject: got nobody, not in cohort.csv"):
        c.row("nobody")


def test_one_subject_of_a_cohort_is_loaded_with_its_rows_only(tmp_path: Path) -> None:
    """``load_cohort(subjects=[...])``, how Case review opens one patient of a user's cohort: the whole cohort.csv is
    validated (its splits as in the full load), but only that subject's rows are kept, of every table, and only its
    timeline events are read."""
    _write(tmp_path, GOOD, {"subject_id": [1, 2, 3], "age": [50, None, 70]})
    np.save(tmp_path / "image_embeddings.npy", np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4))
    pd.DataFrame({"subject_id": ["1", "3", "3"], "time": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]),
                  "code": ["A", "B", "C"], "numeric_value": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "timeline.parquet")
    full = load_cohort(tmp_path, for_training=False)
    one = load_cohort(tmp_path, for_training=False, subjects=["3", "nobody"])
    assert one.ids() == ["3"] and one.row("3")["split"] == full.row("3")["split"]
    assert one.timeline is not None and one.timeline["code"].tolist() == ["B", "C"]
    assert one.events("3").equals(full.events("3"))
    assert one.features is not None and one.features.index.tolist() == ["3"] and one.features.loc["3", "age"] == 70
    assert one.image_embeddings is not None and one.image_embeddings.index.tolist() == ["3"]
    assert one.image_embeddings.attrs["token_shape"] == (3, 4)
    with pytest.raises(InputError, match="^subject: got 1, not in cohort.csv"):
        one.row("1")


def test_events_stop_at_index_time(tmp_path: Path) -> None:
    _write(tmp_path, {**GOOD, "index_time": ["2020-01-10"] * 5})
    pd.DataFrame({"subject_id": ["1", "1", "1"], "time": pd.to_datetime(["2020-01-01", "2020-01-10", "2020-02-01"]),
                  "code": ["A", "B", "C"], "numeric_value": [1.0, np.nan, 3.0]}).to_parquet(tmp_path / "timeline.parquet")
    c = load_cohort(tmp_path)
    assert c.events("1")["code"].tolist() == ["A", "B"]


def test_scoring_cohort_needs_no_outcomes_events_or_train_split(tmp_path: Path) -> None:
    """Patients to score (predict, explain, export) have no outcomes yet: ids and studies are enough."""
    bare = validate_outcomes(pd.DataFrame({"subject_id": ["a", "b"], "study": ["a.nii.gz", "b.nii.gz"]}), for_training=False)
    assert bare["subject_id"].tolist() == ["a", "b"]
    assert bare["time"].isna().all() and bare["event"].tolist() == [0, 0] and set(bare["split"]) == {"test"}
    censored = validate_outcomes(pd.DataFrame({"subject_id": [1, 2], "time": [5.0, 9.0], "event": [0, 0], "split": ["test", "test"]}),
                                 for_training=False)
    assert censored["time"].tolist() == [5.0, 9.0]
    # values that are given are still checked
    with pytest.raises(InputError, match="time: got -3"):
        validate_outcomes(pd.DataFrame({"subject_id": [1], "time": [-3.0], "event": [0]}), for_training=False)
    # training keeps every rule
    with pytest.raises(InputError, match="columns: got time, event"):
        validate_outcomes(pd.DataFrame({"subject_id": ["a"], "study": ["a.nii.gz"]}))
    root = _write(tmp_path / "c", {"subject_id": ["a", "b"]})
    assert load_cohort(root, for_training=False).table["split"].tolist() == ["test", "test"]
    with pytest.raises(InputError, match="columns"):
        load_cohort(root)


def test_predict_scores_a_real_ct_cohort_without_ehr_or_outcomes(tmp_path: Path, real_ct: Path) -> None:
    """The issue's case: cohort.csv with subject_id and study only, no EHR files, a shipped fusion model.

    It used to stop with an internal AssertionError (fusion models) or demand outcomes and a train split.
    """
    import json
    import shutil
    import subprocess
    import sys

    from tests.dicom_factory import phantom_hu, write_series

    root = tmp_path / "new_patients"
    root.mkdir()
    shutil.copy(real_ct, root / "ct.nii.gz")
    write_series(root / "dicom", phantom_hu((12, 64, 64), seed=4), identified=False)
    pd.DataFrame({"subject_id": ["N1", "D1"], "study": ["ct.nii.gz", "dicom"]}).to_csv(root / "cohort.csv", index=False)
    model = Path(__file__).resolve().parents[1] / "assets" / "demo_models" / "coattention_image"
    for subject in ("N1", "D1"):
        # neither study shows the demo's chest anatomy: read anyway (withholding: tests/test_study_profile.py)
        run = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(model), "--cohort", str(root),
                              "--subject", subject, "--json", "--allow-ood"], capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        surv = np.asarray(out["survival"])
        assert surv[0] == 1.0 and np.all(np.diff(surv) <= 1e-9) and 0.0 < out["risk"] < 1.0
        assert out["n_events_used"] == 0 and out["modalities_used"] == ["image"]
        if subject == "N1":  # the abdominal CT is unlike the lung phantoms the demo model was trained on
            assert any("Out of distribution" in w for w in out["warnings"]), out["warnings"]


def test_outcomes_written_as_dates_and_words(tmp_path: Path) -> None:
    """A registry export gives the index date and the date of death or last follow-up, and the event as a word: time
    is end_time - index_time in days (one day / month order for both columns), dead / yes read as 1, alive / no as 0.
    Before, such a cohort.csv was refused ("required column(s) missing: time")."""
    root = _write(tmp_path / "c", {"subject_id": [1, 2, 3, 4, 5],
                                   "index_time": ["01.02.2020", "05.02.2020", "01.02.2020", "01.03.2020", "02.01.2020"],
                                   "end_time": ["13.02.2020", "01.02.2021", "03.02.2020 12:00", "01.09.2020", "02.03.2020"],
                                   "event": ["dead", "alive", "Yes", "n", 1],
                                   "split": ["train", "train", "val", "test", "test"]})
    cohort = load_cohort(root)
    assert cohort.table["time"].tolist() == [12.0, 362.0, 2.5, 184.0, 60.0]
    assert cohort.table["event"].tolist() == [1, 0, 1, 0, 1]
    assert cohort.index_time("2") == pd.Timestamp("2020-02-05")  # 05.02 is February 5: 13.02 in end_time tells
    with pytest.raises(InputError, match=r"time: got -1.0 \(subject '1'\).*\(time is end_time - index_time here\)"):
        validate_outcomes(pd.DataFrame({"subject_id": [1], "index_time": ["01.02.2020"], "end_time": ["31.01.2020"],
                                        "event": [1]}))
    with pytest.raises(InputError, match=r"event: got 'maybe' .*\(yes / no and dead / alive are read too\)"):
        validate_outcomes(pd.DataFrame({"subject_id": [1], "time": [3.0], "event": ["maybe"]}))
    # time given as well: used when it agrees with the dates (within a day), refused when not (it was used silently)
    dated = cohort.table.assign(index_time=["01.02.2020", "05.02.2020", "01.02.2020", "01.03.2020", "02.01.2020"],
                                end_time=["13.02.2020", "01.02.2021", "03.02.2020 12:00", "01.09.2020", "02.03.2020"])
    assert validate_outcomes(dated.assign(time=[12, 362, 3, 184, 60]))["time"].tolist() == [12, 362, 3, 184, 60]
    with pytest.raises(InputError, match=re.escape("time: got 11.9 (subject '2'), disagrees with end_time - index_time, "
                                                   "362.0 days (2 of 5 subjects more than a day apart)")):
        validate_outcomes(dated.assign(time=[12.0, 11.9, 2.5, 6.0, 60.0]))  # months in two rows


def test_ids_with_leading_zeros_match_across_files(tmp_path: Path) -> None:
    """Pseudonyms such as 007 are text: cohort.csv and features.csv read them as numbers (7) while the timeline kept
    007, so every subject silently had no events. Now all three keep 007."""
    from core.app.uploads import read_features_bytes

    root = tmp_path / "c"
    root.mkdir()
    (root / "cohort.csv").write_text("subject_id,time,event,split,index_time\n007,10,1,train,2020-01-05\n"
                                     "0008,20,0,train,2020-01-05\n")
    (root / "features.csv").write_text("Patient ID,age\n007,61\n0008,70\n")  # another name for the id: still text
    (root / "timeline.csv").write_text("subject_id,time,code,numeric_value\n007,2020-01-01,LAB//X,1.5\n"
                                       "0008,2020-01-02,LAB//X,2\n0008,2020-01-03,LAB//Y,\n")
    cohort = load_cohort(root)
    assert cohort.ids() == ["007", "0008"] and cohort.features.index.tolist() == ["007", "0008"]
    assert [len(cohort.events(s)) for s in cohort.ids()] == [1, 2]
    assert read_features_bytes(b"subject_id,age\n007,61\n", "f.csv").index.tolist() == ["007"]
    assert read_features_bytes(b"PATIENT_ID;age\n007;61,5\n", "f.csv").loc["007", "age"] == 61.5


def test_coverage_notes_name_the_subjects_a_modality_leaves_out(tmp_path: Path) -> None:
    """Subjects without a readable timeline, a features row or a study were read as missing without a word; train
    now names them (core.cohort_notes), apart from events that have no index time and ids the timeline spells
    otherwise."""
    from core.cohort_notes import coverage_notes

    root = tmp_path / "c"
    root.mkdir()
    (root / "cohort.csv").write_text("subject_id,time,event,split,index_time,study\n"
                                     "a,10,1,train,2020-01-05,\nb,20,0,train,2020-01-05,\nc,30,1,test,,\n"
                                     "d,40,1,test,2020-01-05,\ne,50,0,test,2020-01-05,\n")
    (root / "features.csv").write_text("subject_id,age\na,61\nb,70\nc,55\n")
    (root / "timeline.csv").write_text("subject_id,time,code\na,2020-01-01,LAB//X\nb,2020-01-09,LAB//X\n"
                                       "b,2020-01-02,MEDS_DEATH\nc,2020-01-01,LAB//X\ne,2020-01-05 09:30,LAB//X\n")
    cohort = load_cohort(root)
    assert coverage_notes(cohort) == []  # the model reads none of them
    assert coverage_notes(cohort, timeline=True, features=True, studies=True) == [
        "cohort.csv: 1 of 5 subjects has timeline events but no index_time (c): none of their events is read (an "
        "event after the scan must not be)",
        "cohort.csv: index_time is a date (00:00) and 1 of 5 subjects has events later on that day (e): they are not "
        "read; write the scan's time of day to read them",
        "timeline: 3 of 5 subjects have no event at or before the index time (b, d, e): the model reads no timeline "
        "for them; 1 of them has no row at all in the timeline (are its subject ids written as cohort.csv's?)",
        "features.csv: no row for 2 of 5 subjects (d, e): their curated features are read as missing (the training "
        "mean), age and sex from their timeline where it has them"]
    assert [s for s in cohort.ids() if not cohort.events(s).empty] == ["a"]  # what the model reads, as the notes say


def test_evaluate_and_predict_say_what_the_cohort_leaves_out(tmp_path: Path) -> None:
    """A site's cohort without a split column and with its timeline's ids written otherwise (integers, where
    cohort.csv has 0002): evaluate names the drawn test split and the unmatched ids, predict the subject's. Before,
    the EHR was read as empty and the output said nothing."""
    from core.demo import write_demo_cohort
    from core.evaluation import evaluate_model
    from core.predict import predict_subject
    from tests.conftest import ROOT

    root = write_demo_cohort(tmp_path / "demo", n=30, seed=4, volumes=False)
    table = pd.read_csv(root / "cohort.csv", dtype={"subject_id": str})
    table.drop(columns=["split", "study"]).to_csv(root / "cohort.csv", index=False)
    model = ROOT / "assets" / "demo_models" / "ehr_only"
    res = evaluate_model(model, root, n_boot=10)
    assert res["n"] == 6 and res["notes"] == [
        "4 events in the 6 subjects evaluated: the C-index rests on a few comparable pairs and says little (its "
        "interval shows how little)",
        "cohort.csv has no split column: these are the 6 subjects of the automatic 60/20/20 split's test part (the "
        "ones train held out of such a cohort); to validate on every subject of another site's cohort, pass --split all"]
    assert evaluate_model(model, root, split="all", n_boot=10)["notes"] == []
    sid = table["subject_id"].iloc[0]
    assert predict_subject(model, root, sid)["warnings"] == []
    timeline = pd.read_parquet(root / "timeline.parquet")
    timeline.assign(subject_id="x" + timeline["subject_id"].astype(str)).to_parquet(root / "timeline.parquet")
    notes = evaluate_model(model, root, split="all", n_boot=10)["notes"]
    assert len(notes) == 1 and notes[0].startswith("timeline: 30 of 30 subjects have no event at or before the index")
    assert notes[0].endswith("30 of them have no row at all in the timeline (are its subject ids written as cohort.csv's?)")
    warned = predict_subject(model, root, sid)["warnings"]
    assert any("no row at all in the timeline" in w for w in warned), warned


def test_columns_as_other_sites_name_them(tmp_path: Path) -> None:
    """cohort.csv as an R survival table writes it (futime, status) with "Patient ID" and "Index Date", and a features
    table keyed by PATIENT_ID: read under the project's names. Before: "required column(s) missing"."""
    root = _write(tmp_path / "c", {"Patient ID": ["p1", "p2", "p3"], "futime": [10.0, 20.0, 30.0],
                                   "Status": [1, 0, 1], "Index Date": ["2020-01-02", "2020-01-03", "2020-01-04"],
                                   "Split": ["train", "val", "test"]},
                  {"PATIENT_ID": ["p1", "p2", "p3"], "age": [61.0, 70.0, 55.0]})
    cohort = load_cohort(root)
    assert cohort.ids() == ["p1", "p2", "p3"] and cohort.table["time"].tolist() == [10.0, 20.0, 30.0]
    assert cohort.table["event"].tolist() == [1, 0, 1] and cohort.index_time("p2") == pd.Timestamp("2020-01-03")
    assert cohort.table["split"].tolist() == ["train", "val", "test"] and cohort.features.loc["p3", "age"] == 55.0
    # R's status coded 1 = censored, 2 = dead is refused by the outcome check, not misread
    with pytest.raises(InputError, match="event: got 2 .*must be 1 \\(event\\) or 0 \\(censored\\)"):
        validate_outcomes(pd.DataFrame({"id": [1, 2], "subject": [1, 2], "futime": [5, 6], "status": [1, 2]}))
    with pytest.raises(InputError, match="cohort.csv columns: got Subject, SUBJECT, all read as subject_id"):
        validate_outcomes(pd.DataFrame({"Subject": [1], "SUBJECT": [1], "time": [5], "event": [1]}))


def test_a_missing_study_file_names_its_subject(tmp_path: Path) -> None:
    (tmp_path / "cohort.csv").write_text("subject_id,time,event,split,study\ns1,10,1,train,studies/a.nii.gz\n"
                                         "s2,20,0,test,studies/nope.nii.gz\n")
    with pytest.raises(InputError, match=r"^study \(subject s2\): got studies/nope.nii.gz, file not found; fix: fix"):
        load_cohort(tmp_path).load_volume("s2")


def test_registry_end_dates_split_over_death_date_and_last_follow_up() -> None:
    """Registries write a death_date for the dead and a last_follow_up for the living: death_date alone was taken as
    end_time and every living subject failed with "time: got nan"."""
    table = pd.DataFrame({"subject_id": ["a", "b", "c"], "index_date": ["2020-01-01 08:00"] * 3,
                          "death_date": ["2020-01-11 08:00", "", None], "last_follow_up": ["2020-02-01", "2020-01-21 08:00", "2020-03-01 08:00"],
                          "event": [1, 0, 0], "split": ["train", "val", "test"]})
    out = validate_outcomes(table)
    assert out["time"].tolist() == [10.0, 20.0, 60.0]
    derived = validate_outcomes(table.drop(columns=["event"]))  # no event column: a death date given is the event
    assert derived["event"].tolist() == [1, 0, 0] and derived["time"].tolist() == [10.0, 20.0, 60.0]
    table.loc[1, "last_follow_up"] = None
    with pytest.raises(InputError, match=r"subject 'b'.*and end_time is blank: give every subject the scan's date and the event's"):
        validate_outcomes(table)


def test_a_blank_split_cell_names_its_subject() -> None:
    table = pd.DataFrame({"subject_id": ["a", "b", "c"], "time": [1.0, 2.0, 3.0], "event": [1, 0, 1], "split": ["train", None, "test"]})
    with pytest.raises(InputError, match=r"split: got '' \(blank for subject 'b'\), unknown split value"):
        validate_outcomes(table)
