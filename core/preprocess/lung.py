"""Threshold lung mask of a CT, slice by slice, and the coverage check built on it.

``lung_mask`` marks, in every axial slice of ``[S, R, C]`` HU, the air-like
voxels (HU < -400) not connected to the slice border (this drops the air around
the body), plus enclosed holes smaller than 1 % of the slice (nodules inside the
lung; the liver under a diaphragm dome, which the lung rings, is larger and
stays out).

Juxtapleural nodules (``close_fraction`` > 0): each lung region of a slice is
also closed morphologically with a disk of radius ``close_fraction x min(rows,
cols)`` pixels (a rolling ball along the lung border), and the voxels this adds
on the region's lateral side (the costal pleura) join the mask unless they are
brighter than ``CLOSE_MAX_HU`` (``close_lung_regions``). A nodule on the chest
wall is an indentation the ball cannot enter, so it is filled. The mediastinal
side is left as it was: there the ball would swallow the borders of the heart,
great vessels and hilum.

Nodules at the hilum (``medial=True``): on the mediastinal side the same closing
adds only solid tissue (denser than ``MEDIAL_MIN_HU``) that does not touch an
enhanced voxel (``CLOSE_MAX_HU`` or more): the borders that defeat a plain
closing there are partial-volume rims of contrast-filled vessels and chambers,
and fat. The rule assumes contrast-enhanced CT: without contrast the hilar
vessels are as dense as a nodule and can join the mask.

This is an organ rule: it suits chest tasks (lung nodules) and is chosen per
model (``core.preprocess.transforms.LungMaskFill``), never applied by default
to other anatomy. Measured effects on the demo cohort are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

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
