"""Attention over slices and events, the timeline of a case."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.errors import InputError
from core.figures.style import NEUTRAL, PALETTE


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
                               colorbar={"title": {"text": "weight"}}, customdata=np.array([plain(c) for c in cols])[None, :].repeat(w.shape[0], 0),
                               hovertemplate="%{customdata}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(tickmode="array", tickvals=list(range(w.shape[0])), ticktext=rows, autorange="reversed")
    step = max(1, -(-w.shape[1] // 12))  # at most 12 labels along the axis, so they never run into each other
    ticks = [_short_code(cols[i], 16) for i in range(0, w.shape[1], step)]  # full names on hover
    bottom = 40 + int(5.5 * max((len(t) for t in ticks), default=4))  # room for the tilted labels and the title
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, w.shape[1], step)), ticktext=ticks, tickangle=-45,
                     title={"text": x_title, "standoff": 8})
    fig.update_layout(title={"text": title} if title else None, width=760, height=120 + bottom + 28 * w.shape[0],
                      template="plotly_white", margin={"l": 80, "r": 20, "t": 50 if title else 20, "b": bottom})
    return fig


def slice_strip(slice_weights: np.ndarray, *, selected: int | None = None, title: str = "") -> go.Figure:
    """Per-slice attention or attribution as bars along z, numbered from 1 (inferior); ``selected`` is the 0-based
    index of the shown slice, highlighted."""
    w = np.asarray(slice_weights, dtype=np.float32).ravel()
    if w.size == 0 or not np.isfinite(w).all():
        raise InputError("slice_weights", f"{w.size} values", "must be a non-empty finite vector", "pass one weight per slice")
    colors = [PALETTE[1] if selected is not None and i == int(selected) else PALETTE[0] for i in range(w.size)]
    # slices are numbered from 1 (inferior) for people, as in the viewer, Export and the report
    fig = go.Figure(go.Bar(x=np.arange(1, w.size + 1), y=w, marker={"color": colors},
                           hovertemplate="slice %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title={"text": title} if title else None, xaxis_title="slice (inferior → superior)",
                      yaxis_title="weight", template="plotly_white", width=720, height=220, bargap=0.05,
                      margin={"l": 60, "r": 20, "t": 40 if title else 10, "b": 50})
    return fig


def timeline_window(days: np.ndarray) -> tuple[float, np.ndarray]:
    """The case's active window: the left edge of the timeline axis and a mask of the events left of it.

    Events are left out up to the first gap, from the earliest event on, that is longer than three years and
    than twice the span from the next event to the index date (birth and sex records at -20,000 days before a
    few years of visits), so the axis is never squeezed by a few far-away records.

    >>> left, out = timeline_window(np.array([-20000.0, -19916.0, -900.0, -30.0, -2.0]))
    >>> float(left), out.tolist()
    (-945.0, [True, True, False, False, False])
    """
    d = np.asarray(days, dtype=float)
    order = np.sort(d[np.isfinite(d)])
    first = 0
    for i in range(order.size - 1):  # the first such gap from the earliest event on
        if order[i + 1] - order[i] > max(3 * 365.0, 2.0 * abs(min(order[i + 1], 0.0))):
            first = i + 1
            break
    if order.size == 0:
        return -1.0, np.zeros(d.shape, dtype=bool)
    start = float(order[first])
    span = max(abs(min(start, 0.0)), 1.0)
    return start - 0.05 * span, d < start


def timeline_figure(
    events: pd.DataFrame,
    attributions: np.ndarray | None = None,
    index_time: Any = None,
    *,
    top_k: int = 10,
    title: str = "",
    kind: str = "attribution",
) -> go.Figure:
    """Timeline events (time, code, numeric_value) by code family, in days before the index date.

    ``kind`` names the scores: ``"attribution"`` (signed: a diverging scale centred at 0) or ``"attention"``
    (weights >= 0: a sequential scale from 0); scores that are all 0 (the model read none of the events) are drawn as
    no scores, nothing numbered. Marker size grows with |score|; the ``top_k`` scored events are
    outlined and numbered 1..k by score (labels on short leader lines, placed apart from their neighbours; events
    left of the axis keep their number in the list only), and the figure's ``layout.meta["top"]`` lists them. The axis covers the case's active window
    (:func:`timeline_window`); events left of it are counted in a note at the left edge
    (``layout.meta["outside"]``). Dates never appear (days relative to the index only).
    """
    if not isinstance(events, pd.DataFrame) or not {"time", "code"} <= set(events.columns):
        raise InputError("events", type(events).__name__, "must be a DataFrame with time and code columns",
                         "pass CaseInputs.events or core.cohort.Cohort.events(subject)")
    if kind not in ("attribution", "attention"):
        raise InputError("kind", kind, "is not attribution or attention", "name what the scores are")
    ev = events.reset_index(drop=True)
    n = len(ev)
    attr = None
    if attributions is not None:
        attr = np.asarray(attributions, dtype=np.float64).ravel()
        if attr.size != n:
            raise InputError("attributions", f"{attr.size} values", f"must have one per event ({n})",
                             "pass the scores of the same events")
    days = _relative_days(ev["time"], index_time)
    left, outside = timeline_window(days)
    family = ev["code"].astype(str).str.split("//").str[0]
    families = sorted(family[~outside].unique().tolist()) or sorted(family.unique().tolist())  # rows on the axis
    y = family.map({f: i for i, f in enumerate(families)}).fillna(0.0).to_numpy(dtype=float)  # off-axis: any row
    values = ev["numeric_value"] if "numeric_value" in ev.columns else pd.Series([np.nan] * n)
    hover = [f"{plain(c)}<br>day {d:.1f}" + ("" if pd.isna(v) else f"<br>value {v:g}") for c, d, v in zip(ev["code"], days, values)]
    fig = go.Figure()
    top_rows: list[dict[str, Any]] = []
    if attr is not None and n and not np.any(attr):  # every score 0: the model read none of these events
        attr = None
    if attr is not None and n:
        mag = np.abs(attr)
        scale = mag.max() or 1.0
        size = 6 + 18 * mag / scale
        if kind == "attention":
            marker = {"size": size, "color": attr, "colorscale": "Viridis", "cmin": 0.0,
                      "cmax": float(attr.max()) or 1.0, "colorbar": {"title": {"text": "attention"}}, "line": {"width": 0}}
        else:
            marker = {"size": size, "color": attr, "colorscale": "RdBu_r", "cmid": 0.0,
                      "colorbar": {"title": {"text": "attribution"}}, "line": {"width": 0}}
        fig.add_trace(go.Scatter(x=days, y=y, mode="markers", name="events", marker=marker,
                                 text=hover, hovertemplate="%{text}<br>" + kind + " %{marker.color:.3g}<extra></extra>"))
        k = min(int(top_k), n)
        top = np.argsort(-mag, kind="stable")[:k]  # over every event; only those inside the window get a label
        fig.add_trace(go.Scatter(x=days[top], y=y[top], mode="markers", name=f"top {k} events",
                                 marker={"size": size[top] + 6, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": NEUTRAL}},
                                 text=[str(r + 1) for r in range(k)], customdata=[_short_code(ev["code"].iloc[i]) for i in top],
                                 hovertemplate="#%{text}: %{customdata}<extra></extra>"))
        for rank, (i, (ax, ay)) in enumerate(zip(top, _label_offsets(days[top], y[top], max(5.0, 0.03 * abs(left)) - left,
                                                                          len(families))), start=1):
            if outside[i]:
                continue
            fig.add_annotation(x=float(days[i]), y=float(y[i]), text=f"<b>{rank}</b>", showarrow=True, arrowhead=0,
                               arrowwidth=1, arrowcolor=NEUTRAL, ax=ax, ay=ay, font={"size": 11, "color": "black"},
                               bgcolor="rgba(255,255,255,0.85)", borderpad=1, name=f"top{rank}")
        top_rows = [{"rank": r + 1, "code": str(ev["code"].iloc[i]), "day": round(float(days[i]), 1),
                     "value": None if pd.isna(values.iloc[i]) else float(values.iloc[i]), kind: float(attr[i])}
                    for r, i in enumerate(top)]
    else:
        fig.add_trace(go.Scatter(x=days, y=y, mode="markers", name="events", marker={"size": 7, "color": PALETTE[0]},
                                 text=hover, hovertemplate="%{text}<extra></extra>"))
    fig.add_vline(x=0.0, line={"color": PALETTE[1], "dash": "dash"})
    n_out = int(outside.sum())
    if n_out:
        first = int(np.argmin(np.where(outside, days, np.inf)))
        fig.add_annotation(x=left, y=1.0, yref="paper", xanchor="left", yanchor="bottom", showarrow=False,
                           text=f"◀ {n_out} earlier event{'s' if n_out != 1 else ''} not shown (from day "
                                f"{days[first]:.0f}: {_short_code(ev['code'].iloc[first], 24)})",
                           font={"size": 10, "color": NEUTRAL})
    right = max(5.0, 0.03 * abs(left))
    fig.update_xaxes(range=[left, right])
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(families))), ticktext=[plain(f) for f in families],
                     range=[-0.7, len(families) - 0.3])
    fig.update_layout(title={"text": title} if title else None, xaxis_title="days relative to the index date (scan)",
                      template="plotly_white", width=820, height=240 + 40 * len(families), showlegend=False,
                      margin={"l": 120, "r": 20, "t": 60 if title or n_out else 30, "b": 50},
                      meta={"top": top_rows, "outside": n_out, "window": [float(left), float(right)]})
    return fig


def _label_offsets(x: np.ndarray, y: np.ndarray, width: float, n_rows: int,
                   plot_px: tuple[float, float] = (520.0, 0.0)) -> list[tuple[int, int]]:
    """Pixel offsets (ax, ay) of the numbered labels, placed greedily in label order: each takes the first of
    seven slots around its event (above at two heights, above left and right, below, left, right) whose text box
    does not cross a label already placed, in pixels of a plot at least ``plot_px[0]`` wide and as tall as
    :func:`timeline_figure` makes it (``width`` = axis width in days, ``n_rows`` code families)."""
    slots = [(0, -16), (0, -32), (-20, -22), (20, -22), (0, 18), (-22, 0), (22, 0)]
    height = plot_px[1] or 130.0 + 40.0 * n_rows
    row_px = height / (n_rows + 0.4)
    box_w, box_h = 16.0, 17.0  # a one- or two-digit label with its background and a margin
    placed: list[tuple[float, float]] = []
    out = []
    for xi, yi in zip(x.tolist(), y.tolist()):
        px, py = xi / max(width, 1e-9) * plot_px[0], -yi * row_px
        choice = slots[len(placed) % len(slots)]
        for ax, ay in slots:
            cx, cy = px + ax, py + ay
            if all(abs(cx - qx) >= box_w or abs(cy - qy) >= box_h for qx, qy in placed):
                choice = (ax, ay)
                break
        placed.append((px + choice[0], py + choice[1]))
        out.append(choice)
    return out


def plain(text: object) -> str:
    """Text from a user's file (an event code) for a Plotly label or hover: Plotly reads ``<a href>``, ``<b>`` and
    ``<br>`` in them, so a code could become a link in a clinical chart; escaped, it shows as it is.

    >>> plain('<a href="https://x.example">LAB</a>//1')
    '&lt;a href="https://x.example"&gt;LAB&lt;/a&gt;//1'
    """
    return escape(str(text), quote=False)


def _short_code(code: str, limit: int = 28) -> str:
    """``code`` cut to ``limit`` characters, escaped for Plotly (:func:`plain`)."""
    text = str(code)
    return plain(text if len(text) <= limit else text[: limit - 1] + "…")


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
    Event tokens beyond the case's own events (padding) are dropped, and a case
    without events gets no map: nothing is drawn for events that do not exist.
    """
    n_events = 0 if events is None else len(events)
    maps = []
    for key, raw in attention.items():
        a = np.asarray(raw, dtype=np.float32)
        if a.ndim == 4:
            a = a[0]
        if a.ndim != 3 or a.size == 0 or not np.isfinite(a).all() or n_events == 0:
            continue
        if key.startswith("img<-"):
            a = a[:, :, :n_events]  # keys are events
            weights = a.mean(axis=1)  # [heads, keys]
            cols, axis, title = event_labels(events, weights.shape[1]), "timeline event", "CT slices attending to events"
        else:
            a = a[:, :n_events, :]  # queries are events
            weights = a.mean(axis=1)
            cols, axis, title = [f"slice {i + 1}" for i in range(weights.shape[1])], "CT slice", "events attending to CT slices"
        maps.append({"key": key, "title": title, "weights": weights,  # in words, not the map's key ("img<-ehr")
                     "rows": [f"attention head {h + 1}" for h in range(weights.shape[0])], "cols": cols,
                     "x_title": axis})
    return maps
