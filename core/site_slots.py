"""One queue of heavy jobs for the whole site: replicas that share a data folder take turns for the heavy slots.

Each replica (one ``streamlit run app.py`` process) runs its own job queue (:mod:`core.jobs`). Before this, each also
ran its own heavy job (a training, a comparison, a full-resolution CT's map) whatever the others did: two replicas on
one host trained at once, each with every core, and a user's job on one replica did not wait its turn behind a job
queued earlier on another. Now a heavy job takes a **ticket** in ``<data dir>/jobs/heavy/`` when it is queued, and
runs once at most ``slots`` live tickets older than its own remain (1 by default, ``CTEHR_SITE_HEAVY_JOBS``): the
heavy jobs of all replicas run one at a time, first queued first, as those of one replica always did.

* A ticket is a small JSON file named ``<nanoseconds>-<queue>-<job>.json`` (the name orders the queue), holding the
  host, process id and queue that took it and when its job was first queued (a long job that makes way in a break
  takes a new ticket at the end but keeps that time: :meth:`SiteSlots.others_after`); it is made under an exclusive
  ``flock`` of ``heavy/.lock``, so two replicas never take the same place.
* Its queue rewrites its time every :data:`REFRESH_S` seconds while the job is queued or running (:meth:`SiteSlots.keep`)
  and removes it when the job ends (:meth:`SiteSlots.leave`). A ticket of a process gone from this host is dropped at
  once, and one not refreshed for :data:`STALE_S` seconds (a replica on another host that died, a reused process
  id) at the next look, so a crashed replica never holds the site's slot.
* A ticket names no user: only how many jobs are ahead is shown.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp()) / "heavy"
>>> a, b = SiteSlots(folder, queue="replicaA"), SiteSlots(folder, queue="replicaB")
>>> t1 = a.enter("job1"); t2 = b.enter("job7"); t3 = a.enter("job2")
>>> [a.ahead(t) for t in (t1, t2, t3)], a.turn(t1), b.turn(t2)
([0, 1, 2], True, False)
>>> b.others_ahead(t2), a.others_ahead(t3), a.others_after(t1)  # B's job waits for one of A's, A's second for B's
(1, 1, 1)
>>> a.leave(t1); b.turn(t2), a.turn(t3)
(True, False)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import InputError

SLOTS_ENV = "CTEHR_SITE_HEAVY_JOBS"
REFRESH_S = 15.0  # a queue rewrites its tickets this often
STALE_S = 90.0  # a ticket not rewritten for this long belongs to a replica that is gone
HOST = socket.gethostname()


def site_slots() -> int:
    """How many heavy jobs the site runs at once: ``$CTEHR_SITE_HEAVY_JOBS`` (a whole number of at least 1), else 1."""
    raw = os.environ.get(SLOTS_ENV, "1").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(SLOTS_ENV, raw, "is not a whole number of at least 1",
                         "set it to how many heavy jobs the site's replicas may run at once (1 by default)")
    return int(raw)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user counts; a pid out of range does not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's process of that id
    return True


class SiteSlots:
    """The heavy-job tickets of one data folder, as one queue (``queue``: the replica's id) sees them."""

    def __init__(self, folder: Path | str, *, queue: str, slots: int | None = None) -> None:
        self.folder = Path(folder)
        self.queue = str(queue)
        self.slots = site_slots() if slots is None else int(slots)
        if self.slots < 1:
            raise InputError("site heavy slots", self.slots, "is below 1", "allow at least one heavy job at a time")
        self._since: dict[str, int] = {}  # this queue's tickets: when their job was first queued (ns)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def enter(self, job: str, *, after: str | None = None) -> str:
        """A ticket for ``job`` at the end of the site's queue (its file name); ``after``: the job's ticket before
        (it makes way in a break), whose first queueing time the new one keeps (see :meth:`others_after`)."""
        with self._locked():
            now = time.time_ns()
            name = f"{now:020d}-{self.queue}-{job}.json"
            self._since[name] = self._since.get(after, now) if after is not None else now
            self._write(name)
            return name

    def leave(self, ticket: str) -> None:
        """Give the ticket back (the job ended, or goes to the end of the queue with a new one)."""
        (self.folder / ticket).unlink(missing_ok=True)
        self._since.pop(ticket, None)

    def keep(self, ticket: str) -> None:
        """Rewrite the time of this queue's live ``ticket``, so that no replica takes it for a dead one's; written
        again, in its place, when a replica removed it as stale (this server stalled for :data:`STALE_S` s)."""
        try:
            os.utime(self.folder / ticket)
        except FileNotFoundError:
            self._write(ticket)

    def _write(self, ticket: str) -> None:
        """The ticket's file, written whole (a temporary file renamed): a reader never takes a half-written one for
        the remains of a replica that died writing it."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = self.folder / f".{ticket}.part"
        since = self._since.get(ticket, int(ticket[:20]))
        part.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "queue": self.queue, "since": since}))
        os.replace(part, self.folder / ticket)

    def _live(self) -> list[tuple[str, str, int]]:
        """``(ticket, queue, since)`` of the live tickets, oldest first; those of a dead replica are removed."""
        live, now = [], time.time()
        for path in sorted(self.folder.glob("*.json")):
            try:
                stamp = path.stat().st_mtime
                info = json.loads(path.read_text())
                queue, pid, host = str(info["queue"]), int(info["pid"]), str(info["host"])
                since = int(info.get("since", path.name[:20]))
            except FileNotFoundError:
                continue  # given back while we looked
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # half-written by a replica that died writing it: nobody waits on it
                continue
            if now - stamp > STALE_S or host == HOST and not pid_alive(pid):
                path.unlink(missing_ok=True)
                continue
            live.append((path.name, queue, since))
        return live

    def ahead(self, ticket: str) -> int:
        """How many live tickets are older than ``ticket`` (all of them when it is no longer there)."""
        return self._around(ticket)[1]

    def turn(self, ticket: str) -> bool:
        """Whether the job of ``ticket`` may run now: fewer than ``slots`` live tickets are older."""
        return self.ahead(ticket) < self.slots

    def others_ahead(self, ticket: str) -> int:
        """How many of the live tickets older than ``ticket`` belong to other replicas."""
        live, at = self._around(ticket)
        return sum(queue != self.queue for _, queue, _ in live[:at])

    def others_after(self, ticket: str) -> int:
        """How many jobs of other replicas were first queued after the job of ``ticket``: those a long job makes way
        for in its break. A job that itself made way and waits for its turn back (its new ticket is newer, its job
        was queued earlier) is not one of them: two long jobs on two replicas took turns at every break, and the
        first queued no longer finished first."""
        live, at = self._around(ticket)
        if at == len(live):
            return 0
        mine = live[at][2]
        return sum(queue != self.queue and since > mine for _, queue, since in live)

    def _around(self, ticket: str) -> tuple[list[tuple[str, str, int]], int]:
        with self._locked():
            live = self._live()
        names = [name for name, _, _ in live]
        return live, names.index(ticket) if ticket in names else len(live)
