"""Self-supervised synthetic-lesion pretext for the 2D encoder (issue 14; opt-in, ``image.pretext_steps``).

Before any survival label is read, the trunk of a ``pool="detect"`` encoder
(``core.models.image2d.SliceEncoder2D``) learns to segment lesions that this
module inserts into the cohort's own *training* slices: the slices are the
prepared ones of stage A (windowed and resized, no organ mask), so the trunk
sees real anatomy of the task's scanner and region, and every lesion label
comes from the insertion, none from the cohort. Stage A then freezes the trunk
and learns survival from a few detection statistics per slice
(``SliceEncoder2D.detection_stats``), so ~200 survival labels cannot be
memorised by a convolutional network.

The lesion prior is generic (:class:`LesionPrior`): ellipses, lobulated unions
of discs and irregular blobs with a noisy outline, an optional noise texture,
radii over a broad range (log-uniform), soft or sharp edges, darker or brighter
than the surroundings by a log-uniform HU contrast, added to the tissue or
replacing it by a level relative to the local mean. A lesion is centred on a
random body pixel of the slice (above ``body_hu``): a rule on the slice alone,
nothing shared between subjects and no organ mask.

>>> import numpy as np, torch
>>> x = torch.full((4, 32, 32), 0.04)            # 40 HU in prepared units of HUWindow(-1000, 1000)
>>> y, t = insert_synthetic_lesions(x, np.random.default_rng(0), LesionPrior(p_lesion=1.0), 1000.0, 0.0)
>>> y.shape, t.shape, bool((t.sum(dim=(1, 2, 3)) > 0).all()), bool(((y - x).abs().sum(dim=(1, 2)) > 0).all())
(torch.Size([4, 32, 32]), torch.Size([4, 2, 32, 32]), True, True)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time as _time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import InputError
from core.preprocess.transforms import box_mean
from core.runtime import one_thread_fewer
from core.train.detection_loss import POS_WEIGHT, detection_loss
from core.train import pretext_checkpoint as kept
from core.train.prefetch import prefetched
from core.train.settings import Progress

# the pretext is most of a detector model's training (about 930 of 950 s on a 60-patient cohort, 2 cores): a job may
# make way for queued jobs every this many steps (about 30 s there, 5 s on a GPU; a break with nothing queued costs
# one message to the queue and back)
BREAK_STEPS = 100

SHAPES: tuple[str, ...] = ("ellipse", "lobulated", "irregular")


@dataclass(frozen=True)
class LesionPrior:
    """The distribution of synthetic lesions (sizes in prepared pixels, contrasts in HU)."""

    p_lesion: float = 0.6                  # probability that a slice gets lesions at all
    max_lesions: int = 3                   # 1 .. max_lesions per slice that gets any
    radius_px: tuple[float, float] = (1.0, 9.0)        # log-uniform
    aspect: tuple[float, float] = (0.45, 1.0)          # minor / major axis
    contrast_hu: tuple[float, float] = (20.0, 600.0)   # log-uniform magnitude; the sign is random
    p_bright: float = 0.5
    edge_px: tuple[float, float] = (0.15, 1.5)         # width of the soft edge (logistic scale)
    p_replace: float = 0.4                 # replace the tissue by (local mean + contrast) instead of adding
    texture: tuple[float, float] = (0.0, 0.5)          # noise texture inside, a fraction of the contrast
    body_hu: float = -300.0                # lesion centres are pixels above this HU
    # opt-in (session 12; the defaults leave the prior above unchanged): "a lesion sits in parenchyma". A share of
    # the lesions is centred in locally homogeneous soft tissue of the slice (local mean in ``parenchyma_hu``, local sd
    # below ``parenchyma_sd_hu``, both in a ``parenchyma_px`` window): a rule on the slice's own pixels, no organ mask.
    p_parenchyma: float = 0.0              # probability that a lesion is placed in parenchyma (0: never)
    parenchyma_hu: tuple[float, float] = (0.0, 120.0)
    parenchyma_sd_hu: float = 20.0
    parenchyma_px: int = 5                 # odd window of the local mean and sd
    parenchyma_contrast_hu: tuple[float, float] = (15.0, 100.0)  # log-uniform magnitude for those lesions
    # visibility-aware labels: a lesion is labelled only when |contrast| x sqrt(label area, px) / local sd (HU, the
    # slice's ``parenchyma_px`` window at the centre before insertion) reaches this; fainter ones are inserted unlabelled
    min_visibility: float = 0.0            # 0: every lesion is labelled (the session-10 behaviour)
    # opt-in (session 13): "a solid nodule in aerated parenchyma". A share of the lesions is centred in enclosed
    # low-density pixels of the slice (``lowdensity_px`` local mean in ``lowdensity_hu``, not connected to the image
    # border through pixels below its upper bound, so not the air outside the body): a brighter blob that replaces
    # them by a soft-tissue level drawn from ``lowdensity_level_hu``, radius from ``lowdensity_radius_px``
    p_lowdensity: float = 0.0
    lowdensity_hu: tuple[float, float] = (-950.0, -300.0)
    lowdensity_px: int = 3
    lowdensity_level_hu: tuple[float, float] = (-100.0, 100.0)
    lowdensity_radius_px: tuple[float, float] = (1.0, 6.0)
    # opt-in: a share of the lesions is centred within ``edge_band_px`` of the slice border (on the pixels its kind
    # would use there: parenchyma, low-density or body), where a cropped field of view cuts organs
    p_edge: float = 0.0
    edge_band_px: float = 12.0
    # opt-in (session 14): "a lesion in dense tissue" (a bone metastasis). A share of the lesions is centred in pixels
    # whose 3 px local mean lies in ``dense_hu`` and kept inside the pixels of local mean above ``dense_confine_hu``: with
    # probability ``p_lytic`` it replaces them by a soft-tissue level from ``dense_level_hu`` (darker), else it adds a
    # log-uniform ``dense_contrast_hu`` (brighter); radius from ``dense_radius_px``. A rule on HU, no organ mask
    p_dense: float = 0.0
    dense_hu: tuple[float, float] = (150.0, 2000.0)
    dense_confine_hu: float = 100.0
    p_lytic: float = 0.5
    dense_level_hu: tuple[float, float] = (-20.0, 60.0)
    dense_contrast_hu: tuple[float, float] = (150.0, 600.0)
    dense_radius_px: tuple[float, float] = (1.0, 4.0)
    # opt-in (session 19): "a lesion is tissue". The body and parenchyma lesions change only pixels above ``body_hu``
    # in the slice before insertion (and are labelled there only), so none reaches into the air around the body or
    # into gas: a blob that notches or bulges the skin line or a gas border is not drawn as a lesion
    confine_to_tissue: bool = False

    def __post_init__(self) -> None:
        if int(self.parenchyma_px) < 3 or int(self.parenchyma_px) % 2 == 0:
            raise InputError("image pretext_prior parenchyma_px", self.parenchyma_px, "must be an odd window of >= 3 pixels", "use e.g. 5")
        for name in ("p_parenchyma", "p_lowdensity", "p_edge", "p_dense", "p_lytic"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InputError(f"image pretext_prior {name}", getattr(self, name), "must be a probability in [0, 1]", "use e.g. 0.3")
        if int(self.lowdensity_px) < 1 or int(self.lowdensity_px) % 2 == 0:
            raise InputError("image pretext_prior lowdensity_px", self.lowdensity_px, "must be an odd window of >= 1 pixel", "use e.g. 3")
        if not float(self.lowdensity_hu[0]) < float(self.lowdensity_hu[1]):
            raise InputError("image pretext_prior lowdensity_hu", list(self.lowdensity_hu), "needs low < high", "use e.g. [-950, -300]")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LesionPrior:
        """A prior from a settings dict (unknown keys are an error; lists become tuples).

        >>> LesionPrior.from_dict({"radius_px": [1, 4]}).radius_px
        (1.0, 4.0)
        """
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise InputError("image pretext_prior", bad[0], "is not a lesion prior key", f"use keys of {sorted(names)}")
        out: dict[str, Any] = {}
        for k, v in d.items():
            out[k] = tuple(float(a) for a in v) if isinstance(v, (list, tuple)) else v
        return cls(**out)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


Box = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 of a lesion's own box in the slice


def lesion_alpha(rng: np.random.Generator, prior: LesionPrior, size_hw: tuple[int, int], centre: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One random lesion: its soft occupancy ``[H, W]`` in 0..1 (texture included) and its label (occupancy
    before texture >= 0.5).

    >>> a, m = lesion_alpha(np.random.default_rng(1), LesionPrior(radius_px=(4.0, 4.0)), (32, 32), (16.0, 16.0))
    >>> float(a.max()) > 0.5, bool(m[16, 16]), bool(m[0, 0])
    (True, True, False)
    """
    h, w = size_hw
    a, m, (y0, y1, x0, x1) = lesion_box(rng, prior, size_hw, centre)
    alpha, label = torch.zeros(h, w), torch.zeros(h, w, dtype=torch.bool)
    alpha[y0:y1, x0:x1], label[y0:y1, x0:x1] = a, m
    return alpha, label


def lesion_box(rng: np.random.Generator, prior: LesionPrior, size_hw: tuple[int, int], centre: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, Box]:
    """:func:`lesion_alpha` on the lesion's own box only (the same draws): occupancy and label of the box, and the box.
    Outside it the occupancy is 0, so a lesion changes the slice inside its box only."""
    alpha, label, box = _lesion_box(rng, prior, size_hw, centre)
    return torch.from_numpy(alpha), torch.from_numpy(label), box


def _lesion_box(rng: np.random.Generator, prior: LesionPrior, size_hw: tuple[int, int],
                centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, Box]:
    """:func:`lesion_box` in numpy (float32 occupancy, bool label): what the insertion loop works on."""
    h, w = size_hw
    r = _loguniform(rng, *prior.radius_px)
    edge = rng.uniform(*prior.edge_px)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    theta = rng.uniform(0, math.pi)
    # rendered on the lesion's own box (every shape stays within 1.7 radii of the centre), then placed
    reach = int(math.ceil(1.7 * r + 6 * edge)) + 1
    y0, y1 = max(0, int(centre[0]) - reach), min(h, int(centre[0]) + reach + 1)
    x0, x1 = max(0, int(centre[1]) - reach), min(w, int(centre[1]) + reach + 1)
    # numpy: these boxes are small, and torch's per-call thread overhead dominated on a busy CPU
    yy, xx = np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]  # broadcast
    cy, cx = centre

    def ellipse_dist(oy: float, ox: float, rad: float) -> np.ndarray:
        """Signed distance-like field (pixels, > 0 inside) of a rotated ellipse of major radius ``rad``."""
        ab = rng.uniform(*prior.aspect)
        dy, dx = yy - (cy + oy), xx - (cx + ox)
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        rho = np.sqrt(u ** 2 + (v / ab) ** 2 + 1e-6)
        if shape == "irregular":
            ang = np.arctan2(v, u)
            wobble = np.ones_like(ang)
            for k in range(2, 6):
                wobble = wobble + rng.uniform(0, 0.3 / (k - 1)) * np.cos(k * ang + rng.uniform(0, 2 * math.pi))
            return rad * np.maximum(wobble, 0.3) - rho
        return rad - rho

    if shape == "lobulated":
        field = ellipse_dist(0.0, 0.0, r * rng.uniform(0.6, 0.9))
        for _ in range(int(rng.integers(2, 5))):
            ang = rng.uniform(0, 2 * math.pi)
            off = r * rng.uniform(0.3, 0.7)
            field = np.maximum(field, ellipse_dist(off * math.sin(ang), off * math.cos(ang), r * rng.uniform(0.35, 0.7)))
    else:
        field = ellipse_dist(0.0, 0.0, r)
    box = 1.0 / (1.0 + np.exp(-np.clip(field / edge, -30, 30)))
    tex = rng.uniform(*prior.texture)
    label = box >= 0.5
    if tex > 0:
        from scipy.ndimage import uniform_filter

        noise = uniform_filter(rng.standard_normal(box.shape), 3, mode="nearest")
        box = box * np.maximum(1 + tex * noise / (noise.std() + 1e-6), 0.0)
    return box.astype(np.float32), label, (y0, y1, x0, x1)


def local_mean_sd(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``[N, H, W]`` -> their ``k x k`` local mean and standard deviation (same units; edges: the pixels inside).

    >>> m, sd = local_mean_sd(torch.tensor([[[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]]]).expand(1, 6, 6), 3)
    >>> [round(float(v), 3) for v in m[0, 0]], [round(float(v), 3) for v in sd[0, 0]]
    ([0.0, 0.0, 0.667, 1.333, 2.0, 2.0], [0.0, 0.0, 0.943, 0.943, 0.0, 0.0])
    """
    xb = x[:, None].float()
    m = box_mean(xb, k)
    m2 = box_mean(xb * xb, k)
    return m[:, 0], (m2 - m * m).clamp(min=0.0).sqrt()[:, 0]


def parenchyma_pixels(x: torch.Tensor, prior: LesionPrior, window_half: float, window_centre: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``[N, H, W]`` (window units) -> the mask of locally homogeneous soft tissue ``[N, H, W]`` (local mean in
    ``prior.parenchyma_hu``, local sd below ``prior.parenchyma_sd_hu``) and the local sd in HU ``[N, H, W]``.

    >>> x = torch.full((1, 12, 12), 0.05); x[0, :, 6:] = -0.1   # 50 HU tissue | -100 HU fat
    >>> mask, sd = parenchyma_pixels(x, LesionPrior(), 1000.0, 0.0)
    >>> bool(mask[0, :, :4].all()), bool(mask[0, :, 5:].any()), round(float(sd[0, 0, 0]), 1), round(float(sd[0, 0, 6]), 1)
    (True, False, 0.0, 73.5)
    """
    mean, sd = local_mean_sd(x, int(prior.parenchyma_px))
    mean_hu, sd_hu = mean * window_half + window_centre, sd * window_half
    lo, hi = prior.parenchyma_hu
    return (mean_hu >= lo) & (mean_hu <= hi) & (sd_hu < prior.parenchyma_sd_hu), sd_hu


def lowdensity_pixels(x: torch.Tensor, prior: LesionPrior, window_half: float, window_centre: float) -> torch.Tensor:
    """Slices ``[N, H, W]`` (window units) -> the mask ``[N, H, W]`` of enclosed low-density pixels: the
    ``prior.lowdensity_px`` local mean within ``prior.lowdensity_hu``, in a connected region (of pixels whose local mean
    is below its upper bound) that does not touch the slice border, i.e. aerated tissue and gas inside the body,
    not the air around it. A rule on the slice's own pixels, no organ mask.

    >>> x = torch.full((1, 16, 16), -1.0); x[0, 2:14, 2:14] = 0.04; x[0, 6:10, 4:8] = -0.85   # air | body | lung
    >>> m = lowdensity_pixels(x, LesionPrior(), 1000.0, 0.0)
    >>> bool(m[0, 7, 5]), bool(m[0, 0, 0]), bool(m[0, 7, 12]), int(m.sum()) > 0
    (True, False, False, True)
    """
    from scipy.ndimage import label as _label

    k = int(prior.lowdensity_px)
    mean_hu = ((box_mean(x[:, None].float(), k)[:, 0] if k > 1 else x.float()) * window_half + window_centre).numpy()
    lo, hi = prior.lowdensity_hu
    # one labelling of the whole batch, each slice's regions apart (no connection across slices): 12 -> 6 ms a batch
    regions, _ = _label(mean_hu < hi, np.pad(np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool), ((1, 1), (0, 0), (0, 0))))
    border = np.unique(np.concatenate([regions[:, [0, -1]].ravel(), regions[:, :, [0, -1]].ravel()]))
    return torch.from_numpy(~np.isin(regions, border[border > 0]) & (regions > 0) & (mean_hu >= lo))


def dense_pixels(x: torch.Tensor, prior: LesionPrior, window_half: float, window_centre: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``[N, H, W]`` (window units) -> the centres of dense-tissue lesions (3 px local mean within
    ``prior.dense_hu``) and the pixels they are confined to (3 px local mean above ``prior.dense_confine_hu``, grown by
    one pixel), both ``[N, H, W]`` bool. A rule on HU alone (bone and calcified tissue), no organ mask.

    >>> x = torch.full((1, 12, 12), 0.04); x[0, 3:9, 3:9] = 0.4    # 40 HU tissue | a 400 HU block of bone
    >>> centre, confine = dense_pixels(x, LesionPrior(), 1000.0, 0.0)
    >>> bool(centre[0, 6, 6]), bool(centre[0, 0, 0]), bool(confine[0, 2, 6]), bool(confine[0, 0, 6])
    (True, False, True, False)
    """
    mean_hu = local_mean_sd(x, 3)[0] * window_half + window_centre
    lo, hi = prior.dense_hu
    grown = F.max_pool2d((mean_hu > prior.dense_confine_hu).float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
    return (mean_hu >= lo) & (mean_hu <= hi), grown


def _edge_band(h: int, w: int, band: float) -> torch.Tensor:
    """``[H, W]`` True within ``band`` pixels of the slice border."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.minimum(torch.minimum(yy, h - 1 - yy), torch.minimum(xx, w - 1 - xx)) < band


def insert_synthetic_lesions(x: torch.Tensor, rng: np.random.Generator, prior: LesionPrior,
                             window_half: float, window_centre: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``[N, H, W]`` in the units of a ``[-1, 1]`` HU window (``(hu - centre) / half``) -> the slices with
    synthetic lesions and their labels ``[N, 2, H, W]`` (channel 0 darker, 1 brighter). Values stay in ``[-1, 1]``.

    With ``prior.p_parenchyma`` > 0 that share of the lesions is centred in locally homogeneous soft tissue
    (:func:`parenchyma_pixels`, from the slice before any insertion) with a contrast from
    ``prior.parenchyma_contrast_hu``; a slice without such pixels places them on body pixels. With
    ``prior.min_visibility`` > 0 a lesion whose ``|contrast| x sqrt(area) / local sd`` is below it is inserted but
    not labelled. With ``prior.p_lowdensity`` > 0 that share is a brighter solid blob centred in enclosed low-density
    pixels (:func:`lowdensity_pixels`) that replaces them by a soft-tissue level; with ``prior.p_edge`` > 0 that share is
    centred within ``prior.edge_band_px`` of the border. With ``prior.p_dense`` > 0 that share is centred in dense
    tissue (:func:`dense_pixels`: bone) and kept inside it, lytic (darker) or sclerotic (brighter). With all of these at
    0 (the defaults) the random draws are exactly those of the session-10 prior."""
    n, h, w = x.shape
    out = x.clone().float()
    target = torch.zeros(n, 2, h, w)
    body_level = (prior.body_hu - window_centre) / window_half
    paren, sd_hu = parenchyma_pixels(out, prior, window_half, window_centre)  # from the slices before any insertion
    low = lowdensity_pixels(out, prior, window_half, window_centre) if prior.p_lowdensity > 0 else None
    dense, confine = dense_pixels(out, prior, window_half, window_centre) if prior.p_dense > 0 else (None, None)
    dense_prior = dataclasses.replace(prior, radius_px=prior.dense_radius_px) if dense is not None else prior
    band = _edge_band(h, w, prior.edge_band_px) if prior.p_edge > 0 else None
    nodule_prior = dataclasses.replace(prior, radius_px=prior.lowdensity_radius_px) if low is not None else prior
    # the loop works on numpy views of ``out`` and ``target`` (shared memory): its many small box operations cost
    # less there than as torch calls; the random draws are the same, in the same order
    out_np, target_np, body_np = out.numpy(), target.numpy(), (out > body_level).numpy()
    tissue_np = (x.float() > body_level).numpy() if prior.confine_to_tissue else None
    paren_np, sd_np = paren.numpy(), sd_hu.numpy()
    low_np = low.numpy() if low is not None else None
    dense_np = dense.numpy() if dense is not None else None
    confine_np = confine.numpy() if confine is not None else None
    band_np = band.numpy() if band is not None else None
    for i in range(n):
        if rng.random() >= prior.p_lesion:
            continue
        body = np.argwhere(body_np[i])
        if len(body) == 0:
            continue
        soft = np.argwhere(paren_np[i]) if prior.p_parenchyma > 0 else body
        aerated = np.argwhere(low_np[i]) if low_np is not None else body
        bony = np.argwhere(dense_np[i]) if dense_np is not None else body
        for _ in range(int(rng.integers(1, prior.max_lesions + 1))):
            nodule = low_np is not None and len(aerated) > 0 and rng.random() < prior.p_lowdensity
            in_bone = not nodule and dense_np is not None and len(bony) > 0 and rng.random() < prior.p_dense
            in_paren = not nodule and not in_bone and prior.p_parenchyma > 0 and len(soft) > 0 and rng.random() < prior.p_parenchyma
            where = aerated if nodule else (bony if in_bone else (soft if in_paren else body))
            if band_np is not None and rng.random() < prior.p_edge:
                near = where[band_np[where[:, 0], where[:, 1]]]
                where = near if len(near) else where
            cy, cx = (float(v) for v in where[int(rng.integers(len(where)))])
            if nodule:  # a solid blob replacing aerated tissue by a soft-tissue level: always brighter
                alpha, label, (y0, y1, x0, x1) = _lesion_box(rng, nodule_prior, (h, w), (cy, cx))
                level = (rng.uniform(*prior.lowdensity_level_hu) - window_centre) / window_half
                contrast_hu = abs(level - float(out_np[i, int(cy), int(cx)])) * window_half
                o = out_np[i, y0:y1, x0:x1]
                out_np[i, y0:y1, x0:x1] = o + np.minimum(alpha, np.float32(1.0)) * (level - o)
                bright = True
            elif in_bone:  # lytic (replaced by a soft-tissue level: darker) or sclerotic (brighter), kept in dense tissue
                assert confine_np is not None
                alpha, label, (y0, y1, x0, x1) = _lesion_box(rng, dense_prior, (h, w), (cy, cx))
                alpha, label = alpha * confine_np[i, y0:y1, x0:x1], label & confine_np[i, y0:y1, x0:x1]
                bright = rng.random() >= prior.p_lytic
                o = out_np[i, y0:y1, x0:x1]
                if bright:
                    contrast_hu = _loguniform(rng, *prior.dense_contrast_hu)
                    out_np[i, y0:y1, x0:x1] = o + alpha * np.float32(contrast_hu / window_half)
                else:
                    level = (rng.uniform(*prior.dense_level_hu) - window_centre) / window_half
                    contrast_hu = abs(level - float(out_np[i, int(cy), int(cx)])) * window_half
                    out_np[i, y0:y1, x0:x1] = o + np.minimum(alpha, np.float32(1.0)) * (level - o)
            else:
                alpha, label, (y0, y1, x0, x1) = _lesion_box(rng, prior, (h, w), (cy, cx))
                if tissue_np is not None:
                    tissue = tissue_np[i, y0:y1, x0:x1]
                    alpha, label = alpha * tissue, label & tissue
                bright = rng.random() < prior.p_bright
                contrast_hu = _loguniform(rng, *(prior.parenchyma_contrast_hu if in_paren else prior.contrast_hu))
                delta = contrast_hu / window_half * (1.0 if bright else -1.0)
                o = out_np[i, y0:y1, x0:x1]
                if rng.random() < prior.p_replace:
                    ry, rx = int(cy), int(cx)
                    k = max(2, int(round(2 * float(label.sum()) ** 0.5)))
                    local = out_np[i, max(0, ry - k):ry + k + 1, max(0, rx - k):rx + k + 1].mean()
                    out_np[i, y0:y1, x0:x1] = o + np.minimum(alpha, np.float32(1.0)) * (local + np.float32(delta) - o)
                else:
                    out_np[i, y0:y1, x0:x1] = o + alpha * np.float32(delta)
            if prior.min_visibility > 0:
                noise = max(float(sd_np[i, int(cy), int(cx)]), 1.0)
                if contrast_hu * float(label.sum()) ** 0.5 / noise < prior.min_visibility:
                    continue  # inserted, but too faint against its surroundings to be labelled
            tb = target_np[i, int(bright), y0:y1, x0:x1]
            target_np[i, int(bright), y0:y1, x0:x1] = np.maximum(tb, label.astype(np.float32))
    return out.clamp(-1.0, 1.0), target


def _sample_slices(x: torch.Tensor, mask: torch.Tensor, subjects: np.ndarray, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random real slices ``[n, H, W]`` of ``subjects`` (prepared ``x`` ``[N, S, H, W]``, slice ``mask`` ``[N, S]``)."""
    idx = rng.choice(subjects, n)
    counts = mask[idx].sum(dim=1).long().clamp(min=1).numpy()
    s = (rng.random(n) * counts).astype(int)
    return x[torch.as_tensor(idx), torch.as_tensor(s)].float()


def pretrain_detector(enc: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, train_idx: np.ndarray,
                      val_idx: np.ndarray, *, steps: int, batch: int = 32, lr: float = 2e-3, prior: LesionPrior | None = None,
                      seed: int = 0, device: torch.device | None = None, window: tuple[float, float] = (-1000.0, 1000.0),
                      progress: Progress | None = None, progress_span: tuple[float, float] = (0.0, 1.0),
                      ignore_top: float = 0.0, rank_weight: float = 0.0, pos_weight: float = POS_WEIGHT,
                      between: Callable[[], None] | None = None, precision: str = "fp32", spare_thread: bool = False,
                      checkpoint: Path | None = None) -> dict[str, Any]:
    """Train the trunk and detector of ``enc`` (``pool="detect"``) to segment synthetic lesions in the real slices of
    ``train_idx`` (prepared ``x`` ``[N, S, H, W]`` in units of the HU ``window``). Returns an info dict: losses, seconds,
    and the held-out check on ``val_idx`` slices with fresh synthetic lesions: the AUC of each slice's max logit for
    "this slice got a lesion of that sign" (``synthetic_val_auc``: darker, brighter). No cohort label is read.
    ``between`` is called every :data:`BREAK_STEPS` steps: where a background job may let queued jobs run first.
    ``precision`` ``"bf16"`` runs the network's forward pass in bfloat16 autocast (weights, optimiser and loss stay
    float32; :func:`core.runtime.fast_cpu_bf16` says which CPUs are fast at it); the held-out check runs in float32.
    ``spare_thread`` (the caller owns the process's thread count): with bfloat16 on the CPU the network runs on one
    thread fewer than torch's, so the batch-making worker has a core of its own (on 2 cores: 134 -> 124 ms a step).
    ``checkpoint``: where the run's state is kept every :data:`BREAK_STEPS` steps and at its end, and resumed from
    (``core.train.pretext_checkpoint``: the same weights as a run that was never stopped)."""
    prior = prior or LesionPrior()
    device = device or torch.device("cpu")
    if getattr(enc, "detector", None) is None:
        raise InputError("image pool", getattr(enc, "pool", None), "the pretext needs the detection head", "set image pool to \"detect\"")
    if steps < 1 or len(train_idx) == 0:
        raise InputError("image pretext_steps", steps, "needs >= 1 step and a train split with CT", "use e.g. 1500")
    half, centre = (window[1] - window[0]) / 2, (window[1] + window[0]) / 2
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    enc.to(device).train()
    params = [p for n, p in enc.named_parameters() if not n.startswith("proj.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = _time.perf_counter()
    done = kept.resume(checkpoint, enc, opt, sched, rng, steps=steps) if checkpoint is not None else kept.Resumed()
    losses, calls, before = done.losses, itertools.count(done.step), {}  # before: the generator before each batch

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        i = next(calls)
        before[i], _ = rng.bit_generator.state, before.pop(i - 2, None)  # the consumer is at batch i - 1
        return insert_synthetic_lesions(_sample_slices(x, mask, train_idx, batch, rng), rng, prior, half, centre)

    def keep(step: int, state: dict[str, Any]) -> None:
        kept.save(checkpoint, enc, opt, sched, step=step, steps=steps, losses=losses, rng_state=state,  # type: ignore[arg-type]
                  seconds=done.seconds + _time.perf_counter() - t0)
    resumed = f" (resumed at step {done.step})" if done.step else ""
    with one_thread_fewer(spare_thread and precision == "bf16" and device.type == "cpu"):  # a core of its own for the batch worker
        for step, (xs, tgt) in enumerate(prefetched(make, steps - done.step), start=done.step):  # each batch made in a
            if step > done.step and step % BREAK_STEPS == 0:  # worker thread while the network trains on the last
                if checkpoint is not None:
                    keep(step, before[step])
                if between is not None:
                    between()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = enc.detect_logits(xs[:, None].to(device))  # type: ignore[operator]
            loss = detection_loss(logits.float(), tgt.to(device), pos_weight=pos_weight, ignore_top=ignore_top, rank_weight=rank_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress is not None and step % 25 == 0:
                lo, hi = progress_span
                progress(lo + (hi - lo) * step / steps, f"lesion pretext step {step + 1}/{steps}{resumed}")
    if checkpoint is not None and done.step < steps:
        keep(steps, rng.bit_generator.state)  # done: a training stopped after this reads the trained detector
    enc.eval()
    info: dict[str, Any] = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, **({"ignore_top": ignore_top} if ignore_top > 0 else {}),
                            **({"rank_weight": rank_weight} if rank_weight > 0 else {}), **({"pos_weight": pos_weight} if pos_weight != POS_WEIGHT else {}),
                            **({"precision": precision} if precision != "fp32" else {}), **({"resumed_at": done.step} if done.step else {}),
                            "prior": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(prior).items()},
                            "loss_first_50": round(float(np.mean(losses[:50])), 4), "loss_last_50": round(float(np.mean(losses[-50:])), 4),
                            "seconds": round(done.seconds + _time.perf_counter() - t0, 1)}
    held = val_idx if len(val_idx) else train_idx
    vr = np.random.default_rng(seed + 1)
    xs, tgt = insert_synthetic_lesions(_sample_slices(x, mask, held, 256, vr), vr, prior, half, centre)
    with torch.no_grad():
        mx = torch.cat([enc.detect_logits(xs[i:i + 64, None].to(device)).amax(dim=(2, 3)).cpu() for i in range(0, len(xs), 64)])  # type: ignore[operator]
    has = tgt.amax(dim=(2, 3))
    info["synthetic_val_auc"] = [round(_auc(has[:, k].numpy(), mx[:, k].numpy()), 3) for k in range(has.shape[1])]
    return info


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """Rank AUC of ``score`` for binary ``label`` (0.5 when one class is missing).

    >>> _auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    pos, neg = score[label > 0], score[label <= 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def freeze_detector(enc: torch.nn.Module) -> list[str]:
    """Freeze everything of ``enc`` but its slice projection (``proj``); returns the names left trainable."""
    trainable = []
    for n, p in enc.named_parameters():
        p.requires_grad_(n.startswith("proj."))
        if p.requires_grad:
            trainable.append(n)
    return trainable
