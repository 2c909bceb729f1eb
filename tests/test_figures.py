"""core.figures: the app's plotly figures and their export (PNG >= 300 dpi, SVG, PDF; no metadata)."""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import figure_export as FX
from core import figures as F
from core.errors import InputError

ENGINES = ("kaleido", "matplotlib")


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        kinds.append(kind)
        pos += 12 + length
    return kinds


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    hu = rng.normal(-300, 200, (6, 40, 50)).astype(np.float32)
    attr = np.zeros_like(hu)
    attr[3, 10:20, 20:30] = rng.random((10, 10)) + 1.0
    return hu, attr


def test_slice_overlay_has_ct_overlay_colorbar_and_true_aspect(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, attr = volume
    fig = F.slice_overlay(hu[3], attr[3], window=(-1000, 200), opacity=0.4, spacing_mm=(0.5, 1.0), title="case 1")
    ct, over = fig.data
    assert (ct.zmin, ct.zmax, ct.showscale) == (-1000.0, 200.0, False)
    assert np.asarray(ct.z).min() >= -1000 and np.asarray(ct.z).max() <= 200  # windowed
    assert over.opacity == 0.4 and over.showscale is True and over.colorbar.title.text == "attribution"
    z = np.asarray(over.z)
    assert z.max() == pytest.approx(1.0) and z.min() == 0.0 and z[:10].max() == 0.0
    assert (ct.dx, ct.dy) == (1.0, 0.5)  # col, row spacing in mm
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]
    assert F.slice_overlay(hu[0], None, window=(-500, 500)).data[0].name == "CT"


def _letters(fig: object) -> dict[tuple[float, float], str]:
    return {(a.x, a.y): a.text for a in fig.layout.annotations if len(a.text) == 1}  # type: ignore[attr-defined]


def test_slices_carry_the_patient_directions_and_a_scale_bar_of_true_length(volume: tuple[np.ndarray, np.ndarray]) -> None:
    hu, attr = volume  # 40 rows x 50 cols
    axial = F.slice_overlay(hu[3], attr[3], spacing_mm=(0.5, 2.0))
    assert _letters(axial) == {(0.5, 1): "A", (0.5, 0): "P", (0, 0.5): "R", (1, 0.5): "L"}
    assert set(_letters(F.slice_overlay(hu[3], None, plane="coronal")).values()) == {"S", "I", "R", "L"}
    assert _letters(F.slice_overlay(hu[3], None, plane="sagittal"))[(0, 0.5)] == "A"
    # 50 columns of 2 mm = 100 mm wide: the bar is the longest round length within a quarter of it, 20 mm
    (bar,) = axial.layout.shapes
    assert bar.x1 - bar.x0 == pytest.approx(20.0) and "2 cm" in [a.text for a in axial.layout.annotations]
    with pytest.raises(InputError, match="plane: got oblique, must be one of axial, coronal, sagittal"):
        F.slice_overlay(hu[3], None, plane="oblique")
    mont = F.montage(hu, attr, [1, 3, 5], spacing_mm=(3.0, 0.5, 1.0), cols=2)
    refs = {a.xref for a in mont.layout.annotations if a.text == "R"}
    assert refs == {"x domain", "x2 domain", "x3 domain"}  # every panel of the montage has its letters


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"attribution_slice": np.zeros((3, 3))}, "attribution_slice: got shape (3, 3), must match the slice (40, 50)"),
    ({"window": (100, -100)}, "window: got (100, -100), needs finite lo < hi"),
    ({"opacity": 1.5}, "opacity: got 1.5, must be within 0..1"),
    ({"spacing_mm": (0, 1)}, "spacing_mm: got (0, 1), must be positive (row, col) mm"),
])
def test_slice_overlay_rejects_bad_input(volume: tuple[np.ndarray, np.ndarray], kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        F.slice_overlay(volume[0][0], **({"attribution_slice": None} | kwargs))
    bad = volume[0][0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="slice_hu: got NaN/inf values, must be finite"):
        F.slice_overlay(bad)


def test_survival_chart_steps_band_cohort_bound_and_horizon_risks() -> None:
    t = np.array([10.0, 100.0, 400.0, 2000.0])
    s = np.array([0.95, 0.8, 0.6, 0.3])
    spec = F.survival_chart(t, s, s - 0.1, np.minimum(s + 0.1, 1), cohort_km=(t, s + 0.02, s - 0.05, s + 0.05),
                            time_bound=(45.0, "90 % conformal bound: T >= 45 d"))
    json.dumps(spec)  # plain JSON for st.vega_lite_chart
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["rect", "rule", "text", "area", "line", "point", "rule", "text"]
    rows = spec["layer"][4]["data"]["values"]
    case = [r for r in rows if r["curve"] == "this case"]
    # step curve from S(0) = 1, drawn step-after (S holds until the next time), band on the same grid
    assert [(r["day"], r["S"]) for r in case][:2] == [(0.0, 1.0), (10.0, 0.95)]
    assert spec["layer"][4]["mark"]["interpolate"] == "step-after" and case[1]["lower"] == pytest.approx(0.85)
    assert {r["curve"] for r in rows} == {"cohort Kaplan-Meier", "this case"}
    # the bound: a span from day 0 to day 45 with its label
    assert spec["layer"][0]["data"]["values"] == [{"from": 0.0, "to": 45.0, "text": "90 % conformal bound: T >= 45 d"}]
    # step reading: S(30) = 0.95, S(365) = 0.8, S(1825) = 0.6, written up each dotted horizon line
    assert [m["text"] for m in spec["layer"][-1]["data"]["values"]] == ["30 d: risk 5%", "1 y: risk 20%", "5 y: risk 40%"]
    assert spec["layer"][-1]["mark"]["angle"] == 270
    # the hover layer shows the nearest step's day, S(t) and the risk 1 - S(t) that the headline gives
    hover = spec["layer"][5]
    assert hover["params"][0]["select"]["nearest"]
    assert [f["field"] for f in hover["encoding"]["tooltip"]] == ["curve", "day", "S", "risk"]
    assert hover["transform"] == [{"calculate": "1 - datum.S", "as": "risk"}]
    # every text has its own colour: one without is drawn black, unreadable on the dark theme
    assert all(layer["mark"].get("color") for layer in spec["layer"] if layer["mark"]["type"] == "text")
    with pytest.raises(InputError, match="survival: got 4 times vs 3 values"):
        F.survival_chart(t, s[:3])
    no_bound = F.survival_chart(t, s)
    assert [layer["mark"]["type"] for layer in no_bound["layer"]][:3] == ["area", "line", "point"]
    # a bound just left of day 30 crossed the "30 d" label written left of its line: that label moves right
    near = F.survival_chart(t, s, time_bound=(28.0, "90 % conformal bound: T >= 28 d"))
    left, right = near["layer"][-2], near["layer"][-1]
    assert [m["side"] for m in right["data"]["values"]] == ["right", "left", "left"]
    assert right["transform"] == [{"filter": "datum.side == 'right'"}] and right["mark"]["baseline"] == "top"
    assert left["transform"] == [{"filter": "datum.side == 'left'"}] and left["mark"]["baseline"] == "bottom"
    # a curve that stops at day 1,300 has no 5-year risk: its mark says so (it read "5 y: risk 40%", the day-1,300 risk)
    short = F.survival_chart(np.array([10.0, 100.0, 400.0, 1300.0]), s)
    assert [m["text"] for m in short["layer"][-1]["data"]["values"]] == ["30 d: risk 5%", "1 y: risk 20%", "5 y: past the curve's end"]
    # the observed outcome of a cohort patient: on the case's curve at that day (S(250) = 0.8), a cross for an event;
    # an event-free follow-up past the curve's end widens the axis to show its circle
    seen = F.survival_chart(t, s, observed=(250.0, 1))
    point = next(i for i, layer in enumerate(seen["layer"]) if layer["mark"].get("shape"))
    mark = seen["layer"][point]
    assert mark["mark"]["shape"] == "cross" and mark["data"]["values"] == [{"day": 250.0, "S": 0.8, "text": "event, day 250"}]
    assert seen["layer"][point + 1]["mark"]["type"] == "text" and seen["layer"][point + 1]["mark"]["color"]
    late = F.survival_chart(t, s, observed=(3000.0, 0))
    circle = next(layer for layer in late["layer"] if layer["mark"].get("shape"))
    assert circle["mark"]["shape"] == "circle" and not circle["mark"]["filled"]
    assert circle["data"]["values"][0]["text"] == "censored, day 3,000"
    line = next(layer for layer in late["layer"] if layer["mark"]["type"] == "line")
    assert line["encoding"]["x"]["scale"]["domain"][1] == pytest.approx(3090.0)

def test_survival_compare_attention_strip_and_montage(volume: tuple[np.ndarray, np.ndarray]) -> None:
    t = np.array([10.0, 100.0, 400.0])
    fig = F.survival_compare_figure({"concat": (t, [0.9, 0.8, 0.7], None, None),
                                     "cross_attention": (t, [0.95, 0.85, 0.6], [0.9, 0.8, 0.5], [1, 0.9, 0.7])})
    assert [tr.name for tr in fig.data if tr.showlegend is not False] == ["concat", "cross_attention"]
    # a strategy keeps its colour whichever others score the case (it went by position: one missing shifted the rest)
    alone = F.survival_compare_figure({"cross_attention": (t, [0.95, 0.85, 0.6], None, None)})
    def colour(figure: object, name: str) -> str:
        return next(tr.line.color for tr in figure.data if tr.name == name and tr.showlegend is not False)  # type: ignore[attr-defined]

    assert colour(alone, "cross_attention") == colour(fig, "cross_attention") == F.STRATEGY_COLORS["cross_attention"]
    assert len(set(F.STRATEGY_COLORS.values())) == 7 and F.PALETTE[0] not in F.STRATEGY_COLORS.values()
    mine = F.survival_compare_figure({"coattention_image": (t, [0.9, 0.8, 0.7], None, None),
                                      "ehr_only (your cohort)": (t, [0.9, 0.8, 0.7], None, None)})
    assert colour(mine, "ehr_only (your cohort)") not in F.STRATEGY_COLORS.values()  # it took coattention_image's pink
    groups = F.survival_compare_figure({"low risk": (t, [0.9, 0.8, 0.7], None, None), "high risk": (t, [0.7, 0.5, 0.3], None, None)},
                                       colors=[F.RISK_GROUP_COLORS["low"], F.RISK_GROUP_COLORS["high"]])
    assert [tr.line.color for tr in groups.data if tr.showlegend is not False] == ["#2ca02c", "#d62728"]
    with pytest.raises(InputError, match=re.escape("colors: got 1")):
        F.survival_compare_figure({"a": (t, [0.9, 0.8, 0.7], None, None), "b": (t, [0.9, 0.8, 0.7], None, None)}, colors=["#000000"])
    heat = F.attention_heatmap(np.full((2, 4), 0.25), ["layer 1 head 1", "layer 1 head 2"], ["a", "b", "c", "d"])
    assert np.asarray(heat.data[0].z).shape == (2, 4) and list(heat.layout.yaxis.ticktext) == ["layer 1 head 1", "layer 1 head 2"]
    with pytest.raises(InputError, match=re.escape("labels: got 1 x 4, must match weights (2, 4)")):
        F.attention_heatmap(np.ones((2, 4)), ["only one"])
    strip = F.slice_strip(np.array([0.1, 0.5, 0.4]), selected=1)
    assert list(strip.data[0].marker.color) == [F.PALETTE[0], F.PALETTE[1], F.PALETTE[0]]
    assert list(strip.data[0].x) == [1, 2, 3]  # numbered from 1, as in the viewer, Export and the report
    hu, attr = volume
    mont = F.montage(hu, attr, [1, 3, 5], spacing_mm=(3.0, 0.5, 1.0), cols=2)
    assert len(mont.data) == 6 and [a.text for a in mont.layout.annotations if len(a.text) > 1] == ["slice 1", "slice 3", "slice 5"]
    assert sum(1 for tr in mont.data if tr.name == "attribution" and tr.showscale) == 1
    assert np.asarray(mont.data[3].z).max() == pytest.approx(1.0)  # slice 3 carries the map
    with pytest.raises(InputError, match="slices: got 6, is outside 0..5"):
        F.montage(hu, attr, [6])


def test_timeline_figure_uses_relative_days_and_marks_top_events() -> None:
    index = pd.Timestamp("2031-05-01")
    events = pd.DataFrame({
        "time": [index - pd.Timedelta(days=d) for d in (400, 100, 30, 2)],
        "code": ["DIAGNOSIS//ICD10//C34", "LAB//hgb", "LAB//crp", "MEDICATION//x"],
        "numeric_value": [np.nan, 11.5, 80.0, np.nan],
    })
    fig = F.timeline_figure(events, np.array([0.5, -0.1, 2.0, 0.0]), index, top_k=2)
    allx = np.asarray(fig.data[0].x, dtype=float)
    assert allx.tolist() == [-400.0, -100.0, -30.0, -2.0]
    top = fig.data[1]
    assert np.asarray(top.x, dtype=float).tolist() == [-30.0, -400.0] and list(top.text) == ["1", "2"]
    assert list(top.customdata) == ["LAB//crp", "DIAGNOSIS//ICD10//C34"]
    assert [r["code"] for r in fig.layout.meta["top"]] == ["LAB//crp", "DIAGNOSIS//ICD10//C34"]
    labels = [(a.text, a.x) for a in fig.layout.annotations if a.showarrow]
    assert labels == [("<b>1</b>", -30.0), ("<b>2</b>", -400.0)]
    assert list(fig.layout.yaxis.ticktext) == ["DIAGNOSIS", "LAB", "MEDICATION"]
    dump = json.dumps(fig.to_plotly_json(), default=str)
    assert "2031" not in dump and "2030" not in dump  # no dates anywhere in the figure
    with pytest.raises(InputError, match="attributions: got 3 values, must have one per event"):
        F.timeline_figure(events, np.ones(3), index)
    # attention 0 on every event (a site's codes the model never saw): nothing ranked or numbered (it numbered 1-8)
    unread = F.timeline_figure(events, np.zeros(4), index, top_k=8, kind="attention")
    assert len(unread.data) == 1 and not [a for a in unread.layout.annotations if a.showarrow]
    assert not (unread.layout.meta or {}).get("top")
    # a code from a user's file is text in the chart: Plotly made <a href> a link in the axis and the hover
    link = events.assign(code=['<a href="https:x.example">L</a>//1', "LAB//hgb", "LAB//crp", "<b>B</b>//2"])
    shown = F.timeline_figure(link, np.array([0.5, -0.1, 2.0, 0.0]), index, top_k=2)
    assert list(shown.layout.yaxis.ticktext) == ['&lt;a href="https:x.example"&gt;L&lt;/a&gt;', "&lt;b&gt;B&lt;/b&gt;", "LAB"]
    drawn = json.dumps([t.to_plotly_json() for t in shown.data] + [a.to_plotly_json() for a in shown.layout.annotations],
                       default=str)
    assert "<a " not in drawn and "&lt;a href" in drawn  # hover, top marks' customdata, the labels
    assert shown.layout.meta["top"][1]["code"] == '<a href="https:x.example">L</a>//1'  # the table escapes its own
    from core.report import _event_lines

    table = events.assign(score=0.0, attention=0.0, days_before_index=[400, 100, 30, 2])
    lines = _event_lines(None, table)  # the model's vocabulary is not needed when nothing was read
    assert lines[2].startswith("None of the case's 4 events is read by this model") and len(lines) == 4


def test_caption_and_safe_filename() -> None:
    text = FX.caption_text(model="demo", fusion="concat", method="gradcam", horizon_days=365, slice_index=4,
                          window="lung")
    assert text == "model demo | fusion concat | method gradcam | target risk 1 - S(t) at 365 d | slice 4 | window lung"
    assert FX.safe_filename("../../etc/passwd", "png") == "etc_passwd.png"
    assert FX.safe_filename("", ".PDF") == "figure.pdf"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("suffix", (".png", ".svg", ".pdf"))
def test_export_writes_valid_files_without_metadata(volume: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, engine: str, suffix: str) -> None:
    monkeypatch.setenv("CORE_EXPORT_ENGINE", engine)
    hu, attr = volume
    fig = F.slice_overlay(hu[3], attr[3], window=(-1000, 200), spacing_mm=(0.5, 1.0), title="case 1")
    caption = FX.caption_text(model="demo", method="saliency", horizon_days=365, slice_index=3, window=(-1000, 200))
    out = FX.export(fig, tmp_path / f"case_1{suffix}", caption=caption)
    data = out.read_bytes()
    if suffix == ".png":
        from PIL import Image

        with Image.open(out) as im:
            assert im.info["dpi"][0] >= 300 and im.info["dpi"][1] >= 300
            width_in = (fig.layout.width or 700) / 96
            assert im.size[0] >= int(width_in * 300) - 2  # pixels for the physical width at 300 dpi
        kinds = png_chunks(data)
        assert b"pHYs" in kinds and not {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"} & set(kinds)
    elif suffix == ".svg":
        root = ET.fromstring(data)
        assert root.tag.endswith("svg") and b"<metadata" not in data
        assert b"target risk 1 - S(t) at 365 d" in data  # the caption is in the figure
    else:
        assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
        for key in (b"Author", b"Title", b"Creator", b"Producer"):
            m = re.search(rb"/" + key + rb"\s*\(([^)]*)\)", data)
            assert m is None or m.group(1).strip() == b"", key
        assert b"Kaleido" not in data and b"Matplotlib" not in data


def test_export_rejects_unknown_suffix_low_dpi_and_missing_folder(tmp_path: Path) -> None:
    fig = F.slice_strip(np.ones(3))
    with pytest.raises(InputError, match="out: got f.gif, has an unknown suffix; fix: end the file name in .png, .svg or .pdf"):
        FX.export(fig, tmp_path / "f.gif")
    with pytest.raises(InputError, match="dpi: got 150, is below 300"):
        FX.export(fig, tmp_path / "f.png", dpi=150)
    with pytest.raises(InputError, match="folder does not exist"):
        FX.export(fig, tmp_path / "nope" / "f.png")


def test_timeline_clips_a_far_birth_event_and_draws_attention_on_a_sequential_scale() -> None:
    index = pd.Timestamp("2031-05-01")
    days = [20000, 700, 650, 400, 100, 30, 2]  # (a second far record just after the first is checked below)
    events = pd.DataFrame({"time": [index - pd.Timedelta(days=d) for d in days],
                           "code": ["MEDS_BIRTH", "DIAGNOSIS//a", "LAB//b", "LAB//c", "LAB//d", "MEDICATION//e", "LAB//f"],
                           "numeric_value": np.nan})
    weights = np.array([0.5, 0.05, 0.1, 0.02, 0.2, 0.08, 0.05])
    fig = F.timeline_figure(events, weights, index, top_k=3, kind="attention")
    lo, hi = fig.layout.xaxis.range
    assert -800 < lo < -700 and hi > 0  # the window of the case's visits, not -20,000 days
    assert fig.layout.meta["outside"] == 1
    notes = [a.text for a in fig.layout.annotations if not a.showarrow]
    assert notes == ["◀ 1 earlier event not shown (from day -20000: MEDS_BIRTH)"]
    marker = fig.data[0].marker
    assert marker.colorscale[0][1] != marker.colorscale[-1][1] and marker.cmin == 0.0 and marker.cmid is None
    assert marker.colorbar.title.text == "attention"
    assert [r["code"] for r in fig.layout.meta["top"]] == ["MEDS_BIRTH", "LAB//d", "LAB//b"]
    assert [a.text for a in fig.layout.annotations if a.showarrow] == ["<b>2</b>", "<b>3</b>"]  # #1 is off the axis
    signed = F.timeline_figure(events, weights - 0.1, index, kind="attribution")
    assert signed.data[0].marker.cmid == 0.0 and signed.data[0].marker.colorbar.title.text == "attribution"
    crowded = F.timeline_figure(pd.DataFrame({"time": [index - pd.Timedelta(days=d) for d in (10, 10.25, 10.5, 10.75)],
                                              "code": ["LAB//x"] * 4, "numeric_value": np.nan}),
                                np.array([1.0, 0.9, 0.8, 0.7]), index, top_k=4)
    offsets = [(a.ax, a.ay) for a in crowded.layout.annotations if a.showarrow]
    assert len(set(offsets)) == 4  # four labels within a day on one row (axis about 15 days): four different places
    two_far = pd.concat([events.iloc[:1].assign(code="GENDER//F", time=index - pd.Timedelta(days=20084)), events])
    both = F.timeline_figure(two_far, np.append(0.01, weights), index, kind="attention")
    assert both.layout.meta["outside"] == 2 and -800 < both.layout.xaxis.range[0] < -700  # sex and birth records
    assert "GENDER" not in list(both.layout.yaxis.ticktext) and "MEDS_BIRTH" not in list(both.layout.yaxis.ticktext)
    short = F.timeline_figure(events.iloc[1:], weights[1:], index)
    assert short.layout.meta["outside"] == 0 and short.layout.xaxis.range[0] < -700
    with pytest.raises(InputError, match="kind: got heat, is not attribution or attention"):
        F.timeline_figure(events, weights, index, kind="heat")


def test_attention_maps_draw_no_padding_events_and_compare_marks_the_current_model() -> None:
    att = {"img<-ehr": np.random.default_rng(0).random((1, 2, 5, 20)), "ehr<-img": np.random.default_rng(1).random((1, 2, 20, 5))}
    assert F.attention_maps(att, None) == [] and F.attention_maps(att, pd.DataFrame({"code": []})) == []
    three = pd.DataFrame({"code": ["LAB//a", "LAB//b", "DX//c"], "time": [1, 2, 3]})
    maps = {m["key"]: m for m in F.attention_maps(att, three)}
    assert maps["img<-ehr"]["weights"].shape == (2, 3) and maps["img<-ehr"]["cols"][2] == "2: c"
    assert np.allclose(maps["ehr<-img"]["weights"], att["ehr<-img"][0, :, :3, :].mean(axis=1))
    t = np.array([10.0, 100.0, 400.0, 2000.0])
    fig = F.survival_compare_figure({"concat": (t, [0.9, 0.8, 0.7, 0.6], None, None),
                                     "ehr_only": (t, [0.95, 0.9, 0.85, 0.8], [0.9, 0.8, 0.7, 0.6], [1, 1, 0.9, 0.9])},
                                    current="ehr_only")
    named = {tr.name: tr for tr in fig.data if tr.showlegend is not False}
    assert named["ehr_only"].line.width > named["concat"].line.width
    assert named["ehr_only"].legendgrouptitle.text == "current model:" and named["concat"].legendgrouptitle.text is None
    hover = [tr.hovertemplate for tr in fig.data if (tr.name or "").startswith("risk at 1 year")]
    assert hover and "concat: 20.0%" in hover[0] and "ehr_only: 10.0%" in hover[0]  # S holds from day 100 to 400
    with pytest.raises(InputError, match="current: got x, is not one of the curves"):
        F.survival_compare_figure({"concat": (t, [0.9, 0.8, 0.7, 0.6], None, None)}, current="x")


def test_forest_plots_of_models_and_subgroups_keep_order_intervals_and_real_metrics() -> None:
    """The comparison and subgroup forest plots on real evaluations: the shipped demo models' saved test metrics
    (C-index, IBS and their bootstrap intervals as markers and asymmetric bars, the oracle line), and a subgroup
    table of one of them computed here (a group without a C-index keeps its row, in the given order)."""
    from core.evaluate.subgroups import subgroup_table
    from tests.conftest import ROOT

    saved = {}
    for name in ("image_only", "ehr_only", "cross_attention"):
        d = json.loads((ROOT / "assets" / "demo_models" / name / "demo_test_metrics.json").read_text())
        saved[name] = d.get("metrics", d)
    fig = F.model_comparison_figure(saved, current="cross_attention")
    c_index, ibs = fig.data[0], fig.data[1]
    assert list(c_index.y) == list(saved) == list(fig.layout.yaxis.categoryarray)
    for k, (name, m) in enumerate(saved.items()):
        lo, hi = m["c_index_ci"]
        assert c_index.x[k] == m["c_index"] and lo < m["c_index"] < hi
        assert c_index.error_x.arrayminus[k] == pytest.approx(m["c_index"] - lo, abs=1e-6)
        assert c_index.error_x.array[k] == pytest.approx(hi - m["c_index"], abs=1e-6)
        assert ibs.x[k] == m["ibs"] and ibs.error_x.array[k] == pytest.approx(m["ibs_ci"][1] - m["ibs"], abs=1e-6)
    assert list(c_index.marker.color).count(F.PALETTE[0]) == 1 and c_index.marker.color[2] == F.PALETTE[0]
    oracle = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(oracle) == 1 and oracle[0].x0 == pytest.approx(saved["image_only"]["oracle_c_index"])
    assert saved["cross_attention"]["c_index"] > saved["ehr_only"]["c_index"]  # the fusion is right of ehr_only

    rng = np.random.default_rng(3)
    n = 300
    group = np.where(rng.random(n) < 0.9, "a", "b")
    rate = 0.002 * rng.uniform(0.5, 2, n)
    times = np.linspace(5, 900, 60)
    t_true = rng.exponential(1 / rate)
    time = np.minimum(t_true, 800.0)
    event = (t_true <= 800.0).astype(int)
    event[group == "b"] = 0  # no event in group b: no C-index, but counts and an observed risk of 0
    sub = subgroup_table(times, np.exp(-np.outer(rate, times)), time, event, time, event, group, [365], n_boot=20)
    labels = [g["label"] for g in sub["groups"]]
    fig = F.subgroup_figure(sub["groups"], labels, 365, overall_c=0.6)
    c_trace, observed, predicted = fig.data
    assert labels == ["a", "b"] and list(fig.layout.yaxis.categoryarray) == labels
    assert list(c_trace.y) == ["a"] and sub["groups"][1]["c_index"] is None
    assert list(observed.y) == ["a", "b"] and observed.x[1] == pytest.approx(0.0)
    a = sub["groups"][0]["calibration"][365]
    assert predicted.x[0] == pytest.approx(a["predicted"]) and abs(a["predicted"] - a["observed"]) < 0.08
    assert observed.error_x.array[0] == pytest.approx(a["observed_ci"][1] - a["observed"], abs=1e-6)
