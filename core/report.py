"""One-page case report (PDF, matplotlib): warnings, survival, risks, top slices with overlays, the strategies'
risks, top events, model card.

Nothing identifying goes in: the caller passes a neutral ``case_label`` (a
session case number), event times are shown as days before the index date,
and the PDF's information dictionary holds only a neutral title. The report
refuses a ``case_label`` that contains the case's subject id. Content streams
are written uncompressed so that the text of the page can be audited with a
byte search.

The first page is laid out from the top down in inches (:class:`_Flow`): text
blocks take the height of their wrapped lines, the two figure rows share what is
left (the slice row shrinks to one line when there is no CT attribution), and a
block that still does not fit is cut with a "... continued on page 2" line; its
lines go whole onto the continuation pages, so no block runs into another or into
the footer and no warning is lost.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.errors import InputError
from core.explain import METHOD_LABELS
from core.horizons import HORIZONS, beyond_grid, horizon_label, risk_at, risk_band_at

if TYPE_CHECKING:
    from core.explain import Attribution
    from core.models.types import CaseInputs, CasePrediction
    from core.registry import LoadedModel

DISCLAIMER = "Research use only, not a medical device. Not for clinical decisions."
PAGE_INCHES = (8.27, 11.69)  # A4 portrait
MARGIN_IN = 0.55
LINE = 1.32  # line height / font size


def readable_line(line: str) -> str:
    """A model-card line with a JSON object of horizons (``{"30": 0.85, ...}``) written out for people.

    >>> readable_line('Time-dependent AUC: {"30": 0.8575, "365": 0.7997, "1825": null}')
    'Time-dependent AUC: 30 days 0.858, 1 year 0.800, 5 years n/a'
    """
    def repl(m: re.Match[str]) -> str:
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            return m.group(0)
        parts = []
        for k, v in obj.items():
            key = horizon_label(float(k)) if re.fullmatch(r"\d+(\.\d+)?", str(k)) else str(k)
            parts.append(f"{key} {v:.3f}" if isinstance(v, (int, float)) else f"{key} {'n/a' if v is None else v}")
        return ", ".join(parts)

    return re.sub(r"\{[^{}]*\}", repl, line)


def card_summary(card: str, max_lines: int = 8) -> str:
    """The model card's bullet lines (Model and Metrics sections), shortened for the report; a recalibrated copy's
    first line of its Recalibration section comes first (its risks are those of another site than its metrics').

    >>> card_summary("## Metrics (test split)\\n- C 0.7\\n## Recalibration to a site\\n- Recalibrated on `B`\\n- more")
    'Recalibrated on B\\nC 0.7'
    """
    keep: dict[str, list[str]] = {"recalibration to a site": [], "metrics (test split)": [], "model": []}
    section = ""
    for line in card.splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        if section in keep and line.startswith("- "):
            keep[section].append(readable_line(line[2:].replace("`", "")))
    # the metrics first: they are short and what a reader of the report looks for
    return "\n".join((keep["recalibration to a site"][:1] + keep["metrics (test split)"] + keep["model"])[:max_lines])


def card_sections(card: str) -> list[tuple[str, str]]:
    """A model card (markdown) as ``(heading, body)`` pairs; text before the first ``## `` heading has heading ""."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in card.splitlines():
        if line.startswith("## "):
            out.append((line[3:].strip(), []))
        else:
            out[-1][1].append(line)
    return [(h, "\n".join(body).strip()) for h, body in out if h or "\n".join(body).strip()]


def metric_rows(body: str) -> list[dict[str, str]]:
    """The ``- name: value`` bullets of a card section as table rows, horizon objects written out.

    >>> metric_rows("- Harrell's C: 0.740" + chr(10) + '- Time-dependent AUC: {"30": 0.8576, "365": 0.7998}')
    [{'metric': "Harrell's C", 'value': '0.740'}, {'metric': 'Time-dependent AUC', 'value': '30 days 0.858, 1 year 0.800'}]
    """
    rows = []
    for line in body.splitlines():
        if line.startswith("- ") and ":" in line:
            name, _, value = line[2:].partition(":")
            rows.append({"metric": name.strip(), "value": readable_line(value.strip())})
    return rows


class _Flow:
    """Top-down placement on the page in inches; ``y`` is the distance from the top edge."""

    def __init__(self, fig: Any) -> None:
        self.fig = fig
        self.w, self.h = PAGE_INCHES
        self.y = MARGIN_IN

    def text(self, x_in: float, y_in: float, lines: Sequence[str], size: float, **kw: Any) -> None:
        if lines:
            self.fig.text(x_in / self.w, 1.0 - y_in / self.h, "\n".join(lines), fontsize=size, va="top",
                          linespacing=1.2, **kw)

    def axes(self, x_in: float, y_in: float, w_in: float, h_in: float) -> Any:
        return self.fig.add_axes((x_in / self.w, 1.0 - (y_in + h_in) / self.h, w_in / self.w, h_in / self.h))


def height(n_lines: int, size: float) -> float:
    """Inches taken by ``n_lines`` of text at ``size`` points."""
    return n_lines * size * LINE / 72.0


#: a block cut on the first page, printed whole on the continuation pages: (heading, lines, size, monospace)
Continued = tuple[str, list[str], float, bool]


def _fit(lines: list[str], room_in: float, size: float, heading: str, rest: list[Continued],
         mono: bool = False) -> list[str]:
    """``lines`` cut to the room, the last kept line pointing to the continuation pages, where the whole block
    (``heading``) goes: appended to ``rest``."""
    fits = int(room_in / (size * LINE / 72.0))
    if len(lines) <= fits:
        return lines
    keep = max(fits - 1, 0)
    rest.append((heading, lines, size, mono))
    return lines[:keep] + [f"... ({len(lines) - keep} more lines: the whole block is on page 2)"] if fits > 0 else []


def _wrap(items: Sequence[str], width: int, bullet: str = "") -> list[str]:
    out: list[str] = []
    for item in items:
        out += textwrap.wrap(str(item), width, initial_indent=bullet, subsequent_indent=" " * len(bullet)) or [""]
    return out


def strategy_lines(table: pd.DataFrame | None, skipped: Sequence[str] = ()) -> list[str]:
    """The strategies' risk table as fixed-width text lines (``*`` marks the model in use, first: a table cut to the
    first page keeps its row); the name column as wide
    as its longest name (a model trained in the app: "ehr_only (your cohort, 27 Nov 18:39)"), cut with "..." only
    where the line would not fit the page.

    >>> t = pd.DataFrame({"strategy": ["ehr_only (your cohort, 27 Nov 18:39)", "concat"], "current": [False, True],
    ...                   "risk 1 year": [0.25, 0.5]})
    >>> print("\\n".join(strategy_lines(t)))
    strategy                                      risk 1 year
    * concat                                           50.0 %
      ehr_only (your cohort, 27 Nov 18:39)             25.0 %
    """
    if table is None or not len(table):
        return []
    cols = [c for c in table.columns if c not in ("strategy", "current", "survival 5 years")]  # 1 - the 5-year risk
    room = 112 - 18 * len(cols)  # monospace 7 pt: 112 characters fit the width
    width = min(max(20, 3 + max(len(str(v)) for v in table["strategy"])), room)
    head = f"{'strategy':<{width}}" + "".join(f"{c:>18}" for c in cols)
    lines = [head]
    for r in sorted(table.to_dict("records"), key=lambda r: not r.get("current")):  # stable: the rest in order
        name = ("* " if r.get("current") else "  ") + str(r["strategy"])
        name = name if len(name) < width else name[:width - 4] + "..."
        cells = []
        for c in cols:
            v = r[c]
            text = "past grid" if pd.isna(v) else (f"{100 * v:.1f} %" if c.startswith("risk") else f"{v:.2f}")
            cells.append(f"{text:>18}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return lines + _wrap([f"not scored: {s}" for s in skipped], 112, "  ")  # monospace 7 pt: 112 fit the width


def case_report_pdf(out: str | Path, *, model: LoadedModel, inputs: CaseInputs, prediction: CasePrediction,
                    volume_hu: np.ndarray | None, spacing_mm: Sequence[float] | None, attribution: Attribution | None,
                    events_table: pd.DataFrame | None, cohort_km: tuple[Any, Any, Any, Any] | None,
                    model_card_summary: str, case_label: str, warnings: Sequence[str] = (),
                    strategy_risks: pd.DataFrame | None = None, strategies_skipped: Sequence[str] = (),
                    clinical_values: Mapping[str, float] | None = None,
                    conformal_bound: tuple[float, float, float] | None = None,
                    group_km: tuple[tuple[Any, Any, Any, Any], str] | None = None,
                    window: str = "soft_tissue") -> Path:
    """Write the one-page report to ``out`` (.pdf) and return its path.

    ``window``: the name of the CT window (``core.io.windows.WINDOWS``: the viewer's) the slices are drawn in, named
    under them.

    ``conformal_bound``: ``(days, horizon, level)`` as Case review shows it (a bound ``days``, capped at ``horizon``,
    that at least ``level`` of patients like the validation patients reach before their event: a guarantee over such
    patients, not this patient's own probability): an orange span on the curve and a line beside the
    risks; None when the page shows none. ``group_km``: ``((t, s, lower, upper), label)``, the Kaplan-Meier curve of
    the reference risk group the case falls into, Case review's green curve.

    ``clinical_values``: the case's curated features (features.csv row, or an uploaded case's clinical values); the
    ones the model reads are printed under the timeline events.

    ``warnings`` are the case's warnings exactly as the page shows them
    (``core.app.case_warnings.gather_case_warnings``); ``strategy_risks`` the
    per-strategy risk table (``strategy_risk_table``) and ``strategies_skipped``
    the strategies that cannot score the case, with the reason.
    """
    from core.figures.pyplot import pyplot

    plt = pyplot()
    import matplotlib

    target = Path(out)
    if target.suffix.lower() != ".pdf":
        raise InputError("out", target.name, "is not a .pdf file", "end the report name in .pdf")
    if not target.parent.exists():
        raise InputError("out", str(target.parent), "folder does not exist", "create the folder first")
    sid = str(getattr(inputs, "subject_id", "") or "")
    if sid and sid in str(case_label):
        raise InputError("case_label", "contains the subject id", "would identify the patient in the report",
                         "pass a neutral label such as 'case 3'")
    from matplotlib.backends.backend_pdf import PdfPages

    metadata = {"Title": "Case report", "Author": None, "Subject": None, "Keywords": None, "Creator": None,
                "Producer": None, "CreationDate": None}
    with matplotlib.rc_context({"pdf.compression": 0, "font.size": 8}), PdfPages(target, metadata=metadata) as pdf:
        fig = plt.figure(figsize=PAGE_INCHES)
        rest = _draw(fig, model, prediction, volume_hu, spacing_mm, attribution, events_table, cohort_km,
                     model_card_summary, case_label, list(warnings), strategy_risks, list(strategies_skipped),
                     dict(clinical_values or {}), conformal_bound, group_km, window)
        pdf.savefig(fig)
        plt.close(fig)
        for page_fig in _continuation(plt, rest, case_label):
            pdf.savefig(page_fig)
            plt.close(page_fig)
    return target


def _footer(fig: Any, page: _Flow) -> None:
    fig.text(MARGIN_IN / page.w, 0.5 * MARGIN_IN / page.h, DISCLAIMER + " Times are days relative to the index date.",
             fontsize=7, color="0.3", va="bottom")


def _continuation(plt: Any, rest: list[Continued], case_label: str) -> list[Any]:
    """The pages that carry the blocks cut on the first one, whole, flowing from the top down."""
    figs: list[Any] = []
    page: _Flow | None = None
    bottom = PAGE_INCHES[1] - MARGIN_IN - 0.1
    for heading, lines, size, mono in rest:
        todo = list(lines)
        title = heading
        while todo:
            if page is None or page.y + height(2, size) > bottom:
                page = _Flow(plt.figure(figsize=PAGE_INCHES))
                figs.append(page.fig)
                page.text(MARGIN_IN, page.y, [f"Case report: {case_label} (page {len(figs) + 1})"], 11, weight="bold")
                page.y += 0.32
                _footer(page.fig, page)
            page.text(MARGIN_IN, page.y, [title], 8.5, weight="bold")
            page.y += height(1, 8.5)
            n = max(int((bottom - page.y) / (size * LINE / 72.0)), 1)
            chunk, todo = todo[:n], todo[n:]
            page.text(MARGIN_IN, page.y, chunk, size, **({"family": "monospace"} if mono else {}))
            page.y += height(len(chunk), size) + 0.15
            title = f"{heading} (continued)"
    return figs


#: the conformal bound's colour, Case review's orange (core.figures.survival_chart.BOUND_COLOR)
BOUND_RGB = (200 / 255, 140 / 255, 0.0)


def _draw(fig: Any, model: Any, prediction: Any, volume_hu: np.ndarray | None, spacing_mm: Sequence[float] | None,
          attribution: Any, events_table: pd.DataFrame | None, cohort_km: Any, card: str, case_label: str,
          warnings: list[str], strategy_risks: pd.DataFrame | None, skipped: list[str],
          clinical_values: dict[str, float], bound: tuple[float, float, float] | None = None,
          group_km: tuple[tuple[Any, Any, Any, Any], str] | None = None,
          window: str = "soft_tissue") -> list[Continued]:
    """Draw the first page; return the blocks cut on it (for the continuation pages)."""
    rest: list[Continued] = []
    page = _Flow(fig)
    width = page.w - 2 * MARGIN_IN
    x0 = MARGIN_IN
    footer_top = page.h - MARGIN_IN + 0.05
    # ---- header
    page.text(x0, page.y, [f"Case report: {case_label}"], 14, weight="bold")
    page.y += 0.32
    head = _wrap([f"Model {model.model_dir.name}: {model.fusion} fusion, {model.config.head} head. "
                  f"Modalities used: {', '.join(prediction.modalities_used) or 'none'}."], 110)
    page.text(x0, page.y, head, 9)
    page.y += height(len(head), 9)
    page.text(x0, page.y, [DISCLAIMER], 9, color="#b00020", weight="bold")
    page.y += height(1, 9) + 0.08
    # ---- warnings, as on the page
    warn = _wrap(warnings, 128, "- ") if warnings else ["None: the page showed no warning for this case."]
    warn = _fit(warn, 2.2, 7.5, f"Warnings ({len(warnings)}, as shown on the case review page)", rest)
    page.text(x0, page.y, [f"Warnings ({len(warnings)}, as shown on the case review page)"], 8.5, weight="bold",
              color="#b00020" if warnings else "0.2")
    page.y += height(1, 8.5)
    page.text(x0, page.y, warn, 7.5, color="#7a0014" if warnings else "0.3")
    page.y += height(len(warn), 7.5) + 0.12
    # ---- the text blocks below the figures, measured first
    strat = strategy_lines(strategy_risks, skipped)
    events = _event_lines(model, events_table) + value_lines(model.config.ehr.curated_features, clinical_values)
    card_lines = ["Model card", ""] + _wrap((card or "").splitlines(), 52)
    left_w = 0.62 * width
    room_below = footer_top - page.y
    with_slices = attribution is not None and volume_hu is not None and bool(attribution.top_slices)
    slice_nominal = 1.9 if with_slices else 0.35  # without a map the slice row is one line of text
    fixed = 3.0 + slice_nominal + 0.5  # survival row, slice row and gaps, at their nominal sizes
    text_room = max(room_below - fixed, 1.2)
    strat = _fit(strat, min(height(len(strat) + 1, 7), 0.45 * text_room), 7, "Same case under every fusion strategy",
                 rest, mono=True)
    strat_h = height(len(strat) + 1, 7) + 0.1 if strat else 0.0
    needed = max(height(len(events), 6.5), height(len(card_lines), 6.5))
    top = 3.0 + slice_nominal
    plots = min(max(room_below - strat_h - 0.5 - needed, 0.73 * top), top)  # the figures shrink before text is cut
    low_room = room_below - strat_h - 0.5 - plots
    events = _fit(events, low_room, 6.5, "Timeline events and clinical values", rest, mono=True)
    card_lines = _fit(card_lines, low_room, 6.5, "Model card", rest)
    if rest and rest[-1][0] == "Model card":  # whole on page 2, across the page's width
        rest[-1] = ("Model card", _wrap((card or "").splitlines(), 120), 6.5, False)
    surv_h, slice_h = plots * 3.0 / top, plots * slice_nominal / top
    # ---- survival curve and risks
    ax = page.axes(x0 + 0.45, page.y + 0.2, 0.62 * width - 0.45, surv_h - 0.6)
    _survival_axes(ax, model, prediction, cohort_km, bound, group_km)
    page.text(x0 + 0.66 * width, page.y + 0.2, _risk_lines(prediction, attribution, bound, window), 8,
              family="monospace")
    page.y += surv_h
    # ---- top slices
    _slices(page, x0, width, slice_h, volume_hu, spacing_mm, attribution, window)
    page.y += slice_h + 0.1
    # ---- strategies
    if strat:
        page.text(x0, page.y, ["Same case under every fusion strategy (* = the model of this report)"], 8,
                  weight="bold")
        page.text(x0, page.y + height(1, 8), strat, 7, family="monospace")
        page.y += strat_h + 0.05
    # ---- events and model card
    page.text(x0, page.y, events, 6.5, family="monospace")
    page.text(x0 + left_w + 0.03 * width, page.y, card_lines, 6.5)
    _footer(fig, page)
    return rest


def _survival_axes(ax: Any, model: Any, prediction: Any, cohort_km: Any,
                   bound: tuple[float, float, float] | None = None,
                   group_km: tuple[tuple[Any, Any, Any, Any], str] | None = None) -> None:
    times = np.asarray(prediction.times, dtype=float)
    surv = np.asarray(prediction.survival, dtype=float)
    if cohort_km is not None:
        kt, ks, klo, khi = (np.asarray(a, dtype=float) for a in cohort_km)
        ax.fill_between(kt, klo, khi, step="post", color="0.6", alpha=0.25, linewidth=0)
        ax.step(kt, ks, where="post", color="0.4", linestyle="--", label="cohort Kaplan-Meier")
    if group_km is not None:  # Case review's green curve: the patients of the case's risk group
        gt, gs, glo, ghi = (np.asarray(a, dtype=float) for a in group_km[0])
        ax.fill_between(gt, glo, ghi, step="post", color="#2ca02c", alpha=0.12, linewidth=0)
        ax.step(gt, gs, where="post", color="#2ca02c", linewidth=1.2, label=f"Kaplan-Meier, {group_km[1]}")
    if prediction.modalities_used:  # a model that read nothing of the case has no curve for it
        ax.fill_between(times, np.asarray(prediction.lower, float), np.asarray(prediction.upper, float), step="post",
                        color="#1f77b4", alpha=0.25, linewidth=0, label=f"uncertainty band ({model.uncertainty})")
        ax.step(times, surv, where="post", color="#1f77b4", linewidth=2, label="this case")
    else:
        ax.text(0.5, 0.5, "No curve for this case:\nthe model read none of its inputs\n(see the warnings)",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#b00020",
                bbox={"facecolor": "white", "edgecolor": "#b00020", "alpha": 0.95, "boxstyle": "round,pad=0.4"})
    if bound is not None and prediction.modalities_used and bound[0] > 0:  # Case review's orange span
        ax.axvspan(0, bound[0], color=BOUND_RGB, alpha=0.12, linewidth=0)
        ax.axvline(bound[0], color=BOUND_RGB, linewidth=1.5,
                   label=f"{100 * bound[2]:.0f} % conformal bound: T >= {bound[0]:.0f} d")
    for h in HORIZONS:
        if h <= times[-1]:
            ax.axvline(h, color="0.7", linestyle=":", linewidth=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("days from index date")
    ax.set_ylabel("survival S(t)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=6.5, framealpha=0.85)  # five entries: where they hide the least
    ax.set_title("Individual survival curve vs cohort", fontsize=9)


def _risk_lines(prediction: Any, attribution: Any, bound: tuple[float, float, float] | None = None,
                window: str = "soft_tissue") -> list[str]:
    times = np.asarray(prediction.times, dtype=float)
    risks = risk_at(times, np.asarray(prediction.survival, dtype=float), HORIZONS)
    band = risk_band_at(times, prediction.lower, prediction.upper, HORIZONS)
    lines = ["Predicted risk 1 - S(t) (band)", ""]
    for h in HORIZONS:
        r = None if h in beyond_grid(times, (h,)) else risks[h]
        shown = "not scored" if not prediction.modalities_used else ("past the grid" if r is None else
                                                                    f"{100 * r:5.1f} % ({100 * band[h][0]:.1f}-{100 * band[h][1]:.1f})")
        lines.append(f"{horizon_label(h):>8}:  " + shown)
    if bound is not None and prediction.modalities_used:
        lines += ["", f"Event time, {100 * bound[2]:.0f} % bound", f"(conformal): >= {bound[0]:.0f} d",
                  f"(capped at {bound[1]:.0f} d; holds for", f"{100 * bound[2]:.0f} % of similar patients,",
                  "not this patient's own", "probability)"]
    if attribution is not None:
        win = _window(window)
        lines += ["", "Explanation", f"method: {METHOD_LABELS.get(attribution.method, attribution.method)}"] + \
            textwrap.wrap(f"target: {attribution.target}", 30) + \
            textwrap.wrap(f"slices: {win.label} window [{win.low:g}, {win.high:g}] HU", 30)
    return lines


def _window(name: str) -> Any:
    """The CT window ``name`` (``core.io.windows.WINDOWS``), soft tissue for a name it does not hold."""
    from core.io.windows import WINDOWS

    return WINDOWS.get(name, WINDOWS["soft_tissue"])


def _slices(page: _Flow, x0: float, width: float, h: float, volume_hu: np.ndarray | None,
            spacing_mm: Sequence[float] | None, attribution: Any, window: str = "soft_tissue") -> None:
    slices: list[tuple[int, float]] = []
    if attribution is not None and volume_hu is not None and attribution.top_slices:
        z_mm = float((spacing_mm or (1.0,))[0])
        from core.figures.slices import spaced_slices  # each at least 10 mm apart: not three 1 mm slices of one lesion

        slices = spaced_slices(np.abs(np.asarray(attribution.map)).sum(axis=(1, 2)), z_mm)
    if not slices:
        page.text(x0, page.y + 0.05, ["No CT attribution for this case."], 8)
        return
    n = int(np.asarray(volume_hu).shape[0])
    w = (width - 0.4) / 3
    # one colour scale for the panels: a slice holding a tenth of the map is not drawn as bright as the top one
    top = max(float(np.percentile(np.abs(attribution.map[k]), 99.5)) or float(np.abs(attribution.map[k]).max())
              for k, _ in slices) or 1.0
    for j, (k, share) in enumerate(slices):
        a = page.axes(x0 + j * (w + 0.2), page.y + 0.25, w, h - 0.3)
        a.axis("off")
        lo, hi = _window(window)
        sp = [float(v) for v in (spacing_mm or (1.0, 1.0, 1.0))][-2:]
        hu = np.asarray(volume_hu)[k]
        extent = (0, hu.shape[1] * sp[1], hu.shape[0] * sp[0], 0)
        a.imshow(hu, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        m = np.abs(attribution.map[k])
        over = np.ma.masked_less(np.clip(m / top, 0, 1), 0.15)
        a.imshow(over, cmap="hot", vmin=0, vmax=1, alpha=0.6, extent=extent, interpolation="bilinear")
        for text, x, y, ha, va in (("A", 0.5, 0.99, "center", "top"), ("P", 0.5, 0.01, "center", "bottom"),
                                   ("R", 0.01, 0.5, "left", "center"), ("L", 0.99, 0.5, "right", "center")):
            a.text(x, y, text, transform=a.transAxes, ha=ha, va=va, fontsize=6, color="white")  # as in the viewer
        # slices are numbered from 1 (inferior) everywhere: viewer title, export caption and file name
        a.set_title(f"axial slice {k + 1}/{n} ({100 * share:.1f} % of |map|)", fontsize=8)


def _event_lines(model: Any, events_table: pd.DataFrame | None) -> list[str]:
    text = ["Top timeline events (integrated gradients of the risk; + raises it)", ""]
    if events_table is None or not len(events_table):
        return text + ["No timeline events used by this model for this case."]
    scored = [c for c in ("score", "attention") if c in events_table.columns]
    if not np.any(np.nan_to_num(events_table[scored].to_numpy(dtype=float))):
        return text + [f"None of the case's {len(events_table)} events is read by this model (codes it was",
                       "not trained on): no event raised or lowered the risk."]
    from core.deid.text import redact_codes

    # free text outside the model's own code vocabulary could hold PHI: it never reaches the PDF
    vocabulary = set(model.config.ehr.sequence["codes"]) if model.config.ehr.sequence else set()
    shown = redact_codes(events_table["code"].tolist(), vocabulary)
    order = np.argsort(-np.abs(events_table["score"].to_numpy(dtype=float)), kind="stable")[:8]
    for i in order:
        row = events_table.iloc[int(i)]
        d = float(row.get("days_before_index", np.nan))
        when = f"day -{d:.0f}" if np.isfinite(d) else "static"
        val = row.get("numeric_value", np.nan)
        val_text = "" if pd.isna(val) else f" = {float(val):.4g}"
        att = row.get("attention", np.nan)
        att_text = "" if pd.isna(att) else f"  att {float(att):.3f}"
        text.append(f"{shown[int(i)][:34]}{val_text} ({when}): {float(row['score']):+.2e}{att_text}")
    return text


def value_lines(names: Sequence[str], values: Mapping[str, float]) -> list[str]:
    """The curated features a model reads, as the case gives them ("age 67.3"), for the report; [] for a model that
    reads none.

    >>> value_lines(["age", "sex_female", "last_bnp"], {"age": 67.33, "sex_female": 1.0, "mrn": 81234567})
    ['', 'Clinical values read (2 of 3; the others as the training mean)', 'age 67.33, sex_female 1']
    """
    if not names:
        return []
    given = [(n, float(values[n])) for n in names if n in values and np.isfinite(values[n])]
    head = f"Clinical values read ({len(given)} of {len(names)}; the others as the training mean)"
    return ["", head] + (_wrap([", ".join(f"{n} {v:.4g}" for n, v in given)], 64) if given else ["none given"])
