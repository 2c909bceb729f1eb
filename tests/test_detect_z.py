"""A detector's same-position slice windows (``image.detect_z``, ``SliceEncoder2D.z_stats``): per window and channel,
the maximum over positions of the lesion logit averaged over neighbouring slices at the same position. A lesion is a
3D blob that stays in place from slice to slice; noise and most false detections do not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError


def _encoder(detect_z: tuple[int, ...] = (3,)):  # type: ignore[no-untyped-def]
    import torch

    from core.models.image2d import SliceEncoder2D
    from core.preprocess.transforms import ChannelStack, HUWindow

    torch.manual_seed(0)
    stem = ChannelStack(HUWindow(-1000, 1000), ((-160.0, 240.0), (-200.0, 1000.0)), (5,))
    return SliceEncoder2D(16, 32, (4, 8), stem=stem, strides=(2, 1), pool="detect", detect_z=detect_z)


def test_a_blob_that_stays_in_place_outscores_spots_that_move() -> None:
    import torch

    enc = _encoder((3,))
    stay = torch.zeros(1, 7, 2, 4, 4)
    move = torch.zeros(1, 7, 2, 4, 4)
    for z, (r, c) in zip((2, 3, 4), ((1, 1), (1, 1), (1, 1))):
        stay[0, z, 0, r, c] = 3.0
    for z, (r, c) in zip((2, 3, 4), ((0, 0), (2, 3), (3, 1))):
        move[0, z, 0, r, c] = 3.0
    # the per-slice maximum cannot tell them apart ...
    assert torch.equal(stay.amax(dim=(-2, -1)), move.amax(dim=(-2, -1)))
    zs, zm = enc.z_stats(stay)[0, :, 0], enc.z_stats(move)[0, :, 0]  # channel 0, window 3
    # ... the same-position mean over 3 slices can: 3 on the middle slice of the blob, 1 for the moving spots
    assert zs[3].item() == pytest.approx(3.0) and zm.max().item() == pytest.approx(1.0)
    assert enc.z_stats(stay).shape == (1, 7, 2)
    # at the study's ends the window holds fewer slices (mask-aware): slice 0 averages slices 0 and 1
    edge = torch.zeros(1, 7, 2, 4, 4)
    edge[0, :2, 1, 2, 2] = 3.0
    assert enc.z_stats(edge)[0, 0, 1].item() == pytest.approx(3.0)


def test_padding_slices_never_change_a_study_and_the_frozen_statistics_match_the_tokens() -> None:
    import torch

    enc = _encoder((3, 9)).eval()
    assert enc.proj.in_features == 2 * (2 + 2)  # per channel: max logit, soft area, then one per window
    g = torch.Generator().manual_seed(1)
    study = torch.rand(1, 6, 32, 32, generator=g)
    padded = torch.cat([study, torch.full((1, 3, 32, 32), 0.9)], dim=1)  # three bright padding slices
    mask = torch.tensor([[1.0] * 6 + [0.0] * 3])
    with torch.no_grad():
        alone = enc(study)
        inside = enc(padded, mask)[:, :6]
        leaked = enc(padded)[:, :6]  # without the mask the padding reaches the last real slices
        assert torch.allclose(alone, inside, atol=1e-5)
        assert not torch.allclose(alone, leaked, atol=1e-5)
        # what the image stage caches for a frozen trunk, projected, is the token the encoder gives
        assert torch.allclose(enc.proj(enc.slice_stats(padded, mask)), enc(padded, mask), atol=1e-5)


def test_the_study_term_takes_the_windowed_statistics_at_their_study_maximum() -> None:
    import torch

    from core.models.pooling import StudyStats

    enc = _encoder((3,)).eval()
    study = torch.rand(2, 5, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
    st = StudyStats(enc.proj.in_features, (9,), direct=2)
    assert st.dim == 4 * 1 + 2
    with torch.no_grad():
        stats = enc.slice_stats(study, mask)
        raw = st.raw(enc(study, mask), mask, enc.proj)
    for b in range(2):
        n = int(mask[b].sum())
        assert torch.allclose(raw[b, 4:], stats[b, :n, 4:].amax(dim=0), atol=1e-4)  # the direct ones: study max only
        assert torch.allclose(raw[b, :4], stats[b, :n, :4].mean(dim=0), atol=1e-4)  # 9 slices cover every real one
    with pytest.raises(ValueError, match="direct"):
        StudyStats(4, (9,), direct=4)


def test_settings_configs_and_the_explanation_mode() -> None:
    from core.models.config import ImageConfig
    from core.models.pooling import check_detect_z_setting

    base = {"kind": "2d", "out_dim": 8, "size": 32, "channels": [4, 8], "pool": "detect"}
    old = ImageConfig.from_dict(base)
    assert old.detect_z == () and "detect_z" not in old.to_dict()
    assert old.transforms().per_slice  # type: ignore[union-attr]
    new = ImageConfig.from_dict({**base, "detect_z": [3, 9]})
    assert new.detect_z == (3, 9) and ImageConfig.from_dict(new.to_dict()) == new
    # a slice's token now reads its neighbours: explanations go through the whole volume
    assert not new.transforms().per_slice  # type: ignore[union-attr]
    assert check_detect_z_setting([3, 9], "detect") == [3, 9]
    with pytest.raises(InputError, match="image detect_z.*odd"):
        check_detect_z_setting([4], "detect")
    with pytest.raises(InputError, match="image detect_z.*list of whole slice counts"):
        check_detect_z_setting(3, "detect")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="image detect_z.*list of whole slice counts"):
        check_detect_z_setting(["3"], "detect")
    with pytest.raises(InputError, match="image detect_z.*needs the lesion detector"):
        check_detect_z_setting([3], "meanmax")


def test_a_detector_model_with_it_trains_saves_predicts_and_explains(tmp_path: Path) -> None:
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.explain import attribute
    from core.registry import load_model
    from core.train import train_model

    cohort_dir = write_demo_cohort(tmp_path / "cohort", n=32, seed=5)
    small = {"image": {"pretext_steps": 6, "pretext_batch": 4, "epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 8,
                       "detect_z": [3, 9]}, "dim": 16}
    out = tmp_path / "m"
    metrics = train_model(cohort_dir, "image_only", out, epochs=2, device="cpu", image_encoder_kind="detector",
                          overrides=small, ensemble=2)
    assert metrics["test"]["c_index"] is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["image"]["detect_z"] == [3, 9]
    card = (out / "MODEL_CARD.md").read_text()
    assert "averaged at the same position over 3 and 9 neighbouring slices" in card
    model, cohort = load_model(out, device="cpu"), load_cohort(cohort_dir)
    net = model.net.members[0] if hasattr(model.net, "members") else model.net
    assert net.image_encoder.proj.in_features == 8 and net.study_stats is not None and net.study_stats.direct == 4
    inputs = model.case_inputs(cohort, cohort.ids()[0])
    p = model.predict_case(inputs)
    assert np.isfinite(p.survival).all() and "image" in p.modalities_used
    s, r, c = inputs.image.shape[1:]
    # asked for one slice, the explanation covers the whole volume: a slice's token depends on its neighbours
    a = attribute(model, inputs, "detector_ig", 365.0, s // 2, with_events=False)
    assert a.slice_index is None and a.map.shape == (s, r, c) and np.isfinite(a.map).all()
    with pytest.raises(InputError, match="detect_z"):
        train_model(cohort_dir, "image_only", tmp_path / "bad", epochs=1, device="cpu", image_encoder_kind="2d",
                    ensemble=1, overrides={"image": {"detect_z": [3]}})



def test_time_to_event_pretraining_keeps_padding_away_from_a_detect_z_detector() -> None:
    import torch

    from core.models.heads import make_edges
    from core.train.pretrain import PretrainNet

    icfg = {"kind": "2d", "out_dim": 8, "size": 32, "channels": [4, 8], "pool": "detect", "detect_z": [3]}
    edges = make_edges(np.array([10.0, 20.0, 30.0, 40.0]), np.ones(4), 3, extra=())
    torch.manual_seed(0)
    net = PretrainNet(icfg, 16, edges, n_tasks=2).eval()
    study = torch.rand(1, 5, 32, 32, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([study, torch.full((1, 3, 32, 32), 0.9)], dim=1)
    with torch.no_grad():
        alone = net({"image_preprocessed": study, "image_token_mask": torch.ones(1, 5), "image_present": torch.ones(1)})
        mask = torch.tensor([[1.0] * 5 + [0.0] * 3])
        inside = net({"image_preprocessed": padded, "image_token_mask": mask, "image_present": torch.ones(1)})
    assert torch.allclose(alone, inside, atol=1e-5)
