"""One real-anatomy subject: a pose of the base CT (rotation, tilt, scale, shift, crop, resampling), its lesions
painted inside their organs, blur and noise (``core.demo.real_anatomy`` draws the latents and writes the cohort)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from core.demo.anatomy import LABELS, BaseAnatomy
from core.errors import InputError

LESION_EDGE_MM = (0.7, 1.5)  # width of a lesion's blurred edge

# ----------------------------------------------------------------------------- pose and noise
YAW_DEG = 12.0
TILT_DEG = 5.0
SCALE = (0.9, 1.1)
SHIFT_SD_MM = 6.0
INPLANE_MM = (2.8, 3.2)
CROP_INPLANE = (0.88, 1.0)
CROP_Z = (0.80, 1.0)
BLUR_VOXELS = (0.0, 0.6)
NOISE_SD_HU = (8.0, 20.0)
NOISE_GRAIN_MM = (1.5, 3.0)
OFFSET_SD_HU = 4.0


@dataclass
class Pose:
    yaw_deg: float
    tilt_deg: float
    scale: float
    shift_mm: tuple[float, float, float]      # (z, y, x) field-of-view centre relative to the anatomy
    spacing_mm: tuple[float, float, float]    # output (slice, row, col)
    shape: tuple[int, int, int]               # output (slices, rows, cols)


@dataclass
class Rendered:
    hu: np.ndarray                            # int16 [S, R, C]
    spacing_mm: tuple[float, float, float]
    labels: np.ndarray                        # uint8 organ labels on the output grid
    lesions: list[dict]                       # organ, kind, radius_mm, slice, row, col
    pose: Pose


def draw_pose(base: BaseAnatomy, slices: int, rng: np.random.Generator) -> Pose:
    """A random pose and crop (module docstring) for an output of ``slices`` slices."""
    s0, r0, c0 = base.hu.shape
    sz, sy, sx = base.spacing_mm
    scale = float(rng.uniform(*SCALE))
    z_span = (s0 - 1) * sz
    fov_z = float(rng.uniform(*CROP_Z)) * z_span * min(scale, 1.0)
    room = max(scale * z_span - fov_z, 0.0) / 2.0
    shift_z = float(rng.uniform(-room, room))
    shift_y, shift_x = (float(v) for v in np.clip(rng.normal(0.0, SHIFT_SD_MM, 2), -15.0, 15.0))
    pix = float(rng.uniform(*INPLANE_MM))
    rows = round(rng.uniform(*CROP_INPLANE) * r0 * sy / pix)
    cols = round(rng.uniform(*CROP_INPLANE) * c0 * sx / pix)
    dz = fov_z / (slices - 1)
    return Pose(yaw_deg=float(rng.uniform(-YAW_DEG, YAW_DEG)), tilt_deg=float(rng.uniform(-TILT_DEG, TILT_DEG)),
                scale=scale, shift_mm=(shift_z, shift_y, shift_x), spacing_mm=(dz, pix, pix), shape=(slices, rows, cols))


def pose_transform(base: BaseAnatomy, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) mapping an output voxel index to a base voxel index (for ``ndimage.affine_transform``).

    The subject's anatomy is the base rotated (tilt about the left-right axis,
    then yaw about z), scaled and shifted; the output grid is centred on the
    shifted field of view.
    """
    a, b = np.deg2rad(pose.yaw_deg), np.deg2rad(pose.tilt_deg)
    # axes (z, y, x): yaw mixes y and x, tilt mixes z and y
    yaw = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    tilt = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rot = yaw @ tilt
    src_sp = np.asarray(base.spacing_mm)
    out_sp = np.asarray(pose.spacing_mm)
    src_c = (np.asarray(base.hu.shape) - 1) / 2.0
    out_c = (np.asarray(pose.shape) - 1) / 2.0
    inv = rot.T / pose.scale
    matrix = np.diag(1.0 / src_sp) @ inv @ np.diag(out_sp)
    offset = np.diag(1.0 / src_sp) @ inv @ (np.asarray(pose.shift_mm) - out_sp * out_c) + src_c
    return matrix, offset


def _place_lesion(labels: np.ndarray, organ: str, radius: float, spacing: tuple[float, float, float],
                  inscribed_mm: float, rng: np.random.Generator) -> tuple[int, int, int] | None:
    """A voxel of the organ at least ``min(radius, 0.8 x depth)`` from its boundary, ``depth`` being the
    organ's largest inscribed radius in this field of view.

    None when the organ is mostly out of view: its inscribed radius here is
    below half of ``inscribed_mm`` (the base CT's).
    """
    mask = labels == LABELS[organ]
    if not mask.any():
        return None
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, mask.shape)
    # padded with background: where the organ is cut by the field of view, the cut counts as boundary,
    # so a lesion never sits on a cropped-off organ face
    box = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1)
    depth = ndimage.distance_transform_edt(box, sampling=spacing)[1:-1, 1:-1, 1:-1]
    deepest = float(depth.max())
    if deepest < 0.5 * inscribed_mm:
        return None
    need = min(radius, 0.8 * deepest)
    cand = np.argwhere(depth >= need)
    if len(cand) == 0:
        return None
    v = cand[rng.integers(len(cand))] + lo
    return int(v[0]), int(v[1]), int(v[2])


def _paint_lesion(hu: np.ndarray, labels: np.ndarray, organ: str, kind: str, centre: tuple[int, int, int],
                  radius: float, spacing: tuple[float, float, float], rng: np.random.Generator) -> None:
    """Blend one lesion into ``hu`` in place (logistic edge, confined to the dilated organ)."""
    edge = float(rng.uniform(*LESION_EDGE_MM))
    reach = radius + 4.0 * edge
    sp = np.asarray(spacing)
    c = np.asarray(centre)
    half = np.ceil(reach / sp).astype(int) + 1
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, hu.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    d = np.sqrt(((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2)
    w = 1.0 / (1.0 + np.exp(np.clip((d - radius) / edge, -50.0, 50.0)))
    organ_mask = ndimage.binary_dilation(labels[sl] == LABELS[organ], iterations=1).astype(np.float32)
    w = (w * np.clip(ndimage.gaussian_filter(organ_mask, 0.7), 0.0, 1.0)).astype(np.float32)
    region = hu[sl]
    if kind == "hypodense":
        delta = -float(rng.uniform(30.0, 60.0)) if organ == "liver" else -float(rng.uniform(25.0, 50.0))
        region += delta * w
    elif kind == "sclerotic":
        region += float(rng.uniform(250.0, 500.0)) * w
    elif kind == "lytic":
        region[...] = region * (1.0 - w) + float(rng.uniform(10.0, 40.0)) * w
    elif kind == "solid":
        region[...] = region * (1.0 - w) + float(rng.uniform(10.0, 50.0)) * w
    elif kind == "enhancing":
        region += float(rng.uniform(40.0, 80.0)) * w
    else:
        raise InputError("lesion_kind", kind, "is not a known lesion kind",
                         "use hypodense, sclerotic, lytic, solid or enhancing")


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that renders subject ``index`` (0-based row of cohort.csv) of a cohort written with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7]))


def render_subject(base: BaseAnatomy, row: pd.Series, slices: int, rng: np.random.Generator,
                   max_tries: int = 30) -> Rendered:
    """Render one subject: pose and crop, blur, its lesions (from ``row``), noise; int16 HU.

    The pose is redrawn (up to ``max_tries``) until every lesion organ of the
    subject has a valid centre voxel inside the cropped field of view.
    """
    wanted = [(row["lesion_organ"], row["lesion_kind"], row["lesion_radius_mm"]),
              (row["lesion2_organ"], row["lesion2_kind"], row["lesion2_radius_mm"])]
    wanted = [(o, k, float(r)) for o, k, r in wanted if isinstance(o, str) and o]
    # organ labels in bits 0-6, the body in bit 7: one nearest-neighbour resampling carries both
    packed = base.labels() | (base.body.astype(np.uint8) << 7)
    for _ in range(max_tries):
        pose = draw_pose(base, slices, rng)
        matrix, offset = pose_transform(base, pose)
        both = ndimage.affine_transform(packed, matrix, offset, output_shape=pose.shape, order=0, mode="nearest")
        labels = both & 0x7F
        centres = [_place_lesion(labels, o, r, pose.spacing_mm, base.inscribed_mm[o], rng) for o, _, r in wanted]
        if all(c is not None for c in centres):
            break
    else:
        raise RuntimeError(f"no pose in {max_tries} tries keeps the lesion organs {[o for o, _, _ in wanted]} in view")
    hu = ndimage.affine_transform(base.hu, matrix, offset, output_shape=pose.shape, order=1, mode="nearest")
    body = both >= 0x80
    blur = float(rng.uniform(*BLUR_VOXELS))
    if blur > 0.05:
        hu = ndimage.gaussian_filter(hu, (0.0, blur, blur))
    lesions = []
    for (organ, kind, radius), centre in zip(wanted, centres):
        assert centre is not None
        _paint_lesion(hu, labels, organ, kind, centre, radius, pose.spacing_mm, rng)
        lesions.append({"organ": organ, "kind": kind, "radius_mm": radius,
                        "slice": centre[0], "row": centre[1], "col": centre[2]})
    grain = float(rng.uniform(*NOISE_GRAIN_MM))
    noise = ndimage.gaussian_filter(rng.standard_normal(pose.shape).astype(np.float32),
                                    [grain / s for s in pose.spacing_mm])
    noise *= float(rng.uniform(*NOISE_SD_HU)) / max(float(noise.std()), 1e-6)
    hu = np.where(body, hu + noise + float(rng.normal(0.0, OFFSET_SD_HU)), hu)
    out = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Rendered(hu=out, spacing_mm=pose.spacing_mm, labels=labels, lesions=lesions, pose=pose)




