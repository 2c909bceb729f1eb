"""Cohorts from MEDS + ACES task definitions (core.meds_cohort, ``python -m core cohort``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.meds_cohort import assign_splits, build_meds_cohort
from tests.conftest import ROOT

TASK = ROOT / "assets" / "tasks" / "mimic_death_after_admission.yaml"


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _by_hand(events: pd.DataFrame) -> pd.DataFrame:
    """Death after the first hospital admission, with pandas only (the task file's definition)."""
    timed = events.dropna(subset=["time"])
    admission = timed[timed["code"].str.startswith("HOSPITAL_ADMISSION//")].groupby("subject_id")["time"].min()
    death = timed[timed["code"] == "MEDS_DEATH"].groupby("subject_id")["time"].min().reindex(admission.index)
    last = timed.groupby("subject_id")["time"].max().reindex(admission.index)
    alive = ~(death < admission)  # no death before the index (NaT compares False)
    event = (death > admission).fillna(False)
    stop = death.where(event, last)
    table = pd.DataFrame({
        "subject_id": admission.index.astype(str),
        "time": ((stop - admission) / pd.Timedelta(days=1)).to_numpy(),
        "event": event.astype(int).to_numpy(),
        "index_time": admission.dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy(),
    })[alive.to_numpy()]
    return table.sort_values("subject_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def mimic_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    from tests.conftest import REAL_MEDS

    if not REAL_MEDS.exists():
        pytest.skip(f"real MEDS file not found at {REAL_MEDS} (../shared/data is absent outside CI)")
    out = tmp_path_factory.mktemp("mimic") / "cohort"
    proc = _cli("cohort", "--meds", str(REAL_MEDS), "--task", str(TASK), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads(proc.stdout)  # exactly one JSON object on stdout


def test_mimic_task_equals_the_cohort_built_by_hand(mimic_cohort: tuple[Path, dict[str, object]],
                                                    real_meds: Path) -> None:
    out, summary = mimic_cohort
    cohort = pd.read_csv(out / "cohort.csv", dtype={"subject_id": str})
    assert list(cohort.columns) == ["subject_id", "time", "event", "split", "index_time"]
    raw = pd.read_parquet(real_meds)
    expected = _by_hand(raw)
    got = cohort.sort_values("subject_id").reset_index(drop=True)
    assert got["subject_id"].tolist() == expected["subject_id"].tolist()
    assert got["event"].tolist() == expected["event"].tolist()
    assert got["index_time"].tolist() == expected["index_time"].tolist()
    np.testing.assert_allclose(got["time"], expected["time"], atol=1e-5)
    # the numbers of the MIMIC-IV demo (README of ../shared/data: 100 subjects, 31 deaths)
    assert len(got) == 100 and int(got["event"].sum()) == 31 == summary["events"]
    assert (got["time"] > 0).all()
    assert summary["splits"] == {"train": 60, "val": 20, "test": 20}
    assert got["split"].value_counts().to_dict() == {"train": 60, "val": 20, "test": 20}
    # timeline: the MEDS rows of the cohort's subjects, `value` mapped to numeric_value
    timeline = pd.read_parquet(out / "timeline.parquet")
    assert list(timeline.columns) == ["subject_id", "time", "code", "numeric_value"]
    assert len(timeline) == len(raw[raw["subject_id"].astype(str).isin(set(got["subject_id"]))])
    assert int(timeline["numeric_value"].notna().sum()) == int(raw["value"].notna().sum())
    assert (out / "task.yaml").read_text() == TASK.read_text()


def test_training_on_the_mimic_cohort_end_to_end(mimic_cohort: tuple[Path, dict[str, object]],
                                                 tmp_path: Path) -> None:
    out, _ = mimic_cohort
    model = tmp_path / "model"
    proc = _cli("train", "--cohort", str(out), "--fusion", "ehr_only", "--out", str(model), "--epochs", "2",
                "--ensemble", "1", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout)
    assert metrics["fusion"] == "ehr_only" and 0.0 <= metrics["c_index"] <= 1.0
    assert (model / "model.safetensors").stat().st_size > 0 and (model / "config.json").exists()


def _write_synthetic(path: Path) -> None:
    """Six subjects with known answers; MEDS aliases `timestamp` and `value`, integer ids, a static row."""
    rows = [
        # s1: admitted 2020-01-01 10:00, dies 2020-01-11 10:00 -> event after 10 days
        (1, None, "GENDER//F", None), (1, "2020-01-01 08:00", "LAB//hb//g/dL", 12.5),
        (1, "2020-01-01 10:00", "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None),
        (1, "2020-01-05 10:00", "HOSPITAL_DISCHARGE//HOME", None), (1, "2020-01-11 10:00", "MEDS_DEATH", None),
        # s2: two admissions: the first is the index; censored at its last event (30 days after the first)
        (2, "2021-03-01 00:00", "HOSPITAL_ADMISSION//URGENT//TRANSFER", None),
        (2, "2021-03-11 00:00", "HOSPITAL_ADMISSION//URGENT//TRANSFER", None),
        (2, "2021-03-31 00:00", "LAB//hb//g/dL", 11.0),
        # s3: death recorded before any admission -> not alive at the index: excluded
        (3, "2019-05-01 00:00", "MEDS_DEATH", None), (3, "2019-06-01 00:00", "HOSPITAL_ADMISSION//X//Y", None),
        # s4: never admitted -> excluded
        (4, "2018-01-01 00:00", "LAB//hb//g/dL", 13.0),
        # s5: admitted, censored 2.5 days later
        (5, "2022-07-01 12:00", "HOSPITAL_ADMISSION//ELECTIVE//REFERRAL", None),
        (5, "2022-07-04 00:00", "HOSPITAL_DISCHARGE//HOME", None),
        # s6: admitted, dies 1 day later
        (6, "2023-01-01 00:00", "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None),
        (6, "2023-01-02 00:00", "MEDS_DEATH", None),
    ]
    frame = pd.DataFrame(rows, columns=["subject_id", "timestamp", "code", "value"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame.to_parquet(path, index=False)


def test_synthetic_meds_gives_the_known_cohort(tmp_path: Path) -> None:
    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    summary = build_meds_cohort(meds, TASK, tmp_path / "out", seed=0)
    cohort = pd.read_csv(tmp_path / "out" / "cohort.csv", dtype={"subject_id": str}).set_index("subject_id")
    assert sorted(cohort.index) == ["1", "2", "5", "6"]
    assert cohort.loc["1", "time"] == pytest.approx(10.0) and cohort.loc["1", "event"] == 1
    assert cohort.loc["2", "time"] == pytest.approx(30.0) and cohort.loc["2", "event"] == 0
    assert cohort.loc["2", "index_time"] == "2021-03-01 00:00:00"
    assert cohort.loc["5", "time"] == pytest.approx(2.5) and cohort.loc["5", "event"] == 0
    assert cohort.loc["6", "time"] == pytest.approx(1.0) and cohort.loc["6", "event"] == 1
    assert summary["events"] == 2 and summary["censored"] == 2 and summary["later_index_events_dropped"] == 0
    assert not [n for n in summary["notes"] if n.startswith("No subject has the outcome")]
    timeline = pd.read_parquet(tmp_path / "out" / "timeline.parquet")
    assert sorted(timeline["subject_id"].unique()) == ["1", "2", "5", "6"]
    assert timeline["time"].isna().sum() == 1  # the static GENDER row is kept
    assert timeline.loc[timeline["code"] == "LAB//hb//g/dL", "numeric_value"].tolist() == [12.5, 11.0]
    # the cohort loads with the project's loader and gives models only the events up to the index
    from core.cohort import load_cohort

    loaded = load_cohort(tmp_path / "out")
    codes = loaded.events("1")["code"].tolist()
    assert {"LAB//hb//g/dL", "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"} <= set(codes)
    assert "MEDS_DEATH" not in codes and "HOSPITAL_DISCHARGE//HOME" not in codes


def test_splits_are_seeded() -> None:
    ids = [f"s{i:03d}" for i in range(50)]
    a, b, c = assign_splits(ids, seed=0), assign_splits(ids, seed=0), assign_splits(ids, seed=1)
    assert a == b and a != c
    assert (a.count("train"), a.count("val"), a.count("test")) == (30, 10, 10)
    assert assign_splits(["x", "y", "z"], seed=0).count("train") == 1  # val and test get one each
    with pytest.raises(InputError, match="--split"):
        assign_splits(ids, fractions=(0.5, 0.5, 0.5))


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    no_label = tmp_path / "no_label.yaml"
    no_label.write_text(TASK.read_text().replace("    label: death\n", ""))
    proc = _cli("cohort", "--meds", str(meds), "--task", str(no_label), "--out", str(tmp_path / "o1"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --task:") and "label" in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    broken = tmp_path / "broken.yaml"
    broken.write_text("predicates: {}\ntrigger: nothing\nwindows: {}\n")
    with pytest.raises(InputError, match="--task"):
        build_meds_cohort(meds, broken, tmp_path / "o2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="--out"):
        build_meds_cohort(meds, TASK, tmp_path / "full")
    bad_meds = tmp_path / "bad.csv"
    bad_meds.write_text("who,when,what\n1,2020-01-01,X\n")
    with pytest.raises(InputError, match="subject_id"):
        build_meds_cohort(bad_meds, TASK, tmp_path / "o3")
    proc = _cli("cohort", "--meds", str(meds), "--task", str(TASK), "--out", str(tmp_path / "o4"), "--split", "1,2")
    assert proc.returncode == 2 and "error: --split:" in proc.stderr


def _synthetic_rows(path: Path) -> pd.DataFrame:
    _write_synthetic(path)
    return pd.read_parquet(path)


def test_cohort_reads_times_as_the_timeline_reader_does(tmp_path: Path) -> None:
    """A CSV with day-first dates, one with UTC offsets, a parquet with aware times, a MEDS folder with metadata and
    a null code all give the synthetic cohort; dates that read either way are refused, as `timeline` refuses them."""
    rows = _synthetic_rows(tmp_path / "events.parquet")
    build_meds_cohort(tmp_path / "events.parquet", TASK, tmp_path / "ref", seed=0)
    expected = pd.read_csv(tmp_path / "ref" / "cohort.csv", dtype={"subject_id": str})

    day_first = rows.assign(timestamp=rows["timestamp"].dt.strftime("%d/%m/%Y %H:%M").where(rows["timestamp"].notna(), ""))
    day_first.to_csv(tmp_path / "dmy.csv", index=False)  # 11/01/2020 is January 11: 25/... rows tell the order
    aware = rows.assign(timestamp=(rows["timestamp"].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")))
    aware.to_parquet(tmp_path / "aware.parquet", index=False)
    aware.assign(timestamp=aware["timestamp"].map(lambda t: "" if pd.isna(t) else t.isoformat())).to_csv(
        tmp_path / "aware.csv", index=False)
    folder = tmp_path / "meds"
    (folder / "data" / "train").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rows.iloc[:8].to_parquet(folder / "data" / "train" / "0.parquet", index=False)
    rows.iloc[8:].to_parquet(folder / "data" / "train" / "1.parquet", index=False)
    pd.DataFrame({"code": ["MEDS_DEATH"], "description": ["death"]}).to_parquet(folder / "metadata" / "codes.parquet")
    null_code = pd.concat([rows, pd.DataFrame({"subject_id": [1], "timestamp": [pd.Timestamp("2020-01-02")],
                                                "code": [None], "value": [1.0]})], ignore_index=True)
    null_code.to_parquet(tmp_path / "null_code.parquet", index=False)
    for name in ("dmy.csv", "aware.parquet", "aware.csv", "meds", "null_code.parquet"):
        out = tmp_path / f"out_{name}"
        build_meds_cohort(tmp_path / name, TASK, out, seed=0)
        got = pd.read_csv(out / "cohort.csv", dtype={"subject_id": str})
        pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-6, obj=name)
        assert "None" not in set(pd.read_parquet(out / "timeline.parquet")["code"])

    either = pd.DataFrame({"subject_id": [1, 1], "time": ["03/04/2021 10:00", "04/05/2021 10:00"],
                           "code": ["HOSPITAL_ADMISSION//X//Y", "MEDS_DEATH"]})
    either.to_csv(tmp_path / "either.csv", index=False)
    with pytest.raises(InputError, match="day first or month first"):
        build_meds_cohort(tmp_path / "either.csv", TASK, tmp_path / "o_either")
    epoch = either.assign(time=[1617444000, 1620122400])
    epoch.to_csv(tmp_path / "epoch.csv", index=False)
    with pytest.raises(InputError, match="since 1970"):
        build_meds_cohort(tmp_path / "epoch.csv", TASK, tmp_path / "o_epoch")


def test_events_are_read_batch_by_batch_into_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV read a few rows at a time gives the cohort and the timeline of the file read whole: the day / month order
    is the whole file's, subjects split across batches come back in time order, and the text is held as categories."""
    from core.io import timeline as tl
    from core.meds_cohort import read_meds

    rows = _synthetic_rows(tmp_path / "events.parquet")
    dmy = rows.assign(timestamp=rows["timestamp"].dt.strftime("%d/%m/%Y %H:%M").where(rows["timestamp"].notna(), ""))
    dmy.sample(frac=1.0, random_state=3).to_csv(tmp_path / "dmy.csv", index=False)  # subjects' rows scattered
    build_meds_cohort(tmp_path / "dmy.csv", TASK, tmp_path / "whole", seed=0)
    monkeypatch.setattr(tl, "CSV_BLOCK_BYTES", 64)  # batches of one or two rows; the first ones are all ambiguous
    events = read_meds(tmp_path / "dmy.csv")
    assert isinstance(events["subject_id"].dtype, pd.CategoricalDtype) and isinstance(events["code"].dtype, pd.CategoricalDtype)
    assert list(events["code"].cat.categories) == sorted(events["code"].cat.categories)
    assert len(events) == len(rows) and events["subject_id"].astype(str).is_monotonic_increasing
    for _, times in events.groupby("subject_id", observed=True)["time"]:
        assert times.dropna().is_monotonic_increasing and times.isna().sum() == times.iloc[:times.isna().sum()].isna().sum()
    build_meds_cohort(tmp_path / "dmy.csv", TASK, tmp_path / "batches", seed=0)
    for name in ("cohort.csv", "timeline.parquet"):
        assert (tmp_path / "batches" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    written = pd.read_parquet(tmp_path / "batches" / "timeline.parquet")
    assert {c: str(t) for c, t in written.dtypes.items()} == {
        "subject_id": "object", "time": "datetime64[ns]", "code": "object", "numeric_value": "float64"}


def test_a_task_file_that_is_not_yaml_is_named_with_its_line(tmp_path: Path) -> None:
    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    bad = tmp_path / "bad.yaml"
    bad.write_text("predicates:\n  death:\n    code: MEDS_DEATH\n  admission: [\n")
    proc = _cli("cohort", "--meds", str(meds), "--task", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --task:"), proc.stderr
    assert "not valid YAML at line 5" in proc.stderr and "internal" not in proc.stderr


def test_the_apps_build_job_leaves_no_folder_when_cancelled_and_gives_the_summary(tmp_path: Path) -> None:
    """Cohort & models builds the cohort in a heavy job (core.app.meds_cohorts.meds_cohort_job): its summary as plain
    values for the page, also written last into the folder; a cancel (raised from the job's progress) leaves no
    half-written cohort folder, and a folder that was there before (another build's) is never removed."""
    from core.app.meds_cohorts import SUMMARY, meds_cohort_job
    from core.jobs import JobCancelled, JobContext

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    steps: list[str] = []
    done = meds_cohort_job(JobContext(lambda f, m: steps.append(m), lambda: False), str(meds), str(TASK),
                           str(tmp_path / "built"))
    assert done["out"] == str(tmp_path / "built") and done["n_subjects"] == 4 and done["events"] == 2
    assert (tmp_path / "built" / "cohort.csv").is_file() and steps[0] == "reading the task"
    assert json.loads((tmp_path / "built" / SUMMARY).read_text()) == json.loads(json.dumps(done))
    seen: list[str] = []
    cancel = JobContext(lambda f, m: seen.append(m), lambda: len(seen) >= 5)  # cancelled once the files are written
    with pytest.raises(JobCancelled):
        meds_cohort_job(cancel, str(meds), str(TASK), str(tmp_path / "cancelled"))
    assert not (tmp_path / "cancelled").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "cohort.csv").write_text("another build's cohort\n")
    with pytest.raises(InputError, match="exists and is not an empty folder"):
        meds_cohort_job(JobContext(lambda f, m: None, lambda: False), str(meds), str(TASK), str(tmp_path / "taken"))
    assert (tmp_path / "taken" / "cohort.csv").read_text() == "another build's cohort\n"  # never removed


def test_a_built_cohort_counts_in_the_users_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's folder lies in the user's folder: a user already over the quota is refused before anything is
    read, and a cohort that does not fit is removed once measured (the error names the quota and the fix)."""
    from core.app import workspace
    from core.app.meds_cohorts import meds_cohort_job, new_folder
    from core.jobs import JobContext

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    cohorts = workspace.user_root("alice", tmp_path) / "cohorts"
    ctx = JobContext(lambda f, m: None, lambda: False)
    out = new_folder(cohorts)
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, "0.000001")  # 1,000 bytes: less than the cohort's files
    with pytest.raises(InputError, match=r"^disk quota: .* exceeds your quota of 1.0 KB .*Cohort from MEDS > Delete"):
        meds_cohort_job(ctx, str(meds), str(TASK), str(out), user="alice", base=str(tmp_path))
    assert not out.exists()
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, "1")
    done = meds_cohort_job(ctx, str(meds), str(TASK), str(out), user="alice", base=str(tmp_path))
    assert done["n_subjects"] == 4 and 1_000 < workspace.user_usage("alice", tmp_path) < 1_000_000
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, "0.000001")  # now over it: the next build reads nothing
    with pytest.raises(InputError, match="disk quota"):
        meds_cohort_job(ctx, str(tmp_path / "not-read.parquet"), str(TASK), str(new_folder(cohorts)), user="alice",
                        base=str(tmp_path))


def test_built_cohorts_are_listed_and_deleted_unless_a_model_uses_them(tmp_path: Path) -> None:
    """The user's list (core.app.meds_cohorts): complete builds only, newest first, with their size and the models
    trained on them; a cohort a model uses is refused for deletion (naming the model), and deleting that model keeps
    the built cohort (core.app.background.delete_trained_model removes only cohorts unpacked for a model)."""
    from core.app.background import TRAINED_MARKER, delete_trained_model
    from core.app.meds_cohorts import built_cohorts, delete_built, meds_cohort_job
    from core.jobs import JobContext

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    cohorts, models = tmp_path / "cohorts", tmp_path / "models"
    ctx = JobContext(lambda f, m: None, lambda: False)
    old, new = cohorts / "meds-20261101-090000-aaaaaa", cohorts / "meds-20261128-093000-bbbbbb"
    for out in (old, new):
        meds_cohort_job(ctx, str(meds), str(TASK), str(out))
    (cohorts / "meds-20261128-100000-cccccc").mkdir()  # a build still running: no summary yet
    (cohorts / "20261128-100000").mkdir()  # a cohort unpacked from an upload for a training
    model = models / "ehr_only-1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(old), "label": "ehr_only (28 Nov)"}))

    listed = built_cohorts(cohorts, models)
    assert [b.path for b in listed] == [new, old]
    assert listed[1].models == ("ehr_only (28 Nov)",) and listed[0].models == ()
    assert listed[0].label == "built 28 Nov 09:30 · mimic_death_after_admission · 4 patients, 2 events"
    assert 1_000 < listed[0].n_bytes < 1_000_000
    with pytest.raises(InputError,
                       match=r"^cohort: got built 01 Nov 09:00, is the cohort of your model ehr_only \(28 Nov\); fix"):
        delete_built(cohorts, old, models)
    with pytest.raises(InputError, match="is not a cohort you built from MEDS here"):
        delete_built(cohorts, cohorts / "20261128-100000", models)
    from core.jobs import Job

    training = Job(id="job1", owner="u", title="Training concat", key=None, heavy=True, state="running",
                   args=(str(new), "concat", str(models / "concat-2")))  # its model is not in models/ until it ends
    with pytest.raises(InputError, match=r'^cohort: got built 28 Nov 09:30, is read by your job "Training concat"'):
        delete_built(cohorts, new, models, [training])
    assert new.is_dir()
    training.state = "failed"
    delete_built(cohorts, new, models, [training])
    assert not new.exists()
    assert delete_trained_model(models, model, cohorts) == [model]  # the built cohort stays in the list
    assert [b.path for b in built_cohorts(cohorts, models)] == [old] and built_cohorts(cohorts, models)[0].models == ()


def _nifti(path: Path, seed: int = 0) -> None:
    import nibabel as nib

    hu = np.random.default_rng(seed).normal(-300, 200, (24, 20, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))


def test_ct_studies_named_by_subject_id_join_the_cohort(tmp_path: Path) -> None:
    """`cohort --studies DIR` (core.cohort_studies): each study named by a subject id of the built cohort is copied
    into its studies/ and named in cohort.csv's study column; a subject without one keeps an empty cell (EHR only), a
    study of no subject is left out, both said in notes; the cohort then loads with its CT."""
    from core.cohort import load_cohort

    meds, studies, out = tmp_path / "events.parquet", tmp_path / "ct", tmp_path / "out"
    _write_synthetic(meds)
    studies.mkdir()
    _nifti(studies / "1.nii.gz")  # subjects 1, 2, 5 and 6 are in the cohort (tests above)
    (studies / "2").mkdir()  # a folder of DICOM files
    from tests.dicom_factory import write_series

    from tests.dicom_factory import edit_file

    for path in write_series(studies / "2", shape=(6, 16, 16), identified=False).paths:  # taken at the 2nd admission
        edit_file(path, lambda ds: setattr(ds, "StudyDate", "20210311"))
    _nifti(studies / "77.nii.gz")  # nobody's
    (studies / "notes.txt").write_text("not a study")
    (studies / "5.nii.gz").symlink_to(studies / "1.nii.gz")  # a link could point anywhere: left out
    proc = _cli("cohort", "--meds", str(meds), "--task", str(TASK), "--out", str(out), "--studies", str(studies),
                "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["studies"], summary["without_study"], summary["unused"]) == (2, 2, ["77.nii.gz"])
    assert any("1 study of the studies folder matches no subject" in n and "77.nii.gz" in n for n in summary["notes"])
    assert any(n.startswith("2 of the 4 subjects have no CT study") for n in summary["notes"])
    # subject 2's CT was taken 10 days after its index admission: named as train would name it (a NIfTI has no date)
    assert [n for n in summary["notes"] if n.startswith("studies:")] == [
        "studies: a CT taken after the index_time for 1 of 2 subjects (2): the model reads the patient later than the "
        "time it predicts from (the later CT can give the outcome away); set their index_time to the scan's date or "
        "later, or give a CT taken before it"]
    table = pd.read_csv(out / "cohort.csv", dtype=str, keep_default_na=False).set_index("subject_id")
    assert table["study"].to_dict() == {"1": "studies/1.nii.gz", "2": "studies/2", "5": "", "6": ""}
    assert sorted(p.name for p in (out / "studies").iterdir()) == ["1.nii.gz", "2"]
    cohort = load_cohort(out)
    assert cohort.has_studies and cohort.load_volume("1").hu.shape[0] == 8 and cohort.load_volume("5") is None
    assert cohort.load_volume("2").hu.shape == (6, 16, 16)


def test_studies_that_match_no_subject_or_two_of_one_are_refused_and_leave_no_cohort(tmp_path: Path) -> None:
    from core.cohort_studies import attach_studies

    meds, studies = tmp_path / "events.parquet", tmp_path / "ct"
    _write_synthetic(meds)
    studies.mkdir()
    _nifti(studies / "P1.nii.gz")
    with pytest.raises(InputError, match=r"^--studies: got ct, holds no study named by a subject id of the cohort "
                                         r"\(names seen: P1; subject ids such as 1, 2, 5\); fix: name each study"):
        build_meds_cohort(meds, TASK, tmp_path / "out", studies=studies)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    _nifti(studies / "1.nii")
    (studies / "1.zip").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"1.nii and 1.zip, are two studies of subject 1"):
        build_meds_cohort(meds, TASK, tmp_path / "empty", studies=studies)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())  # as it was: empty
    wrapped = tmp_path / "zipped" / "ct_export"  # a zipped folder of studies unpacks to one folder: read inside it
    wrapped.mkdir(parents=True)
    _nifti(wrapped / "6.nii.gz")
    build_meds_cohort(meds, TASK, tmp_path / "ok", studies=tmp_path / "zipped")
    with pytest.raises(InputError, match="already names a study per subject"):
        attach_studies(tmp_path / "ok", tmp_path / "zipped")


def test_studies_under_other_names_join_through_a_linkage_table(tmp_path: Path) -> None:
    """Studies exported under accession numbers come with studies.csv (subject_id,study): the table, not the file
    names, says whose study is which; a subject it leaves empty is read from its EHR only. A table that does not say
    it plainly is refused, naming the row: a path out of the folder, a missing file, a subject twice, one study for
    two subjects, no subject of the cohort."""
    from core.cohort import load_cohort
    from core.cohort_studies import attach_studies

    meds, studies = tmp_path / "events.parquet", tmp_path / "ct"
    _write_synthetic(meds)
    studies.mkdir()
    _nifti(studies / "ACC-8812.nii.gz")
    _nifti(studies / "1.nii.gz", seed=1)  # named like subject 1, but the table gives subject 1 another study
    (studies / "ACC-9034").mkdir()
    from tests.dicom_factory import write_series

    write_series(studies / "ACC-9034", shape=(6, 16, 16), identified=False)
    (studies / "studies.csv").write_text("subject_id,study\n1,ACC-8812.nii.gz\n2,ACC-9034\n5,\n77,1.nii.gz\n")
    out = tmp_path / "out"
    summary = build_meds_cohort(meds, TASK, out, studies=studies)
    assert (summary["studies"], summary["without_study"], summary["unused"]) == (2, 2, ["1.nii.gz"])
    table = pd.read_csv(out / "cohort.csv", dtype=str, keep_default_na=False).set_index("subject_id")
    assert table["study"].to_dict() == {"1": "studies/ACC-8812.nii.gz", "2": "studies/ACC-9034", "5": "", "6": ""}
    cohort = load_cohort(out)
    assert cohort.load_volume("1").hu.shape[0] == 8 and cohort.load_volume("2").hu.shape == (6, 16, 16)
    outside = tmp_path / "elsewhere.nii.gz"
    _nifti(outside)
    for rows, message in (
            ("subject,file\n1,ACC-8812.nii.gz\n", r"^studies.csv of ct: got subject, file, has no column subject_id, "
                                                  r"study; fix: write two columns"),
            (f"subject_id,study\n1,../{outside.name}\n", r"^studies.csv of ct, row 2: got \.\./elsewhere\.nii\.gz, "
                                                         r"is not a file or folder directly in the studies folder"),
            ("subject_id,study\n1,ACC-0000.nii.gz\n", r"row 2: got ACC-0000\.nii\.gz, is not a file or folder"),
            ("subject_id,study\n1,ACC-8812.nii.gz\n1,ACC-9034\n", r"row 3: got 1, names a second study of this subject"),
            ("subject_id,study\n1,ACC-8812.nii.gz\n2,ACC-8812.nii.gz\n",
             r"row 3: got ACC-8812\.nii\.gz, is already the study of subject 1"),
            ("subject_id,study\nP1,ACC-8812.nii.gz\n", r"^--studies: got ct, has a studies.csv that names no subject id "
                                                        r"of the cohort \(ids there: P1; subject ids such as 1, 2, 5\)")):
        (studies / "studies.csv").write_text(rows)
        target = tmp_path / f"refused-{len(list(tmp_path.glob('refused-*')))}"
        with pytest.raises(InputError, match=message):
            build_meds_cohort(meds, TASK, target, studies=studies)
        assert not target.exists()
    (studies / "studies.csv").write_text("subject_id,study\n1,ACC-8812.nii.gz\n")
    with pytest.raises(InputError, match="already names a study per subject"):
        attach_studies(out, studies)


def test_studies_given_away_are_moved_not_copied(tmp_path: Path) -> None:
    """The app's build copied the studies it had just unpacked, then removed the unpacked copy: every CT written
    twice, and twice on disk meanwhile. A folder that is the caller's to give away (``move_studies``) is moved in; a
    study folder holding a link is still copied without it (the link could point anywhere), and the caller's folder
    keeps what no subject uses."""
    import os

    from core.cohort import load_cohort
    from tests.dicom_factory import write_series

    meds, studies = tmp_path / "events.parquet", tmp_path / "unpacked"
    _write_synthetic(meds)
    studies.mkdir()
    _nifti(studies / "1.nii.gz")
    write_series(studies / "2", shape=(6, 16, 16), identified=False)
    write_series(studies / "5", shape=(6, 16, 16), identified=False)
    os.symlink("/etc/hostname", studies / "5" / "link.dcm")
    _nifti(studies / "99.nii.gz", seed=2)  # no such subject
    inode = (studies / "1.nii.gz").stat().st_ino
    summary = build_meds_cohort(meds, TASK, tmp_path / "out", studies=studies, move_studies=True)
    assert (summary["studies"], summary["unused"]) == (3, ["99.nii.gz"])
    moved = tmp_path / "out" / "studies"
    assert (moved / "1.nii.gz").stat().st_ino == inode and not (studies / "1.nii.gz").exists()
    assert not (studies / "2").exists() and len(list((moved / "2").iterdir())) == 6
    assert (studies / "5" / "link.dcm").is_symlink() and not (moved / "5" / "link.dcm").exists()
    assert sorted(p.name for p in studies.iterdir()) == ["5", "99.nii.gz"]
    cohort = load_cohort(tmp_path / "out")
    assert cohort.load_volume("2").hu.shape == (6, 16, 16) and cohort.load_volume("5").hu.shape == (6, 16, 16)


def test_the_apps_build_adds_zipped_studies_after_the_phi_check(tmp_path: Path) -> None:
    """The app's build job takes the studies as an uploaded zip: unpacked with the safe zip reader, added, then
    every study passes the PHI gate. A DICOM study that still carries the patient's name refuses the cohort (named
    by row) and leaves nothing behind, the unpacked copy included."""
    import io
    import zipfile

    from core.app.meds_cohorts import meds_cohort_job
    from core.jobs import JobContext
    from tests.dicom_factory import write_series

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    ctx = JobContext(lambda f, m: None, lambda: False)

    def zipped(name: str, identified: bool) -> Path:
        series = tmp_path / f"series-{name}"
        write_series(series, shape=(6, 16, 16), identified=identified)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for p in sorted(series.iterdir()):
                zf.write(p, f"export/6/{p.name}")  # a folder of studies, each a folder <id>/ of DICOM files
            nifti = tmp_path / "1.nii.gz"
            _nifti(nifti)
            zf.write(nifti, "export/1.nii.gz")
        path = tmp_path / f"{name}.zip"
        path.write_bytes(buf.getvalue())
        return path

    clean = zipped("clean", identified=False)
    done = meds_cohort_job(ctx, str(meds), str(TASK), str(tmp_path / "built"), studies_zip=str(clean))
    assert (done["studies"], done["without_study"]) == (2, 2)
    assert sorted(p.name for p in (tmp_path / "built" / "studies").iterdir()) == ["1.nii.gz", "6"]
    assert not (tmp_path / "clean.zip.d").exists()  # the unpacked copy is gone
    with pytest.raises(InputError, match=r"^cohort: got 1 of its studies, hold identifying data"):
        meds_cohort_job(ctx, str(meds), str(TASK), str(tmp_path / "refused"),
                        studies_zip=str(zipped("named", identified=True)))
    assert not (tmp_path / "refused").exists() and not (tmp_path / "named.zip.d").exists()
    linked = tmp_path / "linked.zip"  # accession-numbered studies and their linkage table, as a PACS exports them
    with zipfile.ZipFile(linked, "w") as zf:
        zf.write(tmp_path / "1.nii.gz", "export/ACC-0001.nii.gz")
        zf.writestr("export/studies.csv", "subject_id,study\n1,ACC-0001.nii.gz\n")
    done = meds_cohort_job(ctx, str(meds), str(TASK), str(tmp_path / "linked"), studies_zip=str(linked))
    assert (done["studies"], done["without_study"]) == (1, 3)
    assert [p.name for p in (tmp_path / "linked" / "studies").iterdir()] == ["ACC-0001.nii.gz"]


def test_an_outcome_code_that_matches_nothing_is_said(tmp_path: Path) -> None:
    """A typo in the outcome predicate's code (DEATH for MEDS_DEATH) builds a cohort of censored subjects only: the
    summary says so, naming the predicate and its code, instead of leaving it to training's error."""
    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    typo = tmp_path / "typo.yaml"
    typo.write_text(TASK.read_text().replace("code: MEDS_DEATH", "code: DEATH"))
    assert "code: DEATH" in typo.read_text()
    summary = build_meds_cohort(meds, typo, tmp_path / "out", seed=0)
    assert summary["events"] == 0
    (note,) = [n for n in summary["notes"] if n.startswith("No subject has the outcome")]
    assert note.startswith("No subject has the outcome: the label predicate 'death' (code DEATH) matched no event in "
                           f"the label window of any of the {summary['n_subjects']} subjects")


def test_a_value_column_under_an_unknown_name_is_said(tmp_path: Path) -> None:
    """A MEDS file whose numeric column is called `result` (no alias knows it): the cohort is built, its events
    without values, and the notes say so, naming the file and the names read, instead of dropping them in silence."""
    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    frame = pd.read_parquet(meds).rename(columns={"value": "result"})
    renamed = tmp_path / "renamed.parquet"
    frame.to_parquet(renamed, index=False)
    summary = build_meds_cohort(renamed, TASK, tmp_path / "out", seed=0)
    (note,) = [n for n in summary["notes"] if "no column of numeric values" in n]
    assert note == ("timeline: renamed.parquet has no column of numeric values (numeric_value, or value, numeric, val, "
                    "value_as_number, valuenum): every event is read without its value (lab results, vital signs); "
                    "rename the column that holds them numeric_value")
    assert pd.read_parquet(tmp_path / "out" / "timeline.parquet")["numeric_value"].isna().all()
    with_values = build_meds_cohort(meds, TASK, tmp_path / "out2", seed=0)  # `value`, an alias: read, nothing said
    assert not [n for n in with_values["notes"] if "no column of numeric values" in n]
