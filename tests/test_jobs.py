"""The background job queue (core.jobs): progress, cancel, per-user limits, heavy jobs in their own process."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from core.errors import InputError
from core import job_state, jobs
from core.durations import format_eta
from core.jobs import Job, JobContext, JobQueue


def _count(ctx: JobContext, n: int, pause: float = 0.0) -> int:
    total = 0
    for i in range(n):
        total += i
        time.sleep(pause)
        ctx.progress((i + 1) / n, f"step {i + 1} of {n}")
    return total


def _heavy(ctx: JobContext, n: int) -> dict:
    """Runs in the job's own process: reports its pid, thread count and a sum."""
    ctx.progress(0.5, "half")
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "sum": sum(range(n)), "t": time.time()}


def _heavy_slow(ctx: JobContext, seconds: float) -> float:
    t0 = time.time()
    time.sleep(seconds)
    ctx.progress(1.0, "done")
    return t0


def _heavy_deaf(ctx: JobContext, seconds: float) -> None:
    time.sleep(seconds)  # never reports progress: a cancel has to end the process


def _heavy_parts(ctx: JobContext, parts: int, seconds: float) -> list[float]:
    """A long heavy job of independent parts that makes way between them; returns when each part started."""
    starts = []
    for i in range(parts):
        if i:
            ctx.yield_turn()
        starts.append(time.time())
        time.sleep(seconds)
        ctx.progress((i + 1) / parts, f"part {i + 1} of {parts}")
    return starts


def _mapped(ctx: JobContext, hu: object) -> dict:
    """Runs in the job's own process: what it received for a memory-mapped CT."""
    return {"type": type(hu).__name__, "file": getattr(hu, "filename", None), "sum": float(hu.sum()),  # type: ignore[attr-defined]
            "shape": tuple(hu.shape)}  # type: ignore[attr-defined]


def _fails(ctx: JobContext) -> None:
    raise InputError("cohort", "x", "has no train rows", "add a train split")


@pytest.fixture()
def queue() -> JobQueue:
    q = JobQueue(workers=2, max_active_per_user=2, heavy_threads=1)
    yield q
    q.close()


def test_a_job_reports_progress_and_returns_its_result(queue: JobQueue) -> None:
    seen: list[float] = []
    job = queue.submit("alice", "count", _count, 50, 0.002)
    while job.active:
        seen.append(job.fraction)
        time.sleep(0.005)
    assert job.state == "done" and job.result == sum(range(50)) and job.fraction == 1.0
    assert job.elapsed_s > 0 and job.error is None
    assert any(0 < f < 1 for f in seen)


def test_cancel_stops_a_running_job_at_its_next_report(queue: JobQueue) -> None:
    job = queue.submit("alice", "slow", _count, 1000, 0.01)
    while job.fraction == 0:
        time.sleep(0.01)
    assert queue.cancel(job.id, "bob") is False  # not bob's job
    assert queue.cancel(job.id, "alice") is True
    done = queue.wait(job.id, timeout=5)
    assert done.state == "cancelled" and done.result is None and done.fraction < 0.5


def test_a_jobs_end_is_told_once_however_it_ends_and_a_failing_hook_is_logged(
        queue: JobQueue, caplog: pytest.LogCaptureFixture) -> None:
    """``on_end`` runs once when a job is done, failed or cancelled (the app removes the job's record then, not up to
    20 s later: a server stopped meanwhile left a finished training's record, read as stopped by the restart)."""
    ended: list[tuple[str, str]] = []
    done = queue.submit("alice", "count", _count, 5, on_end=lambda j: ended.append((j.id, j.state)))
    failed = queue.submit("bob", "fails", _fails, on_end=lambda j: ended.append((j.id, j.state)))
    queue.wait(done.id, timeout=5)
    slow = queue.submit("alice", "slow", _count, 1000, 0.01, on_end=lambda j: ended.append((j.id, j.state)))
    while slow.fraction == 0:
        time.sleep(0.01)
    queue.cancel(slow.id, "alice")
    for j in (done, failed, slow):
        queue.wait(j.id, timeout=5)
    assert sorted(ended) == sorted([(done.id, "done"), (failed.id, "failed"), (slow.id, "cancelled")])

    def broken(job: Job) -> None:
        raise PermissionError("read-only disk")

    with caplog.at_level("WARNING"):
        last = queue.wait(queue.submit("alice", "count", _count, 3, on_end=broken).id, timeout=5)
    assert last.state == "done" and "its end was not recorded: read-only disk" in caplog.text
    assert queue.wait(queue.submit("alice", "count", _count, 2).id, timeout=5).state == "done"  # the queue goes on


def test_a_job_the_servers_end_stops_has_not_ended() -> None:
    """Closing the queue (the server stops) cancels its running jobs without telling ``on_end``: the app's record of
    such a job stays, so that its user is told the restart stopped it (and can start it again)."""
    q = JobQueue(workers=1, max_active_per_user=2, heavy_threads=1)
    ended: list[str] = []
    job = q.submit("alice", "slow", _count, 1000, 0.01, on_end=lambda j: ended.append(j.state))
    while job.fraction == 0:
        time.sleep(0.01)
    q.close()
    deadline = time.monotonic() + 5
    while job.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state == "cancelled" and ended == []


def test_keys_deduplicate_and_owners_are_kept_apart(queue: JobQueue) -> None:
    a = queue.submit("alice", "map", _count, 3, key="case1/saliency")
    again = queue.submit("alice", "map", _count, 3, key="case1/saliency")
    other = queue.submit("bob", "map", _count, 3, key="case1/saliency")
    assert again is a and other is not a
    queue.wait(a.id, 5), queue.wait(other.id, 5)
    assert queue.find("alice", "case1/saliency") is a
    assert queue.get(a.id, owner="bob") is None and queue.get(a.id, owner="alice") is a
    assert [j.id for j in queue.jobs("bob")] == [other.id]


def test_a_user_may_not_queue_more_than_the_limit(queue: JobQueue) -> None:
    gate = threading.Event()

    def blocked(ctx: JobContext) -> None:
        gate.wait(5)

    queue.submit("alice", "one", blocked)
    queue.submit("alice", "two", blocked)
    with pytest.raises(InputError, match="limit of 2 per user"):
        queue.submit("alice", "three", blocked)
    queue.submit("bob", "bob's", blocked)  # another user is not blocked by alice's jobs
    # the limit holds for the site: bob's jobs that other replicas run count (pages/_jobs.py passes their number)
    with pytest.raises(InputError, match=r"got 2 queued or running \(1 on another server of this site\), reach "
                                         "the limit of 2 per user"):
        queue.submit("bob", "bob's second", blocked, others_active=1)
    gate.set()


def test_a_failing_job_keeps_a_one_line_error_and_the_worker_lives(queue: JobQueue) -> None:
    bad = queue.wait(queue.submit("alice", "bad", _fails).id, 5)
    assert bad.state == "failed" and bad.error.startswith("cohort") and "\n" not in bad.error
    good = queue.wait(queue.submit("alice", "good", _count, 4).id, 5)
    assert good.state == "done" and good.result == 6


def test_heavy_jobs_run_in_their_own_process_one_at_a_time(queue: JobQueue) -> None:
    threads_before = torch.get_num_threads()
    j1 = queue.submit("alice", "heavy 1", _heavy_slow, 1.5, heavy=True)
    j2 = queue.submit("bob", "heavy 2", _heavy, 1000, heavy=True)
    light = queue.submit("carol", "light", _count, 3)
    queue.wait(light.id, 60)
    assert light.state == "done"  # a light job does not wait for the heavy ones
    queue.wait(j1.id, 120), queue.wait(j2.id, 120)
    assert j1.state == "done" and j2.state == "done", (j1.error, j2.error)
    assert j2.result["pid"] != os.getpid() and j2.result["threads"] == 1 and j2.result["sum"] == sum(range(1000))
    assert j2.result["t"] >= j1.result + 1.5  # the second heavy job started after the first ended
    assert torch.get_num_threads() == threads_before


def test_a_memory_mapped_ct_reaches_a_heavy_job_by_its_file_name(queue: JobQueue, tmp_path) -> None:
    """A decoded CT kept on disk (core.io.study_cache maps it copy-on-write) was pickled value by value to a heavy
    job's process: 315 MB copied in the server and held again there at full resolution. It now goes by file name and
    the job maps the same file; a file removed or changed before the job starts is one clear error."""
    import numpy as np

    from core import job_pickle

    path = tmp_path / "ct.hu.npy"
    np.save(path, np.arange(64 * 128 * 128, dtype=np.float32).reshape(64, 128, 128))  # 4 MB
    hu = np.load(path, mmap_mode="c")
    assert len(job_pickle.dumps(hu)) < 2000 < hu.nbytes
    job = queue.wait(queue.submit("alice", "mapped", _mapped, hu, heavy=True).id, 120)
    assert job.state == "done", job.error
    assert job.result == {"type": "memmap", "file": str(path), "sum": float(hu.sum()), "shape": (64, 128, 128)}
    stale = job_pickle.dumps(hu)
    path.unlink()  # trimmed from the cache between the send and the job's start
    with pytest.raises(job_pickle.MappedFileChanged, match="ct.hu.npy was removed after the job was queued"):
        job_pickle.loads(stale)
    job = queue.wait(queue.submit("alice", "unreadable", _mapped, _Unloadable(), heavy=True).id, 120)
    assert job.state == "failed" and "ctehr-no-such-file" in job.error and "\n" not in job.error  # not a hung job


class _Unloadable:
    """Pickled fine in the server; its loading in the job's process fails (as a CT file trimmed meanwhile would)."""

    def __reduce__(self) -> tuple:
        return os.stat, ("/ctehr-no-such-file",)


def test_cancel_ends_a_heavy_job_that_never_reports(queue: JobQueue) -> None:
    job = queue.submit("alice", "deaf", _heavy_deaf, 120.0, heavy=True)
    while job.state != "running":
        time.sleep(0.05)
    time.sleep(1.0)
    t0 = time.monotonic()
    queue.cancel(job.id, "alice")
    done = queue.wait(job.id, timeout=30)
    assert done.state == "cancelled" and time.monotonic() - t0 < 15


def test_a_heavy_job_outlives_the_sigterm_of_its_process_group(queue: JobQueue) -> None:
    """A restart's SIGTERM (or Ctrl-C) reaches the job's process too: it goes on, so that the job still runs when the
    server settles its records (the user is then told it was stopped, with "Start again"); the server ends it."""
    import signal

    job = queue.submit("alice", "long", _heavy_slow, 120.0, heavy=True)
    _running(job)
    deadline = time.monotonic() + 30
    while not queue._children and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the job's process has read its job and set its signals
    (child,) = list(queue._children)
    child.send_signal(signal.SIGTERM)
    child.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert child.poll() is None and job.state == "running"
    queue.close()  # the server stops: it ends the process itself
    assert child.wait(10) == -signal.SIGKILL


def _running(job) -> None:
    deadline = time.monotonic() + 30
    while job.state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == "running"


@pytest.mark.parametrize("site", [False, True], ids=["alone", "in the site's queue"])
def test_a_long_heavy_job_lets_queued_heavy_jobs_run_between_its_parts(queue: JobQueue, site: bool, tmp_path) -> None:
    """Alice's three-part job makes way after each part for the heavy jobs queued by then: Bob's (which has two
    parts but makes no way inside the break), then Carol's, queued during Bob's, in the next break. A cancel during
    that break ends Alice's job when Carol's ends, before its last part. In the site's queue (as the app runs them)
    Alice's job lends its turn to them: their tickets are behind hers (they waited for it for ever)."""
    site_dir = tmp_path / "heavy" if site else None
    alice = queue.submit("alice", "every strategy", _heavy_parts, 3, 0.5, heavy=True, site_dir=site_dir)
    _running(alice)
    bob = queue.submit("bob", "evaluation", _heavy_parts, 2, 0.3, heavy=True, site_dir=site_dir)
    _running(bob)  # in alice's first break
    assert alice.state == "running" and alice.message.startswith("paused: 1 queued job first")
    assert alice.fraction == pytest.approx(1 / 3)  # bob runs after alice's first part, not after her whole job
    carol = queue.submit("carol", "evaluation", _heavy_slow, 1.5, heavy=True, site_dir=site_dir)
    queue.wait(bob.id, 60)
    assert bob.state == "done", bob.error
    _running(carol)  # in alice's second break, after her second part
    assert alice.fraction == pytest.approx(2 / 3) and bob.result[1] < bob.finished
    assert queue.cancel(alice.id, "alice") is True
    queue.wait(alice.id, 60)
    assert alice.state == "cancelled" and alice.fraction == pytest.approx(2 / 3)
    assert queue.get(carol.id).state == "done" and alice.finished >= carol.finished
    assert alice.paused_s > 1.5 and alice.eta_s is None


def test_eta_text() -> None:
    assert format_eta(None) == "" and format_eta(30) == "about 30 s left" and format_eta(600) == "about 10 min left"


def test_the_time_left_follows_the_recent_pace_when_the_first_part_went_much_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session 53, image_only on a 60-patient cohort in the app: its CT came from the cache (0.1 of the bar in 9 s), then
    the lesion pretext moved the bar 0.75 in about 920 s. At 31 s the bar said "about 2 min left"; 15 min were left."""
    now = [1000.0]
    monkeypatch.setattr(jobs.time, "time", lambda: now[0])
    job = Job(id="1", owner="a", title="Training image_only", key=None, heavy=True, state="running", started=1000.0)

    def at(t: float, fraction: float) -> None:
        now[0] = 1000.0 + t
        job.fraction = fraction
        job.record_pace(fraction)

    at(2.0, 0.0)
    at(9.0, 0.1)  # the cached CT read
    for t in range(10, 41):  # the pretext: 0.75 of the bar in 920 s
        at(float(t), 0.1 + 0.75 * (t - 9) / 920)
        if t < job_state.PACE_S:  # no estimate before there is a pace to read (it said "about 44 s left" at 9 s)
            assert job.eta_s is None
    whole = job.own_s * (1 - job.fraction) / job.fraction
    left = 920 - 31 + 20  # at 40 s: the rest of the pretext, then about 20 s of ensemble members
    assert whole < 0.35 * left  # what the bar said before
    assert job.eta_s == pytest.approx(left, rel=0.35)
    assert len(job.pace) <= job_state.PACE_S + 3  # only the reports of the last PACE_S seconds are kept, and one before
    # an even pace: the two extrapolations agree
    even = Job(id="2", owner="a", title="t", key=None, heavy=True, state="running", started=1000.0)
    job = even
    for t in range(1, 61):
        at(float(t), t / 120)
    assert job.eta_s == pytest.approx(60.0, rel=0.02)
    # a break: the 100 s waited for another job count neither in the pace nor in the whole run
    job.paused_s += 100.0
    now[0] += 100.0
    at(61.0 + 100.0, 61 / 120)
    assert job.eta_s == pytest.approx(59.0, rel=0.03)
    # a milder slowdown (the last 30 s at 0.6 of the speed) keeps the whole run's estimate: a long part's pace
    # would also be applied to the faster parts after it (the fusions after image_only in "all 7")
    f = 61 / 120
    for t in range(62, 100):
        f += 0.6 / 120
        at(float(t) + 100.0, f)
    assert job.eta_s == pytest.approx((job.own_s) * (1 - f) / f, rel=1e-6)
    # paused for another user's job: its time left is added, and while it is unknown the paused job gives none
    # (it said "about 17 s left" while the other job still had 2 minutes to run); the break itself does not count
    # as the paused job's own time, so its own estimate stays where it was (it grew through the break)
    own = job.eta_s
    other = Job(id="3", owner="b", title="Evaluating", key=None, heavy=True, state="queued")
    job.waiting_for, job.paused_at = [other], now[0]
    assert job.eta_s is None
    other.state, other.started, other.fraction = "running", now[0], 0.0
    now[0] += 40.0
    other.fraction = 0.25
    other.record_pace(0.25)
    job.waiting_for = []
    assert job.eta_s == pytest.approx(own, rel=1e-6)
    job.waiting_for = [other]
    assert other.eta_s == pytest.approx(120.0) and job.eta_s == pytest.approx(own + 120.0, rel=1e-6)
    other.state = "done"  # ended: the paused job's own time again
    assert job.eta_s == pytest.approx(own, rel=1e-6)


def test_a_heavy_jobs_process_whose_server_is_gone_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A server restart closed the socket: the job's report fails, its clean-up runs, and the process says so in one
    line (it printed two tracebacks, EOFError or ConnectionResetError and then BrokenPipeError)."""
    import socket
    from multiprocessing.connection import Connection

    from core.job_process import child_main

    parent, child = socket.socketpair()
    parent.close()
    cleaned: list[bool] = []

    def job(ctx: JobContext) -> None:
        try:
            ctx.progress(0.5, "half")
        finally:
            cleaned.append(True)

    child_main(Connection(child.detach()), job, (), {}, 0, 1)  # returns: no exception escapes
    err = capsys.readouterr().err
    assert cleaned == [True] and err.count("\n") == 1 and "the server is gone" in err and "job failed" in err


def test_a_heavy_job_gets_every_cpu_but_one_or_what_the_server_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heavy jobs (training, a full-resolution CT's map) ran on one torch thread whatever the server: a 16-core
    hospital server trained on one core. One heavy job runs at a time; it now gets every CPU but one by default."""
    from core.cpus import HEAVY_THREADS_ENV, heavy_threads

    monkeypatch.delenv(HEAVY_THREADS_ENV, raising=False)
    assert heavy_threads() == max(len(os.sched_getaffinity(0)) - 1, 1)
    monkeypatch.setenv(HEAVY_THREADS_ENV, "3")
    monkeypatch.setattr(jobs, "_DEFAULT", None)  # a server started with the setting
    queue = jobs.default_queue()
    try:
        job = queue.submit("alice", "heavy", _heavy, 10, heavy=True)
        queue.wait(job.id, 120)
        assert job.state == "done", job.error
        assert job.result["pid"] != os.getpid() and job.result["threads"] == 3
    finally:
        queue.close()
    monkeypatch.setenv(HEAVY_THREADS_ENV, "many")
    with pytest.raises(InputError, match=HEAVY_THREADS_ENV):
        heavy_threads()


@pytest.fixture()
def replicas() -> tuple[JobQueue, JobQueue]:
    """Two replicas' queues (two servers sharing one data folder), as in one process."""
    a, b = (JobQueue(workers=2, max_active_per_user=4, heavy_threads=1) for _ in range(2))
    yield a, b
    a.close(), b.close()


def test_the_heavy_jobs_of_two_replicas_take_turns_in_the_site_queue(replicas, tmp_path) -> None:
    """Each replica ran its own heavy job whatever the others did: two trainings at once on one host, each with every
    core. With the site's queue a heavy job queued on replica B waits for the one queued earlier on replica A, says
    so, and a light job does not wait."""
    qa, qb = replicas
    site = tmp_path / "jobs" / "heavy"
    first = qa.submit("alice", "training", _heavy_slow, 2.0, heavy=True, site_dir=site)
    _running(first)
    second = qb.submit("bob", "evaluation", _heavy, 10, heavy=True, site_dir=site)
    light = qb.submit("bob", "light", _count, 3)
    qb.wait(light.id, 30)
    assert light.state == "done" and second.state == "queued" and qb.site_ahead(second.id) == 1
    assert qa.site_ahead(first.id) == 0 and len(list(site.glob("*.json"))) == 2
    qa.wait(first.id, 120), qb.wait(second.id, 120)
    assert first.state == "done" and second.state == "done", (first.error, second.error)
    assert second.result["t"] >= first.result + 2.0  # B's job started after A's ended
    assert list(site.glob("*.json")) == []  # every ticket given back


def test_a_dead_replicas_ticket_does_not_hold_the_site(replicas, tmp_path) -> None:
    """A replica that died (its process gone from this host, or another host's ticket not rewritten for STALE_S s)
    never holds the site's heavy slot; a live replica's ticket on another host does until it is given back."""
    import json
    import subprocess
    import sys

    from core import site_slots

    qa, _ = replicas
    site = tmp_path / "heavy"
    site.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (site / "00000000000000000001-dead-job1.json").write_text(
        json.dumps({"host": site_slots.HOST, "pid": int(gone.stdout), "queue": "dead"}))
    stale = site / "00000000000000000002-far-job1.json"
    stale.write_text(json.dumps({"host": "other-host", "pid": 1, "queue": "far"}))
    os.utime(stale, (time.time() - site_slots.STALE_S - 5,) * 2)
    job = qa.wait(qa.submit("alice", "map", _heavy, 5, heavy=True, site_dir=site).id, 120)
    assert job.state == "done", job.error
    assert sorted(p.name for p in site.glob("*.json")) == []  # both dead tickets removed
    live = site / "00000000000000000003-near-job9.json"
    live.write_text(json.dumps({"host": "other-host", "pid": 1, "queue": "near"}))
    job = qa.submit("alice", "map again", _heavy, 5, heavy=True, site_dir=site)
    time.sleep(2.0)
    assert job.state == "queued" and qa.site_ahead(job.id) == 1
    live.unlink()  # the other host's job ended
    assert qa.wait(job.id, 120).state == "done"


def test_a_long_heavy_job_makes_way_for_another_replicas_job_between_its_parts(replicas, tmp_path) -> None:
    """Alice's three-part job on replica A goes to the end of the site's queue at its first break when Bob's job was
    queued on replica B meanwhile: Bob's runs there, then Alice's goes on (not after her whole job)."""
    qa, qb = replicas
    site = tmp_path / "heavy"
    alice = qa.submit("alice", "every strategy", _heavy_parts, 3, 1.0, heavy=True, site_dir=site)
    _running(alice)
    bob = qb.submit("bob", "evaluation", _heavy_slow, 1.5, heavy=True, site_dir=site)
    _running(bob)
    assert alice.state == "running" and alice.message.startswith("paused: 1 queued job first")
    assert alice.fraction == pytest.approx(1 / 3) and alice.eta_s is None
    qa.wait(alice.id, 120)
    assert alice.state == "done" and bob.state == "done", (alice.error, bob.error)
    assert alice.result[0] < bob.result < alice.result[1]  # Bob's ran between Alice's first and second parts
    assert alice.paused_s > 1.5


def test_two_long_jobs_on_two_replicas_do_not_take_turns_at_every_break(replicas, tmp_path) -> None:
    """Bob's long job, queued on replica B during Alice's on replica A, runs whole in her first break and does not
    make way back for hers (her new ticket is newer, her job older): the two took turns at every break, and the
    first queued no longer finished first."""
    qa, qb = replicas
    site = tmp_path / "heavy"
    alice = qa.submit("alice", "every strategy", _heavy_parts, 3, 1.0, heavy=True, site_dir=site)
    _running(alice)
    bob = qb.submit("bob", "every strategy", _heavy_parts, 3, 0.5, heavy=True, site_dir=site)
    qa.wait(alice.id, 180), qb.wait(bob.id, 180)
    assert alice.state == "done" and bob.state == "done", (alice.error, bob.error)
    assert alice.result[0] < bob.result[0] and bob.result[2] < alice.result[1]  # all of Bob's in Alice's first break
    assert bob.paused_s == 0.0 and alice.paused_s > 1.5


def test_a_tickets_place_is_kept_when_a_stalled_server_finds_it_removed(tmp_path) -> None:
    from core.site_slots import SiteSlots

    a, b = SiteSlots(tmp_path, queue="A"), SiteSlots(tmp_path, queue="B")
    t1, t2 = a.enter("job1"), b.enter("job1")
    (tmp_path / t1).unlink()  # another replica took it for a dead one's while this server stalled
    assert b.turn(t2)
    a.keep(t1)  # the next rewrite puts it back where it was
    assert a.turn(t1) and not b.turn(t2) and b.others_ahead(t2) == 1


def test_a_job_waiting_for_another_replica_says_so(replicas, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's line for a heavy job queued behind another replica's (pages/_jobs.py): where the job ahead runs."""
    from pages import _jobs

    qa, qb = replicas
    monkeypatch.setattr(jobs, "_DEFAULT", qa)  # this replica's queue
    site = tmp_path / "heavy"
    other = qb.submit("bob", "training", _heavy_slow, 3.0, heavy=True, site_dir=site)
    _running(other)
    mine = qa.submit("alice", "Validating concat", _heavy, 5, heavy=True, site_dir=site)
    time.sleep(1.5)
    assert _jobs._status_text(mine) == ("Validating concat: queued (1 job ahead on another server of this site) · "
                                        "starts when the running training or evaluation ends or pauses")
    later = qa.submit("alice", "Validating cox", _heavy, 5, heavy=True, site_dir=site)
    assert _jobs._status_text(later).startswith("Validating cox: queued (2 jobs ahead, 1 on another server of this site)")
    for job in (other, mine, later):
        (qb if job is other else qa).wait(job.id, 120)
    assert [j.state for j in (other, mine, later)] == ["done"] * 3


def test_a_bad_site_setting_is_one_line(queue: JobQueue, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.site_slots import SLOTS_ENV

    monkeypatch.setenv(SLOTS_ENV, "two")
    with pytest.raises(InputError, match=f"{SLOTS_ENV}: got two, is not a whole number of at least 1; fix: set it"):
        queue.submit("alice", "map", _heavy, 5, heavy=True, site_dir=tmp_path)
    assert queue.jobs("alice") == [] and not list(tmp_path.iterdir())
