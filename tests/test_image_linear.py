"""image_only on a detector encoder: linear models of the study's detection statistics beside the networks
(``core.models.pooling.StudyStats``, ``core.train.image_linear``, settings ``image_only_linear_*``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


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

    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.registry import load_model
    from core.train import train_model

    cohort_dir = write_demo_cohort(tmp_path / "cohort", n=32, seed=4)
    small = {"image": {"pretext_steps": 6, "pretext_batch": 4, "epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 8},
             "dim": 16}
    out = tmp_path / "m"
    metrics = train_model(cohort_dir, "image_only", out, epochs=2, device="cpu", image_encoder_kind="detector",
                          overrides=small, ensemble=2)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["image_linear"] == [9] and cfg["ensemble"] == 4
    assert metrics["linear_members"] == {"n": 2, "penalty": 0.3} and metrics["ensemble"] == 4
    lin_info = [m for m in metrics["members"] if m.get("linear")]
    assert len(lin_info) == 2 and all(m["studies"] == metrics["n"]["train"] for m in lin_info)
    card = (out / "MODEL_CARD.md").read_text()
    assert "2 of the 4 ensemble members are linear models of the study's detection statistics" in card

    model, cohort = load_model(out, device="cpu"), load_cohort(cohort_dir)
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
    assert _image_linear_windows(s, "concat", det, 5) == ()
    assert _image_linear_windows(s, "image_only", {"kind": "2d", "pool": "meanmax"}, 5) == ()
    assert _image_linear_windows(s, "image_only", {"kind": "foundation"}, 5) == ()
    off = merge_settings({"image_only_linear_members": False}, None, None, "detector")
    assert _image_linear_windows(off, "image_only", det, 5) == ()
