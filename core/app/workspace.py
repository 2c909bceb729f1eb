"""Per-session workspaces: private folders for a browser session's uploads, and cohort zips unpacked into them."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError

WORKSPACE_PREFIX = "ctehr-session-"


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class SessionWorkspace:
    """A private temp folder for one browser session's uploads.

    Created with mode 0700 under the system temp dir with a random name; it is
    never derived from user input, so other sessions cannot guess or reach it.
    The folder is deleted when this object is garbage collected (Streamlit
    drops a session's state when the session ends), at interpreter exit, or by
    :func:`sweep_stale_workspaces`.
    """

    path: Path
    _finalizer: weakref.finalize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _rmtree, str(self.path))

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self.path.is_dir()

    def touch(self) -> None:
        """Mark the workspace as in use (the sweep skips recently used ones)."""
        if self.alive:
            os.utime(self.path)

    def fresh_dir(self, name: str) -> Path:
        """An empty sub-folder (replaced when it exists)."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise InputError("workspace folder", name, "must be letters, digits, - or _", "use a plain name")
        target = self.path / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target


def new_session_workspace(root: Path | None = None) -> SessionWorkspace:
    path = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=str(root) if root else None))
    os.chmod(path, 0o700)
    return SessionWorkspace(path)


def sweep_stale_workspaces(max_age_s: float = 6 * 3600, root: Path | None = None) -> int:
    """Delete session folders untouched for ``max_age_s`` (a crash left them behind)."""
    base = Path(root or tempfile.gettempdir())
    now = time.time()
    removed = 0
    for p in base.glob(WORKSPACE_PREFIX + "*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


MAX_COHORT_FILES = 5000


def unpack_cohort_zip(data: bytes, dest: Path) -> Path:
    """Write an uploaded zip of a cohort folder under ``dest``; return the folder holding cohort.csv.

    The archive is read in memory by :func:`core.io.safezip.read_zip` (no ``..``,
    no absolute names, no links, size and ratio caps). Names are re-checked to
    stay under ``dest`` before anything is written.
    """
    from core.io.safezip import read_zip

    members = read_zip(data)
    if len(members) > MAX_COHORT_FILES:
        raise InputError("cohort zip", f"{len(members)} files", f"has more than {MAX_COHORT_FILES} files",
                         "zip one cohort folder (cohort.csv, timeline, features, studies)")
    csvs = [m.name for m in members if m.name.replace("\\", "/").split("/")[-1] == "cohort.csv"]
    if len(csvs) != 1:
        raise InputError("cohort zip", f"{len(csvs)} cohort.csv files", "must hold exactly one cohort.csv",
                         "zip one cohort folder with cohort.csv at its top")
    top = csvs[0].replace("\\", "/").rsplit("/", 1)[0] if "/" in csvs[0] else ""
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for m in members:
        name = m.name.replace("\\", "/")
        if top and not name.startswith(top + "/"):
            continue
        rel = name[len(top) + 1:] if top else name
        target = (root / rel).resolve()
        if root not in target.parents:
            raise InputError("zip entry", m.name, "points outside the cohort folder", "re-create the zip with relative names")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(m.data)
    return root
