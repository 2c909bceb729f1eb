"""Bounded folders of ``.npz`` files (pickle-free caches): atomic writes and least-recently-used trimming.

Used by the prediction cache (``core.predict.PredictionCache``) and the decoded-study cache
(``core.io.study_cache.StudyCache``). A reader touches the files it uses (``os.utime``), so the
least recently used go first when a folder passes its bounds.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from core.errors import InputError

_TRIM_LOCK = threading.Lock()
T = TypeVar("T")


class BoundedFolder:
    """A folder of ``.npz`` files kept within ``max_entries`` files and ``max_bytes`` bytes (``name`` in errors)."""

    def __init__(self, root: Path | str, max_entries: int, max_bytes: int, name: str) -> None:
        if int(max_entries) <= 0 or int(max_bytes) <= 0:
            raise InputError(name, f"{max_entries} entries, {max_bytes} bytes", "bounds must be positive",
                             f"use e.g. {max(int(max_entries), 100)} entries and {max(int(max_bytes) >> 20, 64)} MiB")
        self.root = Path(root)
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to ``path`` atomically (a partial file, then a rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path, ".npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def save_tensors(path: Path, tensors: Mapping[str, Any], meta: dict[str, str], *, what: str) -> bool:
    """Write torch ``tensors`` and string ``meta`` to ``path`` as one safetensors file, atomically (jobs of one server
    train in threads of one process); a folder that cannot be written to (a read-only cohort folder) is said on
    stderr as ``what`` and gives False, and the caller goes on without it."""
    import sys

    from safetensors.torch import save_file

    tmp = partial_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        print(f"warning: could not write {what} ({path}): {err.strerror}", file=sys.stderr)
        return False
    return True


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one array to ``path`` (a ``.npy``, readable memory-mapped) atomically, as :func:`save_npz` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path, ".npy")
    np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
    tmp.replace(path)


def partial_name(path: Path, suffix: str = "") -> Path:
    """A temporary name beside ``path`` that no other process or thread of this one uses (``.partial`` marks it)."""
    return path.with_name(f"{path.stem if suffix else path.name}.{os.getpid()}.{threading.get_ident()}.partial{suffix}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a partial file and a rename: a reader never sees half a file, and two
    sessions (threads) that write the same file at once do not rename each other's partial file away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    tmp.write_bytes(data)
    tmp.replace(path)


def load_npz(path: Path, build: Callable[[Mapping[str, Any], dict[str, Any]], T]) -> T | None:
    """``build(arrays, meta)`` from the ``.npz`` at ``path`` (``meta``: its JSON ``meta`` entry), read without pickle;
    None when the file is missing. A torn or foreign file (unreadable, or ``build`` fails on it) is deleted and
    gives None, so the caller computes the entry again; a file read is touched (least recently used goes first)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            value = build(z, json.loads(str(z["meta"])))
        os.utime(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)
        return None
    return value


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def trim(root: Path, max_entries: int, max_bytes: int, companions: tuple[str, ...] = (),
         pattern: str = "*.npz") -> None:
    """Delete the least recently used ``.npz`` files (``pattern``) of ``root`` beyond ``max_entries`` files or
    ``max_bytes`` bytes (with their files of the same stem and a suffix in ``companions``, whose bytes count with
    theirs)."""
    with _TRIM_LOCK:  # one trim at a time in this process (other processes: missing files are skipped)
        files = []
        for p in root.glob(pattern):
            try:
                if ".partial" not in p.name:
                    files.append((p.stat(), p))
            except FileNotFoundError:  # another session trimmed it first
                continue
        files.sort(key=lambda sp: sp[0].st_mtime_ns, reverse=True)  # newest first
        total = 0
        for n, (st, p) in enumerate(files):
            total += st.st_size + sum(_size(p.with_suffix(suffix)) for suffix in companions)
            if n >= max_entries or total > max_bytes:
                p.unlink(missing_ok=True)
                for suffix in companions:
                    p.with_suffix(suffix).unlink(missing_ok=True)
