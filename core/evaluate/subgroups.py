"""Performance by subgroup of one feature column: C-index with a bootstrap interval and calibration at the horizons.

The subgroups come from one value per subject (a column of cohort.csv or
features.csv):

- text, or numbers with at most ``max_levels`` distinct values (sex, site,
  a 0/1 flag): one group per value;
- numbers with more distinct values (age, a lab): ``bands`` quantile bands
  (``pandas.qcut``, labelled ``[lo, hi]``);
- a missing value: the group ``missing``.

Each group is scored by :func:`core.evaluate.metrics.survival_metrics` (Harrell's
C with its percentile bootstrap interval, grouped calibration: ICI, E_max,
slope, intercept) and by calibration-in-the-large at each horizon: the mean
predicted risk 1 - S(h) against the Kaplan-Meier risk 1 - KM(h) of the group
with lifelines' 95 % interval. A group where a metric is undefined (no event,
too few subjects) keeps its counts and gets None with a ``note``; a group of fewer than
``MIN_INTERVAL_SUBJECTS`` keeps its C-index without an interval (a bootstrap of 2 subjects gave
"1.000-1.000"), and its note says so.

>>> rng = np.random.default_rng(0)
>>> n = 600; sex = rng.integers(0, 2, n); rate = np.where(sex == 1, 0.004, 0.002) * rng.uniform(0.5, 2, n)
>>> times = np.linspace(5, 900, 90); survival = np.exp(-np.outer(rate, times))
>>> t_true = rng.exponential(1 / rate); c = rng.uniform(0, 1200, n)
>>> time, event = np.minimum(t_true, c), (t_true <= c).astype(int)
>>> tab = subgroup_table(times, survival, time, event, time, event, sex, [365], column="sex", n_boot=50)
>>> [(g["label"], g["n"]) for g in tab["groups"]], tab["kind"]
([('0', 278), ('1', 322)], 'categorical')
>>> all(abs(g["calibration"][365]["predicted"] - g["calibration"][365]["observed"]) < 0.05 for g in tab["groups"])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter

from core.errors import InputError
from core.evaluate.metrics import HORIZONS, survival_at, survival_metrics
from core.evaluate.outcomes import (
    ArrayLike,
    check_horizons,
    check_outcome,
    check_survival,
)

#: numeric columns with more distinct values than this are cut into quantile bands
MAX_LEVELS = 6
#: number of quantile bands for a numeric column
BANDS = 4
#: a text column with more groups than this is refused
MAX_GROUPS = 20
#: a group of fewer subjects gets no bootstrap interval on its C-index (resamples of so few say nothing)
MIN_INTERVAL_SUBJECTS = 10


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def subgroup_labels(values: ArrayLike | pd.Series, max_levels: int = MAX_LEVELS,
                    bands: int = BANDS) -> tuple[np.ndarray, str]:
    """One group label per subject and the kind of grouping (``categorical`` or ``quantile``).

    >>> subgroup_labels([1.0, 0.0, np.nan, 1.0])[0].tolist()
    ['1', '0', 'missing', '1']
    >>> labels, kind = subgroup_labels(np.arange(8.0), bands=2)
    >>> labels.tolist(), kind
    (['[0, 3.5]', '[0, 3.5]', '[0, 3.5]', '[0, 3.5]', '(3.5, 7]', '(3.5, 7]', '(3.5, 7]', '(3.5, 7]'], 'quantile')
    """
    s = pd.Series(values).reset_index(drop=True)
    missing = s.isna()
    num = pd.to_numeric(s, errors="coerce")
    numeric = bool((num.notna() | missing).all()) and bool(num.notna().any())
    labels = pd.Series("missing", index=s.index, dtype=object)
    present = ~missing
    if numeric and num[present].nunique() > max_levels:
        cut = pd.qcut(num[present], q=bands, duplicates="drop")
        for interval in cut.cat.categories:
            left = "[" if interval == cut.cat.categories[0] else "("
            mask = cut == interval
            lo = num[present][mask].min() if left == "[" else interval.left
            labels[mask[mask].index] = f"{left}{_fmt(lo)}, {_fmt(interval.right)}]"
        return labels.to_numpy(dtype=object), "quantile"
    if numeric:
        labels[present] = [_fmt(v) for v in num[present]]
    else:
        labels[present] = s[present].astype(str)
    n_groups = labels.nunique()
    if n_groups > MAX_GROUPS:
        raise InputError("subgroup", f"{n_groups} distinct values", f"has too many groups (at most {MAX_GROUPS})",
                         "pick a column with few categories, or a numeric column (cut into quantile bands)")
    return labels.to_numpy(dtype=object), "categorical"


def readable_label(label: str, labels: Sequence[str]) -> str:
    """A group's label for a table: the groups of a 0/1 column read ``"0 (no)"`` and ``"1 (yes)"``.

    ``labels`` are all the groups of the column; any other column's labels are returned as they are.

    >>> [readable_label(g, ["0", "1", "missing"]) for g in ("0", "1", "missing")]
    ['0 (no)', '1 (yes)', 'missing']
    >>> readable_label("2", ["0", "1", "2"])
    '2'
    """
    if label == "missing" or not set(labels) - {"missing"} <= {"0", "1"}:
        return label
    return f"{label} ({'yes' if label == '1' else 'no'})"


def _order(labels: np.ndarray, kind: str, values: pd.Series) -> list[str]:
    uniq = [u for u in pd.unique(labels) if u != "missing"]
    if kind == "quantile":
        lows = {u: float(pd.to_numeric(values[labels == u]).min()) for u in uniq}
        uniq.sort(key=lambda u: lows[u])
    else:
        num = pd.to_numeric(pd.Series(uniq), errors="coerce")
        uniq = [u for _, u in sorted(zip(num.fillna(np.inf), uniq))] if num.notna().all() else sorted(uniq)
    return uniq + (["missing"] if (labels == "missing").any() else [])


def calibration_in_the_large(predicted_risk: np.ndarray, time: np.ndarray, event: np.ndarray,
                             horizon: float) -> dict | None:
    """Mean predicted risk vs Kaplan-Meier risk 1 - KM(h) with lifelines' 95 % interval; None where the follow-up
    ends censored before the horizon (where it ends with events, KM is 0 and the observed risk 1).

    >>> r = calibration_in_the_large(np.full(4, 0.5), np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 1]), 2.5)
    >>> r["predicted"], round(r["observed"], 6)
    (0.5, 0.25)
    >>> calibration_in_the_large(np.full(3, 0.5), np.array([10.0, 20, 60]), np.array([1, 0, 1]), 65.0)["observed"]
    1.0
    """
    if time.size == 0:
        return None
    kmf = KaplanMeierFitter(alpha=0.05).fit(time, event_observed=event)
    s = float(kmf.survival_function_at_times(horizon).iloc[0])
    if time.max() < horizon and s > 0:
        return None  # follow-up ended (censored) before the horizon
    ci = kmf.confidence_interval_survival_function_
    idx = int(np.searchsorted(ci.index.to_numpy(dtype=float), horizon, side="right") - 1)
    lo_s, hi_s = (float(v) for v in ci.iloc[max(idx, 0)].to_numpy(dtype=float))
    lo_s, hi_s = (0.0 if not np.isfinite(lo_s) else lo_s), (1.0 if not np.isfinite(hi_s) else hi_s)
    return {"predicted": float(predicted_risk.mean()), "observed": 1.0 - s,
            "observed_ci": [1.0 - max(hi_s, s), 1.0 - min(lo_s, s)]}


def subgroup_table(times: ArrayLike, survival: ArrayLike, time: ArrayLike, event: ArrayLike,
                   train_time: ArrayLike, train_event: ArrayLike, values: ArrayLike | pd.Series,
                   horizons: Sequence[float] = HORIZONS, column: str = "", n_boot: int = 200, seed: int = 0,
                   max_levels: int = MAX_LEVELS, bands: int = BANDS) -> dict:
    """Subgroup table of one column: ``{"column", "kind", "groups": [{"label", "n", "events", "c_index",
    "c_index_ci", "calibration": {h: {predicted, observed, observed_ci, ici, e_max, slope, intercept} | None},
    "note"}]}``.

    ``values`` has one entry per subject (in the order of ``time``).
    """
    t, e = check_outcome(time, event, need_event=False)
    grid, s = check_survival(times, survival, t.size)
    hs = check_horizons(horizons)
    vals = pd.Series(values).reset_index(drop=True)
    if len(vals) != t.size:
        raise InputError("subgroup", f"{len(vals)} values", f"must have one value per subject ({t.size})",
                         "pass the column for the evaluated subjects, in their order")
    labels, kind = subgroup_labels(vals, max_levels=max_levels, bands=bands)
    groups = []
    for label in _order(labels, kind, vals):
        idx = np.flatnonzero(labels == label)
        row: dict = {"label": str(label), "n": int(idx.size), "events": int(e[idx].sum()), "c_index": None,
                     "c_index_ci": None, "calibration": {}, "note": None}
        grouped: dict = {}
        try:
            m = survival_metrics(grid, s[idx], t[idx], e[idx], train_time, train_event, horizons=hs,
                                 n_boot=n_boot, seed=seed)
            row["c_index"], row["c_index_ci"] = m["c_index"], m["c_index_ci"]
            if idx.size < MIN_INTERVAL_SUBJECTS:
                row["c_index_ci"] = None
                row["note"] = f"n={idx.size}: too few subjects for a bootstrap interval (at least {MIN_INTERVAL_SUBJECTS})"
            grouped = m["calibration"]
        except InputError as err:  # no event or too few subjects in this group
            row["note"] = str(err)
        for h in hs:
            key = int(h) if float(h).is_integer() else h
            usable = h <= grid[-1] and idx.size > 0
            cal = calibration_in_the_large(1.0 - survival_at(grid, s[idx], [h])[:, 0], t[idx], e[idx], h) \
                if usable else None
            g = grouped.get(key)
            if cal is not None and g is not None:
                cal.update({k: g[k] for k in ("ici", "e_max", "slope", "intercept")})
            row["calibration"][key] = cal
        groups.append(row)
    return {"column": column, "kind": kind, "groups": groups}
