"""Append-only audit log: who opened, uploaded, exported, trained or validated what, and when; never PHI.

One JSON object per line in ``<data_dir>/audit/audit.jsonl``::

    {"time": "2026-11-22T10:47:03.123456Z", "user": "clinician-7f3a", "action": "open",
     "target": "case", "details": {"source": "demo", "case": 3}}

* ``user`` is the identity provider's ``sub`` claim (``"local"`` without sign-in);
* ``action`` is one of :data:`ACTIONS`;
* ``target`` and every ``details`` value are *labels the code chose* (a model or
  strategy name, a session case number, a file kind), never text taken from an
  upload or a patient record.

The PHI rule (:func:`check_label`), enforced on ``target`` and every ``details``
value, is a backstop for a caller that passes the wrong thing:

* a string is a slug: 1-64 characters from ``a-z 0-9 _ - :`` (no capitals,
  spaces, ``^``, ``/``, ``.`` or ``@``: what names, file names, paths and e-mail
  addresses are made of), with no run of 5 or more digits (record numbers, phone
  numbers, compact dates) and nothing shaped like a date (``2024-01-05``);
* an int or a float has at most 5 integer digits (``abs(x) < 100000``) and is
  finite; ``bool`` is accepted;
* anything else (None, bytes, lists, dicts, datetimes) is refused.

A patient of a user's own cohort is named by :func:`patient_ref`, a keyed pseudonym of its subject id (the detail
``patient``: ``pt-`` and 16 letters of HMAC-SHA256 under a random key kept beside the log, ``pseudonym.key``): the log
holds no identifier, and whoever holds the key answers "who opened patient X?" (:func:`records_of`).

A refused value raises :class:`~core.errors.InputError` whose message names the
field but never echoes the value. The file is opened for every record with
``O_APPEND | O_NOFOLLOW`` (one ``write`` per line, never truncated), created with
mode 0600 in a 0700 folder; a process lock and an exclusive ``flock`` keep lines
whole when threads or replicas on one host write at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from core.app import paths
from core.errors import InputError

ACTIONS: frozenset[str] = frozenset({"open", "upload", "export", "train", "validate", "login", "logout",
                                     "site_model"})
LOCAL_USER = "local"
FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_NUMBER = 100_000
_SLUG = re.compile(r"[a-z0-9_:\-]{1,64}")
_DIGIT_RUN = re.compile(r"\d{5,}")
_DATE_SHAPE = re.compile(r"\d{1,4}[-_:]\d{1,2}[-_:]\d{1,4}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_USER = re.compile(r"[\x21-\x7e]{1,255}")  # a provider's sub: printable ASCII, no spaces
_RESERVED = frozenset({"time", "user", "action", "target", "details"})
_LOCK = threading.Lock()


def audit_path() -> Path:
    """``<data_dir>/audit/audit.jsonl`` (``$CTEHR_DATA_DIR`` or ``./data``)."""
    return paths.data_dir() / "audit" / "audit.jsonl"


KEY_FILE = "pseudonym.key"  # beside the log: 32 random bytes, made once, shared by every replica of the data folder
_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # no digits in a pseudonym: it is a slug without digit runs


def _pseudonym_key(folder: Path) -> bytes:
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = folder / f".{KEY_FILE}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # whole or not at all; a replica that made one first wins
        except FileExistsError:
            pass  # another process (a replica) made it meanwhile: its key is the one
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) != 32:
        raise InputError("audit key", f"{len(key)} bytes", f"is not the 32 random bytes of {KEY_FILE}",
                         "restore it from the backup of the audit folder (a new key names every patient anew)")
    return key


def patient_ref(subject_id: str, folder: Path | None = None) -> str:
    """The audit log's name for the patient ``subject_id`` (spaces around it ignored): ``pt-`` and 16 letters of
    HMAC-SHA256 under the data folder's pseudonym key, the same for every user, session and replica. Without the key
    it names no one; with it, a given id's records are found (:func:`records_of`)."""
    digest = hmac.new(_pseudonym_key(audit_path().parent if folder is None else Path(folder)),
                      str(subject_id).strip().encode("utf-8"), hashlib.sha256).digest()
    return "pt-" + "".join(_LETTERS[b % 26] for b in digest[:16])


def records_of(subject_id: str, path: Path | str | None = None) -> list[dict]:
    """The audit records that name the patient ``subject_id`` (``details.patient``), oldest first: who opened or
    exported that patient, and when."""
    log = audit_path() if path is None else Path(path)
    ref = patient_ref(subject_id, log.parent)
    return [r for r in read_audit(log) if (r.get("details") or {}).get("patient") == ref]


def check_label(field: str, value: object) -> str | int | float | bool:
    """``value`` when it passes the PHI rule of this module, else an ``InputError`` naming ``field``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(field, "a non-finite number", "is not a countable label",
                             "log a finite number or leave the detail out")
        if abs(value) >= MAX_NUMBER:
            raise InputError(field, f"a number with {len(str(int(abs(value))))} digits",
                             "could be a record number, phone number or timestamp",
                             f"log a session case number or a count under {MAX_NUMBER}")
        return value
    if isinstance(value, str):
        if not _SLUG.fullmatch(value):
            raise InputError(field, f"a {len(value)}-character string",
                             "is not a slug of 1-64 characters from a-z 0-9 _ - : (names, file names, "
                             "paths and e-mail addresses are refused)",
                             "log a label the code chose (model name, case number, file kind), never text "
                             "from an upload")
        if _DIGIT_RUN.search(value) or _DATE_SHAPE.search(value):
            raise InputError(field, f"a {len(value)}-character string",
                             "holds a run of 5+ digits or a date",
                             "log a session case number instead of record numbers or dates")
        return value
    raise InputError(field, f"a {type(value).__name__}", "is not a str, int, float or bool",
                     "log a short label or a number")


def is_label(value: object) -> bool:
    """Whether ``value`` passes :func:`check_label` (a caller that may leave a detail out rather than fail)."""
    try:
        check_label("value", value)
    except InputError:
        return False
    return True


def _check_user(user_id: str) -> str:
    if not isinstance(user_id, str) or not _USER.fullmatch(user_id):
        raise InputError("user_id", "a value that is not 1-255 printable ASCII characters",
                         "is not a provider subject id", "pass st.user's 'sub' claim or 'local'")
    return user_id


def make_entry(user_id: str, action: str, target: str, details: dict[str, object]) -> dict:
    """The record as it is written (validated; the time is now, in UTC)."""
    if action not in ACTIONS:
        raise InputError("action", action if isinstance(action, str) and len(action) < 20 else "a value",
                         f"is not one of {sorted(ACTIONS)}", "use one of the audit actions")
    checked: dict[str, object] = {}
    for key, value in details.items():
        if not _DETAIL_KEY.fullmatch(key) or key in _RESERVED:
            raise InputError("details", key[:32], "is not a lowercase identifier key (or is reserved)",
                             "name details like case, source, kind, fusion")
        checked[key] = check_label(f"details.{key}", value)
    entry: dict[str, object] = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "user": _check_user(user_id),
        "action": action,
        "target": check_label("target", target),
    }
    if checked:
        entry["details"] = checked
    return entry


def record(user_id: str, action: str, target: str, **details: object) -> None:
    """Append one audit line to :func:`audit_path` (see the module docstring for the rules)."""
    record_at(audit_path(), user_id, action, target, **details)


def record_at(log: Path, user_id: str, action: str, target: str, **details: object) -> None:
    """:func:`record` into the log ``log`` (a command given the app's data folder, not run by the app)."""
    entry = make_entry(user_id, action, target, details)
    line = (json.dumps(entry, separators=(",", ":"), sort_keys=False) + "\n").encode("ascii")
    append_line(log, line)


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` in one ``write`` with ``O_APPEND``, under a thread lock and ``flock``."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with _LOCK:
        fd = os.open(path, flags, FILE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
                os.fchmod(fd, FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"audit: wrote {written} of {len(line)} bytes to {path}")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def read_audit(path: Path | str | None = None) -> list[dict]:
    """Every record of the audit log, oldest first (an empty list when there is none yet).

    A line that is not a JSON object raises ``InputError`` naming its line number.
    """
    target = Path(path) if path is not None else audit_path()
    if not target.exists():
        return []
    out: list[dict] = []
    with open(target, encoding="ascii") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{target.name} line {number}", "a line", f"is not JSON ({exc.msg})",
                                 "restore the audit log from its copy; never edit it by hand") from None
            if not isinstance(entry, dict):
                raise InputError(f"{target.name} line {number}", "a line", "is not a JSON object",
                                 "restore the audit log from its copy; never edit it by hand")
            out.append(entry)
    return out
