"""A user's own cohorts whose patients Case review opens: each cohort a model of the user was trained on, and each
cohort the user built from MEDS (``core.app.meds_cohorts``), all kept in ``users/<key>/cohorts/``.

A model trained in the app is evaluated on its cohort's test split; a clinician then wants to open those patients
one by one, with the CT, the saliency and the curve, as for a demo case. This module lists such cohorts
(:func:`reviewable`) and turns a cohort's folder name back into its path (:func:`resolve`) only when the folder is
one of the list: a name from a request (a restored setting, a stale picker value) can never reach another folder,
another user's, or a cohort still being unpacked or built.

>>> describe("meds-20261128-183005-a1b2c3"), describe("20261127-051000"), describe("site-x")
('MEDS cohort built 28 Nov 18:30', 'cohort uploaded 27 Nov 05:10', 'cohort site-x')
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from core.app.background import COHORT_STAMP
from core.app.meds_cohorts import is_built, made_at, models_by_cohort
from core.errors import InputError


def describe(name: str) -> str:
    """How the app names the user's cohort folder ``name``: by when it was built from MEDS or uploaded."""
    built = made_at(name)
    if built is not None:
        return f"MEDS cohort built {built}"
    try:
        return f"cohort uploaded {time.strftime('%d %b %H:%M', time.strptime(name, COHORT_STAMP))}"
    except ValueError:
        return f"cohort {name}"


@dataclass(frozen=True)
class UserCohort:
    """One of the user's cohorts: its folder and the labels of the user's models trained on it."""

    path: Path
    models: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        return describe(self.name)


def reviewable(cohorts_dir: Path, models_dir: Path) -> list[UserCohort]:
    """The cohorts in ``cohorts_dir`` that a model of ``models_dir`` was trained on, or that were built from MEDS
    here (complete), newest first; folders elsewhere (the demo cohort a user trained on), links and half-written
    folders are left out."""
    root = Path(cohorts_dir)
    if not root.is_dir():
        return []
    used = models_by_cohort(models_dir)
    found: list[tuple[float, UserCohort]] = []
    for folder in root.iterdir():
        if folder.is_symlink() or not folder.is_dir() or not (folder / "cohort.csv").is_file():
            continue
        models = tuple(used.get(str(folder.resolve()), ()))
        if models or is_built(folder):
            try:
                found.append((folder.stat().st_mtime, UserCohort(folder, models)))
            except OSError:
                continue  # deleted meanwhile (another tab)
    return [c for _, c in sorted(found, key=lambda pair: pair[0], reverse=True)]


def resolve(cohorts_dir: Path, models_dir: Path, name: str) -> Path:
    """The folder of the user's cohort ``name`` (a folder name, as :class:`UserCohort` gives it); anything that is
    not one of :func:`reviewable`'s cohorts is refused with an ``InputError``."""
    for cohort in reviewable(cohorts_dir, models_dir):
        if cohort.name == name:
            return cohort.path
    raise InputError("cohort", str(name)[:80], "is not one of your cohorts (deleted, or never yours)",
                     "pick a case from the Case list")
