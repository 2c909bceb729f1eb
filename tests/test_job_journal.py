"""Jobs that a server restart stopped (core.app.job_journal): found, told once, and their half-written files removed.

A real server process is a child Python that records a job and beats; it is killed (``kill -9``, no exit hooks) or
left running, and this process (the restarted server) looks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.app import job_journal, workspace

ROOT = Path(__file__).resolve().parents[1]
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from core.app import job_journal
    base, user = Path(sys.argv[1]), Path(sys.argv[2])
    job_journal.record(user, "job1", "Training coattention_image", base)
    print(job_journal.SERVER, flush=True)
    if sys.argv[3] == "exit":
        sys.exit(0)
    time.sleep(600)
""")


def _server(base: Path, user: Path, how: str = "stay") -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(base), str(user), how], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    server = proc.stdout.readline().strip()
    assert len(server) == 12, server
    return proc, server


def _folders(user: Path, queued_at: float) -> dict[str, Path]:
    """A user's folder as the app leaves it: an old kept cohort, a cohort a finished model uses (unpacked after the
    job was queued), the cohort the stopped job unpacked, and the model it was writing."""
    cohorts, models = user / "cohorts", user / "models"
    stamp = lambda t: time.strftime(job_journal.STAMP, time.localtime(t))  # noqa: E731
    made = {"old": cohorts / stamp(queued_at - 3600), "used": cohorts / stamp(queued_at + 5),
            "orphan": cohorts / stamp(queued_at + 10), "partial": models / "image_only-x.partial",
            "model": models / "ehr_only-x"}
    for path in made.values():
        path.mkdir(parents=True)
        (path / "cohort.csv").write_text("subject_id\n")
    (made["model"] / workspace.TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(made["used"] / "c")}))
    return made


def test_a_killed_servers_job_is_reported_once_and_its_unpacked_cohort_removed(tmp_path: Path) -> None:
    base, user = tmp_path, tmp_path / "users" / "u1"
    proc, server = _server(base, user)
    record = json.loads((user / "jobs" / f"{server}-job1.json").read_text())
    made = _folders(user, record["queued_at"])
    assert job_journal.interrupted(user, base) == []  # its server is alive: nothing is touched
    assert all(p.is_dir() for p in made.values())

    proc.send_signal(signal.SIGKILL)  # no exit hook runs: the heartbeat file stays, its process is gone
    proc.wait(10)
    assert (base / "jobs" / f"{server}.json").is_file()
    stopped = job_journal.interrupted(user, base)
    assert [(r.title, r.stopped, r.server) for r in stopped] == [("Training coattention_image", True, server)]
    assert sorted(stopped[0].removed) == sorted([f"cohorts/{made['orphan'].name}", "models/image_only-x.partial"])
    assert stopped[0].kept == (f"cohorts/{made['used'].name}",)  # a finished model uses it: kept, and said so
    assert not made["orphan"].exists() and not made["partial"].exists()
    assert made["old"].is_dir() and made["used"].is_dir() and made["model"].is_dir()

    made["orphan"].mkdir()  # a cohort that a job of the new server unpacked later is not taken for the old one's
    assert job_journal.interrupted(user, base) == stopped  # told until dismissed; nothing more removed
    assert made["orphan"].is_dir()
    job_journal.dismiss(user, stopped[0].name)
    assert job_journal.interrupted(user, base) == []


def test_a_job_queued_after_the_stopped_one_keeps_its_cohort(tmp_path: Path) -> None:
    base, user = tmp_path, tmp_path / "users" / "u1"
    proc, server = _server(base, user)
    queued = json.loads((user / "jobs" / f"{server}-job1.json").read_text())["queued_at"]
    made = _folders(user, queued)
    job_journal.record(user, "job9", "Validating ehr_only", base, now=queued + 8)  # this server's, live
    proc.kill()
    proc.wait(10)
    (stopped,) = job_journal.interrupted(user, base)
    assert stopped.removed == ("models/image_only-x.partial",)  # the cohort unpacked at +10 may be job9's
    assert made["orphan"].is_dir()


def test_a_server_that_exits_leaves_no_heartbeat_and_its_ended_jobs_no_record(tmp_path: Path) -> None:
    base, user = tmp_path, tmp_path / "users" / "u1"
    proc, server = _server(base, user, "exit")
    assert proc.wait(30) == 0
    assert not (base / "jobs" / f"{server}.json").exists()
    # job1 was never queued in that process's queue (the child only wrote it down): it ended, so at exit it went
    assert not (user / "jobs" / f"{server}-job1.json").exists()
    assert job_journal.interrupted(user, base) == []


@pytest.mark.parametrize("age_s, stopped", [(job_journal.STALE_S + 30, True), (5, False)])
def test_a_replica_on_another_host_is_judged_by_its_heartbeats_age(tmp_path: Path, age_s: float, stopped: bool) -> None:
    base, user = tmp_path, tmp_path / "users" / "u1"
    beat = base / "jobs" / "otherhost01.json"
    job_journal._write(beat, {"host": "another-host", "pid": 1})
    os.utime(beat, (time.time() - age_s,) * 2)
    job_journal._write(user / "jobs" / "otherhost01-job4.json",
                       {"title": "Validating ehr_only", "queued_at": time.time() - 600, "server": "otherhost01"})
    assert [r.title for r in job_journal.interrupted(user, base)] == (["Validating ehr_only"] if stopped else [])


def test_this_servers_records_go_when_their_jobs_end_and_a_bad_name_is_not_a_path(tmp_path: Path) -> None:
    user = tmp_path / "users" / "u1"
    for job in ("job1", "job2"):
        job_journal._write(user / "jobs" / f"{job_journal.SERVER}-{job}.json",
                           {"title": job, "queued_at": 1.0, "server": job_journal.SERVER})
    job_journal.forget_ended([user], lambda job_id: job_id == "job2")
    assert sorted(p.name for p in (user / "jobs").iterdir()) == [f"{job_journal.SERVER}-job2.json"]
    (tmp_path / "keep.json").write_text("{}")
    job_journal.dismiss(user, "../../keep")
    assert (tmp_path / "keep.json").is_file()


def test_two_sessions_looking_at_once_mark_a_stopped_job_once_and_keep_its_record_whole(tmp_path: Path) -> None:
    """Two tabs (threads) found the same stopped job at once: they wrote through one temporary file, leaving broken
    JSON (the notice then never showed) or a record that said nothing was removed although the cohort was."""
    import threading

    for attempt in range(5):
        base = tmp_path / str(attempt)
        user = base / "users" / "u1"
        job_journal._write(user / "jobs" / "gone00000001-job1.json",
                           {"title": "Validating concat", "queued_at": time.time() - 60, "server": "gone00000001"})
        orphan = user / "cohorts" / time.strftime(job_journal.STAMP, time.localtime(time.time() - 30))
        orphan.mkdir(parents=True)
        barrier, seen = threading.Barrier(2), []

        def look() -> None:
            barrier.wait()
            seen.append(job_journal.interrupted(user, base))

        threads = [threading.Thread(target=look) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        record = json.loads((user / "jobs" / "gone00000001-job1.json").read_text())  # whole JSON
        assert record["stopped"] is True and record["removed"] == [f"cohorts/{orphan.name}"] and not orphan.exists()
        assert len(seen) == 2 and all([r.removed for r in found] == [(f"cohorts/{orphan.name}",)] for found in seen)


def test_a_stopped_meds_build_loses_its_half_written_folder_and_a_built_cohort_stays(tmp_path: Path) -> None:
    """A MEDS build (core.app.meds_cohorts) writes ``meds-<time>-<hex>`` and its summary last: a restart that stops it
    leaves a folder without the summary, which goes; a complete cohort built meanwhile is the user's (their list of
    built cohorts keeps it) and stays, though no model uses it."""
    from core.app import meds_cohorts

    base, user = tmp_path, tmp_path / "users" / "u1"
    proc, server = _server(base, user)
    queued = json.loads((user / "jobs" / f"{server}-job1.json").read_text())["queued_at"]
    stamp = time.strftime(job_journal.STAMP, time.localtime(queued + 5))
    half, built = user / "cohorts" / f"meds-{stamp}-aaaaaa", user / "cohorts" / f"meds-{stamp}-bbbbbb"
    for folder in (half, built):
        folder.mkdir(parents=True)
        (folder / "cohort.csv").write_text("subject_id\n")
    (built / meds_cohorts.SUMMARY).write_text("{}")
    proc.kill()
    proc.wait(10)
    (stopped,) = job_journal.interrupted(user, base)
    assert stopped.removed == (f"cohorts/{half.name}",) and not half.exists()
    assert built.is_dir() and stopped.kept == ()


def test_a_model_another_replica_reads_is_not_deleted_under_its_job(tmp_path: Path) -> None:
    """The deletion guard saw this server's queue only: a model evaluated by the user's job on another replica (the
    queue is per replica) could be deleted under it. The job's record names the folders it reads, and a record of a
    live server holds the deletion, named as another server's job; once that server is gone, the deletion goes."""
    from core.app.background import delete_trained_model
    from core.errors import InputError
    from tests.test_background import models_trained_here

    base, user = tmp_path, tmp_path / "users" / "u1"
    models, cohorts = models_trained_here(user, ("m1", "m2"))
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from core.app import job_journal
        from core.job_pickle import paths_in
        job_journal.record(Path({str(user)!r}), "job7", "Evaluating m1", Path({str(base)!r}),
                           reads=paths_in(({{"m1": ({str(models / "m1")!r}, {str(cohorts / "a")!r})}}, "cpu")))
        print(job_journal.SERVER, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and len(proc.stdout.readline().strip()) == 12
        found = job_journal.elsewhere(user, base)
        assert [(j.title, j.active) for j in found] == [("Evaluating m1", True)]
        with pytest.raises(InputError, match=r'^model: got m1, is read by your job "Evaluating m1" \(running on '
                                             r"another server of this site\); fix: wait for it to end"):
            delete_trained_model(models, models / "m1", cohorts, found)
        assert (models / "m1").is_dir()
        assert delete_trained_model(models, models / "m2", cohorts, found) == [models / "m2"]  # not read by it
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert job_journal.elsewhere(user, base) == []  # its server died: the record no longer holds anything
    assert delete_trained_model(models, models / "m1", cohorts, job_journal.elsewhere(user, base)) == \
        [models / "m1", cohorts / "a"]


def test_a_jobs_record_goes_when_it_ends_and_only_this_servers(tmp_path: Path) -> None:
    """The app removes a job's record as the job ends (core.jobs ``on_end``): a server stopped right after a
    training finished (a SIGTERM under uvicorn runs no exit hook) no longer leaves it to read as stopped."""
    base, user = tmp_path, tmp_path / "users" / "u1"
    job_journal.record(user, "job5", "Training ehr_only", base)
    job_journal._write(user / "jobs" / "deadbeef0003-job5.json", {"title": "t", "queued_at": 1.0, "server": "deadbeef0003"})
    job_journal.forget(user, "job5")
    job_journal.forget(user, "../job5")  # never a path
    assert sorted(p.name for p in (user / "jobs").glob("*.json")) == ["deadbeef0003-job5.json"]


def test_two_tabs_starting_one_stopped_job_again_start_it_once(tmp_path: Path) -> None:
    """"Start again" clicked in two tabs (or on two replicas) at once: one claims the record, the other finds it gone,
    so one training writes the model folder, not two into the same one; a claim given back lists it again."""
    import threading

    user = tmp_path / "users" / "u1"
    job_journal._write(user / "jobs" / "deadbeef0004-job1.json", {"title": "Training late", "queued_at": 1.0,
                                                                   "server": "deadbeef0004"})
    got: list[Path | None] = []
    start = threading.Barrier(8)

    def click() -> None:
        start.wait()
        got.append(job_journal.claim(user, "deadbeef0004-job1"))

    threads = [threading.Thread(target=click) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [g for g in got if g is not None]
    assert len(taken) == 1 and job_journal.interrupted(user, tmp_path) == []
    job_journal.unclaim(taken[0])  # its job could not be queued (quota): the notice comes back
    assert [r.name for r in job_journal.interrupted(user, tmp_path)] == ["deadbeef0004-job1"]
    assert job_journal.claim(user, "../deadbeef0004-job1") is None


def test_the_servers_shutdown_settles_its_records_and_its_heartbeat(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``st.App``'s lifespan ends (pages/_server.py; under uvicorn a SIGTERM then skips ``atexit``): the records of
    ended jobs go, a running job's record stays (its user is told it was stopped), and the heartbeat goes."""
    import threading

    from core.jobs import default_queue

    monkeypatch.setattr(job_journal, "_STOPPED", [False])  # this test's own beats (the module's are the process's)
    monkeypatch.setattr(job_journal, "_BEAT", {})
    base, user = tmp_path, tmp_path / "users" / "u1"
    release = threading.Event()
    running = default_queue().submit("shutdown-test", "waits", lambda ctx: release.wait(30))
    try:
        job_journal.record(user, running.id, "Training ehr_only", base)
        job_journal.record(user, "job999999", "Evaluating ehr_only", base)  # ended: no longer in the queue
        assert (base / "jobs" / f"{job_journal.SERVER}.json").is_file()
        job_journal.stop_heartbeats()
    finally:
        release.set()
    assert not (base / "jobs" / f"{job_journal.SERVER}.json").exists() and job_journal._STOPPED == [True]
    assert [p.name for p in (user / "jobs").glob("*.json")] == [f"{job_journal.SERVER}-{running.id}.json"]
