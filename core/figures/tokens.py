"""Attention over slices and events, the timeline of a case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.errors import InputError
from core.figures.style import PALETTE


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


# --------------------------------------------------------------------------- attention


def event_labels(events: pd.DataFrame | None, n: int) -> list[str]:
    """Short labels for event tokens: the code (prefix dropped), or a token number."""
    if events is None or len(events) != n:
        return [f"event {i}" for i in range(n)]
    out = []
    for i, code in enumerate(events["code"].astype(str)):
        parts = code.split("//")
        short = "/".join(parts[1:]) if len(parts) > 1 else code
        out.append(f"{i}: {short[:24]}")
    return out


def attention_maps(attention: dict[str, np.ndarray], events: pd.DataFrame | None) -> list[dict]:
    """Raw fusion attention maps as heatmap inputs: per map, weights [heads, key tokens].

    ``attention`` holds ``"img<-ehr"`` ``[B, heads, S, E]`` (image tokens query
    EHR tokens) and/or ``"ehr<-img"`` ``[B, heads, E, S]``; each is averaged over
    its queries, giving for every head how much attention each key token got.
    """
    maps = []
    for key, raw in attention.items():
        a = np.asarray(raw, dtype=np.float32)
        if a.ndim == 4:
            a = a[0]
        if a.ndim != 3 or a.size == 0 or not np.isfinite(a).all():
            continue
        weights = a.mean(axis=1)  # [heads, keys]
        if key.startswith("img<-"):
            cols, axis, title = event_labels(events, weights.shape[1]), "timeline event (key)", "CT slices attending to events"
        else:
            cols, axis, title = [f"slice {i}" for i in range(weights.shape[1])], "slice token (key)", "events attending to CT slices"
        maps.append({"key": key, "title": f"{title} ({key})", "weights": weights,
                     "rows": [f"head {h}" for h in range(weights.shape[0])], "cols": cols, "x_title": axis})
    return maps
