"""Training settings: the defaults of every stage and how overrides merge into them."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np

from core.errors import InputError

Progress = Callable[[float, str], None]

DEFAULTS: dict[str, Any] = {
    "dim": 64, "dropout": 0.1, "heads": 2, "n_intervals": 20,
    "lr": 2e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 60, "patience": 10,
    "modality_dropout": 0.15, "max_events": 64, "max_codes": 512,
    # hide the tabular features of a subject that also has timeline events with this probability per batch
    # (core.train.loop.drop_features), so that the networks learn to read a timeline without clinical values (an
    # uploaded case). "auto": 0.6 for every strategy (since session 41; before, 0 for the strategies that read CT).
    # Without it the shipped ehr_only gave every timeline-only case the same 1-year risk (SD 0.0003 over 160 demo test
    # subjects); with it 0.02-0.04, its C with features unchanged (0.608-0.609 over 3 seeds) and +0.004 to +0.014
    # from a timeline alone. concat and coattention_image on the demo (3 seeds each): test C with features +0.001 on
    # average, from timelines with age and sex +0.004, IBS lower in 5 of 6 (docs/BENCHMARKS.md, "Features hidden in
    # training")
    "feature_dropout": "auto",
    "ensemble": 5,  # stage-B networks from seeds seed .. seed+4 on the shared image encoder; the band is their range
    # "auto": the proportional form (one linear predictor across the grid, calibrated on val; core.models.heads)
    # for models that use images, whose warm-started image path needs the calibration; the full per-interval
    # form for models without images (real tabular data: SurvSet mean C 0.699 full vs 0.689 proportional)
    "proportional_head": "auto",
    "image_anchor": True,  # multimodal strategies = image-only branch (warm-started) + gated strategy (core.models.fusion)
    # strongly right-skewed non-negative tabular columns and timeline values (laboratory values such as BNP or
    # creatinine, counts) are read as log1p before scaling (core.models.ehr_tabular.is_skewed, decided on the train
    # split; config.json ehr.tabular.log, ehr.sequence.log). SurvSet (53 tables) +0.001 C for ehr_only, real-anatomy
    # and demo cohorts +0.005 for the fusions on average (docs/BENCHMARKS.md, "Skewed EHR values on the log scale")
    "ehr_log_skewed": True,
    "ehr_linear": True,  # the head adds a linear term of the tabular features, fitted after the network (core.models.heads)
    # ridge penalty of that term (on the mean NLL; features are standardised). 1.0, not 0.01: on the real-anatomy
    # cohorts (120 train subjects) 0.01 let the term fit train-split noise, and every fusion fell below image_only
    # (spleen + lung: 0.58 against 0.75); at 1.0 the five fusions gain +0.04 and +0.14 there and hold on the demo
    # (docs/BENCHMARKS.md, "The fusions' linear EHR term")
    "ehr_linear_penalty": 1.0,
    # the image + EHR strategies instead choose each network's penalty from this list by 5-fold cross-validation of
    # the term on the train split (SurvivalHead.cv_wide_penalty: the lowest held-out NLL; recorded in each member's
    # steps.ehr_linear). One fixed penalty suits one cohort and not the next: on a demo from generator seed 11, 1.0
    # cost the fusions 0.011 C against the CV choice (docs/BENCHMARKS.md, "The linear term's penalty by
    # cross-validation"). [] = the fixed penalty above; ehr_only keeps the fixed one
    "ehr_linear_penalty_cv": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
    # ehr_only on tabular features: beside each network (without the term above) a ridge-penalised linear model of
    # the features fitted alone on train, as one more ensemble member (core.train.ehr.linear_members); the curve is
    # the mean of both. Ensembles only (--ensemble 1 keeps one network with the term on top, as False does). One
    # default for every table (SurvSet, docs/BENCHMARKS.md); the penalty is on the mean NLL, as ehr_linear_penalty
    "ehr_only_linear_members": True, "ehr_only_linear_penalty": 0.3,
    # those linear members' penalty chosen per member from this list by 5-fold cross-validation on the train split
    # (SurvivalHead.cv_wide_penalty), as the fusions do; [] = the fixed penalty above
    "ehr_only_linear_penalty_cv": [],
    # and, with those linear members, a random survival forest of the same inputs (scikit-survival, exported to the
    # model's safetensors: core.models.forest): the curve is (1 - w) * mean(networks, linear) + w * forest, a fixed w
    # (SurvSet, 113 runs: +0.002 C at w 0.2, docs/BENCHMARKS.md); only when the tabular features are the model's
    # whole EHR input (not beside a timeline or EHR embeddings, which the forest cannot read); 0 turns it off
    "ehr_only_forest_weight": 0.2, "ehr_only_forest_trees": 200, "ehr_only_forest_min_leaf": 15,
    # image_only on a detector encoder: beside each network a ridge-penalised linear model of the study's detection
    # statistics (their mean over windows of these slice counts, maximum over the study; core.train.image_linear),
    # fitted alone on train, as one more ensemble member; the curve is the mean of both. The networks' test C swings
    # with the training seed, the linear model does not (docs/BENCHMARKS.md, "A linear image member")
    "image_only_linear_members": True, "image_only_linear_windows": [9], "image_only_linear_penalty": 0.3,
    # the image + EHR strategies on a detector encoder: the same study statistics join the tabular features in each
    # network's linear term (fitted after the network, ehr_linear_penalty; core.train.fusion_stage). Opt-in instead
    # or as well: beside each network a ridge-penalised linear model of the statistics and the features alone
    # (core.train.image_linear); the curve is the mean of both. On three real-anatomy cohorts the term gains a
    # little on two and is level on the third; the members gain a lot on one and lose on another (docs/BENCHMARKS.md,
    # "The study statistics in the fusions")
    "fusion_study_stats": True, "fusion_linear_members": False, "fusion_linear_penalty": 1.0,
    "threads": None,  # CPU threads of the image stage (None: torch's default); the fusion stage always uses 1
    "image": {"out_dim": 64, "size": 64, "channels": [8, 16, 32, 64], "grid": [32, 64, 64],
              "channels_3d": [8, 16, 32], "hu_window": [-1000.0, 1000.0], "lung_mask": True,
              # closing radius (fraction of the slice width) that adds juxtapleural nodules to the lung mask
              # (core.preprocess.lung.close_lung_regions); absent in older models, which load with 0
              "lung_close": 0.05,
              # the closing also adds solid tissue on the mediastinal side (nodules at the hilum); absent in older
              # models, which load with False
              "lung_medial": True,
              # the organ-agnostic 2D encoder (issue 14; docs/BENCHMARKS.md "Organ-agnostic encoder"): HU windows
              # and local-contrast channels (core.preprocess.transforms.ChannelStack), the last convolution's
              # stride (1: a finer map; "strides": one per layer, overrides it when set), spatial pooling meanmax | attnmax, training-only shifts (pixels) and
              # intensity offsets (input units). These "image" settings are the lung-focused "2d" encoder's; the
              # whole-CT detector (IMAGE_PRESETS below, the default kind of new models on CT) sets them
              "windows": [], "contrast": [], "last_stride": 2, "strides": [], "pool": "meanmax", "augment_shift": 0, "augment_offset": 0.0,
              # one square box around the body of each study before the resize (core.preprocess.transforms.BodyCrop), so a
              # wide field of view does not shrink the body in the encoder's pixels
              "body_crop": False,
              # slice context (core.models.pooling.SliceScales): each slice token plus learnt maps of the mean token
              # over windows of these odd slice counts, before the token projection; [] = none. detect_z (a detector
              # only): per slice, the max over positions of the lesion logit averaged at the same position over these
              # odd slice counts, beside its per-slice statistics; [] = none
              "z_scales": [], "detect_z": [],
              # the slices of every study to one working slice spacing before the encoder (core.preprocess.slices):
              # "auto" = the median spacing of the training studies (a cohort at one spacing reads as before), None
              # = each study's own slices (models saved before session 34), or mm
              "slice_mm": "auto",
              # self-supervised synthetic-lesion pretext before stage A (core.train.pretext_lesions; needs pool
              # "detect"): steps (0 = off), slices per step, learning rate, lesion prior overrides (LesionPrior keys),
              # and whether stage A fine-tunes the trunk (False: frozen, only the slice projection and the image path
              # above it learn from survival labels)
              "pretext_steps": 0, "pretext_batch": 32, "pretext_lr": 2e-3, "pretext_prior": {}, "pretext_finetune": False,
              # the fraction of unlabelled detector positions (highest logits, per slice) left out of the pretext loss:
              # the cohort's real lesions are unlabelled there (0 = off)
              "pretext_ignore_top": 0.0,
              # the pretext's BCE weight of labelled positions, and the weight of a ranking term that asks each
              # synthetic lesion to outrank every unlabelled position of the batch (core.train.detection_loss.ranking_loss; 0 = off)
              "pretext_pos_weight": 10.0, "pretext_rank_weight": 0.0,
              # which training subjects' slices the pretext inserts lesions into (PRETEXT_SUBJECTS): "all", or
              # "no_early_event", leaving out the subjects with an event before the train split's median time, who
              # carry most of the cohort's real (unlabelled) lesions (core.train.settings.pretext_train_subjects)
              "pretext_subjects": "all",
              # the arithmetic of the pretext's forward pass: "fp32", "bf16" (autocast; weights and loss stay float32)
              # or "auto" (bf16 on a CPU where core.runtime.fast_cpu_bf16 says it is fast, else fp32)
              "pretext_precision": "fp32",
              # 30 epochs, the best on validation C kept: with patience 5 the encoder stopped at epoch 2 (of 7) on
              # the noisy 160-subject validation split and graded lesions worse (docs/BENCHMARKS.md)
              "epochs": 30, "batch_size": 16, "lr": 2e-3, "patience": 30,
              "warm_start_path": True},  # stage B starts its image path (projection, pooling) from stage A
    # --image-encoder-kind foundation: the frozen pretrained CT backbone (no stage A); its working grid
    # (slices, rows, cols; ~1.5 s per study on a quiet CPU core at the default) and 0..1 HU window
    "foundation": {"grid": [80, 112, 112], "hu_window": [-1000.0, 200.0], "weights": "astra"},
    "contrastive": {"epochs": 30, "temperature": 0.1, "finetune_lr_scale": 0.1},
}


PRETEXT_SUBJECTS: tuple[str, ...] = ("all", "no_early_event")
PRETEXT_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")

# Named image encoders that are the 2d encoder with other ``image`` settings (``--image-encoder-kind detector``).
# "detector": reads the whole CT, no organ mask: HU windows with local-contrast channels, a 4-layer trunk with a
# 24 x 24 last map at 96 px, first trained (3000 steps) to find synthetic lesions inserted into the training slices
# (core.train.pretext_lesions: parenchyma, low-density nodule and slice-edge shares; every slice gets 1-8 lesions), then
# frozen; survival is learnt from its per-slice detection statistics. The pretext leaves out the subjects with an early
# event, whose real lesions it would otherwise be taught as background. Real-anatomy cohorts (docs/BENCHMARKS.md
# "Lesion-detector encoder, session 14"): image_only test C well above the lung-masked encoder; about 600-800 s more
# CPU per trained image stage in session 14, about 40 % less since session 30 (summed-area local mean, insertion in
# numpy; docs/BENCHMARKS.md "Training speed"). Slice context over 3 and 9 slices (z_scales, session 22: a lesion spans
# neighbouring slices, a false detection mostly one; docs/BENCHMARKS.md "Slice context"). The detector's own same-position logit
# means over 3 and 9 slices (detect_z, session 28: a lesion stays in place from slice to slice, noise and most false
# detections do not; docs/BENCHMARKS.md "Same-position slice windows"). The trunk is 32-64-64-64 channels wide since
# session 45 (16-32-32-32 before): on five 400-subject real-anatomy cohorts image_only gained +0.011 to +0.044 test C
# (mean +0.030) for about 2.2 x the pretext's time (docs/BENCHMARKS.md "A wider detector trunk"); models trained
# before keep their own channels in config.json.
IMAGE_PRESETS: dict[str, dict[str, Any]] = {
    "detector": {"lung_mask": False, "windows": [[-160, 240], [-40, 160], [-200, 1000], [-1000, -300]],
                 "contrast": [9], "pool": "detect", "size": 96, "channels": [32, 64, 64, 64], "strides": [2, 2, 1, 1],
                 "pretext_steps": 3000, "pretext_subjects": "no_early_event", "pretext_precision": "auto", "z_scales": [3, 9],
                 "detect_z": [3, 9],
                 "pretext_prior": {"p_parenchyma": 0.5, "min_visibility": 5, "p_lowdensity": 0.2, "p_edge": 0.2,
                                   "p_lesion": 1.0, "max_lesions": 8}},
}


def merge_settings(overrides: dict[str, Any] | None, epochs: int | None, ensemble: int | None,
                   preset: str | None = None) -> dict[str, Any]:
    """``DEFAULTS`` (with the ``image`` settings of ``IMAGE_PRESETS[preset]`` when given) with ``overrides`` merged
    one level deep, then ``epochs`` and ``ensemble`` when given."""
    settings = copy.deepcopy(DEFAULTS)
    if preset is not None:
        if preset not in IMAGE_PRESETS:
            raise InputError("image_encoder_kind", preset, "no such image preset", f"use one of {', '.join(IMAGE_PRESETS)}")
        settings["image"].update(copy.deepcopy(IMAGE_PRESETS[preset]))
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(settings.get(k), dict):
            settings[k].update(v)
        else:
            settings[k] = v
    if epochs is not None:
        if epochs < 1:
            raise InputError("epochs", epochs, "must be >= 1", "use e.g. --epochs 30")
        settings["epochs"] = int(epochs)
    if ensemble is not None:
        settings["ensemble"] = ensemble
    feature_dropout(settings["feature_dropout"], "ehr_only")  # a bad value fails here, before any training
    windows = settings["image_only_linear_windows"]
    if not isinstance(windows, (list, tuple)) or not windows or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 or w % 2 == 0 for w in windows):
        raise InputError("image_only_linear_windows", windows, "must be a list of odd slice counts >= 1",
                         "use e.g. [9], or set image_only_linear_members to false")
    for key in ("ehr_linear_penalty_cv", "ehr_only_linear_penalty_cv"):
        grid = settings[key]
        if not isinstance(grid, (list, tuple)) or any(
                isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0 for p in grid):
            raise InputError(key, grid, "must be a list of ridge penalties >= 0 (an empty list: the fixed penalty)",
                             "use e.g. [0.1, 0.3, 1.0, 3.0], or []")
    if not isinstance(settings["ehr_log_skewed"], bool):
        raise InputError("ehr_log_skewed", settings["ehr_log_skewed"], "must be true or false",
                         "use true (skewed EHR values read as log(1 + x)) or false (every value on its own scale)")
    if isinstance(settings["ensemble"], bool) or not isinstance(settings["ensemble"], int) or settings["ensemble"] < 1:
        raise InputError("ensemble", settings["ensemble"], "must be an integer >= 1", "use e.g. --ensemble 5 (or 1 for a single network)")
    return settings


def feature_dropout(setting: float | str, fusion: str) -> float:
    """The probability of :data:`DEFAULTS` ``feature_dropout`` for ``fusion`` ("auto": 0.6; image_only reads no
    features, so nothing is hidden there)."""
    if setting == "auto":
        return 0.0 if fusion == "image_only" else 0.6
    try:
        value = float(setting)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise InputError("feature_dropout", setting, "must be a probability in [0, 1) or auto", "use e.g. 0.6 or auto")
    return value


def proportional_head(setting: bool | str, fusion: str, image_kind: str) -> bool:
    """Resolve the ``proportional_head`` setting: ``"auto"`` is True exactly when the model uses images.

    >>> proportional_head("auto", "concat", "2d"), proportional_head("auto", "ehr_only", "2d"), proportional_head(True, "ehr_only", "none")
    (True, False, True)
    """
    if setting == "auto":
        return fusion != "ehr_only" and image_kind != "none"
    if not isinstance(setting, bool):
        raise InputError("proportional_head", setting, "must be true, false or \"auto\"", "leave it at \"auto\"")
    return setting


def pretext_settings(s: dict[str, Any], icfg: dict[str, Any]) -> dict[str, Any] | None:
    """The synthetic-lesion pretext of stage A (``core.train.pretext_lesions``) from the ``image`` settings, or None
    when ``pretext_steps`` is 0 (the default). It needs the 2d encoder with ``pool="detect"``.

    >>> pretext_settings({"pretext_steps": 0}, {"kind": "2d"}) is None
    True
    >>> pretext_settings({"pretext_steps": 10, "pool": "detect"}, {"kind": "2d", "pool": "detect"})["steps"]
    10
    """
    steps = int(s.get("pretext_steps", 0) or 0)
    if steps == 0:
        return None
    if steps < 0:
        raise InputError("image pretext_steps", steps, "must be >= 0", "use 0 (off) or e.g. 1500")
    if icfg.get("kind") != "2d" or icfg.get("pool") != "detect":
        raise InputError("image pretext_steps", steps, f"the lesion pretext needs the 2d encoder with pool \"detect\" (got {icfg.get('kind')}, "
                         f"pool {icfg.get('pool', 'meanmax')})", "set image pool to \"detect\" (and lung_mask false, windows) or pretext_steps 0")
    out = {"steps": steps, "batch": int(s.get("pretext_batch", 32)), "lr": float(s.get("pretext_lr", 2e-3)),
           "prior": dict(s.get("pretext_prior") or {}), "finetune": bool(s.get("pretext_finetune", False))}
    ignore = float(s.get("pretext_ignore_top", 0.0) or 0.0)
    if not 0.0 <= ignore < 0.5:
        raise InputError("image pretext_ignore_top", ignore, "must be a fraction in [0, 0.5)", "use 0 (off) or e.g. 0.01")
    if ignore > 0:  # only when set, so encoders cached before it keep their key
        out["ignore_top"] = ignore
    from core.train.detection_loss import loss_settings  # torch: only when the pretext is on

    out.update(loss_settings(s))  # likewise
    subjects = str(s.get("pretext_subjects", "all") or "all")
    if subjects not in PRETEXT_SUBJECTS:
        raise InputError("image pretext_subjects", subjects, "is not a rule for the pretext's slices", f"use one of {', '.join(PRETEXT_SUBJECTS)}")
    if subjects != "all":  # likewise
        out["subjects"] = subjects
    precision = str(s.get("pretext_precision", "fp32") or "fp32")
    if precision not in PRETEXT_PRECISIONS:
        raise InputError("image pretext_precision", precision, "is not an arithmetic for the pretext", f"use one of {', '.join(PRETEXT_PRECISIONS)}")
    if precision != "fp32":  # likewise; "auto" is resolved on the training's device (core.train.image_stage)
        out["precision"] = precision
    return out


def pretext_train_subjects(train_idx: np.ndarray, time: np.ndarray, event: np.ndarray, rule: str = "all") -> np.ndarray:
    """The training subjects whose slices the pretext uses. ``"all"``: ``train_idx``. ``"no_early_event"``: without
    the subjects who had an event before the median observed time of ``train_idx``. The pretext calls every position
    it did not insert a lesion into background; the cohort's real lesions are there unlabelled, and they are most
    frequent in the subjects who die early, so leaving those out gives the detector cleaner negatives (positive-
    unlabelled learning; survival labels of the train split only).

    >>> pretext_train_subjects(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 1]), "no_early_event")
    array([1, 2, 3])
    """
    if rule == "all":
        return train_idx
    if rule != "no_early_event":
        raise InputError("image pretext_subjects", rule, "is not a rule for the pretext's slices", "use \"all\" or \"no_early_event\"")
    med = float(np.median(time[train_idx]))
    early = (event[train_idx] > 0) & (time[train_idx] < med)
    return train_idx[~early]
