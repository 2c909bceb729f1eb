"""A folder's JPEG 2000 slices decoded on threads ahead of the DICOM loader (:class:`Prefetch`).

Started before numpy and pydicom are imported (this module imports neither),
so on a fresh process OpenJPEG (:mod:`core.io.j2k`, outside the GIL) runs
beside the imports. Files are found by their bytes (the file meta's transfer
syntax, Rows, Columns and the encapsulated PixelData), not parsed: the loader
uses a slice decoded here only where its own parse, with the PHI gate on
every element, puts PixelData at the same offset with the same size,
signedness and a single frame. While slices are decoded ahead from the main
thread the interpreter's switch interval is 0.1 ms, so a decoding thread does
not wait 5 ms for the GIL after each slice (:class:`_SwitchInterval`).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import weakref
from typing import Self

from core.io.j2k import DecodedJ2K, J2KUnsupported, available, decode

__all__ = ["PREFETCH_MAX_PIXELS", "Prefetch", "prefetch"]

_TS_TAG = b"\x02\x00\x10\x00UI"  # (0002,0010) TransferSyntaxUID in the file meta (explicit VR little endian)
_J2K_TS = (b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.91")
_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length: encapsulated
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQ_DELIM_TAG = b"\xfe\xff\xdd\xe0"
_ROWS = b"\x28\x00\x10\x00US\x02\x00"  # (0028,0010) Rows, explicit VR little endian
_COLUMNS = b"\x28\x00\x11\x00US\x02\x00"  # (0028,0011) Columns
_SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db", "desktop.ini"}
PREFETCH_MAX_FILE_BYTES = 64 * 1024 * 1024  # a larger file is left to the loader
PREFETCH_MAX_SIDE = 8192  # a codestream declaring more rows or columns is not decoded ahead
PREFETCH_MAX_PIXELS = 256 * 1024 * 1024  # all files together (1 GiB of int32): past it, the loader decodes the rest


def _size(codestream: bytes) -> tuple[int, int, int] | None:
    """(rows, cols, components) from the SIZ marker that follows SOC, or None."""
    if len(codestream) < 42 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    x1, y1, x0, y0 = (int.from_bytes(codestream[at : at + 4], "big") for at in (8, 12, 16, 20))
    comps = int.from_bytes(codestream[40:42], "big")
    return (y1 - y0, x1 - x0, comps) if x1 > x0 and y1 > y0 else None


def _is_j2k_file(head: bytes) -> bool:
    """A Part 10 file whose file meta names a JPEG 2000 transfer syntax (from its first 4 kB)."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return False
    at = head.find(_TS_TAG, 132, 4096)
    if at < 0:
        return False
    length = int.from_bytes(head[at + 6 : at + 8], "little")
    return head[at + 8 : at + 8 + length].rstrip(b"\x00 ") in _J2K_TS


def _single_frame_codestream(data: bytes) -> tuple[int, bytes, int, int] | None:
    """(offset of the PixelData tag, the codestream: all fragments joined, Rows, Columns) of a JPEG 2000 file, or None.

    Found by bytes, not parsed: anything found here is used only where the
    loader's own parse (pydicom) puts PixelData at the same offset with the
    same size, signedness and a single frame.
    """
    if not _is_j2k_file(data):
        return None
    offset = data.rfind(_PIXEL_DATA)
    rows_at, cols_at = data.find(_ROWS, 132, max(offset, 0)), data.find(_COLUMNS, 132, max(offset, 0))
    if offset < 0 or rows_at < 0 or cols_at < 0:
        return None
    rows = int.from_bytes(data[rows_at + 8 : rows_at + 10], "little")
    cols = int.from_bytes(data[cols_at + 8 : cols_at + 10], "little")
    pos = offset + len(_PIXEL_DATA)
    fragments: list[bytes] = []
    first = True
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == _SEQ_DELIM_TAG:
            if not fragments:
                return None
            stream = fragments[0] if len(fragments) == 1 else b"".join(fragments)
            return offset, stream, rows, cols
        if tag != _ITEM_TAG or size == 0xFFFFFFFF or pos + 8 + size > len(data):
            return None
        if not first:  # the first item is the basic offset table
            fragments.append(data[pos + 8 : pos + 8 + size])
        first = False
        pos += 8 + size
    return None


PREFETCH_SWITCH_INTERVAL_S = 1e-4  # see _SwitchInterval
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


def _read_j2k_file(path: str) -> bytes | None:
    """The bytes of a regular file (not a link) of at most ``PREFETCH_MAX_FILE_BYTES`` whose head says JPEG 2000, or None.

    Only the first 4 kB of another file is read. Four or five system calls
    (each gives up the GIL, see :class:`_SwitchInterval`).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block here
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > PREFETCH_MAX_FILE_BYTES:
            return None
        head = os.read(fd, 4096)
        if not _is_j2k_file(head):
            return None  # another syntax (or not DICOM): only its head was read
        chunks = [head]
        left = info.st_size + 1 - len(head)  # one byte more: a file that grew is read to its end as well
        while left > 0 and (chunk := os.read(fd, min(left, PREFETCH_MAX_FILE_BYTES + 1))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks) if len(chunks) > 1 else head
        return data if len(data) <= PREFETCH_MAX_FILE_BYTES else None
    finally:
        os.close(fd)


class _SwitchInterval:
    """``sys.setswitchinterval`` lowered to 0.1 ms while slices are decoded ahead, then put back (once per holder).

    A decoding thread needs the GIL between two slices (reading the next file,
    OpenJPEG's read callbacks) and waits for it until the thread that holds it
    (the loader, importing and parsing) gives it up: after the switch interval,
    5 ms by default, so a thread decoding a slice in 17 ms waited 10-15 ms a
    slice beside the imports (measured with ``/proc/self/task/*/schedstat``:
    blocked 200-320 ms for 20 slices against 1 ms with the other thread idle).
    The loader thread pays a few microseconds a hand-over. Only a load on the
    main thread (the command line) takes it: the interval is process-wide, so a
    server's request threads leave it alone. Holders nest: the interval is
    restored when the last one ends, to what it was when the first began.
    """

    def __init__(self) -> None:
        global _switch_users, _switch_saved
        self._held = True
        with _switch_lock:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_saved, PREFETCH_SWITCH_INTERVAL_S))
            _switch_users += 1

    def close(self) -> None:
        global _switch_users
        with _switch_lock:
            if not self._held:
                return
            self._held = False
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class Prefetch:
    """The JPEG 2000 slices of a folder decoded on threads (GIL released) while the loader imports and parses.

    Started before pydicom is imported (this module needs neither pydicom nor
    numpy), so on a cold process the codec runs beside the imports. The
    loader takes a slice with :meth:`take` (path and PixelData offset as it
    parsed them); a slice nobody decoded yet is left to the loader, a slice
    in flight is waited for. :meth:`close` stops the workers and frees what
    was not taken. Nothing here decides what is loaded: the loader checks
    every decoded slice against its own header before using it.
    """

    def __init__(self, folder: str, workers: int, max_pixels: int = PREFETCH_MAX_PIXELS) -> None:
        self._paths = self._list(folder)
        self._state: dict[str, object] = {}  # path -> "taken" | threading.Event (in flight) | result
        self._next = 0
        self._budget = max_pixels
        self._closed = False
        self._lock = threading.Lock()
        # the interval is process-wide: lowered only from the main thread (a command-line load), never from a
        # server's request thread, where it would change every other session's threads too
        self._switch = _SwitchInterval() if threading.current_thread() is threading.main_thread() else None
        if self._switch is not None:
            weakref.finalize(self, self._switch.close)  # a Prefetch dropped without close() still restores it
        self._threads = [threading.Thread(target=self._work, name=f"j2k-prefetch-{i}", daemon=True) for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _list(folder: str) -> list[str]:
        out: list[str] = []
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and name not in _SKIP_NAMES:
                    out.append(os.path.abspath(os.path.join(root, name)))
            if len(out) > 20_000:
                return []
        return out

    def _claim(self) -> tuple[str, threading.Event] | None:
        with self._lock:
            while not self._closed and self._next < len(self._paths):
                path = self._paths[self._next]
                self._next += 1
                if path not in self._state:
                    event = threading.Event()
                    self._state[path] = event
                    return path, event
        return None

    def _work(self) -> None:
        while (claimed := self._claim()) is not None:
            path, event = claimed
            result: tuple[int, DecodedJ2K] | None = None
            try:
                result = self._decode(path)
            except (OSError, J2KUnsupported, ValueError):
                result = None
            finally:
                with self._lock:
                    if self._closed and result is not None:
                        result[1].close()
                        result = None
                    self._state[path] = result
                event.set()

    def _decode(self, path: str) -> tuple[int, DecodedJ2K] | None:
        data = _read_j2k_file(path)
        if data is None:
            return None
        found = _single_frame_codestream(data)
        del data
        if found is None:
            return None
        offset, stream, rows, cols = found
        size = _size(stream)
        if size != (rows, cols, 1) or not (0 < rows <= PREFETCH_MAX_SIDE and 0 < cols <= PREFETCH_MAX_SIDE):
            return None  # not what the file's Rows and Columns say, or too large: left to the loader
        with self._lock:
            if self._budget < size[0] * size[1]:
                return None
            self._budget -= size[0] * size[1]
        return offset, decode(stream, size[0], size[1], None, max_precision=32)

    def reserve(self, path: str) -> str:
        """``"mine"`` when no thread has started on ``path`` (now the caller's: decode it), ``"ready"`` when its
        slice is decoded (or failed: :meth:`take` answers at once), ``"busy"`` while a thread decodes it."""
        with self._lock:
            state = self._state.get(path)
            if state is None:
                self._state[path] = "taken"
                return "mine"
            return "busy" if isinstance(state, threading.Event) else "ready"

    def take(self, path: str, offset: int) -> DecodedJ2K | None:
        """The decoded slice of the file at ``path`` (as :func:`os.path.abspath` gives it) whose PixelData tag is at ``offset``.

        None when it was not decoded ahead (the caller decodes it), failed, or
        was found at another offset. The caller closes what it gets.
        """
        with self._lock:
            state = self._state.get(path)
            if state is None:
                self._state[path] = "taken"  # not started: the caller decodes it now
                return None
        if isinstance(state, threading.Event):
            state.wait()
            with self._lock:
                state = self._state.get(path)
        with self._lock:
            self._state[path] = "taken"
        if not isinstance(state, tuple):
            return None
        found_offset, decoded = state
        if found_offset != offset:
            decoded.close()
            return None
        return decoded

    def close(self) -> None:
        """Stop claiming files, wait for the slices in flight and free every slice not taken."""
        with self._lock:
            self._closed = True
        for thread in self._threads:
            thread.join()
        if self._switch is not None:
            self._switch.close()
        with self._lock:
            for path, state in list(self._state.items()):
                if isinstance(state, tuple):
                    state[1].close()
                self._state[path] = "taken"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(folder: str, workers: int) -> Prefetch | None:
    """A :class:`Prefetch` of ``folder`` when an OpenJPEG library is there, else None."""
    if not available():
        return None
    return Prefetch(folder, workers)
