"""pydicom, imported without what a DICOM load does not use: its example-data downloader, and its codec plugins
until something asks for them (import this before anything else imports pydicom).

``import pydicom`` (3.0) imports every installed codec package at once to ask
whether it is usable: GDCM, Pillow, pylibjpeg with openjpeg, libjpeg and rle,
and pyjpegls (with ``importlib.metadata`` for their versions), twice (the
decoder and encoder registries and the deprecated ``pixel_data_handlers``),
and the HTTP stack of its test-data downloader. A DICOM load whose pixels are
uncompressed or JPEG 2000 through :mod:`core.io.j2k` uses none of them: about a
third of pydicom's import time (0.09 CPU s of a 0.5 s JPEG 2000 load).

Here, during ``import pydicom`` only:

* the registration calls of pydicom's decoder and encoder plugins
  (``add_plugin``) are recorded instead of run, each with its label and import
  path, in pydicom's order; afterwards each registry answers pydicom's code as
  before, through its two plugin tables (available, unavailable), which run the
  recorded registrations (pydicom's own ``add_plugin``, in the recorded order)
  the first time anything reads them: ``get_decoder(uid).is_available``,
  ``available_plugins``, ``Dataset.pixel_array``, ``compress``, ... see exactly
  what an eager import gives (same plugins, same order, same missing
  dependencies; ``tests/test_io_pydicom_import.py`` compares every registry with
  a plain ``import pydicom`` in another process);
* the deprecated ``pydicom.pixel_data_handlers.*_handler`` modules for GDCM,
  Pillow, pyjpegls and pylibjpeg, ``pydicom.examples`` (it searches pydicom's
  test files for 13 names), ``urllib.request`` (pydicom's downloader) and
  ``PIL.ImageCms`` (with ``PIL.Image``: for ``apply_icc_profile``) are
  created but run on their first attribute access (:class:`_DeferredLoader`, a
  thread-safe form of ``importlib.util.LazyLoader``);
* ``requests`` and ``tqdm``, optional for the downloader, are not imported
  (the downloader is never used at run time); both stay importable afterwards.

Where pydicom is already imported, or its structure is not the one described
(another version), nothing is deferred: the plugins are registered at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_DOWNLOADER_ONLY = ("requests", "tqdm")  # optional imports of pydicom.data.download, used only to fetch examples
_DEFERRED_MODULES = frozenset(
    {
        "pydicom.examples",
        "pydicom.pixel_data_handlers.gdcm_handler",
        "pydicom.pixel_data_handlers.pillow_handler",
        "pydicom.pixel_data_handlers.jpeg_ls_handler",
        "pydicom.pixel_data_handlers.pylibjpeg_handler",
        "urllib.request",
        "PIL.ImageCms",  # pydicom.pixels.processing imports it for apply_icc_profile (and PIL.Image with it)
    }
)
_REGISTRY_MODULE = "pydicom.pixels.common"  # defines CoderBase, the base of pydicom's Decoder and Encoder
_LOCK = threading.RLock()  # one registry's plugins are registered once, by one thread


# ---------------------------------------------------------------- modules run on first use


class _DeferredModule(types.ModuleType):
    """A module whose code runs on its first attribute access (then it is a plain module)."""

    def __getattribute__(self, attr: str) -> Any:
        spec = object.__getattribute__(self, "__spec__")
        state = spec.loader_state
        with state["lock"]:
            if object.__getattribute__(self, "__class__") is _DeferredModule:
                if state["loading"]:  # the module's own code, while it runs
                    return object.__getattribute__(self, attr)
                state["loading"] = True
                try:
                    state["loader"].exec_module(self)
                finally:
                    state["loading"] = False
                object.__setattr__(self, "__class__", types.ModuleType)
        return getattr(self, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        self.__getattribute__("__dict__")  # runs the module first: its code must not overwrite the assignment
        object.__setattr__(self, attr, value)

    def __delattr__(self, attr: str) -> None:
        self.__getattribute__(attr)
        object.__delattr__(self, attr)


class _DeferredLoader(importlib.abc.Loader):
    """Creates the module as its own loader would and runs its code on first attribute access.

    ``importlib.util.LazyLoader`` does the same, but in Python 3.11 two threads
    touching the module at once can see it half-run; here a lock serialises the
    first access (as ``LazyLoader`` does from Python 3.12).
    """

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None
        spec.loader = self.loader
        spec.loader_state = {"lock": threading.RLock(), "loading": False, "loader": self.loader}
        module.__loader__ = self.loader
        module.__class__ = _DeferredModule


# ---------------------------------------------------------------- plugin registries filled on first use


class _Registry:
    """One pydicom coder (a Decoder or Encoder) whose ``add_plugin`` calls were recorded during the import."""

    def __init__(self, coder: Any) -> None:
        self.coder = coder
        self.pending: list[tuple[str, tuple[str, str]]] | None = []
        self.filling = False
        self.tables: dict[str, dict[str, Any]] = {"_available": {}, "_unavailable": {}}

    def register(self, add_plugin: Callable[..., None]) -> None:
        """Run the recorded ``add_plugin`` calls (pydicom's own method, pydicom's order), then hand the coder its tables.

        Other threads wait on the lock until every plugin is registered; the
        coder's attributes are replaced only at the end, so none of them sees
        a half-filled table.
        """
        with _LOCK:
            if self.pending is None or self.filling:  # done, or this thread's own add_plugin writing the tables
                return
            self.filling = True
            try:
                for label, import_path in self.pending:
                    add_plugin(self.coder, label, import_path)
            finally:
                self.coder._available, self.coder._unavailable = self.tables["_available"], self.tables["_unavailable"]
                self.pending, self.filling = None, False


class _PluginTable(dict):  # type: ignore[type-arg]
    """Stands for a coder's ``_available`` or ``_unavailable`` dict until first read; then the real one answers."""

    def __init__(self, registry: _Registry, name: str, add_plugin: Callable[..., None]) -> None:
        super().__init__()
        self._registry, self._name, self._add_plugin = registry, name, add_plugin

    def _real(self) -> dict[str, Any]:
        self._registry.register(self._add_plugin)
        return self._registry.tables[self._name]

    def __contains__(self, key: object) -> bool:
        return key in self._real()

    def __getitem__(self, key: str) -> Any:
        return self._real()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._real()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._real()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._real())

    def __len__(self) -> int:
        return len(self._real())

    def __eq__(self, other: object) -> bool:
        return self._real() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._real())

    def keys(self) -> Any:
        return self._real().keys()

    def values(self) -> Any:
        return self._real().values()

    def items(self) -> Any:
        return self._real().items()

    def get(self, key: str, default: Any = None) -> Any:
        return self._real().get(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        return self._real().pop(key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self._real().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._real().update(*args, **kwargs)

    def copy(self) -> dict[str, Any]:
        return self._real().copy()

    def clear(self) -> None:
        self._real().clear()


class _Recorder:
    """Wraps ``CoderBase.add_plugin`` while pydicom imports: each call is kept (label, import path), nothing imported.

    The label also goes into the coder's unavailable table meanwhile, so the
    docstrings pydicom builds at import list the same plugin names.
    """

    def __init__(self) -> None:
        self.registries: dict[int, _Registry] = {}
        self.coder_base: Any = None
        self.add_plugin: Callable[..., None] | None = None

    def install(self, module: types.ModuleType) -> None:
        coder_base = getattr(module, "CoderBase", None)
        add_plugin = getattr(coder_base, "add_plugin", None)
        if coder_base is None or not callable(add_plugin):
            return  # not the structure this was written for: pydicom registers its plugins itself
        self.coder_base, self.add_plugin = coder_base, add_plugin
        recorder = self

        def record(coder: Any, label: str, import_path: tuple[str, str]) -> None:
            registry = recorder.registries.setdefault(id(coder), _Registry(coder))
            if registry.pending is None or not isinstance(getattr(coder, "_unavailable", None), dict):
                assert recorder.add_plugin is not None
                recorder.add_plugin(coder, label, import_path)
                return
            registry.pending.append((label, tuple(import_path)))  # type: ignore[arg-type]
            coder._unavailable[label] = ()

        coder_base.add_plugin = record

    def finish(self, lazy: bool) -> None:
        """Put pydicom's ``add_plugin`` back; give each coder tables that register its plugins on first read."""
        if self.coder_base is None or self.add_plugin is None:
            return
        self.coder_base.add_plugin = self.add_plugin
        for registry in self.registries.values():
            coder = registry.coder
            if not lazy or not isinstance(getattr(coder, "_available", None), dict) or coder._available:
                registry.register(self.add_plugin)
                continue
            coder._available = _PluginTable(registry, "_available", self.add_plugin)
            coder._unavailable = _PluginTable(registry, "_unavailable", self.add_plugin)


class _ImportHooks(importlib.abc.MetaPathFinder):
    """While pydicom imports: defers the modules of ``_DEFERRED_MODULES`` and records pydicom's plugin registrations."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def find_spec(self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in _DEFERRED_MODULES and name != _REGISTRY_MODULE:
            return None
        spec = self._real_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        if name == _REGISTRY_MODULE:
            spec.loader = _RecordingLoader(spec.loader, self.recorder)
        else:
            spec.loader = _DeferredLoader(spec.loader)
        return spec

    def _real_spec(self, name: str, path: Sequence[str] | None, target: types.ModuleType | None) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None


class _RecordingLoader(importlib.abc.Loader):
    """Runs ``pydicom.pixels.common`` as its loader would, then installs the recorder on its ``CoderBase``."""

    def __init__(self, loader: importlib.abc.Loader, recorder: _Recorder) -> None:
        self.loader, self.recorder = loader, recorder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.recorder.install(module)


def _import_pydicom() -> list[_Registry]:
    """Import pydicom as described in the module docstring; the registries whose plugins wait for a first read."""
    if "pydicom" in sys.modules:
        return []
    blocked = [name for name in _DOWNLOADER_ONLY if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail inside pydicom
    recorder = _Recorder()
    hooks = _ImportHooks(recorder)
    sys.meta_path.insert(0, hooks)
    imported = False
    try:
        import pydicom  # noqa: F401

        imported = True
    finally:
        sys.meta_path.remove(hooks)
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        recorder.finish(lazy=imported)
    return list(recorder.registries.values())


_DEFERRED_REGISTRIES = _import_pydicom()


def plugins_waiting() -> int:
    """How many of pydicom's plugin registries have not yet registered their plugins (0: none deferred)."""
    return sum(1 for registry in _DEFERRED_REGISTRIES if registry.pending is not None)


import pydicom

__all__ = ["pydicom"]
