"""Decoding a DICOM series' slices in forked copies of this process, writing into shared memory.

The compressed-pixel codecs that pydicom calls (OpenJPEG, CharLS, libjpeg, RLE) hold the GIL, so threads do not
decode them in parallel; forked children do. :func:`decode_in_processes` runs ``decode(i)`` over the slices in
this process and its children, which take the next slices from one pipe, and report their warnings or their error
back as one JSON line. Only for a process where fork is safe (the loader decides: Linux, no other thread alive).
"""

from __future__ import annotations

import os
import struct
import warnings as _warnings
from typing import Callable, Sequence

import numpy as np

from core.errors import InputError
from core.io.dicom_source import note_pydicom_warnings, pydicom_warnings


def shared_empty(shape: tuple[int, int, int]) -> np.ndarray:
    """A float32 array in anonymous shared memory (kept alive by the array), visible to forked children."""
    import mmap

    nbytes = int(np.prod(shape)) * 4
    buffer = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buffer, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)


_QUEUE_TOKENS = 1024  # 4 kB of 4-byte tokens: fits the smallest pipe buffer (one page), so writing never blocks


def _claim(queue_fd: int, chunk: int, n: int) -> range:
    """The next slices from the shared work queue (a pipe of 4-byte first indices); empty when it is drained."""
    token = os.read(queue_fd, 4)  # reads of 4 bytes from a pipe never interleave between processes
    if len(token) != 4:
        return range(0)
    first = struct.unpack("<I", token)[0]
    return range(first, min(first + chunk, n))


def decode_in_processes(decode: Callable[[int], None], n: int, workers: int) -> None:
    """Run ``decode(i)`` for ``i`` in ``range(n)`` in this process and ``workers - 1`` forked children.

    The indices wait in a pipe that every process reads from (whoever is free
    takes the next slice, so a process slowed by another job on its core does
    less). ``decode`` writes into shared memory. A child reports its pydicom
    warnings or its error (an ``InputError`` keeps its fields) as one JSON line
    on a pipe and leaves with ``os._exit``; this process re-raises the first error.
    """
    import json
    import signal

    chunk = -(-n // _QUEUE_TOKENS)  # slices per token
    queue_r, queue_w = os.pipe()
    try:
        os.write(queue_w, b"".join(struct.pack("<I", i) for i in range(0, n, chunk)))
    finally:
        os.close(queue_w)
    children: list[tuple[int, int]] = []  # (pid, read end of its report pipe)
    try:
        for _ in range(workers - 1):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: decode what it claims, report, leave without running any cleanup of the parent's
                os.close(read_fd)
                code = 0
                try:
                    # a forked child has one thread (this one) and exits below: catch_warnings is process-local here
                    with _warnings.catch_warnings(record=True) as caught, pydicom_warnings() as logged:
                        _warnings.simplefilter("always")
                        while slices := _claim(queue_r, chunk, n):
                            for i in slices:
                                decode(i)
                    others = [str(w.message) for w in caught if issubclass(w.category, UserWarning)
                              and str(w.message) not in logged]
                    report: dict[str, object] = {"warnings": others, "pydicom": list(logged)}
                except InputError as err:
                    report, code = {"input_error": [err.field, str(err.value), err.problem, err.fix]}, 3
                except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it as one line
                    report, code = {"error": f"{type(err).__name__}: {err}"}, 4
                try:
                    os.write(write_fd, json.dumps(report).encode())
                finally:
                    os._exit(code)
            os.close(write_fd)
            children.append((pid, read_fd))
        while slices := _claim(queue_r, chunk, n):
            for i in slices:
                decode(i)
    except BaseException:
        for pid, _ in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(children)
        raise
    finally:
        os.close(queue_r)
    for report, status in _reap(children):
        if "input_error" in report:
            field_, value, problem, fix = report["input_error"]  # type: ignore[misc]
            raise InputError(field_, value, problem, fix)
        if "error" in report or status != 0:
            why = report.get("error") or (f"signal {-status}" if status < 0 else f"exit status {status}")
            raise InputError("DICOM series", f"{n} slices", f"pixel data cannot be decoded ({why})", "re-export the series")
        note_pydicom_warnings(report.get("pydicom", []))  # type: ignore[arg-type]  # this thread's load collects them
        for message in report.get("warnings", []):  # type: ignore[union-attr]  # other libraries': warned here
            _warnings.warn(str(message), UserWarning, stacklevel=2)


def _reap(children: Sequence[tuple[int, int]]) -> list[tuple[dict[str, object], int]]:
    """Read each child's report to its end and wait for it: [(report, exit status or -signal)]."""
    import json

    out: list[tuple[dict[str, object], int]] = []
    for pid, read_fd in children:
        chunks: list[bytes] = []
        try:
            while chunk := os.read(read_fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        try:
            report = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            report = {}
        out.append((report if isinstance(report, dict) else {}, code))
    return out
