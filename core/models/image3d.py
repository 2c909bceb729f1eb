"""3D convolutional image encoder built from MONAI blocks: one token per 3D patch.

The network takes a prepared volume ``[B, *grid]`` (windowed and resized to
``grid`` voxels by ``core.preprocess.transforms``, before it); stride-2 MONAI
``Convolution`` blocks (three by default) give a ``grid / 8`` feature map; every
position is a patch token. ``patch_slices(S)`` maps patch tokens back to the input slices so
that attention over patches can be shown as weights over slices.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn


class VolumeEncoder3D(nn.Module):
    """Prepared volume ``[B, *grid]`` -> ``[B, P, out_dim]`` patch tokens (P = prod(grid) / 8 ** len(channels)).

    >>> enc = VolumeEncoder3D(out_dim=8, grid=(16, 32, 32), channels=(4, 8, 8))
    >>> enc(torch.zeros(1, 16, 32, 32)).shape
    torch.Size([1, 32, 8])
    """

    def __init__(self, out_dim: int = 64, grid: tuple[int, int, int] = (32, 64, 64), channels: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        blocks: list[nn.Module] = []
        c_in = 1
        for c in channels:
            blocks.append(Convolution(spatial_dims=3, in_channels=c_in, out_channels=c, strides=2, kernel_size=3,
                                      act="GELU", norm=("group", {"num_groups": min(4, c)})))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.proj = nn.Linear(c_in, out_dim)
        self.out_dim = out_dim
        self.token_grid = tuple(g // 2 ** len(channels) for g in self.grid)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution block (target layer for Grad-CAM)."""
        return self.features[-1]

    def forward(self, vol: torch.Tensor) -> torch.Tensor:
        fmap = self.features(vol.unsqueeze(1))  # [B, C, z, y, x]
        return self.proj(fmap.flatten(2).transpose(1, 2))

    def patch_slices(self, n_slices: int) -> torch.Tensor:
        """``[P, S]`` matrix: row p spreads patch p's weight evenly over the input slices its z-slab covers."""
        z = self.token_grid[0]
        per_slab = self.token_grid[1] * self.token_grid[2]
        m = torch.zeros(z * per_slab, n_slices)
        bounds = torch.linspace(0, n_slices, z + 1)
        for k in range(z):
            lo, hi = int(bounds[k].floor()), max(int(bounds[k + 1].ceil()), int(bounds[k].floor()) + 1)
            m[k * per_slab:(k + 1) * per_slab, lo:min(hi, n_slices)] = 1.0 / max(1, min(hi, n_slices) - lo)
        return m
