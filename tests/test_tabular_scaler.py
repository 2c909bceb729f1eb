"""The tabular feature scaler: train-split standardisation, missing indicators and, with ``ehr_log_skewed``,
``log1p`` for strongly right-skewed non-negative columns (laboratory values such as BNP, visit counts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.models.ehr_tabular import TabularScaler, skewed_columns


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "bnp": np.exp(rng.normal(5.0, 1.2, n)),          # log-normal laboratory value
        "age": rng.normal(65.0, 10.0, n),                 # symmetric
        "sex_female": rng.integers(0, 2, n).astype(float),  # binary: never logged
        "delta": rng.standard_t(3, n) ** 2 - 0.5,         # skewed but negative values: never logged
    })


def test_only_skewed_non_negative_columns_with_more_than_two_values_are_logged() -> None:
    df = _table(400, 0)
    assert skewed_columns(df) == ["bnp"]
    assert skewed_columns(df[["age", "sex_female"]]) == []
    # a column whose log is no less skewed stays as it is (log1p of near-uniform large values)
    rng = np.random.default_rng(1)
    assert skewed_columns(pd.DataFrame({"u": rng.uniform(1000, 2000, 300)})) == []


def test_the_log_scaler_standardises_log1p_and_round_trips() -> None:
    train = _table(300, 2)
    train.loc[:9, "bnp"] = np.nan
    plain, logged = TabularScaler.fit(train), TabularScaler.fit(train, log_skewed=True)
    assert plain.log == [] and "log" not in plain.to_json()
    assert logged.log == ["bnp"] and TabularScaler.from_json(json.loads(json.dumps(logged.to_json()))) == logged
    x, miss = logged.transform(train)
    j = logged.columns.index("bnp")
    ok = train["bnp"].notna().to_numpy()
    expect = np.log1p(train["bnp"].to_numpy()[ok])
    assert np.allclose(x[ok, j], np.clip((expect - expect.mean()) / expect.std(), -6, 6), atol=1e-5)
    assert abs(float(x[ok, j].mean())) < 1e-5 and miss[:10, j].tolist() == [1.0] * 10 and x[:10, j].tolist() == [0.0] * 10
    # the other columns are scaled exactly as without the option
    assert np.allclose(np.delete(x, j, axis=1), np.delete(plain.transform(train)[0], j, axis=1))
    # a value below the train range (a negative entry) reads as log1p(0), not NaN
    new = pd.DataFrame({"bnp": [-5.0, 0.0], "age": [60.0, 60.0], "sex_female": [1.0, 0.0], "delta": [0.0, 0.0]})
    xn, mn = logged.transform(new)
    assert xn[0, j] == xn[1, j] and mn[:, j].tolist() == [0.0, 0.0]
    # a model folder written before the option (no "log" key) reads as before
    old = {k: v for k, v in plain.to_json().items()}
    assert np.array_equal(TabularScaler.from_json(old).transform(train)[0], plain.transform(train)[0])


def _cohort(folder: Path, n: int = 600, seed: int = 3) -> tuple[Path, float]:
    """Hazard linear in log(BNP) and log(creatinine), as in clinical risk scores, and in age; returns the folder
    and the true risk's C on the test split."""
    from core.evaluate import harrell_c

    rng = np.random.default_rng(seed)
    feats = pd.DataFrame({"bnp": np.exp(rng.normal(5.0, 1.2, n)), "creatinine": np.exp(rng.normal(0.0, 0.6, n)),
                          "age": rng.normal(65.0, 10.0, n), "sex_female": rng.integers(0, 2, n).astype(float)})
    lp = 0.8 * (np.log(feats["bnp"]) - 5.0) + 0.8 * np.log(feats["creatinine"]) + 0.08 * (feats["age"] - 65.0)
    t_event = rng.exponential(1000.0 / np.exp(lp))
    t_cens = rng.uniform(200.0, 3000.0, n)
    ids = [f"s{i:04d}" for i in range(n)]
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 5) + ["test"] * (n - n // 2 - n // 5))
    folder.mkdir(parents=True)
    time, event = np.round(np.minimum(t_event, t_cens), 1), (t_event <= t_cens).astype(int)
    pd.DataFrame({"subject_id": ids, "time": time, "event": event, "split": split}).to_csv(folder / "cohort.csv", index=False)
    feats.insert(0, "subject_id", ids)
    feats.to_csv(folder / "features.csv", index=False)
    test = split == "test"
    return folder, float(harrell_c(time[test], event[test].astype(bool), lp.to_numpy()[test]))


def test_ehr_only_reads_log_normal_laboratory_values_better_on_their_log_scale(tmp_path: Path) -> None:
    from core.train import train_model

    cohort, oracle = _cohort(tmp_path / "cohort")
    c = {}
    for log in (False, True):
        out = tmp_path / f"m{int(log)}"
        metrics = train_model(cohort, "ehr_only", out, epochs=15, device="cpu", ensemble=1,
                              overrides={"ehr_log_skewed": log, "dim": 16})
        c[log] = metrics["test"]["c_index"]
        cfg = json.loads((out / "config.json").read_text())
        card = (out / "MODEL_CARD.md").read_text()
        if log:
            assert cfg["ehr"]["tabular"]["log"] == ["bnp", "creatinine"]
            assert "Read as log(1 + x) before scaling (right-skewed on the train split): tabular features bnp, creatinine." in card
        else:
            assert "log" not in cfg["ehr"]["tabular"] and "log(1 + x)" not in card
    # measured: oracle 0.750, raw scale 0.706, log scale 0.744 (a few extreme values set the raw columns' scale)
    assert c[True] > c[False] + 0.02 and c[True] > oracle - 0.02


def test_the_setting_must_be_a_boolean() -> None:
    from core.errors import InputError
    from core.train.settings import merge_settings

    assert merge_settings(None, None, None)["ehr_log_skewed"] is True
    with pytest.raises(InputError, match="ehr_log_skewed.*must be true or false"):
        merge_settings({"ehr_log_skewed": "no"}, None, None)


def test_timeline_values_of_a_skewed_code_are_read_on_the_log_scale() -> None:
    from core.models.ehr_sequence import EventVocabulary

    rng = np.random.default_rng(4)
    t0 = pd.Timestamp("2020-01-01")
    events = []
    for i in range(60):
        events.append(pd.DataFrame({
            "subject_id": f"s{i}", "time": [t0, t0, t0],
            "code": ["LAB//bnp", "LAB//sodium", "DX//copd"],
            "numeric_value": [float(np.exp(rng.normal(5.0, 1.2))), float(rng.normal(140.0, 3.0)), np.nan]}))
    plain = EventVocabulary.fit(events)
    logged = EventVocabulary.fit(events, log_skewed=True)
    assert plain.log == [] and "log" not in plain.to_json()
    assert logged.log == ["LAB//bnp"] and EventVocabulary.from_json(logged.to_json()) == logged
    bnp = np.array([float(e["numeric_value"].iloc[0]) for e in events])
    arrays, kept = logged.encode(events[0], t0)
    j = list(kept["code"]).index("LAB//bnp")
    expect = (np.log1p(bnp[0]) - np.log1p(bnp).mean()) / np.log1p(bnp).std(ddof=1)
    assert arrays["values"][j] == pytest.approx(expect, abs=1e-5)
    # sodium is scaled as without the option; the code without a value stays missing
    k = list(kept["code"]).index("LAB//sodium")
    assert arrays["values"][k] == pytest.approx(plain.encode(events[0], t0)[0]["values"][k], abs=1e-6)
    assert arrays["value_missing"][list(kept["code"]).index("DX//copd")] == 1.0


def test_an_unknown_codes_value_is_read_as_missing() -> None:
    """A code outside the vocabulary (another site's, or one cut by ``max_codes``) has no value statistics: its
    number was scaled with mean 0 and SD 1 (sodium 140 read as +5 SDs after clipping); it is now missing."""
    from core.models.ehr_sequence import UNK, EventVocabulary

    t0 = pd.Timestamp("2020-01-01")
    train = [pd.DataFrame({"subject_id": f"s{i}", "time": [t0], "code": ["LAB//sodium"], "numeric_value": [138.0 + i]})
             for i in range(5)]
    vocab = EventVocabulary.fit(train)
    case = pd.DataFrame({"subject_id": "x", "time": [t0, t0], "code": ["LAB//sodium", "LAB//50983//mEq/L"],
                         "numeric_value": [140.0, 140.0]})
    arrays, kept = vocab.encode(case, t0)
    unknown = list(kept["code"]).index("LAB//50983//mEq/L")
    known = 1 - unknown
    assert arrays["codes"][unknown] == UNK and arrays["values"][unknown] == 0.0
    assert arrays["value_missing"][unknown] == 1.0 and arrays["value_missing"][known] == 0.0
    assert arrays["values"][known] == pytest.approx((140.0 - 140.0) / np.std([138, 139, 140, 141, 142], ddof=1))


def test_the_log_scaler_reads_a_frame_under_pandas_copy_on_write() -> None:
    """pandas 3 (and 2.x with copy-on-write on) hands out read-only arrays; the scaler writes the log into its own copy.
    Seen on a machine with pandas 3.0.6: every strategy that reads features stopped with 'assignment destination is
    read-only'."""
    train = _table(200, 4)
    scaler = TabularScaler.fit(train, log_skewed=True)
    expected = scaler.transform(train)
    if int(pd.__version__.split(".")[0]) >= 3:
        got = scaler.transform(train)
    else:
        with pd.option_context("mode.copy_on_write", True):
            frame = train.copy()
            got = scaler.transform(frame)
            assert train["bnp"].to_numpy().tolist() == frame["bnp"].to_numpy().tolist()  # the caller's frame is untouched
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
