"""The per-session memo for patient data: LRU, bounded in entries and in bytes, never shared between sessions."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import streamlit as st

from pages import _state as K

T = TypeVar("T")
MEMO_SIZE = 48
MEMO_BYTES = int(float(os.environ.get("CTEHR_SESSION_CACHE_MB", "256")) * 2**20)


def _nbytes(value: Any, depth: int = 0) -> int:
    """About how many bytes ``value`` holds in arrays and tensors (containers and objects looked into twice); a
    memory-mapped array (a case's CT read back from its decoded copy) holds none: its pages are the operating
    system's file cache, shared and evictable."""
    if isinstance(value, np.memmap):
        return 0
    if hasattr(value, "nbytes") and isinstance(value.nbytes, int):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if depth >= 2:
        return 0
    if isinstance(value, dict):
        return sum(_nbytes(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v, depth + 1) for v in value)
    if hasattr(value, "__dict__"):
        return sum(_nbytes(v, depth + 1) for v in vars(value).values())
    return 0


def memo(key: tuple, compute: Callable[[], T]) -> T:
    """A small per-session LRU memo for patient data (never shared between sessions).

    Bounded twice: at most ``MEMO_SIZE`` entries and ``MEMO_BYTES`` bytes of arrays (``CTEHR_SESSION_CACHE_MB``,
    256 MB by default); the least recently used entries go first. A value larger than the whole budget (a
    full-resolution CT decoded in memory where its case had no room for a decoded copy on disk) is held until the
    session's next run (:func:`new_run`), so that one run computes it once, not at every page section that asks.
    """
    store: OrderedDict = st.session_state.setdefault(K.MEMO, OrderedDict())
    sizes: dict = st.session_state.setdefault(K.MEMO_SIZES, {})
    if key in store:
        store.move_to_end(key)
        return store[key]
    held: dict = st.session_state.setdefault(K.MEMO_RUN, {})
    if key in held:
        return held[key]
    value = compute()
    size = _nbytes(value)
    if size > MEMO_BYTES:
        held[key] = value
        return value
    store[key], sizes[key] = value, size
    while len(store) > MEMO_SIZE or sum(sizes.get(k, 0) for k in store) > MEMO_BYTES:
        old, _ = store.popitem(last=False)
        sizes.pop(old, None)
    return value


def new_run() -> None:
    """A new run of the session's script (app.py): the values held for the last run only are let go."""
    st.session_state[K.MEMO_RUN] = {}


def forget(prefix: str) -> None:
    store: OrderedDict = st.session_state.get(K.MEMO, OrderedDict())
    sizes: dict = st.session_state.get(K.MEMO_SIZES, {})
    for key in [k for k in store if k and k[0] == prefix]:
        del store[key]
        sizes.pop(key, None)
    held: dict = st.session_state.get(K.MEMO_RUN, {})
    for key in [k for k in held if k and k[0] == prefix]:
        del held[key]
