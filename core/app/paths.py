"""Where the app finds its shipped files and keeps its data."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"


def data_dir() -> Path:
    """The folder the app keeps its demo in: ``$CTEHR_DATA_DIR`` or ``./data``."""
    env = os.environ.get("CTEHR_DATA_DIR")
    return Path(env).expanduser().resolve() if env else ROOT / "data"
