"""Figures to files for publication: PNG (>= 300 dpi), SVG and PDF with a caption and nothing identifying.

Export goes through kaleido (headless Chromium) when it can run and falls back
to a matplotlib renderer of the same traces otherwise (or when
``CORE_EXPORT_ENGINE=matplotlib``), so a machine without a browser still
exports every format. Exported figures carry a caption (model, fusion, method,
target horizon, slice, window) and no text metadata; file names are built from
non-identifying parts only.

>>> safe_filename("case 7/../Smith, John", ".png")
'case_7_Smith_John.png'
>>> export_name("saliency", 3, "png", method="integrated_gradients", slice_index=12)
'saliency_case03_integratedgradients_slice012.png'
"""

from __future__ import annotations

import atexit
import io
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from core.errors import InputError
from core.figures import resolve_window

EXPORT_SUFFIXES = (".png", ".svg", ".pdf")
MIN_DPI = 300
CSS_PX_PER_INCH = 96.0  # plotly sizes are CSS pixels


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
    target_value: float | None = None,
) -> str:
    """The export caption: model, fusion, method, target horizon (and the target's value for this case), slice, window.

    >>> caption_text(model="demo", fusion="concat", method="saliency", horizon_days=365, slice_index=12, window=(-160, 240))
    'model demo | fusion concat | method saliency | target risk 1 - S(t) at 365 d | slice 12 | window [-160, 240] HU'
    >>> caption_text(horizon_days=365, target_value=0.7461)
    'target risk 1 - S(t) at 365 d = 74.6 %'
    """
    parts: list[str] = []
    if model:
        parts.append(f"model {model}")
    if fusion:
        parts.append(f"fusion {fusion}")
    if method:
        parts.append(f"method {method}")
    if horizon_days is not None:
        value = "" if target_value is None else f" = {100 * float(target_value):.1f} %"
        parts.append(f"target risk 1 - S(t) at {float(horizon_days):g} d{value}")
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


def export_name(kind: str, case_number: int, suffix: str, *, method: str | None = None, slice_index: int | None = None,
                demo: bool = False, cohort: bool = False) -> str:
    """A file name with nothing identifying: kind, a case number (an uploaded case's own; ``demo``: a demo case's
    session-local number, named apart from it; ``cohort``: that of a patient of one of the user's cohorts), method,
    slice."""
    parts = [kind, f"{'cohort' if cohort else 'demo' if demo else 'case'}{case_number:02d}"]
    if method:
        parts.append(method)
    if slice_index is not None:
        parts.append(f"slice{slice_index:03d}")
    safe = "_".join("".join(ch for ch in p if ch.isalnum() or ch in "-") for p in parts)
    return f"{safe}.{suffix.lstrip('.')}"


# --------------------------------------------------------------------------- export

_KALEIDO_LOCK = threading.Lock()
# Kaleido's own deprecation notes are silenced by one filter installed at import and never removed (a
# ``warnings.catch_warnings`` around the call would swap the process-wide filter list from a request thread).
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(kaleido|plotly\.io\._kaleido)")
# plotly passes its own options to kaleido's server, which says (every figure) that it ignores them: no news for a user
warnings.filterwarnings("ignore", message="The kopts argument is ignored if using a server", category=UserWarning)
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
    from matplotlib.colors import LinearSegmentedColormap
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
    from core.figures.pyplot import pyplot

    plt = pyplot()

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
        elif shape.type == "line" and shape.xref in (None, "x") and shape.yref in (None, "y"):  # a scale bar
            get_ax("x", "y").plot([float(shape.x0), float(shape.x1)], [float(shape.y0), float(shape.y1)],
                                  color=_rgba(shape.line.color) if shape.line and shape.line.color else "gray",
                                  linewidth=float(shape.line.width or 1) if shape.line else 1.0)
    for ann in layout.annotations or ():
        if ann.xref == "paper" and ann.yref == "paper":
            if caption and _text(ann.text).replace("\n", " ") == caption:
                continue
            mfig.text(left + float(ann.x or 0) * (1 - left - right), bottom + float(ann.y or 0) * (1 - top - bottom),
                      _text(ann.text), fontsize=8, ha="center", va="bottom")
        elif ann.xref in (None, "x") and ann.yref in (None, "y") and ann.x is not None:
            get_ax("x", "y").text(float(ann.x), float(ann.y or 1.0), _text(ann.text), fontsize=7, va="bottom",
                                  ha={"left": "left", "right": "right"}.get(str(ann.xanchor), "center"),  # plotly: auto
                                  color=ann.font.color if ann.font and ann.font.color else "black")
        elif str(ann.xref).endswith(" domain") and str(ann.yref).endswith(" domain"):  # e.g. orientation letters
            ax = get_ax(str(ann.xref).split()[0], str(ann.yref).split()[0])
            ax.text(float(ann.x or 0), float(ann.y or 0), _text(ann.text), transform=ax.transAxes, fontsize=8,
                    ha={"center": "center", "right": "right"}.get(str(ann.xanchor), "left"),
                    va={"top": "top", "middle": "center"}.get(str(ann.yanchor), "bottom"),
                    color=ann.font.color if ann.font and ann.font.color else "black")
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


