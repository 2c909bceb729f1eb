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
EHR_ENCODERS: tuple[str, ...] = ("auto", "sequence", "tabular", "embedding", "none")
# what --ehr-encoder accepts on the command line ("none" is internal: image_only trains without EHR)
EHR_ENCODER_CHOICES: tuple[str, ...] = tuple(e for e in EHR_ENCODERS if e != "none")
