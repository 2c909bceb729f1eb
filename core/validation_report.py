"""External validation report (PDF, matplotlib): a model evaluated on a cohort it never saw, for a committee; and
the report of one model's validations on several sites pooled (:func:`pooled_report_pdf`).

The report holds aggregate results only, never a patient's subject id, risk or outcome: the metrics with their
95 % intervals, Kaplan-Meier curves by predicted risk group with the numbers at risk, calibration at each horizon,
every model evaluated beside it and the paired comparison of the best fusion with the best single-modality model,
the subgroups, the recalibration, and what the model could not read. It is drawn from the result of an external
validation (``core.evaluation.evaluate_model`` with split "all", as the app's validation job and ``python -m core
evaluate --split all`` compute it), held in memory or read back from JSON (horizon keys as text). Text flows from the
top of an A4 page down and continues on further pages; content streams are uncompressed so that a byte search can
audit the text, and the PDF's information dictionary holds only a neutral title.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from core.errors import InputError
from core.evaluate.metrics import NOT_AVAILABLE, ci_text, oe_text
from core.evaluate.paired import tie_note
from core.evaluate.subgroups import readable_label
from core.horizons import HORIZONS, at_horizon, horizon_label
from core.report import DISCLAIMER

PAGE_IN = (8.27, 11.69)  # A4 portrait
MARGIN_IN = 0.6
GROUP_COLOURS = {"low": "#2a9d3a", "intermediate": "#f08a00", "high": "#d62728"}


def _horizons(m: dict) -> list[float]:
    """The horizons the evaluation was computed at (its td-AUC's keys), else the app's three."""
    found = sorted(float(k) for k in (m.get("td_auc") or {}))
    return found or [float(h) for h in HORIZONS]


def _plain(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"\1", text)


class _Pages:
    """A flow of text lines and figure rows down A4 pages (inches from the top)."""

    def __init__(self, plt: Any, title: str) -> None:
        self.plt, self.title, self.figs, self.y = plt, title, [], 0.0
        self._new()

    def _new(self) -> None:
        self.fig = self.plt.figure(figsize=PAGE_IN)
        self.figs.append(self.fig)
        self.y = MARGIN_IN
        if len(self.figs) > 1:
            self.line(f"{self.title} (continued)", size=9, bold=True)

    def _room(self, height: float) -> None:
        if self.y + height > PAGE_IN[1] - MARGIN_IN - 0.3:
            self._new()

    def line(self, text: str, *, size: float = 8.0, bold: bool = False, mono: bool = False, colour: str = "0.1") -> None:
        step = size * 1.45 / 72
        self._room(step)
        self.fig.text(MARGIN_IN / PAGE_IN[0], 1 - (self.y + size / 72) / PAGE_IN[1], text, fontsize=size,
                      fontweight="bold" if bold else "normal", family="monospace" if mono else "sans-serif",
                      color=colour, va="baseline")
        self.y += step

    def wrapped(self, text: str, *, size: float = 8.0, width: int = 120, **kw: Any) -> None:
        import textwrap

        for part in textwrap.wrap(text, width=width) or [""]:
            self.line(part, size=size, **kw)

    def gap(self, inches: float = 0.08) -> None:
        self.y += inches

    def row(self, height: float, n: int) -> list[Any]:
        """``n`` axes side by side, ``height`` inches tall, below the text so far."""
        self._room(height + 0.45)
        self.y += 0.2
        width = (PAGE_IN[0] - 2 * MARGIN_IN - 0.6 * (n - 1)) / n
        axes = [self.fig.add_axes(((MARGIN_IN + 0.35 + i * (width + 0.6)) / PAGE_IN[0],
                                   1 - (self.y + height) / PAGE_IN[1], (width - 0.35) / PAGE_IN[0], height / PAGE_IN[1]))
                for i in range(n)]
        self.y += height + 0.45
        return axes

    def table(self, rows: Sequence[dict[str, str]]) -> None:
        if not rows:
            return
        cols = list(rows[0])
        widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
        room = int((PAGE_IN[0] - 2 * MARGIN_IN) * 72 / (7 * 0.6))  # monospace 7 pt: a character is 0.6 of its size
        over = sum(widths) + 2 * (len(widths) - 1) - room
        if over > 0:  # a long first cell (a model or a group's name) is cut, not the numbers at the page's edge
            widths[0] = max(12, widths[0] - over)

        def cell(text: str, w: int) -> str:
            return text if len(text) <= w else text[:w - 3] + "..."

        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        self.line(fmt.format(*(cell(c, w) for c, w in zip(cols, widths))), size=7, mono=True, bold=True)
        for r in rows:
            self.line(fmt.format(*(cell(str(r.get(c, "")), w) for c, w in zip(cols, widths))), size=7, mono=True)

    def pdf(self) -> bytes:
        import matplotlib
        from matplotlib.backends.backend_pdf import PdfPages

        buf = io.BytesIO()
        metadata = {"Title": "External validation report", "Author": None, "Subject": None, "Keywords": None,
                    "Creator": None, "Producer": None, "CreationDate": None}
        with matplotlib.rc_context({"pdf.compression": 0}), PdfPages(buf, metadata=metadata) as pdf:
            for i, fig in enumerate(self.figs, 1):
                fig.text(MARGIN_IN / PAGE_IN[0], 0.5 * MARGIN_IN / PAGE_IN[1],
                         f"{DISCLAIMER} Aggregate results only: no patient identifier is in this report. "
                         f"Page {i} of {len(self.figs)}.", fontsize=6.5, color="0.3")
                pdf.savefig(fig)
                self.plt.close(fig)
        return buf.getvalue()


def _metric_rows(results: dict[str, dict], hs: list[float]) -> list[dict[str, str]]:
    rows = []
    for name, m in results.items():
        if "error" in m:
            continue
        td = " / ".join(NOT_AVAILABLE if (v := at_horizon(m.get("td_auc"), h)) is None else f"{float(v):.3f}" for h in hs)
        rows.append({"model": name, "C-index [95% CI]": ci_text(m.get("c_index"), m.get("c_index_ci")),
                     "Uno C [95% CI]": ci_text(m.get("uno_c"), m.get("uno_c_ci")),
                     "td-AUC " + " / ".join(horizon_label(h, short=True) for h in hs): td,
                     "IBS [95% CI]": ci_text(m.get("ibs"), m.get("ibs_ci"))})
    return rows


def _dress(ax: Any, title: str, xlabel: str, ylabel: str, legend_at: str) -> None:
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.legend(fontsize=6, loc=legend_at, frameon=False)


def _km(ax: Any, groups: dict) -> None:
    for g in groups.get("groups", []):
        colour = GROUP_COLOURS.get(str(g["label"]), None)
        ax.step(g["t"], g["s"], where="post", color=colour, lw=1.2,
                label=f"{g['label']} risk (n={g['n']}, {g['events']} events)")
        if g.get("lower") is not None and g.get("upper") is not None:
            ax.fill_between(g["t"], g["lower"], g["upper"], step="post", color=colour, alpha=0.12, lw=0)
    ax.set_ylim(0, 1.02)
    _dress(ax, "Kaplan-Meier by predicted risk group", "days from index date", "survival S(t)", "best")


def _calibration(ax: Any, calibration: dict, hs: list[float]) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=0.8, label="perfect calibration")
    for h, colour in zip(hs, ("#1f77b4", "#d62728", "#2a9d3a", "#9467bd", "#8c564b", "#17becf")):
        cal = at_horizon(calibration, h)
        if not cal or not cal.get("groups"):
            continue
        pts = [(g["predicted"], g["observed"]) for g in cal["groups"] if g.get("observed") is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1, color=colour,
                    label=f"{horizon_label(h)} (ICI {cal['ici']:.3f})" if cal.get("ici") is not None else horizon_label(h))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _dress(ax, "Calibration by predicted risk group", "predicted risk 1 - S(t)", "observed risk (1 - Kaplan-Meier)",
           "upper left")


def validation_report_pdf(results: dict[str, dict], validated: str, *, cohort: str, when: str,
                          split: str = "all") -> bytes:
    """The report of the external validation ``results`` ({model name: metrics | {"error"}}) of the model
    ``validated`` on the cohort named ``cohort`` (its site or file name; never a patient's), validated at ``when``;
    the PDF's bytes. ``split``: "all" (every patient: an external validation), or the split evaluated (a cohort's test split)."""
    from core.figures.pyplot import pyplot

    plt = pyplot()

    m = results.get(validated)
    if not m or "error" in m:
        raise InputError("validated", validated, "has no metrics in this validation",
                         "pass the name of the model the validation was started for")
    every = split == "all"
    from core.evaluation import TRAINING_COHORT

    own = any(str(n).startswith(TRAINING_COHORT) for n in m.get("notes") or [])  # not another site's patients
    title = (f"Evaluation of {validated} on every patient of its training cohort" if every and own else
             f"External validation of {validated}" if every else f"Evaluation of {validated}, {split} split")
    hs = _horizons(m)
    out = _Pages(plt, title)
    out.wrapped(title, size=13, bold=True, width=72)  # a long model or site name goes on a second line
    out.wrapped(f"Cohort: {cohort}. {m.get('n')} patients, {m.get('events')} events, "
                + ("every patient evaluated" if every else f"the patients of its {split} split")
                + f"; {'validated' if every else 'report made'} {when}; strategy {m.get('fusion', validated)}.",
                size=8.5, width=115)
    out.gap()
    out.table(_metric_rows({validated: m}, hs))
    out.wrapped("Harrell's C: how often the model orders two patients right; Uno's C weights pairs by the censoring "
                "of this cohort; td-AUC: discrimination at each horizon; IBS: integrated Brier score (lower is "
                "better). Intervals: 95 % bootstrap." + (" Censoring weights from this cohort's own follow-up." if every
                                                        else ""),
                size=7, colour="0.35", width=140)
    if m.get("oracle_c_index") is not None:
        out.line(f"Oracle C-index of the ground-truth risk on the same patients: {m['oracle_c_index']:.3f}.", size=7)
    plots = [k for k in ("risk_groups", "calibration") if m.get(k)]
    if plots:
        row = out.row(3.0, 2)
        for unused in row[len(plots):]:  # one plot alone keeps the left half
            unused.remove()
        axes = dict(zip(plots, row))
        if "risk_groups" in axes:
            _km(axes["risk_groups"], m["risk_groups"])
        if "calibration" in axes:
            _calibration(axes["calibration"], m["calibration"], hs)
        ref = m.get("risk_groups") or {}
        days = ref.get("at_risk_days") or []
        if ref.get("logrank_p") is not None:
            out.line(f"Log-rank test across the risk groups: p = {ref['logrank_p']:.3g}.", size=7.5)
        if days and all("at_risk" in g for g in ref.get("groups", [])):
            out.table([{"numbers at risk": str(g["label"]),
                        **{("day 0" if d == 0 else horizon_label(d, short=True)): str(n) for d, n in zip(days, g["at_risk"])}}
                       for g in ref["groups"]])
        slopes = [f"{horizon_label(h)} {c['slope']:.2f} / {c['intercept']:.2f}" for h in hs
                  if (c := at_horizon(m.get("calibration"), h)) and c.get("slope") is not None]
        if slopes:
            out.wrapped("Calibration slope / intercept (1 / 0 ideal; below 1: predictions too extreme): "
                        + "; ".join(slopes) + ".", size=7.5, width=125)
        if (oe := oe_text(m.get("calibration"))):
            out.wrapped(f"Observed / expected risk (1 ideal; above 1: under-predicted), 95 % intervals: {oe}.", size=7.5,
                        width=125)
    others = {n: r for n, r in results.items() if n != validated}
    if others:
        out.gap(0.15)
        out.line("Every model evaluated on this cohort", size=10, bold=True)
        out.table(_metric_rows(results, hs))
        for n, r in others.items():
            if "error" in r:
                out.wrapped(f"{n}: not evaluated: {r['error']}", size=7, colour="0.35", width=140)
        paired = m.get("fusion_gain")
        if paired:
            ci = f"95 % CI {paired['ci'][0]:+.3f} to {paired['ci'][1]:+.3f}, " if paired.get("ci") else ""
            tie = tie_note(paired.get("tied"))
            out.wrapped(f"Best fusion {paired['fusion']} against the best single-modality model {paired['unimodal']} "
                        f"on the same {paired['n']} patients: C-index {paired['delta_c']:+.3f} ({ci}paired bootstrap, "
                        f"p = {paired['p_value']:.2g})" + (f"; {tie}." if tie else "."), size=7.5, width=130)
    sub = m.get("subgroups")
    if sub and sub.get("groups"):
        out.gap(0.15)
        out.line(f"Subgroups by {sub.get('column', 'group')}", size=10, bold=True)
        labels = [str(g["label"]) for g in sub["groups"]]
        out.table([{"group": readable_label(str(g["label"]), labels), "n / events": f"{g['n']} / {g['events']}",
                    "C-index [95% CI]": ci_text(g.get("c_index"), g.get("c_index_ci")),
                    **{f"{horizon_label(h, short=True)} pred. / obs.":
                       (NOT_AVAILABLE if not (c := at_horizon(g.get("calibration"), h)) or c.get("observed") is None
                        else f"{c['predicted']:.2f} / {c['observed']:.2f}") for h in hs}}
                   for g in sub["groups"]])
    rec = m.get("recalibration")
    if rec:
        out.gap(0.15)
        out.line("Recalibration to this cohort", size=10, bold=True)
        if "error" in rec:
            out.wrapped(f"No recalibrated copy: {rec['error']}", size=7.5, width=130)
        else:
            out.wrapped(f"Copy {rec['label']}: level a = {rec['a']:.3f}, spread b = {rec['b']:.3f}, course c = "
                        f"{rec['c']:.3f} on {rec['n']} patients, {rec['events']} events (log H' = a + c m(t) + "
                        "b (log H - m(t))). Calibration before and after, cross-fitted:", size=7.5, width=130)
            out.table([{"horizon": horizon_label(float(h)), "ICI before": f"{cal['ici']:.3f}",
                        "ICI after": f"{rec['after']['calibration'][h]['ici']:.3f}",
                        "slope before": f"{cal['slope']:.2f}", "slope after": f"{rec['after']['calibration'][h]['slope']:.2f}"}
                       for h, cal in rec["before"]["calibration"].items()
                       if cal.get("ici") is not None and rec["after"]["calibration"][h].get("ici") is not None])
    notes = [_plain(str(n)) for n in m.get("notes") or []]
    if m.get("unread"):
        notes.append(f"The model read nothing of {m['unread']} of the {m.get('n')} patients (no study, timeline or "
                     "features it can read): their curves are the training average")
    if notes:
        out.gap(0.15)
        out.line("What the model could not read", size=10, bold=True)
        for note in notes:
            out.wrapped(f"- {note}.", size=7.5, width=130)
    return out.pdf()


def _forest(ax: Any, rows: list[dict], labels: list[str], keys: tuple[str, str, str], pooled: dict, value: str,
            reference: float, xlabel: str) -> None:
    """A forest plot on matplotlib axes: each site's value and interval (``keys``; named ``labels``), the pooled
    diamond and interval, the prediction interval dashed, ``reference`` dotted."""
    key, low, high = keys
    n = len(rows)
    ys = list(range(n, 0, -1))
    ax.errorbar([r[key] for r in rows], ys, xerr=[[r[key] - r[low] for r in rows], [r[high] - r[key] for r in rows]],
                fmt="s", ms=3.5, color="0.35", ecolor="0.35", elinewidth=1, capsize=2)
    lo, hi = pooled["ci"]
    ax.errorbar([pooled[value]], [0], xerr=[[pooled[value] - lo], [hi - pooled[value]]], fmt="D", ms=6,
                color="#1f6f8b", elinewidth=2, capsize=3)
    if pooled.get("prediction"):
        ax.plot(pooled["prediction"], [-0.45, -0.45], ls="--", color="#1f6f8b", lw=1.2)
    ax.axvline(reference, ls=":", color="0.5", lw=0.8)
    ax.set_yticks([*ys, 0], [*labels, "pooled"], fontsize=6.5)
    ax.set_ylim(-0.9, n + 0.6)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.tick_params(axis="x", labelsize=6.5)


def pooled_report_pdf(rows: list[dict], model: str, *, horizon: float, when: str) -> bytes:
    """The report (PDF) of one model's validations on several sites pooled: ``rows`` (``core.evaluate.pooled
    .site_rows``, each named by its site or cohort's file name and date, never a patient's), the pooled C-index and,
    where two sites or more have it, the pooled observed / expected risk at ``horizon``; made at ``when``."""
    from core.evaluate.pooled import pooled_c_index, pooled_oe
    from core.figures.pyplot import pyplot

    if len(rows) < 2:
        raise InputError("sites", len(rows), "are too few to pool (at least 2)", "choose the validations of two sites")
    plt = pyplot()
    c = pooled_c_index([r["c_index"] for r in rows], [r["c_low"] for r in rows], [r["c_high"] for r in rows])
    with_oe = [r for r in rows if r.get("oe") is not None]
    oe = pooled_oe([r["oe"] for r in with_oe], [r["oe_low"] for r in with_oe], [r["oe_high"] for r in with_oe]) \
        if len(with_oe) >= 2 else None
    when_h = horizon_label(horizon)
    title = f"Validation of {model} across {len(rows)} sites"
    out = _Pages(plt, title)
    out.wrapped(title, size=13, bold=True, width=72)  # a long model or site name goes on a second line
    out.wrapped(f"{sum(int(r['patients'] or 0) for r in rows)} patients, {sum(int(r['events'] or 0) for r in rows)} "
                f"events in all, each site's cohort validated as a whole; pooled {when}.", size=8.5, width=115)
    out.gap()
    out.table([{"#": str(i), "site": r["site"], "n / events": f"{r['patients']} / {r['events']}",
                "C-index [95% CI]": ci_text(r["c_index"], [r["c_low"], r["c_high"]]),
                f"O:E {horizon_label(horizon, short=True)} [95% CI]": NOT_AVAILABLE if r.get("oe") is None else
                f"{r['oe']:.2f} [{r['oe_low']:.2f}, {r['oe_high']:.2f}]", "weight (C)": f"{100 * w:.0f} %"}
               for i, (r, w) in enumerate(zip(rows, c["weights"]), 1)])
    out.gap()
    for name, p, value, digits in (("C-index", c, "c", 3), (f"O:E at {when_h}", oe, "oe", 2)):
        if p is None:
            out.line(f"{name}: known at {len(with_oe)} of {len(rows)} sites, 2 needed to pool.", size=8)
            continue
        pi = p["prediction"]
        out.wrapped(f"Pooled {name}: {p[value]:.{digits}f} (95 % CI {p['ci'][0]:.{digits}f}-{p['ci'][1]:.{digits}f}) over "
                    f"{p['k']} sites; at a new site " + (f"{pi[0]:.2f}-{pi[1]:.2f} (95 % prediction interval)" if pi
                                                       else "no prediction interval below 3 sites")
                    + f"; between sites I² {100 * p['i2']:.0f} %, Cochran's Q {p['q']:.2f} (p {p['q_p']:.3g}).",
                    size=8.5, width=115, bold=True)
    axes = out.row(3.2, 2)
    number = {id(r): f"site {i}" for i, r in enumerate(rows, 1)}  # the table's numbers
    _forest(axes[0], rows, [number[id(r)] for r in rows], ("c_index", "c_low", "c_high"), c, "c", 0.5,
            "Harrell's C-index (0.5: chance)")
    if oe is not None:
        _forest(axes[1], with_oe, [number[id(r)] for r in with_oe], ("oe", "oe_low", "oe_high"), oe, "oe", 1.0,
                f"observed / expected risk at {when_h}")
    else:
        axes[1].remove()
    out.wrapped("Random effects (DerSimonian-Laird): the C-index on the logit scale and the observed / expected risk "
                "on the log scale, each site's standard error read from its 95 % interval (Debray et al., BMJ 2017). "
                "Squares: the sites; diamond: the pooled value; dashed: the 95 % prediction interval of a new site (a "
                "t quantile with sites - 2 degrees of freedom). O:E above 1: the model under-predicts the risk; "
                "calibration in the large only. The sites must hold different patients: a cohort validated twice "
                "counts twice.", size=7, colour="0.35", width=140)
    return out.pdf()
