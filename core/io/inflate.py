"""Bounded decompression of untrusted zlib / gzip / raw-deflate streams.

Everything that inflates uploaded bytes (gzip NIfTI, DICOM in the Deflated
Explicit VR Little Endian transfer syntax) goes through
:func:`inflate_bounded`: the stream is inflated in steps of at most
``STEP`` output bytes with ``zlib.decompressobj(...).decompress(chunk,
max_length)``, and refused as soon as the output passes the absolute cap or
``max_ratio`` times the compressed size (once it is past ``free_bytes``). A
1 MB stream that would inflate to a gigabyte therefore stops after about
``max_ratio`` MB, in well under a second, with a one-line ``InputError``.

>>> import zlib
>>> co = zlib.compressobj(wbits=-15)
>>> blob = co.compress(b"a" * 1000) + co.flush()
>>> len(inflate_bounded(blob, wbits=-15, field="x", name="a", max_bytes=10_000))
1000
"""

from __future__ import annotations

import zlib

from core.errors import InputError

STEP = 1 << 20  # output bytes per decompress call
IN_STEP = 1 << 20  # compressed bytes fed per call
FREE_BYTES = 8 * 1024 * 1024  # outputs up to this size are never refused for their ratio
WBITS_GZIP = 31
WBITS_RAW = -15


def inflate_bounded(
    data: bytes | memoryview,
    *,
    wbits: int,
    field: str,
    name: str,
    max_bytes: int,
    max_ratio: float | None = None,
    free_bytes: int = FREE_BYTES,
    fix: str = "upload the original (uncompressed) file",
) -> bytes:
    """Inflate ``data`` (``wbits`` as for :func:`zlib.decompressobj`) to at most ``max_bytes``.

    With ``max_ratio``, output beyond ``free_bytes`` must stay within
    ``max_ratio`` times ``len(data)`` (the whole compressed input): a
    decompression bomb is refused before it is inflated. Trailing bytes after
    the end of the stream are ignored. Raises ``InputError`` (field ``field``,
    value ``name``) for a bomb, a broken or a truncated stream.
    """
    limit = int(max_bytes)
    ratio_note = ""
    if max_ratio is not None:
        by_ratio = max(int(free_bytes), int(max_ratio * len(data)))
        if by_ratio < limit:
            limit = by_ratio
            ratio_note = f" ({max_ratio:g} x its {len(data)} compressed bytes: a decompression bomb?)"
    inflater = zlib.decompressobj(wbits=wbits)
    parts: list[bytes] = []
    total = 0
    view = memoryview(data)
    try:
        for start in range(0, len(view), IN_STEP):
            chunk: bytes | memoryview = view[start : start + IN_STEP]
            while chunk and not inflater.eof:
                piece = inflater.decompress(chunk, min(STEP, limit + 1 - total))
                total += len(piece)
                if total > limit:
                    raise InputError(field, name, f"expands beyond {limit} bytes{ratio_note}", fix)
                parts.append(piece)
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
        while not inflater.eof:  # output still buffered inside zlib
            piece = inflater.decompress(b"", min(STEP, limit + 1 - total))
            if not piece:
                break
            total += len(piece)
            if total > limit:
                raise InputError(field, name, f"expands beyond {limit} bytes{ratio_note}", fix)
            parts.append(piece)
    except zlib.error as err:
        raise InputError(field, name, f"is not a valid compressed stream ({err})", fix) from None
    if not inflater.eof:
        raise InputError(field, name, "is truncated (compressed stream cut off)", "re-copy or re-export the file")
    return b"".join(parts)
