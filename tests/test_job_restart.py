"""A training that a server restart stopped is started again with its own settings (core.app.job_restart): the cohort
its upload unpacked is kept for it, the models it had finished are not trained twice, and a record can only name
the app's own trainings, on the user's own folders."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.app import job_journal, job_restart
from core.app.background import (UNPACKED, evaluate_job, train_every_job, train_every_on_folder_job, train_job,
                                 train_uploaded_job, trained_models, unpack_gated)
from core.app.workspace import TRAINED_MARKER
from tests.test_background import _ctx, _zip

GONE = "deadbeef0001"  # a server with no heartbeat: its jobs were stopped


def _stamp(t: float) -> str:
    return time.strftime(job_journal.STAMP, time.localtime(t))


def _stopped(user: Path, name: str, queued_at: float, restart: str, *, upload: bool = False) -> None:
    job_journal._write(user / "jobs" / f"{GONE}-{name}.json",
                       {"title": "Training ehr_only", "queued_at": queued_at, "server": GONE, "upload": upload,
                        "restart": restart})


def _cohort(folder: Path, tag: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "cohort.csv").write_text("subject_id,time,event\n")
    if tag is not None:
        (folder / UNPACKED).write_text(tag)
    return folder


@pytest.mark.slow
def test_a_stopped_uploads_training_starts_again_from_the_cohort_it_unpacked(tmp_path: Path) -> None:
    from core.demo import write_demo_cohort

    base, user = tmp_path, tmp_path / "users" / "u1"
    cohorts, out = user / "cohorts", user / "models" / "ehr_only-1"
    data = _zip(write_demo_cohort(tmp_path / "demo", n=48, seed=3))
    queued = time.time() - 6
    spec = job_restart.spec(train_uploaded_job, (data, str(cohorts), "ehr_only", str(out), 2),
                            {"label": "ehr_only (your cohort)", "image_encoder_kind": "auto", "body_crop": False,
                             "tag": "t1"}, "train20261129-080000")
    assert spec and "t1" in spec and len(spec) < 1000  # the zip's bytes are not in the record
    # what the job had done when its server was killed: the upload gated and unpacked whole, the model half-written
    cohort_dir = unpack_gated(_ctx(), data, str(cohorts), "t1")
    (user / "models" / "ehr_only-1.partial").mkdir(parents=True)
    other = _cohort(cohorts / _stamp(queued + 1), "t2")  # another training's upload (its own record decides)
    half = _cohort(cohorts / _stamp(queued + 2))  # an unpack cut short: no marker
    _stopped(user, "job1", queued, spec, upload=True)

    (rec,) = job_journal.interrupted(user, base)
    assert rec.resume == f"cohorts/{cohort_dir.relative_to(cohorts).parts[0]}"
    assert sorted(rec.removed) == sorted([f"cohorts/{half.name}", "models/ehr_only-1.partial"])
    assert other.is_dir() and cohort_dir.is_dir() and not half.exists()
    assert job_journal.interrupted(user, base) == [rec]  # read back whole, as marked

    again = job_restart.plan(rec.restart, user, rec.resume, "cpu")
    assert isinstance(again, job_restart.Restart), again
    assert again.fn is train_job and Path(again.args[0]) == cohort_dir.resolve() and again.fusions == ("ehr_only",)
    assert again.key == "train20261129-080000" and "tag" not in again.kwargs
    seen: list[float] = []
    result = again.fn(_ctx(seen), *again.args, **again.kwargs)  # gated again, then trained where it was going
    assert Path(result["out"]) == out and 0.0 <= result["c_index"] <= 1.0 and seen[-1] == pytest.approx(1.0)
    assert trained_models(user / "models")["ehr_only (your cohort)"] == (out, cohort_dir.resolve())
    job_journal.dismiss(user, rec.name, restarted=True)
    assert job_journal.interrupted(user, base) == [] and cohort_dir.is_dir()
    assert job_restart.plan(rec.restart, user, rec.resume, "cpu") == "its model was finished before the restart"


def test_dismissing_a_stop_removes_the_cohort_kept_for_it_unless_a_model_uses_it(tmp_path: Path) -> None:
    base, user = tmp_path, tmp_path / "users" / "u1"
    queued = time.time() - 60
    for name, tag, used in (("job1", "a1", False), ("job2", "b2", True)):
        kept = _cohort(user / "cohorts" / _stamp(queued + (1 if used else 0)), tag)
        runs = {"ehr_only": (str(user / "models" / f"ehr_only-{name}"), "mine")}
        _stopped(user, name, queued, job_restart.spec(train_every_job, (b"zip", str(user / "cohorts"), runs, 2),
                                                      {"device": "cuda", "tag": tag}, None), upload=True)
        if used:  # a model it finished before the restart reads it
            (user / "models" / "image_only-m").mkdir(parents=True)
            (user / "models" / "image_only-m" / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(kept)}))
    recs = job_journal.interrupted(user, base)
    assert [r.resume for r in recs] == [f"cohorts/{_stamp(queued)}", f"cohorts/{_stamp(queued + 1)}"]
    again = job_restart.plan(recs[0].restart, user, recs[0].resume, "cpu")
    assert isinstance(again, job_restart.Restart) and again.fn is train_every_on_folder_job
    assert again.kwargs == {"device": "cpu"}  # this server's device; the tag stays with the upload
    for rec in recs:
        job_journal.dismiss(user, rec.name)
    assert not (user / "cohorts" / _stamp(queued)).exists() and (user / "cohorts" / _stamp(queued + 1)).is_dir()
    assert job_journal.interrupted(user, base) == []


def test_a_training_of_every_strategy_starts_again_with_the_ones_not_finished(tmp_path: Path) -> None:
    user = tmp_path / "u1"
    cohort = _cohort(user / "cohorts" / "meds-20261129-080000-abc")
    runs = {f: (str(user / "models" / f"{f}-1"), f"{f} (mine)") for f in ("ehr_only", "image_only", "late")}
    (user / "models" / "ehr_only-1").mkdir(parents=True)
    (user / "models" / "ehr_only-1" / TRAINED_MARKER).write_text("{}")
    text = job_restart.spec(train_every_on_folder_job, (str(cohort), runs, 3), {"device": "cpu"}, "train1")
    again = job_restart.plan(text, user, "", "cpu")
    assert isinstance(again, job_restart.Restart) and again.fusions == ("image_only", "late")
    assert list(again.args[1]) == ["image_only", "late"] and again.args[2] == 3
    for f in ("image_only", "late"):
        (user / "models" / f"{f}-1").mkdir(parents=True)
        (user / "models" / f"{f}-1" / TRAINED_MARKER).write_text("{}")
    assert job_restart.plan(text, user, "", "cpu") == "every model it was training was finished before the restart"


def test_a_record_names_only_the_apps_trainings_on_the_users_own_folders(tmp_path: Path) -> None:
    user = tmp_path / "u1"
    cohort = _cohort(user / "cohorts" / "c")
    good = job_restart.spec(train_job, (str(cohort), "ehr_only", str(user / "models" / "m"), 2), {}, "k")
    assert isinstance(job_restart.plan(good, user, "", "cpu"), job_restart.Restart)
    outside = good.replace(str(user / "models" / "m"), str(tmp_path / "elsewhere" / "m"))
    assert job_restart.plan(outside, user, "", "cpu").startswith("its settings are not a training of this user's")
    climbing = good.replace(str(cohort), str(user / "cohorts" / ".." / ".." / "c"))
    assert job_restart.plan(climbing, user, "", "cpu").startswith("its settings are not a training of this user's")
    assert job_restart.plan(good.replace('"fn": "train"', '"fn": "evaluate"'), user, "", "cpu") == \
        "it cannot be started again from here"
    assert job_restart.plan("{not json", user, "", "cpu") == "its settings could not be read back"
    assert job_restart.spec(evaluate_job, ({"m": ("a", "b", None, 0.0)},), {}, "k") == ""  # not a training
    assert job_restart.spec(train_job, (str(cohort), "ehr_only", b"bytes", 2), {}, "k") == ""  # not plain data
    upload = job_restart.spec(train_uploaded_job, (b"z", str(user / "cohorts"), "ehr_only", "o", 2), {"tag": "t"}, None)
    assert job_restart.plan(upload, user, "", "cpu") == "the cohort it had unpacked was not kept"
    assert job_restart.plan(upload, user, "cohorts/gone", "cpu") == "the cohort it had unpacked is gone"
    (cohort / "cohort.csv").unlink()
    assert job_restart.plan(good, user, "", "cpu") == "its cohort folder is gone"


def test_a_training_whose_server_goes_keeps_its_whole_upload_and_a_cancel_does_not(tmp_path: Path) -> None:
    """In the job's own process the server's end reads as ServerGone, not as a failure: the cohort the upload
    unpacked stays for the job's record (it was removed, so a restart could never start the training again)."""
    import threading
    from multiprocessing import Pipe

    from core.demo import write_demo_cohort
    from core.job_process import child_main

    data = _zip(write_demo_cohort(tmp_path / "demo", n=40, seed=5, volumes=False))
    for how in ("server gone", "cancel"):
        cohorts, out = tmp_path / how / "cohorts", tmp_path / how / "models" / "m"
        server, job = Pipe()
        run = threading.Thread(target=child_main, args=(job, train_uploaded_job, (data, str(cohorts), "ehr_only",
                                                                                  str(out), 50), {"tag": "t9"}, 0, 1))
        run.start()
        while True:  # until the training itself reports: the zip was gated and unpacked whole
            message = server.recv()
            if message[0] == "progress" and ": epoch " in message[2]:
                break
        if how == "cancel":
            server.send("cancel")
            while (message := server.recv())[0] == "progress":
                pass
            assert message == ("cancelled", None)
        server.close()
        run.join(60)
        assert not run.is_alive() and not out.exists() and not list(out.parent.glob("*.partial"))
        left = [p for p in cohorts.glob("*") if (p / UNPACKED).is_file()]
        assert (len(left), how) == ((1, how) if how == "server gone" else (0, how))
        if left:
            assert (left[0] / UNPACKED).read_text() == "t9"
