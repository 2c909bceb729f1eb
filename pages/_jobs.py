"""Background jobs on a page: progress with an estimate, a cancel button, the user's job list (core.jobs)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from core.app import job_journal, job_restart, paths
from core.app import workspace as workspaces
from core.app.background import UPLOAD_JOBS
from core.durations import format_eta
from core.jobs import Job, default_queue
from core.job_pickle import paths_in
from pages import _chrome as chrome
from pages import _session as session
from pages import _state as K

POLL_S = 2.0  # seconds between progress refreshes (a run_every fragment; see README Limitations)
LOG = logging.getLogger(__name__)


def owner() -> str:
    """Whose jobs these are: the signed-in user's id ("local" when the server runs without sign-in)."""
    return session.user_id() or "anonymous"


def site_queue() -> Path:
    """The folder of the site's heavy queue (``core.site_slots``): replicas sharing the data folder take turns there."""
    return paths.data_dir() / "jobs" / "heavy"


def _elsewhere() -> int:
    """How many of this user's jobs other replicas run (their records; one may be counted up to 20 s after its end):
    the per-user limit holds for the site, not for each replica."""
    try:
        return len(job_journal.elsewhere(workspaces.user_root(owner()), paths.data_dir()))
    except OSError as err:  # an unreadable folder: this replica's own jobs are counted, as before
        LOG.warning("the user's jobs on other servers not read: %s", err)
        return 0


def submit(title: str, fn: Callable[..., Any], *args: Any, key: str | None = None, heavy: bool = False,
           fresh: bool = False, journal: bool | None = None, resume: str = "", **kwargs: Any) -> Job | None:
    """Queue ``fn(ctx, *args, **kwargs)`` for this user; a one-line error (and None) when the per-user limit is hit.

    ``fresh``: a finished job of the same ``key`` is not returned instead (its result is gone). ``journal``: whether a
    server restart that stops it is told to the user (default: for heavy jobs; a map is asked for again by viewing
    it), with how to start it again when it is a training (``core.app.job_restart``); ``resume``: the cohort folder
    of a stopped upload that this restarted training reads (dismissing a stop of it removes that folder)."""
    job = None
    recorded = heavy if journal is None else journal
    user_dir = workspaces.user_root(owner())
    with chrome.core_errors(stop=False):
        job = default_queue().submit(owner(), title, fn, *args, key=key, heavy=heavy, fresh=fresh,
                                     site_dir=site_queue() if heavy else None, others_active=_elsewhere(),
                                     on_end=(lambda j: job_journal.forget(user_dir, j.id)) if recorded else None,
                                     **kwargs)
    if job is not None and recorded and job.active:  # a training, validation or evaluation
        try:  # on disk too, so that a server restart that stops it is told to the user (core.app.job_journal)
            job_journal.record(user_dir, job.id, title, paths.data_dir(), upload=fn in UPLOAD_JOBS,
                               reads=paths_in((args, kwargs)), restart=job_restart.spec(fn, args, kwargs, key),
                               resume=resume)
        except OSError as err:  # the job runs all the same; only a restart's notice would be missing
            LOG.warning("job %s not written down: %s", job.id, err)
    return job


def submit_audited(audits: list[tuple[str, str, dict[str, Any]]], title: str, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> Job | None:
    """:func:`submit`, then each ``(action, target, details)`` of ``audits`` recorded: a job the per-user limit
    refuses is not recorded as done, and one whose record cannot be written is cancelled (nothing runs unaudited)."""
    job = submit(title, fn, *args, **kwargs)
    if job is None:
        return None
    recorded = False
    try:
        for action, target, details in audits:
            session.audit(action, target, **details)
        recorded = True
    finally:
        if not recorded:
            default_queue().cancel(job.id, owner())
    return job


def mine() -> list[Job]:
    """This user's jobs, oldest first (queued, running and recently ended)."""
    return default_queue().jobs(owner())


def readers() -> list[Any]:
    """This user's jobs that may read a folder: this server's (:func:`mine`) and those other replicas run, from their
    records (``core.app.job_journal.elsewhere``): what deleting a model or a cohort is checked against."""
    return [*mine(), *job_journal.elsewhere(workspaces.user_root(owner()), paths.data_dir())]


def find(key: str) -> Job | None:
    """This user's newest job of ``key``."""
    return default_queue().find(owner(), key)


def _status_text(job: Job) -> str:
    if job.state == "queued":
        ahead = default_queue().position(job.id)
        elsewhere = default_queue().site_ahead(job.id) if job.heavy else 0
        # trainings and evaluations run one at a time; a comparison of every strategy makes way between strategies
        waits = " · starts when the running training or evaluation ends or pauses" \
            if job.heavy and (default_queue().heavy_busy or elsewhere) else ""
        ahead += elsewhere
        where = f"{'another server' if elsewhere == 1 else 'other servers'} of this site"
        there = "" if not elsewhere else f" on {where}" if elsewhere == ahead else f", {elsewhere} on {where}"
        return f"{job.title}: queued" + (f" ({ahead} job{'s' if ahead != 1 else ''} ahead{there})" if ahead else "") + waits
    eta = format_eta(job.eta_s)
    return f"{job.title}: {job.message}" + (f" · {eta}" if eta else "") + f" · {job.elapsed_s:.0f} s"


def show(job: Job, *, cancel_label: str = "Cancel", place: str = "") -> None:
    """Draw a running or queued job (progress, estimate, cancel), refreshed every second without blocking the page;
    ``place`` tells its cancel button from the same job's drawn elsewhere on the page (the sidebar's).

    When the job ends the whole page reruns once, so the caller draws its result.
    """

    @st.fragment(run_every=POLL_S)
    def live() -> None:
        current = default_queue().get(job.id, owner())
        if current is None or not current.active:
            st.rerun(scope="app")
            return
        row = st.container(horizontal=True, vertical_alignment="center")  # the button as wide as its label
        row.progress(current.fraction, text=chrome.md(_status_text(current)))  # a title may quote a user's column
        if row.button(cancel_label, key=f"cancel_{place}{current.id}", disabled=current.cancel_requested, width="content"):
            default_queue().cancel(current.id, owner())
            st.rerun(scope="fragment")

    live()


def outcome(job: Job) -> bool:
    """Report how an ended job went; True when it is done and its result can be drawn."""
    if job.state == "failed":
        st.error(f"{chrome.md(job.title)} failed: {chrome.md(job.error)}")
    elif job.state == "cancelled":
        st.warning(f"{chrome.md(job.title)} was cancelled.")
    return job.state == "done"


def follow(job: Job | None) -> bool | None:
    """A job this page started and waits for: drawn with :func:`show` while queued or running (None), or, once it
    ended, how it went (:func:`outcome`: True when done and its result can be kept, False when failed or cancelled;
    the caller then forgets the job). None without a job."""
    if job is None or job.active:
        if job is not None:
            show(job)
        return None
    return outcome(job)


def latest(prefix: str) -> Job | None:
    """This user's newest job whose key starts with ``prefix``: a page opened anew (a reload, another tab, a sign-in
    again) finds the job it started before, with its progress, its cancel button and then its result."""
    return next((j for j in reversed(default_queue().jobs(owner())) if (j.key or "").startswith(prefix)), None)


def stopped_notices() -> None:
    """In the sidebar: each of the user's jobs that a server restart stopped (once found, until dismissed), what of
    it was removed, and how to start it again: a training with its settings on record, by a button ("Start again",
    ``core.app.job_restart``); any other job from its page, an upload's whose cohort was not kept by uploading it."""
    _restarted()
    user_dir = workspaces.user_root(owner())
    try:
        stopped = job_journal.interrupted(user_dir, paths.data_dir())
    except OSError as err:  # a full or read-only disk: the page goes on without the notice
        LOG.warning("stopped jobs not read: %s", err)
        return
    for rec in stopped:
        if rec.upload:  # its own process usually removed the cohort as the server went: say so however it went
            said = ["the cohort it unpacked is kept for the models it finished" if rec.kept
                    else "nothing of its upload was kept"]
        else:
            gone = [r for r in rec.removed if r.startswith(job_journal.COHORTS + "/")]
            said = ["the cohort it was building from MEDS was removed"
                    if gone[0].startswith(f"{job_journal.COHORTS}/{workspaces.MEDS_PREFIX}")
                    else "the cohort it had unpacked was removed"] if gone else []
        if any(r.startswith(job_journal.MODELS + "/") for r in rec.removed):
            said.append("the model it was writing was removed")
        again = job_restart.plan(rec.restart, user_dir, rec.resume, _device()) if rec.restart else None
        if again in job_restart.FINISHED:  # it ended as its server stopped, before its record went: not stopped
            job_journal.dismiss(user_dir, rec.name, restarted=True)
            continue
        if isinstance(again, job_restart.Restart) and rec.resume:
            said = ["the cohort it unpacked is kept to start it again"]
        with st.sidebar.container(border=True):
            st.warning(f"{chrome.md(rec.title)} (queued {time.strftime('%d %b %H:%M', time.localtime(rec.queued_at))}) was "
                       "stopped when the server restarted" + "".join(f"; {part}" for part in said) + _how_again(rec, again))
            row = st.container(horizontal=True)
            if isinstance(again, job_restart.Restart) and row.button(
                    "Start again", key=f"restart_{rec.name}", icon=":material/replay:", type="primary"):
                _start_again(user_dir, rec, again)
            if row.button("Dismiss", key=f"dismiss_{rec.name}", type="tertiary"):
                job_journal.dismiss(user_dir, rec.name)
                st.rerun()


def _how_again(rec: job_journal.Record, again: job_restart.Restart | str | None) -> str:
    """The end of a stopped job's notice: how it can be started again."""
    if isinstance(again, job_restart.Restart):
        left = len(again.fusions)
        return f". Start it again with the same settings{f' (the {left} strategies not finished)' if left > 1 else ''}."
    if rec.upload:
        return ". Upload the cohort zip again to start it again."
    if isinstance(again, str):
        return f"; it cannot be started again here: {chrome.md(again)}. Start it again from its page."
    return ". Start it again."


def _device() -> str:
    from core import runtime  # torch: only when a stopped training is to be started again

    return runtime.device_name()


def _start_again(user_dir: Path, rec: job_journal.Record, again: job_restart.Restart) -> None:
    """Queue a stopped training again (audited as a training, checked against the disk quota) and drop its notice."""
    from core.app.background import expected_model_bytes

    taken = job_journal.claim(user_dir, rec.name)  # another tab or replica may have started it a moment ago
    if taken is None:
        st.rerun()
    job = None
    try:
        with chrome.core_errors(stop=False):
            workspaces.check_quota(owner(), expected_model_bytes(list(again.fusions)))
            job = submit_audited([("train", f, {"restarted": True}) for f in again.fusions], rec.title, again.fn,
                                 *again.args, key=again.key, heavy=True, resume=rec.resume, **again.kwargs)
    finally:
        if job is None:
            job_journal.unclaim(taken)  # refused (quota, the per-user limit): the notice stays, with its error
        else:
            taken.unlink(missing_ok=True)
    if job is not None:
        st.session_state[K.TRAIN_JOB] = job.id  # Train on your cohort follows it as one started there
        st.session_state.setdefault(K.RESTARTED_JOBS, []).append(job.id)
        st.rerun()


def _restarted() -> None:
    """In the sidebar, where its notice was: each training this session started again, with its progress and its
    cancel button, while it is queued or running (then in the list of background jobs, with its result)."""
    for job_id in st.session_state.get(K.RESTARTED_JOBS, []):
        job = default_queue().get(job_id, owner())
        if job is not None and job.active:
            with st.sidebar.container(border=True):
                st.caption("Started again after the server's restart")
                show(job, place="restarted_")


def sidebar_list() -> None:
    """The user's jobs in the sidebar (state, progress and a cancel button for each running or queued one), kept
    current every ``POLL_S`` while one is active; when one ends the page reruns once, so it draws its result."""
    stopped_notices()
    jobs = default_queue().jobs(owner())
    if not jobs:
        return
    active = any(j.active for j in jobs)

    @st.fragment(run_every=POLL_S if active else None)
    def listing() -> None:
        current = default_queue().jobs(owner())
        if active and not any(j.active for j in current):
            st.rerun(scope="app")
            return
        with st.expander(f"Background jobs ({sum(j.active for j in current)} running or queued)", expanded=False):
            for j in reversed(current[-6:]):
                mark = {"queued": "⏳", "running": "▶", "done": "✓", "failed": "✗", "cancelled": "■"}[j.state]
                pct = f" {j.fraction:.0%}" if j.state == "running" else ""
                row = st.container(horizontal=True, vertical_alignment="center")
                row.caption(f"{mark} {chrome.md(j.title)}{pct} ({'cancelling' if j.cancel_requested and j.active else j.state})")
                if j.active and row.button("Cancel", key=f"sidebar_cancel_{j.id}", disabled=j.cancel_requested,
                                           width="content", type="tertiary"):
                    default_queue().cancel(j.id, owner())
                    st.rerun(scope="fragment")

    with st.sidebar:
        listing()
