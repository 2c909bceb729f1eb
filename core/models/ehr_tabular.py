"""Tabular EHR features ("one-hot" representation): scaling, missing indicators, feature tokens.

``TabularScaler`` is fitted on the training split only (mean and standard
deviation per column, ignoring NaN) and stored in the model's ``config.json``.
A missing value becomes 0 after scaling plus a missing indicator, so missingness
itself can carry signal. ``FeatureTokenizer`` turns the ``F`` scaled values into
``F`` tokens (``x_f * w_f + b_f + miss_f * m_f``, as in FT-Transformer) plus one
summary token from an MLP over all values and indicators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn


@dataclass
class TabularScaler:
    """Train-split standardisation with missing indicators.

    >>> s = TabularScaler.fit(pd.DataFrame({"a": [1.0, 3.0, np.nan]}))
    >>> x, m = s.transform(pd.DataFrame({"a": [2.0, np.nan]}))
    >>> x.tolist(), m.tolist()
    ([[0.0], [0.0]], [[0.0], [1.0]])
    """

    columns: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> TabularScaler:
        mean = train.mean(skipna=True).fillna(0.0)
        std = train.std(skipna=True, ddof=0).fillna(1.0)
        std = std.where(std > 1e-8, 1.0)
        return cls([str(c) for c in train.columns], [float(v) for v in mean], [float(v) for v in std])

    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``[n, F]`` scaled values (clipped to +-6, NaN -> 0) and ``[n, F]`` missing indicators."""
        frame = df.reindex(columns=self.columns)
        raw = frame.to_numpy(dtype=np.float64)
        miss = ~np.isfinite(raw)
        x = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        x = np.clip(np.where(miss, 0.0, x), -6.0, 6.0)
        return x.astype(np.float32), miss.astype(np.float32)

    def to_json(self) -> dict:
        return {"columns": self.columns, "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, d: dict) -> TabularScaler:
        return cls(list(d["columns"]), list(d["mean"]), list(d["std"]))


class FeatureTokenizer(nn.Module):
    """``[B, F]`` values + indicators -> ``[B, F + 1, d]`` tokens (F feature tokens, 1 summary token).

    >>> FeatureTokenizer(3, 8)(torch.zeros(2, 3), torch.zeros(2, 3)).shape
    torch.Size([2, 4, 8])
    """

    def __init__(self, n_features: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(n_features, dim))
        self.missing = nn.Parameter(torch.zeros(n_features, dim))
        self.summary = nn.Sequential(nn.Linear(2 * n_features, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.weight + self.bias + miss.unsqueeze(-1) * self.missing
        summary = self.summary(torch.cat([x, miss], dim=-1)).unsqueeze(1)
        return torch.cat([tokens, summary], dim=1)
