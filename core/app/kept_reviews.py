"""A browser tab's review kept on disk, so that a reload (F5) or a bookmark opens the same case, model and view.

A tab's address carries only an opaque random token (``?review=<32 hex>``), never a case, a patient id or a model's
folder: proxies and browser histories keep addresses. What the token stands for lives in the signed-in user's own
folder (``users/<key>/reviews/<token>.json``, mode 0600 in a 0700 folder), so another user who gets the address finds
nothing under it. Only plain settings are kept (the case as its source and id, the model's label, the horizon, the
viewer's slice, window, overlay, method and opacity): every value is checked again when it is read back, and the pages
decide whether it still names a case and a model that exist.

A user keeps at most :data:`MAX_KEPT` reviews (the most recently written or opened); older ones are removed when a
new one is written, and a token whose review is gone opens the default case.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

from core.app import workspace as workspaces

REVIEWS = "reviews"  # users/<key>/reviews/<token>.json
MAX_KEPT = 1000  # a few hundred bytes each
MAX_TEXT = 300  # the longest text value kept (a case id, a model label, a method's name)
_TOKEN = re.compile(r"[0-9a-f]{32}")
#: the value kinds a kept review may hold, by key; anything else is dropped when written and when read
KINDS: dict[str, str] = {
    "case": "case", "_slice_case": "case",
    "model_name": "text", "window": "text", "method": "text",
    "horizon_days": "count", "axial_slice": "count", "coronal_row": "count", "sagittal_col": "count",
    "opacity": "fraction",
    "show_saliency": "flag", "show_outcome": "flag",
    "case_numbers": "numbering",  # the session's numbers of demo and cohort cases ("Demo case 2" in exports)
    "_worst_list": "worst",  # the worst-ordered patients Case review steps through (pages/_worst_patients.py)
}
MAX_NUMBERED = 500  # the most case numbers a review keeps
MAX_WORST = 50  # the most patients of a worst-ordered list a review keeps


def new_token() -> str:
    """A fresh random token (128 bits, lowercase hex)."""
    return secrets.token_hex(16)


def is_token(value: Any) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def _valid(kind: str, value: Any) -> bool:
    if kind == "case":
        return (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in value))
    if kind == "text":
        return isinstance(value, str) and 0 < len(value) <= MAX_TEXT
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**7
    if kind == "numbering":
        return (isinstance(value, (list, tuple)) and len(value) <= MAX_NUMBERED
                and all(isinstance(row, (list, tuple)) and len(row) == 3 and _valid("case", row[:2])
                        and _valid("count", row[2]) for row in value))
    if kind == "worst":  # {"model", "what", "cases": [[source, id], ...], "notes": {id: text}}
        return (isinstance(value, dict) and set(value) == {"model", "what", "cases", "notes"}
                and _valid("text", value["model"]) and _valid("text", value["what"])
                and isinstance(value["cases"], (list, tuple)) and 0 < len(value["cases"]) <= MAX_WORST
                and all(_valid("case", c) for c in value["cases"]) and isinstance(value["notes"], dict)
                and len(value["notes"]) <= MAX_WORST
                and all(_valid("text", k) and isinstance(v, str) and len(v) <= MAX_TEXT for k, v in value["notes"].items()))
    if kind == "fraction":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
    return isinstance(value, bool)  # "flag"


def clean(state: dict[str, Any]) -> dict[str, Any]:
    """The part of ``state`` a review may keep: known keys with values of their kind (a case as a tuple).

    >>> clean({"case": ["demo", "demo0003"], "axial_slice": 12, "opacity": 2.0, "other": 1, "show_saliency": 1})
    {'case': ('demo', 'demo0003'), 'axial_slice': 12}
    """
    kept: dict[str, Any] = {}
    for key, value in state.items():
        kind = KINDS.get(key)
        if kind == "numbering" and isinstance(value, dict):  # as the session holds it: {(source, id): number}
            value = [[*case, number] for case, number in list(value.items())[-MAX_NUMBERED:]]
        if kind is not None and _valid(kind, value):
            kept[key] = (tuple(value) if kind == "case" else [list(row) for row in value] if kind == "numbering"
                         else {**value, "cases": [list(c) for c in value["cases"]]} if kind == "worst" else value)
    return kept


def _folder(user: str, base: Path | None) -> Path:
    return workspaces.private_dir(workspaces.user_root(user, base) / REVIEWS)


def save(user: str, token: str, state: dict[str, Any], base: Path | None = None) -> None:
    """Keep ``state`` (:func:`clean` of it) as the review ``token`` of ``user``; when that makes a new review, the
    oldest beyond :data:`MAX_KEPT` go (a review rewritten, as each viewer step does, lists nothing)."""
    if not is_token(token):
        raise ValueError(f"review token {token!r} is not 32 lowercase hex digits; fix: make one with new_token()")
    folder = _folder(user, base)
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in clean(state).items()}
    target = folder / f"{token}.json"
    new = not target.exists()
    tmp = folder / f".{token}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.replace(tmp, target)
    if new:
        _prune(folder)


def _prune(folder: Path) -> None:
    kept = []
    for path in folder.glob("*.json"):
        try:
            kept.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # removed meanwhile by another session of the user
            continue
    kept.sort(reverse=True)
    for _, path in kept[MAX_KEPT:]:
        path.unlink(missing_ok=True)


def load(user: str, token: Any, base: Path | None = None) -> dict[str, Any] | None:
    """The review ``token`` of ``user`` (:func:`clean` of what was kept), or None: no such token for this user, a value
    that is not a token, or a file that cannot be read as a review (written by something else)."""
    if not is_token(token):
        return None
    path = _folder(user, base) / f"{token}.json"
    try:
        raw = json.loads(path.read_text())
        os.utime(path)  # opened: among the most recent, so a bookmark in use is not pruned
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # a damaged file (a write cut short by a full disk): the tab opens the default case
    return clean(raw) if isinstance(raw, dict) else None
