"""2D CNN applied to every axial slice: one token per slice.

The network takes HU on the Volume's own voxel grid, ``[B, S, R, C]``, and does
all preprocessing inside ``forward`` with differentiable operations: clip to a
HU window, scale to [-1, 1], resize each slice to ``size x size`` with
``F.interpolate`` (bilinear). Gradients (Captum) therefore come back on the
original voxel grid of ``Volume.hu``, voxel for voxel.

Training splits the forward in two (``preprocess`` then ``trunk``) so that the
resized slices can be computed once per cohort; ``forward`` is exactly
``trunk(preprocess(x))``. No batch norm (GroupNorm only), so train and eval
modes give the same tokens and cached tokens match tokens from voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SliceEncoder2D(nn.Module):
    """Per-slice CNN: ``[B, S, R, C]`` HU -> ``[B, S, out_dim]`` tokens.

    >>> enc = SliceEncoder2D(out_dim=16, size=32, channels=(4, 8))
    >>> enc(torch.zeros(2, 3, 50, 40)).shape
    torch.Size([2, 3, 16])
    """

    def __init__(self, out_dim: int = 64, size: int = 64, channels: tuple[int, ...] = (8, 16, 32, 64),
                 hu_window: tuple[float, float] = (-1000.0, 1000.0)) -> None:
        super().__init__()
        self.size = int(size)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        layers: list[nn.Module] = []
        c_in = 3  # HU + row and column coordinates (CoordConv: where in the slice matters)
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(4, c), c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * c_in, out_dim)
        ramp = torch.linspace(-1.0, 1.0, self.size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))[None], persistent=False)
        self.out_dim = out_dim

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution (target layer for Grad-CAM)."""
        return self.features[-3]

    def preprocess(self, hu: torch.Tensor) -> torch.Tensor:
        """``[B, S, R, C]`` HU -> ``[B, S, size, size]`` in [-1, 1] (differentiable)."""
        b, s, r, c = hu.shape
        lo, hi = self.hu_window
        x = (hu.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
        x = F.interpolate(x.reshape(b * s, 1, r, c), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.reshape(b, s, self.size, self.size)

    def trunk(self, slices: torch.Tensor) -> torch.Tensor:
        """``[B, S, size, size]`` preprocessed slices -> ``[B, S, out_dim]``."""
        b, s = slices.shape[:2]
        x = slices.reshape(b * s, 1, self.size, self.size)
        x = torch.cat([x, self.coords.to(x).expand(b * s, 2, self.size, self.size)], dim=1)
        fmap = self.features(x)
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        return self.proj(pooled).reshape(b, s, -1)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.preprocess(hu))
