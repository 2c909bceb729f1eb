"""The cohorts a user built from MEDS events in the app: built by a heavy job, listed, reopened and deleted.

A build (:func:`meds_cohort_job`, run by ``core.jobs`` in its own process) writes ``<user>/cohorts/meds-<time>-<hex>``
with ``core.meds_cohort.build_meds_cohort`` and, last, its summary (``summary.json``): a folder without it is a build
still running or one a restart stopped (``core.app.job_journal`` removes those). The folder counts in the user's disk
quota, so the build checks the quota before it reads anything and again once the files are written (removing them
when they do not fit), and the user sees every built cohort (:func:`built_cohorts`) to reopen it after a reload or
delete it (:func:`delete_built`). A cohort that a model of the user was trained on is kept until that model is
deleted; deleting the model leaves the built cohort in the list (it is rebuilt only from the MEDS file).

>>> made_at("meds-20261128-183005-a1b2c3"), made_at("meds-20261128-183005"), made_at("20261128-183005")
('28 Nov 18:30', '28 Nov 18:30', None)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from core.app.workspace import MEDS_PREFIX as PREFIX
from core.app.workspace import MEDS_SUMMARY as SUMMARY
from core.app.workspace import TRAINED_MARKER, is_built_cohort, recorded_cohort
from core.errors import InputError
from core.jobs import JobContext

STAMP = "%Y%m%d-%H%M%S"


def new_folder(cohorts_dir: Path) -> Path:
    """A new folder name in ``cohorts_dir`` (not created): the time, and a random part for two builds in one second."""
    return Path(cohorts_dir) / f"{PREFIX}{time.strftime(STAMP)}-{secrets.token_hex(3)}"


def made_at(name: str) -> str | None:
    """When the built cohort ``name`` was made, as the app shows it (``28 Nov 18:30``); None for another folder."""
    if not name.startswith(PREFIX):
        return None
    try:
        return time.strftime("%d %b %H:%M", time.strptime(name[len(PREFIX):len(PREFIX) + 15], STAMP))
    except ValueError:
        return None


def is_built(folder: Path) -> bool:
    """Whether ``folder`` is a complete cohort built here from MEDS (its name and its summary)."""
    return made_at(Path(folder).name) is not None and is_built_cohort(folder)


@dataclass(frozen=True)
class Built:
    """One built cohort: its folder, the build's summary, its size on disk and the user's models trained on it."""

    path: Path
    summary: dict
    n_bytes: int
    models: tuple[str, ...]

    @property
    def label(self) -> str:
        s, task = self.summary, Path(str(self.summary.get("task", "task"))).stem
        return (f"built {made_at(self.path.name)} · {task} · {s.get('n_subjects', '?')} patients, "
                f"{s.get('events', '?')} events")


def models_by_cohort(models_dir: Path) -> dict[str, list[str]]:
    """Cohort folder (resolved, as text) -> the labels of the user's models in ``models_dir`` trained on it (or
    recalibrated from a model trained on it: ``base_cohort``), read from their ``trained_in_app.json``."""
    used: dict[str, list[str]] = {}
    for marker in sorted(Path(models_dir).glob(f"*/{TRAINED_MARKER}")):
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("cohort_dir", "base_cohort"):
            if info.get(key):
                used.setdefault(str(recorded_cohort(str(info[key]), models_dir).resolve()), []).append(
                    str(info.get("label") or marker.parent.name))
    return used


def built_cohorts(cohorts_dir: Path, models_dir: Path) -> list[Built]:
    """The user's complete built cohorts in ``cohorts_dir``, newest first, each with the models of ``models_dir``
    trained on it."""
    from core.app.workspace import folder_bytes

    used = models_by_cohort(models_dir)
    out: list[Built] = []
    folders = [p for p in Path(cohorts_dir).glob(f"{PREFIX}*") if p.is_dir() and is_built(p)] \
        if Path(cohorts_dir).is_dir() else []
    for folder in sorted(folders, key=lambda p: p.name, reverse=True):
        try:
            summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # removed meanwhile (another tab)
        out.append(Built(folder, summary, folder_bytes(folder), tuple(used.get(str(folder.resolve()), ()))))
    return out


def delete_built(cohorts_dir: Path, folder: Path, models_dir: Path, jobs: Iterable[Any] = ()) -> None:
    """Delete the built cohort ``folder`` of ``cohorts_dir``; refused (``InputError``) for anything else, while a
    model of ``models_dir`` was trained on it (its evaluation reads the cohort's test split), and while one of the
    user's active ``jobs`` reads it (a training on it: ``core.app.background.refuse_while_read``)."""
    from core.app.background import refuse_while_read

    folder = Path(folder)
    if folder.is_symlink() or folder.resolve().parent != Path(cohorts_dir).resolve() or not is_built(folder):
        raise InputError("cohort", folder.name, "is not a cohort you built from MEDS here", "pick one of the list")
    models = models_by_cohort(models_dir).get(str(folder.resolve()), [])
    if models:
        many = "s" if len(models) > 1 else ""
        raise InputError("cohort", f"built {made_at(folder.name)}", f"is the cohort of your model{many} {', '.join(models)}",
                         "delete those models first (Selected model > Delete this model)")
    refuse_while_read(jobs, folder, "cohort", f"built {made_at(folder.name)}")
    shutil.rmtree(folder)


def meds_cohort_job(ctx: JobContext, meds_file: str, task_file: str, out: str, *, user: str | None = None,
                    base: str | None = None, studies_zip: str | None = None) -> dict:
    """The cohort folder ``out`` built from a MEDS file and an ACES task (``core.meds_cohort.build_meds_cohort``) for
    the Cohort page, as a heavy job (its own process): a hospital's extract (45.8 M events: 86 s and 12 GB,
    docs/BENCHMARKS.md) is read there, not in the server that every user shares.

    With ``user`` (and the data folder ``base``), the folder counts in that user's disk quota: a user already over it
    is refused before anything is read, and the written files are measured against it (``check_quota``, which first
    lets the user's decoded copies and maps give way) and removed when they do not fit. A failed or cancelled build
    leaves no folder (one that was there before is never touched); a complete one ends with its summary
    (``summary.json``, written last). Returns the build's summary (its ``out`` as text).

    ``studies_zip``: a zip of CT studies named by subject id (``core.cohort_studies``), read with the safe zip reader,
    unpacked beside it and moved into the cohort (not copied: one copy on disk), whose every study then passes the PHI gate (a refused cohort is
    removed, its blocked studies named); the unpacked copy is removed whatever happens."""
    from core.app.background import gate_cohort_folder
    from core.app.workspace import check_quota
    from core.io.safezip import read_zip, write_members
    from core.meds_cohort import build_meds_cohort

    root = Path(base) if base else None
    if user is not None:
        check_quota(user, 0, root)
    existed = Path(out).exists()
    unpacked = Path(studies_zip).with_name(Path(studies_zip).name + ".d") if studies_zip else None
    try:
        if studies_zip and unpacked is not None:
            ctx.progress(0.0, "unpacking the studies")
            write_members(read_zip(Path(studies_zip), label="studies zip"), unpacked)
        span = 0.85 if studies_zip else 1.0  # the PHI gate of the studies takes the rest
        summary = {**build_meds_cohort(Path(meds_file), Path(task_file), Path(out), studies=unpacked, move_studies=True,
                                       progress=lambda f, m: ctx.progress(span * f, m)), "out": str(out)}
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
            gate_cohort_folder(ctx, str(out), span=(span, 1.0))
        if user is not None:
            ctx.progress(1.0, "checking your disk quota")
            check_quota(user, 0, root)
        tmp = Path(out) / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary, default=str), encoding="utf-8")
        os.replace(tmp, Path(out) / SUMMARY)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
    return summary
