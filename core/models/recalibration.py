"""A model's survival curves recalibrated to a site: ``log H'(t) = offset(t) + b log H(t)`` with ``H = -log S``.

The update is fitted on a site's own outcomes (``core.evaluate.recalibration``: ``offset(t) = a + (c - b) m(t)``,
``a`` the level, ``b`` the spread between patients, ``c`` the course over time, ``m(t)`` the site's mean log H) and
kept in the model's config.json under ``recalibration`` (``offset`` on the model's time grid and ``b``; an entry
written before holds one number ``a`` for every time). The network applies it to its final curve (an ensemble's
mean curve and each member's curve of its band), so every prediction, evaluation and explanation of the copy reads
the recalibrated curve. A cumulative hazard of 0 stays 0 and each curve is held non-increasing. With ``b > 0`` the
order of patients at each time is kept: discrimination is unchanged.

>>> site = SiteRecalibration.from_config({"a": 0.0, "b": 1.0})
>>> bool(torch.allclose(site(torch.tensor([[1.0, 0.8, 0.5]])), torch.tensor([[1.0, 0.8, 0.5]])))
True
>>> [round(float(v), 4) for v in SiteRecalibration(math.log(2.0), 1.0)(torch.tensor([[1.0, 0.8, 0.5]]))[0]]
[1.0, 0.64, 0.25]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

EPS = 1e-12  # S is clamped to [EPS, 1] before the log: S = 0 stays (about) 0


class SiteRecalibration:
    """``S'(t) = exp(-H'(t))``, ``log H' = offset(t) + b log H`` held non-increasing in S, on curves ``[..., T]``."""

    def __init__(self, offset: float | Sequence[float], b: float) -> None:
        values = [float(offset)] if isinstance(offset, (int, float)) else [float(v) for v in offset]
        if not (values and all(math.isfinite(v) for v in values) and math.isfinite(b) and b > 0):
            raise ValueError(f"recalibration: got offset={offset}, b={b}; fix: b must be a positive number, the "
                             "offsets finite numbers")
        self.offset, self.b = torch.tensor(values, dtype=torch.float64), float(b)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | None, n_times: int | None = None) -> SiteRecalibration | None:
        """The recalibration of a config.json ``recalibration`` entry (``offset`` and ``b``, or ``a`` and ``b``),
        None without one; ValueError when its offsets do not match the model's ``n_times`` grid points."""
        if not entry:
            return None
        offset = entry["offset"] if "offset" in entry else float(entry["a"])
        if n_times is not None and not isinstance(offset, float) and len(offset) != n_times:
            raise ValueError(f"recalibration: got {len(offset)} offsets for a model with {n_times} time points; fix: "
                             "recalibrate the model again (python -m core recalibrate)")
        return cls(offset, float(entry["b"]))

    def __call__(self, surv: torch.Tensor) -> torch.Tensor:
        hazard = -torch.log(surv.clamp(min=EPS, max=1.0))
        positive = hazard > 0
        offset = self.offset.to(device=surv.device, dtype=surv.dtype)
        new = torch.where(positive, torch.exp(offset + self.b * torch.log(torch.where(positive, hazard, 1.0))),
                          torch.zeros_like(hazard))
        return torch.exp(-torch.cummax(new, dim=-1).values)
