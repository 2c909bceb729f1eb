"""Whole-volume attribution maps for the CT viewer's overlay: computed once, kept on disk (bounded).

The viewer shows the map on every plane and scrolls it in the browser, so it
needs the map of the whole volume, not of one slice. :func:`whole_map` builds
it with ``core.explain.attribute``: slice by slice for per-slice 2D encoders
(per-slice lazy mode, one Captum call per slice, ``progress`` after each) and
in one call for 3D encoders. The page runs it in the background job queue
(``progress`` is the job's ``ctx.progress``, which raises when the user cancels).

:class:`MapCache` keeps finished maps keyed by :func:`map_key` (a hash of the
case's content, the model's stamp, the method and the horizon) as ``.npy`` files,
read back memory-mapped, so reopening a case, or the same case after a server
restart, is instant. Each folder is bounded (files, bytes, least recently used
first out); a :class:`MapStore` names one in plain values: the server's folder
for demo cases, or a folder inside a user's own space (a saved case's
``maps/``), whose files count in that user's quota and go with the case.
:func:`map_job` is the queue's job; on a large CT (:func:`is_heavy`) it runs in
its own process, one such job at a time, given the model's folder.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core import disk_cache
from core.errors import InputError

if TYPE_CHECKING:
    from core.explain import Attribution
    from core.io.volume import Volume
    from core.jobs import JobContext
    from core.models.types import CaseInputs
    from core.registry import LoadedModel

Progress = Callable[[float, str], None]
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024  # a cache without a folder
DEFAULT_MAX_FILES = 64  # maps in one folder (the server's shared folder of demo cases)
DEFAULT_DISK_BYTES = 2 * 1024**3  # ... and their bytes
HEAVY_MAP_VOXELS = 4_000_000  # a CT this large (256 x 256 x 61) has its map made in a job's own process
KEY_VERSION = "attribution-volume-1"
PEAK = ".peak.json"  # beside a map: its strongest spot (core.sanity.map_peak), made by the job that made the map
VIEWER = ".viewer.nii"  # beside a map: the viewer's uint8 NIfTI of it (made by the map's job, given the CT's grid)
DERIVED = (PEAK, VIEWER)


def model_stamp(model_dir: str | Path) -> str:
    """The folder and the size and modification time of the files that define the model (``config.json`` and the
    ``*.safetensors`` weights): changes when a model is retrained in place, not when the app writes its caches
    (reference predictions) beside them."""
    root = Path(model_dir)
    if not root.is_dir():
        raise InputError("model", str(root), "is not a folder", "pass a loaded model's model_dir")
    parts = [str(root.resolve())]
    for path in sorted(p for p in root.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors")):
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def case_digest(inputs: CaseInputs) -> str:
    """A hash of what the model sees of a case: the CT voxels, the timeline events and the EHR tensors built from
    them and the clinical values (a value changed on a saved case is another map; hex, 16 chars)."""
    h = hashlib.sha256()
    if inputs.image is not None:
        image = inputs.image.detach().cpu().numpy()
        h.update(str(image.shape).encode())
        h.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    for name in sorted(inputs.ehr):
        value = inputs.ehr[name].detach().cpu().numpy()
        h.update(f"{name}:{value.shape}:{value.dtype}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    if inputs.events is not None and len(inputs.events):
        import pandas as pd

        h.update(pd.util.hash_pandas_object(inputs.events, index=False).to_numpy().tobytes())
    h.update(str(inputs.subject_id).encode())
    return h.hexdigest()[:16]


def map_key(case: str, stamp: str, method: str, horizon_days: float) -> str:
    """The cache key of one map: sha256 of the case digest, the model stamp, the method and the horizon."""
    from core.explain import check_method

    check_method(method)
    if not np.isfinite(float(horizon_days)) or float(horizon_days) <= 0:
        raise InputError("horizon", horizon_days, "must be a positive number of days", "use e.g. 365")
    text = "\n".join([KEY_VERSION, case, stamp, method, f"{float(horizon_days):g}"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def whole_map(model: LoadedModel, inputs: CaseInputs, method: str, horizon_days: float, *,
              per_slice: bool | None = None, progress: Progress | None = None) -> np.ndarray:
    """The attribution of the risk at ``horizon_days`` over the whole CT, float32 ``[slices, rows, cols]``.

    Per-slice 2D encoders: one ``attribute`` call per slice in per-slice lazy mode,
    the same map the page used to compute slice by slice; ``progress(fraction,
    label)`` after each. Other encoders, and a study that a model reads as slabs of
    several slices (``SliceSpacing``): one call for the whole volume (``per_slice=True``
    asks for slice by slice only where it is possible).
    """
    from core.explain import attribute

    if inputs.image is None:
        raise InputError("image", "none", "this case has no CT on the model's voxel grid", "pick a case with a CT")
    chain = model.transforms
    possible = chain is not None and bool(chain.per_slice_for(inputs.slice_mm))  # not with slabs of several slices
    per_slice = possible if per_slice is None else bool(per_slice) and possible
    s = int(inputs.image.shape[1])
    report = progress or (lambda fraction, label: None)
    if not per_slice:
        report(0.0, f"{method}: whole volume")
        out = attribute(model, inputs, method, float(horizon_days), None, with_events=False).map
        report(1.0, "done")
        return np.asarray(out, dtype=np.float32)
    import torch

    full = np.zeros(tuple(int(v) for v in inputs.image.shape[1:]), dtype=np.float32)
    report(0.0, f"{method}: slice 1 of {s}")
    image = inputs.image.detach().float()
    masks = model.image_masks(image, inputs.slice_mm)
    with torch.no_grad():  # the case's masks and every slice's tokens, once for all its slices (not once per slice)
        context = (masks, model.encode_image(image, masks).detach())
    for k in range(s):
        full[k] = attribute(model, inputs, method, float(horizon_days), k, with_events=False, context=context).map[k]
        report((k + 1) / s, f"{method}: slice {min(k + 2, s)} of {s}" if k + 1 < s else "done")
    return full


class MapCache:
    """Finished maps, as ``.npy`` files in ``root`` read back memory-mapped, or (``root`` None) an LRU in memory
    bounded by ``max_bytes``.

    On disk the folder keeps at most ``max_files`` maps and ``max_disk_bytes`` bytes, least recently used first out
    (a read touches the file), and a map is written only where ``room(n_bytes)`` allows (a user's quota) and, without
    ``create``, only into a folder that still exists (a case deleted while its map was computed stays deleted): a map is
    315 MB on a full-resolution CT, so a folder of them must be bounded, and one read back is the operating system's
    file cache, not a session's memory.
    """

    def __init__(self, root: str | Path | None, max_bytes: int = DEFAULT_MEMORY_BYTES, *,
                 max_files: int = DEFAULT_MAX_FILES, max_disk_bytes: int = DEFAULT_DISK_BYTES,
                 room: Callable[[int], bool] | None = None, create: bool = True) -> None:
        for name, value in (("max_bytes", max_bytes), ("max_files", max_files), ("max_disk_bytes", max_disk_bytes)):
            if int(value) <= 0:
                raise InputError(name, value, "must be positive", "use e.g. 256 MiB, 64 files, 2 GiB")
        self.root = None if root is None else Path(root)
        self.max_bytes = int(max_bytes)
        self.max_files = int(max_files)
        self.max_disk_bytes = int(max_disk_bytes)
        self.room = room
        self.create = bool(create)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes_in_memory(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._items.values())

    def _path(self, key: str) -> Path | None:
        if not key.isalnum():
            raise InputError("key", key, "must be a hex digest", "build it with map_key")
        return None if self.root is None else self.root / f"{key}.npy"

    def _remember(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            total = sum(a.nbytes for a in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                total -= dropped.nbytes
            if total > self.max_bytes:  # a single map larger than the budget is not kept
                self._items.pop(key, None)

    def get(self, key: str) -> np.ndarray | None:
        """The map of ``key`` (read-only; memory-mapped from its file), or None."""
        path = self._path(key)
        if path is None:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                return self._items.get(key)
        try:
            value = np.load(path, mmap_mode="r", allow_pickle=False)
            os.utime(path)  # used now: the least recently used map goes first
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a torn or foreign file: recompute rather than show it
            path.unlink(missing_ok=True)
            return None
        if value.ndim != 3 or value.dtype != np.float32:
            path.unlink(missing_ok=True)
            return None
        return value

    def put(self, key: str, value: np.ndarray) -> bool:
        """Keep ``value`` under ``key``; False where it was not kept (the folder's ``room`` refused its bytes)."""
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if arr.ndim != 3:
            raise InputError("map", arr.shape, "must be [slices, rows, cols]", "pass a whole-volume map")
        path = self._path(key)
        if path is None:
            arr.setflags(write=False)
            self._remember(key, arr)
            return True
        if arr.nbytes + 128 > self.max_disk_bytes or self.room is not None and not self.room(arr.nbytes + 128):
            return False  # (a map over the folder's whole bound would only push every other map out)
        if self.create:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = disk_cache.partial_name(path, ".npy")
        try:
            np.save(tmp, arr, allow_pickle=False)
            tmp.replace(path)
        except FileNotFoundError:  # the folder is gone (its case was deleted): nothing is written
            tmp.unlink(missing_ok=True)
            return False
        disk_cache.trim(path.parent, self.max_files, self.max_disk_bytes, companions=DERIVED, pattern="*.npy")
        return path.is_file()

    def derived(self, key: str, suffix: str, build: Callable[[], bytes]) -> bytes:
        """Bytes made from the map of ``key`` (``suffix``: one of :data:`DERIVED`): read from beside the map, else
        ``build()`` and kept there while the map is (where ``room`` allows), so another session or a restart does
        not make them again."""
        if suffix not in DERIVED:
            raise InputError("suffix", suffix, f"must be one of {', '.join(DERIVED)}", "name a known derived file")
        path = self._path(key)
        side = None if path is None else path.with_suffix(suffix)
        if side is not None:
            try:
                data = side.read_bytes()
                os.utime(path)  # used with its map
                return data
            except FileNotFoundError:
                pass
        data = build()
        if side is None or not path.is_file() or self.room is not None and not self.room(len(data)):
            return data
        tmp = disk_cache.partial_name(side)
        try:
            tmp.write_bytes(data)
            tmp.replace(side)
        except FileNotFoundError:  # the folder went meanwhile: nothing is kept
            tmp.unlink(missing_ok=True)
        return data

    def get_or_compute(self, key: str, compute: Callable[[Progress | None], np.ndarray],
                       progress: Progress | None = None) -> np.ndarray:
        """The cached map of ``key``, else ``compute(progress)`` (stored under it where there is room)."""
        found = self.get(key)
        if found is not None:
            if progress is not None:
                progress(1.0, "cached")
            return found
        value = np.ascontiguousarray(compute(progress), dtype=np.float32)
        self.put(key, value)
        value.setflags(write=False)
        return value


@dataclass(frozen=True)
class MapStore:
    """Where the maps of one kind of case are kept, in plain values (a map job's own process opens it too).

    ``owner``: the user whose quota the files count in (a map is written only while that quota and the server's
    have room, and only while its folder exists); None for the server's shared folder of demo cases, bounded by
    ``max_files`` and ``max_bytes`` alone.
    ``base``: the workspace folder the quotas are read in (None: the app's data folder).
    """

    root: str
    max_files: int = DEFAULT_MAX_FILES
    max_bytes: int = DEFAULT_DISK_BYTES
    owner: str | None = None
    base: str | None = None

    def cache(self) -> MapCache:
        room = None
        if self.owner is not None:
            from core.app.cases import has_room

            owner, base = self.owner, None if self.base is None else Path(self.base)
            room = functools.partial(has_room, owner, base=base)
        return MapCache(self.root, max_files=self.max_files, max_disk_bytes=self.max_bytes, room=room,
                        create=self.owner is None)  # a user's folder is made by its owner (a case), never here


def case_map(cache: MapCache, model: LoadedModel, inputs: CaseInputs, method: str, horizon_days: float,
             progress: Progress | None = None) -> np.ndarray:
    """The whole-volume map of a case from ``cache``, computed (and stored) when missing."""
    key = map_key(case_digest(inputs), model_stamp(model.model_dir), method, horizon_days)
    return cache.get_or_compute(key, lambda p: whole_map(model, inputs, method, horizon_days, progress=p), progress)


def is_heavy(inputs: CaseInputs) -> bool:
    """Whether the case's map is computed in a job's own process (:func:`map_job` with the model's folder): a CT of
    at least :data:`HEAVY_MAP_VOXELS` voxels, whose Captum run takes minutes and gigabytes. A smaller one takes
    seconds, less than starting that process."""
    return inputs.image is not None and int(inputs.image.numel()) >= HEAVY_MAP_VOXELS


@dataclass(frozen=True)
class PortableInputs:
    """A case's inputs with numpy arrays in place of tensors, for a job's own process: the queue sends a heavy job's
    arguments with plain pickling, and torch's own pickling of a tensor shares it through the sending process
    instead of carrying its values."""

    values: dict[str, Any]

    def inputs(self) -> CaseInputs:
        import torch

        from core.models.types import CaseInputs

        def back(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return torch.from_numpy(v)
            return {k: back(x) for k, x in v.items()} if isinstance(v, dict) else v

        return CaseInputs(**{name: back(v) for name, v in self.values.items()})


def portable(inputs: CaseInputs) -> PortableInputs:
    """``inputs`` as :class:`PortableInputs` (the arrays share the tensors' memory until they are sent)."""
    import dataclasses

    import torch

    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().numpy()
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v

    return PortableInputs({f.name: plain(getattr(inputs, f.name)) for f in dataclasses.fields(inputs)})


@dataclass(frozen=True)
class Grid:
    """A CT's voxel grid without its voxels (shape, spacing, affine): what the viewer's NIfTI of a map needs, a few
    numbers to send to a map job's process."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    affine: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(volume.shape, tuple(float(v) for v in volume.spacing_mm),  # type: ignore[arg-type]
                   tuple(tuple(float(v) for v in row) for row in np.asarray(volume.affine)))

    def volume(self) -> Volume:
        """A Volume of this grid whose voxels are one shared zero (no memory)."""
        from core.io.volume import Volume

        return Volume(hu=np.broadcast_to(np.int16(0), self.shape), spacing_mm=self.spacing_mm,
                      affine=np.array(self.affine, dtype=np.float64))


def viewer_bytes(grid: Grid, amap: np.ndarray) -> bytes:
    """The viewer's copy of a map (:data:`VIEWER`): scaled to 0..1 (``core.figures.normalize_map``), uint8 NIfTI on
    the CT's grid (``core.app.volume_nifti.map_to_nifti``)."""
    from core.app.volume_nifti import map_to_nifti
    from core.figures import normalize_map

    return map_to_nifti(grid.volume(), normalize_map(amap), unit_uint8=True)


def map_job(ctx: JobContext, store: MapStore, key: str, model: LoadedModel | str, inputs: CaseInputs | PortableInputs,
            method: str, horizon_days: float, device: str = "cpu", grid: Grid | None = None) -> np.ndarray | None:
    """The background job of one map: computed and written to ``store`` under ``key``, with its strongest spot
    (:data:`PEAK`) and, given the CT's ``grid``, the viewer's copy (:data:`VIEWER`) beside it: made here, in the job's
    process, not in the server by the first session that shows the map (7 s and a gigabyte at 512 x 512 x 300).

    ``model``: the loaded model, or its folder (loaded here on ``device``: a job in its own process, given the
    case's :func:`portable` inputs). Returns None
    when the map was written (read it with ``store.cache().get(key)``: a finished job holds no copy of a 315 MB
    array for the hour the queue keeps it), the map itself where the store had no room for it.
    """
    cache = store.cache()
    if cache.get(key) is not None:
        ctx.progress(1.0, "cached")
        return None
    if not hasattr(model, "model_dir"):
        from core.registry import load_model

        ctx.progress(0.0, "loading the model")
        model = load_model(str(model), device=device)
    case = inputs.inputs() if isinstance(inputs, PortableInputs) else inputs
    value = whole_map(model, case, method, horizon_days, progress=ctx.progress)
    if not cache.put(key, value):
        return value
    cache.derived(key, PEAK, lambda: peak_bytes(value))  # here, not in the page that shows it (4 s at full size)
    if grid is not None:
        ctx.progress(1.0, "the viewer's copy")
        cache.derived(key, VIEWER, lambda: viewer_bytes(grid, value))
    return None


def peak_bytes(amap: np.ndarray) -> bytes:
    """The map's strongest spot (``core.sanity.map_peak``) as the JSON kept beside it: ``[slice, row, col]``, or
    ``null`` for a map that is zero everywhere.

    >>> m = np.zeros((5, 9, 9), np.float32); m[3, 3:6, 4:7] = 0.6
    >>> peak_bytes(m), read_peak(peak_bytes(m)), read_peak(peak_bytes(np.zeros((2, 2, 2), np.float32)))
    (b'[3, 4, 5]', (3, 4, 5), None)
    """
    import json

    from core.sanity import map_peak

    peak = map_peak(amap)
    return json.dumps(None if peak is None else [int(v) for v in peak]).encode()


def read_peak(data: bytes) -> tuple[int, int, int] | None:
    """The ``(slice, row, col)`` that :func:`peak_bytes` wrote (None: a map zero everywhere)."""
    import json

    value = json.loads(data)
    if value is None:
        return None
    s, r, c = (int(v) for v in value)
    return s, r, c


def as_attribution(model: LoadedModel, amap: np.ndarray, method: str, horizon_days: float) -> Attribution:
    """A whole-volume map from a :class:`MapStore` as the ``core.explain.Attribution`` that ``attribute`` would give
    for the whole volume (its top slices ranked the same way, no events): the report draws the map the viewer and the
    DICOM export show, without computing it again in the server (integrated gradients of a full-resolution CT: minutes
    and gigabytes).

    >>> from types import SimpleNamespace
    >>> m = np.zeros((4, 3, 3), np.float32); m[2] = 3.0; m[0, 0, 0] = -1.0
    >>> a = as_attribution(SimpleNamespace(times=np.array([30.0, 800.0])), m, "saliency", 365)
    >>> a.method, a.target, [(i, round(s, 3)) for i, s in a.top_slices], a.map is m
    ('saliency', 'risk 1 - S(t) at 365 d', [(2, 0.964), (0, 0.036)], True)
    """
    from core.explain import Attribution, check_method, rank_slices, target_text

    check_method(method)
    return Attribution(map=amap, method=method, target=target_text(model, float(horizon_days)),
                       horizon_days=float(horizon_days),
                       top_slices=rank_slices(np.abs(np.asarray(amap, dtype=np.float32)).sum(axis=(1, 2))))
