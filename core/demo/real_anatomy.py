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
* **Field of view** (``fov``, default 1): scanners reconstruct a field wider
  than the patient. With ``fov`` > 1 every study is padded in-plane with air
  (-1000 HU, noise sd 10 HU) to ``fov`` times its rows and columns, the body at
  a random place in the middle 40 % of the padding (``poses.csv``: ``pad_row``,
  ``pad_col``); lesion voxels are moved with it. ``fov`` 1 writes exactly the
  cohort written before the option existed.
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
  (-25 to -50 HU); paraspinal muscle an enhancing mass (+40 to +80 HU) or a
  necrotic, hypodense one (-25 to -50 HU), half each.

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
* **muscle** (the paraspinal muscles): 20-80 HU behind the vertebra's
  centroid and within 22 % of the body width of it, opened once; the largest
  component and a second one of at least 30 % of its size (the other side).
  On the shared CT about 256 mL, largest inscribed radius 14 mm.

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

import json
import time as _time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.demo import latents as L
from core.demo.cohort import check_out, check_seed, harrell_c
from core.demo.ehr import build_timeline, curate_features
from core.demo.anatomy import (
    DEFAULT_CT,
    DEFAULT_ORGANS,
    ORGANS,
    BaseAnatomy,
    check_organs,
    find_organs,
    load_base_anatomy,
    save_organ_overlay,
    save_subject_overlay,
)
from core.demo.phantom import write_hu_nifti
from core.demo.render import render_subject, subject_rng
from core.errors import InputError

Progress = Callable[[float, str], None]

DEFAULT_N = 400
DEFAULT_SLICES = 100

# ----------------------------------------------------------------------------- lesions and image hazard
LESION_PREVALENCE = 0.5
SECOND_LESION = 0.3                 # share of lesion subjects with a second lesion (another organ)
LESION_RADIUS_MM = (5.0, 16.0)      # uniform
RADIUS_CENTRE_MM = 10.5
ORGAN_BASE = {"liver": 1.50, "bone": 1.20, "lung": 1.35, "spleen": 1.10, "muscle": 1.30}
ORGAN_PER_MM = {"liver": 0.14, "bone": 0.20, "lung": 0.17, "spleen": 0.16, "muscle": 0.18}

COHORT_COLUMNS = (
    "subject_id", "time", "event", "split", "study", "index_time", "true_risk", "risk_image", "risk_ehr",
    "lesion", "n_lesions", "lesion_organ", "lesion_kind", "lesion_radius_mm", "lesion_slice", "lesion_row", "lesion_col",
    "lesion2_organ", "lesion2_kind", "lesion2_radius_mm", "lesion2_slice", "lesion2_row", "lesion2_col",
)


def check_fov(fov: float) -> float:
    if isinstance(fov, bool) or not isinstance(fov, (int, float, np.floating)) or not 1.0 <= float(fov) <= 3.0:
        raise InputError("fov", fov, "must be a number in 1..3 (the field of view relative to the rendered one)",
                         "pass e.g. --fov 1.5 (or 1 for none)")
    return float(fov)


def pad_field_of_view(hu: np.ndarray, lesions: list[dict], fov: float, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """``hu`` ``[S, R, C]`` inside air (-1000 HU, noise sd 10 HU) of ``fov`` times its rows and columns, the study at a
    random place in the middle 40 % of the padding; ``lesions`` (their ``row``/``col``) moved in place. Returns the
    padded int16 study and the row and column offsets.

    >>> les = [{"slice": 1, "row": 2, "col": 3}]
    >>> out, r0, c0 = pad_field_of_view(np.zeros((2, 10, 20), np.int16), les, 1.5, np.random.default_rng(0))
    >>> out.shape, les[0]["row"] == 2 + r0, les[0]["col"] == 3 + c0, bool((out[:, r0:r0 + 10, c0:c0 + 20] == 0).all())
    ((2, 15, 30), True, True, True)
    """
    s, r, c = hu.shape
    pr, pc = int(round(r * (fov - 1.0))), int(round(c * (fov - 1.0)))
    r0 = int(rng.integers(int(pr * 0.3), int(pr * 0.7) + 1)) if pr else 0
    c0 = int(rng.integers(int(pc * 0.3), int(pc * 0.7) + 1)) if pc else 0
    out = np.round(-1000.0 + rng.normal(0.0, 10.0, (s, r + pr, c + pc))).astype(np.int16)
    out[:, r0:r0 + r, c0:c0 + c] = hu
    for les in lesions:
        les["row"], les["col"] = int(les["row"]) + r0, int(les["col"]) + c0
    return out, r0, c0


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
        if organ == "muscle":  # an enhancing mass (brighter) or a necrotic one (darker), half each
            return "enhancing" if u < 0.5 else "hypodense"
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
                              fov: float = 1.0, progress: Progress | None = None) -> Path:
    """Write a real-anatomy cohort folder to ``out`` and return it.

    Files: ``cohort.csv`` (``COHORT_COLUMNS``; lesion voxels index the
    subject's own study), ``studies/<id>.nii.gz`` (int16 HU, ``slices``
    slices each, shapes and spacings differ per subject), ``features.csv``,
    ``timeline.parquet`` (MEDS rows), ``poses.csv`` (yaw, tilt, scale, shift,
    spacing, shape per subject), ``organs.json`` (how the organs were found
    and their volumes) and ``README.md``. Deterministic for the arguments.
    """
    started = _time.perf_counter()
    fov = check_fov(fov)
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
        hu, pad = subject.hu, {}
        if fov > 1.0:  # its own generator: the subjects' renderings stay those of fov 1
            hu, r0, c0 = pad_field_of_view(hu, subject.lesions, fov, np.random.default_rng(np.random.SeedSequence([seed, i, 11])))
            pad = {"pad_row": r0, "pad_col": c0, "rows_fov": hu.shape[1], "cols_fov": hu.shape[2]}
        write_hu_nifti(hu, subject.spacing_mm, studies / f"{sid}.nii.gz")
        p = subject.pose
        poses.append({"subject_id": sid, "yaw_deg": round(p.yaw_deg, 3), "tilt_deg": round(p.tilt_deg, 3),
                      "scale": round(p.scale, 4), "shift_z_mm": round(p.shift_mm[0], 2), "shift_y_mm": round(p.shift_mm[1], 2),
                      "shift_x_mm": round(p.shift_mm[2], 2), "spacing_slice_mm": round(p.spacing_mm[0], 4),
                      "spacing_row_mm": round(p.spacing_mm[1], 4), "spacing_col_mm": round(p.spacing_mm[2], 4),
                      "slices": p.shape[0], "rows": p.shape[1], "cols": p.shape[2], **pad})
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
