"""On a detector encoder: linear models of the study's detection statistics (and, for the image + EHR strategies,
the tabular features) beside the networks (``core.models.pooling.StudyStats``, ``core.train.image_linear``, settings
``image_only_linear_*`` and ``fusion_linear_*``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _train_small(tmp_path: Path, fusion: str, seed: int, ensemble: int, features: bool = True,
                 **settings: Any) -> tuple[Any, ...]:
    """A tiny detector model on a 32-subject demo (without features.csv: timelines only): (metrics, config.json,
    model card, loaded model, cohort)."""
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.registry import load_model
    from core.train import train_model

    cohort_dir = write_demo_cohort(tmp_path / "cohort", n=32, seed=seed)
    if not features:
        (cohort_dir / "features.csv").unlink()
    small = {"image": {"pretext_steps": 6, "pretext_batch": 4, "epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 8},
             "dim": 16, **settings}
    out = tmp_path / "m"
    metrics = train_model(cohort_dir, fusion, out, epochs=2, device="cpu", image_encoder_kind="detector",
                          overrides=small, ensemble=ensemble)
    cfg = json.loads((out / "config.json").read_text())
    return metrics, cfg, (out / "MODEL_CARD.md").read_text(), load_model(out, device="cpu"), load_cohort(cohort_dir)


def test_study_stats_invert_the_projection_and_ignore_padding_and_absent_studies() -> None:
    import torch

    from core.models.pooling import StudyStats

    rng = np.random.default_rng(0)
    proj = torch.nn.Linear(4, 16).requires_grad_(False)
    stats = torch.from_numpy(rng.normal(size=(3, 8, 4)).astype(np.float32))
    mask = torch.ones(3, 8)
    mask[1, 5:] = 0  # a shorter study, padded
    mask[2] = 0  # no study
    tok = proj(stats).detach()
    tok[1, 5:] = 1e3  # padding slices hold anything: they must not count
    st = StudyStats(4, (1, 3))
    raw = st.raw(tok, mask, proj).numpy()
    for b, n in ((0, 8), (1, 5)):
        s = stats[b, :n].numpy()
        smooth = np.stack([s[max(0, i - 1):i + 2].mean(0) for i in range(n)])
        assert np.allclose(raw[b], np.concatenate([s.max(0), smooth.max(0)]), atol=1e-4)
    assert not raw[2].any()  # no study: 0 (standardised: the training mean)
    assert st.set_scale(tok, mask, proj) == 2
    z = st(tok, mask, proj).numpy()
    assert np.allclose(z[:2].mean(0), 0.0, atol=1e-5) and not z[2].any()
    with pytest.raises(ValueError, match="odd"):
        StudyStats(4, (2,))


def test_settings_check_the_windows_before_anything_runs() -> None:
    from core.errors import InputError
    from core.train.settings import merge_settings

    assert merge_settings(None, None, None, "detector")["image_only_linear_windows"] == [9]
    for bad in ([4], [], "9", [True]):
        with pytest.raises(InputError, match="image_only_linear_windows") as err:
            merge_settings({"image_only_linear_windows": bad}, None, None)
        assert "use e.g. [9]" in str(err.value)


def test_an_image_only_detector_ensemble_gets_linear_members_that_rank_by_the_statistics(tmp_path: Path) -> None:
    import torch
    from scipy.stats import spearmanr

    metrics, cfg, card, model, cohort = _train_small(tmp_path, "image_only", 4, 2)
    assert cfg["image_linear"] == [9] and cfg["ensemble"] == 4
    assert metrics["linear_members"] == {"n": 2, "penalty": 0.3} and metrics["ensemble"] == 4
    lin_info = [m for m in metrics["members"] if m.get("linear")]
    assert len(lin_info) == 2 and all(m["studies"] == metrics["n"]["train"] for m in lin_info)
    assert "2 of the 4 ensemble members are linear models of the study's detection statistics" in card

    nets, lins = list(model.net.members[:2]), list(model.net.members[2:])
    for net in nets:  # the networks carry no linear term
        assert float(net.head.wide.weight.abs().sum()) == 0.0 and float(net.head.linear.weight.abs().sum()) > 0
    for lin in lins:  # the linear members read nothing but the statistics
        assert float(lin.head.linear.weight.abs().sum()) == 0.0
    assert any(float(lin.head.wide.weight.abs().sum()) > 0 for lin in lins)
    # on the saved model: a linear member's risk ranks the subjects exactly by its linear term of the statistics
    ids = cohort.ids()
    inputs = [model.case_inputs(cohort, s) for s in ids]
    with torch.inference_mode():
        batches = [model.encoded_batch(i) for i in inputs]
        lin = next(m for m in lins if float(m.head.wide.weight.abs().sum()) > 0)
        risk = [float(lin(b)["risk"][0]) for b in batches]
        term = [float(lin.head.wide_term(lin._wide_input(b, 1))[0, 0]) for b in batches]
    assert spearmanr(risk, term).statistic > 0.999
    # a case predicts through the whole ensemble
    p = model.predict_case(inputs[0])
    assert np.isfinite(p.survival).all() and p.lower.min() >= 0 and "image" in p.modalities_used


def test_off_for_single_networks_other_strategies_and_encoders_and_by_setting() -> None:
    from core.train.model import _image_linear_windows
    from core.train.settings import merge_settings

    s = merge_settings(None, None, None, "detector")
    det = {"kind": "2d", "pool": "detect"}
    assert _image_linear_windows(s, "image_only", det, 5) == (9,)
    assert _image_linear_windows(s, "image_only", det, 1) == ()
    # the image + EHR strategies: the statistics in the networks' own linear term, also for a single network
    assert _image_linear_windows(s, "concat", det, 5) == (9,) and _image_linear_windows(s, "concat", det, 1) == (9,)
    assert _image_linear_windows(s, "ehr_only", det, 5) == ()
    no_fusion = merge_settings({"fusion_study_stats": False}, None, None, "detector")
    assert _image_linear_windows(no_fusion, "concat", det, 5) == () and _image_linear_windows(no_fusion, "image_only", det, 5) == (9,)
    members = merge_settings({"fusion_study_stats": False, "fusion_linear_members": True}, None, None, "detector")
    assert _image_linear_windows(members, "concat", det, 5) == (9,) and _image_linear_windows(members, "concat", det, 1) == ()
    assert _image_linear_windows(s, "image_only", {"kind": "2d", "pool": "meanmax"}, 5) == ()
    assert _image_linear_windows(s, "image_only", {"kind": "foundation"}, 5) == ()
    off = merge_settings({"image_only_linear_members": False}, None, None, "detector")
    assert _image_linear_windows(off, "image_only", det, 5) == ()


def test_a_fusion_network_reads_the_statistics_beside_the_features_in_its_linear_term(tmp_path: Path) -> None:
    import torch

    metrics, cfg, card, model, cohort = _train_small(tmp_path, "cross_attention", 6, 1)
    assert cfg["image_linear"] == [9] and cfg["ensemble"] == 1 and metrics["linear_members"] is None
    assert "the head adds a linear function of the study's detection statistics (each statistic's mean over 9" in card
    net = model.net
    k = net.study_stats.dim
    assert net.wide_dim == k + net.ehr_wide_dim and net.ehr_wide_dim > 0
    assert float(net.head.wide.weight[0, :k].abs().sum()) > 0  # the statistics are fitted with the features
    assert float(net.study_stats.sd.min()) > 0 and float(net.study_stats.mean.abs().sum()) > 0  # scaled on train
    # the term's penalty was chosen from the default grid by cross-validation on train: the lowest held-out NLL
    from core.train.settings import DEFAULTS

    step = metrics["steps"]["ehr_linear"]
    assert step["cv"]["folds"] >= 2 and len(step["cv"]["cv_nll"]) == len(DEFAULTS["ehr_linear_penalty_cv"])
    assert step["penalty"] in DEFAULTS["ehr_linear_penalty_cv"]
    assert step["cv"]["cv_nll"][str(step["penalty"])] == min(step["cv"]["cv_nll"].values())
    with torch.inference_mode():  # the statistics move the risk: without their weights it changes
        batch = model.encoded_batch(model.case_inputs(cohort, cohort.ids()[0]))
        risk = float(net(batch)["risk"][0])
        w = net.head.wide.weight.detach().clone()
        net.head.wide.weight[0, :k] = 0.0
        risk0 = float(net(batch)["risk"][0])
        net.head.wide.weight.copy_(w)
    assert risk != pytest.approx(risk0, abs=1e-6)


def test_a_fusion_without_tabular_features_fits_the_statistics_alone(tmp_path: Path) -> None:
    metrics, cfg, card, model, _ = _train_small(tmp_path, "concat", 7, 1, features=False)
    net = model.net
    assert cfg["image_linear"] == [9] and net.ehr_wide_dim == 0 and net.wide_dim == net.study_stats.dim
    assert float(net.head.wide.weight.abs().sum()) > 0 and metrics["steps"]["ehr_linear"]["kept"]
    assert "linear function of the study's detection statistics" in card and "tabular features" not in card


def test_a_fusion_ensemble_gets_linear_members_of_the_statistics_and_the_features(tmp_path: Path) -> None:
    import torch

    metrics, cfg, card, model, cohort = _train_small(tmp_path, "concat", 5, 2, fusion_study_stats=False,
                                                     fusion_linear_members=True)
    assert cfg["image_linear"] == [9] and cfg["ensemble"] == 4
    assert metrics["linear_members"] == {"n": 2, "penalty": 1.0}
    assert "detection statistics (each statistic's mean over 9 neighbouring slices" in card
    assert "the scaled tabular features and their missing indicators" in card

    nets, lins = list(model.net.members[:2]), list(model.net.members[2:])
    k = nets[0].study_stats.dim
    n_feat = len(cfg["ehr"]["tabular"]["columns"])
    assert nets[0].wide_dim == k + 2 * n_feat and nets[0].ehr_wide_dim == 2 * n_feat
    for net in nets:  # a network's linear term reads the features only: its weights on the statistics stay 0
        w = net.head.wide.weight.detach()[0]
        assert float(w[:k].abs().sum()) == 0.0 and float(w[k:].abs().sum()) > 0
    for lin in lins:  # a linear member: no network, a term of the statistics and the features
        assert float(lin.head.linear.weight.abs().sum()) == 0.0
    assert any(float(lin.head.wide.weight[0, :k].abs().sum()) > 0 for lin in lins)
    assert any(float(lin.head.wide.weight[0, k:].abs().sum()) > 0 for lin in lins)

    # an uploaded case without EHR: the statistics of its own study, the training mean of the features
    inputs = model.case_inputs(cohort, cohort.ids()[0])
    with torch.inference_mode():
        batch = model.encoded_batch(inputs)
        full = lins[0]._wide_input(batch, 1)
        no_ehr = {key: v for key, v in batch.items() if not key.startswith("feature")}
        bare = lins[0]._wide_input(no_ehr, 1)
    assert torch.allclose(bare[0, :k], full[0, :k]) and torch.allclose(bare[0, k:], lins[0].wide_mean)
    p = model.predict_case(inputs)
    assert np.isfinite(p.survival).all() and "image" in p.modalities_used
