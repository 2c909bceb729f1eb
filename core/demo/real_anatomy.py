"""Real-anatomy survival cohorts: one real abdominal CT, many posed, noised subjects with inserted lesions.

The base is a real CT (by default the upper-abdominal
``../shared/data/ct/example_ct_sm.nii.gz``, 30 x 101 x 122 voxels at 3 mm,
HU). Every subject is a new rendering of that anatomy:

* **Pose**: rotation about the body's long (z) axis of up to +-12 degrees, a
  tilt about the left-right axis of up to +-5 degrees, an isotropic scale of
  0.9-1.1, an in-plane shift (sd 6 mm), an in-plane pixel spacing of 2.8-3.2 mm
  and a random crop: 88-100 % of the field of view in rows and columns and
  80-100 % along z, placed at random. The ``slices`` output slices span the
  cropped z range, so with ``slices=100`` a study has 100 slices of about
  0.7-0.9 mm (linear resampling of the 3 mm source) and with ``slices=30`` about
  2.2-2.9 mm. Studies therefore differ in shape, spacing and voxel-to-anatomy
  alignment: real cohorts hold different patients, and no method may rely on
  subjects sharing one voxel grid (a cohort-mean image, voxel-wise differences
  or a fixed organ position are not available to it). ``poses.csv`` records
  each subject's pose.
* **Image noise**: an in-plane blur of 0-0.6 voxel (reconstruction kernel),
  then Gaussian noise (sd 8-20 HU) smoothed at 1.5-3 mm and a global offset
  (sd 4 HU), all drawn per subject, inside the body only (the air around the
  body keeps the source's own noise, which keeps files small).
* **Lesions** (about half the subjects, ``LESION_PREVALENCE``; 30 % of those
  get a second lesion in another organ): radius uniform 5-16 mm with a
  logistic edge of 0.7-1.5 mm, centred on a voxel of the organ mask at least
  ``min(radius, 0.8 x the organ's largest inscribed radius in the subject's
  field of view)`` from the organ boundary (the pose is redrawn when a lesion
  organ is mostly out of view), and confined to the organ (the lesion weight
  is multiplied by the slightly dilated, blurred organ mask), so every lesion
  lies inside its organ.
  Appearance per organ: liver hypodense (-30 to -60 HU relative to the liver);
  bone (vertebra) sclerotic (+250 to +500 HU) or lytic (bone replaced by 10-40
  HU), half each; lung base a solid nodule (10-50 HU); spleen hypodense
  (-25 to -50 HU).

Organs are found on the base CT without any mask file, once per CT (see
:func:`find_organs`): a median-filtered copy (3 voxels) is thresholded and
split into connected components:

* **body**: > -500 HU, the largest component, holes filled slice by slice;
* **liver**: 38-80 HU inside the body, opened twice (6-connectivity) to cut
  thin bridges to the stomach wall and bowel, the largest component whose
  centroid lies on the patient's right (column index below the body's
  centroid; columns run right -> left), grown back into the 38-80 HU voxels
  it touches (two dilations) and filled slice by slice (vessels);
* **bone** (the vertebra): > 100 HU in the median-filtered CT (on the shared
  CT the cancellous bone of the vertebral bodies is 100-170 HU, so a > 200 HU
  rule finds only the cortex; discs, ~85 HU, stay out), the largest component
  whose centroid is within 12 % of the body width of the body's midline and
  posterior to the body's centroid, closed once; not hole-filled, so the
  spinal canal stays out;
* **lung** (bases): < -500 HU inside the filled body, components whose
  centroid is posterior to the body's centroid and that reach the top slice
  (the lungs continue above the field of view; bowel and stomach gas are
  anterior or end below the top);
* **spleen**: 38-80 HU, opened once, the largest component whose centroid
  lies on the patient's left (column beyond the body centroid by 20 % of the
  body width) and posterior to the body's centroid, not touching the liver.
  On the shared CT this finds only the spleen's lateral part (about 28 mL,
  largest inscribed radius 9 mm), so spleen lesions are confined to a thin
  organ: use it for variety, not as a main organ.

:func:`save_organ_overlay` draws the masks over a few slices for a visual
check.

**Known hazard.** ``true_risk = risk_image + risk_ehr``. The image part sums,
over the subject's lesions, ``ORGAN_BASE[organ] + ORGAN_PER_MM[organ] x
(radius_mm - 10.5)``, centred on its population mean; the coefficients differ
by organ, so a model that reads one organ only cannot reach the oracle. The
EHR part and the MEDS timeline are those of the demo cohort
(:mod:`core.demo.latents`, :mod:`core.demo.ehr`: age, heart failure, COPD,
CKD, diabetes, last BNP, creatinine and albumin drive it, with labs sometimes
never measured; sex, other conditions and labs are noise); ``features.csv``
(curated from the pre-index timeline) holds everything ``risk_ehr`` depends
on. The timeline's post-index rows carry admissions and ``MEDS_DEATH`` but no
lesion-specific codes, and the index event keeps the demo's code
``IMAGING//CT//CHEST``. Survival is Weibull proportional hazards (the demo's
shape and scale) with independent administrative and drop-out censoring;
splits are an exact 60/20/20 permutation. With the default organs (liver,
bone), Harrell's C over 4,000 latent subjects (seeds 0-2) is about 0.79 for
``true_risk``, 0.70 for ``risk_image`` and 0.675 for ``risk_ehr``; a single
organ's lesions alone give clearly less than ``risk_image``.

>>> lat = sample_real_latents(400, seed=0)
>>> bool(((lat["true_risk"] - lat["risk_image"] - lat["risk_ehr"]).abs() < 1e-9).all())
True
>>> sorted(lat["split"].value_counts().to_dict().items())
[('test', 80), ('train', 240), ('val', 80)]
"""

from __future__ import annotations

import functools
import json
import os
import time as _time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from core.demo import latents as L
from core.demo.cohort import check_out, check_seed, harrell_c
from core.demo.ehr import build_timeline, curate_features
from core.demo.phantom import write_hu_nifti
from core.errors import InputError

Progress = Callable[[float, str], None]

# ../shared/data beside the checkout, or $SHARED_DATA (as the tests use it)
DEFAULT_CT = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")) / "ct" / "example_ct_sm.nii.gz"
DEFAULT_N = 400
DEFAULT_SLICES = 100
DEFAULT_ORGANS = ("liver", "bone")
ORGANS = ("liver", "bone", "lung", "spleen")
LABELS = {"liver": 1, "bone": 2, "lung": 3, "spleen": 4}

# ----------------------------------------------------------------------------- lesions and image hazard
LESION_PREVALENCE = 0.5
SECOND_LESION = 0.3                 # share of lesion subjects with a second lesion (another organ)
LESION_RADIUS_MM = (5.0, 16.0)      # uniform
RADIUS_CENTRE_MM = 10.5
ORGAN_BASE = {"liver": 1.50, "bone": 1.20, "lung": 1.35, "spleen": 1.10}
ORGAN_PER_MM = {"liver": 0.14, "bone": 0.20, "lung": 0.17, "spleen": 0.16}
LESION_EDGE_MM = (0.7, 1.5)

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

COHORT_COLUMNS = (
    "subject_id", "time", "event", "split", "study", "index_time", "true_risk", "risk_image", "risk_ehr",
    "lesion", "n_lesions", "lesion_organ", "lesion_kind", "lesion_radius_mm", "lesion_slice", "lesion_row", "lesion_col",
    "lesion2_organ", "lesion2_kind", "lesion2_radius_mm", "lesion2_slice", "lesion2_row", "lesion2_col",
)


# ============================================================================= organs of the base CT
@dataclass(frozen=True)
class BaseAnatomy:
    """The real CT the cohort is rendered from, with its organ masks (computed once)."""

    hu: np.ndarray                       # float32 [S, R, C]
    spacing_mm: tuple[float, float, float]
    body: np.ndarray                     # bool [S, R, C]
    masks: dict[str, np.ndarray]         # organ -> bool [S, R, C]
    inscribed_mm: dict[str, float]       # organ -> largest distance from a mask voxel to the boundary

    def labels(self) -> np.ndarray:
        """uint8 label map (``LABELS``; 0 elsewhere)."""
        out = np.zeros(self.hu.shape, dtype=np.uint8)
        for name, mask in self.masks.items():
            out[mask & (out == 0)] = LABELS[name]
        return out


def _largest(mask: np.ndarray, keep: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
    """The largest connected component of ``mask`` (6-connectivity) for which ``keep(voxels)`` holds."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    for k in np.argsort(-sizes):
        comp = lab == (k + 1)
        if keep is None or keep(np.argwhere(comp)):
            return comp
    return np.zeros_like(mask, dtype=bool)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(m) for m in mask])


def find_organs(hu: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Body mask and organ masks (liver, bone, lung, spleen) of an abdominal CT by HU ranges and components.

    ``hu`` is float ``[slices, rows, cols]`` in the :mod:`core.io.volume`
    convention (slice 0 inferior, rows anterior -> posterior, columns the
    patient's right -> left). The rules are those of the module docstring;
    an organ that is not found gets an empty mask (callers check).
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or min(hu.shape) < 3:
        raise InputError("ct", hu.shape, "must be a 3D volume of at least 3 voxels per axis", "pass an abdominal CT volume")
    sm = ndimage.median_filter(hu, size=3)
    body = _fill_slices(_largest(sm > -500.0))
    if body.sum() == 0:
        raise InputError("ct", "no voxel above -500 HU", "shows no body", "pass a CT in Hounsfield units")
    centre = np.argwhere(body).mean(0)
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    width = float(cols.max() - cols.min() + 1)
    six = ndimage.generate_binary_structure(3, 1)
    soft = (sm > 38.0) & (sm < 80.0) & body

    opened = ndimage.binary_opening(soft, structure=six, iterations=2)
    liver = _largest(opened, lambda v: v[:, 2].mean() < centre[2])
    liver = ndimage.binary_dilation(liver, structure=six, iterations=2) & soft
    liver = _largest(liver)
    liver = _fill_slices(liver)

    bone_raw = (sm > 100.0) & body
    bone = _largest(bone_raw, lambda v: abs(v[:, 2].mean() - centre[2]) < 0.12 * width and v[:, 1].mean() > centre[1])
    bone = ndimage.binary_closing(bone, structure=six, iterations=1) | bone

    top = hu.shape[0] - 1
    air = (sm < -500.0) & body
    lab, _ = ndimage.label(air)
    lung = np.zeros_like(air)
    for k, sl in enumerate(ndimage.find_objects(lab)):
        if sl is None or sl[0].stop - 1 != top:
            continue
        comp = lab == (k + 1)
        if np.argwhere(comp)[:, 1].mean() > centre[1] and comp.sum() >= 50:
            lung |= comp

    opened1 = ndimage.binary_opening(soft, structure=six, iterations=1)
    near_liver = ndimage.binary_dilation(liver, structure=six, iterations=1)
    spleen = _largest(opened1 & ~near_liver,
                      lambda v: v[:, 2].mean() > centre[2] + 0.2 * width and v[:, 1].mean() > centre[1])
    spleen = _fill_slices(spleen) & ~liver
    masks = {"liver": liver, "bone": bone & ~liver, "lung": lung, "spleen": spleen & ~bone}
    return body, masks


@functools.lru_cache(maxsize=4)
def _load_base(path: str, mtime_ns: int) -> BaseAnatomy:
    from core.io.study import load_study

    vol = load_study(path)
    hu = np.ascontiguousarray(vol.hu, dtype=np.float32)
    spacing = tuple(float(s) for s in vol.spacing_mm)
    body, masks = find_organs(hu, spacing)
    inscribed = {}
    for name, mask in masks.items():
        inscribed[name] = float(ndimage.distance_transform_edt(mask, sampling=spacing).max()) if mask.any() else 0.0
    for a in (hu, body, *masks.values()):
        a.setflags(write=False)
    return BaseAnatomy(hu=hu, spacing_mm=spacing, body=body, masks=masks, inscribed_mm=inscribed)  # type: ignore[arg-type]


def load_base_anatomy(ct_path: Path | str) -> BaseAnatomy:
    """Load the base CT with :func:`core.io.study.load_study` and find its organs (cached per file version)."""
    path = Path(ct_path)
    if not path.is_file():
        raise InputError("ct", str(path), "is not a file", "pass the real abdominal CT, e.g. ../shared/data/ct/example_ct_sm.nii.gz")
    return _load_base(str(path.resolve()), path.stat().st_mtime_ns)


def check_organs(organs: Iterable[str] | str, base: BaseAnatomy | None = None) -> tuple[str, ...]:
    """Normalise ``organs`` ("liver,bone" or a sequence); each must be known and, with ``base``, found there."""
    names = [o.strip().lower() for o in (organs.split(",") if isinstance(organs, str) else organs) if o.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError("organs", organs, "must name at least one organ, each once", f"pass e.g. --organs {','.join(DEFAULT_ORGANS)}")
    unknown = [o for o in names if o not in ORGANS]
    if unknown:
        raise InputError("organs", ",".join(unknown), f"unknown organ (known: {', '.join(ORGANS)})",
                         f"pass a comma-separated subset of {','.join(ORGANS)}")
    if base is not None:
        small = [o for o in names if base.inscribed_mm.get(o, 0.0) < 4.0]
        if small:
            raise InputError("organs", ",".join(small), "not found in this CT (no mask voxel 4 mm from its boundary)",
                             f"drop it from --organs or pass a CT that shows it; found: "
                             f"{', '.join(f'{k} {v:.0f} mm' for k, v in base.inscribed_mm.items())}")
    return tuple(names)


def check_slices(slices: int) -> int:
    if isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or not 8 <= slices <= 400:
        raise InputError("slices", slices, "must be an integer in 8..400", "pass e.g. --slices 100 (or 30 for a quick cohort)")
    return int(slices)


# ============================================================================= latents
def subject_ids(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"real{i + 1:0{width}d}" for i in range(n)]


def image_offset(organs: Sequence[str]) -> float:
    """Population mean of the uncentred image term (radius terms average to zero)."""
    return float(LESION_PREVALENCE * (1.0 + (SECOND_LESION if len(organs) > 1 else 0.0)) * np.mean([ORGAN_BASE[o] for o in organs]))


def lesion_term(organ: str, radius_mm: float) -> float:
    return ORGAN_BASE[organ] + ORGAN_PER_MM[organ] * (float(radius_mm) - RADIUS_CENTRE_MM)


def sample_real_latents(n: int, seed: int = 0, organs: Sequence[str] | str = DEFAULT_ORGANS) -> pd.DataFrame:
    """Every subject-level latent (EHR, lesions, risk parts, outcome) without rendering a voxel.

    The EHR columns come from :func:`core.demo.latents.sample_latents` (same
    ``seed``); lesions and outcome are drawn from their own generator. Columns
    include subject_id, split, index_time, the demo's EHR latents, lesion,
    n_lesions, lesion_organ/kind/radius_mm, lesion2_organ/kind/radius_mm,
    risk_image, risk_ehr, true_risk, time, event.
    """
    n = L.check_n(n)
    seed = check_seed(seed)
    organs = check_organs(organs)
    lat = L.sample_latents(n, seed)
    lat["subject_id"] = subject_ids(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20261122]))
    has = rng.random(n) < LESION_PREVALENCE
    second = has & (rng.random(n) < SECOND_LESION) & (len(organs) > 1)
    first_idx = rng.integers(0, len(organs), n)
    other = rng.integers(0, max(len(organs) - 1, 1), n)
    r1 = np.round(rng.uniform(*LESION_RADIUS_MM, n), 1)
    r2 = np.round(rng.uniform(*LESION_RADIUS_MM, n), 1)
    kind_u1, kind_u2 = rng.random(n), rng.random(n)

    def kind(organ: str, u: float) -> str:
        return {"liver": "hypodense", "spleen": "hypodense", "lung": "solid"}.get(organ, "sclerotic" if u < 0.5 else "lytic")

    o1 = ["" for _ in range(n)]
    o2 = ["" for _ in range(n)]
    k1 = ["" for _ in range(n)]
    k2 = ["" for _ in range(n)]
    term = np.zeros(n)
    for i in range(n):
        if not has[i]:
            continue
        o1[i] = organs[first_idx[i]]
        k1[i] = kind(o1[i], kind_u1[i])
        term[i] += lesion_term(o1[i], r1[i])
        if second[i]:
            rest = [o for o in organs if o != o1[i]]
            o2[i] = rest[other[i] % len(rest)]
            k2[i] = kind(o2[i], kind_u2[i])
            term[i] += lesion_term(o2[i], r2[i])
    lat["lesion"] = has.astype(int)
    lat["n_lesions"] = has.astype(int) + second.astype(int)
    lat["lesion_organ"], lat["lesion_kind"] = o1, k1
    lat["lesion_radius_mm"] = np.where(has, r1, np.nan)
    lat["lesion2_organ"], lat["lesion2_kind"] = o2, k2
    lat["lesion2_radius_mm"] = np.where(second, r2, np.nan)
    lat["risk_image"] = term - image_offset(organs)
    lat["risk_ehr"] = lat["ehr_part"]
    lat["image_part"] = lat["risk_image"]
    lat["true_risk"] = lat["risk_image"] + lat["risk_ehr"]

    e = rng.exponential(1.0, n)
    t_event = L.WEIBULL_SCALE_YEARS * (e / np.exp(lat["true_risk"].to_numpy())) ** (1.0 / L.WEIBULL_SHAPE)
    c = np.minimum(rng.uniform(*L.FOLLOWUP_YEARS, n), rng.exponential(L.DROPOUT_MEAN_YEARS, n))
    observed = np.minimum(t_event, c) * L.DAYS_PER_YEAR
    lat["event_time_days"] = t_event * L.DAYS_PER_YEAR
    lat["censor_time_days"] = c * L.DAYS_PER_YEAR
    lat["time"] = np.maximum(np.round(observed, 1), 0.5)
    lat["event"] = (t_event <= c).astype(int)
    return lat


def oracle_summary(table: pd.DataFrame, split: str | None = "test") -> dict[str, float]:
    """Harrell's C of true_risk (oracle), risk_image (image part) and risk_ehr (EHR part) on a split."""
    t = table if split is None else table[table["split"] == split]
    if len(t) == 0 or int(t["event"].sum()) == 0:
        raise InputError("split", split, "has no subjects with an event", "pass a larger --n")
    return {name: harrell_c(t["time"], t["event"], t[col])
            for name, col in (("oracle", "true_risk"), ("image_part", "risk_image"), ("ehr_part", "risk_ehr"))}


# ============================================================================= rendering one subject
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
    else:
        raise InputError("lesion_kind", kind, "is not a known lesion kind", "use hypodense, sclerotic, lytic or solid")


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




# ============================================================================= the cohort folder
def cohort_table(lat: pd.DataFrame, lesions: dict[str, list[dict]]) -> pd.DataFrame:
    """cohort.csv from the latents and the lesion voxels actually drawn."""
    rows = []
    for _, r in lat.iterrows():
        les = lesions.get(r["subject_id"], [])
        first = les[0] if les else {}
        second = les[1] if len(les) > 1 else {}
        rows.append({
            "subject_id": r["subject_id"], "time": round(float(r["time"]), 1), "event": int(r["event"]),
            "split": r["split"], "study": f"studies/{r['subject_id']}.nii.gz",
            "index_time": pd.Timestamp(r["index_time"]).strftime("%Y-%m-%d %H:%M:%S"),
            "true_risk": round(float(r["true_risk"]), 6), "risk_image": round(float(r["risk_image"]), 6),
            "risk_ehr": round(float(r["risk_ehr"]), 6),
            "lesion": int(r["lesion"]), "n_lesions": int(r["n_lesions"]),
            "lesion_organ": first.get("organ", ""), "lesion_kind": first.get("kind", ""),
            "lesion_radius_mm": first.get("radius_mm", np.nan),
            "lesion_slice": first.get("slice"), "lesion_row": first.get("row"), "lesion_col": first.get("col"),
            "lesion2_organ": second.get("organ", ""), "lesion2_kind": second.get("kind", ""),
            "lesion2_radius_mm": second.get("radius_mm", np.nan),
            "lesion2_slice": second.get("slice"), "lesion2_row": second.get("row"), "lesion2_col": second.get("col"),
        })
    table = pd.DataFrame(rows, columns=list(COHORT_COLUMNS))
    for col in ("lesion_slice", "lesion_row", "lesion_col", "lesion2_slice", "lesion2_row", "lesion2_col"):
        table[col] = pd.array(table[col].astype(float), dtype="Int64")
    # risk parts are rounded separately; keep the identity true_risk = risk_image + risk_ehr exact in the file
    table["true_risk"] = (table["risk_image"] + table["risk_ehr"]).round(6)
    return table


def write_real_anatomy_cohort(out: Path | str, ct_path: Path | str = DEFAULT_CT, *, n: int = DEFAULT_N, seed: int = 0,
                              organs: Sequence[str] | str = DEFAULT_ORGANS, slices: int = DEFAULT_SLICES,
                              progress: Progress | None = None) -> Path:
    """Write a real-anatomy cohort folder to ``out`` and return it.

    Files: ``cohort.csv`` (``COHORT_COLUMNS``; lesion voxels index the
    subject's own study), ``studies/<id>.nii.gz`` (int16 HU, ``slices``
    slices each, shapes and spacings differ per subject), ``features.csv``,
    ``timeline.parquet`` (MEDS rows), ``poses.csv`` (yaw, tilt, scale, shift,
    spacing, shape per subject), ``organs.json`` (how the organs were found
    and their volumes) and ``README.md``. Deterministic for the arguments.
    """
    started = _time.perf_counter()
    out = check_out(Path(out))
    seed = check_seed(seed)
    slices = check_slices(slices)
    base = load_base_anatomy(ct_path)
    organs = check_organs(organs, base)
    lat = sample_real_latents(n, seed, organs)
    report = progress or (lambda fraction, label: None)
    out.mkdir(parents=True, exist_ok=True)
    studies = out / "studies"
    studies.mkdir(exist_ok=True)

    lesions: dict[str, list[dict]] = {}
    poses = []
    total = len(lat) + 2
    for i, (_, row) in enumerate(lat.iterrows()):
        subject = render_subject(base, row, slices, subject_rng(seed, i))
        sid = row["subject_id"]
        lesions[sid] = subject.lesions
        write_hu_nifti(subject.hu, subject.spacing_mm, studies / f"{sid}.nii.gz")
        p = subject.pose
        poses.append({"subject_id": sid, "yaw_deg": round(p.yaw_deg, 3), "tilt_deg": round(p.tilt_deg, 3),
                      "scale": round(p.scale, 4), "shift_z_mm": round(p.shift_mm[0], 2), "shift_y_mm": round(p.shift_mm[1], 2),
                      "shift_x_mm": round(p.shift_mm[2], 2), "spacing_slice_mm": round(p.spacing_mm[0], 4),
                      "spacing_row_mm": round(p.spacing_mm[1], 4), "spacing_col_mm": round(p.spacing_mm[2], 4),
                      "slices": p.shape[0], "rows": p.shape[1], "cols": p.shape[2]})
        report((i + 1) / total, "CT studies")

    tl_lat = lat.copy()
    tl_lat["lesion"] = 0      # the demo timeline's post-index codes describe lung nodules; none here
    timeline = build_timeline(tl_lat, seed)
    timeline.to_parquet(out / "timeline.parquet", index=False)
    features = curate_features(timeline, dict(zip(lat["subject_id"], lat["index_time"])))
    features.to_csv(out / "features.csv", index=False)
    report((len(lat) + 1) / total, "MEDS timeline")

    table = cohort_table(lat, lesions)
    table.to_csv(out / "cohort.csv", index=False)
    pd.DataFrame(poses).to_csv(out / "poses.csv", index=False)
    vox_ml = float(np.prod(base.spacing_mm)) / 1000.0
    (out / "organs.json").write_text(json.dumps({
        "ct": Path(ct_path).name, "shape": list(base.hu.shape), "spacing_mm": list(base.spacing_mm),
        "organs": {k: {"volume_ml": round(float(m.sum()) * vox_ml, 1), "inscribed_radius_mm": round(base.inscribed_mm[k], 1)}
                   for k, m in base.masks.items()},
        "used": list(organs),
    }, indent=2), encoding="utf-8")
    (out / "README.md").write_text(readme_text(table, n=len(lat), seed=seed, organs=organs, slices=slices,
                                               ct_name=Path(ct_path).name, seconds=_time.perf_counter() - started),
                                   encoding="utf-8")
    report(1.0, "done")
    return out


def readme_text(table: pd.DataFrame, *, n: int, seed: int, organs: Sequence[str], slices: int, ct_name: str,
                seconds: float) -> str:
    c = oracle_summary(table, "test")
    coefs = "; ".join(f"{o}: {ORGAN_BASE[o]:.2f} + {ORGAN_PER_MM[o]:.2f} x (radius_mm - {RADIUS_CENTRE_MM})" for o in organs)
    per_organ = ", ".join(f"{o} {int(((table['lesion_organ'] == o) | (table['lesion2_organ'] == o)).sum())}" for o in organs)
    return f"""# Real-anatomy cohort (synthetic subjects on a real CT)

Written by `core.demo.real_anatomy.write_real_anatomy_cohort` (n = {n}, seed = {seed},
organs = {','.join(organs)}, slices = {slices}) from `{ct_name}` in {seconds:.0f} s.
Every subject is the same real abdominal CT under a different pose (rotation,
tilt, scale 0.9-1.1, shift, crop, pixel spacing), blur and noise, with lesions
inserted; outcomes and EHR are synthetic. Studies differ in shape and spacing:
no two subjects share a voxel grid.

- `cohort.csv`: subject_id, time, event, split (60/20/20), study, index_time,
  true_risk = risk_image + risk_ehr, lesion (0/1), n_lesions, lesion_organ,
  lesion_kind, lesion_radius_mm, lesion_slice/row/col (voxel of the lesion centre
  in the subject's own study, [slice, row, col] of core.io.volume), and the same
  for a second lesion (lesion2_*).
- `studies/`: int16 NIfTI, {slices} slices each.
- `features.csv`, `timeline.parquet`: the demo cohort's EHR generator (MEDS rows).
- `poses.csv`: each subject's pose; `organs.json`: the organ masks of the base CT.

Image part (per lesion, summed, centred): {coefs}.
Subjects with a lesion: {int(table['lesion'].sum())} ({int((table['n_lesions'] == 2).sum())} with two);
lesions per organ: {per_organ}. Events: {int(table['event'].sum())}.

Harrell's C on the test split: oracle (true_risk) {c['oracle']:.3f}, image part
{c['image_part']:.3f}, EHR part {c['ehr_part']:.3f}.
"""


# ============================================================================= visual check
def save_organ_overlay(ct_path: Path | str, out_png: Path | str, slices: Sequence[int] | None = None) -> Path:
    """PNG of a few axial slices of the base CT with the organ masks outlined (a visual check of :func:`find_organs`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = load_base_anatomy(ct_path)
    s = base.hu.shape[0]
    picks = list(slices) if slices is not None else [round(f * (s - 1)) for f in (0.1, 0.3, 0.5, 0.7, 0.85, 0.97)]
    colours = {"liver": "tab:red", "bone": "yellow", "lung": "cyan", "spleen": "tab:green"}
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4))
    for ax, k in zip(np.atleast_1d(axes), picks):
        ax.imshow(base.hu[k], cmap="gray", vmin=-200, vmax=300)
        for name, mask in base.masks.items():
            if mask[k].any():
                ax.contour(mask[k].astype(float), levels=[0.5], colors=colours[name], linewidths=1.0)
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([0], [0], color=c, label=n) for n, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png


def save_subject_overlay(study: Path | str, lesion: tuple[int, int, int], out_png: Path | str) -> Path:
    """PNG of the axial, coronal and sagittal planes of a written study through a lesion centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.io.study import load_study

    vol = load_study(study)
    s, r, c = lesion
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    sp = vol.spacing_mm
    axes[0].imshow(vol.hu[s], cmap="gray", vmin=-200, vmax=300, aspect=sp[1] / sp[2])
    axes[0].plot([c], [r], "r+")
    axes[1].imshow(vol.hu[:, r, :], cmap="gray", vmin=-200, vmax=300, origin="lower", aspect=sp[0] / sp[2])
    axes[1].plot([c], [s], "r+")
    axes[2].imshow(vol.hu[:, :, c], cmap="gray", vmin=-200, vmax=300, origin="lower", aspect=sp[0] / sp[1])
    axes[2].plot([r], [s], "r+")
    for ax, t in zip(axes, ("axial", "coronal", "sagittal")):
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png


__all__ = [
    "COHORT_COLUMNS",
    "DEFAULT_CT",
    "DEFAULT_N",
    "DEFAULT_ORGANS",
    "DEFAULT_SLICES",
    "ORGANS",
    "BaseAnatomy",
    "check_organs",
    "find_organs",
    "load_base_anatomy",
    "oracle_summary",
    "render_subject",
    "sample_real_latents",
    "save_organ_overlay",
    "save_subject_overlay",
    "subject_rng",
    "write_real_anatomy_cohort",
    "write_hu_nifti",
]
