"""Harrell's C patient by patient (core.evaluate.patient_pairs): every pair counted as scikit-survival counts it."""

from __future__ import annotations

import numpy as np
import pytest

from core.evaluate import harrell_c
from core.evaluate.patient_pairs import patient_concordance


def _brute(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair looked at: i had the event first (or at j's censoring time), concordant when r_i > r_j."""
    n = len(t)
    conc, comp = np.zeros(n), np.zeros(n)
    for i in range(n):
        for j in range(n):
            if e[i] and (t[i] < t[j] or (t[i] == t[j] and not e[j])):
                c = 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
                comp[[i, j]] += 1
                conc[[i, j]] += c
    return conc, comp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_patients_pairs_match_a_brute_count_and_sum_to_harrells_c(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    t = rng.integers(1, 40, n).astype(float)  # many tied times
    e = (rng.random(n) < 0.6).astype(int)
    r = np.round(rng.normal(size=n), 1)  # tied risks
    conc, comp = patient_concordance(t, e, r)
    want_conc, want_comp = _brute(t, e, r)
    np.testing.assert_array_equal(comp, want_comp)
    np.testing.assert_allclose(conc, want_conc)
    assert conc.sum() / comp.sum() == pytest.approx(harrell_c(t, e, r), abs=1e-12)


def test_the_patient_the_model_ranks_worst_is_the_one_it_orders_wrong() -> None:
    """Risk follows the event time except for one early death ranked lowest: that patient's share is the lowest."""
    t = np.arange(1.0, 21.0)
    e = np.ones(20, dtype=int)
    r = -t.copy()
    r[2] = -100.0  # died third, ranked as the longest survivor
    conc, comp = patient_concordance(t, e, r)
    share = conc / comp
    assert int(np.argmin(share)) == 2 and share[2] == pytest.approx(2 / 19)
    assert np.all(np.delete(share, 2) > 0.9)


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="^risk: got 2 values, must have one value per subject"):
        patient_concordance([1, 2, 3], [1, 0, 1], [0.1, 0.2])


def test_the_table_lists_every_patient_worst_ordered_first_and_sums_to_harrells_c() -> None:
    from core.evaluate.patient_pairs import patient_table

    rng = np.random.default_rng(3)
    n = 60
    t = rng.exponential(300, n).round() + 2
    e = (rng.random(n) < 0.7).astype(int)
    r = -t + rng.normal(0, 150, n)
    r[5] = r.min() - 1  # a patient the model ranks as the longest survivor
    t[5], e[5] = 1.0, 1  # who died first: every one of its pairs is ordered wrong
    ids = [f"P{i:03d}" for i in range(n)]
    table = patient_table(ids, t, e, r)
    assert sorted(table["subject_id"]) == ids and table["n"].eq(n).all()
    assert table.iloc[0]["subject_id"] == "P005" and table.iloc[0]["share"] == 0.0
    assert table.iloc[0]["comparable"] == n - 1 and table.iloc[0]["rank"] == n  # ranked lowest of all
    shares = table["share"].dropna().to_numpy()
    assert np.all(np.diff(shares) >= 0)  # worst first
    assert table["concordant"].sum() / table["comparable"].sum() == pytest.approx(harrell_c(t, e, r), abs=1e-12)
    row = table.set_index("subject_id").loc["P010"]
    assert (row["time"], row["event"], row["risk"]) == (t[10], e[10], r[10])  # each row keeps its own patient's values
    with pytest.raises(ValueError, match="^ids: 2 ids for 60 patients"):
        patient_table(ids[:2], t, e, r)
