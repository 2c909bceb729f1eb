"""CT window presets (data in ``assets/windows.json``) and windowing to 8-bit.

>>> import numpy as np
>>> apply_window(np.array([-2000.0, -600.0, 1000.0]), "lung").tolist()
[0, 128, 255]
>>> apply_window(np.array([0.0, 50.0, 100.0]), (0, 100)).tolist()
[0, 128, 255]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import InputError

WINDOWS_FILE = Path(__file__).resolve().parents[2] / "assets" / "windows.json"


@dataclass(frozen=True)
class Window:
    """One display window: ``low``..``high`` HU map to 0..255."""

    name: str
    label: str
    width: float
    level: float
    low: float
    high: float

    def __iter__(self) -> Iterator[float]:
        """Unpacks as ``low, high = WINDOWS["lung"]``."""
        return iter((self.low, self.high))


def load_windows(path: Path = WINDOWS_FILE) -> dict[str, Window]:
    """Read the presets; each must have width > 0 and range == level -/+ width / 2."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out: dict[str, Window] = {}
    for name, spec in raw.items():
        if name.startswith("_"):
            continue
        low, high = (float(v) for v in spec["range"])
        width, level = float(spec["width"]), float(spec["level"])
        if not (width > 0 and np.isclose(low, level - width / 2) and np.isclose(high, level + width / 2)):
            raise ValueError(f"{path}: window {name!r} has inconsistent width/level/range")
        out[name] = Window(name=name, label=str(spec.get("label", name)), width=width, level=level, low=low, high=high)
    return out


WINDOWS: dict[str, Window] = load_windows()


def window_range(preset: str | tuple[float, float] | list[float]) -> tuple[float, float]:
    """(low, high) HU of a preset name or an explicit range."""
    if isinstance(preset, str):
        if preset not in WINDOWS:
            raise InputError("window", preset, "is not a preset", f"use one of {', '.join(WINDOWS)} or a (low, high) HU range")
        w = WINDOWS[preset]
        return w.low, w.high
    try:
        low, high = (float(v) for v in preset)
    except (TypeError, ValueError):
        raise InputError("window", preset, "is not a preset name or a (low, high) pair", "give e.g. 'lung' or (-1350, 150)") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputError("window", preset, "needs finite low < high", "give e.g. (-1350, 150)")
    return low, high


def apply_window(hu: np.ndarray, preset: str | tuple[float, float] | list[float]) -> np.ndarray:
    """Clip ``hu`` to the window and scale to uint8 0..255 (rounded; NaN -> 0)."""
    low, high = window_range(preset)
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return np.rint(scaled).astype(np.uint8)
