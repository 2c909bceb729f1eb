"""MEDS timelines of the demo cohort, and the curated features derived from them.

Each subject gets an irregular, sparse history before the scan (index) date:
outpatient visits and emergency admissions at random times over 1-6 years,
ICD-10 diagnoses of the subject's conditions (coded at some visits only),
ATC medications, labs with values (the last value before the index date is
exactly the latent value that drives risk), vitals and noise codes. After the
index date come the outcome events: radiology follow-up of a lesion, lung
cancer diagnoses, admissions and ``MEDS_DEATH`` for subjects with an event.

>>> from core.demo.latents import sample_latents
>>> lat = sample_latents(12, seed=0)
>>> tl = build_timeline(lat, seed=0)
>>> list(tl.columns)
['subject_id', 'time', 'code', 'numeric_value']
>>> int((tl["code"] == "MEDS_BIRTH").sum())
12
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

DAY_NS = 86_400 * 10**9
YEAR_DAYS = 365.25

# condition -> ICD-10 code (what the timeline shows)
DIAGNOSIS = {
    "heart_failure": "I50.9", "copd": "J44.9", "ckd": "N18.3", "diabetes": "E11.9",
    "hypertension": "I10", "hyperlipidemia": "E78.5", "gerd": "K21.9",
    "hypothyroidism": "E03.9", "osteoarthritis": "M19.90",
}
# acute, risk-free diagnoses coded at random visits
NOISE_DIAGNOSES = ("J06.9", "R05", "M54.5", "R07.9", "Z00.00", "N39.0", "J18.9", "Z87.891", "R51", "K59.00")
# condition -> ATC codes of its usual medications
MEDICATIONS = {
    "heart_failure": ("C03CA01", "C07AB07", "C09AA05"),   # furosemide, bisoprolol, ramipril
    "copd": ("R03BB04", "R03AC02"),                       # tiotropium, salbutamol
    "ckd": ("B03BB01",),                                  # folic acid
    "diabetes": ("A10BA02",),                             # metformin
    "hypertension": ("C09AA03", "C08CA01"),               # lisinopril, amlodipine
    "hyperlipidemia": ("C10AA05",),                       # atorvastatin
    "gerd": ("A02BC01",),                                 # omeprazole
    "hypothyroidism": ("H03AA01",),                       # levothyroxine
    "osteoarthritis": ("M01AE01", "N02BE01"),             # ibuprofen, paracetamol
}
# lab name -> (MEDS code, probability of a draw at a visit, relative sd of earlier values)
LABS = {
    "creatinine": ("LAB//creatinine//mg/dL", 0.55, 0.08),
    "bnp": ("LAB//bnp//pg/mL", 0.20, 0.25),
    "albumin": ("LAB//albumin//g/dL", 0.30, 0.05),
    "hemoglobin": ("LAB//hemoglobin//g/dL", 0.50, 0.05),
    "sodium": ("LAB//sodium//mmol/L", 0.55, 0.015),
    "potassium": ("LAB//potassium//mmol/L", 0.50, 0.06),
    "glucose": ("LAB//glucose//mg/dL", 0.50, 0.12),
}
LAB_DECIMALS = {"creatinine": 2, "bnp": 0, "albumin": 1, "hemoglobin": 1, "sodium": 0, "potassium": 1, "glucose": 0}
NOISE_LAB = ("LAB//wbc//K/uL", 0.45)
OUTPATIENT = "OUTPATIENT_VISIT//CLINIC"
ADMISSION = "HOSPITAL_ADMISSION//EMERGENCY"
DISCHARGE = "HOSPITAL_DISCHARGE//HOME"
INDEX_CODE = "IMAGING//CT//CHEST"
NODULE_CODE = "DIAGNOSIS//ICD10//R91.1"      # solitary pulmonary nodule (radiology follow-up)
CANCER_CODE = "DIAGNOSIS//ICD10//C34.90"     # malignant neoplasm of lung
BIOPSY_CODE = "PROCEDURE//LUNG_BIOPSY"
DEATH_CODE = "MEDS_DEATH"

KEY_DIAGNOSES = ("heart_failure", "copd", "ckd", "diabetes", "hypertension", "hyperlipidemia")


def dx_code(icd10: str) -> str:
    return f"DIAGNOSIS//ICD10//{icd10}"


def med_code(atc: str) -> str:
    return f"MEDICATION//ATC//{atc}"


class _Events:
    """Column buffers for one subject's events (times in days from the index date)."""

    def __init__(self) -> None:
        self.days: list[float] = []
        self.codes: list[str] = []
        self.values: list[float] = []

    def add(self, day: float, code: str, value: float = np.nan) -> None:
        self.days.append(day)
        self.codes.append(code)
        self.values.append(value)


def _subject_events(row: pd.Series, rng: np.random.Generator) -> _Events:
    ev = _Events()
    birth_days = (row["birth_time"] - row["index_time"]) / pd.Timedelta(days=1)
    ev.add(birth_days, "MEDS_BIRTH")
    ev.add(birth_days, "GENDER//F" if row["sex_female"] else "GENDER//M")

    conditions = [c for c in DIAGNOSIS if row[c]]
    n_major = sum(int(row[c]) for c in ("heart_failure", "copd", "ckd"))
    lookback = rng.uniform(1.0, 6.0) * YEAR_DAYS
    n_visits = 1 + rng.poisson(2.0 + 1.2 * len(conditions) + 0.6 * lookback / YEAR_DAYS)
    # visits on calendar days before the scan, during clinic hours (08:00-17:00)
    index_time = pd.Timestamp(row["index_time"])
    clock = (index_time - index_time.normalize()) / pd.Timedelta(days=1)
    midnight = np.floor(np.sort(rng.uniform(-lookback, -2.0, n_visits)) + clock) - clock
    visit_days = midnight + rng.uniform(8.0, 17.0, n_visits) / 24.0
    p_admit = 0.10 + 0.07 * n_major
    admitted = rng.random(n_visits) < p_admit
    # onset of each condition: before the window (chronic) or within it, never after the last visit
    onset = {c: min(-rng.uniform(0.1, lookback / YEAR_DAYS + 3.0) * YEAR_DAYS, visit_days[-1]) for c in conditions}
    coded = {c: False for c in conditions}

    for v, day in enumerate(visit_days):
        day = float(day)
        if admitted[v]:
            ev.add(day, ADMISSION)
            los = min(float(rng.integers(1, 9)) + rng.uniform(0, 0.5), -day - 0.2)  # discharged before the scan
            ev.add(day + los, DISCHARGE)
        else:
            ev.add(day, OUTPATIENT)
        for c in conditions:
            if onset[c] <= visit_days[v] and rng.random() < (0.9 if admitted[v] else 0.6):
                ev.add(day + 0.01, dx_code(DIAGNOSIS[c]))
                coded[c] = True
            if onset[c] <= visit_days[v]:
                for atc in MEDICATIONS[c]:
                    if rng.random() < 0.5:
                        ev.add(day + 0.02, med_code(atc))
        if rng.random() < 0.35:
            ev.add(day + 0.01, dx_code(NOISE_DIAGNOSES[rng.integers(len(NOISE_DIAGNOSES))]))
        if not admitted[v]:
            sbp = rng.normal(128.0 + 12.0 * row["hypertension"], 14.0)
            ev.add(day + 0.005, "VITAL//systolic_bp//mmHg", float(round(sbp)))
            ev.add(day + 0.005, "VITAL//heart_rate//bpm", float(round(rng.normal(76.0, 11.0))))
        if rng.random() < NOISE_LAB[1]:
            ev.add(day + 0.03, NOISE_LAB[0], float(round(max(1.5, rng.normal(7.5, 2.2)), 1)))
    # every condition is coded at least once before the index date
    last_day = float(visit_days[-1]) + 0.01
    for c in conditions:
        if not coded[c]:
            ev.add(last_day, dx_code(DIAGNOSIS[c]))

    # labs: the last draw carries exactly the latent value; earlier draws scatter around it
    for name, (code, p_draw, rel_sd) in LABS.items():
        last = row[f"last_{name}"]
        if not np.isfinite(last):
            continue
        p = 0.7 if (name == "bnp" and row["heart_failure"]) else p_draw
        draws = visit_days[rng.random(n_visits) < p]
        if len(draws) == 0:
            draws = visit_days[[rng.integers(n_visits)]]
        for j, day in enumerate(draws):
            t = float(day) + 0.03
            if j == len(draws) - 1:
                value = float(last)
            else:
                years_before = (draws[-1] - day) / YEAR_DAYS
                drift = -0.12 * years_before if (name == "creatinine" and row["ckd"]) else 0.0
                value = float(last) * (1.0 + drift) * float(np.exp(rng.normal(0.0, rel_sd)))
                value = round(max(value, 0.1), LAB_DECIMALS[name])
            ev.add(t, code, value)

    # the scan itself, at the index time
    ev.add(0.0, INDEX_CODE)

    # after the index date: outcome-related events up to the end of follow-up
    end = float(row["time"])
    if row["lesion"]:
        t_nod = rng.uniform(1.0, 14.0)
        if t_nod < end:
            ev.add(t_nod, NODULE_CODE)
        p_cancer = 1.0 / (1.0 + np.exp(-(-0.5 + 0.15 * (row["lesion_radius_mm"] - 13.0) + 1.0 * row["lesion_central"])))
        if rng.random() < p_cancer:
            t_dx = rng.uniform(10.0, 120.0)
            if t_dx < end:
                ev.add(t_dx - rng.uniform(1.0, 7.0), BIOPSY_CODE)
                ev.add(t_dx, CANCER_CODE)
    rate = 0.3 * np.exp(0.5 * row["true_risk"]) / YEAR_DAYS
    n_adm = rng.poisson(rate * end)
    for day in np.sort(rng.uniform(0.5, max(end, 0.6), n_adm)):
        if day >= end:
            continue
        ev.add(float(day), ADMISSION)
        for c in conditions:
            if rng.random() < 0.5:
                ev.add(float(day) + 0.01, dx_code(DIAGNOSIS[c]))
        los = float(rng.integers(1, 9))
        if day + los < end:
            ev.add(float(day) + los, DISCHARGE)
    if row["event"]:
        ev.add(end, DEATH_CODE)
    return ev


def build_timeline(latents: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """MEDS rows (subject_id, time, code, numeric_value) for every subject, sorted by subject and time.

    Each subject draws from its own generator ``(seed, row number)``, so a
    subject's timeline does not depend on the cohort size or order.
    """
    ids: list[np.ndarray] = []
    times: list[np.ndarray] = []
    codes: list[str] = []
    values: list[float] = []
    for i, (_, row) in enumerate(latents.iterrows()):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 1]))
        ev = _subject_events(row, rng)
        index_ns = pd.Timestamp(row["index_time"]).value
        days = np.asarray(ev.days, dtype=float)
        # minute resolution, like most EHR exports
        t_ns = index_ns + np.round(days * 1440.0).astype(np.int64) * 60 * 10**9
        times.append(t_ns)
        ids.append(np.full(len(days), row["subject_id"], dtype=object))
        codes.extend(ev.codes)
        values.extend(ev.values)
    table = pd.DataFrame({
        "subject_id": np.concatenate(ids).astype(str),
        "time": pd.to_datetime(np.concatenate(times)).astype("datetime64[ns]"),
        "code": np.asarray(codes, dtype=object),
        "numeric_value": np.asarray(values, dtype=np.float64),
    })
    order = np.lexsort((table["time"].to_numpy(), table["subject_id"].to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def curate_features(events: pd.DataFrame, index_times: Mapping[str, pd.Timestamp]) -> pd.DataFrame:
    """Curated numeric features per subject from events at or before each subject's index time.

    Columns: subject_id, age (years at index), sex_female, n_visits,
    n_admissions, n_dx_<condition> for the key diagnoses, n_medications
    (distinct), last_<lab> (NaN where never measured), days_since_last_visit.
    """
    ids = [str(s) for s in index_times]
    index = pd.Series({str(k): pd.Timestamp(v) for k, v in index_times.items()}, name="index_time")
    ev = events[events["subject_id"].isin(ids)].copy()
    ev = ev[ev["time"] <= ev["subject_id"].map(index)]
    out = pd.DataFrame(index=pd.Index(ids, name="subject_id"))
    birth = ev[ev["code"] == "MEDS_BIRTH"].groupby("subject_id")["time"].min()
    out["age"] = ((index - birth).dt.total_seconds() / (86400.0 * YEAR_DAYS)).reindex(ids).round(2)
    out["sex_female"] = ev[ev["code"] == "GENDER//F"].groupby("subject_id").size().reindex(ids).fillna(0).clip(upper=1)
    out["n_visits"] = ev[ev["code"].isin([OUTPATIENT, ADMISSION])].groupby("subject_id").size().reindex(ids).fillna(0)
    out["n_admissions"] = ev[ev["code"] == ADMISSION].groupby("subject_id").size().reindex(ids).fillna(0)
    for name in KEY_DIAGNOSES:
        code = dx_code(DIAGNOSIS[name])
        out[f"n_dx_{name}"] = ev[ev["code"] == code].groupby("subject_id").size().reindex(ids).fillna(0)
    meds = ev[ev["code"].str.startswith("MEDICATION//")]
    out["n_medications"] = meds.groupby("subject_id")["code"].nunique().reindex(ids).fillna(0)
    labs = ev[ev["code"].str.startswith("LAB//") & ev["numeric_value"].notna()].sort_values(["subject_id", "time"], kind="stable")
    for name, (code, _, _) in LABS.items():
        out[f"last_{name}"] = labs[labs["code"] == code].groupby("subject_id")["numeric_value"].last().reindex(ids)
    visits = ev[ev["code"].isin([OUTPATIENT, ADMISSION])].groupby("subject_id")["time"].max()
    out["days_since_last_visit"] = ((index - visits).dt.total_seconds() / 86400.0).reindex(ids).round(1)
    return out.reset_index()
