"""Site models: models trained outside the app that the administrator adds for every user of this server.

A model trained on the command line (``python -m core train``, or ``torchrun`` on a GPU server for a cohort too
large for the app's one heavy job at a time) is a folder: config.json, model.safetensors, metrics.json and
MODEL_CARD.md. :func:`add_site_model` copies such a folder into ``<data dir>/site_models/<slug>/`` with the record
a model trained in the app keeps beside it (``core.app.workspace.TRAINED_MARKER``: its label, strategy and the
cohort folder it was trained on, which stays where it is, on the server). The app then lists it for every user,
after the demo's models, as ``<label> (site)``; Case review, Cohort & models (the test split of its own cohort) and
the exports read it as they read a model trained in the app, except that no user can delete it. Only the
administrator adds and removes site models (``python -m core site-model add|list|remove``); the copy is checked
first: the network loads with strict key matching (``core.registry.load_model``, never unpickled) and the cohort
folder loads.

>>> import tempfile
>>> site_models_dir(Path("/srv/ctehr")).as_posix(), slug("Lung CT 2025 / v2")
('/srv/ctehr/site_models', 'lung-ct-2025-v2')
>>> list_site_models(Path(tempfile.mkdtemp()))
{}
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

from core.app.workspace import TRAINED_MARKER
from core.errors import InputError

FOLDER = "site_models"
SUFFIX = " (site)"  # how the app's model list names a site model: "<label> (site)"
MODEL_FILES = ("config.json", "model.safetensors", "metrics.json", "MODEL_CARD.md")  # what is copied
MAX_LABEL = 60


def site_models_dir(data_dir: Path | str) -> Path:
    """``<data dir>/site_models``: one folder per site model."""
    return Path(data_dir) / FOLDER


def slug(label: str) -> str:
    """The folder name of a site model's copy: its label in lower case, runs of other characters as one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def audit_name(label: str) -> str:
    """The name the audit log records the site model ``label`` under: its :func:`slug`, or where the log refuses that
    slug (a run of 5 digits or a date in it: the log holds no such text) ``site-`` and 10 letters of its SHA-256,
    the same every time (``python -m core site-model list`` shows it beside the label).

    >>> audit_name("Lung CT 2025"), audit_name("Trial 20251124").startswith("site-")
    ('lung-ct-2025', True)
    """
    from core.app.audit import is_label

    name = slug(label)
    if is_label(name):
        return name
    return "site-" + "".join("abcdefghijklmnopqrstuvwxyz"[b % 26] for b in hashlib.sha256(name.encode()).digest()[:10])


def list_site_models(data_dir: Path | str) -> dict[str, tuple[Path, Path]]:
    """``label -> (model folder, cohort folder)`` of the site models whose record is readable, whose network file is
    there and whose cohort folder still exists (one moved away is not listed: the administrator adds it again),
    in the order of their labels."""
    found: dict[str, tuple[Path, Path]] = {}
    root = site_models_dir(data_dir)
    if not root.is_dir():
        return found
    for marker in sorted(root.glob(f"*/{TRAINED_MARKER}")):
        if marker.parent.name.startswith("."):  # a copy being made (add_site_model's partial folder)
            continue
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        cohort = Path(str(info.get("cohort_dir", "")))
        if info.get("label") and (marker.parent / "model.safetensors").is_file() and (cohort / "cohort.csv").is_file():
            found[str(info["label"])] = (marker.parent, cohort)
    return dict(sorted(found.items()))


def _check_label(label: str, data_dir: Path | str, replace: bool) -> str:
    label = " ".join(str(label).split())
    if not label or len(label) > MAX_LABEL or not slug(label):
        raise InputError("--label", label or "(empty)", f"must hold letters or digits, at most {MAX_LABEL} characters",
                         "name the model as users should see it, e.g. 'Lung CT 2025'")
    taken = list_site_models(data_dir)
    same = [other for other in taken if slug(other) == slug(label)]
    if same and not replace:
        raise InputError("--label", label, f"is taken by the site model '{same[0]}'",
                         "choose another label, or pass --replace to put this model in its place")
    if same:
        _refuse_while_read(label, taken[same[0]][0], data_dir, "replace")
    return label


def _refuse_while_read(label: str, target: Path, data_dir: Path | str, change: str) -> None:
    """Refuse to ``change`` (remove, replace) the site model ``label`` at ``target`` while a user's job reads it: an
    external validation would stop half-way, or keep the new weights' numbers under the earlier ones' stamp."""
    if reading := jobs_reading(target, data_dir):
        many = len(reading) > 1
        raise InputError("label", label, f"is read by {len(reading)} running job{'s' * many} of the site's users "
                         f"(\"{reading[0]}\")", f"wait for {'them' if many else 'it'} to end (the user's page shows "
                         f"the progress), then {change} again")


def add_site_model(model_dir: Path | str, cohort_dir: Path | str, label: str, data_dir: Path | str, *,
                   replace: bool = False, device: str = "cpu") -> Path:
    """Copy the model folder ``model_dir`` into the site models of ``data_dir`` under ``label``, trained on
    ``cohort_dir`` (kept where it is: Cohort & models evaluates the model on its test split, and Case review draws
    its reference curves from it); return the copy's folder. Refused with an ``InputError`` naming the field: a
    folder without config.json or model.safetensors, a network that does not load, a cohort folder that does not
    load, a label taken (unless ``replace``)."""
    from core.cohort import load_cohort
    from core.registry import load_model

    src, cohort = Path(model_dir).resolve(), Path(cohort_dir).resolve()
    label = _check_label(label, data_dir, replace)
    for name in MODEL_FILES[:2]:
        if not (src / name).is_file():
            raise InputError("model", str(src), f"holds no {name}", "pass the folder that `python -m core train --out` "
                             "wrote (config.json, model.safetensors, metrics.json, MODEL_CARD.md)")
    loaded = load_model(src, device=device)  # its errors name the file: a pickle, tensors that do not match config.json
    if not (cohort / "cohort.csv").is_file():
        raise InputError("--cohort", str(cohort), "holds no cohort.csv", "pass the cohort folder the model was trained on")
    outcomes = load_cohort(cohort).outcomes_digest()  # loading's own errors name the file and the field
    own = (loaded.metrics or {}).get("cohort_outcomes") or {}  # recorded by training (models since 2026-11-29)
    if own.get("digest") and own["digest"] != outcomes:
        raise InputError("--cohort", str(cohort), f"is not the cohort this model was trained on (other patients or "
                         f"outcomes than its {own.get('subjects')})", "pass the cohort folder the model was trained "
                         "on: its test split gives the metrics every user sees")
    root = site_models_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / slug(label)
    partial = root / f".{slug(label)}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, partial / name)  # a new time: the app loads the new copy, not a cached one
    (partial / TRAINED_MARKER).write_text(json.dumps({
        "cohort_dir": str(cohort), "fusion": loaded.fusion, "label": label, "site": True, "source": str(src),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    replaced = target.exists()
    old = root / f".{slug(label)}.replaced"
    if replaced:  # --replace: the earlier copy is set aside, the whole new one put in its place, then the earlier removed
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)  # two renames: the label is without a model for microseconds, not for a whole rmtree
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    _audit(data_dir, "replace" if replaced else "add", loaded.fusion, label)
    return target


def jobs_reading(folder: Path | str, data_dir: Path | str) -> list[str]:
    """The titles of the users' jobs that a live server of the data folder ``data_dir`` runs and that read ``folder``
    or a path under it (their records, ``core.app.job_journal``; a job of a server gone is not counted)."""
    import os

    from core.app.job_journal import elsewhere
    from core.job_pickle import paths_in

    root, users = os.path.realpath(folder), Path(data_dir) / "users"
    return [job.title for user in (sorted(users.iterdir()) if users.is_dir() else []) if user.is_dir()
            for job in elsewhere(user, Path(data_dir))
            if any(p == root or p.startswith(root + os.sep) for p in paths_in(job.args))]


def remove_site_model(label: str, data_dir: Path | str) -> Path:
    """Remove the site model ``label`` (its copy only: the cohort folder stays); the folder removed. Refused while a
    user's job reads it (:func:`jobs_reading`: an external validation would stop half-way)."""
    found = {slug(name): model for name, (model, _) in list_site_models(data_dir).items()}
    target = found.get(slug(label)) or site_models_dir(data_dir) / slug(label)
    if not slug(label) or not (target / TRAINED_MARKER).is_file():
        raise InputError("label", label, "is no site model here",
                         "see the labels with `python -m core site-model list`")
    _refuse_while_read(label, target, data_dir, "remove")
    fusion = str(json.loads((target / TRAINED_MARKER).read_text()).get("fusion") or "model")
    shutil.rmtree(target)
    _audit(data_dir, "remove", fusion, label)
    return target


def _audit(data_dir: Path | str, change: str, fusion: str, label: str) -> None:
    """A ``site_model`` line in the data folder's audit log (``core.app.audit``): who (``cli:<login name>``), the
    ``change`` (add, replace, remove), the strategy and the label's :func:`audit_name`."""
    import getpass

    from core.app import audit

    login = re.sub(r"[^\x21-\x7e]", "", getpass.getuser())[:200]  # the audit's user: printable ASCII, no space
    audit.record_at(Path(data_dir) / "audit" / "audit.jsonl", f"cli:{login}" if login else "cli", "site_model",
                    fusion, change=change, model=audit_name(label))
