"""A timeline summarised as tabular features, for cohorts without features.csv.

A sequence model reads a subject's last ``max_events`` events: the birth event
(age) and the oldest diagnoses of a long history fall out of that window, and a
few hundred subjects teach it little about counts and last values. Tabular
summaries of the whole pre-index timeline (as MEDS-Tab does: per code a count
and the last value) are the standard strong baseline, and they feed the linear
and forest members that only read tabular features. ``--ehr-encoder summary``
gives a model the events and these summaries as its tabular input (instead of
features.csv); the recipe is fitted on the train split and stored with the model
(``config.json`` ``ehr.tabular.summary``), so training, prediction and an uploaded
timeline (which has no features.csv row) compute the same columns. Opt-in: on the
demo cohort without features.csv it helped ehr_only at 800 subjects and not at
200-400, and on the 100 MIMIC-IV demo patients it did worse (docs/BENCHMARKS.md).

Columns: ``age_years`` (index time - ``MEDS_BIRTH``, when the train split records
births), ``events_log`` (log1p of the number of events), ``days_since_last`` (index
time - the last event), then per recipe code ``count::CODE`` (log1p of its count)
and, for codes that usually carry a value, ``last::CODE`` (its last value; NaN when
the subject has none: a missing indicator). Codes are the ``max_codes`` held by
most train subjects (at least ``min_subjects``); they are the model's own, like its
event vocabulary.

>>> ev = pd.DataFrame({"time": pd.to_datetime(["1960-01-01", "2020-01-01", "2020-02-01"]),
...                    "code": ["MEDS_BIRTH", "LAB//crp", "LAB//crp"], "numeric_value": [np.nan, 3.0, 5.0]})
>>> recipe = fit_recipe([ev, ev], min_subjects=1)
>>> recipe["codes"], recipe["valued"], recipe["birth"]
(['LAB//crp'], ['LAB//crp'], True)
>>> row = summary_row(ev, pd.Timestamp("2020-03-01"), recipe)
>>> round(row["age_years"], 1), round(row["count::LAB//crp"], 4), row["last::LAB//crp"], row["days_since_last"]
(60.2, 1.0986, 5.0, 29.0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

SOURCE = "timeline_summary"
BIRTH_CODE = "MEDS_BIRTH"
MAX_CODES = 64
MIN_CODES = 4
EVENTS_PER_CODE = 5  # a small cohort gets fewer codes: at most one per this many observed train outcomes
MIN_SUBJECTS = 5
VALUED_SHARE = 0.5  # a code whose events carry a number at least this often gets a last-value column


def fit_recipe(train_events: Iterable[pd.DataFrame], *, max_codes: int = MAX_CODES,
               min_subjects: int = MIN_SUBJECTS) -> dict[str, Any]:
    """The summary's codes (held by most train subjects), which of them carry values, and whether births are recorded."""
    holders: Counter[str] = Counter()
    valued: Counter[str] = Counter()
    total: Counter[str] = Counter()
    birth = False
    for ev in train_events:
        if not len(ev):
            continue
        codes = ev["code"].astype(str)
        birth = birth or bool((codes == BIRTH_CODE).any())
        holders.update(set(codes) - {BIRTH_CODE})
        total.update(codes)
        valued.update(codes[pd.to_numeric(ev["numeric_value"], errors="coerce").notna().to_numpy()])
    chosen = [c for c, n in sorted(holders.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_subjects][:max_codes]
    return {"codes": chosen, "valued": [c for c in chosen if valued[c] >= VALUED_SHARE * total[c]], "birth": birth}


def codes_for(n_train_events: int) -> int:
    """How many codes the summary keeps for a train split with this many observed outcomes (each code brings one or
    two columns, and a few hundred columns on a few dozen outcomes only fit noise).

    >>> codes_for(19), codes_for(290), codes_for(5000)
    (4, 58, 64)
    """
    return int(min(MAX_CODES, max(MIN_CODES, int(n_train_events) // EVENTS_PER_CODE)))


def columns(recipe: Mapping[str, Any]) -> list[str]:
    """The summary's column names, in order."""
    head = (["age_years"] if recipe.get("birth") else []) + ["events_log", "days_since_last"]
    return head + [f"count::{c}" for c in recipe["codes"]] + [f"last::{c}" for c in recipe["valued"]]


def summary_row(events: pd.DataFrame, index_time: pd.Timestamp | None, recipe: Mapping[str, Any]) -> dict[str, float]:
    """One subject's summary of ``events`` (at or before the index, as ``Cohort.events`` returns them)."""
    row: dict[str, float] = dict.fromkeys(columns(recipe), np.nan)
    if not len(events):
        return row
    times = pd.to_datetime(events["time"])
    ref = pd.Timestamp(index_time) if index_time is not None and not pd.isna(index_time) else times.max()
    codes = events["code"].astype(str).to_numpy()
    values = pd.to_numeric(events["numeric_value"], errors="coerce").to_numpy(np.float64)
    if recipe.get("birth"):
        birth = times[codes == BIRTH_CODE].dropna()
        if len(birth) and not pd.isna(ref):
            row["age_years"] = (ref - birth.iloc[0]).total_seconds() / (365.25 * 86400.0)
    row["events_log"] = float(np.log1p(int((codes != BIRTH_CODE).sum())))
    last_time = times[codes != BIRTH_CODE].max()
    if not pd.isna(last_time) and not pd.isna(ref):
        row["days_since_last"] = max((ref - last_time).total_seconds() / 86400.0, 0.0)
    counts = Counter(codes)
    for code in recipe["codes"]:
        row[f"count::{code}"] = float(np.log1p(counts.get(code, 0)))
    if recipe["valued"]:  # the last value in time (rows without a time first)
        frame = pd.DataFrame({"code": codes, "value": values, "time": times.to_numpy()})
        frame = frame[np.isfinite(values) & np.isin(codes, recipe["valued"])]
        last = frame.sort_values("time", kind="stable", na_position="first").groupby("code")["value"].last()
        for code, value in last.items():
            row[f"last::{code}"] = float(value)
    return row


def summary_frame(cohort: Any, ids: list[str], recipe: Mapping[str, Any]) -> pd.DataFrame:
    """The summaries of ``ids`` (rows in that order; a ``core.cohort.Cohort``'s pre-index events)."""
    rows = [summary_row(cohort.events(s), cohort.index_time(s), recipe) for s in ids]
    return pd.DataFrame(rows, index=pd.Index([str(s) for s in ids]), columns=columns(recipe), dtype=np.float64)
