"""Whole-volume attribution maps for the CT viewer's overlay: computed once, cached in memory and on disk.

The viewer shows the map on every plane and scrolls it in the browser, so it
needs the map of the whole volume, not of one slice. :func:`whole_map` builds
it with ``core.explain.attribute``: slice by slice for per-slice 2D encoders
(per-slice lazy mode, one Captum call per slice, ``progress`` after each) and
in one call for 3D encoders. The page runs it in the background job queue
(``progress`` is the job's ``ctx.progress``, which raises when the user cancels).

:class:`MapCache` keeps finished maps keyed by :func:`map_key` (a hash of the
case's content, the model's stamp, the method and the horizon): an LRU in
memory bounded in bytes, and ``.npy`` files under ``<data dir>/cache/attribution``
so reopening a case, or the same case after a server restart, is instant.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import disk_cache
from core.errors import InputError

if TYPE_CHECKING:
    from core.models.types import CaseInputs
    from core.registry import LoadedModel

Progress = Callable[[float, str], None]
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024
KEY_VERSION = "attribution-volume-1"


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
    """Finished maps: an LRU in memory bounded in bytes, backed by ``.npy`` files in ``root`` (None: memory only)."""

    def __init__(self, root: str | Path | None, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        if int(max_bytes) <= 0:
            raise InputError("max_bytes", max_bytes, "must be positive", "use e.g. 256 MiB")
        self.root = None if root is None else Path(root)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes_in_memory(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._items.values())

    def _path(self, key: str) -> Path | None:
        if self.root is None:
            return None
        if not key.isalnum():
            raise InputError("key", key, "must be a hex digest", "build it with map_key")
        return self.root / f"{key}.npy"

    def _remember(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            total = sum(a.nbytes for a in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                total -= dropped.nbytes
            if total > self.max_bytes:  # a single map larger than the budget is kept on disk only
                self._items.pop(key, None)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # a torn or foreign file: recompute rather than show it
            path.unlink(missing_ok=True)
            return None
        value.setflags(write=False)
        self._remember(key, value)
        return value

    def put(self, key: str, value: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if arr.ndim != 3:
            raise InputError("map", arr.shape, "must be [slices, rows, cols]", "pass a whole-volume map")
        arr.setflags(write=False)
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = disk_cache.partial_name(path, ".npy")
            np.save(tmp, arr, allow_pickle=False)
            tmp.replace(path)
        self._remember(key, arr)
        return arr

    def get_or_compute(self, key: str, compute: Callable[[Progress | None], np.ndarray],
                       progress: Progress | None = None) -> np.ndarray:
        """The cached map of ``key``, else ``compute(progress)`` stored under it."""
        found = self.get(key)
        if found is not None:
            if progress is not None:
                progress(1.0, "cached")
            return found
        return self.put(key, compute(progress))


_CACHES: dict[str, MapCache] = {}
_CACHES_LOCK = threading.Lock()


def shared_cache(root: str | Path, max_bytes: int = DEFAULT_MEMORY_BYTES) -> MapCache:
    """One process-wide :class:`MapCache` per folder (the app's is ``<data dir>/cache/attribution``)."""
    name = str(Path(root).resolve())
    with _CACHES_LOCK:
        if name not in _CACHES:
            _CACHES[name] = MapCache(name, max_bytes)
        return _CACHES[name]


def case_map(cache: MapCache, model: LoadedModel, inputs: CaseInputs, method: str, horizon_days: float,
             progress: Progress | None = None) -> np.ndarray:
    """The whole-volume map of a case from ``cache``, computed (and stored) when missing."""
    key = map_key(case_digest(inputs), model_stamp(model.model_dir), method, horizon_days)
    return cache.get_or_compute(key, lambda p: whole_map(model, inputs, method, horizon_days, progress=p), progress)

