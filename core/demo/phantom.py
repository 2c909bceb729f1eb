"""CT-like chest phantoms in the orientation of :mod:`core.io.volume`.

The grid is ``[slices, rows, cols]`` = ``SHAPE`` at ``SPACING_MM``; slice 0 is
inferior, rows run anterior -> posterior, columns patient right -> left. In
millimetres (LPS, origin at the grid centre) ``x`` grows to the patient's left,
``y`` posterior and ``z`` superior.

Tissues (HU before blur and noise): air -1000, subcutaneous and mediastinal
fat -100, muscle 45, lung -850 (denser posteriorly), myocardium 50, contrast
blood pool and great vessels 150-280 (per subject), vertebral cortex 900,
cancellous bone 250, discs 80, ribs and sternum 600, trachea air, liver 60
below the diaphragm, lung lesion 30-60, liver lesion 30-55 darker than the liver. Partial volume is a small blur; noise is smoothed Gaussian with a
per-subject sd of 10-20 HU inside the body (the air around the body is left
noise-free, which keeps each gzip file near 100 kB).

>>> from core.demo.latents import sample_latents
>>> lat = sample_latents(10, seed=0)
>>> p = render_phantom(lat.iloc[0], np.random.default_rng(0))
>>> p.hu.shape, p.hu.dtype
((32, 96, 96), dtype('int16'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

SHAPE = (32, 96, 96)
SPACING_MM = (6.0, 4.0, 4.0)

# tissue labels of the label map
AIR, FAT, MUSCLE, LUNG, MYOCARDIUM, BLOOD, VESSEL, CORTICAL, CANCELLOUS, DISC, RIB, TRACHEA, LESION, CANAL, LIVER, LIVER_LESION = range(16)
LABEL_NAMES = {
    AIR: "air", FAT: "fat", MUSCLE: "muscle", LUNG: "lung", MYOCARDIUM: "myocardium", BLOOD: "blood_pool",
    VESSEL: "great_vessels", CORTICAL: "cortical_bone", CANCELLOUS: "cancellous_bone", DISC: "disc",
    RIB: "rib", TRACHEA: "trachea", LESION: "lesion", CANAL: "spinal_canal", LIVER: "liver",
    LIVER_LESION: "liver_lesion",
}


@dataclass
class Phantom:
    hu: np.ndarray                      # int16 [S, R, C]
    labels: np.ndarray                  # uint8 [S, R, C], values of LABEL_NAMES
    lesion_voxel: tuple[int, int, int] | None          # centre of the lung nodule
    affine_lps: np.ndarray              # (slice, row, col, 1) -> LPS mm
    liver_lesion_voxel: tuple[int, int, int] | None = None  # centre of the liver lesion


def grid_mm(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable z [S,1,1], y [1,R,1], x [1,1,C] coordinates in mm (LPS, centred)."""
    s, r, c = shape
    z = ((np.arange(s) - (s - 1) / 2.0) * spacing[0]).reshape(s, 1, 1)
    y = ((np.arange(r) - (r - 1) / 2.0) * spacing[1]).reshape(1, r, 1)
    x = ((np.arange(c) - (c - 1) / 2.0) * spacing[2]).reshape(1, 1, c)
    return z, y, x


def affine_lps(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING_MM) -> np.ndarray:
    """Voxel (slice, row, col, 1) -> LPS millimetres for the centred grid."""
    s, r, c = shape
    a = np.zeros((4, 4))
    a[2, 0] = spacing[0]   # slice -> z (superior)
    a[1, 1] = spacing[1]   # row -> y (posterior)
    a[0, 2] = spacing[2]   # col -> x (left)
    a[:3, 3] = [-(c - 1) / 2.0 * spacing[2], -(r - 1) / 2.0 * spacing[1], -(s - 1) / 2.0 * spacing[0]]
    a[3, 3] = 1.0
    return a


def affine_ras_nifti(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING_MM) -> np.ndarray:
    """NIfTI affine for the array stored as ``hu.transpose(2, 1, 0)`` (i = col, j = row, k = slice), RAS mm."""
    lps = affine_lps(shape, spacing)
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0  # (i, j, k) -> (slice, row, col)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])                  # LPS -> RAS
    return flip @ lps @ perm


@dataclass(frozen=True)
class _Anatomy:
    """Derived geometry of one subject in mm."""

    cx: float
    cy: float
    ax: float            # body semi-axis (left-right)
    ay: float            # body semi-axis (antero-posterior)
    fat: float
    ix: float            # thoracic cavity semi-axes
    iy: float
    lung_cx: float       # |x| of each lung centre
    lung_cy: float
    lung_lx: float
    lung_ly: float
    apex: float          # z of the lung apices
    base: float          # z of the diaphragm domes (left; right is 12 mm higher)


def _anatomy(p: pd.Series) -> _Anatomy:
    ax, ay, fat = float(p["body_semi_x_mm"]), float(p["body_semi_y_mm"]), float(p["fat_mm"])
    wall = 11.0
    ix, iy = ax - fat - wall, ay - fat - wall
    dz = float(p["shift_z_mm"])
    return _Anatomy(
        cx=float(p["shift_x_mm"]), cy=float(p["shift_y_mm"]), ax=ax, ay=ay, fat=fat, ix=ix, iy=iy,
        lung_cx=0.53 * ix, lung_cy=0.05 * iy, lung_lx=0.43 * ix, lung_ly=0.86 * iy,
        apex=84.0 + dz, base=-80.0 + dz,
    )


def _lung_mask(a: _Anatomy, z: np.ndarray, y: np.ndarray, x: np.ndarray, sign: float) -> np.ndarray:
    """One lung (sign +1 left, -1 right): elliptic section tapering to the apex, above a domed diaphragm."""
    u = (x - a.cx - sign * a.lung_cx) / a.lung_lx
    v = (y - a.cy - a.lung_cy) / a.lung_ly
    r2 = u * u + v * v
    height = a.apex - a.base
    # section shrinks towards the apex (upper 40 %) like a dome
    top = a.base + 0.6 * height
    taper = np.where(z > top, 1.0 - ((z - top) / (a.apex - top)) ** 2, 1.0)
    base = a.base + (12.0 if sign < 0 else 0.0) + 28.0 * np.clip(1.0 - r2, 0.0, 1.0)
    return (r2 <= np.clip(taper, 0.0, 1.0)) & (z >= base) & (z <= a.apex)


def lesion_center_mm(p: pd.Series, a: _Anatomy | None = None) -> tuple[float, float, float]:
    """Intended lesion centre (z, y, x) in mm from the latent place (side, central, upper, jitters)."""
    a = a or _anatomy(p)
    sign = 1.0 if p["lesion_side"] == "left" else -1.0
    ju, jv, jz = float(p["lesion_jitter_u"]), float(p["lesion_jitter_v"]), float(p["lesion_jitter_z"])
    if p["lesion_central"]:
        u = -0.55 + 0.25 * ju          # medial third, near the hilum
        v = -0.25 + 0.5 * jv
    else:
        u = 0.45 + 0.25 * ju           # lateral, near the chest wall
        v = -0.55 + 1.1 * jv
    height = a.apex - a.base
    if p["lesion_upper"]:
        zc = a.base + (0.58 + 0.2 * jz) * height
    else:
        zc = a.base + (0.30 + 0.14 * jz) * height
    x = a.cx + sign * (a.lung_cx + u * a.lung_lx)
    y = a.cy + a.lung_cy + v * a.lung_ly
    return float(zc), float(y), float(x)


def liver_lesion_center_mm(p: pd.Series, a: _Anatomy | None = None) -> tuple[float, float, float]:
    """Intended liver-lesion centre (z, y, x) in mm: the right lobe below the right diaphragm, from three jitters."""
    a = a or _anatomy(p)
    ju, jv, jz = float(p["liver_jitter_u"]), float(p["liver_jitter_v"]), float(p["liver_jitter_z"])
    x = a.cx - (0.25 + 0.4 * ju) * a.ix
    y = a.cy + (-0.5 + 0.9 * jv) * a.iy
    zc = a.base + (-12.0 + 24.0 * jz)
    return float(zc), float(y), float(x)


def render_phantom(p: pd.Series, rng: np.random.Generator, *, shape: tuple[int, int, int] = SHAPE,
                   spacing: tuple[float, float, float] = SPACING_MM, lesion: bool | None = None) -> Phantom:
    """Render one subject's chest CT phantom from its latent row (see core.demo.latents).

    ``lesion=False`` renders the same subject without its lesions (for checks).
    """
    z, y, x = grid_mm(shape, spacing)
    a = _anatomy(p)
    full = np.broadcast_shapes(z.shape, y.shape, x.shape)
    labels = np.full(full, AIR, dtype=np.uint8)
    xc, yc = x - a.cx, y - a.cy

    # body: fat envelope, muscle wall, thoracic cavity (mediastinal fat by default)
    body = (xc / a.ax) ** 2 + (yc / a.ay) ** 2 <= 1.0
    muscle = (xc / (a.ax - a.fat)) ** 2 + (yc / (a.ay - a.fat)) ** 2 <= 1.0
    cavity = (xc / a.ix) ** 2 + (yc / a.iy) ** 2 <= 1.0
    labels[np.broadcast_to(body, full)] = FAT
    labels[np.broadcast_to(muscle, full)] = MUSCLE
    labels[np.broadcast_to(cavity, full)] = FAT
    # upper abdomen below the diaphragm: liver and spleen as one soft-tissue organ
    labels[np.broadcast_to(cavity, full) & np.broadcast_to(z < a.base + 20.0, full)] = LIVER

    # ribs: bone arcs in the chest wall, striped along z
    theta = np.arctan2(yc, xc)
    ring = ((xc / (a.ix + 7.0)) ** 2 + (yc / (a.iy + 7.0)) ** 2 <= 1.0) & ~cavity
    ring &= ((xc / (a.ix + 2.0)) ** 2 + (yc / (a.iy + 2.0)) ** 2 > 1.0)
    stripes = np.sin(2 * np.pi * (z + 40.0 * np.sin(theta)) / 26.0) > 0.55
    labels[ring & stripes] = RIB

    # lungs
    lungs = _lung_mask(a, z, y, x, +1.0) | _lung_mask(a, z, y, x, -1.0)
    labels[lungs] = LUNG

    # heart: ellipsoid anterior-left-inferior; myocardium shell around a contrast blood pool
    hs = float(p["heart_scale"])
    hz, hy, hx = a.base + 40.0, a.cy - 0.12 * a.iy, a.cx + 0.18 * a.ix
    sz, sy, sx = 42.0 * hs, 0.55 * a.iy * hs, 0.42 * a.ix * hs
    hr = ((z - hz) / sz) ** 2 + ((y - hy) / sy) ** 2 + ((x - hx) / sx) ** 2
    labels[hr <= 1.0] = MYOCARDIUM
    inner = ((z - hz) / (sz - 9.0)) ** 2 + ((y - hy) / (sy - 10.0)) ** 2 + ((x - hx) / (sx - 10.0)) ** 2
    labels[inner <= 1.0] = BLOOD

    # great vessels: ascending aorta, arch, descending aorta, pulmonary trunk
    arch_z = a.apex - 30.0
    asc = (a.cx - 12.0, a.cy - 0.30 * a.iy, 15.0)
    desc = (a.cx + 24.0, a.cy + 0.45 * a.iy, 12.0)
    vessel = ((x - asc[0]) ** 2 + (y - asc[1]) ** 2 <= asc[2] ** 2) & (z >= hz) & (z <= arch_z)
    vessel |= ((x - desc[0]) ** 2 + (y - desc[1]) ** 2 <= desc[2] ** 2) & (z <= arch_z)
    # arch: a tube along the segment asc -> desc at arch_z
    seg = np.array([desc[0] - asc[0], desc[1] - asc[1]])
    tpar = np.clip(((x - asc[0]) * seg[0] + (y - asc[1]) * seg[1]) / float(seg @ seg), 0.0, 1.0)
    dist2 = (x - asc[0] - tpar * seg[0]) ** 2 + (y - asc[1] - tpar * seg[1]) ** 2 + (z - arch_z) ** 2
    vessel |= dist2 <= 13.0 ** 2
    pulm = ((x - (a.cx + 14.0)) ** 2 + (y - (a.cy - 0.22 * a.iy)) ** 2 <= 13.0 ** 2) & (z >= hz + 10.0) & (z <= hz + 50.0)
    labels[vessel | pulm] = VESSEL

    # trachea above the carina
    carina = arch_z - 6.0
    trachea_out = ((x - a.cx) ** 2 + (y - (a.cy + 0.05 * a.iy)) ** 2 <= 10.0 ** 2) & (z >= carina)
    trachea_in = ((x - a.cx) ** 2 + (y - (a.cy + 0.05 * a.iy)) ** 2 <= 7.5 ** 2) & (z >= carina)
    labels[trachea_out] = MUSCLE
    labels[trachea_in] = TRACHEA

    # spine: vertebral body (cortex + cancellous, discs), canal, posterior elements; sternum
    vy = a.cy + a.iy * 0.78
    vb = (x - a.cx) ** 2 + (y - vy) ** 2
    disc = np.abs(((z - a.base + 200.0) % 27.0) - 13.5) < 2.5
    body_v = vb <= 19.0 ** 2
    labels[np.broadcast_to(body_v, full)] = CORTICAL
    labels[np.broadcast_to(vb <= 16.0 ** 2, full)] = CANCELLOUS
    labels[np.broadcast_to(body_v, full) & np.broadcast_to(disc, full)] = DISC
    canal_y = vy + 27.0
    canal_r = (x - a.cx) ** 2 + (y - canal_y) ** 2
    post = (canal_r <= 15.0 ** 2) | ((np.abs(x - a.cx) <= 4.0) & (y >= canal_y) & (y <= canal_y + 35.0))
    labels[np.broadcast_to(post, full) & ~np.broadcast_to(disc, full)] = CORTICAL
    labels[np.broadcast_to(canal_r <= 8.0 ** 2, full)] = CANAL
    sternum = (np.abs(x - a.cx) <= 14.0) & (np.abs(y - (a.cy - a.iy - 6.0)) <= 5.0)
    labels[np.broadcast_to(sternum, full)] = RIB

    # lesion: sphere clipped to the lung
    lesion_voxel: tuple[int, int, int] | None = None
    draw = bool(p["lesion"]) if lesion is None else bool(lesion) and bool(p["lesion"])
    if bool(p["lesion"]):
        lesion_voxel = _lesion_voxel(p, a, labels == LUNG, shape, spacing)
        if draw:
            _draw_sphere(labels, lesion_voxel, float(p["lesion_radius_mm"]), (z, y, x), inside=LUNG, label=LESION)

    # liver lesion: sphere clipped to the liver (absent in latents of earlier demo versions)
    liver_voxel: tuple[int, int, int] | None = None
    if bool(p.get("liver_lesion", 0)):
        liver_voxel = _organ_voxel(liver_lesion_center_mm(p, a), labels == LIVER, shape, spacing, side=-1.0, cx=a.cx)
        if lesion is not False:
            _draw_sphere(labels, liver_voxel, float(p["liver_lesion_radius_mm"]), (z, y, x), inside=LIVER,
                         label=LIVER_LESION)

    hu = _intensities(labels, p, rng, z, y, spacing)
    return Phantom(hu=hu, labels=labels, lesion_voxel=lesion_voxel, affine_lps=affine_lps(shape, spacing),
                   liver_lesion_voxel=liver_voxel)


def _draw_sphere(labels: np.ndarray, centre: tuple[int, int, int], radius_mm: float,
                 grid: tuple[np.ndarray, np.ndarray, np.ndarray], *, inside: int, label: int) -> None:
    """Relabel the voxels of ``inside`` within ``radius_mm`` of the ``centre`` voxel as ``label`` (and the centre)."""
    z, y, x = grid
    k, r, c = centre
    sphere = (z - z[k, 0, 0]) ** 2 + (y - y[0, r, 0]) ** 2 + (x - x[0, 0, c]) ** 2 <= radius_mm ** 2
    labels[sphere & (labels == inside)] = label
    labels[k, r, c] = label


def _lesion_voxel(p: pd.Series, a: _Anatomy, lung: np.ndarray, shape: tuple[int, int, int],
                  spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Voxel of the lung nodule's centre: the intended point, or the nearest deep lung voxel of its own lung."""
    sign = 1.0 if p["lesion_side"] == "left" else -1.0
    return _organ_voxel(lesion_center_mm(p, a), lung, shape, spacing, side=sign, cx=a.cx)


def _organ_voxel(centre_mm: tuple[float, float, float], organ: np.ndarray, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float], *, side: float, cx: float) -> tuple[int, int, int]:
    """The voxel at ``centre_mm``, or the nearest deep voxel of ``organ`` on the body's ``side`` (+1 left, -1 right)."""
    zc, yc, xc = centre_mm
    s, r, c = shape
    idx = np.array([zc / spacing[0] + (s - 1) / 2.0, yc / spacing[1] + (r - 1) / 2.0, xc / spacing[2] + (c - 1) / 2.0])
    k, i, j = np.clip(np.round(idx).astype(int), 0, np.array(shape) - 1)
    # deep: at least one voxel from the organ's border in-plane and along z
    deep = ndimage.binary_erosion(organ, structure=np.ones((3, 3, 3), bool))
    if deep[k, i, j]:
        return int(k), int(i), int(j)
    cand = np.argwhere(deep if deep.any() else organ)
    if not len(cand):
        return int(k), int(i), int(j)
    x_mm = (cand[:, 2] - (c - 1) / 2.0) * spacing[2] - cx
    same = cand[np.sign(x_mm) == side]
    cand = same if len(same) else cand
    d2 = (((cand - np.array([k, i, j])) * np.array(spacing)) ** 2).sum(axis=1)
    best = cand[int(np.argmin(d2))]
    return int(best[0]), int(best[1]), int(best[2])


def _intensities(labels: np.ndarray, p: pd.Series, rng: np.random.Generator, z: np.ndarray, y: np.ndarray,
                 spacing: tuple[float, float, float]) -> np.ndarray:
    contrast = float(p["contrast_hu"])
    table = np.zeros(len(LABEL_NAMES), dtype=np.float32)
    table[AIR], table[FAT], table[MUSCLE], table[LUNG] = -1000.0, -100.0, 45.0, -850.0
    table[MYOCARDIUM], table[BLOOD], table[VESSEL] = 50.0, contrast, contrast + 20.0
    table[CORTICAL], table[CANCELLOUS], table[DISC], table[RIB] = 900.0, 250.0, 80.0, 600.0
    table[TRACHEA], table[LESION], table[CANAL], table[LIVER] = -1000.0, 30.0 + 30.0 * rng.random(), 10.0, 60.0
    delta = p.get("liver_lesion_delta_hu", np.nan)
    table[LIVER_LESION] = table[LIVER] + (float(delta) if pd.notna(delta) else -40.0)
    hu = table[labels]
    # dependent lung is denser (posterior), by up to ~60 HU, plus slow texture
    lung = labels == LUNG
    gradient = np.broadcast_to(30.0 * (y / 100.0), labels.shape)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, labels.shape).astype(np.float32), sigma=(0.8, 2.0, 2.0))
    texture *= 25.0 / max(float(texture.std()), 1e-6)
    hu[lung] += gradient[lung] + texture[lung]
    # partial volume: slight blur, mostly in-plane
    hu = ndimage.gaussian_filter(hu, sigma=(0.35, 0.6, 0.6), mode="nearest")
    # correlated quantum noise with the subject's sd
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, labels.shape).astype(np.float32), sigma=(0.0, 0.7, 0.7))
    noise *= float(p["noise_sd_hu"]) / max(float(noise.std()), 1e-6)
    # outside the body the air is left noise-free: it would only add incompressible bytes
    inside = ndimage.binary_dilation(labels != AIR, iterations=1)
    hu += noise * inside
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def write_nifti(phantom: Phantom, path: Path, spacing: tuple[float, float, float] = SPACING_MM) -> None:
    """Write int16 NIfTI (gz) whose affine reorients back to [slice, row, col] of core.io.volume."""
    write_hu_nifti(phantom.hu, spacing, path)


def write_hu_nifti(hu: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    """int16 NIfTI (gz) of ``[slice, row, col]`` HU with an affine that loads back to the same array.

    The header carries no text (``descrip`` and friends stay empty): the upload gate treats header
    text as possible PHI.
    """
    import nibabel as nib

    spacing_t = tuple(float(v) for v in spacing)
    aff = affine_ras_nifti(hu.shape, spacing_t)  # type: ignore[arg-type]
    img = nib.Nifti1Image(np.ascontiguousarray(hu.astype(np.int16).transpose(2, 1, 0)), aff)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    nib.save(img, str(path))
