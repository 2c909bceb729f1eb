"""2D CNN applied to every axial slice: one token per slice.

The network takes prepared slices ``[B, S, size, size]`` (windowed, optionally
lung-masked and resized by ``core.preprocess.transforms``, which run before it
with differentiable operations so that gradients still reach the study's
voxels). Each slice gets its row and column coordinates as two extra channels
(CoordConv: where in the slice matters), stride-2 convolutions with GroupNorm
(no batch norm, so train and eval modes give the same tokens and cached tokens
match tokens from voxels), then the mean and max of the last feature map are
projected to ``out_dim``.

With a lung-masked input, ``soft_tissue`` = ``(threshold, width)`` in the input's
units adds one input per slice: ``log(1 + soft-tissue pixels)``, a smooth
(differentiable) count of nodule-like pixels inside the lungs (everything
outside them is lung air after the mask).
"""

from __future__ import annotations

import torch
from torch import nn


class SliceEncoder2D(nn.Module):
    """Per-slice CNN: prepared slices ``[B, S, size, size]`` -> ``[B, S, out_dim]`` tokens.

    >>> enc = SliceEncoder2D(out_dim=16, size=32, channels=(4, 8))
    >>> enc(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3, 16])
    >>> SliceEncoder2D(out_dim=16, size=32, channels=(4, 8), soft_tissue=(-0.3, 0.025))(torch.zeros(1, 2, 32, 32)).shape
    torch.Size([1, 2, 16])
    """

    def __init__(self, out_dim: int = 64, size: int = 64, channels: tuple[int, ...] = (8, 16, 32, 64),
                 soft_tissue: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.size = int(size)
        self.soft_tissue = None if soft_tissue is None else (float(soft_tissue[0]), float(soft_tissue[1]))
        layers: list[nn.Module] = []
        c_in = 3  # HU + row and column coordinates (CoordConv: where in the slice matters)
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(4, c), c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * c_in + (1 if self.soft_tissue else 0), out_dim)
        ramp = torch.linspace(-1.0, 1.0, self.size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))[None], persistent=False)
        self.out_dim = out_dim

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution (target layer for Grad-CAM)."""
        return self.features[-3]

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        """``[B, S, size, size]`` prepared slices -> ``[B, S, out_dim]``."""
        b, s = slices.shape[:2]
        x = slices.reshape(b * s, 1, self.size, self.size)
        x = torch.cat([x, self.coords.to(x).expand(b * s, 2, self.size, self.size)], dim=1)
        fmap = self.features(x)
        parts = [fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))]
        if self.soft_tissue:
            parts.append(self.soft_tissue_area(slices).reshape(b * s, 1))
        return self.proj(torch.cat(parts, dim=1)).reshape(b, s, -1)

    def soft_tissue_area(self, slices: torch.Tensor) -> torch.Tensor:
        """``[B, S, size, size]`` prepared (lung-masked) slices -> ``[B, S]`` log(1 + soft-tissue pixels)."""
        assert self.soft_tissue is not None
        thr, width = self.soft_tissue
        return torch.log1p(torch.sigmoid((slices - thr) / width).sum(dim=(2, 3)))
