"""Plotly figures for the app and their publication export.

One figure per function; every function takes numpy arrays and plain values
(never a model, never a patient record), so what ends up in a figure is exactly
what the caller passed. Exported figures carry a caption (model, fusion,
method, target horizon, slice, window) and nothing identifying: times on the
timeline are shown in days relative to the index date, never as dates, and the
files carry no text metadata.

Export goes through kaleido (headless Chromium) when it can run and falls back
to a matplotlib renderer of the same traces otherwise (or when
``CORE_EXPORT_ENGINE=matplotlib``), so a machine without a browser still
exports PNG (>= 300 dpi), SVG and PDF.

>>> import numpy as np
>>> fig = slice_overlay(np.zeros((8, 8), np.float32), None, window=(-1000, 1000))
>>> len(fig.data)
1
>>> safe_filename("case 7/../Smith, John", ".png")
'case_7_Smith_John.png'
"""

from __future__ import annotations

import atexit
import copy
import io
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.errors import InputError

EXPORT_SUFFIXES = (".png", ".svg", ".pdf")
MIN_DPI = 300
CSS_PX_PER_INCH = 96.0  # plotly sizes are CSS pixels
DEFAULT_HORIZONS = (30, 365, 1825)

# Heat colour scale whose low end is fully transparent, so the CT shows through.
OVERLAY_COLORSCALE: list[list[Any]] = [
    [0.0, "rgba(0,0,0,0)"],
    [0.15, "rgba(120,0,0,0)"],
    [0.35, "rgba(200,30,0,0.75)"],
    [0.65, "rgba(255,140,0,0.9)"],
    [1.0, "rgba(255,255,120,1)"],
]
GRAY: list[list[Any]] = [[0.0, "rgb(0,0,0)"], [1.0, "rgb(255,255,255)"]]
BAND_FILL = "rgba(31,119,180,0.2)"
COHORT_COLOR = "rgb(110,110,110)"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
# risk groups read at a glance: low green, intermediate orange, high red
RISK_GROUP_COLORS = {"low": "#2ca02c", "intermediate": "#ff7f0e", "high": "#d62728"}


# --------------------------------------------------------------------------- helpers


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
    """|attribution| scaled to 0..1 by a high percentile (robust to single hot voxels)."""
    a = np.abs(np.nan_to_num(np.asarray(attribution, dtype=np.float32)))
    top = float(np.percentile(a, percentile)) if a.size else 0.0
    if top <= 0:
        top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return np.zeros_like(a)
    return np.clip(a / top, 0.0, 1.0)


def _check_2d(name: str, array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise InputError(name, f"shape {arr.shape}", "must be a 2D slice [rows, cols]", "pass volume.hu[k]")
    if not np.isfinite(arr).all():
        raise InputError(name, "NaN/inf values", "must be finite", "replace NaN/inf before plotting")
    return arr.astype(np.float32, copy=False)


def safe_filename(label: str, suffix: str = "") -> str:
    """A file name from a pseudonymous label: letters, digits, ``-`` and ``_`` only.

    The caller passes a pseudonymous case label (a demo id, a hash), never a
    name or a medical record number; this only makes the label safe as a name.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(label)).strip("_")
    stem = re.sub(r"_+", "_", stem)[:80] or "figure"
    if suffix and not suffix.startswith("."):
        suffix = "." + suffix
    return stem + suffix.lower()


def caption_text(
    *,
    model: str | None = None,
    fusion: str | None = None,
    method: str | None = None,
    horizon_days: float | None = None,
    slice_index: int | None = None,
    window: Sequence[float] | str | None = None,
    extra: str | None = None,
) -> str:
    """The export caption: model, fusion, method, target horizon, slice, window.

    >>> caption_text(model="demo", fusion="concat", method="saliency", horizon_days=365, slice_index=12, window=(-160, 240))
    'model demo | fusion concat | method saliency | target risk 1 - S(t) at 365 d | slice 12 | window [-160, 240] HU'
    """
    parts: list[str] = []
    if model:
        parts.append(f"model {model}")
    if fusion:
        parts.append(f"fusion {fusion}")
    if method:
        parts.append(f"method {method}")
    if horizon_days is not None:
        parts.append(f"target risk 1 - S(t) at {float(horizon_days):g} d")
    if slice_index is not None:
        parts.append(f"slice {int(slice_index)}")
    if window is not None:
        if isinstance(window, str):
            parts.append(f"window {window}")
        else:
            lo, hi = resolve_window(window)
            parts.append(f"window [{lo:g}, {hi:g}] HU")
    if extra:
        parts.append(extra)
    return " | ".join(parts)


# --------------------------------------------------------------------------- figures


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
) -> go.Figure:
    """A grayscale CT slice [rows, cols] with a semi-transparent heat overlay and colour bar.

    Rows run anterior (top) to posterior, columns patient right (image left) to
    left; pixel spacing ``(row, col)`` in mm gives the true aspect ratio.
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
    fig.update_xaxes(range=[-dx / 2, (shape[1] - 0.5) * dx], showticklabels=False, showgrid=False, zeroline=False,
                     constrain="domain", **kw)
    fig.update_yaxes(range=[(shape[0] - 0.5) * dy, -dy / 2], showticklabels=False, showgrid=False, zeroline=False,
                     scaleratio=1, constrain="domain", **kw)
    # keep mm square: anchor every y axis to its own x axis
    for key in list(fig.layout):
        if key.startswith("yaxis"):
            suffix = key[5:]
            fig.layout[key].scaleanchor = "x" + suffix


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
    cell = 240
    fig.update_layout(title={"text": title} if title else None, width=cell * ncols + 80, height=cell * nrows + 60,
                      margin={"l": 10, "r": 60, "t": 60, "b": 10}, plot_bgcolor="black")
    return fig


def _km_traces(t: np.ndarray, s: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None, name: str, color: str,
               fill: str, dash: str | None = None) -> list[go.Scatter]:
    traces: list[go.Scatter] = []
    if lo is not None and hi is not None:
        traces.append(go.Scatter(x=t, y=hi, mode="lines", line={"width": 0, "shape": "hv"}, showlegend=False,
                                 hoverinfo="skip", name=f"{name} upper"))
        traces.append(go.Scatter(x=t, y=lo, mode="lines", line={"width": 0, "shape": "hv"}, fill="tonexty",
                                 fillcolor=fill, showlegend=False, hoverinfo="skip", name=f"{name} band"))
    traces.append(go.Scatter(x=t, y=s, mode="lines", line={"shape": "hv", "color": color, "width": 2.5,
                                                             "dash": dash}, name=name,
                             hovertemplate="day %{x:.0f}: S=%{y:.3f}<extra>" + name + "</extra>"))
    return traces


def _curve(name: str, times: Any, surv: Any, lower: Any = None, upper: Any = None) -> tuple[np.ndarray, ...]:
    t = np.asarray(times, dtype=float).ravel()
    s = np.asarray(surv, dtype=float).ravel()
    if t.size == 0 or t.shape != s.shape:
        raise InputError(name, f"{t.size} times vs {s.size} values", "times and survival must have equal length",
                         "pass S(t) on the model's time grid")
    if not (np.isfinite(t).all() and np.isfinite(s).all()):
        raise InputError(name, "NaN/inf", "survival curve must be finite", "check the model output")
    lo = None if lower is None else np.asarray(lower, dtype=float).ravel()
    hi = None if upper is None else np.asarray(upper, dtype=float).ravel()
    if (lo is not None and lo.shape != t.shape) or (hi is not None and hi.shape != t.shape):
        raise InputError(name, "band length", "lower/upper must match times", "pass a band on the same grid")
    # step curves start at S(0) = 1
    if t[0] > 0:
        t = np.concatenate([[0.0], t])
        s = np.concatenate([[1.0], s])
        lo = None if lo is None else np.concatenate([[1.0], lo])
        hi = None if hi is None else np.concatenate([[1.0], hi])
    return t, s, lo, hi


def survival_at(times: np.ndarray, survival: np.ndarray, horizon: float) -> float:
    """S(h) of a step curve (last value at or before h; 1 before the first time)."""
    t = np.asarray(times, dtype=float)
    s = np.asarray(survival, dtype=float)
    idx = int(np.searchsorted(t, horizon, side="right")) - 1
    return 1.0 if idx < 0 else float(s[idx])


def survival_figure(
    times: Sequence[float] | np.ndarray,
    survival: Sequence[float] | np.ndarray,
    lower: Sequence[float] | np.ndarray | None = None,
    upper: Sequence[float] | np.ndarray | None = None,
    *,
    cohort_km: tuple[Any, Any, Any, Any] | None = None,
    group_km: tuple[Any, Any, Any, Any] | None = None,
    horizons: Sequence[float] = DEFAULT_HORIZONS,
    title: str = "",
    label: str = "this case",
) -> go.Figure:
    """The individual S(t) step curve with its band, beside the cohort (and group) Kaplan-Meier curves."""
    t, s, lo, hi = _curve("survival", times, survival, lower, upper)
    fig = go.Figure()
    if cohort_km is not None:
        for tr in _km_traces(*_curve("cohort_km", *cohort_km), name="cohort Kaplan-Meier", color=COHORT_COLOR,
                             fill="rgba(110,110,110,0.15)", dash="dash"):
            fig.add_trace(tr)
    if group_km is not None:
        for tr in _km_traces(*_curve("group_km", *group_km), name="similar-risk group KM", color=PALETTE[2],
                             fill="rgba(44,160,44,0.15)", dash="dot"):
            fig.add_trace(tr)
    for tr in _km_traces(t, s, lo, hi, name=label, color=PALETTE[0], fill=BAND_FILL):
        fig.add_trace(tr)
    for h in horizons:
        if t[0] <= h <= t[-1] * 1.5:
            risk = 1.0 - survival_at(t, s, float(h))
            fig.add_vline(x=float(h), line={"dash": "dot", "color": "rgb(150,150,150)", "width": 1})
            # written up the dotted line, so the 30-day and 1-year labels cannot run into each other
            fig.add_annotation(x=float(h), y=0.03, yref="y", text=f"{_horizon_label(h)}: risk {risk:.0%}",
                               showarrow=False, font={"size": 11}, textangle=-90, xanchor="left", yanchor="bottom",
                               xshift=2, bgcolor="rgba(255,255,255,0.75)")
    fig.update_layout(
        title={"text": title} if title else None, xaxis_title="days from index date", yaxis_title="survival S(t)",
        yaxis={"range": [0, 1.08]}, template="plotly_white", width=720, height=430,
        legend={"orientation": "h", "y": -0.2}, margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 60},
    )
    return fig


def _horizon_label(days: float) -> str:
    d = float(days)
    if d >= 365 and abs(d / 365 - round(d / 365)) < 0.02:
        return f"{round(d / 365)} y"
    return f"{d:g} d"


def survival_compare_figure(
    curves: Mapping[str, tuple[Any, Any, Any, Any]],
    *,
    cohort_km: tuple[Any, Any, Any, Any] | None = None,
    horizons: Sequence[float] = DEFAULT_HORIZONS,
    title: str = "",
    colors: Sequence[str] | None = None,
) -> go.Figure:
    """The same case under several fusion strategies: ``{strategy: (times, s, lo, hi)}``.

    ``colors`` (``#rrggbb``, one per curve, in order) replaces the default palette, e.g.
    ``RISK_GROUP_COLORS`` for risk groups.
    """
    if not curves:
        raise InputError("curves", {}, "is empty", "pass at least one strategy's curve")
    if colors is not None and len(colors) != len(curves):
        raise InputError("colors", len(colors), f"must give one colour per curve ({len(curves)})", "pass one #rrggbb per curve or none")
    fig = go.Figure()
    if cohort_km is not None:
        for tr in _km_traces(*_curve("cohort_km", *cohort_km), name="cohort Kaplan-Meier", color=COHORT_COLOR,
                             fill="rgba(110,110,110,0.12)", dash="dash"):
            fig.add_trace(tr)
    for i, (name, curve) in enumerate(curves.items()):
        color = colors[i] if colors is not None else PALETTE[i % len(PALETTE)]
        r, g, b = (int(color[j:j + 2], 16) for j in (1, 3, 5))
        for tr in _km_traces(*_curve(f"curves[{name}]", *curve), name=str(name), color=color,
                             fill=f"rgba({r},{g},{b},0.12)"):
            fig.add_trace(tr)
    for h in horizons:
        fig.add_vline(x=float(h), line={"dash": "dot", "color": "rgb(170,170,170)", "width": 1})
    fig.update_layout(title={"text": title} if title else None, xaxis_title="days from index date",
                      yaxis_title="survival S(t)", yaxis={"range": [0, 1.05]}, template="plotly_white", width=760,
                      height=450, legend={"orientation": "h", "y": -0.2})
    return fig


def attention_heatmap(
    weights: np.ndarray,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    title: str = "",
    x_title: str = "token",
) -> go.Figure:
    """Attention weights ``[heads or layers, slices or events]`` as a heatmap."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.size == 0:
        raise InputError("weights", f"shape {w.shape}", "must be [heads, tokens]", "average the batch axis first")
    if not np.isfinite(w).all():
        raise InputError("weights", "NaN/inf", "must be finite", "check the model's attention output")
    rows = list(row_labels) if row_labels is not None else [f"head {i}" for i in range(w.shape[0])]
    cols = list(col_labels) if col_labels is not None else [str(i) for i in range(w.shape[1])]
    if len(rows) != w.shape[0] or len(cols) != w.shape[1]:
        raise InputError("labels", f"{len(rows)} x {len(cols)}", f"must match weights {w.shape}",
                         "pass one label per row and per column")
    fig = go.Figure(go.Heatmap(z=w, x=list(range(w.shape[1])), y=list(range(w.shape[0])), colorscale="Viridis",
                               colorbar={"title": {"text": "weight"}}, customdata=np.array(cols)[None, :].repeat(w.shape[0], 0),
                               hovertemplate="%{customdata}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(tickmode="array", tickvals=list(range(w.shape[0])), ticktext=rows, autorange="reversed")
    step = max(1, w.shape[1] // 20)
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, w.shape[1], step)),
                     ticktext=[cols[i] for i in range(0, w.shape[1], step)], title=x_title)
    fig.update_layout(title={"text": title} if title else None, width=760, height=160 + 28 * w.shape[0],
                      template="plotly_white", margin={"l": 80, "r": 20, "t": 50 if title else 20, "b": 60})
    return fig


def slice_strip(slice_weights: np.ndarray, *, selected: int | None = None, title: str = "") -> go.Figure:
    """Per-slice attention or attribution as bars along z (slice 0 = inferior), the shown slice highlighted."""
    w = np.asarray(slice_weights, dtype=np.float32).ravel()
    if w.size == 0 or not np.isfinite(w).all():
        raise InputError("slice_weights", f"{w.size} values", "must be a non-empty finite vector", "pass one weight per slice")
    colors = [PALETTE[1] if selected is not None and i == int(selected) else PALETTE[0] for i in range(w.size)]
    fig = go.Figure(go.Bar(x=np.arange(w.size), y=w, marker={"color": colors},
                           hovertemplate="slice %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title={"text": title} if title else None, xaxis_title="slice (inferior → superior)",
                      yaxis_title="weight", template="plotly_white", width=720, height=220, bargap=0.05,
                      margin={"l": 60, "r": 20, "t": 40 if title else 10, "b": 50})
    return fig


def timeline_figure(
    events: pd.DataFrame,
    attributions: np.ndarray | None = None,
    index_time: Any = None,
    *,
    top_k: int = 10,
    title: str = "",
) -> go.Figure:
    """Timeline events (time, code, numeric_value) by code family, in days before the index date.

    Marker size grows with |attribution|; the ``top_k`` attributed events are
    outlined and labelled. Dates never appear (days relative to the index only).
    """
    if not isinstance(events, pd.DataFrame) or not {"time", "code"} <= set(events.columns):
        raise InputError("events", type(events).__name__, "must be a DataFrame with time and code columns",
                         "pass CaseInputs.events or core.cohort.Cohort.events(subject)")
    ev = events.reset_index(drop=True)
    n = len(ev)
    attr = None
    if attributions is not None:
        attr = np.asarray(attributions, dtype=np.float64).ravel()
        if attr.size != n:
            raise InputError("attributions", f"{attr.size} values", f"must have one per event ({n})",
                             "pass the scores of the same events")
    days = _relative_days(ev["time"], index_time)
    family = ev["code"].astype(str).str.split("//").str[0]
    families = sorted(family.unique().tolist())
    y = family.map({f: i for i, f in enumerate(families)}).to_numpy(dtype=float)
    values = ev["numeric_value"] if "numeric_value" in ev.columns else pd.Series([np.nan] * n)
    hover = [f"{c}<br>day {d:.1f}" + ("" if pd.isna(v) else f"<br>value {v:g}") for c, d, v in zip(ev["code"], days, values)]
    fig = go.Figure()
    if attr is not None and n:
        mag = np.abs(attr)
        scale = mag.max() or 1.0
        size = 6 + 18 * mag / scale
        fig.add_trace(go.Scatter(x=days, y=y, mode="markers", name="events",
                                 marker={"size": size, "color": attr, "colorscale": "RdBu_r", "cmid": 0.0,
                                         "colorbar": {"title": {"text": "attribution"}}, "line": {"width": 0}},
                                 text=hover, hovertemplate="%{text}<extra></extra>"))
        k = min(int(top_k), n)
        top = np.argsort(-mag, kind="stable")[:k]
        fig.add_trace(go.Scatter(x=days[top], y=y[top], mode="markers+text", name=f"top {k} events",
                                 marker={"size": size[top] + 6, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}},
                                 text=[_short_code(ev["code"].iloc[i]) for i in top], textposition="top center",
                                 textfont={"size": 9}, hoverinfo="skip"))
    else:
        fig.add_trace(go.Scatter(x=days, y=y, mode="markers", name="events", marker={"size": 7, "color": PALETTE[0]},
                                 text=hover, hovertemplate="%{text}<extra></extra>"))
    fig.add_vline(x=0.0, line={"color": PALETTE[1], "dash": "dash"})
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(families))), ticktext=families)
    fig.update_layout(title={"text": title} if title else None, xaxis_title="days relative to the index date (scan)",
                      template="plotly_white", width=820, height=220 + 30 * len(families), showlegend=False,
                      margin={"l": 120, "r": 20, "t": 50 if title else 20, "b": 50})
    return fig


def _short_code(code: str, limit: int = 28) -> str:
    text = str(code)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _relative_days(times: pd.Series, index_time: Any) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(times):
        return times.to_numpy(dtype=float)
    t = pd.to_datetime(times)
    ref = pd.Timestamp(index_time) if index_time is not None else (t.max() if len(t) else pd.Timestamp(0))
    return ((t - ref) / pd.Timedelta(days=1)).to_numpy(dtype=float)


def line_figure(x: Sequence[float], series: Mapping[str, Sequence[float]], *, x_title: str, y_title: str,
                title: str = "", x_labels: Sequence[str] | None = None, y_range: Sequence[float] | None = None) -> go.Figure:
    """Simple line+marker figure (sanity-check curves)."""
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(x), y=list(ys), mode="lines+markers", name=name,
                                 line={"color": PALETTE[i % len(PALETTE)]}))
    if x_labels is not None:
        fig.update_xaxes(tickmode="array", tickvals=list(x), ticktext=list(x_labels), tickangle=-45)
    fig.update_layout(title={"text": title} if title else None, xaxis_title=x_title, yaxis_title=y_title,
                      template="plotly_white", width=760, height=440,
                      yaxis={"range": list(y_range)} if y_range is not None else None)
    return fig


# --------------------------------------------------------------------------- export

_KALEIDO_LOCK = threading.Lock()
_KALEIDO_STATE: dict[str, Any] = {"server": False, "broken": None}


def _with_caption(fig: go.Figure, caption: str) -> go.Figure:
    out = go.Figure(fig)
    # neutral metadata: the only text is what the caller put in the figure plus the caption
    if caption:
        bottom = (out.layout.margin.b if out.layout.margin and out.layout.margin.b is not None else 40) + 46
        out.update_layout(margin={"b": bottom})
        out.add_annotation(text=_wrap(caption, 110), xref="paper", yref="paper", x=0.0, y=0.0, xanchor="left",
                           yanchor="top", yshift=-(bottom - 40), showarrow=False, align="left",
                           font={"size": 10, "color": "rgb(60,60,60)"})
    return out


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(" "), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return "<br>".join(lines)


def export_engine() -> str:
    """``kaleido`` when a headless browser can render, else ``matplotlib``."""
    forced = os.environ.get("CORE_EXPORT_ENGINE", "").strip().lower()
    if forced in {"kaleido", "matplotlib"}:
        return forced
    return "matplotlib" if _KALEIDO_STATE["broken"] else "kaleido"


def export(fig: go.Figure, path: str | Path, caption: str = "", dpi: int = MIN_DPI) -> Path:
    """Write ``fig`` as PNG (``dpi`` >= 300, dpi metadata set), SVG or PDF by the suffix of ``path``.

    The file holds no text metadata beyond neutral producer fields; the caller
    passes a pseudonymous file name (see :func:`safe_filename`).
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise InputError("out", str(target.name), "has an unknown suffix", "end the file name in .png, .svg or .pdf")
    if int(dpi) < MIN_DPI:
        raise InputError("dpi", dpi, f"is below {MIN_DPI}", f"use dpi >= {MIN_DPI} for publication figures")
    if not target.parent.exists():
        raise InputError("out", str(target.parent), "folder does not exist", "create the folder first")
    full = _with_caption(fig, caption)
    data: bytes | None = None
    if export_engine() == "kaleido":
        data = _render_kaleido(full, suffix[1:], int(dpi))
    if data is None:
        data = _render_matplotlib(full, suffix[1:], int(dpi), caption)
    data = _clean_bytes(data, suffix, int(dpi))
    target.write_bytes(data)
    return target


def _render_kaleido(fig: go.Figure, fmt: str, dpi: int) -> bytes | None:
    width = int(fig.layout.width or 700)
    height = int(fig.layout.height or 500)
    scale = dpi / CSS_PX_PER_INCH if fmt == "png" else 1.0
    with _KALEIDO_LOCK:
        try:
            import kaleido

            if not _KALEIDO_STATE["server"]:
                kaleido.start_sync_server(silence_warnings=True)
                _KALEIDO_STATE["server"] = True
                atexit.register(_stop_kaleido)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fig.to_image(format=fmt, width=width, height=height, scale=scale)
        except (RuntimeError, OSError, ValueError, ImportError) as err:
            # no usable headless browser here: remember and use the matplotlib renderer
            _KALEIDO_STATE["broken"] = f"{type(err).__name__}: {err}"
            return None


def _stop_kaleido() -> None:
    import kaleido

    if _KALEIDO_STATE["server"]:
        kaleido.stop_sync_server(silence_warnings=True)
        _KALEIDO_STATE["server"] = False


def _clean_bytes(data: bytes, suffix: str, dpi: int) -> bytes:
    """Strip metadata: PNG re-encoded with only pHYs (dpi); PDF info fields neutralised; SVG as is."""
    if suffix == ".png":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            clean = Image.new(im.mode, im.size)
            clean.putdata(list(im.getdata())) if im.mode == "P" else clean.paste(im)
            if im.mode == "P" and im.getpalette():
                clean.putpalette(im.getpalette())
            buf = io.BytesIO()
            # pHYs stores whole pixels per metre: round up so that readers get back >= dpi (300 -> 300.02)
            ppm = int(np.ceil(dpi / 0.0254))
            clean.save(buf, format="PNG", dpi=(ppm * 0.0254, ppm * 0.0254), optimize=False)
            return buf.getvalue()
    if suffix == ".pdf":
        return _neutral_pdf_info(data)
    if suffix == ".svg":
        text = data.decode("utf-8")
        text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
        return text.encode("utf-8")
    return data


_PDF_INFO_KEYS = (b"Title", b"Author", b"Subject", b"Keywords", b"Creator", b"Producer")


def _neutral_pdf_info(data: bytes) -> bytes:
    """Blank the PDF document-information strings (same length, so xref offsets stay valid)."""
    out = bytearray(data)
    for key in _PDF_INFO_KEYS:
        for m in re.finditer(rb"/" + key + rb"\s*\((.*?)(?<!\\)\)", data, flags=re.S):
            start, end = m.span(1)
            out[start:end] = b" " * (end - start)
        for m in re.finditer(rb"/" + key + rb"\s*<([0-9A-Fa-f\s]*)>", data):
            start, end = m.span(1)
            out[start:end] = b"0" * (end - start) if (end - start) % 2 == 0 else b" " + b"0" * (end - start - 1)
    return bytes(out)


# ------------------------------------------------------------ matplotlib renderer (fallback)


def _mpl_cmap(colorscale: Any, name: str = "plotly") -> Any:
    from matplotlib.colors import LinearSegmentedColormap, to_rgba
    from plotly.colors import get_colorscale

    scale = get_colorscale(colorscale) if isinstance(colorscale, str) else colorscale
    if scale is None:
        scale = get_colorscale("Viridis")
    stops = []
    for pos, color in scale:
        stops.append((float(pos), _rgba(color)))
    return LinearSegmentedColormap.from_list(name, stops)


def _rgba(color: Any) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    if isinstance(color, str):
        m = re.match(r"rgba?\(([^)]*)\)", color.strip())
        if m:
            parts = [float(p) for p in m.group(1).split(",")]
            a = parts[3] if len(parts) > 3 else 1.0
            return parts[0] / 255, parts[1] / 255, parts[2] / 255, a
    return tuple(to_rgba(color))  # type: ignore[return-value]


def _axis_domain(layout: Any, ref: str, axis: str) -> tuple[float, float]:
    name = axis + "axis" + ref[1:]
    ax = layout[name] if name in layout else None
    dom = getattr(ax, "domain", None) if ax is not None else None
    return (float(dom[0]), float(dom[1])) if dom else (0.0, 1.0)


def _text(t: Any) -> str:
    s = str(t or "")
    return re.sub(r"<br\s*/?>", "\n", re.sub(r"<(?!br)[^>]+>", "", s))


def _render_matplotlib(fig: go.Figure, fmt: str, dpi: int, caption: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layout = fig.layout
    width_in = float(layout.width or 700) / CSS_PX_PER_INCH
    height_in = float(layout.height or 500) / CSS_PX_PER_INCH
    mfig = plt.figure(figsize=(width_in, height_in))
    margin = layout.margin
    left = (margin.l if margin and margin.l is not None else 80) / (width_in * CSS_PX_PER_INCH)
    right = (margin.r if margin and margin.r is not None else 80) / (width_in * CSS_PX_PER_INCH)
    top = (margin.t if margin and margin.t is not None else 100) / (height_in * CSS_PX_PER_INCH)
    bottom = (margin.b if margin and margin.b is not None else 80) / (height_in * CSS_PX_PER_INCH)
    axes: dict[tuple[str, str], Any] = {}

    def get_ax(xref: str, yref: str) -> Any:
        key = (xref, yref)
        if key not in axes:
            x0, x1 = _axis_domain(layout, xref, "x")
            y0, y1 = _axis_domain(layout, yref, "y")
            pw, ph = 1 - left - right, 1 - top - bottom
            axes[key] = mfig.add_axes((left + x0 * pw, bottom + y0 * ph, (x1 - x0) * pw, (y1 - y0) * ph))
        return axes[key]

    previous: dict[tuple[str, str], Any] = {}
    for trace in fig.data:
        xref, yref = getattr(trace, "xaxis", None) or "x", getattr(trace, "yaxis", None) or "y"
        ax = get_ax(xref, yref)
        if trace.type == "heatmap":
            z = np.asarray(trace.z, dtype=float)
            cmap = _mpl_cmap(trace.colorscale)
            if trace.x is not None and trace.y is not None:
                xs, ys = np.asarray(trace.x, float), np.asarray(trace.y, float)
                extent = (xs[0] - 0.5, xs[-1] + 0.5, ys[-1] + 0.5, ys[0] - 0.5)
            else:
                x0, dx = float(trace.x0 or 0), float(trace.dx or 1)
                y0, dy = float(trace.y0 or 0), float(trace.dy or 1)
                extent = (x0 - dx / 2, x0 + (z.shape[1] - 0.5) * dx, y0 + (z.shape[0] - 0.5) * dy, y0 - dy / 2)
            im = ax.imshow(z, cmap=cmap, vmin=trace.zmin, vmax=trace.zmax, extent=extent, origin="upper",
                           alpha=trace.opacity if trace.opacity is not None else 1.0, aspect="auto",
                           interpolation="nearest")
            if trace.showscale is not False and trace.colorscale is not None and trace.name != "CT":
                cb = mfig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
                title = trace.colorbar.title.text if trace.colorbar and trace.colorbar.title else None
                if title:
                    cb.set_label(_text(title), fontsize=8)
        elif trace.type == "scatter":
            x = np.asarray(trace.x if trace.x is not None else [], dtype=float)
            y = np.asarray(trace.y if trace.y is not None else [], dtype=float)
            mode = trace.mode or "lines"
            line = trace.line
            color = _rgba(line.color) if line and line.color else None
            step = "steps-post" if line and line.shape == "hv" else "default"
            if trace.fill == "tonexty" and (xref, yref) in previous:
                px, py = previous[(xref, yref)]
                fill = _rgba(trace.fillcolor) if trace.fillcolor else (0.2, 0.4, 0.8, 0.2)
                ax.fill_between(x, py, y, step="post" if step == "steps-post" else None, color=fill, linewidth=0)
            if "lines" in mode and not (line and line.width == 0):
                ls = {"dash": "--", "dot": ":", "dashdot": "-."}.get(line.dash if line and line.dash else "", "-")
                ax.plot(x, y, drawstyle=step, color=color, linestyle=ls,
                        linewidth=(line.width or 2) * 0.75 if line else 1.5,
                        label=trace.name if trace.showlegend is not False else None)
            if "markers" in mode:
                marker = trace.marker
                size = np.asarray(marker.size if marker and marker.size is not None else 6, dtype=float)
                mcolor = marker.color if marker else None
                if isinstance(mcolor, (list, tuple, np.ndarray)) and len(mcolor) and not isinstance(mcolor[0], str):
                    ax.scatter(x, y, s=(size * 0.75) ** 2, c=np.asarray(mcolor, float),
                               cmap=_mpl_cmap(marker.colorscale or "RdBu_r"), zorder=3)
                else:
                    face = _rgba(mcolor) if isinstance(mcolor, str) else None
                    edge = _rgba(marker.line.color) if marker and marker.line and marker.line.color else None
                    ax.scatter(x, y, s=(size * 0.75) ** 2, c=[face] if face else None, edgecolors=edge, zorder=3)
            if "text" in mode and trace.text is not None:
                for xi, yi, ti in zip(x, y, trace.text):
                    ax.annotate(_text(ti), (xi, yi), fontsize=6, ha="center", va="bottom",
                                xytext=(0, 4), textcoords="offset points")
            previous[(xref, yref)] = (x, y)
        elif trace.type == "bar":
            x = np.asarray(trace.x, dtype=float)
            y = np.asarray(trace.y, dtype=float)
            colors = trace.marker.color if trace.marker and trace.marker.color is not None else None
            ax.bar(x, y, color=[_rgba(c) for c in colors] if isinstance(colors, (list, tuple)) else colors, width=0.9)
    # axes: titles, ranges, reversed y for images
    for (xref, yref), ax in axes.items():
        xa = layout["xaxis" + xref[1:]] if ("xaxis" + xref[1:]) in layout else None
        ya = layout["yaxis" + yref[1:]] if ("yaxis" + yref[1:]) in layout else None
        for a, setter, lim in ((xa, ax.set_xlabel, ax.set_xlim), (ya, ax.set_ylabel, ax.set_ylim)):
            if a is None:
                continue
            if a.title and a.title.text:
                setter(_text(a.title.text), fontsize=9)
            if a.range is not None:
                lim(tuple(a.range))
            if a.showticklabels is False:
                (ax.set_xticks if setter == ax.set_xlabel else ax.set_yticks)([])
            if a.tickvals is not None and a.ticktext is not None:
                (ax.set_xticks if setter == ax.set_xlabel else ax.set_yticks)(list(a.tickvals))
                (ax.set_xticklabels if setter == ax.set_xlabel else ax.set_yticklabels)(
                    [_text(t) for t in a.ticktext], fontsize=7)
        if ya is not None and ya.autorange == "reversed":
            ax.invert_yaxis()
        if ya is not None and ya.scaleanchor:
            ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize=7)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=7, loc="best")
    for shape in layout.shapes or ():
        if shape.type == "line" and shape.xref in (None, "x") and shape.yref == "y domain":
            ax = get_ax("x", "y")
            ax.axvline(float(shape.x0), color=_rgba(shape.line.color) if shape.line and shape.line.color else "gray",
                       linestyle=":", linewidth=0.8)
    for ann in layout.annotations or ():
        if ann.xref == "paper" and ann.yref == "paper":
            if caption and _text(ann.text).replace("\n", " ") == caption:
                continue
            mfig.text(left + float(ann.x or 0) * (1 - left - right), bottom + float(ann.y or 0) * (1 - top - bottom),
                      _text(ann.text), fontsize=8, ha="center", va="bottom")
        elif ann.xref in (None, "x") and ann.yref in (None, "y") and ann.x is not None:
            get_ax("x", "y").text(float(ann.x), float(ann.y or 1.0), _text(ann.text), fontsize=7, va="bottom")
    if layout.title and layout.title.text:
        mfig.suptitle(_text(layout.title.text), fontsize=11)
    if caption:
        mfig.text(0.01, 0.01, _text(_wrap(caption, 110)), fontsize=7, ha="left", va="bottom", color="#3c3c3c")
    buf = io.BytesIO()
    meta: dict[str, Any]
    if fmt == "png":
        meta = {"Software": None}
    elif fmt == "pdf":
        meta = {"Creator": None, "Producer": None}
    else:
        meta = {"Creator": None, "Date": None, "Format": None, "Type": None}
    mfig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    plt.close(mfig)
    return buf.getvalue()


def figure_copy(fig: go.Figure) -> go.Figure:
    """A deep copy (the app may restyle a cached figure per session)."""
    return copy.deepcopy(fig)
