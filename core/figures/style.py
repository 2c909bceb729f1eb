"""Colours and colour scales shared by every figure."""

from __future__ import annotations

from typing import Any

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
# lines, rings and small notes that must read on Streamlit's light and dark themes alike (about 4.7:1 on white and
# 3.8:1 on the dark theme's background; black or rgb(60,60,60) vanished on dark)
NEUTRAL = "rgb(115,115,115)"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
# each fusion strategy keeps its colour from case to case, whichever strategies can score a case; none takes the blue
# of the case's own curve (core.figures.survival_chart)
STRATEGY_COLORS = dict(zip(("image_only", "ehr_only", "concat", "contrastive", "cross_attention", "coattention_image",
                            "coattention_ehr"), PALETTE[1:]))
OTHER_MODEL_COLORS = ("#bcbd22", "#6b6ecf", "#8ca252", "#bd9e39", "#d6616b")  # models of other names (a user's own), in turn
# risk groups read at a glance: low green, intermediate orange, high red
RISK_GROUP_COLORS = {"low": "#2ca02c", "intermediate": "#ff7f0e", "high": "#d62728"}
