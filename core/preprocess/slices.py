"""Slices at a working slice spacing: the last step of a per-slice 2D chain (``ImageTransforms.slices``).

A per-slice encoder gives one token per slice, and what a token sees (how much of the body, how much noise, how
many slices make up a lesion, how far the slice-context windows reach) depends on the slice spacing. A model
trained on 5 mm slices that reads a 1 mm reconstruction of the same patient gets five times as many tokens, each
thinner and noisier: its risk moves although the patient did not. :class:`SliceSpacing` bins the prepared
slices of a study, ``[B, S, H, W]`` at the study's slice spacing ``src``, into slabs near the model's working
spacing, with one linear map along the scan axis (:meth:`SliceSpacing.matrix`), whole slices only:

* thinner slices: every ``k = round(slice_mm / src)`` consecutive slices are averaged into one slab (the last slab
  takes what is left), as a thicker reconstruction averages them: a 1 mm study read by a 5 mm model gives 5 mm
  slabs, a 2 mm study read by a 6 mm model 6 mm slabs;
* thicker slices: each is repeated ``k = round(src / slice_mm)`` times;
* ``k = 1`` (a spacing within a factor of about 1.5 of the working one): the slices as they are, exactly. No slice
  is ever split between slabs: a fractional resampling of slices at nearly the working spacing mixes neighbours
  for little gain, and on a real-anatomy cohort at 0.65-0.88 mm it cost image_only 0.04 of test C
  (docs/BENCHMARKS.md "A working slice spacing").

The window and the in-plane resize are per voxel and per slice, so resampling the resized slices equals resampling
the HU first (the HU window clips only where air or dense bone meet within a slab); doing it last keeps the step
on small tensors and lets training resample its cached slices. The map is differentiable: gradients and Captum's
maps come back on the study's own slices. :meth:`SliceSpacing.spread_weights` and :meth:`SliceSpacing.spread_maps` bring a per-slab quantity (attention
weights, a detector's map) back onto the study's slices.

>>> import torch
>>> step = SliceSpacing(5.0)
>>> step.matrix(4, 2.5).tolist()
[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
>>> step(torch.arange(4.0).reshape(1, 4, 1, 1), 2.5).flatten().tolist()
[0.5, 2.5]
>>> step(torch.arange(4.0).reshape(1, 4, 1, 1), 3.6).shape[1]  # round(5 / 3.6) = 1: left as it is
4
>>> step.matrix(3, 10.0).tolist()  # thicker slices repeated
[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InputError

if TYPE_CHECKING:
    import torch



@dataclass(frozen=True)
class SliceSpacing:
    """Prepared slices ``[B, S, H, W]`` at ``src_mm`` apart -> ``[B, S', H, W]`` at ``slice_mm`` apart."""

    slice_mm: float
    name = "slice_spacing"

    def __post_init__(self) -> None:
        if not np.isfinite(self.slice_mm) or self.slice_mm <= 0:
            raise InputError("slice_mm", self.slice_mm, "must be a positive number of mm", "use e.g. 5.0, or 'auto'")

    def factor(self, src_mm: float) -> int:
        """Slices per slab (positive: thinner slices averaged) or copies per slice (negative: thicker slices
        repeated); 1 = as they are."""
        if not np.isfinite(src_mm) or src_mm <= 0:
            raise InputError("slice spacing", src_mm, "must be a positive number of mm", "check the study's geometry")
        ratio = self.slice_mm / float(src_mm)
        return max(1, int(round(ratio))) if ratio >= 1 else -max(1, int(round(1.0 / ratio)))

    def identity(self, src_mm: float) -> bool:
        """True when a study at ``src_mm`` is read as it is (one slice per slab)."""
        return abs(self.factor(src_mm)) == 1

    def n_out(self, n: int, src_mm: float) -> int:
        """How many slabs ``n`` study slices at ``src_mm`` make."""
        k = self.factor(src_mm)
        return int(n) * -k if k < 0 else -(-int(n) // k)

    def matrix(self, n: int, src_mm: float) -> torch.Tensor:
        """``[S', n]`` weights: row ``j`` holds the share of each study slice in slab ``j`` (rows sum to 1); the
        identity for ``factor`` 1."""
        import torch

        k, m = self.factor(src_mm), self.n_out(n, src_mm)
        if abs(k) == 1:
            return torch.eye(int(n))
        w = np.zeros((m, int(n)))
        if k > 0:
            for j in range(m):
                w[j, j * k:min((j + 1) * k, n)] = 1.0
        else:
            w[np.arange(m), np.arange(m) // -k] = 1.0
        return torch.from_numpy(w / w.sum(axis=1, keepdims=True)).float()

    def __call__(self, x: torch.Tensor, src_mm: float) -> torch.Tensor:
        import torch

        if self.identity(src_mm):
            return x
        return torch.einsum("mn,bn...->bm...", self.matrix(int(x.shape[1]), src_mm).to(x), x)

    def _columns(self, n: int, src_mm: float) -> torch.Tensor:
        w = self.matrix(n, src_mm)
        return w / w.sum(dim=0, keepdim=True).clamp_min(1e-12)  # [S', n]: each study slice's slabs, summing to 1

    def spread_weights(self, weights: torch.Tensor, n: int, src_mm: float) -> torch.Tensor:
        """Per-slab weights ``[..., S']`` (attention over tokens) -> ``[..., n]`` on the study's slices, each study
        slice weighted by the slabs it lies in; renormalised to the same total."""
        out = weights @ self._columns(n, src_mm).to(weights)
        return out * (weights.sum(-1, keepdim=True) / out.sum(-1, keepdim=True).clamp_min(1e-12))

    def spread_maps(self, maps: torch.Tensor, n: int, src_mm: float) -> torch.Tensor:
        """Per-slab maps ``[S', ...]`` (a detector's evidence, Grad-CAM) -> ``[n, ...]``: every study slice shows the
        overlap-weighted mean of its slabs' maps."""
        import torch

        return torch.einsum("mn,m...->n...", self._columns(n, src_mm).to(maps), maps)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "slice_mm": self.slice_mm,
                "rule": f"whole slices averaged (thicker ones repeated) into slabs near {self.slice_mm:g} mm; "
                        "slices within a factor of about 1.5 as they are"}

