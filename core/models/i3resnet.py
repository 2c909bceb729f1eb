"""Merlin's image backbone, an Inflated 3D ResNet-152, and a frozen patch-token encoder built on it.

``I3ResNet`` is the architecture of Merlin's image encoder (Stanford MIMI Lab)
and of the "astra" weights derived from it: torchvision's ResNet-152
(bottleneck v1.5, stride on the 3x3 convolution) inflated to 3D, with a
``(3, 7, 7)`` stem convolution of stride ``(1, 2, 2)``, a ``3x3x3`` stride-2 max
pool and four stages of ``(3, 8, 36, 3)`` bottleneck blocks. Its module and
tensor names equal those of the published state dict (``conv1.weight``,
``layer3.17.bn2.running_var``, ``layer4.0.downsample.0.weight``, ...), so the
weights load with ``load_state_dict(strict=True)``: 930 tensors, 117.4 M
parameters (117.5 M counting the BatchNorm running statistics).

``FoundationEncoder3D`` turns a study into patch tokens:

* input: HU ``[B, S, R, C]`` on the study's own voxel grid, in the project's
  orientation (slice 0 inferior, rows anterior -> posterior, columns patient
  right -> left; see ``core.io.volume``);
* preprocessing (``preprocess``), the chest chain the astra weights were trained
  with: resize the HU volume to the working grid ``(slices, rows, cols)`` (area
  averaging along the axes that shrink, then trilinear along the axes that
  grow; where every axis shrinks this is the reference ``mode="area"``
  resize), clip to ``hu_window`` (default -1000..200 HU) and scale to 0..1,
  in that order as in the reference chain; reorient to the RAS volume
  ``[X, Y, Z]`` the weights expect and permute it to the network's
  ``[Z, X, Y]`` layout, which is the study grid transposed in-plane with rows
  and columns reversed. Full resolution is ``(160, 224, 224)`` (Merlin's
  224 x 224 x 160); smaller grids trade detail for CPU time. The body crop of
  the reference chain (foreground above -1000 HU) is left to the caller's
  transforms so that tokens map back to the study's slices exactly;
* output: the last stage's feature map (2048 channels, stride 16 along slices
  and 32 in-plane, ``ceil`` at every stride-2 step) turned back to the study's
  orientation ``[B, 2048, z, r, c]`` and flattened slice-slab first into tokens
  ``[B, P, 2048]`` with ``P = z * r * c``; ``encode`` also returns the pooled
  vector (mean over the tokens, Merlin's global average pool).

``patch_slices(S)`` maps the tokens to the input slices, and ``gradcam_layer``
is the module whose output is that study-oriented feature map, as in
``core.models.image3d.VolumeEncoder3D``.

>>> enc = FoundationEncoder3D(grid=(32, 64, 64), weights=None)
>>> enc.token_grid, enc(torch.zeros(1, 20, 50, 40)).shape
((2, 2, 2), torch.Size([1, 8, 2048]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: ResNet-152 stage depths.
RESNET152_BLOCKS: tuple[int, int, int, int] = (3, 8, 36, 3)
#: Merlin's full input size as (slices, rows, cols): 224 x 224 in-plane, 160 slices.
FULL_GRID: tuple[int, int, int] = (160, 224, 224)
#: HU range mapped to 0..1 by the astra chest chain (Merlin's own chain uses -1000..1000).
ASTRA_HU_WINDOW: tuple[float, float] = (-1000.0, 200.0)
#: Working grid used when none is given: (slices, rows, cols); 79 GMAC per study against 627 at the full grid.
DEFAULT_GRID: tuple[int, int, int] = (80, 112, 112)


def _ceil_half(n: int, times: int) -> int:
    for _ in range(times):
        n = (n + 1) // 2
    return n


class Bottleneck3d(nn.Module):
    """Inflated ResNet bottleneck: 1x1x1 -> 3x3x3 (carries the stride) -> 1x1x1, BatchNorm and ReLU, residual sum.

    >>> Bottleneck3d(64, 16, stride=2, downsample=True)(torch.zeros(1, 64, 4, 4, 4)).shape
    torch.Size([1, 64, 2, 2, 2])
    """

    def __init__(self, in_channels: int, width: int, stride: int = 1, expansion: int = 4, downsample: bool = False,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        out_channels = width * expansion
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width, eps=norm_eps)
        self.conv2 = nn.Conv3d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width, eps=norm_eps)
        self.conv3 = nn.Conv3d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels, eps=norm_eps)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Sequential | None = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels, eps=norm_eps),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class I3ResNet(nn.Module):
    """Inflated 3D ResNet: ``[B, 1 or in_channels, D, H, W]`` in 0..1 -> feature map ``[B, widths[-1] * expansion, d, h, w]``.

    A one-channel input stands for the same image in all ``in_channels`` (the
    inflated ImageNet stem expects three); it is convolved with the stem kernel
    summed over its input channels, which equals repeating it. The depth axis is strided 4 times (max pool and
    stages 2-4), the in-plane axes 5 times (also the stem), each time to
    ``ceil(n / 2)``; ``feature_grid`` computes the output size.

    >>> net = I3ResNet(block_counts=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem_channels=4).eval()
    >>> net(torch.zeros(1, 1, 20, 40, 72)).shape, net.feature_grid((20, 40, 72))
    (torch.Size([1, 64, 2, 2, 3]), (2, 2, 3))
    """

    def __init__(self, block_counts: Sequence[int] = RESNET152_BLOCKS, widths: Sequence[int] = (64, 128, 256, 512),
                 stem_channels: int = 64, in_channels: int = 3, expansion: int = 4,
                 stem_kernel: tuple[int, int, int] = (3, 7, 7), stem_stride: tuple[int, int, int] = (1, 2, 2),
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        if len(block_counts) != 4 or len(widths) != 4:
            raise ValueError(f"block_counts and widths need 4 stages, got {tuple(block_counts)} and {tuple(widths)}")
        if stem_stride[0] != 1 or stem_stride[1:] != (2, 2):
            raise ValueError(f"stem_stride must be (1, 2, 2) (feature_grid assumes it), got {stem_stride}")
        self.in_channels = int(in_channels)
        self.expansion = int(expansion)
        self.conv1 = nn.Conv3d(in_channels, stem_channels, kernel_size=stem_kernel, stride=stem_stride,
                               padding=tuple(k // 2 for k in stem_kernel), bias=False)
        self.bn1 = nn.BatchNorm3d(stem_channels, eps=norm_eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        c_in = stem_channels
        stages: list[nn.Sequential] = []
        for i, (n_blocks, width) in enumerate(zip(block_counts, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck3d(c_in, width, stride, expansion, downsample=True, norm_eps=norm_eps)]
            c_in = width * expansion
            blocks += [Bottleneck3d(c_in, width, 1, expansion, norm_eps=norm_eps) for _ in range(1, n_blocks)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = c_in

    @staticmethod
    def feature_grid(size: Sequence[int]) -> tuple[int, int, int]:
        """Output ``(d, h, w)`` for an input of ``(D, H, W)`` voxels."""
        d, h, w = (int(s) for s in size)
        return _ceil_half(d, 4), _ceil_half(h, 5), _ceil_half(w, 5)

    def blocks(self) -> list[nn.Module]:
        """Every bottleneck block in forward order (50 for ResNet-152); used for progress reporting."""
        return [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for b in layer]

    def forward(self, x: torch.Tensor, progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """``progress(fraction)``, when given, is called after each bottleneck block (fraction of blocks done)."""
        if x.shape[1] == 1 and self.in_channels != 1:
            # the same input in every channel: one convolution with the channel-summed kernel gives the same
            # result as repeating the input, with a third of the stem's work
            conv = self.conv1
            x = F.conv3d(x, conv.weight.sum(1, keepdim=True), None, conv.stride, conv.padding)
        else:
            x = self.conv1(x)
        x = self.maxpool(self.relu(self.bn1(x)))
        if progress is None:
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))
        blocks = self.blocks()
        for i, block in enumerate(blocks):
            x = block(x)
            progress((i + 1) / len(blocks))
        return x


def study_to_network(x: torch.Tensor) -> torch.Tensor:
    """``[..., S, R, C]`` in the study orientation -> ``[..., Z, X, Y]`` as the weights expect.

    RAS: X grows toward the patient's right (columns reversed), Y toward
    anterior (rows reversed), Z toward superior (slices as they are); Merlin
    permutes the RAS volume ``[X, Y, Z]`` to ``[Z, X, Y]``.
    """
    return x.flip((-2, -1)).transpose(-2, -1)


def network_to_study(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``study_to_network``: ``[..., Z, X, Y]`` -> ``[..., S, R, C]``."""
    return x.transpose(-2, -1).flip((-2, -1))


class StudyGrid(nn.Module):
    """Turns the backbone's ``[B, K, z, x, y]`` feature map to the study orientation ``[B, K, z, r, c]`` (no parameters)."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return network_to_study(fmap)


def resize_volume(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, 1, D, H, W]`` -> ``[B, 1, *size]``: area averaging along shrinking axes, then trilinear along growing ones."""
    size = tuple(int(s) for s in size)
    shrink = tuple(min(n, s) for n, s in zip(x.shape[-3:], size, strict=True))
    if shrink != tuple(x.shape[-3:]):
        x = F.adaptive_avg_pool3d(x, shrink)
    if shrink != size:
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return x


class FoundationOutput(NamedTuple):
    """Patch tokens ``[B, P, 2048]``, pooled vector ``[B, 2048]`` and the token grid ``(z, r, c)``."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    token_grid: tuple[int, int, int]


class StudyGridTokens:
    """What both backbone wrappers share: a ``study_grid`` module (the feature map in the study's orientation,
    Grad-CAM's target) and a ``token_grid`` ``(z, r, c)``."""

    study_grid: nn.Module
    token_grid: tuple[int, int, int]

    @property
    def gradcam_layer(self) -> nn.Module:
        """Module whose output is the last stage's feature map ``[B, 2048, z, r, c]`` in the study orientation."""
        return self.study_grid

    @property
    def n_tokens(self) -> int:
        return self.token_grid[0] * self.token_grid[1] * self.token_grid[2]


class FoundationEncoder3D(StudyGridTokens, nn.Module):
    """Frozen pretrained I3ResNet-152: HU ``[B, S, R, C]`` -> patch tokens ``[B, P, 2048]`` on the study's orientation.

    ``grid`` is the working resolution ``(slices, rows, cols)``; the token grid
    is ``(ceil(slices / 16), ceil(rows / 32), ceil(cols / 32))``. ``weights``
    ``"astra"`` loads the installed astra weights with strict key matching
    (``core.models.foundation_weights``), ``None`` keeps a random
    initialisation (tests, shape checks). ``backbone`` shares one already
    built network between encoders of different grids (then ``weights`` is
    not applied). While ``frozen``, parameters take no gradient and the
    backbone stays in eval mode (BatchNorm uses its running statistics) even
    inside a model put in training mode; gradients still flow to the input.
    """

    def __init__(self, grid: tuple[int, int, int] = DEFAULT_GRID,
                 hu_window: tuple[float, float] = ASTRA_HU_WINDOW, weights: str | None = "astra",
                 backbone: I3ResNet | None = None, frozen: bool = True) -> None:
        super().__init__()
        if len(grid) != 3 or min(int(g) for g in grid) < 1:
            raise ValueError(f"grid must be 3 positive sizes (slices, rows, cols), got {grid}")
        if not hu_window[1] > hu_window[0]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window}")
        self.grid: tuple[int, int, int] = (int(grid[0]), int(grid[1]), int(grid[2]))
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.frozen = bool(frozen)
        if backbone is None:
            backbone = I3ResNet()
            if weights is not None:
                from core.models.foundation_weights import load_pretrained

                load_pretrained(backbone, weights)
        self.backbone = backbone
        self.study_grid = StudyGrid()
        self.out_dim = backbone.out_channels
        z, x, y = backbone.feature_grid((self.grid[0], self.grid[2], self.grid[1]))
        self.token_grid: tuple[int, int, int] = (z, y, x)
        if self.frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> FoundationEncoder3D:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def preprocess(self, hu: torch.Tensor) -> torch.Tensor:
        """HU ``[B, S, R, C]`` -> network input ``[B, 1, Z, X, Y]`` in 0..1 on the working grid (differentiable)."""
        if hu.dim() != 4:
            raise ValueError(f"expected HU [B, S, R, C], got shape {tuple(hu.shape)}")
        lo, hi = self.hu_window
        x = resize_volume(hu.float().unsqueeze(1), self.grid)
        return study_to_network((x.clamp(lo, hi) - lo) / (hi - lo))

    def feature_map(self, hu: torch.Tensor, progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """HU ``[B, S, R, C]`` -> ``[B, 2048, z, r, c]`` in the study orientation."""
        return self.study_grid(self.backbone(self.preprocess(hu), progress))

    def forward(self, hu: torch.Tensor, progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """HU ``[B, S, R, C]`` -> patch tokens ``[B, P, 2048]``, slice slab first (z, then rows, then cols).

        ``progress(fraction)`` is called after each of the backbone's blocks.
        """
        return self.feature_map(hu, progress).flatten(2).transpose(1, 2)

    def encode(self, hu: torch.Tensor) -> FoundationOutput:
        """Tokens and the pooled vector (mean over tokens) in one forward pass."""
        tokens = self(hu)
        return FoundationOutput(tokens, tokens.mean(1), self.token_grid)

    def patch_slices(self, n_slices: int) -> torch.Tensor:
        """``[P, S]`` matrix: row p spreads patch p's weight evenly over the input slices its z-slab covers.

        Slab k covers working slices ``[16 k, min(16 (k + 1), slices))``,
        mapped linearly onto the ``n_slices`` input slices; every row sums to 1.
        """
        return patch_slice_matrix(self.token_grid, self.grid[0], n_slices)


def patch_slice_matrix(token_grid: tuple[int, int, int], depth: int, n_slices: int) -> torch.Tensor:
    """``[P, S]`` matrix of ``FoundationEncoder3D.patch_slices`` for a token grid and a working depth.

    >>> patch_slice_matrix((2, 1, 1), 32, 4)
    tensor([[0.5000, 0.5000, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.5000, 0.5000]])
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    z, r, c = token_grid
    per_slab = r * c
    m = torch.zeros(z * per_slab, n_slices)
    for k in range(z):
        a = k * 16 / depth * n_slices
        b = min((k + 1) * 16, depth) / depth * n_slices
        lo = min(int(a), n_slices - 1)
        hi = max(math.ceil(b - 1e-9), lo + 1)
        hi = min(hi, n_slices)
        m[k * per_slab:(k + 1) * per_slab, lo:hi] = 1.0 / (hi - lo)
    return m
