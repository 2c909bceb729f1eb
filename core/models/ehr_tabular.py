"""Tabular EHR features ("one-hot" representation): scaling, missing indicators, feature tokens.

``TabularScaler`` is fitted on the training split only (mean and standard
deviation per column, ignoring NaN) and stored in the model's ``config.json``.
Optionally (``log_skewed``) a strongly right-skewed non-negative column (a
laboratory value such as BNP or creatinine, a count of visits) is read as
``log1p`` first, so that a few extreme values do not set the column's scale.
A missing value becomes 0 after scaling plus a missing indicator, so missingness
itself can carry signal. ``FeatureTokenizer`` turns the ``F`` scaled values into
``F`` tokens (``x_f * w_f + b_f + miss_f * m_f``, as in FT-Transformer) plus one
summary token from an MLP over all values and indicators.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    log: list[str] = field(default_factory=list)  # columns read as log1p(max(x, 0)) before scaling

    @classmethod
    def fit(cls, train: pd.DataFrame, *, log_skewed: bool = False) -> TabularScaler:
        """Mean and standard deviation per column; with ``log_skewed``, ``log1p`` for the columns that
        ``skewed_columns`` names (decided on these rows only)."""
        columns = [str(c) for c in train.columns]
        frame = train.set_axis(columns, axis=1)
        log = skewed_columns(frame) if log_skewed else []
        if log:
            frame = frame.copy()
            frame[log] = log_scale(frame[log].to_numpy(dtype=np.float64))
        mean = frame.mean(skipna=True).fillna(0.0)
        std = frame.std(skipna=True, ddof=0).fillna(1.0)
        std = std.where(std > 1e-8, 1.0)
        return cls(columns, [float(v) for v in mean], [float(v) for v in std], log)

    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``[n, F]`` scaled values (clipped to +-6, NaN -> 0) and ``[n, F]`` missing indicators."""
        frame = df.reindex(columns=self.columns)
        raw = frame.to_numpy(dtype=np.float64, copy=True)  # written below; pandas copy-on-write hands out read-only views
        miss = ~np.isfinite(raw)
        if self.log:
            cols = [self.columns.index(c) for c in self.log]
            raw[:, cols] = log_scale(raw[:, cols])
        x = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        x = np.clip(np.where(miss, 0.0, x), -6.0, 6.0)
        return x.astype(np.float32), miss.astype(np.float32)

    def to_json(self) -> dict:
        out: dict = {"columns": self.columns, "mean": self.mean, "std": self.std}
        if self.log:  # stored only when used: older model folders read as before
            out["log"] = self.log
        return out

    @classmethod
    def from_json(cls, d: dict) -> TabularScaler:
        return cls(list(d["columns"]), list(d["mean"]), list(d["std"]), list(d.get("log", [])))


def log_scale(values: np.ndarray) -> np.ndarray:
    """``log1p(max(x, 0))``, the scale of a skewed column or timeline code (NaN stays NaN: a missing value)."""
    return np.log1p(np.maximum(np.asarray(values, dtype=np.float64), 0.0))


def _skewness(v: np.ndarray) -> float:
    s = float(v.std())
    return 0.0 if s < 1e-12 else float(((v - v.mean()) ** 3).mean() / s ** 3)


def is_skewed(v: np.ndarray, threshold: float = 1.0) -> bool:
    """Whether values are read better as ``log1p``: finite ones non-negative, more than two distinct, skewness
    above ``threshold``, and less skewed (in absolute value) after ``log1p``."""
    v = v[np.isfinite(v)]
    if len(v) < 3 or v.min() < 0 or len(np.unique(v)) <= 2:
        return False
    sk = _skewness(v)
    return sk > threshold and abs(_skewness(np.log1p(v))) < abs(sk)


def skewed_columns(train: pd.DataFrame, threshold: float = 1.0) -> list[str]:
    """Columns of ``train`` to read as ``log1p`` (``is_skewed``).

    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame({"bnp": np.exp(rng.normal(5, 1, 200)), "age": rng.normal(60, 10, 200),
    ...                    "sex": rng.integers(0, 2, 200).astype(float)})
    >>> skewed_columns(df)
    ['bnp']
    """
    return [str(c) for c in train.columns
            if is_skewed(pd.to_numeric(train[c], errors="coerce").to_numpy(dtype=np.float64), threshold)]


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
