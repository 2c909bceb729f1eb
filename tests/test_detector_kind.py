"""``--image-encoder-kind detector``: the 2d encoder with the whole-CT lesion-detector settings (core.train.settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InputError
from core.train.settings import DEFAULTS, IMAGE_PRESETS, merge_settings


def test_preset_under_overrides_and_only_when_asked() -> None:
    plain = merge_settings(None, None, None)
    assert plain["image"]["lung_mask"] is True and plain["image"]["pretext_steps"] == 0  # the default is unchanged
    det = merge_settings({"image": {"pretext_steps": 7}}, None, None, "detector")
    assert det["image"]["lung_mask"] is False and det["image"]["pool"] == "detect"
    assert det["image"]["strides"] == [2, 2, 1, 1] and det["image"]["pretext_steps"] == 7  # overrides win
    assert det["image"]["epochs"] == DEFAULTS["image"]["epochs"]  # keys the preset does not name stay the defaults
    det["image"]["pretext_prior"]["p_edge"] = 0.9  # a merged copy: the preset itself never changes
    assert IMAGE_PRESETS["detector"]["pretext_prior"]["p_edge"] == 0.2
    with pytest.raises(InputError, match="image_encoder_kind"):
        merge_settings(None, None, None, "lungs")


def test_detector_kind_trains_a_frozen_detector_that_reads_the_whole_ct(tmp_path: Path) -> None:
    from core.demo import write_demo_cohort
    from core.train import train_model

    cohort = write_demo_cohort(tmp_path / "cohort", n=24, seed=2)
    small = {"image": {"pretext_steps": 12, "pretext_batch": 8, "epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 8},
             "dim": 16}
    metrics = train_model(cohort, "image_only", tmp_path / "m", epochs=1, device="cpu", image_encoder_kind="detector",
                          overrides=small, ensemble=1)
    image = json.loads((tmp_path / "m" / "config.json").read_text())["image"]
    assert image["kind"] == "2d" and image["lung_mask"] is False and image["pool"] == "detect"
    assert image["strides"] == [2, 2, 1, 1] and len(image["windows"]) == 4 and image["channels"] == [4, 8, 8, 8]
    pretext = metrics["image_encoder"]["pretext"]
    assert pretext["steps"] == 12 and pretext["prior"]["p_lowdensity"] == 0.2
    # every pretext slice gets lesions, and the subjects with an early event are left out of the pretext
    assert pretext["prior"]["p_lesion"] == 1.0 and pretext["prior"]["max_lesions"] == 8
    assert pretext["subjects"] == "no_early_event" and 0 < pretext["n_subjects"] < 14
    assert 0.0 <= metrics["test"]["c_index"] <= 1.0
    # the pretext's kept progress (core.train.pretext_checkpoint) is gone once the encoder is in the cohort's cache
    cached = sorted(p.name.split("_")[0] for p in (cohort / ".cache").iterdir())
    assert "encoder" in cached and "pretext" not in cached, cached


def test_auto_means_the_detector_for_new_models_on_ct_unless_the_site_setting_says_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.demo import write_demo_cohort
    from core.train import train_model
    from core.models import DEFAULT_IMAGE_KIND, DEFAULT_IMAGE_KIND_ENV, default_image_kind

    monkeypatch.delenv(DEFAULT_IMAGE_KIND_ENV, raising=False)  # the product's default, not the suite's
    assert DEFAULT_IMAGE_KIND == "detector" and default_image_kind() == "detector"
    cohort = write_demo_cohort(tmp_path / "cohort", n=24, seed=3)
    small = {"image": {"pretext_steps": 6, "pretext_batch": 4, "epochs": 1, "channels": [4, 8, 8, 8], "batch_size": 8},
             "dim": 16}
    m = train_model(cohort, "image_only", tmp_path / "auto", epochs=1, device="cpu", overrides=small, ensemble=1)
    image = json.loads((tmp_path / "auto" / "config.json").read_text())["image"]
    assert image["pool"] == "detect" and image["lung_mask"] is False and m["image_encoder"]["pretext"]["steps"] == 6
    monkeypatch.setenv(DEFAULT_IMAGE_KIND_ENV, "2d")  # a site that keeps the lung-focused encoder
    train_model(cohort, "image_only", tmp_path / "lung", epochs=1, device="cpu", overrides={"dim": 16, "image": {"epochs": 1}},
                ensemble=1)
    image = json.loads((tmp_path / "lung" / "config.json").read_text())["image"]
    assert image["lung_mask"] is True and image.get("pool", "meanmax") == "meanmax"
    monkeypatch.setenv(DEFAULT_IMAGE_KIND_ENV, "lungs")
    with pytest.raises(InputError, match=DEFAULT_IMAGE_KIND_ENV):
        train_model(cohort, "image_only", tmp_path / "bad", epochs=1, device="cpu", ensemble=1)
