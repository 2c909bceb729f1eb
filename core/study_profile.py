"""What a model can read: the acquisition profile of its training studies, and warnings for a study outside it.

At training time :func:`cohort_profile` measures every training study (up to
``MAX_STUDIES`` of them, a seeded sample) with :func:`study_stats` and keeps, per
statistic, the training range and its spread (``build_profile``); the profile goes
into the model's ``config.json`` (key ``study_profile``) and its model card
(:func:`card_lines`), together with the image transforms and the encoder.

At prediction time :func:`profile_warnings` compares one study's statistics with
that profile. The rule follows the training data, not a fixed threshold: a value
is outside when it lies outside the training range ``[min, max]`` widened on each
side by ``MARGIN`` times the larger of the range's width and ``REL_FLOOR`` times
its magnitude (so a cohort with one fixed spacing still accepts small rounding
differences); a tissue fraction (``ANATOMY``) must also lie ``WARN_ABS_FLOOR`` of
the body's voxels outside its training range. Statistics, all from the study's own
voxel grid:

- ``z_extent_mm``: slices x slice spacing (how much of the body is covered);
- ``slice_mm``, ``pixel_mm``: slice spacing and in-plane pixel spacing (mean of rows and columns);
- ``body_l``: the body's volume (voxels above -500 HU with their enclosed holes filled per axial slice);
- ``air``, ``fat``, ``soft``, ``bone``: fractions of the body's voxels below -400 HU (lung and bowel gas),
  in -190..-30 HU, in -30..150 HU and at or above 300 HU;
- ``lung_air_l``: litres of air (below -400 HU) enclosed by the body;
- ``lung_slices``: the fraction of axial slices whose enclosed air is at least 5 % of that slice's body area
  (a chest CT has lungs on most slices, an abdominal CT on few): the body region;
- ``encoder_px_mm`` (with the model's transforms, :func:`model_study_stats`): the in-plane size of one pixel of
  what the encoder sees, the image (or the body box, with ``body_crop``) over the encoder's size. The same pixel
  spacing over a wider field of view shows the encoder a smaller body: a scale the model never saw.

Beyond the warning, :func:`withhold_reason` decides when the image part must not
be read at all: when the study shows other anatomy than the training studies, that
is when a fraction of the body's tissue classes (``ANATOMY``: air, fat, soft tissue,
bone; not spacing or coverage, which the transforms resample and crop) lies outside
the training range by more than ``WITHHOLD_WIDTHS`` times the range's own width
(with the same floor) and by more than ``WITHHOLD_ABS_FLOOR`` of the body's voxels;
and when the encoder would see the body at another scale, that is when
``encoder_px_mm`` lies outside its training range by more than ``WITHHOLD_WIDTHS``
widths and by more than ``WITHHOLD_SCALE_FLOOR`` of its training value (the
resize does not undo a field of view twice as wide, as it undoes another pixel
spacing). A model trained on chest phantoms then reads no risk from an abdominal
CT's bowel gas, nor from a chest CT shown at half its training scale; callers
predict without the CT (``core.predict``).

Contrast is taken from the record, not the voxels (``core.io.contrast``: the DICOM Contrast/Bolus module, or
a ``contrast`` column of cohort.csv): the profile counts the training studies recorded with contrast, recorded
without it and with no record (``contrast``), and :func:`contrast_warning` warns when a study's record differs
from every training study that has one. Telling enhanced vessels from trabecular bone in the voxels (both 150-300 HU)
needs an organ segmentation this module does not have.

>>> hu = np.full((10, 40, 40), -1000.0); hu[:, 5:35, 5:35] = 40.0; hu[:, 10:30, 10:30] = -850.0
>>> s = study_stats(hu, (5.0, 4.0, 4.0))
>>> s["z_extent_mm"], round(s["air"], 3), s["lung_slices"]
(50.0, 0.444, 1.0)
>>> p = build_profile([s, {**s, "z_extent_mm": 60.0}])
>>> profile_warnings(p, s)
[]
>>> "lung air" in profile_warnings(p, {**s, "lung_air_l": 0.01})[0]
True
>>> withhold_reason(p, {**s, "z_extent_mm": 500.0}) is None  # coverage alone: a warning, still read
True
>>> withhold_reason(p, {**s, "soft": 0.9}).startswith("it shows other anatomy")
True
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from core.cohort import Cohort
from core.errors import InputError
from core.io.contrast import META_KEY as CONTRAST_META
from core.io.contrast import SOURCE_KEY as CONTRAST_SOURCE

PROFILE_VERSION = 1
MAX_STUDIES = 200
MARGIN = 0.25
REL_FLOOR = 0.1
#: statistic -> (label, unit, display scale, digits)
STATS: dict[str, tuple[str, str, float, int]] = {
    "z_extent_mm": ("z-extent", "mm", 1.0, 0),
    "slice_mm": ("slice spacing", "mm", 1.0, 2),
    "pixel_mm": ("pixel spacing", "mm", 1.0, 2),
    "body_l": ("body volume", "L", 1.0, 1),
    "lung_air_l": ("lung air (air enclosed by the body)", "L", 1.0, 2),
    "lung_slices": ("slices showing lung", "%", 100.0, 0),
    "air": ("body voxels in air (< -400 HU)", "%", 100.0, 1),
    "fat": ("body voxels in fat (-190..-30 HU)", "%", 100.0, 1),
    "soft": ("body voxels in soft tissue (-30..150 HU)", "%", 100.0, 1),
    "bone": ("body voxels in bone (>= 300 HU)", "%", 100.0, 1),
    "encoder_px_mm": ("encoder pixel (field of view or body box / encoder size)", "mm", 1.0, 2),
}
#: what the warning says a departure in each statistic means
MEANING = {"z_extent_mm": "coverage", "slice_mm": "spacing", "pixel_mm": "spacing", "body_l": "body size",
           "lung_air_l": "region", "lung_slices": "region", "air": "region", "fat": "composition",
           "soft": "composition", "bone": "composition", "encoder_px_mm": "scale"}
#: the tissue composition of the body (what the CT shows), as opposed to how much of it and how it was acquired
ANATOMY = ("air", "fat", "soft", "bone")
#: an anatomy statistic further than this many training-range widths outside the range withholds the image part
WITHHOLD_WIDTHS = 1.0
#: ... and further than this fraction of the body's voxels (a bone share of 0.6 % against 0.2-0.3 % is blur, not
#: other anatomy: rendering the same CT at another pose and resolution moves small shares by that much)
WITHHOLD_ABS_FLOOR = 0.05
#: ... and ``encoder_px_mm`` further than this fraction of its training value (the demo's models, trained at 4.00 mm,
#: read 3.0-5.0 mm; one of their own chest studies in a field of view twice as wide, 8.00 mm, went from a 1-year
#: risk of 30 % to 87 %)
WITHHOLD_SCALE_FLOOR = 0.25
#: an anatomy statistic warns only when it lies outside its widened training range by more than this fraction of
#: the body's voxels too (the same blur: a share of 0.6 % against 0.2-0.3 % is no reason to doubt a prediction)
WARN_ABS_FLOOR = 0.01
_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # fill holes slice by slice: no connection across slices
_MAX_ROWS = 256


def study_stats(hu: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, float]:
    """The acquisition statistics of one CT (``hu`` [slices, rows, cols], ``spacing_mm`` (slice, row, col))."""
    from scipy import ndimage

    vol = np.asarray(hu)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise InputError("study", f"shape {list(vol.shape)}", "is not a 3D volume", "pass a CT volume [slices, rows, cols]")
    sz, sr, sc = (float(s) for s in spacing_mm)
    step = max(1, int(np.ceil(max(vol.shape[1], vol.shape[2]) / _MAX_ROWS)))  # bounded cost on 512 x 512 slices
    v = vol[:, ::step, ::step].astype(np.float32, copy=False)
    voxel_ml = sz * sr * sc * step * step / 1000.0
    body = ndimage.binary_fill_holes(v > -500.0, structure=_PLANE)
    n_body = int(body.sum())
    air = body & (v < -400.0)
    per_slice_body = body.sum(axis=(1, 2))
    per_slice_air = air.sum(axis=(1, 2))
    lung_slices = float(np.mean(per_slice_air >= 0.05 * np.maximum(per_slice_body, 1))) if n_body else 0.0

    def frac(mask: np.ndarray) -> float:
        return float(mask.sum() / n_body) if n_body else 0.0

    return {
        "z_extent_mm": float(vol.shape[0] * sz), "slice_mm": sz, "pixel_mm": (sr + sc) / 2.0,
        "body_l": n_body * voxel_ml / 1000.0, "lung_air_l": float(air.sum()) * voxel_ml / 1000.0,
        "lung_slices": lung_slices if int(per_slice_air.sum()) else 0.0,
        "air": frac(air), "fat": frac(body & (v >= -190.0) & (v < -30.0)),
        "soft": frac(body & (v >= -30.0) & (v < 150.0)), "bone": frac(body & (v >= 300.0)),
    }


class EncoderChain(Protocol):
    """What :func:`model_study_stats` needs of a model's transform chain."""

    def encoder_pixel_mm(self, hu: np.ndarray, spacing_mm: Any) -> float: ...

    def describe(self) -> list[dict[str, Any]]: ...


def model_study_stats(hu: np.ndarray, spacing_mm: Sequence[float], chain: EncoderChain | None,
                      base: Mapping[str, float] | None = None) -> dict[str, float]:
    """:func:`study_stats` (``base`` when already measured) plus ``encoder_px_mm`` under a model's transform
    ``chain`` (none without a chain)."""
    out = dict(base) if base is not None else study_stats(hu, spacing_mm)
    if chain is not None:
        out["encoder_px_mm"] = float(chain.encoder_pixel_mm(np.asarray(hu), tuple(float(v) for v in spacing_mm)))
    return out


def build_profile(stats: Iterable[dict[str, float]], *, transforms: list[dict[str, Any]] | None = None,
                  encoder: str = "", source: str = "", contrast: Iterable[str] | None = None) -> dict[str, Any]:
    """Per statistic: ``min``, ``max``, ``p5``, ``p95``, ``mean`` over the studies, plus what produced them;
    with ``contrast`` (each study's ``Volume.meta`` record: "yes", "no" or "" for none), how many studies were
    recorded with (``yes``), without (``no``) and without a record (``unknown``)."""
    rows = list(stats)
    if not rows:
        raise InputError("studies", 0, "a study profile needs at least one training study", "train on a cohort with CT studies")
    out: dict[str, Any] = {"version": PROFILE_VERSION, "n_studies": len(rows), "margin": MARGIN, "rel_floor": REL_FLOOR,
                           "stats": {}, "transforms": transforms or [], "encoder": encoder, "source": source}
    if contrast is not None:
        records = list(contrast)
        out["contrast"] = {k: sum(r == k for r in records) for k in ("yes", "no")}
        out["contrast"]["unknown"] = len(records) - out["contrast"]["yes"] - out["contrast"]["no"]
    for key in STATS:
        vals = np.asarray([r[key] for r in rows if key in r and np.isfinite(r[key])], dtype=float)
        if len(vals):
            out["stats"][key] = {"min": float(vals.min()), "max": float(vals.max()), "p5": float(np.percentile(vals, 5)),
                                 "p95": float(np.percentile(vals, 95)), "mean": float(vals.mean())}
    return out


def allowed_range(entry: dict[str, float], margin: float = MARGIN, rel_floor: float = REL_FLOOR,
                  abs_floor: float = 0.0) -> tuple[float, float]:
    """The training range widened on each side by ``margin`` x max(width, ``rel_floor`` x magnitude), and by at
    least ``abs_floor``.

    >>> allowed_range({"min": 4.0, "max": 4.0}), allowed_range({"min": 0.002, "max": 0.003}, abs_floor=0.01)
    ((3.9, 4.1), (-0.008, 0.013))
    """
    lo, hi = float(entry["min"]), float(entry["max"])
    pad = max(margin * max(hi - lo, rel_floor * max(abs(lo), abs(hi))), abs_floor)
    return round(lo - pad, 9), round(hi + pad, 9)


def _fmt(key: str, value: float) -> str:
    _, unit, scale, digits = STATS[key]
    return f"{value * scale:.{digits}f}" + ("%" if unit == "%" else f" {unit}")


def _fmt_range(key: str, lo: float, hi: float) -> str:
    _, unit, scale, digits = STATS[key]
    a, b = f"{lo * scale:.{digits}f}", f"{hi * scale:.{digits}f}"
    return (a if a == b else f"{a}-{b}") + ("%" if unit == "%" else f" {unit}")


def outside(profile: dict[str, Any] | None, stats: dict[str, float]) -> list[tuple[str, float, dict[str, float]]]:
    """``(statistic, value, training entry)`` for every statistic outside its allowed range."""
    if not profile:
        return []
    margin, floor = float(profile.get("margin", MARGIN)), float(profile.get("rel_floor", REL_FLOOR))
    out = []
    for key, entry in profile.get("stats", {}).items():
        if key not in STATS or key not in stats or not np.isfinite(stats[key]):
            continue
        lo, hi = allowed_range(entry, margin, floor, WARN_ABS_FLOOR if key in ANATOMY else 0.0)
        if not lo <= stats[key] <= hi:
            out.append((key, float(stats[key]), entry))
    return out


#: how a warning of a CT unlike the training studies ends when the model reads it (:class:`core.predict.ImageRead`
#: words it as :data:`WITHOUT` where the CT is withheld from the prediction instead)
RELY = "do not rely on the image part of this prediction."
WITHOUT = "this prediction is made without the CT, which is withheld."


def profile_warnings(profile: dict[str, Any] | None, stats: dict[str, float]) -> list[str]:
    """One warning (a list of at most one line) when the study lies outside the model's training profile."""
    bad = outside(profile, stats)
    if not bad:
        return []
    assert profile is not None
    kinds = sorted({MEANING[k] for k, _, _ in bad}, key=list(MEANING.values()).index)
    parts = [f"{STATS[k][0]} {_fmt(k, v)} (training {_fmt_range(k, e['min'], e['max'])})" for k, v, e in bad]
    scale = ""
    if "scale" in kinds:
        cropped = any(step.get("name") == "body_crop" for step in profile.get("transforms", []))
        scale = (" The encoder sees this body at another scale than its training studies"
                 + (" (a body of another size)." if cropped else
                    " (another field of view); a model trained with the body box (Train on your cohort: \"Crop each "
                    "CT to the body first\", or train --body-crop) reads every body at about one scale."))
    return [f"Out of distribution for this model's image part ({', '.join(kinds)}): " + "; ".join(parts)
            + f". This CT is unlike the model's {profile.get('n_studies', '?')} training studies (see 'What this model "
            "can read' in its model card): " + RELY + scale]


def contrast_warning(profile: dict[str, Any] | None, meta: Mapping[str, str], series: Sequence[Any] = ()) -> str | None:
    """A warning when a study's contrast record (``Volume.meta``, ``core.io.contrast``) differs from every training
    study that has one; None when either side has no record or the training studies had both. ``series``: the
    study's series (``Volume.series``, ``SeriesInfo``); one recorded like the training studies (a multi-phase study's
    other phase) is named, the largest acquired one first.

    >>> p = build_profile([{"slice_mm": 3.0}] * 3, contrast=["no", "no", ""])
    >>> contrast_warning(p, {"contrast": "yes", "contrast_source": "ContrastBolusAgent"})[:72]
    'Contrast unlike the training studies: this CT was acquired with contrast'
    >>> contrast_warning(p, {"contrast": "no"}) is None, contrast_warning(p, {}) is None
    (True, True)
    """
    counts = (profile or {}).get("contrast") or {}
    status = _contrast_unlike(profile, meta)
    if status is None:
        return None
    other = "no" if status == "yes" else "yes"
    word, other_word = ("with", "without") if status == "yes" else ("without", "with")
    unknown = int(counts.get("unknown", 0))
    like = series_like_training(profile, meta, series)
    instead = (f" Series {like.key} of this study ({like.n_instances} images) was acquired {other_word} "
               "contrast, as the training studies were: load it instead (the series list on Upload, or the series "
               "column of cohort.csv)." if like is not None else "")
    return (f"Contrast unlike the training studies: this CT was acquired {word} contrast "
            f"({meta.get(CONTRAST_SOURCE) or 'recorded'}); all {counts[other]} of the model's training studies with a "
            f"contrast record were acquired {other_word} it" + (f" ({unknown} had no record)" if unknown else "")
            + ". Contrast changes the HU of vessels and organs: " + RELY
            + instead)


def _contrast_unlike(profile: dict[str, Any] | None, meta: Mapping[str, str]) -> str | None:
    """The study's contrast record ("yes" / "no") when every training study with a record had the other one."""
    counts = (profile or {}).get("contrast") or {}
    status = str(meta.get(CONTRAST_META, "") or "")
    if status not in ("yes", "no"):
        return None
    other = "no" if status == "yes" else "yes"
    return None if int(counts.get(status, 0)) or not int(counts.get(other, 0)) else status


def series_like_training(profile: dict[str, Any] | None, meta: Mapping[str, str], series: Sequence[Any]) -> Any:
    """The study's series (``SeriesInfo``) recorded like the model's training studies when the loaded one is not (a
    multi-phase study's other phase): acquired before derived, the largest first; None otherwise."""
    status = _contrast_unlike(profile, meta)
    if status is None:
        return None
    other = "no" if status == "yes" else "yes"
    like = sorted((s for s in series if getattr(s, "contrast", "") == other),
                  key=lambda s: (bool(s.derived), -int(s.n_instances), str(s.key)))
    return like[0] if like else None


def withhold_reason(profile: dict[str, Any] | None, stats: dict[str, float],
                    widths: float = WITHHOLD_WIDTHS) -> str | None:
    """Why the model's image part must not read this study (other anatomy, or the body at another scale, than its
    training studies), or None.

    An ``ANATOMY`` statistic outside the training range widened by the larger of ``widths`` x max(width,
    ``rel_floor`` x magnitude) and ``WITHHOLD_ABS_FLOOR`` on either side withholds it, and so does
    ``encoder_px_mm`` outside its range widened by the larger of the same and ``WITHHOLD_SCALE_FLOOR`` x its
    magnitude; without a profile nothing is withheld (only warned about).

    >>> p = build_profile([{"encoder_px_mm": 4.0}])
    >>> withhold_reason(p, {"encoder_px_mm": 4.8}) is None, withhold_reason(p, {"encoder_px_mm": 8.0})
    (True, "it shows the body at another scale than the model's 1 training studies: encoder pixel (field of view or body box / encoder size) 8.00 mm (training 4.00 mm)")
    """
    if not profile:
        return None
    floor = float(profile.get("rel_floor", REL_FLOOR))

    def far_out(key: str, entry: dict[str, float], value: float) -> bool:
        if key in ANATOMY:
            lo, hi = allowed_range(entry, widths, floor, WITHHOLD_ABS_FLOOR)
        elif key == "encoder_px_mm":
            magnitude = max(abs(float(entry["min"])), abs(float(entry["max"])))
            lo, hi = allowed_range(entry, widths, floor, WITHHOLD_SCALE_FLOOR * magnitude)
        else:
            return False
        return not lo <= value <= hi

    far = [(k, v, e) for k, v, e in outside(profile, stats) if far_out(k, e, v)]
    if not far:
        return None
    n = profile.get("n_studies", "?")
    reasons = []
    for what, keys in (("other anatomy", ANATOMY), ("the body at another scale", ("encoder_px_mm",))):
        parts = [f"{STATS[k][0]} {_fmt(k, v)} (training {_fmt_range(k, e['min'], e['max'])})" for k, v, e in far if k in keys]
        if parts:
            reasons.append(f"it shows {what} than the model's {n} training studies: " + "; ".join(parts))
    return "; and ".join(reasons)


def study_warnings(profile: dict[str, Any] | None, hu: np.ndarray, spacing_mm: Sequence[float],
                   chain: EncoderChain | None = None) -> list[str]:
    """:func:`profile_warnings` of one CT under a model's transform ``chain`` (nothing to compute without a profile)."""
    return profile_warnings(profile, model_study_stats(hu, spacing_mm, chain)) if profile else []


def cohort_profile(cohort: Cohort, ids: Sequence[str], *, chain: EncoderChain | None = None,
                   encoder: str = "", max_studies: int = MAX_STUDIES, seed: int = 0,
                   progress: Callable[[float, str], None] | None = None) -> dict[str, Any] | None:
    """The profile of the studies of ``ids`` (a seeded sample of at most ``max_studies``) under the model's
    transform ``chain`` (its steps and the encoder's pixel; neither without a chain); None without studies."""
    with_study = [s for s in ids if _has_study(cohort, s)]
    if not with_study:
        return None
    if len(with_study) > max_studies:
        rng = np.random.default_rng(seed)
        with_study = [with_study[i] for i in sorted(rng.choice(len(with_study), max_studies, replace=False))]
    rows, contrast = [], []
    for i, sid in enumerate(with_study):
        vol = cohort.load_volume(sid)
        if vol is not None:
            rows.append(model_study_stats(vol.hu, vol.spacing_mm, chain))
            contrast.append(vol.meta.get(CONTRAST_META, ""))
        if progress is not None:
            progress((i + 1) / len(with_study), "study profile")
    if not rows:
        return None
    return build_profile(rows, transforms=chain.describe() if chain is not None else None, encoder=encoder,
                         source=f"{len(rows)} training studies of cohort `{cohort.root.name}`", contrast=contrast)


def _has_study(cohort: Cohort, sid: str) -> bool:
    t = cohort.table
    if "study" not in t.columns:
        return False
    val = t.loc[t["subject_id"] == sid, "study"]
    return bool(len(val)) and isinstance(val.iloc[0], str) and bool(val.iloc[0].strip())


def encoder_text(image: Any) -> str:
    """A short description of a ``core.models.config.ImageConfig``'s encoder (what the card and profile state)."""
    kind = getattr(image, "kind", "none")
    if kind == "2d":
        crop = "the body's square box" if getattr(image, "body_crop", False) else "slices"
        return (f"2D CNN per axial slice (channels {list(image.channels)}, {crop} resized to {image.size} px)"
                + (", lung mask" if image.lung_mask else ", whole slice (no organ mask)"))
    if kind == "3d":
        crop = ", the body's square box first" if getattr(image, "body_crop", False) else ""
        return f"3D CNN with patch tokens (channels {list(image.channels)}, volume resized to {list(image.grid or ())}{crop})"
    if kind == "foundation":
        return (f"frozen pretrained 3D CT backbone (Merlin I3-ResNet-152, `{image.weights}` weights) on the grid "
                f"{list(image.grid or ())}")
    return str(kind)


def image_cohort_profile(cohort: Cohort, ids: Sequence[str], image: Any, *, seed: int = 0,
                         progress: Callable[[float, str], None] | None = None) -> dict[str, Any] | None:
    """:func:`cohort_profile` with the transforms and encoder of an ``ImageConfig`` (None for models without voxels)."""
    if not getattr(image, "voxels", False):
        return None
    return cohort_profile(cohort, ids, chain=image.transforms(), encoder=encoder_text(image), seed=seed,
                          progress=progress)


def card_lines(profile: dict[str, Any] | None) -> list[str]:
    """The model card's "What this model can read" section (empty without a profile)."""
    if not profile:
        return []
    lines = ["## What this model can read", "",
             f"Measured on {profile.get('source') or str(profile.get('n_studies', '?')) + ' training studies'} "
             "(`core.study_profile`). A study outside a range widened by "
             f"{float(profile.get('margin', MARGIN)):.0%} of its width (at least {float(profile.get('rel_floor', REL_FLOOR)) * float(profile.get('margin', MARGIN)):.1%} "
             "of its value) on either side gets an out-of-distribution warning in `predict --json` and the app.", ""]
    if profile.get("encoder"):
        lines.append(f"- Encoder: {profile['encoder']}")
    if profile.get("transforms"):
        steps = "; ".join(f"{step.get('name', '?')} (" + ", ".join(f"{k} {v}" for k, v in step.items() if k != "name") + ")"
                          for step in profile["transforms"])
        lines.append(f"- Transforms (in order): {steps}")
    for key, entry in profile.get("stats", {}).items():
        if key in STATS:
            lines.append(f"- {STATS[key][0]}: {_fmt_range(key, entry['min'], entry['max'])} "
                         f"(5th-95th percentile {_fmt_range(key, entry['p5'], entry['p95'])})")
    lines += _voxel_depth_line(profile)
    counts = profile.get("contrast")
    if counts:
        lines.append(f"- Contrast (DICOM Contrast/Bolus module or cohort.csv `contrast`): {counts.get('yes', 0)} studies "
                     f"with, {counts.get('no', 0)} without, {counts.get('unknown', 0)} with no record. A study recorded "
                     "otherwise than every training study with a record gets a warning; the voxels are not checked "
                     "(enhanced vessels and trabecular bone share 150-300 HU without an organ segmentation).")
    else:
        lines.append("- Contrast: not recorded for this model (trained before contrast records were kept; enhanced "
                     "vessels and trabecular bone share 150-300 HU without an organ segmentation).")
    lines.append("")
    return lines


def _voxel_depth_line(profile: dict[str, Any]) -> list[str]:
    """For an encoder that resizes the whole volume to a grid (3D, foundation): the depth in mm of one voxel of that
    grid for the training studies (their z-extent over the grid's slices); a longer study gets thicker voxels.

    >>> _voxel_depth_line({"transforms": [{"name": "resize_volume", "grid": [32, 64, 64]}],
    ...                    "stats": {"z_extent_mm": {"min": 64.0, "max": 96.0, "p5": 70.4, "p95": 89.6}}})
    ['- encoder voxel depth (z-extent / 32 grid slices): 2.00-3.00 mm (5th-95th percentile 2.20-2.80 mm)']
    """
    depth = next((step["grid"][0] for step in profile.get("transforms") or ()
                  if isinstance(step.get("grid"), (list, tuple)) and len(step["grid"]) == 3), None)
    entry = profile.get("stats", {}).get("z_extent_mm")
    if not depth or not entry:
        return []
    span = lambda lo, hi: f"{lo / depth:.2f}-{hi / depth:.2f} mm"  # noqa: E731
    return [f"- encoder voxel depth (z-extent / {depth} grid slices): {span(entry['min'], entry['max'])} "
            f"(5th-95th percentile {span(entry['p5'], entry['p95'])})"]


def model_profile(config: dict[str, Any] | Any) -> dict[str, Any] | None:
    """The ``study_profile`` of a config.json dict or a ``ModelConfig`` (its ``extra``); None when absent."""
    extra = config.get("study_profile") if isinstance(config, dict) else getattr(config, "extra", {}).get("study_profile")
    return extra if isinstance(extra, dict) and extra.get("stats") else None
