"""One-page case report (PDF, matplotlib): survival, risks, top slices with overlays, top events, model card.

Nothing identifying goes in: the caller passes a neutral ``case_label`` (a
session case number), event times are shown as days before the index date,
and the PDF's information dictionary holds only a neutral title. The report
refuses a ``case_label`` that contains the case's subject id. Content streams
are written uncompressed so that the text of the page can be audited with a
byte search.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from core.horizons import HORIZONS, beyond_grid, horizon_label, risk_at

if TYPE_CHECKING:
    from core.explain import Attribution
    from core.models.types import CaseInputs, CasePrediction
    from core.registry import LoadedModel

DISCLAIMER = "Research use only, not a medical device. Not for clinical decisions."
PAGE_INCHES = (8.27, 11.69)  # A4 portrait


def card_summary(card: str, max_lines: int = 8) -> str:
    """The model card's bullet lines (Model and Metrics sections), shortened for the report."""
    keep: list[str] = []
    section = ""
    for line in card.splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        if section in ("model", "metrics (test split)") and line.startswith("- "):
            keep.append(line[2:].replace("`", ""))
    return "\n".join(keep[:max_lines])


def case_report_pdf(out: str | Path, *, model: LoadedModel, inputs: CaseInputs, prediction: CasePrediction,
                    volume_hu: np.ndarray | None, spacing_mm: Sequence[float] | None, attribution: Attribution | None,
                    events_table: pd.DataFrame | None, cohort_km: tuple[Any, Any, Any, Any] | None,
                    model_card_summary: str, case_label: str) -> Path:
    """Write the one-page report to ``out`` (.pdf) and return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from core.io.windows import WINDOWS

    target = Path(out)
    if target.suffix.lower() != ".pdf":
        raise InputError("out", target.name, "is not a .pdf file", "end the report name in .pdf")
    if not target.parent.exists():
        raise InputError("out", str(target.parent), "folder does not exist", "create the folder first")
    sid = str(getattr(inputs, "subject_id", "") or "")
    if sid and sid in str(case_label):
        raise InputError("case_label", "contains the subject id", "would identify the patient in the report",
                         "pass a neutral label such as 'case 3'")
    times = np.asarray(prediction.times, dtype=float)
    surv = np.asarray(prediction.survival, dtype=float)
    with matplotlib.rc_context({"pdf.compression": 0, "font.size": 8}):
        fig = plt.figure(figsize=PAGE_INCHES)
        gs = fig.add_gridspec(4, 3, height_ratios=[0.25, 1.15, 1.0, 1.15], hspace=0.45, wspace=0.25,
                              left=0.07, right=0.96, top=0.95, bottom=0.06)
        head = fig.add_subplot(gs[0, :])
        head.axis("off")
        head.text(0.0, 0.95, f"Case report: {case_label}", fontsize=14, weight="bold", va="top")
        head.text(0.0, 0.35, f"Model {model.model_dir.name}: {model.fusion} fusion, {model.config.head} head. "
                  f"Modalities used: {', '.join(prediction.modalities_used) or 'none'}.", fontsize=9, va="top")
        head.text(0.0, -0.1, DISCLAIMER, fontsize=9, color="#b00020", weight="bold", va="top")

        ax = fig.add_subplot(gs[1, :2])
        if cohort_km is not None:
            kt, ks, klo, khi = (np.asarray(a, dtype=float) for a in cohort_km)
            ax.fill_between(kt, klo, khi, step="post", color="0.6", alpha=0.25, linewidth=0)
            ax.step(kt, ks, where="post", color="0.4", linestyle="--", label="cohort Kaplan-Meier")
        ax.fill_between(times, np.asarray(prediction.lower, float), np.asarray(prediction.upper, float), step="post",
                        color="#1f77b4", alpha=0.25, linewidth=0, label=f"uncertainty band ({model.uncertainty})")
        ax.step(times, surv, where="post", color="#1f77b4", linewidth=2, label="this case")
        for h in HORIZONS:
            if h <= times[-1]:
                ax.axvline(h, color="0.7", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("days from index date")
        ax.set_ylabel("survival S(t)")
        ax.legend(loc="lower left", fontsize=7)
        ax.set_title("Individual survival curve vs cohort", fontsize=9)

        rk = fig.add_subplot(gs[1, 2])
        rk.axis("off")
        lines = ["Predicted risk 1 - S(t)", ""]
        risks = risk_at(times, surv, HORIZONS)
        for h in HORIZONS:
            r = None if h in beyond_grid(times, (h,)) else risks[h]
            lines.append(f"{horizon_label(h):>8}:  " + ("past the model's time grid" if r is None else f"{100 * r:5.1f} %"))
        if attribution is not None:
            lines += ["", "Explanation", f"method: {attribution.method}", f"target: {attribution.target}"]
        rk.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=8)

        slices: list[int] = []
        if attribution is not None and volume_hu is not None:
            slices = [i for i, _ in attribution.top_slices[:3]]
        for j in range(3):
            a = fig.add_subplot(gs[2, j])
            a.axis("off")
            if j >= len(slices):
                if j == 0:
                    a.text(0.0, 0.5, "No CT attribution for this case.", fontsize=8)
                continue
            k = slices[j]
            lo, hi = WINDOWS["lung"] if "lung" in WINDOWS else (-1350.0, 150.0)
            sp = [float(v) for v in (spacing_mm or (1.0, 1.0, 1.0))][-2:]
            hu = np.asarray(volume_hu)[k]
            extent = (0, hu.shape[1] * sp[1], hu.shape[0] * sp[0], 0)
            a.imshow(hu, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
            m = np.abs(attribution.map[k])  # type: ignore[union-attr]
            top = float(np.percentile(m, 99.5)) or float(m.max()) or 1.0
            over = np.ma.masked_less(np.clip(m / top, 0, 1), 0.15)
            a.imshow(over, cmap="hot", vmin=0, vmax=1, alpha=0.6, extent=extent, interpolation="bilinear")
            a.set_title(f"slice {k} ({100 * attribution.top_slices[j][1]:.1f} % of |map|)", fontsize=8)  # type: ignore[union-attr]

        ev = fig.add_subplot(gs[3, :2])
        ev.axis("off")
        text = ["Top timeline events (integrated gradients of the risk; + raises it)", ""]
        if events_table is not None and len(events_table):
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
                att_text = "" if pd.isna(att) else f"  attention {float(att):.3f}"
                text.append(f"{shown[int(i)][:46]}{val_text} ({when}): {float(row['score']):+.2e}{att_text}")
        else:
            text.append("No timeline events used by this model for this case.")
        ev.text(0.0, 1.0, "\n".join(text), va="top", family="monospace", fontsize=6.5)

        mc = fig.add_subplot(gs[3, 2])
        mc.axis("off")
        wrapped = "\n".join(textwrap.fill(line, 42) for line in (model_card_summary or "").splitlines())
        mc.text(0.0, 1.0, "Model card\n\n" + wrapped, va="top", fontsize=6.5)
        fig.text(0.07, 0.02, DISCLAIMER + " Times are days relative to the index date.", fontsize=7, color="0.3")
        fig.savefig(target, format="pdf", metadata={"Title": "Case report", "Author": None, "Subject": None,
                                                     "Keywords": None, "Creator": None, "Producer": None,
                                                     "CreationDate": None})
        plt.close(fig)
    return target
