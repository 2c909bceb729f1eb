"""MODEL_CARD.md of a model folder: data, preprocessing, strategy, encoder, metrics with 95 % CIs, what the model
can read (its training studies' acquisition profile) and intended use. Written by ``core.registry.save_model``."""

from __future__ import annotations

import json
from typing import Any

from core.cohort import Cohort
from core.evaluate.metrics import metric_spans
from core.feature_profile import card_lines as feature_card_lines
from core.models.config import ModelConfig
from core.study_profile import card_lines, model_profile
from core.timeline_profile import card_lines as timeline_card_lines
from core.timeline_profile import model_timeline_profile


def _plain(o: Any) -> Any:
    """numpy scalars and arrays (and paths) in the card's JSON snippets."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def metric_with_ci(m: dict, key: str) -> str:
    """``0.712 (95% CI 0.650-0.770)`` for metric ``key`` of ``m`` (its interval under ``key_ci``), or n/a."""
    v, ci = m.get(key), m.get(f"{key}_ci")
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


LUNG_MASK_NOTE = (
    "- Image preprocessing: each axial slice is restricted to a threshold lung mask (air below -400 HU not "
    "touching the slice border, plus small enclosed holes such as nodules; computed without gradient), and the "
    "log soft-tissue area (> -300 HU) inside that mask is one extra input per slice."
)
OLD_MASK_GAP = " Nodules touching the chest wall or mediastinum can fall outside the mask."


def lung_close_note(fraction: float, medial: bool = False) -> str:
    side = ("On the mediastinal side the closing adds only solid tissue (-100 to 120 HU) that does not touch a voxel "
            "of 120 HU or more (an enhanced vessel or heart chamber): nodules at the hilum join the mask, those "
            "wrapped around an enhanced vessel only in part, and on a CT without contrast the hilar vessels can "
            "join it too." if medial else "Nodules on the mediastinal side can still fall outside it.")
    return (f"- Nodules on the lung border: each lung region is also closed with a disk of {fraction:.0%} of the "
            f"slice width, and on its lateral side the soft tissue this adds below 120 HU joins the mask. {side}")


def _log_note(cfg: ModelConfig) -> str:
    """The EHR values read as log(1 + x) before scaling (setting ``ehr_log_skewed``), for the card."""
    parts = [f"tabular features {', '.join(cfg.ehr.tabular['log'])}" if (cfg.ehr.tabular or {}).get("log") else "",
             f"timeline values of {', '.join(cfg.ehr.sequence['log'])}" if (cfg.ehr.sequence or {}).get("log") else ""]
    named = "; ".join(p for p in parts if p)
    return f" Read as log(1 + x) before scaling (right-skewed on the train split): {named}." if named else ""


def model_card(cfg: ModelConfig, metrics: dict[str, Any], cohort: Cohort) -> str:
    t = cohort.table
    chain = cfg.image.transforms()
    test = metrics.get("test", {})
    lines = [
        f"# Model card: {cfg.fusion} fusion, {cfg.head} head",
        "",
        "**Intended use: research and education only. Not a medical device; not for clinical decisions.**",
        "",
        "## Data",
        f"- Cohort folder: `{cohort.root.name}`; subjects {len(t)} (train {int((t['split'] == 'train').sum())}, "
        f"val {int((t['split'] == 'val').sum())}, test {int((t['split'] == 'test').sum())}); events {int(t['event'].sum())}.",
        f"- Image input: {cfg.image.kind}; EHR inputs: {', '.join(metrics.get('modalities', {}).get('ehr', [])) or 'none'}.",
        "- EHR preprocessing (vocabulary, value statistics, feature scaling) fitted on the train split only; "
        "timeline events after the index time are never used."
        + _log_note(cfg),
        *(f"- {note}." for note in metrics.get("data_notes") or []),
    ]
    if cfg.ehr.summarises_timeline:
        recipe = cfg.ehr.tabular["summary"]
        lines.append(f"- Tabular features: the timeline's summary (`core.models.ehr_summary`, not features.csv), "
                     f"{len(cfg.ehr.feature_names)} columns: " + ("age from MEDS_BIRTH, " if recipe.get("birth") else "")
                     + f"the number of events, days since the last one, and for {len(recipe['codes'])} codes a count "
                     f"({len(recipe['valued'])} of them also the last value). An uploaded timeline is summarised alike.")
    if chain is not None:
        steps = "; ".join(", ".join(f"{k} {v}" for k, v in step.items()) for step in chain.describe())
        lines.append(f"- Image preprocessing (in order, the same in training, prediction and explanation): {steps}.")
    lines += [
        "",
        "## Model",
        f"- Fusion strategy: `{cfg.fusion}`; survival head: `{cfg.head}`; token dimension {cfg.dim}.",
        f"- Time grid: {len(cfg.edges)} points from 0 to {cfg.edges[-1]:.0f} days (training event-time quantiles).",
        _encoder_line(cfg, metrics),
    ]
    if cfg.image.z_scales:
        lines.append(f"- Slice context: each slice token plus learnt maps of the mean token over windows of "
                     f"{' and '.join(str(w) for w in cfg.image.z_scales)} neighbouring slices (`z_scales`), before the "
                     "token projection.")
    if cfg.image.lung_mask:
        close = cfg.image.lung_close
        lines.append(LUNG_MASK_NOTE + ("" if close else OLD_MASK_GAP))
        if close:
            lines.append(lung_close_note(close, cfg.image.lung_medial))
    blend = metrics.get("linear_members")
    if cfg.image_linear and blend:
        both = cfg.ehr_linear and cfg.fusion != "image_only"
        lines.append(f"- Linear models beside the networks: {blend['n']} of the {cfg.ensemble} ensemble members are linear models "
                     "of the study's detection statistics (each statistic's mean over "
                     f"{' and '.join(str(w) for w in cfg.image_linear)} neighbouring slices, its maximum over the study, "
                     "standardised on the train split)"
                     + (", the scaled tabular features and their missing indicators" if both else "")
                     + f", fitted alone on the train split (ridge penalty {blend['penalty']:g} "
                     "on the mean NLL); the curve is the mean over the networks and them."
                     + (" The networks add their own linear term of these inputs to their risk." if both else ""))
    elif cfg.image_linear and cfg.fusion != "image_only":
        lines.append("- Linear term: the head adds a linear function of the study's detection statistics (each statistic's "
                     f"mean over {' and '.join(str(w) for w in cfg.image_linear)} neighbouring slices, its maximum over the "
                     "study, standardised on the train split)"
                     + (" and of the scaled tabular features and their missing indicators" if cfg.ehr_linear else "")
                     + ", fitted on the train split after the network (ridge-penalised maximum likelihood, jointly with "
                     "the network's own risk), then calibrated with it on validation.")
    elif cfg.ehr_linear and blend:
        lines.append(f"- Linear models beside the networks: {blend['n']} of the {cfg.ensemble} ensemble members are linear models "
                     "of the scaled tabular features and their missing indicators, fitted alone on the train split (ridge "
                     + (f"penalty {blend['penalty']:g}" if "penalties_cv" not in blend else "penalties "
                        + ", ".join(f"{p:g}" for p in blend["penalties_cv"]) + ", each chosen by 5-fold cross-validation")
                     + " on the mean NLL); the curve is the mean over the networks and them (the networks' alone for "
                     "a case without any clinical value, for which a linear model gives the training mean's curve).")
    elif cfg.ehr_linear:
        lines.append("- Linear EHR term: the head adds a linear function of the scaled tabular features and their "
                     "missing indicators, fitted on the train split after the network (ridge-penalised maximum "
                     "likelihood, jointly with the network's own risk), then calibrated with it on validation.")
    hidden = (metrics.get("steps") or {}).get("feature_dropout")
    if hidden:
        lines.append(f"- Features hidden in training: in each batch the tabular features of {hidden:.0%} of the subjects "
                     "with timeline events were hidden (read as a subject without a features row), so that the "
                     "networks also read a timeline without clinical values.")
    forest = cfg.extra.get("forest")
    if forest:
        lines.append(f"- A random survival forest beside them ({forest['trees']} trees, at least {forest['min_leaf']} "
                     "training subjects per leaf, the same scaled features and missing indicators, fitted on the train "
                     f"split): the curve is {1 - forest['weight']:g} x that mean + {forest['weight']:g} x the forest's "
                     "curve, for subjects with features. Its trees are step functions: gradient attributions do not see it.")
    lines += [
        f"- Uncertainty band: {metrics.get('uncertainty', 'MC dropout')}.",
        "",
        "## Metrics (test split)",
        f"- Harrell's C: {metric_with_ci(test, 'c_index')}",
        f"- Uno's C: {metric_with_ci(test, 'uno_c')}",
        f"- Integrated Brier score: {metric_with_ci(test, 'ibs')}",
        f"- Time-dependent AUC: {json.dumps(test.get('td_auc'), default=_plain)}",
    ]
    if (spans := metric_spans(test)):
        lines.append(f"- Spans: {spans} (values over other spans are not comparable).")
    if "oracle_c_index" in test:
        lines.append(f"- Oracle C-index of the true risk on the same subjects: {test['oracle_c_index']:.3f}")
    lines += [
        f"- Validation C-index (early stopping): {metrics.get('val_c_index_early_stopping', float('nan')):.3f}",
        "",
        *card_lines(model_profile(cfg)),
        *timeline_card_lines(model_timeline_profile(cfg), (cfg.ehr.sequence or {}).get("codes", [])),
        *feature_card_lines(cfg.ehr.tabular, cfg.ehr.curated_features),
        "## Limitations",
        "- Trained on one cohort; performance on other scanners, sites or populations is unknown.",
        "- The curve ends at the last grid time (the training follow-up): no risk is shown past it (Case review, `predict`'s text, the DICOM SR and the report say so; `predict --json` keeps the last value and lists the horizon in `beyond_grid`).",
        "- Attention weights show what the model looked at, not why; they are not causal explanations.",
        "",
    ]
    return "\n".join(lines)


def _encoder_line(cfg: ModelConfig, metrics: dict[str, Any]) -> str:
    if cfg.image.kind == "none":
        return "- Image encoder: none (this model reads no CT)."
    if cfg.image.kind == "embedding":
        return "- Image encoder: none; the cohort's precomputed image embeddings are projected to the token dimension."
    if cfg.image.kind == "foundation":
        sha = cfg.image.weights_sha256 or "?"
        return (f"- Image encoder: the pretrained 3D CT backbone (Merlin architecture, Inflated 3D ResNet-152, "
                f"`{cfg.image.weights}` weights, SHA-256 {sha[:16]}...), frozen and not trained here; its patch tokens "
                f"({cfg.image.out_dim} channels) on the working grid {list(cfg.image.grid or ())} are the image tokens. "
                "The backbone is not stored in this folder: it is loaded from the installed weights package.")
    init = metrics.get("image_encoder", {}).get("init")
    pretext = metrics.get("image_encoder", {}).get("pretext")
    if pretext:  # core.train.pretext_lesions (issue 14)
        which = ("own slices" if pretext.get("subjects", "all") == "all" else
                 f"slices of the {pretext.get('n_subjects', '?')} subjects without an event before the median time,")
        return (f"- Image encoder: a lesion detector pretrained without labels for {pretext['steps']} steps on the train split's {which} "
                "with synthetic lesions inserted (darker and brighter; ellipses, lobulated and irregular blobs"
                + ("; its forward pass in bfloat16 autocast" if pretext.get("precision") == "bf16" else "") + "), "
                "then frozen; only the projection of its per-slice detection statistics (max logit, soft area"
                + (f"; and the maximum of the lesion logit averaged at the same position over {' and '.join(str(w) for w in cfg.image.detect_z)} "
                   "neighbouring slices, `detect_z`" if cfg.image.detect_z else "")
                + ") and the image path above it learned from the survival labels.")
    return ("- Image encoder: trained once on the train split with an image-only survival objective, then frozen"
            + (f" (initialised from `{init}`)." if init else "."))
