"""pydicom, imported without its optional example-data downloader (import this before anything else imports pydicom)."""

from __future__ import annotations

import sys

_DOWNLOADER_ONLY = ("requests", "tqdm")  # optional imports of pydicom.data.download, used only to fetch examples


def _import_pydicom_without_downloader() -> None:
    """Import pydicom without its optional test-data downloader's HTTP stack and progress bar.

    ``pydicom.data`` imports ``requests`` (and urllib3, certifi, ...) and
    ``tqdm`` (and importlib.metadata) only to fetch example files, which this
    project never does at run time; skipping them saves ~80 ms of every
    ``inspect``. Both stay importable for anyone else afterwards.
    """
    if "pydicom" in sys.modules:
        return
    blocked = [name for name in _DOWNLOADER_ONLY if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail inside pydicom
    try:
        import pydicom  # noqa: F401
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_import_pydicom_without_downloader()


_import_pydicom_without_downloader()

import pydicom  # noqa: E402

__all__ = ["pydicom"]
