"""DICOM files as untrusted bytes: where they come from, the deflated syntax inflated in bounded steps, and the
elements stored after the pixel data (which the PHI gate must read too)."""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
import threading
import warnings as _warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.io.pydicom_import import pydicom  # first: pydicom without its downloader

# isort: split
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from core.errors import InputError
from core.io.inflate import WBITS_RAW, inflate_bounded

MAX_DECODED_BYTES = 3 * 1024**3  # float32 output of one volume (about 800 slices of 1024 x 1024)
MAX_FILES = 20_000
DECODE_WORKERS = min(8, os.cpu_count() or 1)
FORK_DECODE = sys.platform.startswith("linux")  # compressed slices decoded by forked processes where safe (see _fork_workers)
FORK_MIN_PIXELS = 1 << 20  # about 4 slices of 512 x 512 (~80 ms of JPEG 2000 decoding)
MAX_FILE_BYTES = 2 * 1024**3
_NATIVE = {
    "1.2.840.10008.1.2": ("<", False),  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1": ("<", True),  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2": (">", True),  # Explicit VR Big Endian (retired)
}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
_SEQ_DELIM = b"\xfe\xff\xdd\xe0"
_ITEM = b"\xfe\xff\x00\xe0"
SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db", "desktop.ini"}  # never a study's slice (also core.io.study_date)
DEFLATED_TS = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
MAX_INFLATE_RATIO = 100.0  # a deflated instance may not inflate to more than 100 x its file (past 8 MiB)
MAX_INFLATED_BYTES = 1024**3
MAX_TRAILING_BYTES = 64 * 1024 * 1024  # elements after PixelData (signatures, padding, private data)



# ---------------------------------------------------------------- pydicom's warnings, per thread

class _ThreadWarnings(logging.Handler):
    """pydicom logs every warning it issues (``pydicom.misc.warn_and_log``: the ``"pydicom"`` logger, then
    ``warnings.warn``). This handler hands each record to the collector of the thread that emitted it, so
    overlapping loads in the app's request threads each get their own warnings and none changes a process-wide
    setting (``warnings.catch_warnings`` swaps the global filter list and is not thread-safe)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        sink = getattr(self.local, "sink", None)
        if sink is not None:
            sink.append(record.getMessage())


_PYDICOM_WARNING_FILTER = ("ignore", None, UserWarning, r"pydicom(\.|$)")
_install_lock = threading.Lock()


def _install_pydicom_routing() -> _ThreadWarnings:
    """Once per process (at import, under a lock; never removed): the per-thread handler on the "pydicom" logger,
    and one warnings filter that keeps pydicom's duplicate ``warnings.warn`` of the same messages off stderr
    (they can quote header values; the logger copy is what the loader reports)."""
    logger = logging.getLogger("pydicom")
    with _install_lock:
        handler = next((h for h in logger.handlers if type(h).__name__ == "_ThreadWarnings"), None)
        if handler is None:
            handler = _ThreadWarnings()
            logger.addHandler(handler)
        action, _, category, module = _PYDICOM_WARNING_FILTER
        if not any(f[0] == action and f[2] is category and getattr(f[3], "pattern", None) == module
                   for f in _warnings.filters):
            _warnings.filterwarnings(action, category=category, module=module, append=True)
    return handler  # type: ignore[return-value]


_PYDICOM_WARNINGS = _install_pydicom_routing()


@contextmanager
def pydicom_warnings() -> Iterator[list[str]]:
    """The messages of the warnings pydicom issues in this thread inside the block (thread-safe; nests)."""
    local = _PYDICOM_WARNINGS.local
    outer = getattr(local, "sink", None)
    sink: list[str] = []
    local.sink = sink
    try:
        yield sink
    finally:
        local.sink = outer
        if outer is not None:
            outer.extend(sink)


def note_pydicom_warnings(messages: Iterable[str]) -> None:
    """Add ``messages`` (pydicom warnings reported by a decoding child process) to this thread's collector."""
    sink = getattr(_PYDICOM_WARNINGS.local, "sink", None)
    if sink is not None:
        sink.extend(str(m) for m in messages)



# ---------------------------------------------------------------- sources


@dataclass
class DicomSource:
    """One file: on disk (``path``) or in memory (``data``), with a display name."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> io.BufferedIOBase:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")  # noqa: SIM115 - caller closes

    def read_from(self, offset: int) -> bytes:
        if self.data is not None:
            return self.data[offset:]
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read()


def sources_from_folder(folder: Path) -> list[DicomSource]:
    """Every regular file below ``folder`` (recursive; hidden files, DICOMDIR and links skipped)."""
    out: list[DicomSource] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name in SKIP_NAMES:
                continue
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            out.append(DicomSource(name=str(path.relative_to(folder)), path=path))
            if len(out) > MAX_FILES:
                raise InputError("folder", str(folder), f"holds more than {MAX_FILES} files", "point at one study's folder")
    return out


def looks_like_dicom(head: bytes) -> bool:
    """DICM preamble, or a raw dataset that starts with a plausible group-0008 tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3:4] == b"\x00"


# ---------------------------------------------------------------- deflate


MAX_META_BYTES = 1024 * 1024  # a file meta group larger than this is refused


def meta_transfer_syntax(head: bytes, name: str) -> str | None:
    """The TransferSyntaxUID of a Part 10 file's meta group, walked from ``head`` (its first bytes).

    None when ``head`` has no DICM preamble, or ends before the element (the
    caller then reads more). The meta group is always explicit VR little
    endian. A meta group of more than ``MAX_META_BYTES`` raises ``InputError``.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head) and head[pos : pos + 2] == b"\x02\x00":
        element = int.from_bytes(head[pos + 2 : pos + 4], "little")
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS or vr == b"UN":
            if pos + 12 > len(head):
                return None
            length = int.from_bytes(head[pos + 8 : pos + 12], "little")
            start = pos + 12
        else:
            length = int.from_bytes(head[pos + 6 : pos + 8], "little")
            start = pos + 8
        if start + length > MAX_META_BYTES:
            raise InputError("DICOM file", name, f"has a file meta header of more than {MAX_META_BYTES} bytes", "re-export the file")
        if element == 0x0010:
            if start + length > len(head):
                return None
            return head[start : start + length].decode("latin-1").strip("\x00 ")
        pos = start + length
    rest = head[pos : pos + 2]
    if pos + 8 > len(head) and rest == b"\x02\x00"[: len(rest)]:
        return None  # cut inside the meta group: the caller reads more
    return ""


def undeflate_dicom(data: bytes, name: str, *, max_bytes: int = MAX_INFLATED_BYTES, max_ratio: float = MAX_INFLATE_RATIO) -> bytes:
    """``data`` unchanged, or, for the Deflated Explicit VR Little Endian syntax, the same file inflated.

    pydicom inflates a deflated dataset in one ``zlib.decompress`` call, so a
    1 MB file can take gigabytes before anything can be checked. Here the
    dataset is inflated in bounded steps (:func:`core.io.inflate.inflate_bounded`:
    at most ``max_bytes`` and ``max_ratio`` x the file past 8 MiB) and written
    back behind the same file meta, with the transfer syntax set to Explicit
    VR Little Endian, so pydicom never sees the deflated stream.
    """
    if meta_transfer_syntax(bytes(data[:MAX_META_BYTES]), name) != DEFLATED_TS:
        return data
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        meta = _read_file_meta_info(fp)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, IndexError) as err:
        raise InputError("DICOM file", name, f"has a broken file meta header ({type(err).__name__})", "re-export the file") from None
    if str(meta.get("TransferSyntaxUID", "") or "").strip("\x00 ") != DEFLATED_TS:
        return data
    body = inflate_bounded(
        memoryview(data)[fp.tell() :],
        wbits=WBITS_RAW,
        field="DICOM file",
        name=name,
        max_bytes=max_bytes,
        max_ratio=max_ratio,
        fix="re-export the study without the deflated transfer syntax",
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if 0x00020000 in meta:
        del meta[0x00020000]
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_file_meta_info(buf, meta, enforce_standard=False)
    group = buf.getvalue()
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"".join((bytes(data[:132]), length, group, body))


# ---------------------------------------------------------------- the PixelData element's own encoding

PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little and big endian
_PIXEL_VRS = {b"OB", b"OW", b"UN"}


def pixel_element_syntax(head: bytes, ts: str) -> str:
    """The transfer syntax that the PixelData element at the start of ``head`` (its first 8 bytes) is written in.

    ``ts`` is the file meta's (``""`` when the file has none). A compressed one is kept. For a native one, or none,
    the element's own bytes decide: a file without file meta is read by guessing its encoding, and some writers put
    Implicit VR in the meta of a body written Explicit VR (pydicom reads such a header with a warning). Parsing the
    pixel element with the meta's word would read its length field as pixels.

    >>> pixel_element_syntax(b"\\xe0\\x7f\\x10\\x00OW\\x00\\x00", "1.2.840.10008.1.2")   # the meta says implicit
    '1.2.840.10008.1.2.1'
    >>> pixel_element_syntax(b"\\xe0\\x7f\\x10\\x00\\x00\\x20\\x00\\x00", "")          # no meta, implicit VR
    '1.2.840.10008.1.2'
    >>> pixel_element_syntax(b"\\x7f\\xe0\\x00\\x10OW\\x00\\x00", "1.2.840.10008.1.2.2")  # big endian
    '1.2.840.10008.1.2.2'
    >>> pixel_element_syntax(b"\\xe0\\x7f\\x10\\x00OB\\x00\\x00", "1.2.840.10008.1.2.4.90")
    '1.2.840.10008.1.2.4.90'
    """
    if ts and ts not in _NATIVE:
        return ts
    if head[:4] == PIXEL_DATA_TAGS[1]:
        return "1.2.840.10008.1.2.2"
    if head[4:6] in _PIXEL_VRS and head[6:8] == b"\x00\x00":
        return "1.2.840.10008.1.2.1"
    return "1.2.840.10008.1.2"


# ---------------------------------------------------------------- elements after the pixel data


def _skip_pixel_element(fh: io.BufferedIOBase, offset: int, ts: str, name: str) -> int:
    """The file offset just after the PixelData element that starts at ``offset``."""
    endian = ">" if ts == "1.2.840.10008.1.2.2" else "<"
    explicit = ts != "1.2.840.10008.1.2"
    fh.seek(offset)
    head = fh.read(12)
    if len(head) < 8:
        raise InputError("DICOM file", name, "is truncated (pixel data cut off)", "re-export or re-copy the series")
    if explicit and head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise InputError("DICOM file", name, "is truncated (pixel data cut off)", "re-export or re-copy the series")
        (length,) = struct.unpack(endian + "I", head[8:12])
        start = offset + 12
    elif explicit:
        (length,) = struct.unpack(endian + "H", head[6:8])
        start = offset + 8
    else:
        (length,) = struct.unpack(endian + "I", head[4:8])
        start = offset + 8
    if length != 0xFFFFFFFF:
        return start + length
    pos = start
    while True:  # encapsulated: items up to the sequence delimiter
        fh.seek(pos)
        item = fh.read(8)
        if len(item) < 8:
            raise InputError("DICOM file", name, "is truncated (compressed pixel data cut off)", "re-export or re-copy the series")
        (item_length,) = struct.unpack("<I", item[4:8])
        if item[:4] == _SEQ_DELIM:
            return pos + 8
        if item[:4] != _ITEM or item_length == 0xFFFFFFFF:
            raise InputError("DICOM file", name, "has broken encapsulated pixel data", "re-export the series")
        pos += 8 + item_length


def trailing_elements(fh: io.BufferedIOBase, offset: int, ts: str, name: str) -> Dataset | str:
    """The elements stored after PixelData (a Dataset, possibly empty), or a PHI keyword for unreadable bytes.

    Digital signatures, private groups above 7FE0 and trailing padding live
    there; ``stop_before_pixels`` never sees them.
    """
    end = _skip_pixel_element(fh, offset, ts, name)
    fh.seek(end)
    tail = fh.read(MAX_TRAILING_BYTES + 1)
    if len(tail) > MAX_TRAILING_BYTES:
        raise InputError("DICOM file", name, f"has more than {MAX_TRAILING_BYTES} bytes after its pixel data", "re-export the series without trailing data")
    if not tail.strip(b"\x00"):
        return Dataset()
    try:
        tail_ds = pydicom.filereader.read_dataset(io.BytesIO(tail), ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2")
        for _ in tail_ds.iterall():  # convert now so broken bytes fail here
            pass
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error, IndexError, NotImplementedError):
        return "DataAfterPixelData"
    if len(tail_ds) == 0:
        return "DataAfterPixelData"
    return tail_ds


