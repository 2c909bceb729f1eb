"""JPEG 2000 codestreams decoded by the OpenJPEG C library through ctypes, outside the GIL.

pylibjpeg-openjpeg, GDCM and Pillow all hold the GIL while OpenJPEG decodes,
so slices decoded on threads run one at a time. A ctypes call releases the
GIL: here several slices decode at once on threads (in the app's threaded
server too, where the loader cannot fork). Only the decoding calls release it,
and while a folder's slices are decoded ahead of the loader the interpreter's
switch interval is 0.1 ms, so a decoding thread does not wait 5 ms for the
GIL after each slice (:class:`_OpenJPEG`, :class:`_SwitchInterval`). The library is the system's
``libopenjp2.so.7`` or, where that is missing, the copy bundled with Pillow
(a runtime requirement); without either, :func:`available` is False and the
loader keeps pydicom's decoders.

Only what the fast path needs: one greyscale component, the image size given
by the caller (checked after the header is read and before anything is
decoded, so a codestream cannot make OpenJPEG allocate more than the DICOM
header declared), signedness as the caller expects. Anything else raises
:class:`J2KUnsupported` and the caller decodes through pydicom instead. This
module imports neither numpy nor pydicom.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Self

__all__ = ["DecodedJ2K", "J2KSizeMismatch", "J2KUnsupported", "Prefetch", "available", "decode", "prefetch"]


class J2KUnsupported(Exception):
    """The codestream is not one the fast path decodes (the caller falls back to pydicom); one line, why."""


class J2KSizeMismatch(J2KUnsupported):
    """The codestream declares another image size than the caller's (DICOM Rows x Columns): refused, not decoded."""


_c_size = ctypes.c_size_t
_vp = ctypes.c_void_p
_READ = ctypes.CFUNCTYPE(_c_size, _vp, _c_size, _vp)
_SKIP = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, _vp)
_SEEK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, _vp)
_MSG = ctypes.CFUNCTYPE(None, ctypes.c_char_p, _vp)
_CODEC_J2K = 0  # OPJ_CODEC_J2K: a raw codestream, as DICOM stores it
_DPARAMETERS_BYTES = 1 << 16  # opj_dparameters_t is ~8.3 kB in OpenJPEG 2.x; room to spare, never read here


class _Comp(ctypes.Structure):  # opj_image_comp_t (OpenJPEG 2.x, stable since 2.0)
    _fields_ = [
        *((name, ctypes.c_uint32) for name in ("dx", "dy", "w", "h", "x0", "y0", "prec", "bpp", "sgnd", "resno_decoded", "factor")),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):  # opj_image_t
    _fields_ = [
        *((name, ctypes.c_uint32) for name in ("x0", "y0", "x1", "y1", "numcomps")),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_Comp)),
        ("icc_profile_buf", _vp),
        ("icc_profile_len", ctypes.c_uint32),
    ]


_IMAGE_P = ctypes.POINTER(_Image)
_lock = threading.Lock()
_lib: _OpenJPEG | None = None
_tried = False


def _candidates() -> Iterator[str]:
    """The system's library (dlopen's search path), then the copy bundled with Pillow."""
    yield from ("libopenjp2.so.7", "libopenjp2.so")
    import glob
    import importlib.util

    try:
        spec = importlib.util.find_spec("PIL")
    except (ImportError, ValueError):
        return
    if spec is not None and spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        yield from sorted(glob.glob(os.path.join(site, "pillow.libs", "libopenjp2*.so*")))


_RELEASES_GIL = frozenset({"opj_decode", "opj_decode_tile_data"})  # the long calls; the others take microseconds
_U32_P, _I32_P = ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int32)


class _OpenJPEG:
    """OpenJPEG's functions: ``opj_decode`` releases the GIL (ctypes.CDLL), every other call keeps it (ctypes.PyDLL).

    A thread that releases the GIL must take it back afterwards, and while
    another thread runs Python (the loader importing pydicom, parsing headers)
    that waits up to ``sys.getswitchinterval()`` (5 ms): with every call
    releasing it, a slice decoded beside the imports waited about as long as
    it decoded (15 calls and 3 read callbacks a slice). The short calls keep
    the GIL; only the decoding itself runs without it, from memory: a
    single-tile codestream is read by ``opj_read_tile_header`` (with the GIL,
    the read callbacks included) and decoded by ``opj_decode_tile_data``
    (without it, no callback), where ``opj_decode`` would call back into
    Python twice while decoding.
    """

    def __init__(self, path: str) -> None:
        releasing, holding = ctypes.CDLL(path), ctypes.PyDLL(path)
        self.path = path
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(releasing if name in _RELEASES_GIL else holding, name)  # AttributeError: not OpenJPEG 2
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> Any:  # for type checkers: the functions are set in __init__
        raise AttributeError(name)


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "opj_stream_create": (_vp, [_c_size, ctypes.c_int]),
    "opj_stream_set_read_function": (None, [_vp, _READ]),
    "opj_stream_set_skip_function": (None, [_vp, _SKIP]),
    "opj_stream_set_seek_function": (None, [_vp, _SEEK]),
    "opj_stream_set_user_data_length": (None, [_vp, ctypes.c_uint64]),
    "opj_stream_destroy": (None, [_vp]),
    "opj_create_decompress": (_vp, [ctypes.c_int]),
    "opj_set_default_decoder_parameters": (None, [_vp]),
    "opj_setup_decoder": (ctypes.c_int, [_vp, _vp]),
    "opj_set_error_handler": (ctypes.c_int, [_vp, _MSG, _vp]),
    "opj_read_header": (ctypes.c_int, [_vp, _vp, ctypes.POINTER(_IMAGE_P)]),
    "opj_decode": (ctypes.c_int, [_vp, _vp, _IMAGE_P]),
    "opj_read_tile_header": (ctypes.c_int, [_vp, _vp, _U32_P, _U32_P, _I32_P, _I32_P, _I32_P, _I32_P, _U32_P, _I32_P]),
    "opj_decode_tile_data": (ctypes.c_int, [_vp, ctypes.c_uint32, _vp, ctypes.c_uint32, _vp]),
    "opj_end_decompress": (ctypes.c_int, [_vp, _vp]),
    "opj_image_destroy": (None, [_IMAGE_P]),
    "opj_destroy_codec": (None, [_vp]),
    "opj_version": (ctypes.c_char_p, []),
}


def _library() -> _OpenJPEG | None:
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            for name in _candidates():
                try:
                    lib = _OpenJPEG(name)
                    version = tuple(int(v) for v in (lib.opj_version() or b"0").decode("ascii").split(".")[:2])
                except (OSError, AttributeError, ValueError):
                    continue
                if version >= (2, 3):  # 2.3: strict decoding and the fixes for malformed codestreams of the 2.x line
                    _lib = lib
                    break
            _tried = True
    return _lib


def available() -> bool:
    """True when an OpenJPEG 2 library could be loaded (once per process)."""
    return _library() is not None


class DecodedJ2K:
    """One decoded component: ``rows`` x ``cols`` values of type ``dtype`` (a numpy dtype name) until :meth:`close`."""

    def __init__(self, lib: _OpenJPEG, image: Any, rows: int, cols: int, precision: int, signed: bool, values: Any = None) -> None:
        self._lib, self._image, self._values = lib, image, values
        self.rows, self.cols, self.precision, self.signed = rows, cols, precision, signed
        if values is not None:  # a single tile's samples, as opj_decode_tile_data writes them: 1, 2 or 4 bytes
            itemsize = ctypes.sizeof(values) // max(1, rows * cols)
            self.dtype = f"{'' if signed else 'u'}int{8 * itemsize}"
            self.address = ctypes.addressof(values)
        else:  # OpenJPEG's image: int32 whatever the precision
            self.dtype = "int32"
            self.address = ctypes.cast(image.contents.comps[0].data, _vp).value or 0

    def buffer(self) -> Any:
        """The values as a ctypes array (for ``numpy.frombuffer(..., dtype=self.dtype)``); valid until :meth:`close`."""
        if self._values is not None:
            return self._values
        if not self._image:
            raise ValueError("decoded image already closed")
        return (ctypes.c_int32 * (self.rows * self.cols)).from_address(self.address)

    def close(self) -> None:
        if self._values is not None:
            self._values = None
            self._image = None
            return
        if self._image:
            self._lib.opj_image_destroy(self._image)
            self._image = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SeveralTiles(Exception):
    """The codestream has more than one tile: decoded by ``opj_decode`` instead."""


def decode(codestream: bytes, rows: int, cols: int, signed: bool | None, max_precision: int = 16) -> DecodedJ2K:
    """Decode one JPEG 2000 codestream (a DICOM frame) of ``rows`` x ``cols`` greyscale pixels.

    Raises :class:`J2KUnsupported` when no library is loaded, the codestream is
    not one greyscale component of that size with the given signedness (None:
    either) and at most ``max_precision`` bits, or OpenJPEG fails (its
    messages in one line).
    The GIL is released only while OpenJPEG decodes (see :class:`_OpenJPEG`).
    """
    try:
        return _decode(codestream, rows, cols, signed, max_precision, single_tile=True)
    except _SeveralTiles:
        return _decode(codestream, rows, cols, signed, max_precision, single_tile=False)


def _decode(codestream: bytes, rows: int, cols: int, signed: bool | None, max_precision: int, single_tile: bool) -> DecodedJ2K:
    lib = _library()
    if lib is None:
        raise J2KUnsupported("no OpenJPEG library")
    data = bytes(codestream)
    n = len(data)
    source = ctypes.c_char_p(data)  # points into ``data`` (kept alive below)
    base = ctypes.cast(source, _vp).value or 0
    pos = [0]
    errors: list[str] = []

    def read(dst: int, nb: int, _user: int) -> int:
        left = n - pos[0]
        if left <= 0:
            return _c_size(-1).value  # (OPJ_SIZE_T)-1: end of stream
        k = min(nb, left)
        ctypes.memmove(dst, base + pos[0], k)
        pos[0] += k
        return k

    def skip(offset: int, _user: int) -> int:
        new = min(max(pos[0] + offset, 0), n)
        moved = new - pos[0]
        pos[0] = new
        return moved

    def seek(offset: int, _user: int) -> int:
        if offset < 0 or offset > n:
            return 0
        pos[0] = offset
        return 1

    def on_error(message: bytes | None, _user: int) -> None:
        if message and len(errors) < 4:
            errors.append(message.decode("latin-1", "replace").strip())

    callbacks = (_READ(read), _SKIP(skip), _SEEK(seek), _MSG(on_error))  # referenced until the end of this call
    stream = lib.opj_stream_create(max(n, 1), 1)  # a buffer of the whole codestream: read in one call
    codec = lib.opj_create_decompress(_CODEC_J2K)
    image = _IMAGE_P()
    handed_over = False
    try:
        if not stream or not codec:
            raise J2KUnsupported("OpenJPEG could not allocate a decoder")
        lib.opj_stream_set_read_function(stream, callbacks[0])
        lib.opj_stream_set_skip_function(stream, callbacks[1])
        lib.opj_stream_set_seek_function(stream, callbacks[2])
        lib.opj_stream_set_user_data_length(stream, n)
        lib.opj_set_error_handler(codec, callbacks[3], None)
        parameters = ctypes.create_string_buffer(_DPARAMETERS_BYTES)
        lib.opj_set_default_decoder_parameters(parameters)
        if not lib.opj_setup_decoder(codec, parameters) or not lib.opj_read_header(stream, codec, ctypes.byref(image)) or not image:
            raise J2KUnsupported("header: " + ("; ".join(errors) or "unreadable"))
        head = image.contents
        if head.numcomps != 1:
            raise J2KUnsupported(f"{head.numcomps} components")
        comp = head.comps[0]
        width, height = head.x1 - head.x0, head.y1 - head.y0
        if (width, height) != (cols, rows):
            raise J2KSizeMismatch(f"a JPEG 2000 codestream of {width} x {height} pixels")
        if (comp.dx, comp.dy) != (1, 1):
            raise J2KUnsupported(f"subsampled component ({comp.dx} x {comp.dy})")
        if (signed is not None and bool(comp.sgnd) != signed) or not 0 < comp.prec <= max_precision:
            raise J2KUnsupported(f"precision {comp.prec}, signed {bool(comp.sgnd)}")
        precision, is_signed = int(comp.prec), bool(comp.sgnd)
        if single_tile:
            values = _decode_single_tile(lib, codec, stream, head, rows, cols, precision, errors)
            decoded = DecodedJ2K(lib, None, rows, cols, precision, is_signed, values=values)
        else:
            if not lib.opj_decode(codec, stream, image) or not lib.opj_end_decompress(codec, stream):
                raise J2KUnsupported("decode: " + ("; ".join(errors) or "failed"))
            comp = image.contents.comps[0]
            if (comp.w, comp.h) != (cols, rows) or not comp.data:
                raise J2KUnsupported(f"decoded {comp.w} x {comp.h}, expected {cols} x {rows}")
            decoded = DecodedJ2K(lib, image, rows, cols, precision, is_signed)
            handed_over = True
        return decoded
    finally:
        if image and not handed_over:
            lib.opj_image_destroy(image)
        if codec:
            lib.opj_destroy_codec(codec)
        if stream:
            lib.opj_stream_destroy(stream)
        del callbacks, source


def _decode_single_tile(lib: _OpenJPEG, codec: int, stream: int, head: _Image, rows: int, cols: int, precision: int, errors: list[str]) -> Any:
    """The samples of a codestream whose one tile is the whole image (1, 2 or 4 bytes each); else :class:`_SeveralTiles`."""
    index, size, comps, go_on = ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_int32()
    x0, y0, x1, y1 = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
    if not lib.opj_read_tile_header(codec, stream, ctypes.byref(index), ctypes.byref(size), ctypes.byref(x0), ctypes.byref(y0),
                                    ctypes.byref(x1), ctypes.byref(y1), ctypes.byref(comps), ctypes.byref(go_on)):
        raise J2KUnsupported("tile header: " + ("; ".join(errors) or "unreadable"))
    if not go_on.value or (x0.value, y0.value, x1.value, y1.value) != (head.x0, head.y0, head.x1, head.y1):
        raise _SeveralTiles()
    itemsize = 1 if precision <= 8 else 2 if precision <= 16 else 4
    if comps.value != 1 or size.value != rows * cols * itemsize:
        raise J2KUnsupported(f"a tile of {size.value} bytes for {rows} x {cols} samples of {precision} bits")
    values = (ctypes.c_uint8 * size.value)()
    if not lib.opj_decode_tile_data(codec, index.value, values, size.value, stream) or not lib.opj_end_decompress(codec, stream):
        raise J2KUnsupported("decode: " + ("; ".join(errors) or "failed"))
    return values


# ---------------------------------------------------------------- decoding ahead, while the loader starts up

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
