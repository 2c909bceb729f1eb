"""What the case review warns about, gathered once, so that the page and the report PDF carry the same list.

No streamlit here: the pages pass plain values (the model's name and which
modalities it reads, the prediction's ``modalities_used`` and ``warnings``, the
CT coverage warning, the uploaded timeline, the sanity result of the method on
show, the strategies' risk table) and show :func:`gather_case_warnings`'s list
as it is; ``core.report.case_report_pdf`` prints the same texts.

Also here, because both the page and the report read them: the per-strategy
risk table and its disagreement flag, the caveat of each attribution method, and
the model-randomisation results recorded in a model card.

>>> notes = gather_case_warnings(model_name="ehr_only", has_image=False, has_ehr=True, modalities_used=[],
...                              ct_present=True)
>>> [w.kind for w in notes]
['modality']
>>> print(notes[0].text)  # doctest: +NORMALIZE_WHITESPACE
Missing modality: ehr_only does not use the CT. No EHR data the model can read (no timeline events before the
index date with a code it knows, no features): the EHR side is masked out. ehr_only reads only the EHR; the case
has none it can read: its curve is not a prediction for this case and is not drawn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.horizons import HORIZON_LABELS, HORIZONS, beyond_grid, survival_at

RANDOMIZATION_THRESHOLD = 0.5  # a map still this rank-correlated with the trained one after every layer is
#                                re-initialised does not depend on the weights (Adebayo et al. 2018)
DISAGREEMENT_THRESHOLD = 0.2   # spread (max - min) of the strategies' 5-year risk (= of their survival) that raises the flag
OUTCOME_CODES = ("MEDS_DEATH",)

METHOD_CAVEATS: dict[str, str] = {
    "saliency": "Gradient of the risk per voxel: sharp but noisy, and strided convolutions can leave a regular "
                "grid of dots. Shows where a small change moves the risk, not how much each region adds.",
    "integrated_gradients": "Sums gradients on a path from a baseline (here air, -1000 HU) to the CT: the map is "
                            "relative to that baseline, and another baseline gives another map.",
    "gradcam": "Computed on the last convolution's feature-map grid and upsampled: coarse blocks, not voxels, "
               "and it can tint air outside the body. Not a lesion outline.",
    "occlusion": "Risk change when a block is blanked: shows blocks at its window size, can tint background "
                 "blocks, and misses structures smaller than the window.",
    "smoothgrad": "Saliency averaged over noisy copies of the CT: less grainy, but blurred, and it depends on "
                  "the number of samples and the noise level.",
    "detector_ig": "Integrated gradients over the lesion detector's map, from the same map with every detection "
                   "lowered to the detector's threshold: only spots the detector calls a lesion are coloured, each "
                   "by how much it moved the risk. Where the colour sits is the detector's doing (re-initialising "
                   "the survival layers changes the weights of the spots, not the spots); blind to anything the "
                   "detector misses, blank when it detects nothing, and on its coarse grid (blocks of a few voxels).",
}


@dataclass(frozen=True)
class CaseWarning:
    """One warning of a case: ``kind`` (withheld, modality, coverage, prediction, study, scan_date, timeline, codes,
    sanity, disagreement)
    and its one-paragraph plain text (no markup), shown on the page and printed in the report as it is."""

    kind: str
    text: str


@dataclass(frozen=True)
class SanityResult:
    """The model-randomisation test of one method on one model: Spearman correlation of |map| with the trained
    model's |map| after every layer is re-initialised (``final_spearman``); it fails at or above the threshold."""

    method: str
    final_spearman: float
    pointing_rate: float | None
    source: str  # "model card" or "this case"

    @property
    def passed(self) -> bool:
        return self.final_spearman < RANDOMIZATION_THRESHOLD

    def label(self) -> str:
        verdict = "passes" if self.passed else "FAILS"
        return (f"{verdict} the model-randomisation check ({self.source}: Spearman {self.final_spearman:.2f} after "
                f"re-initialising every layer; fails at >= {RANDOMIZATION_THRESHOLD:g})")


def sanity_from_card(card: str) -> dict[str, SanityResult]:
    """The "Sanity checks" section that ``python -m core sanity`` writes into MODEL_CARD.md, per method (one block
    per method checked).

    >>> card = "## Sanity checks\\n\\nMethod `gradcam`. ...\\n| 0 | trained model | 1.000 |\\n| 1 | head | 0.9 |\\n"
    >>> sanity_from_card(card)["gradcam"].passed
    False
    >>> sorted(sanity_from_card(card + "\\nMethod `saliency`. ...\\n| 0 | trained model | 1.000 |\\n| 1 | head | 0.2 |\\n"))
    ['gradcam', 'saliency']
    """
    from core.sanity import method_blocks

    out: dict[str, SanityResult] = {}
    _, found, section = card.partition("## Sanity checks")
    if not found:
        return out
    nxt = section.find("\n## ")
    section = section if nxt < 0 else section[:nxt]
    for method, block in method_blocks(section).items():
        rows = re.findall(r"^\|\s*(\d+)\s*\|[^|]*\|\s*(-?[0-9.]+)\s*\|\s*$", block, flags=re.MULTILINE)
        if len(rows) < 2:
            continue
        rate = re.search(r"rate ([0-9.]+)", block)
        last = max(rows, key=lambda r: int(r[0]))
        out[method] = SanityResult(method, float(last[1]), None if rate is None else float(rate.group(1)), "model card")
    return out


def sanity_from_table(method: str, table: pd.DataFrame) -> SanityResult:
    """A ``core.sanity.cascading_randomization`` table run on the case under review."""
    return SanityResult(method, float(table["spearman"].iloc[-1]), None, "this case")


# ------------------------------------------------------------------ strategies


def cannot_score_reason(name: str, has_image: bool, has_ehr: bool, modalities_used: Sequence[str],
                        image_withheld: bool = False) -> str | None:
    """Why a strategy cannot score the case (it reads none of the case's modalities), or None when it can.
    ``image_withheld``: the case's CT lies outside what the model was trained on and is withheld from it."""
    if modalities_used:
        return None
    if image_withheld and has_image:
        return (f"{name} cannot read this CT (other anatomy or another scale than its training studies)"
                + ("; the case has no EHR" if has_ehr else " and reads nothing else"))
    if has_ehr and not has_image:
        return f"{name} reads only the EHR; the case has none it can read"
    if has_image and not has_ehr:
        return f"{name} reads only the CT; the case has none"
    return f"{name} reads none of the modalities this case has"


def strategy_risk_table(curves: Mapping[str, tuple[Any, Any]], current: str | None = None) -> pd.DataFrame:
    """One row per strategy that scores the case: risk 1 - S(t) at 30 d, 1 y and 5 y and the 5-year survival
    (NaN past the model's time grid); ``current`` marks the model in use. ``curves`` = {name: (times, S)}."""
    rows = []
    for name, (times, surv) in curves.items():
        t = np.asarray(times, dtype=float)
        s = survival_at(t, np.asarray(surv, dtype=float), [float(h) for h in HORIZONS])
        past = set(beyond_grid(t, HORIZONS))
        row: dict[str, Any] = {"strategy": name, "current": name == current}
        for h, value in zip(HORIZONS, s):
            row[f"risk {HORIZON_LABELS[h]}"] = np.nan if h in past else round(1.0 - float(value), 4)
        row["survival 5 years"] = np.nan if 1825 in past else round(float(s[-1]), 4)
        rows.append(row)
    return pd.DataFrame(rows, columns=["strategy", "current"] + [f"risk {HORIZON_LABELS[h]}" for h in HORIZONS]
                        + ["survival 5 years"])


def disagreement(table: pd.DataFrame, threshold: float = DISAGREEMENT_THRESHOLD) -> str | None:
    """The flag when the strategies' 5-year risks lie more than ``threshold`` apart, else None; said in risk, as
    Case review's metrics and table give it."""
    s = table.dropna(subset=["survival 5 years"]) if len(table) else table
    if len(s) < 2:
        return None
    lo, hi = s["survival 5 years"].idxmin(), s["survival 5 years"].idxmax()
    spread = float(s.loc[hi, "survival 5 years"] - s.loc[lo, "survival 5 years"])
    if spread <= threshold:
        return None
    return (f"The fusion strategies disagree: 5-year risk ranges from {100 * (1 - s.loc[hi, 'survival 5 years']):.1f} % "
            f"({s.loc[hi, 'strategy']}) to {100 * (1 - s.loc[lo, 'survival 5 years']):.1f} % ({s.loc[lo, 'strategy']}), "
            f"{100 * spread:.1f} percentage points apart (flagged above {100 * threshold:g}); no single curve should "
            "be read as the answer.")


# ------------------------------------------------------------------ gathering


def timeline_messages(events: pd.DataFrame | None, index_time: Any) -> list[str]:
    """What was removed from an uploaded timeline before the model read it: outcome events, events after the index."""
    if events is None or len(events) == 0 or "code" not in events.columns:
        return []
    out = []
    outcome = events["code"].astype(str).isin(OUTCOME_CODES)
    if outcome.any():
        codes = ", ".join(sorted(set(events.loc[outcome, "code"].astype(str))))
        out.append(f"The timeline records the outcome ({codes}): {int(outcome.sum())} outcome event(s) removed; "
                   "an outcome is never a model input.")
    if index_time is not None and not pd.isna(index_time) and "time" in events.columns:
        after = int(((pd.to_datetime(events["time"]) > pd.Timestamp(index_time)) & ~outcome).sum())
        if after:
            out.append(f"{after} timeline event(s) after the index date were not used.")
    return out


def modality_notices(model_name: str, has_image: bool, has_ehr: bool, modalities_used: Sequence[str],
                     ct_present: bool, image_withheld: str | None = None, features: Sequence[str] = ()) -> list[str]:
    """The missing-modality notices: what the model does not read, what the case lacks, what cannot be scored.
    ``image_withheld``: the notice of a CT the model withholds, or reads on request (``core.predict.ImageRead.note``).
    ``features``: the curated features (features.csv columns) the model reads, named when the case has none.

    >>> modality_notices("ehr_only", False, True, ["ehr_events"], False, features=["age", "sex_female", "bnp", "na"])[1]
    'ehr_only also reads 4 curated features (features.csv: age, sex_female, bnp, ...) that this case does not have: they are read as the training average, so its EHR side reads the timeline events alone. Add the clinical values of the case on the Upload page.'
    """
    out = []
    uses_ehr = any(m.startswith("ehr") for m in modalities_used)
    if not has_image:
        out.append(f"{model_name} does not use the CT.")
    elif image_withheld and ct_present and "image" not in modalities_used:
        out.append(f"The CT is withheld from {model_name} (see above): the image side is masked out.")
    elif not ct_present or "image" not in modalities_used:
        out.append("No CT study for this case: the image side of the model is masked out.")
    if not has_ehr:
        out.append(f"{model_name} does not use the EHR.")
    elif not uses_ehr:
        out.append("No EHR data the model can read (no timeline events before the index date with a code it knows, no "
                   "features): the EHR side is masked out.")
    elif features and "ehr_features" not in modalities_used:
        shown = ", ".join(features[:3]) + (", ..." if len(features) > 3 else "")
        out.append(f"{model_name} also reads {len(features)} curated features (features.csv: {shown}) that this case "
                   "does not have: they are read as the training average, so its EHR side reads the timeline events "
                   "alone. Add the clinical values of the case on the Upload page.")
    reason = cannot_score_reason(model_name, has_image, has_ehr, modalities_used,
                                 bool(image_withheld) and "image" not in modalities_used)
    if reason:
        out.append(f"{reason}: its curve is not a prediction for this case and is not drawn.")
    elif out:
        out.append(f"The prediction uses {', '.join(modalities_used)} only.")  # closes the notice
    return out


# the loader's notes on choosing files and series, and pydicom's own (they may quote a header value): shown on
# Upload only, not beside a prediction or in a report
_NOT_ABOUT_THE_VOXELS = ("ignored files:", "series found;", "DICOM reading warning")


def study_notes(volume_warnings: Sequence[str]) -> list[str]:
    """The loader's warnings on how the CT's voxels were placed or read (missing slices, a tilted gantry, an
    oblique orientation snapped, another modality), as the case review and the report show them.

    >>> study_notes(["ignored files: 1 not DICOM", "missing slices: about 2 slice(s) absent (10.0..17.5 mm); volume "
    ...              "stacked without the gap"])
    ['How this CT was read: missing slices: about 2 slice(s) absent (10.0..17.5 mm); volume stacked without the gap']
    """
    return [f"How this CT was read: {w}" for w in volume_warnings if w and not any(p in w for p in _NOT_ABOUT_THE_VOXELS)]


def gather_case_warnings(*, model_name: str, has_image: bool, has_ehr: bool, modalities_used: Sequence[str],
                         ct_present: bool, coverage: str | None = None, prediction_warnings: Sequence[str] = (),
                         timeline: Sequence[str] = (), codes: Sequence[str] = (), sanity: SanityResult | None = None,
                         disagreement_flag: str | None = None, image_withheld: str | None = None,
                         study: Sequence[str] = (), features: Sequence[str] = (),
                         scan_date: str | None = None) -> list[CaseWarning]:
    """Every warning of the case, in the order the page shows them (duplicates dropped). ``study``: the CT's
    loading warnings (``Volume.warnings``), kept as :func:`study_notes` keeps them; ``scan_date``: the CT taken after
    the index date or long before it (``core.io.study_date.scan_date_note``)."""
    notices = modality_notices(model_name, has_image, has_ehr, modalities_used, ct_present, image_withheld, features)
    items = [CaseWarning("withheld", image_withheld)] if image_withheld and has_image and ct_present else []
    items += [CaseWarning("modality", "Missing modality: " + " ".join(notices))] if notices else []
    if coverage and "image" in modalities_used:
        items.append(CaseWarning("coverage", coverage))
    items += [CaseWarning("prediction", str(t)) for t in prediction_warnings if t]
    items += [CaseWarning("study", t) for t in study_notes(study)] if ct_present and has_image else []
    items += [CaseWarning("scan_date", scan_date)] if scan_date else []
    items += [CaseWarning("timeline", t) for t in timeline]
    items += [CaseWarning("codes", t) for t in codes]  # timeline codes and clinical values the model cannot read
    if sanity is not None and not sanity.passed and "image" in modalities_used:
        items.append(CaseWarning("sanity", f"The {sanity.method} map {sanity.label()}: do not read it as an "
                                           "explanation of this model."))
    if disagreement_flag:
        items.append(CaseWarning("disagreement", disagreement_flag))
    seen: set[str] = set()
    unique = []
    for w in items:
        if w.text not in seen:
            seen.add(w.text)
            unique.append(w)
    return unique
