"""One background job queue for long work: training, strategy comparison, whole-volume explanations.

A job is a function ``fn(ctx, *args, **kwargs)`` that reports its progress through ``ctx.progress(fraction, message)``
(the same ``(float, str)`` signature that long core functions take as ``progress``) and stops when the user cancels:
``ctx.progress`` raises :class:`JobCancelled` once a cancel was asked for.

* **One queue, bounded workers.** :func:`default_queue` is one process-wide queue with ``workers`` threads (2 by
  default, ``CTEHR_JOB_WORKERS``). One *heavy* job (training, comparison) runs at a time; light ones beside it.
* **Heavy jobs run in their own process** (a fresh ``python -m core.job_process`` interpreter, ``nice``-ed by
  ``HEAVY_NICE``, torch limited to ``heavy_threads`` threads there: every CPU but one by default), so training never
  changes the serving process's threads, warnings or memory, and a cancel that the job does not honour within
  ``CANCEL_GRACE_S`` ends it. Their function, arguments and result must be picklable (a top-level function).
* **Per user.** Each job has an owner (the signed-in user's id); an owner has at most ``max_active_per_user`` jobs
  queued or running, sees and cancels only their own jobs, and a ``key`` de-duplicates: submitting a key that the
  owner already has queued, running or done returns that job instead of a new one.
* **Long heavy jobs make way.** A long heavy job calls ``ctx.yield_turn()`` between its parts (a training every
  100 pretext steps, the strategies of a comparison, the models of an evaluation): the heavy jobs queued by then run
  first, one after another, in the same worker, while the long job's process waits; then it goes on. So one
  user's 17-minute comparison holds up another user's evaluation by one part, not by the whole job, and still
  only one heavy job computes at a time. A job run in such a break does not itself make way (no nesting).
* **One heavy queue for the site.** A heavy job submitted with ``site_dir`` (the app passes ``<data dir>/jobs/heavy``)
  also takes a ticket there (:mod:`core.site_slots`): replicas that share the data folder run their heavy jobs one at
  a time (``CTEHR_SITE_HEAVY_JOBS``), first queued first, and a long job's break makes way for theirs too.
* Finished jobs are kept ``keep_finished_s`` s, then forgotten; what must outlive the server is written to disk.

The queue holds no Streamlit state: ``pages/_jobs.py`` draws a job's progress, estimate and cancel button.
"""

from __future__ import annotations

import atexit
import logging
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from core import job_pickle
from core.errors import InputError
from core.job_state import Job, JobCancelled, JobContext, one_line
from core.site_slots import REFRESH_S, SiteSlots

CANCEL_GRACE_S = 5.0
HEAVY_NICE = 10
MAX_ACTIVE_PER_USER = int(os.environ.get("CTEHR_JOBS_PER_USER", "4"))


class JobQueue:
    """A bounded, per-user background job queue (see the module docstring)."""

    def __init__(self, workers: int = 2, max_active_per_user: int = MAX_ACTIVE_PER_USER,
                 keep_finished_s: float = 3600.0, heavy_threads: int = 1) -> None:
        if workers < 1:
            raise InputError("workers", workers, "must be at least 1", "use 1 or more worker threads")
        self.max_active_per_user = int(max_active_per_user)
        self.keep_finished_s = float(keep_finished_s)
        self.heavy_threads = int(heavy_threads)
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._heavy_running = False
        self._closed = False
        self._children: set[Any] = set()
        self.id = uuid.uuid4().hex[:12]  # this queue's tickets in the site's heavy queue
        self._sites: dict[str, SiteSlots] = {}
        self._threads = [threading.Thread(target=self._work, name=f"ctehr-job-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ public API
    def submit(self, owner: str, title: str, fn: Callable[..., Any], *args: Any, key: str | None = None,
               heavy: bool = False, fresh: bool = False, site_dir: str | os.PathLike | None = None,
               others_active: int = 0, on_end: Callable[[Job], None] | None = None, **kwargs: Any) -> Job:
        """Queue ``fn(ctx, *args, **kwargs)`` for ``owner``, or return its job of ``key`` (active, or done unless ``fresh``);
        a heavy job with ``site_dir`` also waits its turn in the site's heavy queue there (:mod:`core.site_slots`);
        ``others_active``: the owner's jobs that other replicas run, counted toward the per-user limit; ``on_end(job)``
        runs once the job ended, however (an ``OSError`` it raises is logged)."""
        if not owner:
            raise InputError("job owner", owner, "is empty", "sign in, or run the job from a browser session")
        with self._cond:
            self._forget_old()
            if key is not None:
                found = self._find(owner, key)
                if found is not None and (found.active or found.state == "done" and not fresh):
                    return found
            active = len([j for j in self._jobs.values() if j.owner == owner and j.active]) + others_active
            if active >= self.max_active_per_user:
                there = f" ({others_active} on {'another server' if others_active == 1 else 'other servers'} of this " \
                        "site)" if others_active else ""
                raise InputError("background jobs", f"{active} queued or running{there}",
                                 f"reach the limit of {self.max_active_per_user} per user",
                                 "wait for one to finish or cancel one")
            job = Job(id=f"job{next(self._ids)}", owner=owner, title=title, key=key, heavy=heavy,
                      fn=fn, args=args, kwargs=kwargs, on_end=on_end)
            if heavy and site_dir is not None:
                site = self._sites.get(os.fspath(site_dir)) or SiteSlots(site_dir, queue=self.id)  # checks the setting
                if not self._sites:
                    threading.Thread(target=self._keep_tickets, name="ctehr-job-tickets", daemon=True).start()
                job.site = self._sites.setdefault(os.fspath(site_dir), site)
                job.ticket = site.enter(job.id)
            self._jobs[job.id] = job
            self._order.append(job.id)
            self._cond.notify_all()
            return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job ``job_id`` (None when unknown, forgotten, or owned by someone else than ``owner``)."""
        with self._cond:
            job = self._jobs.get(job_id)
            return job if job is not None and (owner is None or job.owner == owner) else None

    def find(self, owner: str, key: str) -> Job | None:
        """The owner's newest job of ``key``."""
        with self._cond:
            return self._find(owner, key)

    def jobs(self, owner: str) -> list[Job]:
        """The owner's jobs, oldest first."""
        with self._cond:
            self._forget_old()
            return [self._jobs[i] for i in self._order if self._jobs[i].owner == owner]

    def position(self, job_id: str) -> int:
        """How many queued jobs are ahead of ``job_id`` (0 when it runs or is next)."""
        with self._cond:
            queued = [i for i in self._order if self._jobs[i].state == "queued"]
            return queued.index(job_id) if job_id in queued else 0

    def site_ahead(self, job_id: str) -> int:
        """How many heavy jobs of other replicas are ahead of the queued ``job_id`` in the site's queue."""
        with self._cond:
            job = self._jobs.get(job_id)
            site, ticket = (job.site, job.ticket) if job is not None and job.state == "queued" else (None, None)
        return 0 if site is None or ticket is None else site.others_ahead(ticket)

    @property
    def heavy_busy(self) -> bool:
        """Whether a heavy job is running now (a queued heavy job waits for its end or its next break)."""
        with self._cond:
            return self._heavy_running

    def cancel(self, job_id: str, owner: str) -> bool:
        """Ask to cancel the owner's job; a queued one ends at once, a running one at its next progress report."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.owner != owner or not job.active:
                return False
            job.cancel_requested = True
            if job.state == "queued":
                self._finish(job, "cancelled", message="cancelled before it started")
            else:
                job.message = "cancelling..."
            return True

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job has ended (tests and the command line); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self._jobs[job_id]
                if not job.active:
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
                self._cond.wait(timeout=left if left is not None else 1.0)

    def close(self) -> None:
        """Stop the workers and end running heavy jobs' processes (at interpreter exit)."""
        with self._cond:
            self._closed = True
            for job in self._jobs.values():
                job.cancel_requested = job.cancel_requested or job.active
                if job.site is not None and job.ticket is not None:
                    job.site.leave(job.ticket)  # the site's queue goes on without this server's jobs
            self._cond.notify_all()
            children = list(self._children)
        for proc in children:
            if proc.poll() is None:
                proc.kill()

    # ------------------------------------------------------------------ internals
    def _find(self, owner: str, key: str) -> Job | None:
        for i in reversed(self._order):
            j = self._jobs[i]
            if j.owner == owner and j.key == key:
                return j
        return None

    def _forget_old(self) -> None:
        now = time.time()
        for i in list(self._order):
            j = self._jobs[i]
            if j.finished is not None and now - j.finished > self.keep_finished_s:
                del self._jobs[i]
                self._order.remove(i)

    def _finish(self, job: Job, state: str, *, result: Any = None, error: str | None = None, message: str = "") -> None:
        job.state, job.result, job.error = state, result, error
        job.finished = time.time()
        job.message = message or {"done": "done", "failed": error or "failed", "cancelled": "cancelled"}[state]
        if state == "done":
            job.fraction = 1.0
        job.fn, job.args, job.kwargs = None, (), {}
        if job.site is not None and job.ticket is not None:
            job.site.leave(job.ticket)
        if job.on_end is not None and not self._closed:  # a job the server's end stops has not ended: its record stays
            try:
                job.on_end(job)
            except OSError as err:  # e.g. a record that could not be removed: the heartbeat removes it later
                logging.getLogger(__name__).warning("job %s: its end was not recorded: %s", job.id, err)
        self._cond.notify_all()

    def _next(self) -> Job | None:
        for i in self._order:
            j = self._jobs[i]
            if j.state == "queued" and not (j.heavy and self._heavy_running) and \
                    (j.site is None or j.ticket is None or j.site.turn(j.ticket)):
                return j
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._next()
                while job is None and not self._closed:
                    self._cond.wait(timeout=1.0)
                    job = self._next()
                if self._closed:
                    return
                job.state, job.started, job.message = "running", time.time(), "starting"
                if job.heavy:
                    self._heavy_running = True
            try:
                if job.heavy:
                    self._run_in_process(job)
                else:
                    self._run_here(job)
            finally:
                with self._cond:
                    if job.heavy:
                        self._heavy_running = False
                    if job.active:  # defensive: a runner always finishes its job
                        self._finish(job, "failed", error="the job ended without a result")
                    self._cond.notify_all()

    def _report(self, job: Job, fraction: float, message: str) -> None:
        with self._cond:
            if job.state == "running":
                job.fraction, job.message = fraction, message or job.message
                job.record_pace(fraction)
                self._cond.notify_all()

    def _run_here(self, job: Job) -> None:
        ctx = JobContext(lambda f, m: self._report(job, f, m), lambda: job.cancel_requested)
        fn, args, kwargs = job.fn, job.args, job.kwargs
        assert fn is not None
        try:
            result = fn(ctx, *args, **kwargs)
        except JobCancelled:
            with self._cond:
                self._finish(job, "cancelled")
            return
        except Exception as exc:  # noqa: BLE001 - any failure of a job is its one-line error, the worker lives on
            with self._cond:
                self._finish(job, "failed", error=one_line(exc))
            return
        with self._cond:
            self._finish(job, "cancelled" if job.cancel_requested else "done", result=result)

    def _others_first(self, job: Job) -> None:
        """``job`` (a heavy job) called ``yield_turn``: run the heavy jobs queued by now, one after another, here; with
        a site's queue it also goes to the end of that queue, so other replicas' heavy jobs queued by now run first."""
        site, ticket = job.site, job.ticket
        elsewhere = site.others_after(ticket) if site is not None and ticket is not None else 0
        with self._cond:
            waiting = [self._jobs[i] for i in self._order if self._jobs[i].state == "queued" and self._jobs[i].heavy]
            if not waiting and not elsewhere:
                return
            job.paused_at = paused_at = time.time()
            message, job.waiting_for = job.message, waiting
            n = len(waiting) + elsewhere
            job.message = f"paused: {n} queued job{'s' if n != 1 else ''} first, then this one"
            if elsewhere and site is not None and ticket is not None:
                job.ticket = site.enter(job.id, after=ticket)  # behind them, still queued since it was
                site.leave(ticket)
        for other in waiting:  # keeping its ticket, the job lends its turn to them; else they wait for theirs
            if elsewhere and not self._await_turn(other, job):
                continue  # cancelled meanwhile, or the server is stopping
            with self._cond:
                if other.state != "queued" or self._closed:
                    continue
                other.state, other.started, other.message = "running", time.time(), "starting"
            try:
                self._run_in_process(other, nested=True)
            finally:
                with self._cond:
                    if other.active:  # defensive, as in _work
                        self._finish(other, "failed", error="the job ended without a result")
        if elsewhere:
            self._await_turn(job, job)
        with self._cond:
            job.paused_s, job.paused_at, job.waiting_for = job.paused_s + time.time() - paused_at, None, []
            job.message = "cancelling..." if job.cancel_requested else message

    def _await_turn(self, job: Job, paused: Job) -> bool:
        """Wait until ``job``'s ticket has its turn in the site's queue (at once without one); False when ``job`` (if
        queued) or the ``paused`` job whose break this is was cancelled meanwhile, or the server is stopping."""
        while True:
            with self._cond:
                if self._closed or paused.cancel_requested or job is not paused and job.state != "queued":
                    return False
                site, ticket = job.site, job.ticket
            if site is None or ticket is None or site.turn(ticket):
                return True
            with self._cond:
                self._cond.wait(timeout=0.5)

    def _keep_tickets(self) -> None:
        """Every :data:`core.site_slots.REFRESH_S` s: rewrite the tickets of this queue's queued and running heavy jobs
        (under the queue's lock, so that a job's end, which gives its ticket back, never races a rewrite)."""
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._closed, timeout=REFRESH_S):
                    return
                for job in self._jobs.values():
                    if job.active and job.site is not None and job.ticket is not None:
                        job.site.keep(job.ticket)

    def _run_in_process(self, job: Job, nested: bool = False) -> None:
        """Run the heavy ``job`` in its own process (``nested``: in another heavy job's break, making no way itself)."""
        proc, conn = _start_child(job, self.heavy_threads)
        with self._cond:
            self._children.add(proc)
        outcome: tuple | None = None
        try:
            cancel_sent_at: float | None = None
            while outcome is None:
                if job.cancel_requested and cancel_sent_at is None:
                    cancel_sent_at = time.monotonic()
                    try:
                        conn.send("cancel")
                    except OSError:
                        pass  # the process already ended; its exit is handled below
                if cancel_sent_at is not None and time.monotonic() - cancel_sent_at > CANCEL_GRACE_S:
                    outcome = ("cancelled", None)
                    break
                if conn.poll(0.2):
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is None:
                        proc.wait(5)
                        outcome = ("cancelled", None) if job.cancel_requested else \
                            ("failed", f"the job's process ended without a result (exit code {proc.returncode}; out of memory?)")
                    elif msg[0] == "progress":
                        self._report(job, msg[1], msg[2])
                    elif msg[0] == "yield":
                        if not nested and not job.cancel_requested:
                            self._others_first(job)
                        try:
                            conn.send("cancel" if job.cancel_requested else "go")
                        except OSError:
                            pass  # the process already ended; its exit is handled below
                        if job.cancel_requested and cancel_sent_at is None:
                            cancel_sent_at = time.monotonic()
                    else:
                        outcome = msg
                elif proc.poll() is not None:
                    outcome = ("cancelled", None) if job.cancel_requested else \
                        ("failed", f"the job's process ended without a result (exit code {proc.returncode}; out of memory?)")
        finally:
            if proc.poll() is None:
                try:
                    proc.wait(10 if outcome is not None and outcome[0] != "cancelled" else 0.1)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            conn.close()
            with self._cond:
                self._children.discard(proc)
        state, payload = outcome
        with self._cond:
            if state == "done":
                self._finish(job, "done", result=payload)
            elif state == "failed":
                self._finish(job, "failed", error=str(payload))
            else:
                self._finish(job, "cancelled")


def _start_child(job: Job, threads: int) -> tuple[subprocess.Popen, Connection]:
    """Start ``python -m core.job_process FD`` (the heavy job's own process) with a socket to it and send it the job
    (``core.job_pickle``): a fresh interpreter that imports only what the job needs (``multiprocessing``'s spawn would
    re-run the parent's ``__main__``: under Streamlit, the app script)."""
    parent_sock, child_sock = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "core.job_process", str(child_sock.fileno())],
                                pass_fds=(child_sock.fileno(),), env=env, stdin=subprocess.DEVNULL)
    finally:
        child_sock.close()
    conn = Connection(parent_sock.detach())
    conn.send_bytes(job_pickle.dumps((job.fn, job.args, job.kwargs, HEAVY_NICE, threads)))
    return proc, conn


_DEFAULT: JobQueue | None = None
_DEFAULT_LOCK = threading.Lock()


def close_default() -> None:
    """Close the process-wide queue if it was made (its running heavy jobs' processes end): the server's shutdown,
    which under uvicorn may be the last code that runs (a SIGTERM then ends the process without ``atexit``)."""
    with _DEFAULT_LOCK:
        queue = _DEFAULT
    if queue is not None:
        queue.close()


def default_queue() -> JobQueue:
    """The process-wide queue (created on first use; closed at interpreter exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            from core.cpus import heavy_threads  # CTEHR_HEAVY_THREADS, or every CPU but one

            _DEFAULT = JobQueue(workers=int(os.environ.get("CTEHR_JOB_WORKERS", "2")), heavy_threads=heavy_threads())
            atexit.register(_DEFAULT.close)
        return _DEFAULT
