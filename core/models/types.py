"""The data classes passed between the model, the explainer and the app (docs/CONTRACTS.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: the app reads cached predictions without importing torch
    import torch


class NetBatch(TypedDict, total=False):
    """The network's batch (``SurvivalNet.forward``): tensors, batch first; any modality may be absent.

    A dictionary rather than a dataclass because training indexes, moves and masks every entry
    alike (``core.train.loop``) and DistributedDataParallel passes it through unchanged.
    """

    image: torch.Tensor                  # prepared image ([B, S, size, size] or [B, *grid]), encoded by the net
    image_tokens: torch.Tensor           # [B, S or P, D] encoder tokens (core.models.net.with_image_tokens)
    image_token_mask: torch.Tensor       # [B, S or P]
    n_slices: torch.Tensor               # () the study's slice count (3D patch weights -> slices)
    image_embedding: torch.Tensor        # [B, K * D] precomputed
    image_present: torch.Tensor          # [B]
    codes: torch.Tensor                  # [B, E] event code ids (long)
    values: torch.Tensor                 # [B, E] standardised numeric values
    value_missing: torch.Tensor          # [B, E]
    dt_days: torch.Tensor                # [B, E] days before the index time
    event_mask: torch.Tensor             # [B, E]
    features: torch.Tensor               # [B, F] scaled tabular features
    feature_missing: torch.Tensor        # [B, F]
    features_present: torch.Tensor       # [B]
    ehr_embedding: torch.Tensor          # [B, D]
    ehr_embedding_present: torch.Tensor  # [B]
    time: torch.Tensor                   # [B] days (training only)
    event: torch.Tensor                  # [B] 1/0 (training only)


@dataclass
class CaseInputs:
    """A batch of one subject, ready for ``LoadedModel.forward``.

    ``image`` is float32 ``[1, S, R, C]`` in HU on the loaded Volume's voxel grid
    (the model's transforms prepare it with differentiable operations, so gradients reach every voxel);
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
    slice_mm: float | None = None  # the CT's slice spacing (a model with a working slice spacing resamples to it)


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
