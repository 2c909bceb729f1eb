"""Jobs that a server restart stopped: told to their user once, and what they left half-written removed.

The job queue (:mod:`core.jobs`) lives in the server's memory, so a restart (an update, a crash, a replica moved)
ends every queued and running job. Without a record the user's training simply vanished from the page, and the
unpacked cohort of an upload stayed in the user's folder, counting against the disk quota, where nothing in the
app could delete it. So each job the app queues is also written down here, on disk:

* ``<user folder>/jobs/<server>-<job id>.json``: the job's title, when it was queued and by which server process
  (``SERVER``, random per process). The server removes the record when the job ends (:func:`forget_ended`, run by
  its heartbeat and at every look).
* ``<data dir>/jobs/<server>.json``: that server's heartbeat, rewritten every ``HEARTBEAT_S`` seconds while it has
  jobs on record (:func:`start_heartbeat`) and removed when it exits normally. Replicas share the data folder, so
  a record of a server whose heartbeat is gone, or older than ``STALE_S`` (a killed server), belongs to a job that
  nothing runs any more.

:func:`interrupted` finds such records for a user, removes what their jobs left half-written (a cohort that an
upload unpacked and that no finished model uses, a model folder still being written) and keeps the record, marked,
until the user dismisses it (:func:`dismiss`). A training's record also keeps how to start it again
(``core.app.job_restart``), and the cohort its upload had unpacked whole is kept for that (``Record.resume``) until
the record is dismissed. A record of a live server (another replica) is left alone.

>>> import tempfile
>>> base = Path(tempfile.mkdtemp()); user = base / "users" / "u1"
>>> _write(user / "jobs" / "gone-job3.json", {"title": "Training ehr_only", "queued_at": 100.0, "server": "gone"})
>>> [(r.title, r.stopped) for r in interrupted(user, base)]  # server "gone" has no heartbeat: it was stopped
[('Training ehr_only', True)]
>>> dismiss(user, "gone-job3"); interrupted(user, base)
[]
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.app.background import COHORT_STAMP as STAMP, UNPACKED
from core.app.meds_cohorts import models_by_cohort
from core.app.workspace import MEDS_PREFIX, is_built_cohort
from core.site_slots import pid_alive

SERVER = uuid.uuid4().hex[:12]  # this server process; a restarted server is another one
HEARTBEAT_S = 20.0
STALE_S = 120.0  # a heartbeat older than this: the server was killed (it beats every HEARTBEAT_S)
OLD_BEAT_S = 86400.0  # ... and one older than this is deleted
COHORTS = "cohorts"
MODELS = "models"
PARTIAL = ".partial"  # a model folder being written (core.app.background)
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One job on record: ``name`` (``<server>-<job id>``), its title, when it was queued (seconds since the epoch)
    and the server process that queued it; ``upload``: the job unpacks an uploaded cohort zip; ``stopped``: found
    stopped by a restart, ``removed``: what of it was deleted then, ``kept``: the cohort folders it unpacked that were
    kept because a model it finished uses them; ``restart``: how to start it again (``core.app.job_restart``);
    ``resume``: the whole cohort folder its upload had unpacked, kept for that until the record is dismissed."""

    name: str
    title: str
    queued_at: float
    server: str
    stopped: bool = False
    removed: tuple[str, ...] = ()
    upload: bool = False
    kept: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # the absolute paths its arguments name (core.job_pickle.paths_in)
    restart: str = ""  # how to start it again (JSON, core.app.job_restart.spec), "" when it cannot be
    resume: str = ""  # the cohort folder (``cohorts/<name>``) its upload unpacked, kept to start it again


def _jobs_dir(user_dir: Path) -> Path:
    return Path(user_dir) / "jobs"


def _heartbeat_file(base: Path, server: str) -> Path:
    return Path(base) / "jobs" / f"{server}.json"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read(path: Path) -> Record | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Record(path.stem, str(data["title"]), float(data["queued_at"]), str(data["server"]),
                      bool(data.get("stopped")), tuple(str(p) for p in data.get("removed") or ()),
                      bool(data.get("upload")), tuple(str(p) for p in data.get("kept") or ()),
                      tuple(str(p) for p in data.get("reads") or ()), str(data.get("restart") or ""),
                      str(data.get("resume") or ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # being written, or damaged: not a job anyone can be told about


def record(user_dir: Path, job_id: str, title: str, base: Path, now: float | None = None, *,
           upload: bool = False, reads: Iterable[str] = (), restart: str = "", resume: str = "") -> None:
    """Write down that this server queued ``job_id`` (``title``; ``upload``: it unpacks an uploaded zip; ``reads``: the
    folders its arguments name; ``restart``: how to start it again, ``resume``: the cohort folder a restarted upload's
    training reads, see :class:`Record`) for the user of ``user_dir``; starts the heartbeat."""
    start_heartbeat(base)
    _write(_jobs_dir(user_dir) / f"{SERVER}-{job_id}.json",
           {"title": title, "queued_at": float(time.time() if now is None else now), "server": SERVER,
            "upload": bool(upload), "reads": sorted(str(p) for p in reads), "restart": restart, "resume": resume})


@dataclass(frozen=True)
class Elsewhere:
    """A job of the user that another server process (a replica) runs, as its record says: what deleting a model or a
    cohort checks besides this server's own queue (``core.app.background.refuse_while_read`` reads ``active``,
    ``state``, ``title`` and the paths in ``args``)."""

    title: str
    reads: tuple[str, ...]
    active: bool = True
    state: str = "running on another server of this site"

    @property
    def args(self) -> tuple:
        return (self.reads,)

    @property
    def kwargs(self) -> dict:
        return {}


def elsewhere(user_dir: Path, base: Path, now: float | None = None) -> list[Elsewhere]:
    """The user's jobs on record that another live server runs (this server's own are in its queue). A record goes
    within ``HEARTBEAT_S`` of its job's end, so a job may be listed here that long after it ended."""
    now = time.time() if now is None else now
    found = (_read(p) for p in sorted(_jobs_dir(user_dir).glob("*.json")))
    return [Elsewhere(r.title, r.reads) for r in found
            if r is not None and not r.stopped and r.server != SERVER and not _server_gone(base, r.server, now)]


def forget(user_dir: Path, job_id: str) -> None:
    """This server's job ``job_id`` ended (done, failed or cancelled): its record goes at once. The heartbeat's
    :func:`forget_ended` would remove it within ``HEARTBEAT_S``, but a server stopped meanwhile leaves it behind:
    under uvicorn (Streamlit's server) a SIGTERM ends the process without its exit hooks, and a training that had
    just finished then read as stopped by the restart."""
    if str(job_id).isalnum():
        (_jobs_dir(user_dir) / f"{SERVER}-{job_id}.json").unlink(missing_ok=True)


def forget_ended(user_dirs: list[Path], is_active: Callable[[str], bool]) -> None:
    """Remove this server's records of jobs that ended (``is_active(job_id)`` is False): they were not stopped."""
    for user_dir in user_dirs:
        for path in _jobs_dir(user_dir).glob(f"{SERVER}-*.json"):
            if not is_active(path.stem[len(SERVER) + 1:]):
                path.unlink(missing_ok=True)


def _server_gone(base: Path, server: str, now: float) -> bool:
    path = _heartbeat_file(base, server)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        beat = path.stat().st_mtime
    except FileNotFoundError:
        return True  # it exited (its exit removes the file) or never beat
    except (OSError, ValueError):
        return False  # being rewritten: ask again at the next look
    if now - beat > STALE_S:
        return True
    if info.get("host") == socket.gethostname():  # on this machine a dead process is seen at once
        try:
            return not pid_alive(int(info.get("pid", 0)))
        except (TypeError, ValueError):
            return False
    return False


def _stamp_time(name: str) -> float | None:
    try:
        return time.mktime(time.strptime(name[:15], STAMP))
    except ValueError:
        return None


def _cohorts_in_use(user_dir: Path) -> set[str]:
    """The cohort folders (their names under ``cohorts/``) that a finished model of the user was trained on."""
    cohorts = (Path(user_dir) / COHORTS).resolve()
    return {Path(p).relative_to(cohorts).parts[0] for p in models_by_cohort(Path(user_dir) / MODELS)
            if Path(p).is_relative_to(cohorts) and Path(p) != cohorts}


def _tag(folder: Path) -> str:
    """The tag of the training whose upload unpacked ``folder`` whole (``core.app.background.UNPACKED``), or ""."""
    try:
        return (folder / UNPACKED).read_text(encoding="utf-8").strip()[:64]
    except (OSError, UnicodeDecodeError):
        return ""


def _restart_tag(stopped: Record) -> str:
    try:
        return str((json.loads(stopped.restart or "{}").get("kwargs") or {}).get("tag") or "")
    except (ValueError, AttributeError):
        return ""


def _clean_up(user_dir: Path, stopped: Record, live_since: float) -> tuple[list[str], list[str], str]:
    """Delete what ``stopped`` may have left: cohort folders unpacked (or being built from MEDS) since it was queued
    that no finished model uses, and model folders still being written; a complete cohort built from MEDS stays (the
    user's list of them, ``core.app.meds_cohorts``). A folder a live job (queued at ``live_since`` or later) may own
    is kept. The whole cohort its own upload unpacked (its tag in the folder's marker) is kept for starting it again,
    one another training unpacked is left to that one's record. Returns what was removed, the cohort folders of that
    time kept for a finished model, and the folder kept to start it again ("" when none)."""
    removed: list[str] = []
    kept: list[str] = []
    resume, mine = "", _restart_tag(stopped)
    in_use = _cohorts_in_use(user_dir)
    for folder in sorted((Path(user_dir) / COHORTS).glob("*")):
        made = _stamp_time(folder.name.removeprefix(MEDS_PREFIX))
        if (made is None or not folder.is_dir() or folder.is_symlink() or is_built_cohort(folder)
                or not stopped.queued_at - 2 <= made < live_since - 2):
            continue
        tag = _tag(folder)
        if mine and tag == mine:
            resume = f"{COHORTS}/{folder.name}"
        if tag and tag != mine:
            continue  # another training's whole upload: its own record decides
        if folder.name in in_use:
            kept.append(f"{COHORTS}/{folder.name}")
        elif not resume.endswith(f"/{folder.name}"):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"{COHORTS}/{folder.name}")
    for folder in sorted((Path(user_dir) / MODELS).glob(f"*{PARTIAL}")):
        made = folder.stat().st_mtime
        if folder.is_dir() and not folder.is_symlink() and stopped.queued_at - 2 <= made < live_since:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"{MODELS}/{folder.name}")
    return removed, kept, resume


def interrupted(user_dir: Path, base: Path, now: float | None = None) -> list[Record]:
    """The user's jobs that a server restart stopped, oldest first, each reported until :func:`dismiss`.

    Found for the first time, a record is marked and what its job left half-written is removed (``removed``)."""
    now = time.time() if now is None else now
    found = [r for r in (_read(p) for p in sorted(_jobs_dir(user_dir).glob("*.json"))) if r is not None]
    stopped = [r for r in found if r.stopped or (r.server != SERVER and _server_gone(base, r.server, now))]
    if all(r.stopped for r in stopped):
        return sorted(stopped, key=lambda r: r.queued_at)
    with open(_jobs_dir(user_dir) / ".lock", "a", encoding="utf-8") as lock:  # one marker at a time (tabs, replicas)
        fcntl.flock(lock, fcntl.LOCK_EX)
        again = [_read(_jobs_dir(user_dir) / f"{r.name}.json") for r in stopped]  # as another writer left them
        return _mark(user_dir, [r for r in again if r is not None],
                     min((r.queued_at for r in found if r not in stopped), default=float("inf")))


def _mark(user_dir: Path, stopped: list[Record], live_since: float) -> list[Record]:
    """:func:`interrupted`'s first finding of each stopped record (under the user's lock): clean up, mark, keep."""
    out: list[Record] = []
    for rec in sorted(stopped, key=lambda r: r.queued_at):
        if not rec.stopped:
            removed, kept, resume = _clean_up(user_dir, rec, live_since)
            rec = Record(rec.name, rec.title, rec.queued_at, rec.server, True, tuple(removed), rec.upload, tuple(kept),
                         rec.reads, rec.restart, resume or rec.resume)
            _write(_jobs_dir(user_dir) / f"{rec.name}.json",
                   {"title": rec.title, "queued_at": rec.queued_at, "server": rec.server, "stopped": True,
                    "removed": removed, "upload": rec.upload, "kept": kept, "reads": list(rec.reads),
                    "restart": rec.restart, "resume": rec.resume})
            if rec.removed:
                LOG.info("removed what a job stopped by a server restart left: %s", ", ".join(rec.removed))
        out.append(rec)
    return out


def claim(user_dir: Path, name: str) -> Path | None:
    """Take the stopped job ``name`` to start it again: its record is renamed out of the list (atomically: of two tabs
    or replicas clicking at once, one gets it); None when it is gone (started again or dismissed meanwhile). Give it
    back with :func:`unclaim` when the job could not be queued, or remove the returned file once it is."""
    if not name.replace("-", "").isalnum():
        return None
    path = _jobs_dir(user_dir) / f"{name}.json"
    taken = path.with_name(f"{path.name}.restarting")
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    return taken


def unclaim(taken: Path) -> None:
    """Put a claimed record back in the list (its job could not be queued again)."""
    os.replace(taken, taken.with_name(taken.name.removesuffix(".restarting")))


def dismiss(user_dir: Path, name: str, *, restarted: bool = False) -> None:
    """The user has read that job ``name`` was stopped: its record goes, and the cohort kept to start it again
    (``Record.resume``) unless a finished model uses it or the job was started again (``restarted``)."""
    if not name.replace("-", "").isalnum():  # never a path a caller could make climb out of the folder
        return
    path = _jobs_dir(user_dir) / f"{name}.json"
    rec = _read(path)
    path.unlink(missing_ok=True)
    if rec is None or restarted or not rec.resume.startswith(f"{COHORTS}/"):
        return
    folder = Path(user_dir) / COHORTS / Path(rec.resume).name
    if folder.is_dir() and not folder.is_symlink() and folder.name not in _cohorts_in_use(user_dir):
        shutil.rmtree(folder, ignore_errors=True)


_BEAT: dict[str, threading.Thread] = {}
_BEAT_LOCK = threading.Lock()
_STOPPED = [False]  # set by stop_heartbeats: no beat is written after it


def _beat_once(base: Path) -> None:
    _write(_heartbeat_file(base, SERVER), {"host": socket.gethostname(), "pid": os.getpid()})
    for old in _heartbeat_file(base, SERVER).parent.glob("*.json"):  # servers stopped without their exit hook (a
        try:  # SIGTERM): a missing beat reads as gone, as an old one does
            if time.time() - old.stat().st_mtime > OLD_BEAT_S:
                old.unlink(missing_ok=True)
        except FileNotFoundError:  # another replica deleted it first
            continue
    _forget_ended_jobs(base)


def _forget_ended_jobs(base: Path) -> None:
    from core.jobs import default_queue  # the app's one queue: its ended jobs' records go

    queue = default_queue()
    users = [p for p in (Path(base) / "users").glob("*") if p.is_dir()]

    def active(job_id: str) -> bool:
        job = queue.get(job_id)
        return job is not None and job.active

    forget_ended(users, active)


def start_heartbeat(base: Path) -> None:
    """Once per process and data folder: beat now and every ``HEARTBEAT_S`` seconds; the beat goes at exit."""
    key = str(Path(base).resolve())
    with _BEAT_LOCK:
        if key in _BEAT:
            return
        _beat_once(Path(base))

        def loop() -> None:
            while not _STOPPED[0]:
                time.sleep(HEARTBEAT_S)
                if _STOPPED[0]:
                    break
                try:
                    _beat_once(Path(base))
                except OSError as err:  # a full or read-only disk: the next beat tries again; logged, not hidden
                    LOG.warning("job heartbeat not written: %s", err)

        thread = threading.Thread(target=loop, name="ctehr-job-heartbeat", daemon=True)
        _BEAT[key] = thread
        thread.start()
        atexit.register(_at_exit, Path(base))


def stop_heartbeats() -> None:
    """The server stops (``st.App``'s lifespan ends, before uvicorn re-raises a SIGTERM that skips ``atexit``): the
    records of its ended jobs go, its heartbeats stop and are removed, and the jobs still queued or running keep their
    records, so that the user is told they were stopped."""
    with _BEAT_LOCK:
        bases, _STOPPED[0] = list(_BEAT), True
    for key in bases:
        _at_exit(Path(key))


def _at_exit(base: Path) -> None:
    """A normal exit: the records of jobs that ended go (those still queued or running were stopped), then the beat."""
    try:
        _forget_ended_jobs(base)
    finally:
        _heartbeat_file(base, SERVER).unlink(missing_ok=True)
