"""Decoded studies on disk: a study file opened before is read back with numpy alone.

Opening a NIfTI study imports nibabel (and through it scipy.ndimage), about 0.4 s of a
fresh server's first page on 2 cores, before a single voxel is read. The app keeps
each study file it decodes as one ``.npz`` (spacing, affine and the volume's
descriptive fields; pickle-free) and its HU array as a ``.npy`` beside it, keyed by
the file's resolved path, size and modification time (and the series read from it),
so a restarted server reopens a case without any decoder. The HU array is read back
memory-mapped (copy-on-write): a full-resolution CT (512 x 512 x 300, 315 MB of
float32) opens in milliseconds, and its pages are the operating system's file cache,
not the reading session's memory.

Only single files are kept (NIfTI, a zip, one DICOM file); a DICOM folder is
decoded every time (its key would need every file's stamp). A torn or foreign
cache file is deleted and counts as a miss. Bounded like the prediction cache:
at most ``max_entries`` files and ``max_bytes`` bytes, least recently used first out.

>>> import tempfile, numpy as np
>>> from core.io.volume import Volume
>>> folder = Path(tempfile.mkdtemp())
>>> study = folder / "ct.nii.gz"; _ = study.write_bytes(b"stand-in: only the stamp matters here")
>>> cache = StudyCache(folder / "cache")
>>> v = Volume(hu=np.zeros((2, 3, 4), np.int16), spacing_mm=(3.0, 1.0, 1.0), affine=np.eye(4))
>>> cache.get(study) is None
True
>>> cache.put(study, v); cache.get(study).shape
(2, 3, 4)
>>> cache.get(study, series="2") is None  # another series of the same file is another entry
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core import disk_cache
from core.errors import InputError
from core.io.volume import SeriesInfo, Volume

CACHE_VERSION = "study-cache-4"  # 2: enhanced CT read from its functional groups; tilted stacks shifted onto one grid;
# 3: the contrast record (core.io.contrast) in meta; 4: the HU array in its own .npy (memory-mapped), the series in the key
_LISTS = ("phi", "burned_in", "warnings")
VIEWER_NIFTI = "viewer_nifti_v1"  # the viewer's gzipped NIfTI of a study (core.app.volume_nifti.volume_to_nifti)
HU = ".hu.npy"  # the HU array of an entry, beside its .npz
DERIVED = (f".{VIEWER_NIFTI}",)  # derived files trimmed with their volume


class StudyCache(disk_cache.BoundedFolder):
    """Decoded study files, one ``.npz`` each (see the module docstring)."""

    def __init__(self, root: Path | str, max_entries: int = 400, max_bytes: int = 512 * 2**20) -> None:
        super().__init__(root, max_entries, max_bytes, "study cache")

    @staticmethod
    def key(path: Path | str, series: str | None = None) -> str | None:
        """The cache key of a study file (its resolved path, size and modification time, and the series read from
        it: None for the loader's default); None for a folder."""
        p = Path(path).resolve()
        if not p.is_file():
            return None
        st = p.stat()
        text = "\n".join([CACHE_VERSION, str(p), str(st.st_size), str(st.st_mtime_ns), repr(series)])
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def get(self, path: Path | str, series: str | None = None) -> Volume | None:
        """The volume kept for the study file (and series), its HU array memory-mapped; None when not kept."""
        key = self.key(path, series)
        if key is None:
            return None
        entry = self.root / f"{key}.npz"
        try:
            hu = np.load(self.root / f"{key}{HU}", mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            return None  # not kept (an entry is complete once its .npz is written, after its .npy)
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)  # torn: decoded again
            return None

        def build(z: Mapping[str, Any], meta: dict[str, Any]) -> Volume:
            if tuple(meta["shape"]) != hu.shape:
                raise ValueError(f"HU array of shape {hu.shape}, the entry says {meta['shape']}")
            return Volume(
                hu=hu, spacing_mm=tuple(float(v) for v in z["spacing"]), affine=z["affine"],
                modality=meta["modality"], format=meta["format"],
                series=[SeriesInfo(**s) for s in meta["series"]],
                meta={str(k): str(v) for k, v in meta["meta"].items()}, study_date=meta["study_date"],
                **{name: [str(v) for v in meta[name]] for name in _LISTS},
            )

        return disk_cache.load_npz(entry, build)  # torn or foreign: None, decoded again

    def put(self, path: Path | str, volume: Volume, series: str | None = None) -> None:
        """Keep ``volume``, decoded from the study file ``path`` (and ``series``; a folder is not kept)."""
        key = self.key(path, series)
        if key is None:
            return
        disk_cache.save_npy(self.root / f"{key}{HU}", np.asarray(volume.hu))
        meta = {"shape": list(volume.shape), "modality": volume.modality, "format": volume.format, "meta": dict(volume.meta),
                "study_date": volume.study_date, "series": [dataclasses.asdict(s) for s in volume.series],
                **{name: list(getattr(volume, name)) for name in _LISTS}}
        disk_cache.save_npz(self.root / f"{key}.npz", {
            "meta": np.asarray(json.dumps(meta)),
            "spacing": np.asarray(volume.spacing_mm, dtype=float), "affine": np.asarray(volume.affine, dtype=float)})
        disk_cache.trim(self.root, self.max_entries, self.max_bytes, companions=(HU, *DERIVED))

    def derived(self, path: Path | str, name: str, compute: Callable[[], bytes], series: str | None = None,
                room: Callable[[int], bool] | None = None) -> bytes:
        """Bytes derived from the study file (what the CT viewer is sent), kept beside its volume under ``name``.

        ``name`` is one of :data:`DERIVED` (it carries a version of the code that computes the bytes, and the
        trimming of the folder removes it with its volume). A folder computes them every time; ``room(bytes)``
        False: computed and not kept.
        """
        if f".{name}" not in DERIVED:
            raise InputError("name", name, "is not a kept derivative", f"use one of {[d[1:] for d in DERIVED]}")
        key = self.key(path, series)
        if key is None:
            return compute()
        file = self.root / f"{key}.{name}"
        try:
            data = file.read_bytes()
            os.utime(file)
            return data
        except FileNotFoundError:
            pass
        data = compute()
        if room is None or room(len(data)):
            disk_cache.write_bytes_atomic(file, data)  # two sessions may compute the same derivative at once
        return data

    def load(self, path: Path | str, decode: Callable[[], Volume], series: str | None = None,
             room: Callable[[int], bool] | None = None) -> Volume:
        """The study file's volume from the cache, else ``decode()``, kept for next time (when ``room(bytes)`` says
        there is room for it on disk, e.g. in a user's quota) and returned as read back, memory-mapped."""
        found = self.get(path, series)
        if found is not None:
            return found
        volume = decode()
        if room is not None and not room(int(np.asarray(volume.hu).nbytes)):
            return volume
        self.put(path, volume, series)
        kept = self.get(path, series)
        return volume if kept is None else kept
