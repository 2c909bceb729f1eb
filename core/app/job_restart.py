"""Trainings that a server restart stopped, started again with one click and the settings they were started with.

When the app queues a training it also writes down, in the job's record (:mod:`core.app.job_journal`), how to start
it again: the name of one of the few job functions that can be (:data:`NAMES`) and its arguments, as plain JSON
(never pickled: a record is read back by name, and only these functions can be named). An upload's zip is not kept
(its bytes were in memory); the cohort folder its training unpacked once the PHI gate passed is, marked whole with the
job's random ``tag`` (``core.app.background.UNPACKED``), so a stopped upload's training starts again from that folder.

:func:`plan` turns a stopped record into the job to queue, or says in one line why it cannot be started again:
the cohort folder is gone, every model it was training was finished meanwhile, or the record names a folder outside
the user's own. A training of every strategy starts again with the strategies not yet finished only.

>>> import tempfile
>>> from core.app.background import train_job
>>> user = Path(tempfile.mkdtemp()); (user / "cohorts" / "c").mkdir(parents=True)
>>> (user / "cohorts" / "c" / "cohort.csv").write_text("subject_id\\n")
11
>>> text = spec(train_job, (str(user / "cohorts" / "c"), "ehr_only", str(user / "models" / "m"), 5), {}, "train1")
>>> job = plan(text, user, "", "cpu"); job.fn is train_job, job.args[1], Path(job.args[2]).name, job.key
(True, 'ehr_only', 'm', 'train1')
>>> plan(text.replace('"train"', '"os.system"', 1), user, "", "cpu")
'it cannot be started again from here'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.app import background as bg
from core.app.workspace import TRAINED_MARKER

FINISHED = ("its model was finished before the restart",
            "every model it was training was finished before the restart")  # plan's lines for a training that ended
UPLOADED = {"train_uploaded": "train", "train_every": "train_every_on_folder"}  # the folder job each upload becomes


def _functions() -> dict[str, Callable[..., Any]]:
    return {"train": bg.train_job, "train_every_on_folder": bg.train_every_on_folder_job,
            "train_uploaded": bg.train_uploaded_job, "train_every": bg.train_every_job}


NAMES: tuple[str, ...] = tuple(_functions())  # the job functions a record may name


@dataclass(frozen=True)
class Restart:
    """A stopped training as the job to queue again: ``fn(ctx, *args, **kwargs)`` under ``key`` (the page that started
    it finds it again by that key); ``fusions``: the strategies it trains (for the quota and the audit log)."""

    fn: Callable[..., Any]
    args: tuple
    kwargs: dict = field(default_factory=dict)
    key: str | None = None
    fusions: tuple[str, ...] = ()


def spec(fn: Callable[..., Any], args: tuple, kwargs: dict, key: str | None) -> str:
    """How to start ``fn(ctx, *args, **kwargs)`` again, as JSON for the job's record; "" when ``fn`` is not a training
    that can be, or an argument is not plain data. An upload's bytes (its first argument) are left out."""
    name = next((n for n, f in _functions().items() if f is fn), None)
    if name is None:
        return ""
    if name in UPLOADED:
        args = args[1:]  # the zip's bytes: the cohort folder it unpacks is kept instead
    try:
        return json.dumps({"fn": name, "args": list(args), "kwargs": dict(kwargs), "key": key}, allow_nan=False)
    except (TypeError, ValueError):
        return ""


def _inside(path: str, user_dir: Path) -> Path:
    found = Path(path).resolve()
    if not found.is_relative_to(Path(user_dir).resolve()):
        raise ValueError(f"names {path}, outside the user's folder")
    return found


def _done(out: str) -> bool:
    return (Path(out) / TRAINED_MARKER).is_file()


def plan(text: str, user_dir: Path, resume: str, device: str) -> Restart | str:
    """The job that starts a stopped training again (``text``: its :func:`spec`; ``resume``: the record's kept cohort,
    ``cohorts/<name>``, for an upload; ``device``: this server's), or why it cannot be started again, in one line."""
    try:
        data = json.loads(text) if text else {}
        name, args, kwargs = data.get("fn"), list(data.get("args") or []), dict(data.get("kwargs") or {})
    except (ValueError, AttributeError, TypeError):
        return "its settings could not be read back"
    if name not in NAMES:
        return "it cannot be started again from here"
    if name in UPLOADED:
        if not resume:
            return "the cohort it had unpacked was not kept"
        name, kwargs = UPLOADED[name], {k: v for k, v in kwargs.items() if k != "tag"}
        # the cohorts folder becomes the cohort: unpack_gated writes the zip's cohort.csv at the top of its folder
        args[0] = str(Path(user_dir) / "cohorts" / Path(resume).name)
        if not (Path(args[0]) / "cohort.csv").is_file():
            return "the cohort it had unpacked is gone"
    if "device" in kwargs:
        kwargs["device"] = device  # this server's, not the stopped one's
    try:
        cohort_dir = _inside(str(args[0]), user_dir)
        if name == "train":
            outs = [_inside(str(args[2]), user_dir)]
        else:
            outs = [_inside(str(out), user_dir) for out, _label in dict(args[1]).values()]
    except (ValueError, IndexError, TypeError, OSError) as err:
        return f"its settings are not a training of this user's ({err})"
    if not (cohort_dir / "cohort.csv").is_file():
        return "its cohort folder is gone"
    if name == "train":
        if _done(str(outs[0])):
            return FINISHED[0]
        return Restart(_functions()[name], tuple(args), kwargs, data.get("key"), (str(args[1]),))
    left = {f: tuple(run) for f, run in dict(args[1]).items() if not _done(str(run[0]))}
    if not left:
        return FINISHED[1]
    args[1] = left
    return Restart(_functions()[name], tuple(args), kwargs, data.get("key"), tuple(left))

