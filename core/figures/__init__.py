"""Figures for the app: CT slices with overlays, survival curves, attention, timelines, calibration.

Plotly figures, except the case's survival curve on Case review's first screen, a Vega-Lite
spec (``survival_chart``: see its module for why). One figure per function; every function takes numpy arrays and plain values
(never a model, never a patient record), so what ends up in a figure is exactly
what the caller passed. Times on the timeline are shown in days relative to the
index date, never as dates. Writing figures to files (PNG, SVG, PDF with a
caption and no metadata) is ``core.figure_export``.

>>> import numpy as np
>>> fig = slice_overlay(np.zeros((8, 8), np.float32), None, window=(-1000, 1000))
>>> len(fig.data)
1
"""

from __future__ import annotations

from core.figures.curves import (
    calibration_figure,
    decision_curve_figure,
    survival_compare_figure,
)
from core.figures.metrics import model_comparison_figure, pooled_figure, subgroup_figure
from core.figures.slices import map_top, montage, normalize_map, resolve_window, scale_map, slice_overlay
from core.figures.style import (
    BAND_FILL,
    COHORT_COLOR,
    GRAY,
    OVERLAY_COLORSCALE,
    PALETTE,
    RISK_GROUP_COLORS,
    STRATEGY_COLORS,
)
from core.figures.survival_chart import survival_chart
from core.figures.tokens import (
    attention_heatmap,
    attention_maps,
    event_labels,
    slice_strip,
    timeline_figure,
)

__all__ = [
    "BAND_FILL", "COHORT_COLOR", "GRAY", "OVERLAY_COLORSCALE", "PALETTE", "RISK_GROUP_COLORS", "STRATEGY_COLORS",
    "attention_heatmap", "attention_maps", "calibration_figure", "decision_curve_figure", "event_labels", "model_comparison_figure", "montage", "pooled_figure",
    "map_top", "normalize_map",
    "resolve_window", "scale_map", "slice_overlay", "slice_strip", "subgroup_figure", "survival_chart", "survival_compare_figure", "timeline_figure",
]
