"""CT slices with attribution overlays, montages, window presets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.errors import InputError
from core.figures.style import GRAY, OVERLAY_COLORSCALE


def resolve_window(window: str | Sequence[float]) -> tuple[float, float]:
    """A window as ``(lo, hi)`` HU; a preset name is looked up in ``core.io.windows``."""
    if isinstance(window, str):
        try:
            from core.io.windows import WINDOWS  # type: ignore[import-not-found]
        except ImportError as err:  # the presets module is optional for figures
            raise InputError("window", window, "presets are unavailable", "pass (lo, hi) in HU") from err
        if window not in WINDOWS:
            raise InputError("window", window, "is not a preset", f"use one of {', '.join(sorted(WINDOWS))}")
        preset = WINDOWS[window]
        if isinstance(preset, Mapping):
            if "lo" in preset and "hi" in preset:
                return float(preset["lo"]), float(preset["hi"])
            center, width = float(preset["center"]), float(preset["width"])
            return center - width / 2, center + width / 2
        lo, hi = preset
        return float(lo), float(hi)
    if len(window) != 2:
        raise InputError("window", window, "must be (lo, hi)", "pass two HU values such as (-160, 240)")
    lo, hi = float(window[0]), float(window[1])
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        raise InputError("window", window, "needs finite lo < hi", "pass (lo, hi) with lo below hi, e.g. (-160, 240)")
    return lo, hi


def normalize_map(attribution: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """|attribution| scaled to 0..1 by a high percentile (robust to single hot voxels): ``scale_map(attribution,
    map_top(attribution, percentile))``. A slice of it is ``scale_map`` of the slice by the whole map's top, without
    the whole map's copies (a gigabyte and 2 s at 512 x 512 x 300).

    >>> m = np.arange(-60, 60, dtype=np.float32).reshape(4, 5, 6)
    >>> bool(np.array_equal(normalize_map(m)[2], scale_map(m[2], map_top(m))))
    True
    """
    a = np.abs(np.nan_to_num(np.asarray(attribution, dtype=np.float32)))
    return scale_map(a, map_top(a, percentile))


def map_top(attribution: np.ndarray, percentile: float = 99.5) -> float:
    """The value :func:`normalize_map` scales |attribution| by: its ``percentile``, or its maximum where that is 0."""
    a = np.abs(np.nan_to_num(np.asarray(attribution, dtype=np.float32)))
    top = float(np.percentile(a, percentile)) if a.size else 0.0
    return top if top > 0 else (float(a.max()) if a.size else 0.0)


def scale_map(values: np.ndarray, top: float) -> np.ndarray:
    """|values| / ``top`` clipped to 0..1 (zeros where ``top`` is 0)."""
    a = np.abs(np.nan_to_num(np.asarray(values, dtype=np.float32)))
    return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)


def _check_2d(name: str, array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise InputError(name, f"shape {arr.shape}", "must be a 2D slice [rows, cols]", "pass volume.hu[k]")
    if not np.isfinite(arr).all():
        raise InputError(name, "NaN/inf values", "must be finite", "replace NaN/inf before plotting")
    return arr.astype(np.float32, copy=False)


def _slice_traces(
    slice_hu: np.ndarray,
    attribution_slice: np.ndarray | None,
    window: tuple[float, float],
    spacing: tuple[float, float],
    opacity: float,
    colorscale: Any,
    colorbar_x: float | None = None,
    show_scale: bool = True,
) -> list[go.Heatmap]:
    lo, hi = window
    dy, dx = spacing
    traces = [
        go.Heatmap(
            z=np.clip(slice_hu, lo, hi), x0=0.0, dx=dx, y0=0.0, dy=dy,
            zmin=lo, zmax=hi, colorscale=GRAY, showscale=False, hoverinfo="skip", name="CT",
        )
    ]
    if attribution_slice is not None:
        colorbar: dict[str, Any] = {"title": {"text": "attribution", "side": "right"}, "len": 0.8, "thickness": 14}
        if colorbar_x is not None:
            colorbar["x"] = colorbar_x
        traces.append(
            go.Heatmap(
                z=attribution_slice, x0=0.0, dx=dx, y0=0.0, dy=dy, zmin=0.0, zmax=1.0,
                colorscale=colorscale, opacity=opacity, showscale=show_scale, colorbar=colorbar,
                name="attribution", hovertemplate="attribution %{z:.2f}<extra></extra>",
            )
        )
    return traces


def slice_overlay(
    slice_hu: np.ndarray,
    attribution_slice: np.ndarray | None = None,
    *,
    window: str | Sequence[float] = (-160.0, 240.0),
    opacity: float = 0.6,
    colorscale: Any = None,
    title: str = "",
    spacing_mm: Sequence[float] = (1.0, 1.0),
    normalize: bool = True,
    plane: str = "axial",
) -> go.Figure:
    """A grayscale CT slice [rows, cols] with a semi-transparent heat overlay, colour bar, orientation letters and scale bar.

    An axial slice's rows run anterior (top) to posterior, its columns patient
    right (image left) to left; ``plane`` ("axial", "coronal" or "sagittal", as
    ``core.app.viewer.plane_slice`` orients them) picks the letters at the edges.
    Pixel spacing ``(row, col)`` in mm gives the true aspect ratio.
    """
    hu = _check_2d("slice_hu", slice_hu)
    lo_hi = resolve_window(window)
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError("opacity", opacity, "must be within 0..1", "pass e.g. 0.5")
    spacing = _spacing2(spacing_mm)
    overlay = None
    if attribution_slice is not None:
        overlay = _check_2d("attribution_slice", attribution_slice)
        if overlay.shape != hu.shape:
            raise InputError("attribution_slice", f"shape {overlay.shape}", f"must match the slice {hu.shape}",
                             "attribute on the same volume grid")
        overlay = normalize_map(overlay) if normalize else overlay
    fig = go.Figure(_slice_traces(hu, overlay, lo_hi, spacing, float(opacity), colorscale or OVERLAY_COLORSCALE))
    _image_axes(fig, hu.shape, spacing)
    orientation_letters(fig, plane)
    _scale_bar(fig, hu.shape, spacing)
    fig.update_layout(title={"text": title} if title else None, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
                      width=560, height=int(520 * (hu.shape[0] * spacing[0]) / max(hu.shape[1] * spacing[1], 1e-6)) + 40,
                      plot_bgcolor="black")
    return fig


def _spacing2(spacing_mm: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in spacing_mm]
    if len(values) == 3:
        values = values[1:]
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError("spacing_mm", spacing_mm, "must be positive (row, col) mm", "pass volume.spacing_mm")
    return values[0], values[1]


def _image_axes(fig: go.Figure, shape: tuple[int, int], spacing: tuple[float, float], row: int | None = None,
                col: int | None = None) -> None:
    dy, dx = spacing
    kw: dict[str, Any] = {} if row is None else {"row": row, "col": col}
    fig.update_xaxes(range=[-dx / 2, (shape[1] - 0.5) * dx], showticklabels=False, ticks="", showgrid=False,
                     zeroline=False, constrain="domain", **kw)
    fig.update_yaxes(range=[(shape[0] - 0.5) * dy, -dy / 2], showticklabels=False, ticks="", showgrid=False,
                     zeroline=False, scaleratio=1, constrain="domain", **kw)
    # keep mm square: anchor every y axis to its own x axis
    for key in list(fig.layout):
        if key.startswith("yaxis"):
            suffix = key[5:]
            fig.layout[key].scaleanchor = "x" + suffix


#: the patient direction at the (top, bottom, left, right) edge of each displayed plane (radiological convention:
#: the patient's right on the image's left)
PLANE_EDGES: dict[str, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}


def orientation_letters(fig: go.Figure, plane: str = "axial", axis: int = 1) -> None:
    """Write the patient directions (A/P, R/L, S/I) at the four edges of image ``axis`` (1 = the first subplot).

    >>> fig = go.Figure(); orientation_letters(fig, "sagittal")
    >>> [(a.text, a.x, a.y) for a in fig.layout.annotations]
    [('S', 0.5, 1), ('I', 0.5, 0), ('A', 0, 0.5), ('P', 1, 0.5)]
    """
    if plane not in PLANE_EDGES:
        raise InputError("plane", plane, f"must be one of {', '.join(PLANE_EDGES)}", "pass the displayed plane")
    suffix = "" if axis == 1 else str(int(axis))
    for text, x, y, xa, ya in zip(PLANE_EDGES[plane], (0.5, 0.5, 0, 1), (1, 0, 0.5, 0.5),
                                  ("center", "center", "left", "right"), ("top", "bottom", "middle", "middle")):
        fig.add_annotation(text=text, x=x, y=y, xref=f"x{suffix} domain", yref=f"y{suffix} domain", xanchor=xa,
                           yanchor=ya, showarrow=False, font={"color": "white", "size": 13},
                           bgcolor="rgba(0,0,0,0.45)", borderpad=1)


def _scale_bar(fig: go.Figure, shape: tuple[int, ...], spacing: tuple[float, float]) -> None:
    """A white bar of a round length (about a fifth of the width) in the lower right corner, labelled in mm or cm."""
    dy, dx = spacing
    width, height = shape[1] * dx, shape[0] * dy
    length = max([v for v in (5, 10, 20, 50, 100, 200) if v <= 0.25 * width] or [0])
    if length == 0:
        return
    x1 = (shape[1] - 0.5) * dx - 0.04 * width
    y = (shape[0] - 0.5) * dy - 0.05 * height
    fig.add_shape(type="line", x0=x1 - length, x1=x1, y0=y, y1=y, xref="x", yref="y",
                  line={"color": "white", "width": 3})
    fig.add_annotation(text=f"{length // 10} cm" if length >= 10 else f"{length} mm", x=x1 - length / 2, y=y,
                       xref="x", yref="y", yanchor="bottom", showarrow=False, font={"color": "white", "size": 11})


def montage(
    volume_hu: np.ndarray,
    attribution: np.ndarray | None,
    slices: Sequence[int],
    *,
    window: str | Sequence[float] = (-160.0, 240.0),
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    opacity: float = 0.6,
    cols: int = 4,
    title: str = "",
) -> go.Figure:
    """Several axial slices side by side, each with the same overlay scale."""
    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise InputError("volume_hu", f"shape {vol.shape}", "must be [slices, rows, cols]", "pass volume.hu")
    if attribution is not None and np.asarray(attribution).shape != vol.shape:
        raise InputError("attribution", f"shape {np.asarray(attribution).shape}", f"must match the volume {vol.shape}",
                         "attribute on the same volume grid")
    chosen = [int(k) for k in slices]
    if not chosen:
        raise InputError("slices", slices, "is empty", "pass at least one slice index")
    for k in chosen:
        if not 0 <= k < vol.shape[0]:
            raise InputError("slices", k, f"is outside 0..{vol.shape[0] - 1}", "pick slices inside the volume")
    lo_hi = resolve_window(window)
    spacing = _spacing2(spacing_mm)
    ncols = max(1, min(int(cols), len(chosen)))
    nrows = (len(chosen) + ncols - 1) // ncols
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[f"slice {k}" for k in chosen],
                        horizontal_spacing=0.02, vertical_spacing=0.06)
    norm = None
    if attribution is not None:
        a = np.abs(np.asarray(attribution, dtype=np.float32))
        scale = float(np.percentile(a[chosen], 99.5)) or float(a.max()) or 1.0
        norm = np.clip(a / scale, 0, 1)
    for i, k in enumerate(chosen):
        r, c = i // ncols + 1, i % ncols + 1
        for trace in _slice_traces(_check_2d("volume_hu", vol[k]), None if norm is None else norm[k], lo_hi, spacing,
                                   float(opacity), OVERLAY_COLORSCALE, show_scale=(i == 0)):
            fig.add_trace(trace, row=r, col=c)
        _image_axes(fig, vol.shape[1:], spacing, row=r, col=c)
        orientation_letters(fig, "axial", axis=i + 1)
    cell = 240
    fig.update_layout(title={"text": title} if title else None, width=cell * ncols + 80, height=cell * nrows + 60,
                      margin={"l": 10, "r": 60, "t": 60, "b": 10}, plot_bgcolor="black")
    return fig


SLICE_GAP_MM = 10.0  # the report's slices lie at least this far apart: three 1 mm slices of one lesion say little
SLICE_MIN_RATIO = 0.1  # and hold at least this share of the strongest slice's |map| (not a near-empty slice)


def spaced_slices(per_slice: np.ndarray, z_mm: float, k: int = 3, gap_mm: float = SLICE_GAP_MM,
                  min_ratio: float = SLICE_MIN_RATIO) -> list[tuple[int, float]]:
    """The ``k`` slices holding most of a map (``per_slice``: each slice's sum of |map|), strongest first, each at least
    ``gap_mm`` from those chosen before it and holding at least ``min_ratio`` of the strongest slice's sum (fewer when
    the map lies in a shorter stretch), with its share of the whole map.

    >>> [(i, round(s, 3)) for i, s in spaced_slices(np.array([0, 1, 9, 8, 7, 0, 0, 0, 0, 0, 0, 0, 5.0]), z_mm=5.0)]
    [(2, 0.3), (4, 0.233), (12, 0.167)]
    >>> spaced_slices(np.array([0, 1, 9, 8, 7.0]), z_mm=1.0)  # all within 10 mm of slice 3: the strongest alone
    [(2, 0.36)]
    >>> [i for i, _ in spaced_slices(np.array([0.5, 0, 0, 9, 8, 0, 0, 2.0]), z_mm=5.0)]  # slice 1: under a tenth of 4's
    [3, 7]
    >>> spaced_slices(np.zeros(4), z_mm=1.0)
    []
    """
    per = np.asarray(per_slice, dtype=float)
    total = float(per.sum())
    step = max(int(np.ceil(gap_mm / max(abs(float(z_mm)), 1e-6) - 1e-9)), 1)
    chosen: list[int] = []
    for i in np.argsort(-per, kind="stable"):
        if per[i] <= 0 or len(chosen) == k or (chosen and per[i] < min_ratio * per[chosen[0]]):
            break
        if all(abs(int(i) - c) >= step for c in chosen):
            chosen.append(int(i))
    return [(i, float(per[i] / total)) for i in chosen]
