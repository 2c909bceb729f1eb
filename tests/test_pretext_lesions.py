"""core.train.pretext_lesions: the synthetic-lesion prior, the detector pretext, and stage A with a frozen trunk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import InputError
from core.models.image2d import SliceEncoder2D
from core.preprocess.transforms import ChannelStack, HUWindow
from core.train.pretext_lesions import LesionPrior, freeze_detector, insert_synthetic_lesions, lesion_alpha, pretrain_detector


def _tissue(n: int, size: int, seed: int) -> torch.Tensor:
    """Slices of smooth random 'tissue' (40 +- 15 HU) inside a disc of body, air outside, in HUWindow(-1000, 1000) units."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size, size, generator=g), 5, stride=1, padding=2)[:, 0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    body = (yy ** 2 + xx ** 2) < 0.8
    return torch.where(body, 0.04 + 0.015 * noise / noise.std(), torch.full_like(noise, -1.0))


def test_prior_draws_both_signs_every_shape_and_a_broad_size_range() -> None:
    rng = np.random.default_rng(0)
    x = _tissue(200, 48, 0)
    y, t = insert_synthetic_lesions(x, rng, LesionPrior(p_lesion=1.0, max_lesions=1), 1000.0, 0.0)
    dark, bright = t[:, 0].sum(dim=(1, 2)) > 0, t[:, 1].sum(dim=(1, 2)) > 0
    assert 60 < int(dark.sum()) < 140 and 60 < int(bright.sum()) < 140  # both signs, about half each
    # a darker lesion lowers the slice inside its label, a brighter one raises it
    diff = y - x
    assert float((diff * t[:, 0]).sum()) < 0 and float((diff * t[:, 1]).sum()) > 0
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    areas = t.sum(dim=(1, 2, 3))[dark | bright]
    assert float(areas.min()) <= 6 and float(areas.max()) >= 120  # from a few pixels to large blobs
    # lesions are centred in the body (above -300 HU): few labels lie mostly in the air around it (at the body's edge)
    in_air = [float((x[i][t[i].amax(0) > 0] < -0.3).float().mean()) for i in range(len(t)) if t[i].any()]
    assert np.mean(np.array(in_air) > 0.5) < 0.1 and np.median(in_air) == 0.0


def test_lesion_shapes_differ() -> None:
    prior = LesionPrior(radius_px=(6.0, 6.0), edge_px=(0.2, 0.2), texture=(0.0, 0.0))
    masks = [lesion_alpha(np.random.default_rng(s), prior, (40, 40), (20.0, 20.0))[1] for s in range(12)]
    areas = sorted(int(m.sum()) for m in masks)
    assert areas[-1] - areas[0] > 20  # aspect, lobes and irregular outlines change the area at one radius
    with pytest.raises(InputError, match="pretext_prior"):
        LesionPrior.from_dict({"radius": [1, 2]})


def _detector(size: int) -> SliceEncoder2D:
    stem = ChannelStack(HUWindow(-1000, 1000), ((-160.0, 240.0), (-200.0, 1000.0)), (5,))
    return SliceEncoder2D(8, size, (8, 16, 16), stem=stem, strides=(2, 1, 1), pool="detect")


def test_pretext_teaches_the_detector_synthetic_lesions_on_held_out_slices() -> None:
    torch.manual_seed(0)
    x = _tissue(40, 32, 1).reshape(20, 2, 32, 32)
    mask = torch.ones(20, 2)
    enc = _detector(32)
    before = [p.detach().clone() for p in enc.proj.parameters()]
    prior = LesionPrior(radius_px=(1.5, 5.0), contrast_hu=(60.0, 600.0))
    info = pretrain_detector(enc, x, mask, np.arange(14), np.arange(14, 20), steps=120, batch=16, lr=3e-3, prior=prior, seed=0)
    print(info)
    assert info["loss_last_50"] < 0.8 * info["loss_first_50"]
    assert min(info["synthetic_val_auc"]) > 0.8, info  # darker and brighter lesions found on slices never trained on
    assert all(torch.equal(a, b) for a, b in zip(before, enc.proj.parameters()))  # the pretext leaves the projection alone
    trainable = freeze_detector(enc)
    assert trainable == ["proj.weight", "proj.bias"]
    assert not any(p.requires_grad for n, p in enc.named_parameters() if not n.startswith("proj."))
    # a slice with a bright lesion gets a higher bright max logit than the same slice without it
    clean = x[15, :1]
    y, t = insert_synthetic_lesions(clean, np.random.default_rng(5), LesionPrior(p_lesion=1.0, max_lesions=1, p_bright=1.0,
                                    radius_px=(3.0, 3.0), contrast_hu=(300.0, 300.0)), 1000.0, 0.0)
    with torch.no_grad():
        s0 = SliceEncoder2D.detection_stats(enc.detect_logits(clean[:, None]))
        s1 = SliceEncoder2D.detection_stats(enc.detect_logits(y[:, None]))
    assert float(s1[0, 1]) > float(s0[0, 1]) + 1.0
    # stage A's shortcut for a frozen trunk (statistics computed once, then projected) gives the encoder's tokens
    with torch.no_grad():
        assert torch.allclose(enc.proj(enc.slice_stats(x[:3])), enc(x[:3]), atol=1e-5)


def test_pretext_in_bfloat16_autocast_learns_the_lesions_and_keeps_float32_weights() -> None:
    torch.manual_seed(0)
    x = _tissue(40, 32, 1).reshape(20, 2, 32, 32)
    enc = _detector(32)
    prior = LesionPrior(radius_px=(1.5, 5.0), contrast_hu=(60.0, 600.0))
    before, seen = torch.get_num_threads(), []
    torch.set_num_threads(2)
    try:  # with a core of its own for the batch worker: the network on one thread fewer while the steps run
        info = pretrain_detector(enc, x, torch.ones(20, 2), np.arange(14), np.arange(14, 20), steps=120, batch=16, lr=3e-3,
                                 prior=prior, seed=0, precision="bf16", spare_thread=True,
                                 progress=lambda f, m: seen.append(torch.get_num_threads()))
        assert set(seen) == {1} and torch.get_num_threads() == 2  # and the count restored after them
    finally:
        torch.set_num_threads(before)
    assert info["precision"] == "bf16"
    assert info["loss_last_50"] < 0.8 * info["loss_first_50"]
    assert min(info["synthetic_val_auc"]) > 0.8, info
    assert all(p.dtype == torch.float32 for p in enc.parameters())  # autocast: the weights themselves stay float32
    plain = pretrain_detector(_detector(32), x, torch.ones(20, 2), np.arange(14), np.arange(14, 20), steps=2, batch=4, seed=0)
    assert "precision" not in plain  # float32, as before


def test_one_thread_fewer_restores_the_thread_count_whatever_happens() -> None:
    from core.runtime import one_thread_fewer

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with one_thread_fewer():
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="a failed step"), one_thread_fewer():
            raise RuntimeError("a failed step")
        assert torch.get_num_threads() == 3
        with one_thread_fewer(False):
            assert torch.get_num_threads() == 3
        torch.set_num_threads(1)
        with one_thread_fewer():
            assert torch.get_num_threads() == 1  # never below one
    finally:
        torch.set_num_threads(before)


def test_pretext_needs_the_detection_head() -> None:
    enc = SliceEncoder2D(8, 32, (4, 8), pool="attnmax")
    with pytest.raises(InputError, match="detect"):
        pretrain_detector(enc, torch.zeros(2, 1, 32, 32), torch.ones(2, 1), np.arange(2), np.arange(0), steps=1)


TINY_PRETEXT = {"dim": 16, "batch_size": 16, "patience": 3, "ensemble": 1,
                "image": {"epochs": 2, "size": 32, "channels": [4, 8, 8], "batch_size": 8, "patience": 2, "lung_mask": False,
                          "windows": [[-160, 240], [-200, 1000]], "contrast": [5], "last_stride": 1, "pool": "detect",
                          "pretext_steps": 20, "pretext_batch": 8}}


def test_stage_a_with_the_pretext_freezes_the_trunk_and_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.demo import write_demo_cohort
    from core.registry import load_model
    from core.train import pretext_lesions, train_model
    from core.train.settings import pretext_settings

    cohort = write_demo_cohort(tmp_path / "cohort", n=32, seed=2)
    monkeypatch.setattr(pretext_lesions, "BREAK_STEPS", 8)
    breaks: list[int] = []  # where a background job could make way: every BREAK_STEPS pretext steps (8 and 16 of 20)
    seen: list[tuple[float, str]] = []
    m = train_model(cohort, "image_only", tmp_path / "m", epochs=2, device="cpu", overrides=TINY_PRETEXT,
                    between=lambda: breaks.append(1), progress=lambda f, msg: seen.append((f, msg)))
    assert len(breaks) == 2  # one member: no break between members
    # the bar never goes back; the pretext has its share of the work on it (a tiny one here: 0.1 to 0.5), then the rest
    from core.train.image_stage import pretext_end

    bar = [f for f, _ in seen]
    assert bar == sorted(bar) and bar[-1] == 1.0 and pretext_end(20, 8, 32 * 12) == 0.5
    assert max(f for f, msg in seen if "pretext" in msg) < 0.5 <= min(f for f, msg in seen if "image encoder" in msg)
    pre = m["image_encoder"]["pretext"]
    assert pre["steps"] == 20 and pre["trainable_in_encoder"] == ["proj.weight", "proj.bias"]
    assert len(pre["synthetic_val_auc"]) == 2 and pre["prior"]["contrast_hu"] == [20.0, 600.0]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["image"]["pool"] == "detect" and not cfg["image"]["lung_mask"]
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "synthetic lesions" in card and "channel_stack" in card
    loaded = load_model(tmp_path / "m")
    enc = loaded.net.members[0].image_encoder if hasattr(loaded.net, "members") else loaded.net.image_encoder
    assert isinstance(enc, SliceEncoder2D) and enc.detector is not None and enc.proj.in_features == 4
    assert pre["subjects"] == "all" and pre["n_subjects"] == 19  # every train subject with a CT
    # the pretext without the detection head is refused, naming the fix
    with pytest.raises(InputError, match="pool"):
        pretext_settings({"pretext_steps": 5}, {"kind": "2d", "pool": "attnmax"})
    # its slices from the subjects without an early event: fewer subjects, recorded, on the card; a bad rule is refused
    tiny = {"image": {**TINY_PRETEXT["image"], "pretext_subjects": "no_early_event"}}
    m2 = train_model(cohort, "image_only", tmp_path / "m2", epochs=1, device="cpu", overrides=tiny)
    table = pd.read_csv(cohort / "cohort.csv")
    tr = table[table["split"] == "train"]
    early = int(((tr["event"] == 1) & (tr["time"] < tr["time"].median())).sum())
    assert early > 0 and m2["image_encoder"]["pretext"]["n_subjects"] == len(tr) - early
    assert "subjects without an event before the median time" in (tmp_path / "m2" / "MODEL_CARD.md").read_text()
    with pytest.raises(InputError, match="pretext_subjects"):
        pretext_settings({"pretext_steps": 5, "pretext_subjects": "healthy"}, {"kind": "2d", "pool": "detect"})
    # "auto" arithmetic: bfloat16 where the device is fast at it (recorded, on the card), float32 elsewhere (not recorded)
    from core.train import image_stage

    for fast in (True, False):
        monkeypatch.setattr(image_stage, "fast_cpu_bf16", lambda fast=fast: fast)
        auto = {"image": {**TINY_PRETEXT["image"], "pretext_precision": "auto", "pretext_steps": 4}}
        m3 = train_model(cohort, "image_only", tmp_path / f"m3{fast}", epochs=1, device="cpu", overrides=auto)
        assert m3["image_encoder"]["pretext"].get("precision") == ("bf16" if fast else None)
        assert ("bfloat16" in (tmp_path / f"m3{fast}" / "MODEL_CARD.md").read_text()) == fast
    with pytest.raises(InputError, match="pretext_precision"):
        pretext_settings({"pretext_steps": 5, "pretext_precision": "fp16"}, {"kind": "2d", "pool": "detect"})


def _two_tissues(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices whose left half is homogeneous soft tissue (50 HU, sd ~8 HU) and right half cluttered anatomy (a
    checkerboard of -100 / +150 HU blocks of 2 px: fat planes and vessels), in HUWindow(-1000, 1000) units, and the
    mask of the homogeneous half."""
    g = torch.Generator().manual_seed(seed)
    x = 0.05 + 0.008 * torch.randn(n, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = torch.where(((yy // 2) + (xx // 2)) % 2 == 0, -0.1, 0.15)
    right = xx >= size // 2
    x[:, right] = checker[right]
    return x, ~right


def test_parenchyma_placement_lands_in_homogeneous_soft_tissue_with_its_own_contrast() -> None:
    x, homogeneous = _two_tissues(120, 48, 3)
    prior = LesionPrior(p_lesion=1.0, max_lesions=1, p_parenchyma=1.0, p_replace=0.0, texture=(0.0, 0.0), radius_px=(1.5, 3.0))
    y, t = insert_synthetic_lesions(x, np.random.default_rng(0), prior, 1000.0, 0.0)
    lab = t.amax(dim=1) > 0
    assert int(lab.any(dim=(1, 2)).sum()) == 120
    centre_cols = torch.stack([torch.nonzero(lab[i])[:, 1].float().mean() for i in range(120)])
    assert float((centre_cols < 48 // 2).float().mean()) == 1.0  # every lesion sits in the homogeneous half
    # the contrast comes from parenchyma_contrast_hu (15-100 HU), not the broad 20-600 HU of the body placement
    peak = torch.stack([(y[i] - x[i])[lab[i]].abs().max() for i in range(120)]) * 1000
    assert float(peak.min()) > 7.0 and float(peak.max()) < 101.0
    # the session-10 placement (the default) puts many lesions in the cluttered half
    _, t0 = insert_synthetic_lesions(x, np.random.default_rng(0), LesionPrior(p_lesion=1.0, max_lesions=1), 1000.0, 0.0)
    lab0 = t0.amax(dim=1) > 0
    in_clutter = [float((torch.nonzero(lab0[i])[:, 1] >= 48 // 2).float().mean()) for i in range(120) if lab0[i].any()]
    assert np.mean(np.array(in_clutter) > 0.5) > 0.3
    assert bool(homogeneous[:, :24].all()) and not bool(homogeneous[:, 24:].any())


def test_visibility_threshold_leaves_faint_lesions_unlabelled_and_keeps_clear_ones() -> None:
    g = torch.Generator().manual_seed(4)
    x = 0.04 + 0.02 * torch.randn(60, 40, 40, generator=g)  # 40 HU tissue, sd 20 HU per pixel
    faint = LesionPrior(p_lesion=1.0, max_lesions=1, radius_px=(1.0, 1.0), contrast_hu=(15.0, 16.0), p_replace=0.0,
                        texture=(0.0, 0.0), min_visibility=4.0)
    y, t = insert_synthetic_lesions(x, np.random.default_rng(1), faint, 1000.0, 0.0)
    # |15 HU| x sqrt(~3 px) / ~20 HU is about 1.3 < 4: inserted (the slices changed) but never labelled
    assert bool(((y - x).abs().amax(dim=(1, 2)) > 0.005).all()) and float(t.sum()) == 0.0
    same_without = insert_synthetic_lesions(x, np.random.default_rng(1), dataclasses.replace(faint, min_visibility=0.0), 1000.0, 0.0)
    assert torch.equal(same_without[0], y) and float(same_without[1].sum()) > 0  # the threshold changes labels only
    clear = dataclasses.replace(faint, radius_px=(4.0, 4.0), contrast_hu=(200.0, 210.0))
    _, tc = insert_synthetic_lesions(x, np.random.default_rng(1), clear, 1000.0, 0.0)
    assert int((tc.amax(dim=(1, 2, 3)) > 0).sum()) == 60  # 200 HU x sqrt(~50 px) / 20 HU = 70: every one labelled
    with pytest.raises(InputError, match="parenchyma_px"):
        LesionPrior.from_dict({"parenchyma_px": 4})


def _chest(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices of a body disc (40 HU tissue) around an enclosed aerated region (-850 HU, a 'lung' of random place and
    size), air (-1000 HU) outside the body; in HUWindow(-1000, 1000) units. Returns the slices and the aerated masks."""
    g = torch.Generator().manual_seed(seed)
    x = _tissue(n, size, seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    lungs = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        cy, cx = (size / 2 + (torch.rand(2, generator=g) - 0.5) * size * 0.3).tolist()
        ry, rx = (size * (0.08 + 0.1 * torch.rand(2, generator=g))).tolist()
        lungs[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    x = torch.where(lungs, -0.85 + 0.02 * torch.randn(n, size, size, generator=g), x)
    return x, lungs


def test_lowdensity_nodules_land_in_enclosed_aerated_pixels_with_a_soft_tissue_level() -> None:
    from core.train.pretext_lesions import lowdensity_pixels

    x, lungs = _chest(100, 64, 5)
    prior = LesionPrior(p_lesion=1.0, max_lesions=1, p_lowdensity=1.0, texture=(0.0, 0.0), edge_px=(0.2, 0.2))
    low = lowdensity_pixels(x, prior, 1000.0, 0.0)
    # the mask is the aerated region (its rim included), never the air around the body
    assert float((low & ~lungs).float().sum()) / float(low.float().sum()) < 0.05 and float((low & lungs).sum()) / float(lungs.sum()) > 0.9
    y, t = insert_synthetic_lesions(x, np.random.default_rng(0), prior, 1000.0, 0.0)
    lab = t[:, 1] > 0
    assert int(lab.any(dim=(1, 2)).sum()) == 100 and float(t[:, 0].sum()) == 0.0  # every slice got a brighter nodule
    centres = [torch.nonzero(lab[i]).float().mean(0).round().long() for i in range(100)]
    assert sum(bool(lungs[i, c[0], c[1]]) for i, c in enumerate(centres)) >= 95  # centred in the 'lung'
    # inside the nodule, the aerated pixels are replaced by a soft-tissue level (-100..+100 HU)
    inside = torch.cat([y[i][lab[i] & lungs[i]] for i in range(100)]) * 1000
    assert float(inside.median()) > -150 and float(inside.median()) < 150
    # the default prior never centres a lesion there (centres above -300 HU only)
    _, t0 = insert_synthetic_lesions(x, np.random.default_rng(0), LesionPrior(p_lesion=1.0, max_lesions=1), 1000.0, 0.0)
    lab0 = t0.amax(dim=1) > 0
    c0 = [torch.nonzero(lab0[i]).float().mean(0).round().long() for i in range(100) if lab0[i].any()]
    assert sum(bool(lungs[i, c[0], c[1]]) for i, c in enumerate(c0)) <= 5
    with pytest.raises(InputError, match="p_lowdensity"):
        LesionPrior.from_dict({"p_lowdensity": 1.5})


def test_lowdensity_mask_of_a_batch_is_each_slice_on_its_own() -> None:
    """The batch is labelled in one call; a region enclosed in one slice stays enclosed when the same pixels of the
    next slice reach the air outside the body (no connection across slices), and each slice's mask equals the mask
    of that slice alone."""
    from core.train.pretext_lesions import lowdensity_pixels

    x = torch.full((3, 20, 20), 0.04)  # soft tissue
    x[0, 6:14, 6:14] = -0.85           # slice 0: an enclosed aerated pocket
    x[1, 6:14, 0:14] = -0.85           # slice 1: the same pocket opened to the border (air outside the body)
    x[2] = torch.rand(20, 20) * 1.6 - 0.9
    prior = LesionPrior()
    batch = lowdensity_pixels(x, prior, 1000.0, 0.0)
    assert bool(batch[0, 10, 10]) and not bool(batch[1, 10, 10])
    for i in range(3):
        assert torch.equal(batch[i], lowdensity_pixels(x[i:i + 1], prior, 1000.0, 0.0)[0])


def test_edge_share_centres_lesions_near_the_slice_border() -> None:
    x = torch.full((80, 64, 64), 0.04)  # tissue up to the border (a cropped field of view)
    prior = LesionPrior(p_lesion=1.0, max_lesions=1, p_edge=1.0, edge_band_px=6.0, radius_px=(1.5, 3.0), texture=(0.0, 0.0))
    _, t = insert_synthetic_lesions(x, np.random.default_rng(2), prior, 1000.0, 0.0)
    lab = t.amax(dim=1) > 0

    def border_distance(tt: torch.Tensor) -> list[int]:
        out = []
        for i in range(len(tt)):
            cy, cx = torch.nonzero(tt[i]).float().mean(0).tolist()
            out.append(min(cy, cx, 63 - cy, 63 - cx))
        return out

    d = border_distance(lab)
    assert max(d) < 6.0 + 1.0  # all within the band (the label's centroid moves inward when a lesion is cut)
    _, t0 = insert_synthetic_lesions(x, np.random.default_rng(2), dataclasses.replace(prior, p_edge=0.0), 1000.0, 0.0)
    assert np.median(border_distance(t0.amax(dim=1) > 0)) > 10.0  # without it, most lie further in


def test_strides_setting_gives_the_finer_map_and_is_written_only_when_set() -> None:
    from core.models.config import ImageConfig
    from core.train.image_stage import encoder_2d_config

    keys = encoder_2d_config({"windows": [[-160, 240]], "contrast": [9], "pool": "detect", "strides": [2, 2, 1, 1], "last_stride": 2}, 4)
    assert keys["strides"] == [2, 2, 1, 1]
    cfg = ImageConfig.from_dict({"kind": "2d", "hu_window": [-1000.0, 1000.0], "out_dim": 8, "size": 96,
                                 "channels": [4, 8, 8, 8], "lung_mask": False, **keys})
    enc = SliceEncoder2D.from_config(cfg)
    assert tuple(enc.detect_logits(torch.zeros(1, 1, 96, 96)).shape) == (1, 2, 24, 24)  # 96 / 2 / 2
    assert cfg.to_dict()["strides"] == [2, 2, 1, 1]
    assert "strides" not in encoder_2d_config({"strides": []}, 4)  # empty: the old last_stride rule, nothing written
    assert encoder_2d_config({"last_stride": 1}, 4)["strides"] == [2, 2, 2, 1]
    for bad in ([2, 1], [2, 2, 3, 1]):
        with pytest.raises(InputError, match="image strides"):
            encoder_2d_config({"strides": bad}, 4)


def test_ignore_top_leaves_the_most_confident_unlabelled_positions_out_of_the_loss() -> None:
    from core.train.settings import pretext_settings
    from core.train.detection_loss import detection_loss

    logits = torch.full((2, 2, 8, 8), -4.0)
    target = torch.zeros(2, 2, 32, 32)
    target[:, 1, 4:8, 4:8] = 1.0                   # a labelled lesion: position (1, 1) of the 8 x 8 map
    logits[:, 1, 1, 1] = 3.0                       # found
    logits[:, 0, 6, 6] = 6.0                       # an unlabelled confident 'lesion' (a real one of the cohort)
    plain, ignored = float(detection_loss(logits, target)), float(detection_loss(logits, target, ignore_top=1 / 64))
    assert ignored < plain / 3                     # the unlabelled 6.0 dominated the plain loss; it is left out
    # the labelled position is never left out: a missed lesion keeps its full (pos-weighted) loss
    logits[:, 1, 1, 1] = -6.0
    assert float(detection_loss(logits, target, ignore_top=1 / 64)) > plain
    assert float(detection_loss(logits, target, ignore_top=0.0)) == float(detection_loss(logits, target))
    icfg = {"kind": "2d", "pool": "detect"}
    assert "ignore_top" not in pretext_settings({"pretext_steps": 5, "pool": "detect"}, icfg)  # cache keys unchanged when off
    assert pretext_settings({"pretext_steps": 5, "pretext_ignore_top": 0.01}, icfg)["ignore_top"] == 0.01
    with pytest.raises(InputError, match="pretext_ignore_top"):
        pretext_settings({"pretext_steps": 5, "pretext_ignore_top": 0.7}, icfg)
    # the pretext still learns with it (the same few steps as above, far shorter)
    torch.manual_seed(0)
    x = _tissue(40, 32, 1).reshape(20, 2, 32, 32)
    info = pretrain_detector(_detector(32), x, torch.ones(20, 2), np.arange(14), np.arange(14, 20), steps=60, batch=16, lr=3e-3,
                             prior=LesionPrior(radius_px=(1.5, 5.0), contrast_hu=(60.0, 600.0)), seed=0, ignore_top=0.02)
    assert info["ignore_top"] == 0.02 and info["loss_last_50"] < info["loss_first_50"]


def test_confined_lesions_never_reach_into_the_air_around_the_body() -> None:
    # every lesion centred at the skin line (p_edge with a band that holds only the body's rim): unconfined, many
    # notch or bulge the air outside; confined, not one air pixel changes and no label lies outside the body
    n, size = 60, 32
    x = _tissue(n, size, 3)
    air = x < -0.3
    base = dict(p_lesion=1.0, max_lesions=3, radius_px=(2.0, 5.0), contrast_hu=(100.0, 600.0), p_replace=0.0)
    rim = LesionPrior(**base, p_edge=1.0, edge_band_px=5.0)
    y0, t0 = insert_synthetic_lesions(x, np.random.default_rng(0), rim, 1000.0, 0.0)
    y1, t1 = insert_synthetic_lesions(x, np.random.default_rng(0), dataclasses.replace(rim, confine_to_tissue=True), 1000.0, 0.0)
    assert int(((y0 - x).abs() > 1e-4)[air].sum()) > 100 and int(t0.amax(dim=1)[air].sum()) > 20
    assert int(((y1 - x).abs() > 1e-4)[air].sum()) == 0 and int(t1.amax(dim=1)[air].sum()) == 0
    assert int(t1.amax(dim=1).sum()) > 0.5 * int(t0.amax(dim=1)[~air].sum())  # the lesions are still drawn in tissue


def test_ranking_term_punishes_a_confident_false_detection_on_another_slice() -> None:
    # per-position BCE averages a single confident false detection over every position of the batch; the ranking term
    # asks each labelled lesion to outrank every unlabelled position of the batch, as a study's argmax must
    from core.train.settings import pretext_settings
    from core.train.detection_loss import detection_loss, ranking_loss

    logits = torch.full((4, 2, 8, 8), -4.0)
    target = torch.zeros(4, 2, 32, 32)
    target[0, 1, 4:8, 4:8] = 1.0                   # a lesion on slice 0, position (1, 1)
    logits[0, 1, 1, 1] = 3.0                       # found
    tgt = torch.nn.functional.adaptive_max_pool2d(target, (8, 8))
    clean = float(ranking_loss(logits, tgt))
    assert clean < 0.25                            # it outranks the 255 other positions of its channel by 7 logits
    logits[3, 1, 5, 5] = 6.0                       # a confident false detection on another slice, same channel
    hit = float(ranking_loss(logits, tgt))
    assert hit > 3.0 and hit == pytest.approx(float(torch.log1p(torch.exp(torch.tensor(3.0)) + 254 * torch.exp(torch.tensor(-7.0)))), rel=1e-4)
    # the same false detection moves the per-position BCE by well under a tenth of that
    bce_clean = float(detection_loss(logits.where(logits < 5, torch.tensor(-4.0)), target))
    assert float(detection_loss(logits, target)) - bce_clean < 0.1
    assert float(detection_loss(logits, target, rank_weight=0.5)) == pytest.approx(float(detection_loss(logits, target)) + 0.5 * hit, rel=1e-5)
    # the other channel has no labelled lesion: it adds nothing; a batch without any lesion gives 0
    assert float(ranking_loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))) == 0.0
    icfg = {"kind": "2d", "pool": "detect"}
    plain = pretext_settings({"pretext_steps": 5}, icfg)
    assert "rank_weight" not in plain and "pos_weight" not in plain  # cache keys unchanged when off
    set_ = pretext_settings({"pretext_steps": 5, "pretext_rank_weight": 0.05, "pretext_pos_weight": 3}, icfg)
    assert set_["rank_weight"] == 0.05 and set_["pos_weight"] == 3.0
    with pytest.raises(InputError, match="pretext_rank_weight"):
        pretext_settings({"pretext_steps": 5, "pretext_rank_weight": -1}, icfg)
    with pytest.raises(InputError, match="pretext_pos_weight"):
        pretext_settings({"pretext_steps": 5, "pretext_pos_weight": 0}, icfg)
    with pytest.raises(InputError, match="pretext_pos_weight: got high, must be a number"):
        pretext_settings({"pretext_steps": 5, "pretext_pos_weight": "high"}, icfg)


def test_dense_lesions_sit_in_bone_lytic_darker_sclerotic_brighter_and_stay_inside_it() -> None:
    # a 'vertebra' (250 HU disc) in 40 HU tissue: with p_dense 1 every lesion is centred in it and kept inside it
    # (its partial-volume rim and one pixel more); lytic ones replace bone by -20..60 HU (darker channel), sclerotic ones add 150..600 HU
    from core.train.pretext_lesions import dense_pixels

    n, size = 120, 48
    x = _tissue(n, size, 7)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    bone = ((yy - 30) ** 2 + (xx - 24) ** 2) < 6 ** 2
    x[:, bone] = 0.25
    prior = LesionPrior(p_lesion=1.0, max_lesions=1, p_dense=1.0, texture=(0.0, 0.0), edge_px=(0.2, 0.2))
    centre, confine = dense_pixels(x, prior, 1000.0, 0.0)
    assert bool(centre[:, bone].float().mean() > 0.6) and not bool(centre[:, ~confine[0]].any())
    y, t = insert_synthetic_lesions(x, np.random.default_rng(2), prior, 1000.0, 0.0)
    dark, bright = t[:, 0].amax(dim=(1, 2)) > 0, t[:, 1].amax(dim=(1, 2)) > 0
    assert 35 < int(dark.sum()) < 85 and 35 < int(bright.sum()) < 85  # p_lytic 0.5
    grown = torch.nn.functional.max_pool2d(bone.float()[None, None], 5, stride=1, padding=2)[0, 0] > 0
    assert not bool((t.amax(dim=1) > 0)[:, ~grown].any())  # every label inside the (grown) bone
    assert not bool(((y - x).abs() > 1e-6)[:, ~grown].any())  # and so is every changed pixel
    lytic = torch.cat([y[i][t[i, 0] > 0] for i in range(n) if dark[i]]) * 1000
    assert -30 < float(lytic.median()) < 70  # bone replaced by a soft-tissue level
    scl = torch.cat([(y[i] - x[i])[t[i, 1] > 0] for i in range(n) if bright[i]]) * 1000
    assert float(scl.median()) > 100  # brighter by the sclerotic contrast
    # off by default: the prior's draws are unchanged
    y0, t0 = insert_synthetic_lesions(x, np.random.default_rng(2), LesionPrior(p_lesion=1.0), 1000.0, 0.0)
    y1, t1 = insert_synthetic_lesions(x, np.random.default_rng(2), LesionPrior(p_lesion=1.0, dense_hu=(100.0, 900.0)), 1000.0, 0.0)
    assert torch.equal(y0, y1) and torch.equal(t0, t1)
    with pytest.raises(InputError, match="p_dense"):
        LesionPrior(p_dense=1.5)
