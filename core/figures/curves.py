"""Survival curves with bands, the cohort's Kaplan-Meier curves, risk groups, strategies side by side, calibration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.errors import InputError
from core.figures.style import COHORT_COLOR, NEUTRAL, OTHER_MODEL_COLORS, PALETTE, STRATEGY_COLORS
from core.horizons import HORIZONS, horizon_label, survival_at


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


def curve_arrays(name: str, times: Any, surv: Any, lower: Any = None, upper: Any = None) -> tuple[np.ndarray, ...]:
    """``(t, S, lower, upper)`` as float arrays, checked (``name`` is the field in errors), starting at S(0) = 1."""
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


def _top_margin(title: str) -> dict[str, int]:
    """Room above the plot for its title only: untitled figures under a page heading start at the top."""
    return {"t": 60 if title else 20}


def survival_compare_figure(
    curves: Mapping[str, tuple[Any, Any, Any, Any]],
    *,
    cohort_km: tuple[Any, Any, Any, Any] | None = None,
    horizons: Sequence[float] = HORIZONS,
    title: str = "",
    colors: Sequence[str] | None = None,
    current: str | None = None,
) -> go.Figure:
    """The same case under several fusion strategies: ``{strategy: (times, s, lo, hi)}``.

    ``colors`` (``#rrggbb``, one per curve, in order) replaces the default colours (a strategy's own,
    ``STRATEGY_COLORS``; other names ``OTHER_MODEL_COLORS`` in turn), e.g.
    ``RISK_GROUP_COLORS`` for risk groups. ``current`` (a key of ``curves``) is the model in use: drawn thick and
    listed first in the legend under the heading "current model:", the others thinner. Hovering a curve gives
    the strategy, the day and S(t); each horizon line carries every strategy's risk there.
    """
    if not curves:
        raise InputError("curves", {}, "is empty", "pass at least one strategy's curve")
    if colors is not None and len(colors) != len(curves):
        raise InputError("colors", len(colors), f"must give one colour per curve ({len(curves)})", "pass one #rrggbb per curve or none")
    if current is not None and current not in curves:
        raise InputError("current", current, "is not one of the curves", "pass the name of a drawn strategy or None")
    fig = go.Figure()
    if cohort_km is not None:
        for tr in _km_traces(*curve_arrays("cohort_km", *cohort_km), name="cohort Kaplan-Meier", color=COHORT_COLOR,
                             fill="rgba(110,110,110,0.12)", dash="dash"):
            fig.add_trace(tr)
    readings: dict[float, list[str]] = {float(h): [] for h in horizons}
    others = [n for n in curves if str(n) not in STRATEGY_COLORS]
    for i, (name, curve) in enumerate(curves.items()):
        own = STRATEGY_COLORS.get(str(name)) or OTHER_MODEL_COLORS[others.index(name) % len(OTHER_MODEL_COLORS)]
        color = colors[i] if colors is not None else own
        r, g, b = (int(color[j:j + 2], 16) for j in (1, 3, 5))
        t, s, lo, hi = curve_arrays(f"curves[{name}]", *curve)
        is_current = current is not None and name == current
        for tr in _km_traces(t, s, lo if is_current or current is None else None, hi if is_current or current is None else None,
                             name=str(name), color=color, fill=f"rgba({r},{g},{b},0.12)"):
            if tr.showlegend is not False and current is not None:
                tr.line.width = 4.5 if is_current else 1.6
                tr.legendrank = 1 if is_current else 10 + i
                if is_current:  # the trace keeps the strategy's name; the legend heads it "current model"
                    tr.legendgroup = "current"
                    tr.legendgrouptitle = {"text": "current model:"}
                    tr.hovertemplate = tr.hovertemplate.replace("<extra>", "<extra>current model: ")
            fig.add_trace(tr)
        for h, found in readings.items():
            if t[0] <= h <= t[-1]:
                found.append(f"{name}: {1.0 - float(survival_at(t, s, [h])[0]):.1%}")
    for h, lines in readings.items():
        fig.add_vline(x=h, line={"dash": "dot", "color": "rgb(170,170,170)", "width": 1})
        if lines:  # an invisible marker on the horizon line: hovering it lists every strategy's risk there
            fig.add_trace(go.Scatter(x=[h], y=[0.02], mode="markers", marker={"size": 14, "color": "rgba(0,0,0,0)"},
                                     showlegend=False, name=f"risk at {horizon_label(h)}",
                                     hovertemplate=f"risk at {horizon_label(h)}<br>" + "<br>".join(lines) + "<extra></extra>"))
    fig.update_layout(title={"text": title} if title else None, margin=_top_margin(title),
                      xaxis_title="days from index date",
                      yaxis_title="survival S(t)", yaxis={"range": [0, 1.05]}, template="plotly_white", width=760,
                      height=450, legend={"orientation": "h", "y": -0.2}, hovermode="closest")
    return fig


def calibration_figure(calibration: dict, title: str = "") -> go.Figure:
    """Predicted against Kaplan-Meier observed risk per risk group, one trace per horizon.

    ``calibration`` is ``survival_metrics(...)["calibration"]``: ``{horizon: {"groups":
    [{"n", "events", "predicted", "observed"}], "ici", ...} | None}``.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "rgb(150,150,150)"}, hoverinfo="skip"))
    top = 0.05
    for i, (h, cal) in enumerate(calibration.items()):
        if not cal:
            continue
        rows = [g for g in cal["groups"] if g["observed"] is not None]
        if not rows:
            continue
        x = [g["predicted"] for g in rows]
        y = [g["observed"] for g in rows]
        top = max(top, *x, *y)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=f"{horizon_label(float(h))} (ICI {cal['ici']:.3f}"
            + (f", {n_obs} of {n_all} subjects)" if (n_obs := sum(g["n"] for g in rows))
               < (n_all := sum(g["n"] for g in cal["groups"])) else ")"),
            marker={"size": [6 + 0.3 * g["n"] for g in rows], "color": PALETTE[i % len(PALETTE)]},
            customdata=[[g["n"], g["events"]] for g in rows],
            hovertemplate="predicted %{x:.2f}, observed %{y:.2f}<br>n=%{customdata[0]}, events by then %{customdata[1]}<extra></extra>",
        ))
    lim = min(1.0, top * 1.1)
    fig.update_layout(title={"text": title} if title else None, margin=_top_margin(title),
                      xaxis_title="predicted risk 1 - S(t)",
                      yaxis_title="observed risk (1 - Kaplan-Meier)", template="plotly_white", height=420,
                      xaxis={"range": [0, lim]}, yaxis={"range": [0, lim]}, legend={"orientation": "h", "y": -0.25})
    return fig


def decision_curve_figure(decision: dict, title: str = "") -> go.Figure:
    """Net benefit against the risk threshold, one panel per horizon: the model, treat all and treat none.

    ``decision`` is ``core.evaluate.decision.decision_curve(...)``: ``{"horizons": {h: {"thresholds",
    "net_benefit", "treat_all", "treat_none"} | None}}``. Undefined points (None) leave gaps, and a panel whose
    model line has one says why. The y axis keeps the model's line in view down to a net benefit of -0.25 (treat
    all, far below zero at high thresholds, may leave it).
    """
    panels = [(h, d) for h, d in decision.get("horizons", {}).items() if d]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), shared_yaxes=True,
                        subplot_titles=[f"{horizon_label(float(h))}" for h, _ in panels] or [""])
    lo = 0.0
    for col, (h, d) in enumerate(panels, start=1):
        x = [100 * t for t in d["thresholds"]]
        for name, key, style in (("model", "net_benefit", {"color": PALETTE[0], "width": 2.5}),
                                 ("treat all", "treat_all", {"color": "rgb(120,120,120)", "dash": "dash"}),
                                 ("treat none", "treat_none", {"color": NEUTRAL, "dash": "dot"})):
            y = [None if v is None else float(v) for v in d[key]]
            if key == "net_benefit":  # the model's line stays in view (down to -0.25); treat-all may leave it
                lo = min(lo, *[v for v in y if v is not None], 0.0)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line=style, showlegend=col == 1,
                                     legendgroup=name, connectgaps=False,
                                     hovertemplate=f"{name}: threshold %{{x:.0f}} %, net benefit %{{y:.3f}}<extra></extra>"),
                          row=1, col=col)
        if any(v is None for v in d["net_benefit"]):  # say why the model's line breaks off (not a net benefit of 0)
            suffix = "" if col == 1 else str(col)
            fig.add_annotation(text="gap: the follow-up of everyone above these<br>thresholds ends censored "
                                    f"before {horizon_label(float(h))}:<br>net benefit undefined",
                               x=1, y=1, xref=f"x{suffix} domain", yref=f"y{suffix} domain", xanchor="right",
                               yanchor="top", showarrow=False, align="right", font={"size": 10, "color": NEUTRAL})
        fig.update_xaxes(title_text="risk threshold (%)", row=1, col=col)
    top = max([float(v) for _, d in panels for v in d["treat_all"] + d["net_benefit"] if v is not None] + [0.05])
    bottom = max(lo, -0.25)
    fig.update_yaxes(title_text="net benefit", range=[bottom - 0.05 * (top - bottom), top * 1.1], row=1, col=1)
    fig.update_layout(title={"text": title} if title else None, margin=_top_margin(title), template="plotly_white",
                      height=380,
                      legend={"orientation": "h", "y": -0.25})
    return fig
