"""The data classes passed between the model, the explainer and the app (docs/CONTRACTS.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch


@dataclass
class CaseInputs:
    """A batch of one subject, ready for ``LoadedModel.forward``.

    ``image`` is float32 ``[1, S, R, C]`` in HU on the loaded Volume's voxel grid
    (the network windows and resizes inside, so gradients reach every voxel);
    None when the subject has no CT or the model uses precomputed image embeddings
    (then ``image_embedding`` holds them).
    """

    image: torch.Tensor | None
    image_mask: torch.Tensor
    ehr: dict[str, torch.Tensor]
    events: pd.DataFrame
    image_embedding: torch.Tensor | None = None
    subject_id: str = ""
    feature_names: list[str] = field(default_factory=list)


@dataclass
class ModelOutput:
    """What the network returns for a batch (tensors, differentiable)."""

    survival: torch.Tensor  # [B, T] S(t) on LoadedModel.times
    risk: torch.Tensor  # [B] higher = worse
    slice_weights: torch.Tensor | None  # [B, S] sums to 1 (zeros when the image is missing)
    event_weights: torch.Tensor | None  # [B, E] sums to 1 (zeros when no events)
    attention: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class CasePrediction:
    """One subject's prediction as numpy arrays, with an MC-dropout band."""

    times: np.ndarray
    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    risk: float
    risk_at: dict[int, float]
    modalities_used: list[str]
    slice_weights: np.ndarray | None
    event_weights: np.ndarray | None
    attention: dict[str, np.ndarray] = field(default_factory=dict)
