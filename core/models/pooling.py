"""Masked softmax and gated attention pooling over token sets.

A subject with no tokens (a missing modality) gets all-zero weights and a zero
vector, never NaN: weights are renormalised over the present tokens only.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over entries where ``mask`` is true; rows without any true entry give zeros."""
    mask = mask.to(torch.bool)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim) * mask.to(scores.dtype)
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(1e-12)


class AttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018): ``w = softmax(a^T (tanh(Vh) * sigmoid(Uh)))``.

    >>> pool = AttentionPool(8)
    >>> h, w = pool(torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]))
    >>> [round(float(x), 4) for x in w.detach().sum(-1)]
    [1.0, 0.0]
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.a = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.a(torch.tanh(self.v(tokens)) * torch.sigmoid(self.u(tokens))).squeeze(-1)
        weights = masked_softmax(scores, mask)
        return torch.einsum("bs,bsd->bd", weights, tokens), weights
