"""core.io.windows: presets from assets/windows.json and windowing to uint8."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InputError
from core.io.windows import (
    WINDOWS,
    WINDOWS_FILE,
    apply_window,
    load_windows,
    window_range,
)


def test_presets_are_data_with_literature_ranges():
    raw = json.loads(WINDOWS_FILE.read_text())
    assert {"lung", "mediastinum", "soft_tissue", "bone", "liver", "brain", "pe", "mace"} <= set(WINDOWS)
    assert set(WINDOWS) == {k for k in raw if not k.startswith("_")}
    assert window_range("pe") == (-1350.0, 150.0)
    assert window_range("mace") == (-125.0, 225.0)
    assert (WINDOWS["lung"].width, WINDOWS["lung"].level) == (1500.0, -600.0)
    assert (WINDOWS["brain"].low, WINDOWS["brain"].high) == (0.0, 80.0)
    low, high = WINDOWS["liver"]  # a preset unpacks as its HU range
    assert (low, high) == (-45.0, 105.0)


def test_apply_window_maps_range_to_0_255():
    hu = np.array([[-3000.0, -125.0, 50.0], [225.0, 4000.0, np.nan]], dtype=np.float32)
    out = apply_window(hu, "mace")
    assert out.dtype == np.uint8 and out.shape == hu.shape
    assert out.tolist() == [[0, 0, 128], [255, 255, 0]]
    assert apply_window(np.array([-1350.0, -600.0, 150.0]), (-1350, 150)).tolist() == [0, 128, 255]


@pytest.mark.parametrize("bad", ["sinus", (100, 100), (np.nan, 10), (1,), "(-1, 1)"])
def test_bad_windows_are_input_errors(bad):
    with pytest.raises(InputError, match="^window: got "):
        apply_window(np.zeros(3), bad)


def test_inconsistent_preset_file_is_refused(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"lung": {"width": 1500, "level": -600, "range": [-1000, 150]}}))
    with pytest.raises(ValueError, match="inconsistent"):
        load_windows(path)
