"""Slices at a working slice spacing: the last step of a per-slice 2D chain (``ImageTransforms.slices``).

A per-slice encoder gives one token per slice, and what a token sees (how much of the body, how much noise, how
many slices make up a lesion, how far the slice-context windows reach) depends on the slice spacing. A model
trained on 5 mm slices that reads a 1 mm reconstruction of the same patient gets five times as many tokens, each
thinner and noisier: its risk moves although the patient did not. :class:`SliceSpacing` resamples the prepared
slices of a study, ``[B, S, H, W]`` at the study's slice spacing, to ``[B, S', H, W]`` at the model's working
spacing, with one linear map along the scan axis (:meth:`SliceSpacing.matrix`):

* output slice ``j`` is the slab ``[j t, (j + 1) t)`` of the scanned range (``S'`` slabs of width ``t``, tiling the
  ``S x src`` mm the study covers; ``S' = round(S x src / slice_mm)``), and each input slice enters it with the
  fraction of the slab it overlaps: thinner slices are averaged as a thicker reconstruction would (area
  weighting), thicker ones are repeated;
* within ``TOLERANCE`` of the working spacing the slices are left as they are (the identity, not a resampling), so
  a study at the training spacing gives exactly the tensor it gave before.

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
>>> step(torch.arange(4.0).reshape(1, 4, 1, 1), 5.04).shape[1]  # within the tolerance: left as it is
4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InputError

if TYPE_CHECKING:
    import torch

TOLERANCE = 0.02  # relative: a study within 2 % of the working spacing is read as it is


@dataclass(frozen=True)
class SliceSpacing:
    """Prepared slices ``[B, S, H, W]`` at ``src_mm`` apart -> ``[B, S', H, W]`` at ``slice_mm`` apart."""

    slice_mm: float
    name = "slice_spacing"

    def __post_init__(self) -> None:
        if not np.isfinite(self.slice_mm) or self.slice_mm <= 0:
            raise InputError("slice_mm", self.slice_mm, "must be a positive number of mm", "use e.g. 5.0, or 'auto'")

    def identity(self, src_mm: float) -> bool:
        """True when a study at ``src_mm`` is read as it is (within ``TOLERANCE`` of the working spacing)."""
        return abs(float(src_mm) / self.slice_mm - 1.0) <= TOLERANCE

    def n_out(self, n: int, src_mm: float) -> int:
        """How many working slices ``n`` study slices at ``src_mm`` make."""
        return int(n) if self.identity(src_mm) else max(1, int(round(n * float(src_mm) / self.slice_mm)))

    def matrix(self, n: int, src_mm: float) -> torch.Tensor:
        """``[S', n]`` weights: row ``j`` gives the fraction of working slab ``j`` each study slice covers (rows sum
        to 1); the identity within the tolerance."""
        import torch

        if not np.isfinite(src_mm) or src_mm <= 0:
            raise InputError("slice spacing", src_mm, "must be a positive number of mm", "check the study's geometry")
        m = self.n_out(n, src_mm)
        if self.identity(src_mm):
            return torch.eye(int(n))
        edges_in = np.arange(n + 1, dtype=np.float64) / n  # both grids on the scanned range scaled to [0, 1]
        edges_out = np.arange(m + 1, dtype=np.float64) / m
        lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
        hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
        w = np.clip(hi - lo, 0.0, None)
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
                "rule": f"slices averaged (or repeated) to {self.slice_mm:g} mm slabs; within {TOLERANCE:.0%} as they are"}

