"""What a background job is, as its queue (:mod:`core.jobs`), its own process (:mod:`core.job_process`) and the pages
see it: :class:`Job` (state, progress, estimated time left), :class:`JobContext` (what the job's function is given)
and :class:`JobCancelled`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError
from core.site_slots import SiteSlots

ACTIVE = ("queued", "running")
PACE_S = 30.0  # the time left also follows the pace of the job's last this many seconds (its own, breaks left out)
PACE_SLOWER = 2.0  # ... when that pace says it is more than this many times the whole run's extrapolation


class JobCancelled(Exception):
    """Raised inside a job by ``ctx.progress`` once the user asked to cancel it."""


class ServerGone(Exception):
    """Raised inside a heavy job's own process when its server is gone (a restart, a crash): nobody reads its progress
    any more. Not a cancel: what the job unpacked for a training may be kept to start it again
    (``core.app.job_restart``)."""


class JobContext:
    """What a running job sees: ``progress(fraction, message)``, ``cancelled`` and ``yield_turn()``."""

    def __init__(self, report: Callable[[float, str], None], cancelled: Callable[[], bool],
                 yield_turn: Callable[[], None] | None = None) -> None:
        self._report = report
        self._cancelled = cancelled
        self._yield_turn = yield_turn

    @property
    def cancelled(self) -> bool:
        return self._cancelled()

    def progress(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1) done; raises :class:`JobCancelled` when a cancel was asked for."""
        if self._cancelled():
            raise JobCancelled()
        self._report(min(max(float(fraction), 0.0), 1.0), str(message))

    def yield_turn(self) -> None:
        """Between two independent parts of a long heavy job: let the heavy jobs queued meanwhile run first.

        Returns when they have ended (at once when none is queued, and always for a light job or a job that runs
        in another's break); raises :class:`JobCancelled` when a cancel was asked for, before or during the wait.
        """
        if self._cancelled():
            raise JobCancelled()
        if self._yield_turn is not None:
            self._yield_turn()
        if self._cancelled():
            raise JobCancelled()


@dataclass
class Job:
    """One job's state, as the pages read it (mutated only by the queue)."""

    id: str
    owner: str
    title: str
    key: str | None
    heavy: bool
    state: str = "queued"  # queued | running | done | failed | cancelled
    fraction: float = 0.0
    message: str = "waiting for a free worker"
    result: Any = None
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    paused_s: float = 0.0  # seconds spent waiting in yield_turn while other heavy jobs ran (breaks that ended)
    paused_at: float | None = None  # when the break going on now began
    waiting_for: list[Job] = field(default_factory=list, repr=False)  # the heavy jobs run in its break, now
    pace: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (own seconds, fraction) of the reports
    site: SiteSlots | None = field(default=None, repr=False)  # the site's heavy queue it holds a ticket in
    ticket: str | None = None
    fn: Callable[..., Any] | None = field(default=None, repr=False)
    args: tuple = field(default=(), repr=False)
    kwargs: dict = field(default_factory=dict, repr=False)
    on_end: Callable[[Job], None] | None = field(default=None, repr=False)  # run once it ended (JobQueue.submit)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def own_s(self) -> float:
        """Seconds run, without the time spent waiting for other jobs in a break (``paused_s`` and the break now)."""
        return self.elapsed_s - self.paused_s - (0.0 if self.paused_at is None else time.time() - self.paused_at)

    def record_pace(self, fraction: float) -> None:
        """Keep this report for :attr:`eta_s`: the reports of the last :data:`PACE_S` seconds and the newest before."""
        own = self.own_s
        self.pace.append((own, fraction))
        while len(self.pace) > 2 and own - self.pace[1][0] >= PACE_S:
            self.pace.pop(0)

    @property
    def eta_s(self) -> float | None:
        """Seconds left (None until there is enough progress), extrapolated from the whole run, or from the pace of
        its last :data:`PACE_S` seconds where that says more than :data:`PACE_SLOWER` times as much: a job whose first
        part went much faster than its bar's share (a training whose CT came from the cache, then a lesion pretext
        that takes minutes). A milder slowdown keeps the whole run's estimate, as a long part's pace would also be
        applied to the faster parts after it. Time spent waiting for other jobs in a break (``paused_s``) is not the
        job's own pace and is left out; in a break the jobs run in it (``waiting_for``) add their own time left (None
        while one of theirs is unknown). None in the first :data:`PACE_S` s: "all 7" said "about 44 s left" 9 s into
        a 9-minute run (a fast PHI check, CT read)."""
        if self.state != "running" or self.fraction < 0.02 or self.started is None or self.own_s < PACE_S:
            return None
        if self.paused_at is not None and self.site is not None:
            return None  # in a break for the site's queue: another replica's jobs' time left is not known here
        others = [o.eta_s if o.state == "running" else None for o in self.waiting_for if o.active]
        if None in others:
            return None
        own, left = self.own_s, 1.0 - self.fraction
        eta = own * left / self.fraction
        if self.pace and own - self.pace[0][0] >= PACE_S and self.fraction > self.pace[0][1]:
            t0, f0 = self.pace[0]
            recent = (own - t0) * left / (self.fraction - f0)
            eta = recent if recent > PACE_SLOWER * eta else eta
        return max(eta, 0.0) + sum(o for o in others if o is not None)


def one_line(exc: BaseException) -> str:
    """An exception as one line: InputError text as is, anything else with its type name."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text}"
