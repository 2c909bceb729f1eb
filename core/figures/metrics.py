"""Forest plots: models side by side on one evaluation (each model's C-index and integrated Brier score with their
95 % intervals), and one model by subgroup (C-index, and predicted against observed risk at a horizon)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.style import COHORT_COLOR, NEUTRAL, PALETTE
from core.figures.tokens import plain
from core.horizons import horizon_label


def _interval(m: Mapping[str, Any], key: str) -> tuple[float, float, float] | None:
    """(value, low, high) of metric ``key`` (its ``key_ci`` pair; the value itself where no interval was drawn)."""
    v = m.get(key)
    if v is None:
        return None
    ci = m.get(f"{key}_ci") or [v, v]
    lo, hi = (float(ci[0]), float(ci[1])) if ci[0] is not None and ci[1] is not None else (float(v), float(v))
    return float(v), lo, hi


def _bars(values: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict[str, Any]:
    """Plotly's asymmetric horizontal error bars from each value's interval ``[low, high]``."""
    return {"type": "data", "symmetric": False, "color": COHORT_COLOR, "thickness": 1.5,
            "array": [round(h - v, 6) for v, h in zip(values, highs)],
            "arrayminus": [round(v - lo, 6) for v, lo in zip(values, lows)]}


def _forest_layout(fig: go.Figure, names: list[str], right_axis: str, title: str) -> go.Figure:
    """The two-panel forest plot's axes and size: one row per name, in the order given (also where a name has no
    marker in one panel; names such as "2" stay names), the first at the top with half a row free above it for the
    lines' labels; the C-index panel "higher is better", the right one titled ``right_axis``; the panel titles
    below plotly's tool bar."""
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names, range=[len(names) - 0.5, -0.75],
                     row=1, col=1)
    fig.update_xaxes(title_text="higher is better", title_font={"size": 12}, row=1, col=1)
    fig.update_xaxes(title_text=right_axis, title_font={"size": 12}, row=1, col=2)
    fig.update_layout(title={"text": title} if title else None, template="plotly_white", showlegend=False,
                      height=160 + 34 * len(names), margin={"l": 10, "r": 10, "t": 84 if title else 60, "b": 50})
    return fig


def model_comparison_figure(metrics: Mapping[str, Mapping[str, Any]], current: str | None = None,
                            title: str = "") -> go.Figure:
    """A forest plot of ``metrics`` (``{model name: core.evaluation.evaluate_model's dict}``, in the order given,
    top to bottom): Harrell's C-index (higher is better; 0.5 is chance, and the demo's ``oracle_c_index``, the C of
    the true risk, where known) and the integrated Brier score (lower is better), each with its 95 % bootstrap
    interval. ``current`` (the model in use) is drawn in the first colour, the others in grey. A model without a
    metric has no marker in that panel.

    >>> m = {"a": {"c_index": 0.7, "c_index_ci": [0.65, 0.75], "ibs": 0.17, "ibs_ci": [0.15, 0.19]},
    ...      "b": {"c_index": 0.6, "c_index_ci": [0.55, 0.66], "ibs": 0.2}}
    >>> fig = model_comparison_figure(m, current="a")
    >>> [(t.name, list(t.y), list(t.x)) for t in fig.data if t.type == "scatter"][:2]
    [('C-index', ['a', 'b'], [0.7, 0.6]), ('integrated Brier score', ['a', 'b'], [0.17, 0.2])]
    >>> list(fig.data[0].error_x.array), list(fig.data[0].error_x.arrayminus)
    ([0.05, 0.06], [0.05, 0.05])
    """
    names = list(metrics)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=["Harrell's C-index", "Integrated Brier score"])
    fig.update_annotations(font={"size": 14})  # the panel titles (short: whole side by side on a narrow page)
    colours = [PALETTE[0] if n == current else COHORT_COLOR for n in names]
    for col, key, label in ((1, "c_index", "C-index"), (2, "ibs", "integrated Brier score")):
        rows = [(n, _interval(metrics[n], key), c) for n, c in zip(names, colours)]
        rows = [(n, iv, c) for n, iv, c in rows if iv is not None]
        fig.add_trace(go.Scatter(
            x=[iv[0] for _, iv, _ in rows], y=[n for n, _, _ in rows], mode="markers", name=label, showlegend=False,
            marker={"size": 10, "color": [c for _, _, c in rows], "symbol": "diamond"},
            error_x=_bars(*zip(*[iv for _, iv, _ in rows])) if rows else None,
            customdata=[[iv[1], iv[2]] for _, iv, _ in rows],
            hovertemplate=f"%{{y}}: {label} %{{x:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]<extra></extra>"),
            row=1, col=col)
    fig.add_vline(x=0.5, line={"dash": "dot", "color": NEUTRAL}, row=1, col=1,
                  annotation_text="chance", annotation_position="bottom right")
    oracle = [float(m["oracle_c_index"]) for m in metrics.values() if m.get("oracle_c_index") is not None]
    if oracle:  # the same subjects' true risk (the synthetic demo): the ceiling any model can reach
        fig.add_vline(x=max(oracle), line={"dash": "dash", "color": PALETTE[2]}, row=1, col=1,
                      annotation_text="oracle", annotation_position="top left")
    return _forest_layout(fig, names, "lower is better", title)


def subgroup_figure(groups: Sequence[Mapping[str, Any]], labels: Sequence[str], horizon: int,
                    overall_c: float | None = None, title: str = "") -> go.Figure:
    """One model by subgroup (``groups``: ``core.evaluate.subgroups.subgroup_table``'s ``"groups"``, named
    ``labels`` top to bottom): each group's C-index with its 95 % bootstrap interval (the whole cohort's
    ``overall_c`` as a dashed line, 0.5 dotted), and at ``horizon`` (days) the group's observed risk 1 - Kaplan-Meier
    with its 95 % interval (grey dots) beside the mean predicted risk (coloured diamonds). A group where a number is
    undefined (no event, follow-up shorter than the horizon) has no marker for it.

    >>> g = [{"c_index": 0.7, "c_index_ci": [0.6, 0.8], "calibration": {365: {"predicted": 0.3, "observed": 0.25,
    ...       "observed_ci": [0.2, 0.31]}}}, {"c_index": None, "c_index_ci": None, "calibration": {365: None}}]
    >>> fig = subgroup_figure(g, ["F", "M"], 365, overall_c=0.68)
    >>> [(t.name, list(t.y), list(t.x)) for t in fig.data]
    [('C-index', ['F'], [0.7]), ('observed', ['F'], [0.25]), ('predicted', ['F'], [0.3])]
    """
    names = [plain(n) for n in labels]  # a group's label is a value of the user's column: shown as it is
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=["Harrell's C-index", f"Risk at {horizon_label(float(horizon))}"])
    fig.update_annotations(font={"size": 14})
    c_rows = [(n, _interval(g, "c_index")) for n, g in zip(names, groups)]
    c_rows = [(n, iv) for n, iv in c_rows if iv is not None]
    fig.add_trace(go.Scatter(
        x=[iv[0] for _, iv in c_rows], y=[n for n, _ in c_rows], mode="markers", name="C-index",
        marker={"size": 10, "color": PALETTE[0], "symbol": "diamond"},
        error_x=_bars(*zip(*[iv for _, iv in c_rows])) if c_rows else None,
        customdata=[[iv[1], iv[2]] for _, iv in c_rows],
        hovertemplate="%{y}: C-index %{x:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>"), row=1, col=1)
    cal = [(n, (g.get("calibration") or {}).get(horizon, (g.get("calibration") or {}).get(str(horizon))))
           for n, g in zip(names, groups)]
    cal = [(n, c) for n, c in cal if c and c.get("observed") is not None]
    ci = [c.get("observed_ci") or [c["observed"], c["observed"]] for _, c in cal]
    fig.add_trace(go.Scatter(
        x=[c["observed"] for _, c in cal], y=[n for n, _ in cal], mode="markers", name="observed",
        marker={"size": 9, "color": COHORT_COLOR},
        error_x=_bars([c["observed"] for _, c in cal], [lo for lo, _ in ci], [hi for _, hi in ci]),
        customdata=ci, hovertemplate="%{y}: observed %{x:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}]<extra></extra>"),
        row=1, col=2)
    fig.add_trace(go.Scatter(
        x=[c["predicted"] for _, c in cal], y=[n for n, _ in cal], mode="markers", name="predicted",
        marker={"size": 10, "color": PALETTE[0], "symbol": "diamond"},
        hovertemplate="%{y}: mean predicted %{x:.2f}<extra></extra>"), row=1, col=2)
    fig.add_vline(x=0.5, line={"dash": "dot", "color": NEUTRAL}, row=1, col=1)
    if overall_c is not None:
        fig.add_vline(x=float(overall_c), line={"dash": "dash", "color": PALETTE[2]}, row=1, col=1,
                      annotation_text="all", annotation_position="top left")
    fig.update_xaxes(rangemode="tozero", row=1, col=2)
    return _forest_layout(fig, names, "dot: observed, diamond: predicted", title)


def pooled_figure(sites: Sequence[tuple[str, float, float, float]], pooled: Mapping[str, Any], title: str = "", *,
                  value: str = "c", axis: str = "Harrell's C-index (higher is better)",
                  reference: tuple[float, str] = (0.5, "chance")) -> go.Figure:
    """One model's metric at each site (``sites``: (label, value, low, high), top to bottom) with its 95 % interval,
    and below them the random-effects pooled value (``pooled[value]``, from ``core.evaluate.pooled``) as a diamond
    over its 95 % interval, the 95 % prediction interval for a new site as a dashed bar where there is one, and the
    ``reference`` line (0.5, chance, for a C-index; 1 for an observed / expected ratio) dotted.

    >>> fig = pooled_figure([("A", 0.7, 0.64, 0.76), ("B", 0.74, 0.7, 0.78)], {"c": 0.72, "ci": [0.69, 0.75],
    ...                     "prediction": None, "k": 2, "i2": 0.1})
    >>> [(t.name, list(t.y), [round(x, 2) for x in t.x]) for t in fig.data]
    [('site', ['A', 'B'], [0.7, 0.74]), ('pooled', ['Pooled (random effects)'], [0.72])]
    """
    names = [plain(n) for n, *_ in sites]
    pooled_name, centre = "Pooled (random effects)", float(pooled[value])
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[c for _, c, _, _ in sites], y=names, mode="markers", name="site",
        marker={"size": 10, "color": COHORT_COLOR, "symbol": "square"},
        error_x=_bars([c for _, c, _, _ in sites], [lo for *_, lo, _ in sites], [hi for *_, hi in sites]),
        customdata=[[lo, hi] for *_, lo, hi in sites],
        hovertemplate="%{y}: %{x:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>"))
    lo, hi = pooled["ci"]
    fig.add_trace(go.Scatter(
        x=[centre], y=[pooled_name], mode="markers", name="pooled",
        marker={"size": 16, "color": PALETTE[0], "symbol": "diamond"},
        error_x={**_bars([centre], [lo], [hi]), "color": PALETTE[0], "thickness": 3},
        hovertemplate=f"pooled %{{x:.3f}} [{lo:.3f}, {hi:.3f}] over {pooled['k']} sites<extra></extra>"))
    if pooled.get("prediction"):
        p_lo, p_hi = pooled["prediction"]
        fig.add_shape(type="line", x0=p_lo, x1=p_hi, y0=len(names) + 0.35, y1=len(names) + 0.35,
                      line={"dash": "dash", "color": PALETTE[0], "width": 2})
        fig.add_annotation(x=(p_lo + p_hi) / 2, y=len(names) + 0.35, yanchor="top", yshift=-3, showarrow=False,
                           font={"size": 11}, text=f"a new site: {p_lo:.2f}-{p_hi:.2f}")
    fig.add_vline(x=reference[0], line={"dash": "dot", "color": NEUTRAL}, annotation_text=reference[1],
                  annotation_position="top right")
    rows = [*names, pooled_name]
    ends = [lo, hi, reference[0], *(pooled.get("prediction") or []), *(v for _, _, a, b in sites for v in (a, b))]
    pad = 0.04 * (max(ends) - min(ends))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=rows, range=[len(rows) - 0.2, -0.75])
    fig.update_xaxes(title_text=axis, title_font={"size": 12}, range=[max(0.0, min(ends) - pad), max(ends) + pad])
    fig.update_layout(title={"text": title} if title else None, template="plotly_white", showlegend=False,
                      height=170 + 36 * len(rows), margin={"l": 10, "r": 10, "t": 70 if title else 30, "b": 50})
    return fig
