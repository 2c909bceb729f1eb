"""The case's survival curve as a Vega-Lite chart: the first chart of Case review.

Case review's first screen shows this chart beside the CT viewer. It is Vega-Lite
(drawn by Streamlit's ``st.vega_lite_chart``), not plotly, because a browser on a
2-core machine spends about a second of its one main thread evaluating plotly's
4.7 MB bundle before it can draw a plotly chart, the same thread that starts the CT
viewer; Vega-Lite's code costs about a tenth of that. The charts further down the
page (strategies side by side, timeline, attention) stay plotly.

The chart holds exactly what the caller passes: the individual S(t) step curve and
its band, the cohort's Kaplan-Meier curve, the similar-risk group's Kaplan-Meier
curve and band, an optional lower bound on the event time, and the risk 1 - S(t)
read at each horizon. Hovering shows the day, S(t) and the risk 1 - S(t) of the nearest step. Every text mark has
its own colour, readable on Streamlit's light and dark themes (a mark without one is drawn black).

>>> import numpy as np
>>> spec = survival_chart(np.array([10.0, 400.0]), np.array([0.9, 0.6]))
>>> [layer["mark"]["type"] for layer in spec["layer"]][:2]
['area', 'line']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.figures.curves import curve_arrays
from core.figures.style import COHORT_COLOR, NEUTRAL, PALETTE
from core.horizons import HORIZONS, horizon_label, survival_at

BOUND_COLOR = "rgb(200,140,0)"
BOUND_TEXT = "rgb(170,115,0)"  # about 4:1 on white and on the dark theme's background
OBSERVED_COLOR = "#c0392b"  # the observed outcome's mark: red, apart from the curves' colours


def _rows(name: str, t: np.ndarray, s: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(t.size):
        row: dict[str, Any] = {"curve": name, "day": round(float(t[i]), 3), "S": round(float(s[i]), 5)}
        if lo is not None and hi is not None:
            row["lower"], row["upper"] = round(float(lo[i]), 5), round(float(hi[i]), 5)
        rows.append(row)
    return rows


#: a horizon's label moves to the right of its line when the bound's line lies within this share of the x axis
#: to its left, where the label is written
LABEL_CLEARANCE = 0.03


def label_side(day: float, x_end: float, bound_day: float | None) -> str:
    """Which side of its dotted line a horizon's label is written on: "left", unless the bound's line crosses that
    side or the axis leaves no room there (day 30 on a five-year axis), and the bound's line does not cross the right.

    >>> label_side(365, 2000, None), label_side(365, 2000, 350), label_side(30, 2000, None), label_side(30, 2000, 45)
    ('left', 'right', 'right', 'left')
    """
    near = LABEL_CLEARANCE * x_end
    crosses_left = bound_day is not None and day - near <= bound_day <= day
    crosses_right = bound_day is not None and day < bound_day <= day + near
    return "right" if crosses_left or (day < near and not crosses_right) else "left"


def survival_chart(
    times: Sequence[float] | np.ndarray,
    survival: Sequence[float] | np.ndarray,
    lower: Sequence[float] | np.ndarray | None = None,
    upper: Sequence[float] | np.ndarray | None = None,
    *,
    cohort_km: tuple[Any, Any, Any, Any] | None = None,
    group_km: tuple[Any, Any, Any, Any] | None = None,
    horizons: Sequence[float] = HORIZONS,
    label: str = "this case",
    time_bound: tuple[float, str] | None = None,
    observed: tuple[float, int] | None = None,
    height: int = 440,
) -> dict[str, Any]:
    """A Vega-Lite spec: the individual S(t) step curve with its band beside the cohort (and group) Kaplan-Meier curves.

    Every curve starts at S(0) = 1. ``time_bound`` = ``(days, label)`` marks a lower predictive bound on the
    event time (for example the conformal 90 % bound) as a shaded span from day 0 to that day, with its label.
    Each horizon within reach of the curve gets a dotted line labelled with the case's risk 1 - S(h); one past the
    curve's last time (up to 1.5 x it) is labelled "past the curve's end": the model gives no risk there.
    ``observed`` = ``(days, event)``: the patient's outcome in its cohort (a retrospective review), marked on the
    case's curve at that day: a cross for an event, an open circle for the end of an event-free follow-up.
    """
    t, s, lo, hi = curve_arrays("survival", times, survival, lower, upper)
    curves: list[tuple[str, str, list[float]]] = []  # name, colour, dash
    rows: list[dict[str, Any]] = []
    if cohort_km is not None:
        ct, cs, clo, chi = curve_arrays("cohort_km", *cohort_km)
        rows += _rows("cohort Kaplan-Meier", ct, cs, clo, chi)
        curves.append(("cohort Kaplan-Meier", COHORT_COLOR, [6, 4]))
    if group_km is not None:
        gt, gs, glo, ghi = curve_arrays("group_km", *group_km)
        rows += _rows("similar-risk patients, Kaplan-Meier", gt, gs, glo, ghi)
        curves.append(("similar-risk patients, Kaplan-Meier", PALETTE[2], [2, 3]))
    rows += _rows(label, t, s, lo, hi)
    curves.append((label, PALETTE[0], []))

    ends = [float(t[-1])] + [float(np.max(np.asarray(km[0], dtype=float))) for km in (cohort_km, group_km) if km is not None]
    ends += [] if observed is None else [float(observed[0])]
    shown = [float(h) for h in horizons if t[0] <= h <= t[-1] * 1.5]
    x_end = 1.03 * max(ends + shown)
    names = [c[0] for c in curves]
    color = {"field": "curve", "type": "nominal", "title": None, "sort": names,
             "scale": {"domain": names, "range": [c[1] for c in curves]},
             "legend": {"orient": "bottom", "direction": "vertical", "symbolType": "stroke",
                        "symbolStrokeWidth": 2.5, "symbolOpacity": 1, "labelLimit": 400}}
    x = {"field": "day", "type": "quantitative", "title": "days from index date", "scale": {"domain": [0, x_end]}}
    y = {"field": "S", "type": "quantitative", "title": "survival S(t)", "scale": {"domain": [0, 1.08]}}
    curve_layer = {"data": {"values": rows}}
    layers: list[dict[str, Any]] = []
    if time_bound is not None and time_bound[0] > 0:
        bound = [{"from": 0.0, "to": float(time_bound[0]), "text": time_bound[1]}]
        layers += [
            {"data": {"values": bound}, "mark": {"type": "rect", "color": BOUND_COLOR, "opacity": 0.12},
             "encoding": {"x": {"field": "from", "type": "quantitative"}, "x2": {"field": "to"}}},
            {"data": {"values": bound}, "mark": {"type": "rule", "color": BOUND_COLOR, "strokeWidth": 2},
             "encoding": {"x": {"field": "to", "type": "quantitative"}}},
            {"data": {"values": bound}, "mark": {"type": "text", "align": "left", "dx": 4, "y": 6, "baseline": "top",
                                                 "fontSize": 11, "color": BOUND_TEXT},
             "encoding": {"x": {"field": "to", "type": "quantitative"}, "text": {"field": "text"}}},
        ]
    layers += [
        curve_layer | {"transform": [{"filter": "isValid(datum.lower)"}],
                       "mark": {"type": "area", "interpolate": "step-after", "opacity": 0.15},
                       "encoding": {"x": x, "y": {"field": "lower", "type": "quantitative"}, "y2": {"field": "upper"},
                                    "color": color}},
        curve_layer | {"mark": {"type": "line", "interpolate": "step-after", "strokeWidth": 2.5},
                       "encoding": {"x": x, "y": y, "color": color,
                                    "strokeDash": {"field": "curve", "type": "nominal", "title": None, "sort": names,
                                                   "scale": {"domain": names, "range": [c[2] for c in curves]}}}},
        # hover: the nearest step's day, S(t) and risk, marked by a point
        curve_layer | {"transform": [{"calculate": "1 - datum.S", "as": "risk"}],
                       "params": [{"name": "hover", "select": {"type": "point", "fields": ["curve", "day"], "nearest": True,
                                                                 "on": "pointerover", "clear": "pointerout"}}],
                       "mark": {"type": "point", "filled": True, "size": 45},
                       "encoding": {"x": x, "y": y, "color": color,
                                    "opacity": {"condition": {"param": "hover", "empty": False, "value": 1}, "value": 0},
                                    "tooltip": [{"field": "curve", "title": "curve"},
                                                {"field": "day", "type": "quantitative", "format": ".0f"},
                                                {"field": "S", "type": "quantitative", "title": "S(t)", "format": ".3f"},
                                                {"field": "risk", "type": "quantitative", "title": "risk 1 - S(t)",
                                                 "format": ".1%"}]}},
    ]
    if observed is not None:
        day, event = float(observed[0]), int(observed[1])
        seen = [{"day": day, "S": float(survival_at(t, s, [day])[0]),
                 "text": f"{'event' if event else 'censored'}, day {day:,.0f}"}]
        layers += [
            {"data": {"values": seen}, "mark": {"type": "point", "shape": "cross" if event else "circle",
                                                "filled": bool(event), "size": 160, "strokeWidth": 2.5,
                                                "color": OBSERVED_COLOR},
             "encoding": {"x": {"field": "day", "type": "quantitative"}, "y": {"field": "S", "type": "quantitative"},
                          "tooltip": [{"field": "text", "title": "observed"}]}},
            {"data": {"values": seen}, "mark": {"type": "text", "align": "left", "dx": 9, "dy": 14, "fontSize": 11,
                                                "fontWeight": "bold", "color": OBSERVED_COLOR},
             "encoding": {"x": {"field": "day", "type": "quantitative"}, "y": {"field": "S", "type": "quantitative"},
                          "text": {"field": "text"}}},
        ]
    if shown:
        marks = [{"day": h, "text": f"{horizon_label(h, short=True)}: "
                                    + ("past the curve's end" if h > t[-1] else f"risk {1.0 - float(survival_at(t, s, [h])[0]):.0%}"),
                  "side": label_side(h, x_end, time_bound[0] if time_bound is not None and time_bound[0] > 0 else None)}
                 for h in shown]
        text = {"type": "text", "angle": 270, "align": "left", "dx": 4, "fontSize": 11, "color": PALETTE[0]}
        encoding = {"x": {"field": "day", "type": "quantitative"}, "y": {"datum": 0.03, "type": "quantitative"},
                    "text": {"field": "text"}}
        layers += [
            {"data": {"values": marks}, "mark": {"type": "rule", "strokeDash": [2, 3], "color": NEUTRAL},
             "encoding": {"x": {"field": "day", "type": "quantitative"}}},
            # written up the dotted line, so the 30-day and 1-year labels cannot run into each other
            {"data": {"values": marks}, "transform": [{"filter": "datum.side == 'left'"}],
             "mark": text | {"baseline": "bottom", "dy": -3}, "encoding": encoding},
        ]
        if any(m["side"] == "right" for m in marks):
            layers.append({"data": {"values": marks}, "transform": [{"filter": "datum.side == 'right'"}],
                           "mark": text | {"baseline": "top", "dy": 3}, "encoding": encoding})
    return {"height": height, "layer": layers, "resolve": {"scale": {"color": "shared"}}}
