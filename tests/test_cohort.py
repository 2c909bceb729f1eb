"""Cohort loading: one validation function, one-line errors naming field, value and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cohort import auto_split, load_cohort, validate_outcomes
from core.errors import InputError


def _write(tmp: Path, table: dict, features: dict | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(tmp / "cohort.csv", index=False)
    if features is not None:
        pd.DataFrame(features).to_csv(tmp / "features.csv", index=False)
    return tmp


GOOD = {"subject_id": [1, 2, 3, 4, 5], "time": [10.0, 20, 30, 40, 50], "event": [1, 0, 1, 0, 1]}


@pytest.mark.parametrize("bad, field, fix", [
    ({"time": [10.0, -1, 30, 40, 50]}, "time: got -1.0 (subject '2')", "correct or drop negative"),
    ({"time": [10.0, np.nan, 30, 40, 50]}, "time: got nan (subject '2')", "correct or drop negative"),
    ({"time": [10.0, np.inf, 30, 40, 50]}, "time: got inf (subject '2')", "correct or drop negative"),
    ({"event": [1, 2, 0, 0, 1]}, "event: got 2 (subject '2')", "recode the event column"),
    ({"event": [0, 0, 0, 0, 0]}, "event: got all 0", "check the event coding"),
    ({"subject_id": [1, 1, 3, 4, 5]}, "subject_id: got '1'", "keep one row per subject"),
    ({"split": ["train", "dev", "test", "val", "train"]}, "split: got 'dev'", "use train, val or test"),
])
def test_bad_outcomes_name_field_and_fix(bad: dict, field: str, fix: str) -> None:
    with pytest.raises(InputError) as err:
        validate_outcomes(pd.DataFrame({**GOOD, **bad}))
    msg = str(err.value)
    assert msg.startswith(field), msg
    assert fix in msg and "\n" not in msg


def test_missing_columns(tmp_path: Path) -> None:
    _write(tmp_path, {"subject_id": [1], "days": [3]})
    with pytest.raises(InputError, match=r"^columns: got time, event, required column\(s\) missing"):
        load_cohort(tmp_path)


def test_no_cohort_csv(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has no cohort.csv; fix: add cohort.csv"):
        load_cohort(tmp_path)


def test_features_ids_must_match(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, {"subject_id": [1, 2, 99, 98], "age": [50, 60, 70, 80]})
    with pytest.raises(InputError) as err:
        load_cohort(tmp_path)
    assert str(err.value).startswith("features.csv subject_id: got '99', '98', 2 id(s) not in cohort.csv")


def test_auto_split_deterministic_and_stratified() -> None:
    ids = [str(i) for i in range(100)]
    event = np.array([i % 2 for i in range(100)])
    a, b = auto_split(ids, event, seed=3), auto_split(ids, event, seed=3)
    assert a == b and a != auto_split(ids, event, seed=4)
    assert a.count("train") == 60 and a.count("val") == 20 and a.count("test") == 20
    assert sum(e for e, s in zip(event, a) if s == "test") == 10


def test_load_cohort_with_features_and_embeddings(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, {"subject_id": [1, 2, 3], "age": [50, None, 70]})
    np.save(tmp_path / "image_embeddings.npy", np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4))
    c = load_cohort(tmp_path)
    assert c.ids() == ["1", "2", "3", "4", "5"]
    assert c.features is not None and np.isnan(c.features.loc["2", "age"])
    assert c.image_embeddings is not None and c.image_embeddings.shape == (5, 12)
    assert c.image_embeddings.attrs["token_shape"] == (3, 4)
    assert set(c.table["split"]) <= {"train", "val", "test"}
    assert c.load_volume("1") is None and len(c.events("1")) == 0
    with pytest.raises(InputError, match="^subject: got nobody, not in cohort.csv"):
        c.row("nobody")


def test_events_stop_at_index_time(tmp_path: Path) -> None:
    _write(tmp_path, {**GOOD, "index_time": ["2020-01-10"] * 5})
    pd.DataFrame({"subject_id": ["1", "1", "1"], "time": pd.to_datetime(["2020-01-01", "2020-01-10", "2020-02-01"]),
                  "code": ["A", "B", "C"], "numeric_value": [1.0, np.nan, 3.0]}).to_parquet(tmp_path / "timeline.parquet")
    c = load_cohort(tmp_path)
    assert c.events("1")["code"].tolist() == ["A", "B"]
