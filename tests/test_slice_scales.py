"""Slice context along the scan axis (``image.z_scales``, ``core.models.pooling.SliceScales``): each slice token plus
learnt maps of the mean token over windows of neighbouring slices, before the token projection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_window_mean_follows_the_mask_and_stays_local() -> None:
    import torch

    from core.models.pooling import SliceScales, window_mean

    rng = np.random.default_rng(0)
    tok = torch.from_numpy(rng.normal(size=(2, 7, 3)).astype(np.float32))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    got = window_mean(tok, mask, 3).numpy()
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(n):  # the mean of the present neighbours within one slice, fewer at the ends
            lo, hi = max(0, i - 1), min(n, i + 2)
            assert np.allclose(got[b, i], tok[b, lo:hi].numpy().mean(0), atol=1e-5)
    # padding slices never leak into the real ones: changing them changes nothing there
    padded = tok.clone()
    padded[1, 5:] = 100.0
    assert torch.allclose(window_mean(padded, mask, 3)[1, :5], window_mean(tok, mask, 3)[1, :5])
    with pytest.raises(ValueError, match="odd"):
        window_mean(tok, mask, 4)
    with pytest.raises(ValueError, match="odd widths >= 3"):
        SliceScales(3, (1,))

    sc = SliceScales(3, (3,))
    assert torch.equal(sc(tok, mask), tok)  # untrained: the tokens as they are (old behaviour)
    torch.nn.init.eye_(sc.mix[0].weight)
    moved = tok.clone()
    moved[0, 3] += 1.0
    diff = (sc(moved, mask) - sc(tok, mask)).abs().sum(-1)[0]
    assert diff[2:5].min() > 0 and diff[[0, 1, 5, 6]].max() == 0  # a slice reaches its neighbours only


def test_old_configs_load_without_it_and_new_ones_round_trip() -> None:
    from core.models.config import ImageConfig

    old = ImageConfig.from_dict({"kind": "2d", "out_dim": 8, "size": 16, "channels": [4]})
    assert old.z_scales == () and "z_scales" not in old.to_dict()
    new = ImageConfig.from_dict({"kind": "2d", "out_dim": 8, "size": 16, "channels": [4], "z_scales": [3, 9]})
    assert new.z_scales == (3, 9) and ImageConfig.from_dict(new.to_dict()) == new
    assert ImageConfig.from_dict({"kind": "3d", "grid": [4, 8, 8], "z_scales": [3]}).z_scales == ()


def test_a_model_trained_with_slice_context_saves_predicts_and_explains(tmp_path: Path) -> None:
    import json

    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.errors import InputError
    from core.explain import attribute
    from core.registry import load_model
    from core.train import train_model

    cohort_dir = write_demo_cohort(tmp_path / "cohort", n=24, seed=3)
    out = tmp_path / "model"
    # features kept in every batch: with them hidden (the default since session 41) this 24-subject, 2-epoch model's
    # linear EHR term took the risk over (the network's scale fitted to 0), so no gradient reached a slice
    tiny = {"dim": 16, "image": {"epochs": 2, "size": 32, "channels": [4, 8, 8], "batch_size": 8, "z_scales": [3]},
            "feature_dropout": 0}
    metrics = train_model(cohort_dir, "concat", out, epochs=2, device="cpu", image_encoder_kind="2d", ensemble=1,
                          overrides=tiny)
    assert metrics["test"]["c_index"] is not None
    assert json.loads((out / "config.json").read_text())["image"]["z_scales"] == [3]
    assert "Slice context: each slice token plus learnt maps of the mean token over windows of 3 neighbouring" in (out / "MODEL_CARD.md").read_text()
    model, cohort = load_model(out, device="cpu"), load_cohort(cohort_dir)
    net = model.net.members[0] if hasattr(model.net, "members") else model.net
    assert net.slice_scales is not None and float(net.slice_scales.mix[0].weight.abs().sum()) > 0  # it learnt
    sid = cohort.ids()[0]
    inputs = model.case_inputs(cohort, sid)
    p = model.predict_case(inputs)
    assert np.isfinite(p.survival).all() and "image" in p.modalities_used
    # a per-slice map: the slice's token is replaced among the fixed others, so its neighbours' context follows it
    s, r, c = inputs.image.shape[1:]
    k = s // 2
    a = attribute(model, inputs, "saliency", 365.0, k, with_events=False).map
    assert a.shape == (s, r, c) and np.abs(a[k]).sum() > 0 and not np.delete(a, k, axis=0).any()
    whole = attribute(model, inputs, "saliency", 365.0, None, with_events=False).map
    assert np.allclose(a[k], whole[k], rtol=1e-3, atol=1e-6 * float(np.abs(whole).max()))
    with pytest.raises(InputError, match="z_scales"):
        train_model(cohort_dir, "image_only", tmp_path / "bad", epochs=1, device="cpu", image_encoder_kind="2d",
                    ensemble=1, overrides={"image": {"z_scales": [2]}})
