"""2D CNN applied to every axial slice: one token per slice.

The network takes prepared slices ``[B, S, size, size]`` (windowed, optionally
lung-masked and resized by ``core.preprocess.transforms``, which run before it
with differentiable operations so that gradients still reach the study's
voxels). Each slice gets its row and column coordinates as two extra channels
(CoordConv: where in the slice matters), stride-2 convolutions with GroupNorm
(no batch norm, so train and eval modes give the same tokens and cached tokens
match tokens from voxels), then the mean and max of the last feature map are
projected to ``out_dim``.

Organ-agnostic options (the default for new models, ``core.train.settings``):
``stem`` is a :class:`core.preprocess.transforms.ChannelStack` (several HU
windows and their local-contrast channels, fixed, no parameters) applied to
the prepared slices first; ``strides`` keeps a finer last feature map (e.g.
``(2, 2, 2, 1)``: 16 x 16 at size 128); ``pool="attnmax"`` pools that map with
gated attention over its positions beside the max (a lesion is a few positions
of one slice: attention-MIL inside the slice, the fusion's attention over
slices above it). Without them (old model folders) the encoder is exactly
the one those folders were trained with.

``pool="detect"`` (opt-in, ``core.train.pretext_lesions``): a 1 x 1 convolution on the
last feature map gives ``DETECT_CHANNELS`` lesion logits per position (darker and
brighter than the surroundings), trained by a self-supervised pretext on synthetic
lesions inserted into the cohort's own training slices. A slice's token is then a
projection of a few detection statistics only (per channel: the maximum logit and
log(1 + the soft lesion area)), so the survival stage on top has few parameters.
With ``detect_z`` (e.g. ``(3, 9)``), every slice also gets, per channel and window, the maximum over positions
of the lesion logit averaged over that many neighbouring slices *at the same position* (mask-aware, fewer at
the study's ends): a real lesion is a 3D blob that stays in place from slice to slice, while noise and most
false detections do not, and the wider window grows with the lesion's extent along the scan axis. These
statistics read the whole study, so a slice's token then depends on its neighbours' voxels too.

With a lung-masked input, ``soft_tissue`` = ``(threshold, width)`` in the input's
units adds one input per slice: ``log(1 + soft-tissue pixels)``, a smooth
(differentiable) count of nodule-like pixels inside the lungs (everything
outside them is lung air after the mask).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.models.pooling import AttentionPool, window_mean

if TYPE_CHECKING:
    from core.models.config import ImageConfig

POOLS: tuple[str, ...] = ("meanmax", "attnmax", "detect")
DETECT_CHANNELS = 2  # lesion logits of pool="detect": darker, brighter than the surroundings
DETECT_STATS = 2     # per detection channel: max logit, log(1 + soft area)


class SliceEncoder2D(nn.Module):
    """Per-slice CNN: prepared slices ``[B, S, size, size]`` -> ``[B, S, out_dim]`` tokens.

    >>> enc = SliceEncoder2D(out_dim=16, size=32, channels=(4, 8))
    >>> enc(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3, 16])
    >>> SliceEncoder2D(out_dim=16, size=32, channels=(4, 8), soft_tissue=(-0.3, 0.025))(torch.zeros(1, 2, 32, 32)).shape
    torch.Size([1, 2, 16])
    >>> from core.preprocess.transforms import ChannelStack, HUWindow
    >>> stem = ChannelStack(HUWindow(-1000, 1000), ((-160.0, 240.0), (-200.0, 1000.0)), (5,))
    >>> SliceEncoder2D(16, 32, (4, 8), stem=stem, strides=(2, 1), pool="attnmax")(torch.zeros(1, 2, 32, 32)).shape
    torch.Size([1, 2, 16])
    >>> det = SliceEncoder2D(16, 32, (4, 8), stem=stem, strides=(2, 1), pool="detect")
    >>> det(torch.zeros(1, 2, 32, 32)).shape, det.detect_logits(torch.zeros(3, 1, 32, 32)).shape, det.proj.in_features
    (torch.Size([1, 2, 16]), torch.Size([3, 2, 16, 16]), 4)
    >>> dz = SliceEncoder2D(16, 32, (4, 8), stem=stem, strides=(2, 1), pool="detect", detect_z=(3, 9))
    >>> dz(torch.zeros(1, 5, 32, 32)).shape, dz.proj.in_features
    (torch.Size([1, 5, 16]), 8)
    """

    def __init__(self, out_dim: int = 64, size: int = 64, channels: tuple[int, ...] = (8, 16, 32, 64),
                 soft_tissue: tuple[float, float] | None = None, *, stem: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 strides: tuple[int, ...] | None = None, pool: str = "meanmax", detect_z: tuple[int, ...] = ()) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r} is not one of {POOLS}")
        self.detect_z = tuple(int(w) for w in detect_z)
        if any(w < 3 or w % 2 == 0 for w in self.detect_z):
            raise ValueError(f"detect_z windows {list(self.detect_z)} must be odd slice counts >= 3")
        if self.detect_z and (pool != "detect" or soft_tissue is not None):
            raise ValueError("detect_z needs pool='detect' and no lung-mask soft-tissue count")
        self.size = int(size)
        self.soft_tissue = None if soft_tissue is None else (float(soft_tissue[0]), float(soft_tissue[1]))
        self.stem = stem
        self.pool = pool
        strides = tuple(strides) if strides is not None else (2,) * len(channels)
        if len(strides) != len(channels):
            raise ValueError(f"strides {strides} must give one stride per channel width {channels}")
        layers: list[nn.Module] = []
        # the input channels + row and column coordinates (CoordConv: where in the slice matters)
        c_in = int(getattr(stem, "n_channels", 1)) + 2
        for c, st in zip(channels, strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=int(st), padding=1), nn.GroupNorm(min(4, c), c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.attn = AttentionPool(c_in, max(8, c_in // 2)) if pool == "attnmax" else None
        self.detector = nn.Conv2d(c_in, DETECT_CHANNELS, 1) if pool == "detect" else None
        n_pooled = DETECT_CHANNELS * (DETECT_STATS + len(self.detect_z)) if pool == "detect" else 2 * c_in
        self.proj = nn.Linear(n_pooled + (1 if self.soft_tissue else 0), out_dim)
        ramp = torch.linspace(-1.0, 1.0, self.size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))[None], persistent=False)
        self.out_dim = out_dim

    @classmethod
    def from_config(cls, icfg: ImageConfig) -> SliceEncoder2D:
        """The encoder of a 2d image config, with the channel layer and soft-tissue step of its transforms."""
        from dataclasses import replace

        chain = replace(icfg, slice_mm=None).transforms()  # the in-plane steps (the slice spacing is not the encoder's)
        assert chain is not None and hasattr(chain, "channel_stack")
        return cls(icfg.out_dim, icfg.size, icfg.channels, soft_tissue=chain.soft_tissue_step(),
                   stem=chain.channel_stack(), strides=icfg.strides, pool=icfg.pool, detect_z=icfg.detect_z)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution (target layer for Grad-CAM)."""
        return self.features[-3]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, size, size]`` prepared slices -> the last feature map ``[N, C, h, w]`` (stem, coordinates, convolutions)."""
        n = x.shape[0]
        if self.stem is not None:
            x = self.stem(x)
        x = torch.cat([x, self.coords.to(x).expand(n, 2, self.size, self.size)], dim=1)
        return self.features(x)

    def detect_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, size, size]`` prepared slices -> lesion logits ``[N, DETECT_CHANNELS, h, w]`` (pool="detect" only)."""
        if self.detector is None:
            raise ValueError("detect_logits needs an encoder built with pool='detect'")
        return self.detector(self.trunk(x))

    @staticmethod
    def detection_stats(logits: torch.Tensor) -> torch.Tensor:
        """``[N, K, h, w]`` lesion logits -> ``[N, K * DETECT_STATS]``: every channel's max logit, then log(1 + soft area)."""
        return torch.cat([logits.amax(dim=(2, 3)), torch.log1p(torch.sigmoid(logits).sum(dim=(2, 3)))], dim=1)

    def z_stats(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S, K, h, w]`` lesion logits of whole studies (``mask`` ``[B, S]``: the studies' real slices; None =
        all) -> ``[B, S, K * len(detect_z)]``: per window of ``detect_z`` and channel, the maximum over positions
        of the logit averaged over that many neighbouring slices at the same position (window by window)."""
        b, s, k = logits.shape[:3]
        flat = logits.reshape(b, s, -1)
        m = torch.ones(b, s, device=logits.device) if mask is None else mask.to(logits.device)
        return torch.cat([window_mean(flat, m, w).reshape(b, s, k, -1).amax(dim=-1) for w in self.detect_z], dim=-1)

    def slice_stats(self, slices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S, size, size]`` prepared slices -> ``[B, S, n_stats]`` detection statistics (pool="detect"; the
        ``detect_z`` ones after the per-slice ones): what :meth:`forward` projects, so a frozen trunk's statistics
        can be computed once."""
        b, s = slices.shape[:2]
        logits = self.detect_logits(slices.reshape(b * s, 1, self.size, self.size))
        stats = self.detection_stats(logits).reshape(b, s, -1)
        if self.detect_z:
            stats = torch.cat([stats, self.z_stats(logits.reshape(b, s, *logits.shape[1:]), mask)], dim=-1)
        return stats

    def detection_tokens(self, logits: torch.Tensor, slices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B * S, DETECT_CHANNELS, h, w]`` lesion logits of the ``[B, S, size, size]`` prepared ``slices`` ->
        ``[B, S, out_dim]`` tokens: what :meth:`forward` computes after the detector (pool="detect"), so an
        attribution can start from the lesion-logit map."""
        b, s = slices.shape[:2]
        parts = [self.detection_stats(logits)]
        if self.detect_z:
            parts.append(self.z_stats(logits.reshape(b, s, *logits.shape[1:]), mask).reshape(b * s, -1))
        if self.soft_tissue:
            parts.append(self.soft_tissue_area(slices).reshape(b * s, 1))
        return self.proj(torch.cat(parts, dim=1)).reshape(b, s, -1)

    def forward(self, slices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, S, size, size]`` prepared slices -> ``[B, S, out_dim]`` (``mask`` ``[B, S]``, the real slices of
        padded studies, matters only to ``detect_z``)."""
        b, s = slices.shape[:2]
        fmap = self.trunk(slices.reshape(b * s, 1, self.size, self.size))
        if self.detector is not None:
            return self.detection_tokens(self.detector(fmap), slices, mask)
        if self.attn is not None:
            flat = fmap.flatten(2).transpose(1, 2)  # [B*S, positions, C]
            pooled = self.attn(flat, torch.ones(flat.shape[:2], device=flat.device))[0]
            parts = [pooled, fmap.amax(dim=(2, 3))]
        else:
            parts = [fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))]
        if self.soft_tissue:
            parts.append(self.soft_tissue_area(slices).reshape(b * s, 1))
        return self.proj(torch.cat(parts, dim=1)).reshape(b, s, -1)

    def soft_tissue_area(self, slices: torch.Tensor) -> torch.Tensor:
        """``[B, S, size, size]`` prepared (lung-masked) slices -> ``[B, S]`` log(1 + soft-tissue pixels)."""
        assert self.soft_tissue is not None
        thr, width = self.soft_tissue
        return torch.log1p(torch.sigmoid((slices - thr) / width).sum(dim=(2, 3)))
