"""Image preprocessing as named transforms applied before the networks.

A model's image path is ``encoder(transforms(hu))``: the transforms turn HU on
the study's own voxel grid, ``[B, S, R, C]``, into the tensor the encoder was
trained on, with differentiable torch operations, so Captum's gradients come
back on the study's voxels, voxel for voxel. The chain is built from the
``image`` part of a model's config.json, so
training, prediction and explanation run exactly the same steps
(``core.models.config.ImageConfig.transforms``), and
:meth:`ImageTransforms.describe` names them for the model card.

The transforms, in the order a chain applies them (after MONAI's array
transforms ``ScaleIntensityRange``, ``MaskIntensity`` and ``Resize``):

* :class:`HUWindow` -- clip HU to ``[low, high]`` and scale to ``[-1, 1]``;
* :class:`LungMaskFill` -- optional organ rule for chest tasks: outside the
  threshold lung mask (``core.preprocess.lung``) every voxel becomes lung air.
  The mask is a constant (no gradient). It is computed once per case
  (:meth:`ImageTransforms.masks`, a :class:`CaseConstants` with the body box) and
  can be passed back in, so methods that perturb the CT (integrated gradients,
  occlusion) keep the case's own mask and box;
* :class:`BodyCrop` -- optional (``body_crop`` in config.json, ``CropForeground``):
  one square box around the body of the case, the same on every slice, kept
  inside the image, so the encoder's pixels lie on the body whatever the
  scanner's field of view. The box is a constant of the case, computed once
  like the lung mask;
* :class:`ResizeSlices` -- every axial slice to ``size x size`` (bilinear), for
  the per-slice 2D encoder;
* :class:`ResizeVolume` -- the volume to a ``grid`` of voxels (trilinear), for
  the 3D encoder;
* :class:`~core.preprocess.slices.SliceSpacing` -- last in a 2D chain with
  ``slice_mm`` in config.json: whole resized slices averaged into slabs near the
  model's working slice spacing (thicker slices repeated; the identity when the
  spacing is within a factor of about 1.5),
  so a thin reconstruction gives as many tokens as the training studies did. The
  study's spacing comes in with the case's constants (:meth:`ImageTransforms.masks`);
* :class:`ChannelStack` -- several HU windows (soft tissue, liver, bone, lung)
  as channels, each with local-contrast channels (the channel minus its own
  local neighbourhood mean: a per-image filter, no organ rule, nothing shared
  between subjects). It runs on the resized slices as the fixed, parameter-free
  first layer of the 2D encoder (``core.models.image2d``), so the training cache
  keeps one channel per slice; :meth:`ImageTransforms.describe` lists it.

:func:`augment_slices` (small in-plane shifts and an intensity offset) is used
by training only, never in prediction or explanation.

>>> import torch
>>> chain = ImageTransforms(HUWindow(-1000, 1000), ResizeSlices(8))
>>> [t["name"] for t in chain.describe()]
['hu_window', 'resize_slices']
>>> chain(torch.full((1, 3, 20, 16), 500.0)).shape, float(chain(torch.full((1, 1, 4, 4), 500.0))[0, 0, 0, 0])
(torch.Size([1, 3, 8, 8]), 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InputError
from core.preprocess.lung import LUNG_FILL_HU, SOFT_TISSUE_ABOVE_HU, lung_mask
from core.preprocess.slices import SliceSpacing

if TYPE_CHECKING:
    import torch

SOFT_TISSUE_STEP_HU = 25.0  # width of the smooth step of the 2D encoder's soft-tissue count


@dataclass(frozen=True)
class HUWindow:
    """Clip HU to ``[low, high]`` and scale linearly to ``[-1, 1]`` (``ScaleIntensityRange`` with clipping)."""

    low: float = -1000.0
    high: float = 1000.0
    name = "hu_window"

    @property
    def centre(self) -> float:
        return (self.low + self.high) / 2

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def scale(self, hu: float) -> float:
        """A HU value in the window's units (no clipping).

        >>> HUWindow(-1000, 1000).scale(-300)
        -0.3
        """
        return (hu - self.centre) / self.half_width

    def __call__(self, hu: torch.Tensor) -> torch.Tensor:
        return (hu.clamp(self.low, self.high) - self.centre) / self.half_width

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "low_hu": self.low, "high_hu": self.high}


@dataclass(frozen=True)
class LungMaskFill:
    """Outside the lung mask of the case, the windowed value of lung air (``MaskIntensity``).

    ``close`` and ``medial`` are ``core.preprocess.lung.lung_mask``'s ``close_fraction`` and ``medial``.
    """

    window: HUWindow
    close: float = 0.0
    medial: bool = False
    fill_hu: float = LUNG_FILL_HU
    name = "lung_mask"

    def mask(self, hu: torch.Tensor) -> torch.Tensor:
        """Constant boolean lung mask of ``[B, S, R, C]`` HU, on ``hu``'s device (scipy, no gradient)."""
        import torch

        with torch.no_grad():
            arr = hu.detach().float().cpu().numpy()
        m = (np.stack([lung_mask(v, close_fraction=self.close, medial=self.medial) for v in arr])
             if arr.shape[0] else np.zeros(arr.shape, bool))
        return torch.from_numpy(m).to(hu.device)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        import torch

        w = self.window
        fill = (min(max(self.fill_hu, w.low), w.high) - w.centre) / w.half_width
        return torch.where(mask, x, torch.full_like(x, fill))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rule": "threshold lung mask (air < -400 HU enclosed by the body, small holes)",
                "close_fraction": self.close, "medial": self.medial, "fill_hu": self.fill_hu}


BODY_CROP_HU = -500.0  # voxels above this are body (or table) for the body box


@dataclass(frozen=True)
class BodyCrop:
    """One square in-plane box around the body of a case, the same on every slice (MONAI's ``CropForeground``).

    The body is the largest 3D connected region above ``threshold_hu``; the box is its row and column extent over
    all slices, made square around its centre (CT pixels are square in-plane), widened by ``margin`` of its side on
    each side and then kept inside the image. Resized to ``size x size`` afterwards, a study with a wide field of
    view gives the encoder the body at about the scale of a tight one. A body that the field of view cuts (it
    reaches the image's edge) is not padded with air past that edge: a straight body-air border that no scanner
    makes would be new to the encoder (measured: docs/BENCHMARKS.md, "The body box"). A study without any voxel
    above the threshold keeps its whole image.

    >>> hu = np.full((2, 40, 60), -1000.0, dtype=np.float32); hu[:, 10:30, 20:30] = 40.0
    >>> BodyCrop(margin=0.0).box(hu)
    (10, 30, 15, 35)
    >>> BodyCrop(margin=0.1).box(hu)
    (8, 32, 13, 37)
    >>> BodyCrop(margin=0.1).box(np.full((2, 40, 60), 40.0, dtype=np.float32))   # a body cut on every side
    (0, 40, 0, 60)
    """

    threshold_hu: float = BODY_CROP_HU
    margin: float = 0.05
    name = "body_crop"

    def box(self, hu: np.ndarray) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of the box of one case's ``[S, R, C]`` HU (ends exclusive, inside the image).
        Large images are searched on a grid of at most ~128 pixels (the box widened by that step)."""
        from scipy import ndimage

        _, r, c = hu.shape
        step = max(1, min(r, c) // 128)
        body = np.asarray(hu[:, ::step, ::step]) > self.threshold_hu
        if not body.any():
            return 0, r, 0, c
        lab, n = ndimage.label(body)
        if n > 1:
            body = lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        rows, cols = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
        r0, r1 = int(rows[0]) * step, min(r, (int(rows[-1]) + 1) * step)
        c0, c1 = int(cols[0]) * step, min(c, (int(cols[-1]) + 1) * step)
        side = int(np.ceil(max(r1 - r0, c1 - c0) * (1.0 + 2.0 * self.margin)))
        top, left = int(np.floor((r0 + r1 - side) / 2)), int(np.floor((c0 + c1 - side) / 2))
        return max(0, top), min(r, top + side), max(0, left), min(c, left + side)

    def __call__(self, x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        """``[..., R, C]`` -> the box (from :meth:`box`, inside the image) cut out."""
        top, bottom, left, right = box
        return x[..., top:bottom, left:right]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rule": "square box around the largest connected region above the threshold, "
                "all slices alike, kept inside the image", "threshold_hu": self.threshold_hu, "margin": self.margin}


@dataclass(frozen=True)
class CaseConstants:
    """What a chain computes once per case and holds fixed while the CT is perturbed: the lung mask
    (``[B, S, R, C]`` or ``[S, R, C]`` bool) and the body box per case (one box for a batch of copies of one case)."""

    lung: torch.Tensor | None = None
    boxes: tuple[tuple[int, int, int, int], ...] | None = None
    slice_mm: float | None = None  # the study's slice spacing (read by a chain with a working slice spacing)

    def slices(self, start: int, stop: int) -> CaseConstants:
        """The constants of slices ``start:stop`` (the box belongs to the whole case and stays)."""
        lung = None if self.lung is None else (self.lung[start:stop] if self.lung.dim() == 3 else self.lung[:, start:stop])
        return CaseConstants(lung, self.boxes, self.slice_mm)

    def box(self, i: int = 0) -> tuple[int, int, int, int] | None:
        """The body box of case ``i`` of the batch (the only box when one is given for copies of a case)."""
        if not self.boxes:
            return None
        return self.boxes[i if len(self.boxes) > 1 else 0]


@dataclass(frozen=True)
class ResizeSlices:
    """Every axial slice of ``[B, S, R, C]`` to ``[B, S, size, size]`` (bilinear)."""

    size: int
    name = "resize_slices"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        b, s, r, c = x.shape
        y = F.interpolate(x.reshape(b * s, 1, r, c), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return y.reshape(b, s, self.size, self.size)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True)
class ResizeVolume:
    """The volume ``[B, S, R, C]`` to ``[B, *grid]`` voxels (trilinear)."""

    grid: tuple[int, int, int]
    name = "resize_volume"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.interpolate(x.unsqueeze(1), size=self.grid, mode="trilinear", align_corners=False).squeeze(1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "grid": list(self.grid)}


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k x k`` local mean of images ``[..., H, W]`` (odd ``k``; at the edges, the mean over the pixels inside):
    ``avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)``, computed from a float64 summed-area
    table, so its cost does not grow with ``k`` (``bench/bench_box_mean.py`` compares the two). Call it per channel
    (``[N, 1, H, W]``): the cumulative sums were much slower on several channels at once. Differentiable; returns
    ``x``'s dtype.

    >>> import torch
    >>> x = torch.arange(12.0).reshape(1, 3, 4)
    >>> box_mean(x, 3)[0].tolist()
    [[2.5, 3.0, 4.0, 4.5], [4.5, 5.0, 6.0, 6.5], [6.5, 7.0, 8.0, 8.5]]
    """
    import torch
    import torch.nn.functional as F

    p = k // 2
    h, w = x.shape[-2:]
    table = F.pad(x.double(), (p + 1, p, p + 1, p)).cumsum(-1).cumsum(-2)
    total = table[..., k:, k:] - table[..., :-k, k:] - table[..., k:, :-k] + table[..., :-k, :-k]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    n_rows = (rows + p).clamp(max=h - 1) - (rows - p).clamp(min=0) + 1
    n_cols = (cols + p).clamp(max=w - 1) - (cols - p).clamp(min=0) + 1
    return (total / (n_rows[:, None] * n_cols[None, :])).to(x.dtype)


@dataclass(frozen=True)
class ChannelStack:
    """Slices ``[N, 1, H, W]`` in ``source`` window units -> ``[N, C, H, W]``: every window of ``windows`` (HU
    ``(low, high)``, clipped and scaled to ``[-1, 1]``), then for each window and each odd ``contrast`` kernel the
    window channel minus its ``k x k`` local mean (edges: the mean over the pixels inside the slice).

    Differentiable; no parameters. ``n_channels`` = ``len(windows) * (1 + len(contrast))``.

    >>> import torch
    >>> stack = ChannelStack(HUWindow(-1000, 1000), ((-160.0, 240.0), (-200.0, 1000.0)), (5,))
    >>> x = torch.full((1, 1, 9, 9), 0.04)   # 40 HU everywhere ...
    >>> x[0, 0, 4, 4] = 0.0                   # ... but 0 HU in the centre
    >>> y = stack(x)
    >>> y.shape, stack.n_channels, round(float(y[0, 0, 0, 0]), 3), round(float(y[0, 2, 4, 4]), 3), float(y[0, 2, 0, 0])
    (torch.Size([1, 4, 9, 9]), 4, 0.0, -0.192, 0.0)
    """

    source: HUWindow
    windows: tuple[tuple[float, float], ...]
    contrast: tuple[int, ...] = ()
    name = "channel_stack"

    @property
    def n_channels(self) -> int:
        return len(self.windows) * (1 + len(self.contrast))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        hu = x * self.source.half_width + self.source.centre
        wins = [(hu.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2) for lo, hi in self.windows]
        out = list(wins)
        for k in self.contrast:
            for w in wins:
                out.append(w - box_mean(w, k))
        return torch.cat(out, dim=1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "windows_hu": [list(w) for w in self.windows], "local_contrast_kernels_px": list(self.contrast),
                "applied": "by the 2D encoder as its fixed first layer"}


def augment_slices(x: torch.Tensor, max_shift: int, offset: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-only augmentation of prepared slices ``[B, S, H, W]``: one in-plane shift of up to ``max_shift``
    pixels per subject (all its slices alike; wrapped around: the border is air or table) and one intensity
    offset (uniform in ``+-offset`` input units) per subject.

    >>> import torch
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> bool(torch.equal(augment_slices(x, 0, 0.0), x)), augment_slices(x, 2, 0.0).sum().item() == x.sum().item()
    (True, True)
    """
    import torch

    b = x.shape[0]
    out = x
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
        out = torch.stack([torch.roll(x[i], (int(shifts[i, 0]), int(shifts[i, 1])), dims=(-2, -1)) for i in range(b)])
    if offset > 0:
        jitter = (torch.rand(b, generator=generator) * 2 - 1) * offset
        out = out + jitter.to(out).view(b, *([1] * (out.dim() - 1)))
    return out


@dataclass(frozen=True)
class ImageTransforms:
    """The chain HU -> encoder input: window, optional lung mask, resize (see the module docstring)."""

    window: HUWindow
    resize: ResizeSlices | ResizeVolume
    lung: LungMaskFill | None = None
    channels: ChannelStack | None = None  # applied by the 2D encoder as its fixed first layer (see the module docstring)
    crop: BodyCrop | None = None
    z_context: bool = False  # the encoder after the chain mixes neighbouring slices (a detector's ``detect_z``)
    slices: SliceSpacing | None = None  # 2d: the slices to a working slice spacing, last (core.preprocess.slices)

    @property
    def per_slice(self) -> bool:
        """True when every slice's token depends on that slice's voxels only (the body box, when the chain has
        one, is a constant of the case: :meth:`masks`); False when the encoder mixes neighbouring slices, or when
        the chain resamples the slices to a working spacing (a token is then a slab of slices)."""
        return isinstance(self.resize, ResizeSlices) and not self.z_context and self.slices is None

    def per_slice_for(self, slice_mm: float | None) -> bool:
        """:attr:`per_slice` for one study: also True with a working slice spacing that leaves this study's slices
        as they are (``slice_mm`` within its tolerance)."""
        if self.slices is None:
            return self.per_slice
        return (isinstance(self.resize, ResizeSlices) and not self.z_context and slice_mm is not None
                and self.slices.identity(slice_mm))

    def masks(self, hu: torch.Tensor, slice_mm: float | None = None) -> CaseConstants | None:
        """The constants of the cases in ``hu`` ``[B, S, R, C]`` (lung mask, body box per case, the slice spacing
        ``slice_mm`` for a chain with a working slice spacing), or None when the chain has none of these steps."""
        if self.lung is None and self.crop is None and self.slices is None:
            return None
        boxes = None
        if self.crop is not None:
            arr = hu.detach().float().cpu().numpy()
            boxes = tuple(self.crop.box(a) for a in arr)
        return CaseConstants(None if self.lung is None else self.lung.mask(hu), boxes, slice_mm)

    def study_slice_mm(self, masks: CaseConstants | None) -> float:
        """The study's slice spacing from its constants; a one-line error when a chain that needs it lacks it."""
        if masks is None or masks.slice_mm is None:
            assert self.slices is not None
            raise InputError("slice spacing", "unknown", f"this model reads slices at {self.slices.slice_mm:g} mm and "
                             "needs the study's slice spacing", "pass the study's slice spacing (CaseInputs.slice_mm to LoadedModel.image_masks)")
        return float(masks.slice_mm)

    def __call__(self, hu: torch.Tensor, masks: CaseConstants | None = None) -> torch.Tensor:
        """``[B, S, R, C]`` HU -> the encoder's input; ``masks`` from :meth:`masks` of the same case (or of one
        case for a batch of its copies), computed here when not given (a chain with a working slice spacing needs
        them: the study's spacing is not in ``hu``)."""
        if self.slices is not None:
            return self.slices(self._in_plane(hu, masks), self.study_slice_mm(masks))
        return self._in_plane(hu, masks)

    def _in_plane(self, hu: torch.Tensor, masks: CaseConstants | None) -> torch.Tensor:
        import torch

        if masks is None and (self.lung is not None or self.crop is not None):
            masks = self.masks(hu)
        x = self.window(hu)
        if self.lung is not None:
            assert masks is not None and masks.lung is not None
            m = masks.lung.to(hu.device)
            x = self.lung(x, m.expand(hu.shape) if m.dim() == 3 else m)
        if self.crop is not None:
            assert masks is not None and masks.boxes
            if len(masks.boxes) > 1:  # different cases: each its own box, resized to the common size
                return torch.stack([self.resize(self.crop(x[i:i + 1], masks.boxes[i]))[0] for i in range(x.shape[0])])
            x = self.crop(x, masks.boxes[0])
        return self.resize(x)

    def study_grid(self, maps: torch.Tensor, shape: tuple[int, int], masks: CaseConstants | None) -> torch.Tensor:
        """In-plane maps ``[N, h, w]`` (or ``[N, 1, d, h, w]`` of a 3D encoder, ``d`` slices) on the encoder's grid ->
        ``[N, R, C]`` (``[N, S, R, C]``) on the study's grid of ``shape`` ``(S, R, C)`` or ``(R, C)``: upsampled as
        the slices were resized, placed back into the body box (zero outside it)."""
        import torch.nn.functional as F

        r, c = int(shape[-2]), int(shape[-1])
        box = None if (self.crop is None or masks is None) else masks.box()
        hw = (r, c) if box is None else (box[1] - box[0], box[3] - box[2])
        if maps.dim() == 5:
            out = F.interpolate(maps.float(), size=(int(shape[0]), *hw), mode="trilinear", align_corners=False)[:, 0]
        else:
            out = F.interpolate(maps.float()[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
        if box is None:
            return out
        top, bottom, left, right = box
        return F.pad(out, (left, c - right, top, r - bottom), mode="constant", value=0.0)

    def to_study_slices(self, maps: torch.Tensor, n: int, masks: CaseConstants | None) -> torch.Tensor:
        """Maps over the encoder's slices ``[S', ...]`` -> over the study's ``n`` slices (``SliceSpacing.spread_maps``;
        unchanged without a working slice spacing)."""
        if self.slices is None or int(maps.shape[0]) == int(n) and self.slices.identity(self.study_slice_mm(masks)):
            return maps
        return self.slices.spread_maps(maps, int(n), self.study_slice_mm(masks))

    def encoder_pixel_mm(self, hu: np.ndarray, spacing_mm: tuple[float, float, float] | list[float]) -> float:
        """The in-plane size in mm of one pixel of the encoder's input for a study (``hu`` ``[S, R, C]``, spacing
        (slice, row, col) in mm): the image, or the body box when the chain has one, divided by the resized size;
        the mean of rows and columns. A field of view twice as wide at the same size doubles it.

        >>> chain = ImageTransforms(HUWindow(-1000, 1000), ResizeSlices(96))
        >>> chain.encoder_pixel_mm(np.zeros((4, 192, 256), dtype=np.float32), (5.0, 2.0, 1.5))
        4.0
        """
        _, r, c = np.shape(hu)
        top, bottom, left, right = self.crop.box(np.asarray(hu)) if self.crop is not None else (0, r, 0, c)
        out_r, out_c = (self.resize.size, self.resize.size) if isinstance(self.resize, ResizeSlices) else self.resize.grid[1:]
        return ((bottom - top) * float(spacing_mm[1]) / out_r + (right - left) * float(spacing_mm[2]) / out_c) / 2.0

    def describe(self) -> list[dict[str, Any]]:
        steps: list[Any] = ([self.window] + ([self.lung] if self.lung is not None else [])
                            + ([self.crop] if self.crop is not None else []) + [self.resize]
                            + ([self.slices] if self.slices is not None else []))
        return [s.describe() for s in steps] + ([self.channels.describe()] if self.channels is not None else [])

    def channel_stack(self) -> ChannelStack | None:
        """The channel layer of the 2D encoder (``channels``), or None for one channel."""
        return self.channels

    def soft_tissue_step(self) -> tuple[float, float] | None:
        """``(threshold, width)`` of the 2D encoder's soft-tissue count in the chain's output units, with the lung mask."""
        if self.lung is None:
            return None
        return self.window.scale(SOFT_TISSUE_ABOVE_HU), SOFT_TISSUE_STEP_HU / self.window.half_width
