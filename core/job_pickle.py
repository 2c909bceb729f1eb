"""How a heavy job's function and arguments travel to its own process (``core.jobs`` -> ``core.job_process``).

Plain pickling, except for a memory-mapped numpy array read from a file (``np.load(path, mmap_mode="r" or "c")``:
a decoded CT kept by ``core.io.study_cache``, a map kept by ``core.app.attribution_volume``): it travels as its
file's name, offset, dtype, shape and stamp (size and modification time), and the job's process maps the same file
again. A full-resolution CT (512 x 512 x 300, 315 MB of float32) is then neither copied into a pickle in the
server nor held twice: both processes read the operating system's cached pages of one file.

The job reads the file's values: the app never writes into such an array (a copy-on-write mapping would keep a
write private to the process that made it). A file changed or removed before the job's process opens it is one
clear error (run the job again), never another CT's voxels.

>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "hu.npy"  # the study cache's paths are Paths
>>> np.save(path, np.arange(6000, dtype=np.float32).reshape(10, 20, 30))  # 24 kB of values
>>> hu = np.load(path, mmap_mode="c")
>>> blob = dumps({"hu": hu})
>>> len(blob) < 1000, bool(loads(blob)["hu"].sum() == hu.sum()), type(loads(blob)["hu"]).__name__
(True, True, 'memmap')
>>> len(dumps(hu[1:])) > 20000  # a view is sent as its values
True
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import sys
from pathlib import Path
from typing import Any


class MappedFileChanged(RuntimeError):
    """A memory-mapped array's file changed or went away between the job's queueing and its start."""


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def open_mapped(path: str, dtype: str, shape: tuple[int, ...], offset: int, order: str,
                stamp: tuple[int, int]) -> Any:
    """The array :func:`dumps` sent by name: ``path`` mapped again, copy-on-write (refused when its size or
    modification time is not ``stamp``'s)."""
    import numpy as np

    try:
        now = _stamp(path)
    except FileNotFoundError:
        now = None
    if now != tuple(stamp):
        raise MappedFileChanged(f"the array file {os.path.basename(path)} {'was removed' if now is None else 'changed'}"
                                " after the job was queued (a cache trimmed it); run the job again")
    return np.memmap(path, dtype=np.dtype(dtype), mode="c", offset=offset, shape=tuple(shape), order=order)


def _by_name(obj: Any) -> tuple | None:
    """``(open_mapped, args)`` for a whole array mapped from a file, None for anything else (pickled as usual)."""
    np = sys.modules.get("numpy")
    if np is None or type(obj) is not np.memmap or not isinstance(obj.base, mmap.mmap):
        return None  # a view of a memmap has the memmap as its base: its own offset is unknown, sent as values
    filename = getattr(obj, "filename", None)  # a str, or the Path that np.load was given
    if not isinstance(filename, (str, os.PathLike)) or obj.mode not in ("r", "c") or not os.path.isfile(filename):
        return None
    filename = os.path.abspath(os.fspath(filename))
    if obj.flags.c_contiguous:
        order = "C"
    elif obj.flags.f_contiguous:
        order = "F"
    else:
        return None
    return open_mapped, (filename, obj.dtype.str, tuple(obj.shape), int(obj.offset), order, _stamp(filename))


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        found = _by_name(obj)
        return NotImplemented if found is None else found


def dumps(obj: Any) -> bytes:
    """``obj`` pickled, with whole memory-mapped arrays by file name (see the module docstring)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    """What :func:`dumps` wrote (a mapped array's file opened again here)."""
    return pickle.loads(data)


def paths_in(value: Any) -> set[str]:
    """The absolute file-system paths a job's arguments name (``str`` or ``Path`` values, in nested dicts, lists,
    tuples and sets), resolved: the folders a job reads, so that none of them is deleted under it.

    >>> sorted(paths_in(("/tmp/../tmp/m1", {"cohort": Path("/tmp/c")}, ["relative", 3, ("/tmp/x",)])))
    ['/tmp/c', '/tmp/m1', '/tmp/x']
    """
    if isinstance(value, str | Path):
        return {os.path.realpath(value)} if os.path.isabs(value) else set()
    if isinstance(value, dict):
        return set().union(*(paths_in(k) | paths_in(v) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return set().union(*(paths_in(v) for v in value))
    return set()
