"""Read an untrusted zip archive fully in memory, never extracting to disk.

Entry names are only ever used as labels: nothing is written to a path taken
from the archive. Refused: entries with ``..``, absolute paths, drive letters or
backslash tricks, symlinks and other non-regular files, too many entries, too
much uncompressed data in total, a suspicious compression ratio (zip bombs),
encrypted entries, and an archive with no files. Decompression is streamed in
chunks and stops at the caps, so a bomb fails fast with bounded memory.

:func:`inside_folder` applies the same rule to a path a table names (a cohort's ``study`` column): it must stay
inside its folder, by name and after links are followed.

>>> import io, zipfile
>>> buf = io.BytesIO()
>>> with zipfile.ZipFile(buf, "w") as zf:
...     zf.writestr("a/b.dcm", b"x" * 10)
>>> [(m.name, len(m.data)) for m in read_zip(buf.getvalue())]
[('a/b.dcm', 10)]
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from core.errors import InputError

MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3  # 2 GiB uncompressed in all
MAX_ENTRY_BYTES = 1 * 1024**3  # 1 GiB for one entry
MAX_RATIO = 200.0  # uncompressed / compressed per entry (CT DICOM rarely exceeds ~10)
RATIO_MIN_BYTES = 4 * 1024 * 1024  # running ratio checked once an entry exceeds 4 MiB (8 MiB archive-wide)
CHUNK = 1024 * 1024  # decompressed bytes per step
IN_CHUNK = 256 * 1024  # compressed bytes read per step
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive

_SKIP_PREFIXES = ("__MACOSX/",)
_SKIP_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class ZipMember:
    """One regular file of the archive, read into memory."""

    name: str  # the entry name as stored (a label, never a path to write to)
    data: bytes


def inside_folder(root: Path, relative: str, field: str) -> Path:
    """``root / relative`` resolved; an InputError naming ``field`` when it leads out of ``root``, by ``..`` or an
    absolute path, or through a link (a folder's links out of it are not followed)."""
    top = root.resolve()
    path = (top / relative).resolve()
    if path == top or top in path.parents:
        return path
    if top in Path(os.path.normpath(top / relative)).parents:  # inside by name: a link leads out
        raise InputError(field, relative, f"is reached through a link to {path.parent}, outside the folder "
                         f"{root.name} (links out of it are not followed)", f"copy or move the files into {root.name}")
    raise InputError(field, relative, f"points outside the folder {root.name}",
                     f"give paths relative to {root.name}, without '..'")


def member_path(folder: str, relative: str) -> str | None:
    """The zip member name of a path that a table in the zip's ``folder`` ("" for the zip's top) names, such as a
    cohort's ``study`` column: ``.`` and ``..`` resolved by name; None when it leads out of the folder or is absolute.
    Only a name: whether the zip holds it is the caller's to check.

    >>> member_path("cohort", "studies/../studies/a.zip"), member_path("", "./b"), member_path("cohort", "../x")
    ('cohort/studies/a.zip', 'b', None)
    """
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        return None
    parts: list[str] = []
    for part in PurePosixPath(relative.replace("\\", "/")).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return str(PurePosixPath(folder.replace("\\", "/")).joinpath(*parts))  # "." or the folder: the whole folder


def is_zip(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) starts like a zip archive."""
    return head[:4] in ZIP_MAGIC


def _check_name(name: str) -> None:
    if not name or "\x00" in name:
        raise InputError("zip entry", name, "has an empty or NUL-containing name", "re-create the zip with plain file names")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or norm.startswith("//"):
        raise InputError("zip entry", name, "is an absolute path (refused)", "re-create the zip with relative file names")
    if ".." in PurePosixPath(norm).parts:
        raise InputError("zip entry", name, "contains '..' (path traversal, refused)", "re-create the zip without '..' in names")


def _is_link_or_special(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0xFFFF
    if mode == 0:
        return False  # no Unix mode recorded (e.g. written on Windows)
    kind = stat.S_IFMT(mode)
    return kind not in (0, stat.S_IFREG, stat.S_IFDIR)


def read_zip(
    source: bytes | str | Path,
    *,
    max_entries: int = MAX_ENTRIES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    max_ratio: float = MAX_RATIO,
    label: str | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> list[ZipMember]:
    """Return every regular file of the zip as in-memory ``ZipMember`` s (directories skipped).

    Raises ``InputError`` (one line) for anything unsafe or broken, naming ``label`` (an upload's file name; by
    default the path, or "zip" for bytes). ``wanted``: only the files whose name it accepts are read (every name
    is checked all the same; none accepted gives an empty list, not an error).
    """
    label = label or ("zip" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    try:
        handle: BinaryIO
        if isinstance(source, (bytes, bytearray, memoryview)):
            handle = io.BytesIO(bytes(source))
        else:
            handle = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise InputError("zip", label, f"cannot be opened ({err.strerror or err})", "check the path and permissions") from None
    with handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as err:
            raise InputError("zip", label, f"is not a readable zip archive ({err})", "upload a valid .zip of the DICOM series") from None
        with archive:
            infos = archive.infolist()
            if len(infos) > max_entries:
                raise InputError("zip", label, f"has {len(infos)} entries (limit {max_entries})", "zip only the series you need")
            declared = 0
            for info in infos:
                _check_name(info.filename)
                if _is_link_or_special(info):
                    raise InputError("zip entry", info.filename, "is a symbolic link or special file (refused)", "zip regular files only")
                if info.flag_bits & 0x1:
                    raise InputError("zip entry", info.filename, "is encrypted", "upload an unencrypted zip")
                declared += info.file_size
            if declared > max_total_bytes:
                raise InputError("zip", label, f"declares {declared} uncompressed bytes (limit {max_total_bytes})", "split the study or zip fewer files")
            members: list[ZipMember] = []
            totals = [0, 0]
            for info in infos:
                if info.is_dir() or info.filename.endswith("/"):
                    continue
                name = info.filename
                if name.startswith(_SKIP_PREFIXES) or PurePosixPath(name.replace("\\", "/")).name in _SKIP_NAMES:
                    continue
                if wanted is not None and not wanted(name):
                    continue
                data = _read_member(handle, info, totals, max_total_bytes, max_entry_bytes, max_ratio)
                members.append(ZipMember(name=name, data=data))
    if not members and wanted is None:
        raise InputError("zip", label, "contains no files", "zip the folder that holds the DICOM files or the NIfTI file")
    return members


def _read_member(
    fh: BinaryIO,
    info: zipfile.ZipInfo,
    totals: list[int],
    max_total_bytes: int,
    max_entry_bytes: int,
    max_ratio: float,
) -> bytes:
    """Stream one entry's raw data in chunks, enforcing every cap on the bytes actually produced.

    ``totals`` is [uncompressed so far, compressed consumed so far] for the whole
    archive (updated in place). The ratio is checked on the running totals, so
    a bomb is caught after a few MiB, whatever its headers claim.
    """
    name = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InputError("zip entry", name, f"uses compression method {info.compress_type}", "re-create the zip with standard (deflate) compression")
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise InputError("zip entry", name, "has a broken local header", "re-create the zip")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    remaining = int(info.compress_size)
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    parts: list[bytes] = []
    size = consumed = 0
    crc = 0
    while remaining > 0 and not (inflater is not None and inflater.eof):
        raw = fh.read(min(IN_CHUNK, remaining))
        if not raw:
            raise InputError("zip entry", name, "is truncated", "re-create or re-upload the zip")
        remaining -= len(raw)
        pending = raw
        while pending:
            if inflater is None:
                out, pending, used = pending, b"", len(pending)
            else:
                try:
                    out = inflater.decompress(pending, CHUNK)
                except zlib.error as err:
                    raise InputError("zip entry", name, f"is corrupt ({err})", "re-create the zip") from None
                used = len(pending) - len(inflater.unconsumed_tail)
                pending = inflater.unconsumed_tail
            consumed += used
            size += len(out)
            totals[0] += len(out)
            totals[1] += used
            if size > max_entry_bytes:
                raise InputError("zip entry", name, f"expands beyond {max_entry_bytes} bytes (limit)", "upload a smaller study")
            if totals[0] > max_total_bytes:
                raise InputError("zip", name, f"expands beyond {max_total_bytes} bytes in total (limit)", "split the study or zip fewer files")
            if (size > RATIO_MIN_BYTES and size > max_ratio * max(consumed, 1)) or (
                totals[0] > 2 * RATIO_MIN_BYTES and totals[0] > max_ratio * max(totals[1], 1)
            ):
                raise InputError(
                    "zip entry",
                    name,
                    f"has a compression ratio above {max_ratio:.0f}:1 (zip bomb?)",
                    "upload the original files, not a crafted archive",
                )
            crc = zlib.crc32(out, crc)
            parts.append(out)
            if inflater is not None and inflater.eof:
                break
    if inflater is not None and not inflater.eof:
        raise InputError("zip entry", name, "is truncated (deflate stream cut off)", "re-create or re-upload the zip")
    if size != info.file_size or crc != info.CRC:
        raise InputError("zip entry", name, "fails its size/CRC check (corrupt)", "re-create or re-upload the zip")
    return b"".join(parts)


def write_members(members: list[ZipMember], dest: Path, top: str = "") -> Path:
    """Write the ``members`` of a zip read by :func:`read_zip` under ``dest`` (private folders, mode 0700), only those
    under ``top`` and without it; names are re-checked to stay under ``dest``. Returns ``dest`` resolved."""
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)  # a user's cohort or scratch: private, as the folders above it
    for m in members:
        name = m.name.replace("\\", "/")
        if top and not name.startswith(top + "/"):
            continue
        rel = name[len(top) + 1:] if top else name
        target = (root / rel).resolve()
        if root not in target.parents:
            raise InputError("zip entry", m.name, "points outside the folder it is unpacked to",
                             "re-create the zip with relative names")
        for folder in reversed([p for p in target.parents if root in p.parents]):
            folder.mkdir(exist_ok=True, mode=0o700)
        target.write_bytes(m.data)
    return root
