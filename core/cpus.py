"""How many CPU threads the server's heavy jobs get (a leaf: no torch, nothing of the project but its errors)."""

from __future__ import annotations

import os

HEAVY_THREADS_ENV = "CTEHR_HEAVY_THREADS"


def heavy_threads() -> int:
    """torch's CPU threads in a heavy job's process: ``CTEHR_HEAVY_THREADS``, else every CPU this server may use but
    one (left to the server and its light jobs), at least 1. One heavy job runs at a time, so a 16-core server
    trains and maps with 15 threads, a 2-core one with 1.

    >>> os.environ[HEAVY_THREADS_ENV] = "6"; heavy_threads()
    6
    >>> os.environ[HEAVY_THREADS_ENV] = "0"; heavy_threads()
    Traceback (most recent call last):
    ...
    core.errors.InputError: CTEHR_HEAVY_THREADS: got 0, must be a whole number of threads, 1 or more; fix: set it to e.g. 4, or unset it (every CPU but one)
    >>> del os.environ[HEAVY_THREADS_ENV]; heavy_threads() == max(len(os.sched_getaffinity(0)) - 1, 1)
    True
    """
    from core.errors import InputError

    raw = os.environ.get(HEAVY_THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise InputError(HEAVY_THREADS_ENV, raw, "must be a whole number of threads, 1 or more",
                             "set it to e.g. 4, or unset it (every CPU but one)")
        return int(raw)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(cpus - 1, 1)
