"""The exported random survival forest (core.models.forest) and the ehr_only forest member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.models.forest import SurvivalForest
from core.train.ehr import export_forest


def _rsf_data(n: int = 300, f: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    hazard = np.exp(0.9 * x[:, 0] - 0.6 * (x[:, 1] > 0.3) + 0.5 * x[:, 2] ** 2)
    t = rng.exponential(1.0 / hazard) * 100.0
    c = rng.exponential(150.0, size=n)
    return x, np.minimum(t, c), t <= c


def test_export_equals_scikit_survival_on_held_out_rows() -> None:
    from sksurv.ensemble import RandomSurvivalForest
    from sksurv.util import Surv

    x, t, e = _rsf_data()
    rsf = RandomSurvivalForest(n_estimators=25, min_samples_leaf=8, max_features="sqrt", random_state=3, n_jobs=1)
    rsf.fit(x[:200], Surv.from_arrays(e[:200], t[:200]))
    times = rsf.unique_times_
    grid = np.concatenate([[0.0], np.quantile(times, [0.1, 0.3, 0.5, 0.7, 0.9]), [times[-1]]])
    state = export_forest(rsf, grid)
    forest = SurvivalForest(state["left"].numel(), state["roots"].numel(), state["leaf_survival"].shape[0], len(grid))
    forest.load_state_dict(state)
    held_out = x[200:]
    ours = forest(torch.as_tensor(held_out)).numpy()
    fns = rsf.predict_survival_function(held_out)
    theirs = np.stack([np.where(grid < fn.x[0], 1.0, fn(np.clip(grid, fn.x[0], fn.x[-1]))) for fn in fns])
    assert ours.shape == (100, len(grid))
    assert np.abs(ours - theirs).max() < 1e-6
    assert ours[:, 0].min() == 1.0 and ours[:, -1].std() > 0.02  # curves differ between subjects
    # rows that differ only at a threshold still go the way scikit-learn sends them
    leaves = forest.leaves(torch.as_tensor(held_out)).numpy()
    offsets = state["roots"].numpy()
    sk = np.stack([est.apply(held_out) for est in rsf.estimators_], axis=1) + offsets[None, :]
    np.testing.assert_array_equal(leaves, sk)


def _tabular_cohort(root: Path, n: int = 240, seed: int = 1) -> Path:
    x, t, e = _rsf_data(n, 5, seed)
    x[::7, 3] = np.nan
    ids = [f"S{i:03d}" for i in range(n)]
    split = np.array(["train"] * int(0.6 * n) + ["val"] * int(0.2 * n) + ["test"] * (n - int(0.6 * n) - int(0.2 * n)))
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"subject_id": ids, "time": np.round(t, 2) + 0.01, "event": e.astype(int), "split": split}).to_csv(root / "cohort.csv", index=False)
    feats = pd.DataFrame(x, columns=[f"f{j}" for j in range(5)])
    feats.insert(0, "subject_id", ids)
    feats.to_csv(root / "features.csv", index=False)
    return root


@pytest.fixture(scope="module")
def forest_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from core.train import train_model

    tmp = tmp_path_factory.mktemp("forest")
    cohort = _tabular_cohort(tmp / "cohort")
    metrics = train_model(cohort, "ehr_only", tmp / "model", epochs=3, ensemble=2, seed=0, device="cpu")
    return cohort, tmp / "model", metrics


def test_ehr_only_model_carries_the_forest_and_reloads_it(forest_model: tuple[Path, Path, dict]) -> None:
    import json

    from core.cohort import load_cohort
    from core.inputs import ehr_arrays
    from core.registry import load_model

    cohort_dir, model_dir, metrics = forest_model
    info = metrics["forest_member"]
    assert info["weight"] == 0.2 and info["trees"] == 200 and info["nodes"] > 200 and 0 < info["mb"] < 5
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["forest"]["leaves"] == info["leaves"]
    assert "random survival forest" in (model_dir / "MODEL_CARD.md").read_text()
    loaded = load_model(model_dir)
    net = loaded.net
    assert net.forest is not None and net.forest_weight == 0.2
    cohort = load_cohort(cohort_dir)
    ids = cohort.ids("test")
    batch = {k: torch.as_tensor(v) for k, v in ehr_arrays(cohort, ids, loaded.config.ehr).items()}
    with torch.no_grad():
        out = net(batch)
        members = torch.stack([m(batch)["survival"] for m in net.members]).mean(0)
        sf = net.forest(torch.cat([batch["features"], batch["feature_missing"]], -1))
    assert torch.allclose(out["survival"], 0.8 * members + 0.2 * sf, atol=1e-6)
    assert (out["survival"] - members).abs().max() > 1e-3  # the forest moves the curve
    assert out["member_survival"].shape[0] == len(net.members) + 1
    edges = torch.as_tensor(loaded.config.edges, dtype=torch.float32)
    rmst = torch.trapezoid(out["survival"], edges, dim=-1)
    assert torch.allclose(out["risk"], 1 - rmst / edges[-1], atol=1e-5)  # risk follows the blended curve
    # a subject without features keeps the members' curve (the forest would only see missing indicators)
    absent = dict(batch, features_present=torch.zeros(len(ids)))
    with torch.no_grad():
        out0 = net(absent)
        # ... of its networks: the linear members (features alone) are left out too
        networks = [m for m, only in zip(net.members, net.feature_only_members()) if not only]
        members0 = torch.stack([m(absent)["survival"] for m in networks]).mean(0)
    assert 0 < len(networks) < len(net.members)
    assert torch.allclose(out0["survival"], members0, atol=1e-6)


def test_forest_weight_zero_trains_without_forest(tmp_path: Path) -> None:
    from core.train import train_model

    cohort = _tabular_cohort(tmp_path / "cohort", n=150, seed=2)
    metrics = train_model(cohort, "ehr_only", None, epochs=2, ensemble=2, seed=0, device="cpu",
                          overrides={"ehr_only_forest_weight": 0.0})
    assert metrics["forest_member"] is None


def test_no_forest_beside_a_timeline(tmp_path: Path) -> None:
    """The forest reads only the tabular features: a model that also reads a timeline gets the linear members only."""
    from core.train import train_model

    cohort = _tabular_cohort(tmp_path / "cohort", n=150, seed=3)
    ids = pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})["subject_id"]
    rng = np.random.default_rng(0)
    rows = [(s, f"2020-01-{d:02d}", f"LAB//{c}", float(rng.normal())) for s in ids for d, c in ((1, "A"), (3, "B"))]
    pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"]).to_csv(cohort / "timeline.csv", index=False)
    metrics = train_model(cohort, "ehr_only", None, epochs=2, ensemble=2, seed=0, device="cpu")
    assert metrics["modalities"]["ehr"] == ["sequence", "tabular"]
    assert metrics["linear_members"] == {"n": 2, "penalty": 0.3} and metrics["forest_member"] is None
