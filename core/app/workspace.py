"""Where a user's data lives: per-user folders (cases, models, exports), disk quotas, session scratch.

Layout under the app data dir (:func:`core.app.paths.data_dir`), every folder mode 0700::

    users/<key>/cases/<case id>/case.json, study.*, timeline.parquet, decoded/ (the CT decoded once: a cache)
    users/<key>/models/          trained models (``user_models_dir``)
    users/<key>/exports/<session>/<kind>/   one browser session's prepared exports (``SessionWorkspace.exports_dir``)
    users/<key>/cohorts/         cohorts unpacked from uploads (a trained model's, or a running job's), built from MEDS
    users/<key>/jobs/            the user's queued and running jobs on record (``core.app.job_journal``)
    users/<key>/validations/     the user's kept external validations (``core.app.validations``)
    users/<key>/cache/           predictions, maps and decoded studies of the user's models and cohorts (caches)
    scratch/ctehr-session-<pid>-<random>/   one browser session's scratch (``SessionWorkspace``)

``<key>`` is a salted SHA-256 of the user id (the OpenID Connect ``sub``, or ``"local"`` when no sign-in is
configured and the server listens on loopback only): never text a user typed, so no name reaches the disk
and no user can name another's folder. Case ids are random hex chosen here; any other id is refused, so a
path can never climb out of the user's folder. A case is written only from data that already passed the
PHI gate (``core.app.uploads``; cases are saved by ``core.app.cases``), into a hidden folder that is renamed into place when complete, and only
when the user's and the server's disk quotas allow it (``CTEHR_USER_QUOTA_GB``, default 5;
``CTEHR_TOTAL_QUOTA_GB``, default 50).

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     a, b = user_root("alice", pathlib.Path(tmp)), user_root("bob", pathlib.Path(tmp))
...     a != b, a.parent == b.parent, oct(a.stat().st_mode & 0o777), "alice" in str(a)
(True, True, '0o700', False)
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from core.site_slots import pid_alive

WORKSPACE_PREFIX = "ctehr-session-"
USERS = "users"
SCRATCH = "scratch"
LOCAL_USER = "local"
GB = 1000**3  # decimal, as the quota settings and every size shown are read (5 GB = 5e9 bytes)
DEFAULT_USER_QUOTA_GB = 5.0
DEFAULT_TOTAL_QUOTA_GB = 50.0
USER_QUOTA_ENV = "CTEHR_USER_QUOTA_GB"
TOTAL_QUOTA_ENV = "CTEHR_TOTAL_QUOTA_GB"
_USER_SALT = b"ctehr-user-folder-v1\0"
LOCK = threading.Lock()
DECODED = "decoded"  # a case's decoded CT (core.app.cases): counted in the quota, the first to give way to it
MAPS = "maps"  # a case's attribution maps (core.app.attribution_volume): the same; also <data>/cache/maps (demo
# cases, bounded) and <user>/cache/maps (the user's own models on demo cases)
STUDIES = "studies"  # <user>/cache/studies: studies of the user's own cohorts decoded once (the same)
LEGACY_MAPS = "attribution"  # <data>/cache/attribution: every map of every case before, unbounded; removed at start-up
MEDS_PREFIX = "meds-"  # users/<key>/cohorts/meds-<time>-<hex>: a cohort built from MEDS (core.app.meds_cohorts)
MEDS_SUMMARY = "summary.json"  # ... written last: the folder holds a complete cohort, kept in the user's list
TRAINED_MARKER = "trained_in_app.json"  # beside a model trained in the app (core.app.background): its cohort and when
EXPORTS_TTL_S = 3600.0  # a session's prepared exports untouched this long go when another session of the user prepares
LEGACY_EXPORTS = ("figure", "report", "dicom")  # users/<key>/exports/<kind>: shared by a user's sessions before; removed


# ------------------------------------------------------------------ folders


def _base(base: Path | None) -> Path:
    if base is not None:
        return Path(base)
    from core.app.paths import data_dir

    return data_dir()


def private_dir(path: Path) -> Path:
    """``path`` created (with missing parents) as a real folder of mode 0700; a link in its place is refused."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise InputError("workspace folder", path.name, "is not a plain folder (a link?)",
                         "ask the administrator to remove it from the data folder")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def user_key(user: str) -> str:
    """The folder name of a user: a salted SHA-256 of the user id (never the id itself)."""
    text = str(user or "").strip()
    if not text:
        raise InputError("user", "(empty)", "has no id", "sign in again (the provider gave no sub claim)")
    return hashlib.sha256(_USER_SALT + text.encode("utf-8")).hexdigest()[:32]


def user_root(user: str, base: Path | None = None) -> Path:
    """``<data dir>/users/<key>`` (mode 0700), created on first use."""
    users = private_dir(_base(base) / USERS)
    return private_dir(users / user_key(user))


def user_cases_dir(user: str, base: Path | None = None) -> Path:
    return private_dir(user_root(user, base) / "cases")


def user_models_dir(user: str, base: Path | None = None) -> Path:
    """Where models a user trains are saved (one sub-folder per model)."""
    return private_dir(user_root(user, base) / "models")


def user_exports_dir(user: str, base: Path | None = None) -> Path:
    """Where a user's exported figures, reports and DICOM objects are kept: one folder per browser session
    (:meth:`SessionWorkspace.exports_dir`), counted in the user's quota."""
    return private_dir(user_root(user, base) / "exports")


def is_built_cohort(folder: Path) -> bool:
    """Whether ``folder`` is a complete cohort built from MEDS in the app (``meds-<time>...`` with its summary): the
    user's list of built cohorts keeps it, so neither deleting a model nor a restart's clean-up removes it."""
    folder = Path(folder)
    return folder.name.startswith(MEDS_PREFIX) and not folder.is_symlink() and (folder / MEDS_SUMMARY).is_file()


def list_user_models(user: str, base: Path | None = None) -> dict[str, Path]:
    """The user's saved models by folder name (folders holding ``config.json``), newest first."""
    root = user_models_dir(user, base)
    found = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / "config.json").is_file()]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return {p.name: p for p in found}


# ------------------------------------------------------------------ quotas


def _quota_bytes(env: str, default_gb: float) -> int:
    raw = os.environ.get(env, "").strip() or f"{default_gb!r}"  # unset: the default
    try:
        value = float(raw)
    except ValueError:
        raise InputError(env, raw, "is not a number of gigabytes", f"set {env} to e.g. {default_gb:g}") from None
    if not value > 0:
        raise InputError(env, raw, "must be above 0", f"set {env} to e.g. {default_gb:g}")
    return int(value * GB)


def user_quota_bytes() -> int:
    return _quota_bytes(USER_QUOTA_ENV, DEFAULT_USER_QUOTA_GB)


def total_quota_bytes() -> int:
    return _quota_bytes(TOTAL_QUOTA_ENV, DEFAULT_TOTAL_QUOTA_GB)


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links are not followed)."""
    total = 0
    stack = [Path(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def user_usage(user: str, base: Path | None = None) -> int:
    return folder_bytes(user_root(user, base))


def total_usage(base: Path | None = None) -> int:
    root = _base(base)
    return folder_bytes(root / USERS) + folder_bytes(root / SCRATCH)


def human_bytes(n: float) -> str:
    """Bytes in decimal units, the units the quota settings are given in.

    >>> human_bytes(20_000_000), human_bytes(999), human_bytes(5 * GB)
    ('20.0 MB', '999 B', '5.0 GB')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def drop_caches(user: str, base: Path | None = None) -> int:
    """Delete the user's decoded copies of their cases' and cohorts' CTs and the attribution maps of their cases and
    models (``cases/<id>/decoded``, ``cases/<id>/maps``, ``cache/maps``, ``cache/studies``: made again when asked
    for); the bytes freed."""
    return _drop_caches_in(user_root(user, base))


def _drop_caches_in(root: Path) -> int:
    freed, cases, cache = 0, root / "cases", root / "cache"
    folders = [*cases.glob(f"*/{DECODED}"), *cases.glob(f"*/{MAPS}"), cache / MAPS, cache / STUDIES]
    for folder in (f for f in folders if f.is_dir() and not f.is_symlink()):
        for file in folder.iterdir():
            if file.is_file() and not file.is_symlink():
                freed += file.stat().st_size
                file.unlink(missing_ok=True)
    return freed


def check_quota(user: str, extra: int, base: Path | None = None, *, drop: bool = True) -> None:
    """Refuse (``InputError``) when ``extra`` more bytes would exceed the user's or the server's quota, after the
    user's decoded CT copies and maps (:func:`drop_caches`) gave way (``drop``; a cache's own check does not evict others)."""
    check_quota_in(user_root(user, base), _base(base), extra, drop=drop)


def check_quota_in(root: Path, base: Path, extra: int, *, drop: bool = True) -> None:
    """:func:`check_quota` for the user whose folder is ``root`` (``<base>/users/<key>``, as a job is given it)."""
    used, limit = folder_bytes(root), user_quota_bytes()
    if used + extra > limit and drop and _drop_caches_in(root):
        used = folder_bytes(root)
    if used + extra > limit:
        raise InputError("disk quota", f"{human_bytes(used + extra)} in use after this",
                         f"exceeds your quota of {human_bytes(limit)} ({human_bytes(used)} in use now)",
                         "delete cases you no longer need (Upload > Your cases), models you trained here (Cohort & "
                         "models > Selected model > Delete this model; their cohorts go with them), cohorts built from "
                         "MEDS (Cohort & models > Cohort from MEDS > Delete) or earlier validations (Cohort & models > "
                         f"Validate on your cohort > Remove), or ask the administrator to raise {USER_QUOTA_ENV}")
    used_all, limit_all = total_usage(base), total_quota_bytes()
    if used_all + extra > limit_all:
        raise InputError("disk quota", f"{human_bytes(used_all + extra)} in use on this server after this",
                         f"exceeds the server's quota of {human_bytes(limit_all)}",
                         f"delete cases you no longer need, or ask the administrator to raise {TOTAL_QUOTA_ENV}")


# ------------------------------------------------------------------ session scratch


def _rmtree(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _plain_name(name: str) -> str:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise InputError("workspace folder", name, "must be letters, digits, - or _", "use a plain name")
    return name


def _fresh(target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, mode=0o700)
    return target


@dataclass
class SessionWorkspace:
    """A private scratch folder for one browser session (exports being built, cohorts being unpacked), and the
    session's folder of prepared exports in each user's exports (:meth:`exports_dir`).

    Created with mode 0700 under ``<data dir>/scratch`` with a random name that carries the server's
    process id; it is never derived from user input. Both are deleted when this object is garbage collected
    (Streamlit drops a session's state when the session ends, lazily), by ``core.app.session_sweep`` once a closed
    tab's session cannot be resumed, at interpreter exit, or by
    :func:`sweep_stale_workspaces` at the next start when the server was killed. Saved cases are not
    here: they live in the user's folder (:func:`save_case`).

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ws = new_session_workspace(pathlib.Path(tmp) / SCRATCH)
    ...     out = ws.exports_dir("alice", "report", pathlib.Path(tmp))
    ...     _ = (out / "r.pdf").write_bytes(b"%PDF")
    ...     kept = out.parent.name == ws.path.name, out.is_dir()
    ...     ws.cleanup()
    ...     kept, out.parent.exists(), user_exports_dir("alice", pathlib.Path(tmp)).is_dir()
    ((True, True), False, True)
    """

    path: Path
    _owned: list[str] = field(init=False, repr=False)
    _finalizer: weakref.finalize = field(init=False, repr=False)
    uses: int = field(init=False, default=0)  # how many times :meth:`touch` was called (a page run of its session)

    def __post_init__(self) -> None:
        self._owned = [str(self.path)]
        self._finalizer = weakref.finalize(self, _rmtree, self._owned)

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self.path.is_dir()

    def touch(self) -> None:
        """Mark the workspace (and its exports) as in use (the sweep skips recently used ones; the closed-session
        sweep counts a use as the session seen connected)."""
        self.uses += 1
        for path in self._owned:
            if os.path.isdir(path):
                os.utime(path)

    def fresh_dir(self, name: str) -> Path:
        """An empty sub-folder (replaced when it exists)."""
        return _fresh(self.path / _plain_name(name))

    def exports_dir(self, user: str, kind: str, base: Path | None = None) -> Path:
        """An empty folder for this session's export of one ``kind`` (replaced when it exists), under
        ``users/<key>/exports/<this workspace's name>/``: in the user's quota, apart from their other
        sessions' exports, and deleted with this workspace. The user's other sessions' exports untouched for
        :data:`EXPORTS_TTL_S` go now (another server's, or one this server's sweep of closed sessions missed)."""
        exports = user_exports_dir(user, base)
        session = private_dir(exports / self.path.name)
        if str(session) not in self._owned:
            self._owned.append(str(session))
        target = _fresh(session / _plain_name(kind))
        self.drop_other_exports(user, base, older_than_s=EXPORTS_TTL_S)
        return target

    def drop_other_exports(self, user: str, base: Path | None = None, *, older_than_s: float = 0.0) -> int:
        """Delete the user's other sessions' prepared exports untouched for ``older_than_s`` (0: all of them, before
        a refusal for want of room); the bytes freed."""
        exports, freed = user_exports_dir(user, base), 0
        cutoff = time.time() - older_than_s
        for other in exports.glob(f"{WORKSPACE_PREFIX}*"):
            if other.name != self.path.name and not other.is_symlink() and other.stat().st_mtime <= cutoff:
                freed += folder_bytes(other)
                shutil.rmtree(other, ignore_errors=True)
        return freed


def scratch_root(base: Path | None = None) -> Path:
    return private_dir(_base(base) / SCRATCH)


def new_session_workspace(root: Path | None = None) -> SessionWorkspace:
    parent = private_dir(Path(root)) if root is not None else scratch_root()
    path = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-", dir=str(parent)))
    os.chmod(path, 0o700)
    return SessionWorkspace(path)


def sweep_stale_workspaces(max_age_s: float = 6 * 3600, root: Path | None = None) -> int:
    """Delete scratch folders left behind: those of a server process that no longer runs (killed) and
    those untouched for ``max_age_s``; also half-written case folders of a killed save. Returns the count."""
    base = Path(root) if root is not None else scratch_root()
    now = time.time()
    removed = 0
    for p in base.glob(WORKSPACE_PREFIX + "*"):
        try:
            if p.is_symlink() or not p.is_dir():
                continue
            pid_text = p.name[len(WORKSPACE_PREFIX):].split("-", 1)[0]
            dead = pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text))
            if dead or now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    users = base.parent / USERS if base.name == SCRATCH else None  # a scratch root of the app's layout
    if root is None and users is not None:
        for p in users.glob("*/cases/.*-*") if users.is_dir() else []:
            if p.is_dir() and not p.is_symlink() and now - p.stat().st_mtime > 60:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
    for p in users.glob(f"*/exports/{WORKSPACE_PREFIX}*") if users is not None and users.is_dir() else []:
        if not (base / p.name).is_dir() and not p.is_symlink():  # a session's exports, its workspace gone
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


_STARTED: set[str] = set()


def start_up(base: Path | None = None) -> int:
    """Once per process and data dir: sweep what earlier (killed) servers left and register the exit sweep."""
    key = str(_base(base))
    with LOCK:
        if key in _STARTED:
            return 0
        _STARTED.add(key)
    # the maps of earlier versions: one unbounded folder for every case, a user's uploads too (kept past their deletion)
    shutil.rmtree(_base(base) / "cache" / LEGACY_MAPS, ignore_errors=True)
    for kind in LEGACY_EXPORTS:  # and their exports, one folder per kind shared by a user's sessions
        for p in (_base(base) / USERS).glob(f"*/exports/{kind}"):
            shutil.rmtree(p, ignore_errors=True)
    root = scratch_root(base)
    atexit.register(_sweep_own, root)
    return sweep_stale_workspaces(root=root) if base is not None else sweep_stale_workspaces()


def _sweep_own(root: Path) -> None:
    """At exit: this process's scratch folders go."""
    for p in Path(root).glob(f"{WORKSPACE_PREFIX}{os.getpid()}-*"):
        shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------ cohort zips

MAX_COHORT_FILES = 20_000  # files of an uploaded cohort zip (core.io.safezip's own cap): 200 folders of 100 slices


def check_file_count(n: int) -> None:
    """An InputError when a cohort zip holds more than ``MAX_COHORT_FILES`` files."""
    if n > MAX_COHORT_FILES:
        raise InputError("cohort zip", f"{n} files", f"has more than {MAX_COHORT_FILES:,} files",
                         "zip each study's slices into one file (studies/<id>.zip), or give NIfTI studies")


def cohort_csv_member(names: list[str]) -> str:
    """The one cohort.csv among a zip's ``names``."""
    csvs = [n for n in names if n.replace("\\", "/").split("/")[-1] == "cohort.csv"]
    if len(csvs) != 1:
        raise InputError("cohort zip", f"{len(csvs)} cohort.csv files", "must hold exactly one cohort.csv",
                         "zip one cohort folder with cohort.csv at its top")
    return csvs[0]


def check_cohort_zip(data: bytes, *, fusion: str | None = None, for_training: bool = False) -> tuple[bool, bool]:
    """The quick checks of an uploaded cohort zip, made before a job is queued so that a user does not wait for its
    error: one cohort.csv, read as :func:`core.cohort.load_cohort` reads it (its columns, duplicate ids, negative or
    blank times, unreadable dates, blank split cells; with ``for_training``, a train split), and for a ``fusion`` to
    train, the CT (a study column or image embeddings) and the EHR files (timeline, features or EHR embeddings) it
    reads. Only cohort.csv is inflated; the job checks everything else (PHI, the studies, the tables' contents).
    Raises InputError; returns whether the zip holds CT (a study column or image embeddings) and EHR files.

    >>> import io, zipfile
    >>> buf = io.BytesIO(); z = zipfile.ZipFile(buf, "w"); z.writestr("c/cohort.csv", "subject_id,time,event\\na,5,1\\na,9,0\\n"); z.close()
    >>> check_cohort_zip(buf.getvalue())
    Traceback (most recent call last):
    ...
    core.errors.InputError: subject_id: got 'a', duplicate subject ids; fix: keep one row per subject in cohort.csv
    """
    from io import BytesIO

    from core.cohort import has_study, validate_outcomes
    from core.io.columns import TEXT_COLUMNS, TIMELINE_FILES
    from core.io.delimited import read_csv_any
    from core.io.features import FEATURE_FILES
    from core.io.safezip import read_zip

    def base(name: str) -> str:
        return name.replace("\\", "/").split("/")[-1]

    names: list[str] = []  # every file of the zip, as read_zip lists them (no __MACOSX/ or .DS_Store)

    def wanted(name: str) -> bool:
        names.append(name)
        return base(name) == "cohort.csv"

    members = read_zip(data, label="cohort zip", wanted=wanted)
    check_file_count(len(names))
    csv = cohort_csv_member(names)
    text = next(m.data for m in members if m.name == csv)
    table = validate_outcomes(read_csv_any(BytesIO(text), text_names=TEXT_COLUMNS), for_training=for_training)
    top = csv.replace("\\", "/").rsplit("/", 1)[0] + "/" if "/" in csv.replace("\\", "/") else ""
    here = {n.replace("\\", "/")[len(top):] for n in names if n.replace("\\", "/").startswith(top)}
    stems = {Path(n).stem for n in here if "/" not in n}
    has_ct = "image_embeddings" in stems or bool(has_study(table).any())
    has_ehr = bool(here & {*TIMELINE_FILES, *FEATURE_FILES}) or "ehr_embeddings" in stems
    if fusion not in (None, "ehr_only") and not has_ct:
        raise InputError("fusion", fusion, "needs images but the cohort has none", "add a study column or image_embeddings, or use ehr_only")
    if fusion not in (None, "image_only") and not has_ehr:
        raise InputError("fusion", fusion, "needs EHR data but the cohort has none",
                         "add timeline.parquet, features.csv or ehr_embeddings, or use image_only")
    return has_ct, has_ehr


def recorded_cohort(recorded: str | Path, models_dir: Path) -> Path:
    """The cohort folder that a model's ``trained_in_app.json`` names, read in this data folder. The file records an
    absolute path; in a data folder restored from a backup, moved or copied, that path still names the old place (or
    another copy of the user's data). A cohort recorded under another ``.../cohorts/`` folder is read at the same
    place under this user's own (``models_dir``'s sibling ``cohorts``) when it is there; any other path as recorded
    (a server folder trained in place, such as the demo's)."""
    path, own = Path(recorded), Path(models_dir).parent / "cohorts"
    if path.is_relative_to(own) or "cohorts" not in path.parts:
        return path
    rest = path.parts[len(path.parts) - path.parts[::-1].index("cohorts"):]
    moved = own.joinpath(*rest) if rest else own
    return moved if rest and moved.is_dir() else path


def unpack_cohort_zip(data: bytes, dest: Path) -> Path:
    """Write an uploaded zip of a cohort folder under ``dest``; return the folder holding cohort.csv.

    The archive is read in memory by :func:`core.io.safezip.read_zip` (no ``..``,
    no absolute names, no links, size and ratio caps). Names are re-checked to
    stay under ``dest`` before anything is written.
    """
    from core.io.safezip import read_zip, write_members

    members = read_zip(data)
    check_file_count(len(members))
    csv = cohort_csv_member([m.name for m in members])
    return write_members(members, dest, csv.replace("\\", "/").rsplit("/", 1)[0] if "/" in csv else "")
