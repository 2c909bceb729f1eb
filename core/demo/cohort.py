"""Write the demo cohort folder: outcomes, CT phantoms, MEDS timeline, features, README.

Layout (the cohort folder format of core.cohort)::

    cohort.csv          subject_id, time, event, split, study, index_time, true_risk,
                        lesion, lesion_slice, lesion_row, lesion_col, lesion_radius_mm,
                        risk_image, risk_ehr, lesion_side, lesion_zone, lesion_lobe,
                        liver_lesion, liver_lesion_slice, liver_lesion_row,
                        liver_lesion_col, liver_lesion_radius_mm, risk_lung, risk_liver
    studies/<id>.nii.gz int16 CT phantoms (see core.demo.phantom)
    timeline.parquet    MEDS rows subject_id, time, code, numeric_value
    features.csv        subject_id + curated numeric features (pre-index only)
    README.md           the generative model and this cohort's numbers
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from core.demo import latents as L
from core.demo.ehr import build_timeline, curate_features
from core.demo.phantom import SHAPE, SPACING_MM
from core.demo.shards import Voxels, default_workers, render_all
from core.errors import InputError

DEFAULT_N = 800
DEMO_FILES = ("cohort.csv", "timeline.parquet", "features.csv", "README.md")
COHORT_COLUMNS = (
    "subject_id", "time", "event", "split", "study", "index_time", "true_risk",
    "lesion", "lesion_slice", "lesion_row", "lesion_col", "lesion_radius_mm",
    "risk_image", "risk_ehr", "lesion_side", "lesion_zone", "lesion_lobe",
    "liver_lesion", "liver_lesion_slice", "liver_lesion_row", "liver_lesion_col", "liver_lesion_radius_mm",
    "risk_lung", "risk_liver",
)

Progress = Callable[[float, str], None]


def check_out(out: Path) -> Path:
    """The output folder must be new, empty, or an earlier demo cohort (never someone's other files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("OUT", str(out), "exists and is not a folder", "pass a new or empty folder for the demo cohort")
    if out.is_dir():
        entries = [p.name for p in out.iterdir()]
        if entries and "cohort.csv" not in entries:
            raise InputError("OUT", str(out), f"is a non-empty folder without a demo cohort ({len(entries)} entries)",
                             "pass a new or empty folder, or the folder of an earlier demo to overwrite it")
    return out


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError("seed", seed, "must be an integer >= 0", "pass --seed 0 or another non-negative integer")
    return int(seed)


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of a risk score (higher = worse), via lifelines; NaN when no pair is comparable (a tiny split).

    >>> harrell_c([5.0, 9.0], [0, 0], [1.0, 2.0])  # both censored: no comparable pair
    nan
    """
    from lifelines.utils import concordance_index

    try:
        return float(concordance_index(np.asarray(time, float), -np.asarray(risk, float), np.asarray(event, int)))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
        return float("nan")


def _voxel_columns(prefix: str, present: np.ndarray, vox: np.ndarray) -> dict[str, pd.arrays.IntegerArray]:
    """``<prefix>_slice/row/col``: the lesion centre voxels, missing where there is no lesion."""
    return {f"{prefix}_{axis}": pd.array(np.where(present, vox[:, i], np.nan), dtype="Int64")
            for i, axis in enumerate(("slice", "row", "col"))}


def cohort_table(lat: pd.DataFrame, voxels: dict[str, Voxels], *, studies: bool = True) -> pd.DataFrame:
    """The cohort.csv table from the latents and the lesion voxels actually drawn (lung nodule, liver lesion)."""
    vox = np.full((len(lat), 3), np.nan)
    liv = np.full((len(lat), 3), np.nan)
    for i, sid in enumerate(lat["subject_id"]):
        lung, liver = voxels.get(sid, (None, None))
        if lung is not None:
            vox[i] = lung
        if liver is not None:
            liv[i] = liver
    les = lat["lesion"].to_numpy() == 1
    les_liver = lat["liver_lesion"].to_numpy() == 1
    table = pd.DataFrame({
        "subject_id": lat["subject_id"],
        "time": lat["time"].round(1),
        "event": lat["event"].astype(int),
        "split": lat["split"],
        "study": ("studies/" + lat["subject_id"] + ".nii.gz") if studies else "",
        "index_time": lat["index_time"].dt.strftime("%Y-%m-%d %H:%M:%S"),
        "true_risk": lat["true_risk"].round(6),
        "lesion": lat["lesion"].astype(int),
        **_voxel_columns("lesion", les, vox),
        "lesion_radius_mm": lat["lesion_radius_mm"],
        "risk_image": lat["image_part"].round(6),
        "risk_ehr": lat["ehr_part"].round(6),
        "lesion_side": np.where(les, lat["lesion_side"], ""),
        "lesion_zone": np.where(les, np.where(lat["lesion_central"] == 1, "central", "peripheral"), ""),
        "lesion_lobe": np.where(les, np.where(lat["lesion_upper"] == 1, "upper", "lower"), ""),
        "liver_lesion": lat["liver_lesion"].astype(int),
        **_voxel_columns("liver_lesion", les_liver, liv),
        "liver_lesion_radius_mm": lat["liver_lesion_radius_mm"],
        "risk_lung": lat["lung_part"].round(6),
        "risk_liver": lat["liver_part"].round(6),
    })
    return table


def write_demo_cohort(out: Path | str, n: int = DEFAULT_N, seed: int = 0, progress: Progress | None = None,
                      *, volumes: bool = True, workers: int | None = None) -> Path:
    """Write the complete demo cohort to ``out`` and return the folder.

    Deterministic for ``(n, seed)``: the same arguments give byte-identical
    cohort.csv and volumes, whatever ``workers`` (processes rendering the CT phantoms; by default
    the cores this process may use, ``core.demo.shards.default_workers``). ``volumes=False`` skips
    writing the CT phantoms (the ``lesion_slice/row/col`` columns are still computed).
    """
    started = _time.perf_counter()
    out = check_out(Path(out))
    check_seed(seed)
    lat = L.sample_latents(n, seed)
    out.mkdir(parents=True, exist_ok=True)
    studies = out / "studies"
    studies.mkdir(exist_ok=True)
    report = progress or (lambda fraction, label: None)

    total = len(lat) + 2
    voxels = render_all(studies, lat, seed, volumes=volumes,
                        workers=default_workers(len(lat)) if workers is None else workers,
                        progress=lambda f: report(f * len(lat) / total, "CT phantoms"))

    timeline = build_timeline(lat, seed)
    timeline.to_parquet(out / "timeline.parquet", index=False)
    features = curate_features(timeline, dict(zip(lat["subject_id"], lat["index_time"])))
    features.to_csv(out / "features.csv", index=False)
    report((len(lat) + 1) / total, "MEDS timeline")

    table = cohort_table(lat, voxels, studies=volumes)
    table.to_csv(out / "cohort.csv", index=False)
    (out / "README.md").write_text(readme_text(table, timeline, n=len(lat), seed=int(seed),
                                               seconds=_time.perf_counter() - started), encoding="utf-8")
    report(1.0, "done")
    return out


def c_index_summary(table: pd.DataFrame, split: str | None = "test") -> dict[str, float]:
    """Harrell's C of the oracle, image part and EHR part on a split (all subjects when None)."""
    t = table if split is None else table[table["split"] == split]
    parts = [("oracle", "true_risk"), ("image_part", "risk_image"), ("ehr_part", "risk_ehr")]
    parts += [(name, col) for name, col in (("lung_part", "risk_lung"), ("liver_part", "risk_liver")) if col in t.columns]
    return {name: harrell_c(t["time"], t["event"], t[col]) for name, col in parts}


def readme_text(table: pd.DataFrame, timeline: pd.DataFrame, *, n: int, seed: int, seconds: float) -> str:
    c = c_index_summary(table, "test")
    c_all = c_index_summary(table, None)
    events = int(table["event"].sum())
    s, r, cc = SHAPE
    conds = ", ".join(f"{k.replace('_', ' ')} {v:+.2f}" for k, v in L.CONDITION_EFFECT.items())
    noise = ", ".join(k.replace("_", " ") for k in L.PREVALENCE if k not in L.CONDITION_EFFECT)
    return f"""# Demo cohort (synthetic)

Generated by `python -m core demo` (n = {n}, seed = {seed}) in {seconds:.0f} s. Every subject,
image and event here is synthetic; nothing comes from a real patient.

## Files

- `cohort.csv`: subject_id, time (days from the scan), event (1 = death, 0 = censored),
  split (train/val/test 60/20/20), study (`studies/<id>.nii.gz`), index_time (scan datetime),
  true_risk (ground-truth log hazard) = risk_image + risk_ehr, lesion (0/1), lesion_slice,
  lesion_row, lesion_col (voxel of the lesion centre in the `core.io.volume` convention:
  [slice, row, col], slice 0 inferior, rows anterior -> posterior, cols right -> left),
  lesion_radius_mm, lesion_side, lesion_zone (central/peripheral), lesion_lobe (upper/lower)
  for the lung nodule; liver_lesion (0/1), liver_lesion_slice/row/col, liver_lesion_radius_mm
  for the liver lesion; risk_image = risk_lung + risk_liver.
- `studies/`: int16 NIfTI chest CT phantoms, {s} x {r} x {cc} voxels at {SPACING_MM} mm
  (stored LPS-oriented; they load back to the same [slice, row, col] index).
- `timeline.parquet`: {len(timeline):,} MEDS rows (subject_id, time, code, numeric_value):
  MEDS_BIRTH, GENDER, outpatient visits and emergency admissions, ICD-10 diagnoses, ATC
  medications, labs with values, vitals, the scan (`IMAGING//CT//CHEST` at index_time), and
  after the scan: nodule follow-up, lung cancer diagnoses, admissions and MEDS_DEATH.
- `features.csv`: curated features from the pre-index timeline only (age, sex, visit and
  admission counts, counts of key diagnoses, distinct medications, last lab values with
  NaN where never measured, days since the last visit).

## Generative model

Log hazard `true_risk = risk_image + risk_ehr`, two independent parts of comparable variance.

- **Image**: `risk_image = risk_lung + risk_liver`, two organs of comparable weight, so that a
  model that reads one organ only stays below the image part's C.
  - Lung nodule (prevalence {L.LESION_PREVALENCE:.0%}, radius uniform
    {L.LESION_RADIUS_MM[0]:.0f}-{L.LESION_RADIUS_MM[1]:.0f} mm, soft tissue 30-60 HU):
    `risk_lung = lesion x ({L.LESION_BASE} + {L.LESION_PER_MM} x (radius_mm - 13) + {L.LESION_CENTRAL} x central
    + {L.LESION_UPPER} x upper_lobe) - {L.IMAGE_OFFSET:.4g}`.
  - Liver lesion below the right diaphragm (prevalence {L.LIVER_PREVALENCE:.0%}, radius uniform
    {L.LIVER_RADIUS_MM[0]:.0f}-{L.LIVER_RADIUS_MM[1]:.0f} mm, hypodense: {-L.LIVER_DELTA_HU[1]:.0f}-{-L.LIVER_DELTA_HU[0]:.0f} HU
    below the liver's 60 HU): `risk_liver = liver_lesion x ({L.LIVER_BASE} + {L.LIVER_PER_MM} x (radius_mm - 12))
    - {L.LIVER_OFFSET:.4g}`.
- **EHR** (what the pre-index timeline shows): `risk_ehr = {L.AGE_PER_YEAR} x (age - {L.AGE_MEAN:.0f})`
  + conditions ({conds}; coded as ICD-10 diagnoses before the scan)
  + {L.BNP_PER_LOG} x log(last BNP / 100 pg/mL) (unmeasured = {L.BNP_UNMEASURED:.0f})
  + {L.CREATININE_PER_LOG} x log(last creatinine / 1 mg/dL) (unmeasured = {L.CREATININE_UNMEASURED})
  {L.ALBUMIN_PER_GDL:+} x (last albumin - 4 g/dL) (unmeasured = {L.ALBUMIN_UNMEASURED}) - {L.EHR_OFFSET:.3f}.
  Noise conditions with no effect: {noise}; hemoglobin, sodium, potassium, glucose, WBC and
  vitals are noise too.
- **Outcome**: Weibull proportional hazards, shape {L.WEIBULL_SHAPE}, baseline scale
  {L.WEIBULL_SCALE_YEARS} years; censoring at a uniform {L.FOLLOWUP_YEARS[0]}-{L.FOLLOWUP_YEARS[1]} years
  (administrative) or an exponential drop-out (mean {L.DROPOUT_MEAN_YEARS:.0f} years).

## This cohort

- {n} subjects, {events} events, {1 - events / n:.1%} censored, median follow-up
  {table['time'].median():.0f} days; {int(table['lesion'].sum())} with a lung nodule,
  {int(table['liver_lesion'].sum())} with a liver lesion.
- Harrell's C on the test split (all subjects): oracle true_risk {c['oracle']:.3f} ({c_all['oracle']:.3f}),
  image part alone {c['image_part']:.3f} ({c_all['image_part']:.3f}), EHR part alone
  {c['ehr_part']:.3f} ({c_all['ehr_part']:.3f}); lung part {c['lung_part']:.3f}, liver part
  {c['liver_part']:.3f}. A model that uses one modality cannot exceed its part's C by much; fusion
  of both can approach the oracle.
"""
