"""The case prediction cache (core.predict.PredictionCache) and the reference curves kept on disk: a cached
result equals a fresh one, and it is not used when the model, the case or its index date changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import predict
from core.app import demo_install, reference
from core.cohort import load_cohort, uploaded_case_cohort
from core.horizons import HORIZONS
from tests.test_app import build_test_demo, using_data_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with using_data_dir(build_test_demo(tmp_path_factory)) as base:
        yield base


def _fresh(model: object, cohort: object, sid: str) -> tuple[object, pd.DataFrame]:
    inputs = model.case_inputs(cohort, sid)  # type: ignore[attr-defined]
    return model.predict_case(inputs, HORIZONS), inputs.events  # type: ignore[attr-defined]


def _key(model_dir: Path, cohort: object, sid: str) -> str:
    volume = cohort.load_volume(sid)  # type: ignore[attr-defined]
    digest = predict.case_digest(cohort, sid, volume)  # type: ignore[arg-type]
    return predict.PredictionCache.key(predict.model_fingerprint(model_dir), digest,
                                       cohort.index_time(sid), HORIZONS)  # type: ignore[attr-defined]


def _assert_same(a: object, b: object) -> None:
    for name in ("times", "survival", "lower", "upper", "slice_weights", "event_weights"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert a.risk == b.risk and a.risk_at == b.risk_at and a.modalities_used == b.modalities_used  # type: ignore[attr-defined]
    assert sorted(a.attention) == sorted(b.attention)  # type: ignore[attr-defined]
    for k in a.attention:  # type: ignore[attr-defined]
        np.testing.assert_array_equal(a.attention[k], b.attention[k])  # type: ignore[attr-defined]


@pytest.mark.parametrize("fusion", ["ehr_only", demo_install.DEFAULT_FUSION])
def test_a_cached_prediction_equals_a_fresh_one(demo: Path, tmp_path: Path, fusion: str) -> None:
    from core.registry import load_model

    paths = demo_install.demo_paths(demo)
    cohort = load_cohort(paths.cohort)
    model = load_model(paths.models / fusion)
    sid = cohort.ids("test")[0]
    cache = predict.PredictionCache(tmp_path / "cache")
    key = _key(paths.models / fusion, cohort, sid)
    calls: list[int] = []

    def fresh() -> tuple[object, pd.DataFrame]:
        calls.append(1)
        return _fresh(model, cohort, sid)

    first = cache.case(key, fresh)
    again = cache.case(key, fresh)  # read back from disk: no model call
    assert calls == [1] and (tmp_path / "cache" / f"{key}.npz").is_file()
    pred, events = _fresh(model, cohort, sid)
    _assert_same(again.prediction, pred)
    _assert_same(first.prediction, again.prediction)
    assert len(events) > 0 and len(again.events) == len(events)
    pd.testing.assert_frame_equal(again.events, events)
    # values derived from the prediction are kept beside it, computed once
    seen: list[int] = []
    assert cache.derived(key, "bound", lambda: seen.append(1) or [12.5, 1825.0]) == [12.5, 1825.0]
    assert cache.derived(key, "bound", lambda: seen.append(1) or [0.0, 0.0]) == [12.5, 1825.0] and seen == [1]


def test_the_key_changes_with_the_model_the_case_and_the_index_date(demo: Path, tmp_path: Path) -> None:
    import shutil

    paths = demo_install.demo_paths(demo)
    cohort = load_cohort(paths.cohort)
    sid, other = cohort.ids("test")[:2]
    model_dir = tmp_path / "model"
    shutil.copytree(paths.models / "ehr_only", model_dir)
    base = _key(model_dir, cohort, sid)
    assert _key(model_dir, cohort, sid) == base
    assert _key(model_dir, cohort, other) != base
    # retrained in place (new weights): another key; the app's caches written beside it: the same key
    (model_dir / "reference_curves.json").write_text("{}")
    assert _key(model_dir, cohort, sid) == base
    weights = next(model_dir.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    retrained = _key(model_dir, cohort, sid)
    assert retrained != base
    # the same CT and events as an uploaded case: another index date, or one event less, is another key
    volume = cohort.load_volume(sid)
    events = cohort.events(sid)
    index = cohort.index_time(sid)
    case = uploaded_case_cohort(tmp_path, volume=volume, events=events, index_time=index)
    fp = predict.model_fingerprint(model_dir)
    keys = {predict.PredictionCache.key(fp, predict.case_digest(c, "uploaded-case", volume), c.index_time("uploaded-case"))
            for c in (case,
                      uploaded_case_cohort(tmp_path, volume=volume, events=events, index_time=index + pd.Timedelta(days=1)),
                      uploaded_case_cohort(tmp_path, volume=volume, events=events.iloc[:-1], index_time=index))}
    assert len(keys) == 3
    # a different CT (one voxel) is another case
    changed = type(volume)(**{**vars(volume), "hu": volume.hu.copy()})
    changed.hu[0, 0, 0] += 1.0
    assert predict.case_digest(cohort, sid, changed) != predict.case_digest(cohort, sid, volume)


def test_the_cache_is_bounded_and_drops_torn_files(demo: Path, tmp_path: Path) -> None:
    from core.registry import load_model

    paths = demo_install.demo_paths(demo)
    cohort = load_cohort(paths.cohort)
    model = load_model(paths.models / "ehr_only")
    cache = predict.PredictionCache(tmp_path / "cache", max_entries=2)
    ids = cohort.ids("test")[:3]
    keys = [_key(paths.models / "ehr_only", cohort, sid) for sid in ids]
    for i, (key, sid) in enumerate(zip(keys, ids)):
        cache.case(key, lambda sid=sid: _fresh(model, cohort, sid))
        path = tmp_path / "cache" / f"{key}.npz"
        os.utime(path, ns=(10**18 + i * 10**9,) * 2)  # distinct use times, oldest first
        if i == 1:
            assert cache.get(keys[0]) is not None  # the first is used again: the second is now the oldest
    assert sorted(p.stem for p in (tmp_path / "cache").glob("*.npz")) == sorted([keys[0], keys[2]])
    torn = tmp_path / "cache" / f"{keys[2]}.npz"
    torn.write_bytes(torn.read_bytes()[:100])
    assert cache.get(keys[2]) is None and not torn.exists()
    with pytest.raises(ValueError, match="prediction cache"):
        predict.PredictionCache(tmp_path, max_entries=0)


def test_reference_curves_are_read_back_without_the_model(demo: Path, tmp_path: Path) -> None:
    from core.registry import load_model

    paths = demo_install.demo_paths(demo)
    cohort = load_cohort(paths.cohort)
    model = load_model(paths.models / "ehr_only")
    ids = reference.reference_ids(cohort)
    cache = tmp_path / "reference_predictions.npz"
    first = reference.reference_curves(model, cohort, ids, cache=cache)
    assert (tmp_path / "reference_curves.json").is_file()

    def no_model() -> object:
        raise AssertionError("the model was loaded although its predictions are on disk")

    again = reference.reference_curves(no_model, cohort, ids, cache=cache)
    assert again["n"] == first["n"] and again["events"] == first["events"] and again["logrank_p"] == first["logrank_p"]
    np.testing.assert_array_equal(again["risk"], first["risk"])
    for a, b in zip(again["cohort_km"], first["cohort_km"]):
        np.testing.assert_array_equal(a, b)
    assert [g["label"] for g in again["groups"]] == [g["label"] for g in first["groups"]]
    for ga, gb in zip(again["groups"], first["groups"]):
        assert ga["risk_range"] == gb["risk_range"] and ga["n"] == gb["n"]
        np.testing.assert_array_equal(ga["s"], gb["s"])
    pred = model.predict_case(model.case_inputs(cohort, ids[0]))
    risk = reference.prediction_risk(pred)
    assert reference.risk_group_of(pred, again["groups"], risk=risk)["label"] == reference.risk_group_of(pred, first["groups"])["label"]
    # other outcomes (or other ids): computed again, not read back
    fewer = reference.reference_curves(model, cohort, ids[:-1], cache=cache)
    assert fewer["n"] == len(ids) - 1
