"""A model's survival curves recalibrated to a site: ``H'(t | x) = exp(a) * H(t | x) ** b`` with ``H = -log S``.

The two numbers are fitted on a site's own outcomes (``core.evaluate.recalibration``) and kept in the model's
config.json under ``recalibration``; the network applies them to its final curve (an ensemble's mean curve and
each member's curve of its band), so every prediction, evaluation and explanation of the copy reads the
recalibrated curve. With ``b > 0`` the order of patients at each time is kept: discrimination is unchanged.

>>> site = SiteRecalibration.from_config({"a": 0.0, "b": 1.0})
>>> bool(torch.allclose(site(torch.tensor([[1.0, 0.8, 0.5]])), torch.tensor([[1.0, 0.8, 0.5]])))
True
>>> [round(float(v), 4) for v in SiteRecalibration(math.log(2.0), 1.0)(torch.tensor([[1.0, 0.8, 0.5]]))[0]]
[1.0, 0.64, 0.25]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

EPS = 1e-12  # S is clamped to [EPS, 1] before the log: S = 0 stays (about) 0


class SiteRecalibration:
    """``S'(t) = exp(-exp(a) * (-log S(t)) ** b)`` on a batch of curves ``[..., T]`` (torch)."""

    def __init__(self, a: float, b: float) -> None:
        if not (math.isfinite(a) and math.isfinite(b) and b > 0):
            raise ValueError(f"recalibration: got a={a}, b={b}; fix: b must be a positive number, a a finite one")
        self.a, self.b = float(a), float(b)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | None) -> SiteRecalibration | None:
        """The recalibration of a config.json ``recalibration`` entry ({"a", "b", ...}), None without one."""
        if not entry:
            return None
        return cls(float(entry["a"]), float(entry["b"]))

    def __call__(self, surv: torch.Tensor) -> torch.Tensor:
        hazard = -torch.log(surv.clamp(min=EPS, max=1.0))
        return torch.exp(-math.exp(self.a) * hazard.pow(self.b))
