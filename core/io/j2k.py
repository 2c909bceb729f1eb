"""JPEG 2000 codestreams decoded by the OpenJPEG C library through ctypes, outside the GIL.

pylibjpeg-openjpeg, GDCM and Pillow all hold the GIL while OpenJPEG decodes,
so slices decoded on threads run one at a time. A ctypes call releases the
GIL: here several slices decode at once on threads (in the app's threaded
server too, where the loader cannot fork). Only the decoding calls release it
(:class:`_OpenJPEG`); :mod:`core.io.j2k_prefetch` decodes a folder's slices
ahead of the loader. The library is the system's
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
import threading
from collections.abc import Iterator
from typing import Any, Self

__all__ = ["DecodedJ2K", "J2KSizeMismatch", "J2KUnsupported", "available", "decode"]


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
