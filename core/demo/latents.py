"""The generative model of the demo cohort: one row of latent variables per subject.

Everything the writer needs that is not per-voxel or per-event noise is drawn
here, vectorised, from one ``numpy`` generator seeded with ``seed``. The
ground-truth log hazard is the sum of two independent parts of comparable
variance (about 1 each):

* ``image_part`` -- driven only by the lesions drawn into the CT phantom, the sum
  of two organ parts of comparable variance, so that no single-organ rule
  reaches the image part's C-index:

  - ``lung_part``: a lung nodule (presence, radius, central/hilar versus
    peripheral, upper versus lower lobe);
  - ``liver_part``: a hypodense liver lesion below the right diaphragm
    (presence, radius);

* ``ehr_part`` -- driven only by what the pre-index MEDS timeline shows (age,
  heart failure, COPD, CKD, diabetes, last BNP, last creatinine, last albumin).

Survival times follow a Weibull proportional-hazards model
``h(t | x) = (k / s) (t / s)^(k - 1) exp(true_risk)`` (t in years), censored by
staggered administrative end of follow-up and random drop-out. Neither
modality alone reaches the oracle C-index of ``true_risk``.

>>> lat = sample_latents(200, seed=1)
>>> sorted(lat["split"].unique())
['test', 'train', 'val']
>>> bool(((lat["true_risk"] - lat["image_part"] - lat["ehr_part"]).abs() < 1e-9).all())
True
>>> bool(((lat["image_part"] - lat["lung_part"] - lat["liver_part"]).abs() < 1e-9).all())
True
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import InputError

# ----------------------------------------------------------------------------- image part
# lung nodule ("lesion" columns, kept for readers of earlier demo cohorts)
LESION_PREVALENCE = 0.5
LESION_RADIUS_MM = (6.0, 20.0)        # uniform
LESION_BASE = 0.7                     # log-hazard of a lesion of 13 mm, peripheral, lower lobe
LESION_PER_MM = 0.125                 # per mm of radius above 13 mm (0.5 per 4 mm)
LESION_CENTRAL = 0.55                 # central / hilar versus peripheral
LESION_UPPER = 0.3                    # upper versus lower lobe
# population mean of the lung term (centres lung_part): prevalence x mean term (mean radius 13 mm)
IMAGE_OFFSET = LESION_PREVALENCE * (LESION_BASE + 0.5 * LESION_CENTRAL + 0.5 * LESION_UPPER)
# hypodense liver lesion ("liver_lesion" columns): its own risk part, drawn from its own random stream
LIVER_PREVALENCE = 0.4
LIVER_RADIUS_MM = (7.0, 17.0)         # uniform
LIVER_BASE = 1.3                      # log-hazard of a liver lesion of 12 mm
LIVER_PER_MM = 0.14                   # per mm of radius above 12 mm
LIVER_DELTA_HU = (-55.0, -30.0)       # lesion minus liver HU (liver 60 HU), uniform per subject
LIVER_OFFSET = LIVER_PREVALENCE * LIVER_BASE

# ----------------------------------------------------------------------------- EHR part
AGE_MEAN, AGE_SD, AGE_RANGE = 67.0, 10.0, (40.0, 92.0)
AGE_PER_YEAR = 0.045
PREVALENCE = {  # condition -> prevalence (independent draws)
    "heart_failure": 0.25, "copd": 0.22, "ckd": 0.20, "diabetes": 0.30,
    # noise conditions: in the timeline, no effect on risk
    "hypertension": 0.50, "hyperlipidemia": 0.40, "gerd": 0.20, "hypothyroidism": 0.12, "osteoarthritis": 0.25,
}
CONDITION_EFFECT = {"heart_failure": 0.50, "copd": 0.45, "ckd": 0.25, "diabetes": 0.15}
BNP_PER_LOG = 0.40        # per log(pg/mL) of the last BNP above log(100); unmeasured counts as 60 pg/mL
BNP_UNMEASURED = 60.0
CREATININE_PER_LOG = 0.60  # per log(mg/dL) of the last creatinine above log(1.0); unmeasured counts as 0.9
CREATININE_UNMEASURED = 0.9
ALBUMIN_PER_GDL = -0.70    # per g/dL of the last albumin above 4.0; unmeasured counts as 4.0
ALBUMIN_UNMEASURED = 4.0
EHR_OFFSET = 0.0           # set below from the closed-form means

# Probability that a lab is ever measured before the index date.
MEASURED = {"bnp_nonhf": 0.35, "bnp_hf": 1.0, "creatinine": 0.90, "albumin": 0.80,
            "hemoglobin": 0.85, "sodium": 0.90, "potassium": 0.85, "glucose": 0.85}

# ----------------------------------------------------------------------------- outcome
WEIBULL_SHAPE = 0.9          # k < 1: hazard highest soon after the scan
WEIBULL_SCALE_YEARS = 3.0    # s: baseline scale in years (true_risk = 0)
FOLLOWUP_YEARS = (2.0, 6.5)  # administrative end of follow-up, uniform (staggered entry)
DROPOUT_MEAN_YEARS = 15.0    # exponential random censoring
DAYS_PER_YEAR = 365.25
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)

# Phantom geometry drawn per subject (mm / HU), used by core.demo.phantom.
BODY_SEMI_X = (140.0, 175.0)
BODY_SEMI_Y = (95.0, 122.0)
FAT_MM = (8.0, 30.0)


def _ehr_offset() -> float:
    """Closed-form population mean of the EHR terms (so ``ehr_part`` is centred)."""
    m = sum(CONDITION_EFFECT[c] * PREVALENCE[c] for c in CONDITION_EFFECT)
    # BNP: HF always measured, log N(log 450, 0.7); non-HF measured 35 %: log N(log 60, 0.6)
    hf = PREVALENCE["heart_failure"]
    e_bnp = hf * np.log(450.0) + (1 - hf) * (MEASURED["bnp_nonhf"] * np.log(60.0) + (1 - MEASURED["bnp_nonhf"]) * np.log(BNP_UNMEASURED))
    m += BNP_PER_LOG * (e_bnp - np.log(100.0))
    ckd = PREVALENCE["ckd"]
    # CKD always measured; others measured with probability MEASURED["creatinine"]
    e_cr = ckd * np.log(2.0) + (1 - ckd) * (MEASURED["creatinine"] * np.log(0.9) + (1 - MEASURED["creatinine"]) * np.log(CREATININE_UNMEASURED))
    m += CREATININE_PER_LOG * e_cr
    sick = 1 - (1 - hf) * (1 - ckd)
    m += ALBUMIN_PER_GDL * MEASURED["albumin"] * (-0.35 * sick)
    return float(m)


EHR_OFFSET = _ehr_offset()


def check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 10:
        raise InputError("n", n, "must be an integer >= 10 (each split needs subjects)", "pass --n 10 or more")
    return int(n)


def subject_ids(n: int) -> list[str]:
    """Zero-padded string ids ``demo0001`` ... (width grows with n)."""
    width = max(4, len(str(n)))
    return [f"demo{i + 1:0{width}d}" for i in range(n)]


def image_part(lesion: np.ndarray, radius_mm: np.ndarray, central: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Lung log-hazard term from the lung nodule (0 where no nodule before centring)."""
    lesion = np.asarray(lesion, dtype=float)
    r = np.nan_to_num(np.asarray(radius_mm, dtype=float), nan=13.0)
    term = LESION_BASE + LESION_PER_MM * (r - 13.0) + LESION_CENTRAL * np.asarray(central, float) + LESION_UPPER * np.asarray(upper, float)
    return lesion * term - IMAGE_OFFSET


def liver_part(lesion: np.ndarray, radius_mm: np.ndarray) -> np.ndarray:
    """Liver log-hazard term from the liver lesion (0 where no lesion before centring)."""
    lesion = np.asarray(lesion, dtype=float)
    r = np.nan_to_num(np.asarray(radius_mm, dtype=float), nan=12.0)
    return lesion * (LIVER_BASE + LIVER_PER_MM * (r - 12.0)) - LIVER_OFFSET


def ehr_part(age: np.ndarray, conditions: dict[str, np.ndarray], last_bnp: np.ndarray,
             last_creatinine: np.ndarray, last_albumin: np.ndarray) -> np.ndarray:
    """EHR log-hazard term from what the pre-index timeline shows (NaN = never measured)."""
    risk = AGE_PER_YEAR * (np.asarray(age, float) - AGE_MEAN)
    for name, beta in CONDITION_EFFECT.items():
        risk = risk + beta * np.asarray(conditions[name], float)
    bnp = np.where(np.isnan(last_bnp), BNP_UNMEASURED, last_bnp)
    cr = np.where(np.isnan(last_creatinine), CREATININE_UNMEASURED, last_creatinine)
    alb = np.where(np.isnan(last_albumin), ALBUMIN_UNMEASURED, last_albumin)
    risk = risk + BNP_PER_LOG * (np.log(bnp) - np.log(100.0))
    risk = risk + CREATININE_PER_LOG * np.log(cr)
    risk = risk + ALBUMIN_PER_GDL * (alb - 4.0)
    return risk - EHR_OFFSET


def _maybe(rng: np.random.Generator, values: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    keep = rng.random(len(values)) < p
    return np.where(keep, values, np.nan)


def sample_latents(n: int, seed: int = 0) -> pd.DataFrame:
    """Draw every subject-level latent variable, the risk parts and the outcome.

    Columns: subject_id, split, index_time, birth_time, age, sex_female, the
    conditions (0/1), last lab values (NaN = never measured), lesion geometry
    (lesion, lesion_radius_mm, lesion_side, lesion_central, lesion_upper and
    three jitters in [0, 1]), liver lesion (liver_lesion, liver_lesion_radius_mm,
    liver_lesion_delta_hu and three jitters), body geometry, lung_part,
    liver_part, image_part, ehr_part, true_risk,
    event_time_days (uncensored), censor_time_days, time, event.
    """
    n = check_n(n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20240611]))
    df = pd.DataFrame({"subject_id": subject_ids(n)})

    # split: exact 60/20/20 by a random permutation
    n_train = int(round(SPLIT_FRACTIONS[0] * n))
    n_val = int(round(SPLIT_FRACTIONS[1] * n))
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val), dtype=object)
    df["split"] = split[rng.permutation(n)]

    # index date (scan) between 2015 and 2020, daytime
    base = np.datetime64("2015-01-01T00:00:00")
    day = rng.integers(0, 6 * 365, n)
    minute = rng.integers(8 * 60, 18 * 60, n)
    index_time = base + day.astype("timedelta64[D]") + minute.astype("timedelta64[m]")
    df["index_time"] = pd.to_datetime(index_time).astype("datetime64[ns]")
    age_draw = np.clip(rng.normal(AGE_MEAN, AGE_SD, n), *AGE_RANGE)
    birth = (df["index_time"] - pd.to_timedelta(np.round(age_draw * DAYS_PER_YEAR), unit="D")).dt.normalize()
    df["birth_time"] = birth
    df["age"] = (df["index_time"] - df["birth_time"]).dt.total_seconds() / (86400.0 * DAYS_PER_YEAR)
    df["sex_female"] = (rng.random(n) < 0.45).astype(int)

    # conditions
    conditions = {name: (rng.random(n) < p).astype(int) for name, p in PREVALENCE.items()}
    for name, flag in conditions.items():
        df[name] = flag
    hf = conditions["heart_failure"].astype(bool)
    ckd = conditions["ckd"].astype(bool)
    dm = conditions["diabetes"].astype(bool)

    # last lab values before the index date (NaN = never measured)
    bnp = np.where(hf, np.exp(rng.normal(np.log(450.0), 0.7, n)), np.exp(rng.normal(np.log(60.0), 0.6, n)))
    df["last_bnp"] = np.round(_maybe(rng, bnp, np.where(hf, MEASURED["bnp_hf"], MEASURED["bnp_nonhf"])), 0)
    cr = np.where(ckd, np.exp(rng.normal(np.log(2.0), 0.3, n)), np.exp(rng.normal(np.log(0.9), 0.2, n)))
    df["last_creatinine"] = np.round(_maybe(rng, cr, np.where(ckd, 1.0, MEASURED["creatinine"])), 2)
    alb = rng.normal(4.0, 0.4, n) - 0.35 * (hf | ckd)
    df["last_albumin"] = np.round(_maybe(rng, np.clip(alb, 1.8, 5.2), MEASURED["albumin"]), 1)
    df["last_hemoglobin"] = np.round(_maybe(rng, np.clip(rng.normal(13.5, 1.6, n) - 1.0 * ckd, 7.0, 18.0), MEASURED["hemoglobin"]), 1)
    df["last_sodium"] = np.round(_maybe(rng, rng.normal(139.0, 3.0, n), MEASURED["sodium"]), 0)
    df["last_potassium"] = np.round(_maybe(rng, rng.normal(4.2, 0.4, n) + 0.3 * ckd, MEASURED["potassium"]), 1)
    df["last_glucose"] = np.round(_maybe(rng, np.where(dm, rng.normal(160.0, 35.0, n), rng.normal(98.0, 12.0, n)), MEASURED["glucose"]), 0)

    # lesion
    lesion = (rng.random(n) < LESION_PREVALENCE).astype(int)
    radius = np.round(rng.uniform(*LESION_RADIUS_MM, n), 1)
    central = (rng.random(n) < 0.5).astype(int)
    upper = (rng.random(n) < 0.5).astype(int)
    side = np.where(rng.random(n) < 0.55, "right", "left")
    jitter = rng.random((n, 3))
    df["lesion"] = lesion
    df["lesion_radius_mm"] = np.where(lesion == 1, radius, np.nan)
    df["lesion_side"] = np.where(lesion == 1, side, "")
    df["lesion_central"] = np.where(lesion == 1, central, 0)
    df["lesion_upper"] = np.where(lesion == 1, upper, 0)
    df["lesion_jitter_u"], df["lesion_jitter_v"], df["lesion_jitter_z"] = jitter.T

    # body geometry of the phantom (independent of risk)
    df["body_semi_x_mm"] = rng.uniform(*BODY_SEMI_X, n)
    df["body_semi_y_mm"] = df["body_semi_x_mm"] * rng.uniform(0.62, 0.75, n)
    df["fat_mm"] = rng.uniform(*FAT_MM, n)
    df["shift_x_mm"] = rng.normal(0.0, 6.0, n)
    df["shift_y_mm"] = rng.normal(0.0, 5.0, n)
    df["shift_z_mm"] = rng.uniform(-10.0, 10.0, n)
    df["heart_scale"] = rng.uniform(0.9, 1.12, n)
    df["contrast_hu"] = rng.uniform(150.0, 280.0, n)
    df["noise_sd_hu"] = rng.uniform(10.0, 20.0, n)

    # liver lesion: its own stream, so the draws above stay those of earlier demo versions
    rng_liver = np.random.default_rng(np.random.SeedSequence([int(seed), 20240611, 2]))
    liver = (rng_liver.random(n) < LIVER_PREVALENCE).astype(int)
    liver_radius = np.round(rng_liver.uniform(*LIVER_RADIUS_MM, n), 1)
    liver_delta = np.round(rng_liver.uniform(*LIVER_DELTA_HU, n), 0)
    liver_jitter = rng_liver.random((n, 3))
    df["liver_lesion"] = liver
    df["liver_lesion_radius_mm"] = np.where(liver == 1, liver_radius, np.nan)
    df["liver_lesion_delta_hu"] = np.where(liver == 1, liver_delta, np.nan)
    df["liver_jitter_u"], df["liver_jitter_v"], df["liver_jitter_z"] = liver_jitter.T

    # risk
    df["lung_part"] = image_part(lesion, df["lesion_radius_mm"].to_numpy(), df["lesion_central"].to_numpy(), df["lesion_upper"].to_numpy())
    df["liver_part"] = liver_part(liver, df["liver_lesion_radius_mm"].to_numpy())
    df["image_part"] = df["lung_part"] + df["liver_part"]
    df["ehr_part"] = ehr_part(df["age"].to_numpy(), conditions, df["last_bnp"].to_numpy(),
                              df["last_creatinine"].to_numpy(), df["last_albumin"].to_numpy())
    df["true_risk"] = df["image_part"] + df["ehr_part"]

    # outcome: Weibull PH, administrative + random censoring
    e = rng.exponential(1.0, n)
    t_event = WEIBULL_SCALE_YEARS * (e / np.exp(df["true_risk"].to_numpy())) ** (1.0 / WEIBULL_SHAPE)
    c_admin = rng.uniform(*FOLLOWUP_YEARS, n)
    c_drop = rng.exponential(DROPOUT_MEAN_YEARS, n)
    c = np.minimum(c_admin, c_drop)
    df["event_time_days"] = t_event * DAYS_PER_YEAR
    df["censor_time_days"] = c * DAYS_PER_YEAR
    observed = np.minimum(t_event, c) * DAYS_PER_YEAR
    df["time"] = np.maximum(np.round(observed, 1), 0.5)
    df["event"] = (t_event <= c).astype(int)
    return df
