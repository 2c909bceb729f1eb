"""2D CNN applied to every axial slice: one token per slice.

The network takes HU on the Volume's own voxel grid, ``[B, S, R, C]``, and does
all preprocessing inside ``forward`` with differentiable operations: clip to a
HU window, scale to [-1, 1], resize each slice to ``size x size`` with
``F.interpolate`` (bilinear). Gradients (Captum) therefore come back on the
original voxel grid of ``Volume.hu``, voxel for voxel.

Lung mask (``lung_mask=True``, the default for new models): before windowing,
every axial slice is restricted to the lungs (``lung_mask``): air-like voxels
(HU < -400) not connected to the slice border (this drops the air around the
body), plus enclosed holes smaller than 1 % of the slice (nodules inside the
lung; the liver under a diaphragm dome, which the lung rings, is larger and
stays out). Voxels outside the mask are set to lung air (-850 HU). The mask is
computed without gradient (scipy on a detached CPU copy) and used as a
constant, so gradients still reach every lung voxel of the original grid and
are zero outside the lungs. Measured effect on the demo cohort: see the models
section of docs/BENCHMARKS.md. Known gap: a nodule that touches the chest wall
or mediastinum is an indentation of the air region, not a hole, and is left
out (about 8 % of demo lesions) unless ``lung_close`` is set.

Juxtapleural nodules (``lung_close`` > 0, the default for new models): each
lung region of a slice is also closed morphologically with a disk of radius
``lung_close x min(rows, cols)`` pixels (a rolling ball along the lung border),
and the voxels this adds on the region's lateral side (the costal pleura) join
the mask unless they are brighter than ``CLOSE_MAX_HU`` (``close_lung_regions``).
A nodule on the chest wall is an indentation the ball cannot enter, so it is
filled. The mediastinal side is left as it was: there the ball would swallow
the borders of the heart, great vessels and hilum, which in every patient look
like nodules to the soft-tissue count (closing both sides cost image-only C
0.04 on the demo). Measured on 300 demo phantoms with a closing of 5 % of the
slice: lesions over 15 mm by the chest wall covered 49 % -> 90 %, for about 15
extra soft-tissue voxels per subject (docs/BENCHMARKS.md).

Nodules at the hilum (``lung_medial``, the default for new models): on the
mediastinal side the same closing adds only solid tissue (denser than
``MEDIAL_MIN_HU``) that does not touch an enhanced voxel (``CLOSE_MAX_HU`` or
more): the borders that defeated closing both sides are partial-volume rims
of contrast-filled vessels and chambers, and fat. On 300 demo phantoms central
lesions were covered 64 % -> 82 % (those over 15 mm 51 % -> 77 %) for about
12 more soft-tissue voxels per subject. The rule assumes contrast-enhanced CT:
without contrast the hilar vessels are as dense as a nodule and can join the mask.

Training splits the forward in two (``preprocess`` then ``trunk``) so that the
resized slices can be computed once per cohort; ``forward`` is exactly
``trunk(preprocess(x))``. No batch norm (GroupNorm only), so train and eval
modes give the same tokens and cached tokens match tokens from voxels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

LUNG_AIR_BELOW_HU = -400.0      # air-like voxels (lung parenchyma, trachea, outside air)
LUNG_FILL_HU = -850.0           # value given to voxels outside the lung mask
MAX_HOLE_FRACTION = 0.01        # enclosed holes up to this fraction of the slice are added (nodules)
SOFT_TISSUE_ABOVE_HU = -300.0   # nodule-like voxels inside the lung mask
CLOSE_MAX_HU = 120.0            # voxels added by the closing must be darker than this (no enhanced vessels, bone)
MIN_CLOSE_REGION = 20           # lung regions smaller than this (pixels) are not closed
MEDIAL_MIN_HU = -100.0          # on the mediastinal side the closing adds only voxels denser than this (solid tissue)

_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connectivity within a slice, none across slices
_SQUARE = np.ones((3, 3), bool)


def _close_disk(region: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing of a 2D ``region`` with the disk ``dy^2 + dx^2 <= radius^2 + 0.5``, by distance transforms.

    Exactly ``ndimage.binary_closing`` with that disk on a region padded by ``radius + 1``, at a cost
    that does not grow with the radius (a 26-pixel disk on a 512 x 512 slice would otherwise
    dominate the forward pass).
    """
    pad = radius + 1
    padded = np.pad(region, pad)
    limit = radius * radius + 0.5
    dilated = ndimage.distance_transform_edt(~padded, return_distances=True) ** 2 <= limit
    closed = ndimage.distance_transform_edt(dilated, return_distances=True) ** 2 > limit
    return closed[pad:-pad, pad:-pad]


def close_lung_regions(hu: np.ndarray, mask: np.ndarray, radius: int, max_hu: float = CLOSE_MAX_HU,
                       medial: bool = False) -> np.ndarray:
    """``mask`` plus what a closing with a disk of ``radius`` pixels adds on the outer side of each lung region.

    Slice by slice, each 4-connected region of ``mask`` (a lung) is closed on its own, so the two
    lungs are never joined. Only voxels on the lateral side of the region (away from the middle of
    the lungs' extent in that slice: the costal pleura, not the heart, great vessels and hilum of
    the mediastinal side) and darker than ``max_hu`` are added. A region lying across the middle
    (one lung only in the slice, the trachea) gets nothing.

    ``medial=True`` also adds what the closing fills on the mediastinal side, but only solid tissue
    (denser than ``MEDIAL_MIN_HU``, not fat or partial-volume rims) that does not touch a voxel of
    ``max_hu`` or more (the blurred rim of an enhanced vessel or heart chamber): nodules at the hilum.

    >>> hu = np.full((1, 30, 60), 40.0); hu[0, 5:25, 5:25] = -850; hu[0, 5:25, 35:55] = -850
    >>> hu[0, 13:17, 5:9] = 40; hu[0, 13:17, 21:25] = 40  # nodules on the lateral and the medial wall
    >>> m0 = hu < -400; m = close_lung_regions(hu, m0, 3)
    >>> int(m0.sum()), int(m[0, 13:17, 5:9].sum()), int(m[0, 13:17, 21:25].sum())  # lateral one filled (12 of 16)
    (768, 12, 0)
    >>> int(close_lung_regions(hu, m0, 3, medial=True)[0, 13:17, 21:25].sum())  # medial=True: solid, no vessel beside
    12
    """
    if radius <= 0:
        return mask
    out = mask.copy()
    pad = radius + 1
    cols = np.arange(mask.shape[2], dtype=float)
    for k in range(mask.shape[0]):
        lab, n = ndimage.label(mask[k])
        if not n:
            continue
        used = np.nonzero(mask[k].any(axis=0))[0]
        middle = 0.5 * (used.min() + used.max())
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        centres = np.bincount(lab.ravel(), weights=np.broadcast_to(cols, lab.shape).ravel(), minlength=n + 1) / np.maximum(sizes, 1)
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None or sizes[i] < MIN_CLOSE_REGION or abs(centres[i] - middle) < 0.02 * mask.shape[2]:
                continue
            side = 1.0 if centres[i] > middle else -1.0
            r0, r1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, mask.shape[1])
            c0, c1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, mask.shape[2])
            region = lab[r0:r1, c0:c1] == i
            lateral = ((cols[c0:c1] - centres[i]) * side >= 0)[None, :]
            h = hu[k, r0:r1, c0:c1]
            added = _close_disk(region, radius) & ~region & (h < max_hu)
            out[k, r0:r1, c0:c1] |= added & lateral
            if medial:  # solid tissue only, and not the blurred rim of an enhanced vessel or heart chamber
                near_bright = ndimage.binary_dilation(h >= max_hu, structure=_SQUARE)
                out[k, r0:r1, c0:c1] |= added & ~lateral & (h > MEDIAL_MIN_HU) & ~near_bright
    return out


def lung_mask(hu: np.ndarray, air_below: float = LUNG_AIR_BELOW_HU, max_hole_fraction: float = MAX_HOLE_FRACTION,
              close_fraction: float = 0.0, medial: bool = False) -> np.ndarray:
    """Boolean lung mask of ``[S, R, C]`` HU, slice by slice (see the module docstring).

    ``close_fraction`` > 0 also fills border indentations (juxtapleural nodules) with a closing of
    radius ``round(close_fraction x min(R, C))`` pixels (``close_lung_regions``).

    >>> v = np.full((1, 20, 20), 40.0); v[0, 0] = -1000; v[0, 4:14, 4:14] = -850; v[0, 8, 8] = 30
    >>> m = lung_mask(v); bool(m[0, 0, 0]), bool(m[0, 2, 2]), bool(m[0, 5, 5]), bool(m[0, 8, 8]), int(m.sum())
    (False, False, True, True, 100)
    """
    if hu.ndim != 3:
        raise ValueError(f"lung_mask expects [S, R, C] HU, got shape {tuple(hu.shape)}")
    air = hu < air_below
    lab, _ = ndimage.label(air, structure=_IN_PLANE)
    border = np.unique(np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    inside = air & ~np.isin(lab, border[border > 0])
    holes = ndimage.binary_fill_holes(inside, structure=_IN_PLANE) & ~inside
    hlab, n = ndimage.label(holes, structure=_IN_PLANE)
    if n:
        small = np.bincount(hlab.ravel()) <= max_hole_fraction * hu.shape[1] * hu.shape[2]
        small[0] = False
        inside |= small[hlab]
    radius = int(round(close_fraction * min(hu.shape[1], hu.shape[2])))
    return close_lung_regions(hu, inside, radius, medial=medial) if radius > 0 else inside


MIN_LUNG_ML = 1000.0  # below this much enclosed air a CT probably does not cover the chest
DEMO_LUNG_ML = (1544.0, 3893.0)  # range of the plain lung mask on 60 default demo phantoms


def lung_volume_ml(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Volume of the plain threshold lung mask (enclosed air, ``lung_mask``) of ``[S, R, C]`` HU, in mL."""
    return float(lung_mask(np.asarray(hu, dtype=np.float32)).sum() * float(np.prod(spacing_mm)) / 1000.0)


def lung_coverage_warning(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> str | None:
    """A one-line warning when a CT shows too little enclosed air to cover the chest, else None.

    The image encoders were trained on chest CTs, and the lung mask reads any gas enclosed by the
    body (stomach, bowel) as lung, with the folds of its wall as nodules.

    >>> v = np.full((4, 40, 40), 40.0); v[:, 0] = -1000; v[:, 10:30, 10:30] = -850
    >>> lung_coverage_warning(v, (5.0, 5.0, 5.0)) is None  # 1 600 lung voxels of 125 mm^3: 0.2 L
    False
    >>> lung_coverage_warning(v, (10.0, 10.0, 10.0)) is None  # 1 600 voxels of 1 mL: 1.6 L
    True
    """
    ml = lung_volume_ml(hu, spacing_mm)
    if ml >= MIN_LUNG_ML:
        return None
    return (f"This CT shows {ml / 1000:.2f} L of air inside the body; the lungs on a chest CT are usually 2-6 L "
            f"(the demo patients {DEMO_LUNG_ML[0] / 1000:.1f}-{DEMO_LUNG_ML[1] / 1000:.1f} L), so it may not cover "
            "the chest. The models were trained on chest CTs and read gas elsewhere (stomach, bowel) as lung: "
            "do not rely on the image part of this prediction.")


class SliceEncoder2D(nn.Module):
    """Per-slice CNN: ``[B, S, R, C]`` HU -> ``[B, S, out_dim]`` tokens.

    >>> enc = SliceEncoder2D(out_dim=16, size=32, channels=(4, 8))
    >>> enc(torch.zeros(2, 3, 50, 40)).shape
    torch.Size([2, 3, 16])
    >>> SliceEncoder2D(out_dim=16, size=32, channels=(4, 8), lung_mask=True)(torch.zeros(1, 2, 50, 40)).shape
    torch.Size([1, 2, 16])
    """

    def __init__(self, out_dim: int = 64, size: int = 64, channels: tuple[int, ...] = (8, 16, 32, 64),
                 hu_window: tuple[float, float] = (-1000.0, 1000.0), lung_mask: bool = False,
                 lung_close: float = 0.0, lung_medial: bool = False) -> None:
        super().__init__()
        self.size = int(size)
        self.lung_mask = bool(lung_mask)
        self.lung_close = float(lung_close)
        self.lung_medial = bool(lung_medial)
        self._pinned: torch.Tensor | None = None  # see pinned_mask
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        layers: list[nn.Module] = []
        c_in = 3  # HU + row and column coordinates (CoordConv: where in the slice matters)
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(4, c), c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        # with the lung mask, one extra input per slice: log(1 + soft-tissue area inside the lungs), a
        # smooth (differentiable) count of nodule-like pixels; the CNN features describe shape and place
        self.proj = nn.Linear(2 * c_in + (1 if self.lung_mask else 0), out_dim)
        ramp = torch.linspace(-1.0, 1.0, self.size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="ij"))[None], persistent=False)
        self.out_dim = out_dim

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution (target layer for Grad-CAM)."""
        return self.features[-3]

    @contextmanager
    def pinned_mask(self, mask: np.ndarray | torch.Tensor) -> Iterator[None]:
        """Within the block, every input of ``mask``'s ``[S, R, C]`` shape uses this lung mask.

        Attribution methods run the network on many perturbed copies of one CT (integrated
        gradients from air, occlusion): the lung mask of the CT itself is computed once and held
        fixed, instead of once per copy (about 0.5 s per 40 slices of 512 x 512). The mask is a
        constant either way (no gradient), so the attributions measure the network on that case's lungs.
        """
        previous = self._pinned
        self._pinned = (mask.detach().to(torch.bool).cpu() if isinstance(mask, torch.Tensor)
                        else torch.from_numpy(np.asarray(mask, dtype=bool)))
        try:
            yield
        finally:
            self._pinned = previous

    def mask(self, hu: torch.Tensor) -> torch.Tensor:
        """Constant (no gradient) boolean lung mask of ``[B, S, R, C]`` HU, on ``hu``'s device."""
        pinned = self._pinned
        if pinned is not None and tuple(pinned.shape) == tuple(hu.shape[1:]):
            return pinned.to(hu.device).expand(hu.shape)
        with torch.no_grad():
            arr = hu.detach().float().cpu().numpy()
        m = np.stack([lung_mask(v, close_fraction=self.lung_close, medial=self.lung_medial) for v in arr]) if arr.shape[0] else np.zeros(arr.shape, bool)
        return torch.from_numpy(m).to(hu.device)

    def preprocess(self, hu: torch.Tensor) -> torch.Tensor:
        """``[B, S, R, C]`` HU -> ``[B, S, size, size]`` in [-1, 1] (differentiable; lung-masked if enabled)."""
        b, s, r, c = hu.shape
        lo, hi = self.hu_window
        x = (hu.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
        if self.lung_mask:
            fill = (min(max(LUNG_FILL_HU, lo), hi) - (lo + hi) / 2) / ((hi - lo) / 2)
            x = torch.where(self.mask(hu), x, torch.full_like(x, fill))
        x = F.interpolate(x.reshape(b * s, 1, r, c), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.reshape(b, s, self.size, self.size)

    def trunk(self, slices: torch.Tensor) -> torch.Tensor:
        """``[B, S, size, size]`` preprocessed slices -> ``[B, S, out_dim]``."""
        b, s = slices.shape[:2]
        x = slices.reshape(b * s, 1, self.size, self.size)
        x = torch.cat([x, self.coords.to(x).expand(b * s, 2, self.size, self.size)], dim=1)
        fmap = self.features(x)
        parts = [fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))]
        if self.lung_mask:
            parts.append(self.soft_tissue_area(slices).reshape(b * s, 1))
        return self.proj(torch.cat(parts, dim=1)).reshape(b, s, -1)

    def soft_tissue_area(self, slices: torch.Tensor) -> torch.Tensor:
        """``[B, S, size, size]`` preprocessed (lung-masked) slices -> ``[B, S]`` log(1 + soft-tissue pixels).

        Soft tissue is HU above -300 (smooth step, 25 HU wide): inside the lung mask that is
        nodules (and partial-volume rims), since everything outside the lungs is lung air.
        """
        lo, hi = self.hu_window
        thr = (SOFT_TISSUE_ABOVE_HU - (lo + hi) / 2) / ((hi - lo) / 2)
        tau = 25.0 / ((hi - lo) / 2)
        return torch.log1p(torch.sigmoid((slices - thr) / tau).sum(dim=(2, 3)))

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.preprocess(hu))
