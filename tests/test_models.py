"""Model parts: fusion shapes and attention sums, missing-modality masks, heads, encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.models import FUSIONS
from core.models.fusion import info_nce, make_fusion
from core.models.heads import (
    CoxHead,
    DiscreteHazardHead,
    PiecewiseExponentialHead,
    make_edges,
)
from core.models.image2d import SliceEncoder2D
from core.models.config import ImageConfig, ModelConfig
from core.models.net import SurvivalNet

B, S, E, D = 3, 5, 4, 16


def _tokens() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    img, ehr = torch.randn(B, S, D), torch.randn(B, E, D)
    img_mask = torch.tensor([[1.0] * S, [1.0] * S, [0.0] * S])  # subject 2: no image
    ehr_mask = torch.tensor([[1.0, 1, 1, 0], [0.0] * E, [1.0, 1, 0, 0]])  # subject 1: no EHR
    return img, img_mask, ehr, ehr_mask


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_shapes_and_weights(name: str) -> None:
    img, im, ehr, em = _tokens()
    fusion = make_fusion(name, D).eval()
    out = fusion(img, im, ehr, em)
    assert out.h.shape == (B, fusion.out_dim) and torch.isfinite(out.h).all()
    if out.image_weights is not None:
        w = out.image_weights.detach()
        assert w.shape == (B, S)
        assert torch.allclose(w.sum(-1), im.amax(-1), atol=1e-5)  # 1 when present, 0 when missing
        assert (w >= 0).all()
    if out.ehr_weights is not None:
        w = out.ehr_weights.detach()
        assert w.shape == (B, E)
        assert torch.allclose(w.sum(-1), em.amax(-1), atol=1e-5)
        assert float(w[0, 3]) == 0.0  # masked token gets no weight
    if name in ("image_only", "cross_attention", "coattention_image", "concat"):
        assert out.image_weights is not None
    if name in ("ehr_only", "cross_attention", "coattention_ehr", "concat"):
        assert out.ehr_weights is not None


@pytest.mark.parametrize("name", [f for f in FUSIONS if f not in ("image_only", "ehr_only")])
def test_masked_tokens_do_not_matter(name: str) -> None:
    """Changing the tokens of a missing modality (or masked events) leaves the fused vector unchanged."""
    img, im, ehr, em = _tokens()
    fusion = make_fusion(name, D).eval()
    a = fusion(img, im, ehr, em).h
    img2, ehr2 = img.clone(), ehr.clone()
    img2[2] += 100.0  # subject 2 has no image
    ehr2[1] += 100.0  # subject 1 has no EHR
    ehr2[0, 3] -= 50.0  # masked event of subject 0
    b = fusion(img2, im, ehr2, em).h
    assert torch.allclose(a, b, atol=1e-5)


def test_cross_attention_maps() -> None:
    img, im, ehr, em = _tokens()
    out = make_fusion("cross_attention", D, heads=2).eval()(img, im, ehr, em)
    assert out.attention["ehr<-img"].shape == (B, 2, E, S)
    assert out.attention["img<-ehr"].shape == (B, 2, S, E)


def test_info_nce_prefers_aligned_pairs() -> None:
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert float(info_nce(z, z)) < float(info_nce(z, z.roll(1, 0)))


def test_heads_survival_is_a_survival_function() -> None:
    edges = make_edges(np.array([5.0, 10, 20, 40, 80, 100]), np.array([1, 1, 1, 1, 1, 0]), 4)
    assert edges[0] == 0 and np.all(np.diff(edges) > 0) and 30.0 in edges
    for head in (DiscreteHazardHead(D, edges), PiecewiseExponentialHead(D, edges), CoxHead(D, edges)):
        if isinstance(head, CoxHead):
            head.fit_baseline(np.zeros(6), np.array([5.0, 10, 20, 40, 80, 100]), np.array([1, 1, 1, 1, 1, 0]))
        s = head.survival(head(torch.randn(B, D))).detach()
        assert s.shape == (B, len(edges))
        assert torch.all(s[:, 0] == 1) and torch.all(s[:, 1:] <= s[:, :-1] + 1e-7) and torch.all((s >= 0) & (s <= 1))


def test_cox_breslow_matches_lifelines() -> None:
    from lifelines import BreslowFlemingHarringtonFitter, NelsonAalenFitter  # noqa: F401

    rng = np.random.default_rng(0)
    t, e = rng.exponential(100, 50).round(), rng.integers(0, 2, 50)
    e[0] = 1
    edges = make_edges(t, e, 5)
    head = CoxHead(D, edges)
    head.fit_baseline(np.zeros(50), t, e)
    na = NelsonAalenFitter(nelson_aalen_smoothing=False).fit(t, e)
    expect = na.cumulative_hazard_at_times(edges).to_numpy()
    assert np.allclose(head.baseline_cumhaz.numpy(), expect, atol=1e-5)


def test_discrete_nll_prefers_truth() -> None:
    edges = np.array([0.0, 10, 20, 30])
    head = DiscreteHazardHead(D, edges)
    time, event = torch.tensor([15.0]), torch.tensor([1.0])
    good = torch.tensor([[-5.0, 5.0, 0.0]])  # survive interval 0, die in interval 1
    bad = torch.tensor([[5.0, -5.0, 0.0]])
    assert float(head.nll(good, time, event)) < float(head.nll(bad, time, event))


def test_pwe_nll_matches_exponential_likelihood() -> None:
    edges = np.array([0.0, 10.0, 30.0])
    head = PiecewiseExponentialHead(D, edges)
    raw = torch.log(torch.tensor([[0.1, 0.1]]))
    nll = float(head.nll(raw, torch.tensor([20.0]), torch.tensor([1.0])))
    assert nll == pytest.approx(-(np.log(0.1) - 0.1 * 20), rel=1e-5)


def test_slice_encoder_gradients_reach_every_voxel_grid() -> None:
    enc = SliceEncoder2D(out_dim=8, size=32, channels=(4, 8))
    chain = ImageConfig(kind="2d", size=32).transforms()
    hu = torch.zeros(1, 6, 50, 45, requires_grad=True)
    enc(chain(hu)).sum().backward()
    assert hu.grad is not None and hu.grad.shape == (1, 6, 50, 45)
    assert chain(hu.detach()).shape == (1, 6, 32, 32)


def test_3d_encoder_maps_patches_to_slices() -> None:
    from core.models.image3d import VolumeEncoder3D

    enc = VolumeEncoder3D(out_dim=8, grid=(16, 32, 32), channels=(4, 8, 8))
    m = enc.patch_slices(10)
    assert m.shape == (32, 10) and torch.allclose(m.sum(-1), torch.ones(32))


def test_net_with_3d_image_and_tabular() -> None:
    cfg = {"fusion": "cross_attention", "head": "pwe", "dim": 16, "edges": [0.0, 10.0, 30.0],
           "image": {"kind": "3d", "out_dim": 8, "grid": [16, 32, 32], "channels": [4, 8, 8], "hu_window": [-1000, 1000]},
           "ehr": {"sequence": None, "tabular": {"columns": ["a", "b"], "mean": [0, 0], "std": [1, 1]}, "embedding_dim": None}}
    net = SurvivalNet(ModelConfig.from_dict(cfg)).eval()
    prepared = net.cfg.image.transforms()(torch.zeros(2, 12, 20, 20))
    out = net({"image": prepared, "n_slices": torch.tensor(12), "image_present": torch.ones(2),
               "features": torch.zeros(2, 2), "feature_missing": torch.zeros(2, 2), "features_present": torch.ones(2)})
    assert out["survival"].shape == (2, 3)
    assert out["slice_weights"].shape == (2, 12)
    assert torch.allclose(out["slice_weights"].sum(-1), torch.ones(2), atol=1e-5)


def test_lung_mask_on_demo_phantom() -> None:
    """The lung mask keeps lung and an inner nodule, drops outside air, body wall, heart, bone and liver."""
    from core.demo import phantom as P
    from core.demo.latents import sample_latents
    from core.preprocess.lung import lung_mask

    lat = sample_latents(40, seed=3)
    row = lat[(lat["lesion"] == 1) & (lat["lesion_radius_mm"] < 12)].iloc[0]
    ph = P.render_phantom(row, np.random.default_rng(0))
    m = lung_mask(ph.hu.astype(np.float32))
    lab = ph.labels
    assert not m[lab == P.AIR].any()  # air around the body
    for tissue in (P.FAT, P.MUSCLE, P.RIB, P.CORTICAL, P.MYOCARDIUM, P.BLOOD, P.LIVER):
        assert m[lab == tissue].mean() < 0.01, P.LABEL_NAMES[tissue]
    assert m[lab == P.LUNG].mean() > 0.97
    # render the same subject with the nodule moved deep into the lung: fully enclosed, it is kept
    deep = np.argwhere(ndimage_erode(lab == P.LUNG, 3))
    kk, rr, cc = deep[len(deep) // 2]
    hu = ph.hu.astype(np.float32).copy()
    hu[kk, rr - 1:rr + 2, cc - 1:cc + 2] = 40.0
    m2 = lung_mask(hu)
    assert m2[kk, rr - 1:rr + 2, cc - 1:cc + 2].all()
    # drawn demo lesions: most are kept; one touching the chest wall or mediastinum may not be (known gap)
    cover = []
    for _, other in lat[lat["lesion"] == 1].head(8).iterrows():
        q = P.render_phantom(other, np.random.default_rng(1))
        les = q.labels == P.LESION
        cover.append(lung_mask(q.hu.astype(np.float32))[les].mean())
    assert np.mean(cover) > 0.5 and np.median(cover) > 0.5


def ndimage_erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(mask, structure=st, iterations=iterations)


def test_masked_slice_encoder_input_and_gradients() -> None:
    """Outside the lungs the CNN sees lung air; gradients are zero there and nonzero inside; forward == trunk(preprocess)."""
    hu = torch.full((1, 2, 40, 40), 40.0)
    hu[:, :, :2, :] = -1000.0                       # outside air touching the border
    hu[:, :, 10:30, 10:30] = -850.0                # a lung
    hu[:, :, 18:21, 18:21] = 40.0                  # a nodule inside it
    hu[:, :, 34:37, 5:8] = 600.0                   # bone outside the lung
    chain = ImageConfig(kind="2d", size=40, hu_window=(-1000.0, 1000.0), lung_mask=True).transforms()
    enc = SliceEncoder2D(out_dim=8, size=40, channels=(4, 8), soft_tissue=chain.soft_tissue_step())
    x = chain(hu)
    fill = (-850.0 - 0.0) / 1000.0
    assert torch.allclose(x[0, 0, 35, 6], torch.tensor(fill))     # bone replaced by lung air
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor(fill))       # outside air likewise
    assert float(x[0, 0, 19, 19]) == pytest.approx(0.04, abs=0.01)  # the nodule is kept
    area = enc.soft_tissue_area(x)
    assert float(area[0, 0]) == pytest.approx(np.log1p(9.0), abs=0.15)
    h = hu.clone().requires_grad_(True)
    enc(chain(h)).sum().backward()
    assert h.grad is not None
    assert float(h.grad[0, :, 34:37, 5:8].abs().sum()) == 0.0
    assert float(h.grad[0, :, 18:21, 18:21].abs().sum()) > 0.0
    masks = chain.masks(hu)  # the mask computed once and passed back gives the same input
    assert masks is not None and torch.equal(chain(hu, masks), x)


@pytest.mark.parametrize("name", [f for f in FUSIONS if f not in ("image_only", "ehr_only")])
def test_image_anchored_fusion_starts_as_image_only(name: str) -> None:
    """Gate 0: the anchored strategy's fused vector is exactly its image-only branch; the gate lets the strategy in."""
    from core.models.fusion import ImageAnchored

    img, im, ehr, em = _tokens()
    fusion = make_fusion(name, D, anchor=True).eval()
    assert isinstance(fusion, ImageAnchored) and fusion.uses_image and fusion.uses_ehr
    out = fusion(img, im, ehr, em)
    assert torch.allclose(out.h, fusion.anchor(img, im, ehr, em).h)
    assert out.image_weights is not None and out.ehr_weights is not None
    with torch.no_grad():
        fusion.gate.fill_(1.0)
    out2 = fusion(img, im, ehr, em)
    assert torch.allclose(out2.h, fusion.anchor(img, im, ehr, em).h + fusion.inner(img, im, ehr, em).h)
    assert not isinstance(make_fusion("image_only", D, anchor=True), ImageAnchored)


def test_sequence_gate_starts_nearly_closed_and_old_weights_load_open() -> None:
    from core.models.ehr_sequence import SequenceEncoder

    enc = SequenceEncoder(10, 8).eval()
    batch = {"codes": torch.ones(2, 4, dtype=torch.long), "values": torch.zeros(2, 4), "value_missing": torch.ones(2, 4),
             "dt_days": torch.ones(2, 4), "event_mask": torch.ones(2, 4)}
    assert float(enc.gate.detach()) == pytest.approx(0.1)
    ref = SequenceEncoder(10, 8).eval()
    ref.load_state_dict({**enc.state_dict(), "gate": torch.ones(1)})
    assert torch.allclose(enc(batch), 0.1 * ref(batch))
    old = {k: v for k, v in enc.state_dict().items() if k != "gate"}  # a model folder from before the gate
    again = SequenceEncoder(10, 8)
    again.load_state_dict(old)
    assert float(again.gate.detach()) == 1.0 and float(again(batch).detach().abs().sum()) > 0.0


def _ph_data(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential proportional hazards with log-hazard x ~ N(0, 1), administrative censoring at 300 days."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(200.0 / np.exp(x))
    time = np.minimum(t_ev, 300.0).clip(0.5)
    return x, time, (t_ev <= 300.0).astype(float)


@pytest.mark.parametrize("kind", ["discrete", "pwe", "cox"])
def test_calibrate_recovers_the_scale_of_a_shrunken_linear_predictor(kind: str) -> None:
    """An early-stopped net ranks well but its predictor is 1000x too small; calibration finds the 1000."""
    from core.evaluate import harrell_c
    from core.models.heads import make_head

    x, time, event = _ph_data()
    edges = make_edges(time, event, 10)
    head = make_head(kind, 1, edges, proportional=True)
    head.init_baseline(time, event)
    with torch.no_grad():
        head.linear.weight.fill_(1e-3)
    h = torch.as_tensor(x, dtype=torch.float32)[:, None]
    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32)
    raw_before = head(h).detach()
    info = head.calibrate(raw_before, t, e)
    # discrete time: hazards of intervals, so the scale on the per-interval logit is a little above 1000
    assert 800 < info["scale"] < 1400, info
    assert info["nll_after"] < info["nll_before"] - 0.05
    raw_after = head(h).detach()
    eta = (lambda r: r if r.dim() == 1 else r[:, 0])
    # the ranking is the linear predictor's (x): calibration is monotone, so the C-index is x's
    assert harrell_c(time, event.astype(bool), eta(raw_after).numpy()) == pytest.approx(
        harrell_c(time, event.astype(bool), x), abs=1e-5)  # float32 ties only
    if kind != "cox":  # the curves now spread: S at 100 days differs between a low- and a high-risk subject
        s = head.survival(head(torch.tensor([[-1.5], [1.5]]))).detach()
        j = int(np.searchsorted(edges, 100.0))
        assert float(s[0, j] - s[1, j]) > 0.3


def test_calibrate_needs_a_proportional_head() -> None:
    x, time, event = _ph_data(200)
    head = DiscreteHazardHead(1, make_edges(time, event, 5))
    raw = head(torch.as_tensor(x, dtype=torch.float32)[:, None]).detach()
    with pytest.raises(ValueError, match="^head 'discrete' in its full \\(per-interval\\) form has no single linear predictor"):
        head.calibrate(raw, torch.as_tensor(time), torch.as_tensor(event))


def test_proportional_head_shares_one_predictor_across_intervals() -> None:
    edges = np.array([0.0, 10, 20, 30])
    for head in (DiscreteHazardHead(D, edges, proportional=True), PiecewiseExponentialHead(D, edges, proportional=True)):
        raw = head(torch.randn(B, D)).detach()
        d = raw - raw[:1]  # subject minus subject 0: the same in every interval
        assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-6)


def _outcomes(log_hazard: np.ndarray, rng: np.random.Generator, end: float = 400.0) -> tuple[np.ndarray, np.ndarray]:
    """Exponential times with the given log-hazard (baseline mean 200 days), censored at ``end`` days."""
    t_ev = rng.exponential(200.0 / np.exp(log_hazard))
    return np.minimum(t_ev, end).clip(0.5), (t_ev <= end).astype(float)


def _two_factors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two independent N(0, 1) risk factors a, b with log-hazard a + b, and their outcomes."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return (a, b, *_outcomes(a + b, rng))


def test_fit_wide_matches_lifelines_coxph_on_the_features() -> None:
    """With a network that ranks nobody (eta = 0), the Cox head's linear EHR term is a Cox model of the features."""
    import pandas as pd
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(3)
    n = 400
    x = rng.normal(size=(n, 3))
    beta = np.array([0.8, -0.5, 0.0])
    time, event = _outcomes(x @ beta, rng)
    head = CoxHead(2, make_edges(time, event, 5), wide_dim=3)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
    xt = torch.as_tensor(x, dtype=torch.float32)
    raw = head(torch.zeros(n, 2)).detach()
    info = head.fit_wide(raw, xt, torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32),
                         penalty=0.0)
    assert info["kept"] and info["nll_after"] < info["nll_before"]
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(time=time, event=event)
    ref = CoxPHFitter().fit(frame, "time", "event").params_.to_numpy()
    assert np.allclose(head.wide.weight.detach().numpy().ravel(), ref, atol=2e-3), (head.wide.weight, ref)
    assert head(torch.zeros(n, 2), xt).detach().numpy() == pytest.approx(x @ ref, abs=0.01)


@pytest.mark.parametrize("kind", ["discrete", "cox"])
def test_cv_wide_penalty_picks_a_large_penalty_for_noise_and_a_small_one_for_signal(kind: str) -> None:
    """The network's eta carries the risk; features of pure noise get the largest penalty of the grid by held-out
    NLL, features that carry a second risk factor a small one, and the choice never touches the head."""
    rng = np.random.default_rng(5)
    n = 300
    a, b = rng.normal(size=n), rng.normal(size=n)
    time, event = _outcomes(a + b, rng)
    edges = make_edges(time, event, 5)
    head = CoxHead(1, edges, wide_dim=4) if kind == "cox" else DiscreteHazardHead(1, edges, proportional=True, wide_dim=4)
    with torch.no_grad():
        head.linear.weight.fill_(1.0)
    h = torch.as_tensor(a[:, None], dtype=torch.float32)
    noise = torch.as_tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
    signal = noise.clone()
    signal[:, 0] = torch.as_tensor(b, dtype=torch.float32)
    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32)
    grid = [0.01, 0.1, 1.0, 10.0, 100.0]
    before = [p.detach().clone() for p in head.parameters()]
    cv_noise = head.cv_wide_penalty(head(h, noise).detach(), noise, t, e, grid)
    cv_signal = head.cv_wide_penalty(head(h, signal).detach(), signal, t, e, grid)
    assert all(torch.equal(p0, p1) for p0, p1 in zip(before, head.parameters()))
    assert cv_noise["folds"] == 5 and set(cv_noise["cv_nll"]) == {str(p) for p in grid}
    assert cv_noise["penalty"] >= 10.0, cv_noise
    assert cv_signal["penalty"] <= 1.0, cv_signal
    # the held-out NLL of the chosen penalty is the lowest, and on signal well below the heaviest penalty's
    assert cv_signal["cv_nll"][str(cv_signal["penalty"])] < cv_signal["cv_nll"]["100.0"] - 0.05


def test_cv_wide_penalty_rejects_a_bad_grid() -> None:
    head = DiscreteHazardHead(1, np.array([0.0, 1.0, 2.0]), proportional=True, wide_dim=1)
    with pytest.raises(ValueError, match="penalties"):
        head.cv_wide_penalty(torch.zeros(4, 2), torch.zeros(4, 1), torch.ones(4), torch.ones(4), [-1.0])


@pytest.mark.parametrize("key", ["ehr_linear_penalty_cv", "ehr_only_linear_penalty_cv"])
@pytest.mark.parametrize("bad", [[-1.0], ["0.3"], 0.3, [float("nan")]])
def test_a_bad_penalty_grid_is_refused_before_training(key: str, bad: object) -> None:
    from core.errors import InputError
    from core.train.settings import merge_settings

    with pytest.raises(InputError, match=key):
        merge_settings({key: bad}, None, None)
    assert merge_settings({key: []}, None, None)[key] == []  # [] is the fixed penalty


@pytest.mark.parametrize("kind", ["discrete", "pwe"])
def test_fit_wide_adds_the_features_to_a_network_that_read_half_the_risk(kind: str) -> None:
    """The network's eta carries one risk factor, the features another: after fit_wide the head ranks by both,
    and the network's own scale is refitted (its predictor came shrunken 100x)."""
    from core.evaluate import harrell_c
    from core.models.heads import make_head

    n = 600
    a, b, time, event = _two_factors(n, seed=5)
    rng = np.random.default_rng(6)
    head = make_head(kind, 1, make_edges(time, event, 10), proportional=True, wide_dim=2)
    head.init_baseline(time, event)
    with torch.no_grad():
        head.linear.weight.fill_(0.01)
    h = torch.as_tensor(a, dtype=torch.float32)[:, None]
    wide = torch.as_tensor(np.column_stack([b, rng.normal(size=n)]), dtype=torch.float32)  # b and a noise column
    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32)
    info = head.fit_wide(head(h).detach(), wide, t, e)
    assert info["kept"] and info["nll_after"] < info["nll_before"] - 0.05
    v = head.wide.weight.detach().numpy().ravel()
    assert 0.6 < v[0] < 1.4 and abs(v[1]) < 0.2, v  # b's true log-hazard ratio is 1; the noise column near 0
    assert 60 < info["scale"] < 140, info  # the network's a, shrunk to 0.01, back near 1
    eta = head(h, wide).detach()[:, 0].numpy()
    assert harrell_c(time, event.astype(bool), eta) > harrell_c(time, event.astype(bool), a) + 0.05


@pytest.mark.parametrize("proportional", [True, False])
def test_fit_wide_keeps_a_linear_term_the_head_already_had(proportional: bool) -> None:
    """A second fit (a head whose term was fitted before, then copied) treats the old term as part of the network's
    predictor: the folded head reproduces the fitted objective. It used to drop the old term, and keep a residual
    fit that ranked the training subjects backwards."""
    from core.models.heads import make_head

    n = 500
    a, b, time, event = _two_factors(n, seed=8)
    head = make_head("discrete", 1, make_edges(time, event, 8), proportional=proportional, wide_dim=2)
    head.init_baseline(time, event)
    wide = torch.as_tensor(np.column_stack([a, b]), dtype=torch.float32)
    h = torch.zeros(n, 1)
    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32)
    with torch.no_grad():
        head.wide.weight.copy_(torch.tensor([[0.8, 0.0]]))  # the old term: a only
    old = head.wide.weight.detach().clone()
    penalty = 0.05
    info = head.fit_wide(head(h, wide).detach(), wide, t, e, penalty=penalty)
    assert info["kept"]
    v = head.wide.weight.detach() - info["scale"] * old  # what this fit added
    refit = float(head.nll(head(h, wide).detach(), t, e)) + 0.5 * penalty * float((v * v).sum())
    assert refit == pytest.approx(info["nll_after"], abs=1e-4)
    w = head.wide.weight.detach().numpy().ravel()
    assert w[0] > 0.5 and w[1] > 0.5, w  # both factors raise the hazard (true log-hazard ratios 1)


def test_fit_wide_on_a_full_head_shifts_all_intervals_alike() -> None:
    rng = np.random.default_rng(7)
    n = 300
    b = rng.normal(size=n)
    time, event = _outcomes(b, rng)
    head = DiscreteHazardHead(2, make_edges(time, event, 5), proportional=False, wide_dim=1)
    head.init_baseline(time, event)
    h = torch.zeros(n, 2)
    wide = torch.as_tensor(b, dtype=torch.float32)[:, None]
    before = head(h, wide).detach()
    info = head.fit_wide(before, wide, torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32))
    assert info["kept"] and info["scale"] == 1.0
    d = head(h, wide).detach() - before
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-5)  # one shift per subject, the same in every interval
    assert float(head.wide.weight.detach()) > 0.5


def test_fit_wide_needs_a_wide_part() -> None:
    head = DiscreteHazardHead(2, np.array([0.0, 1.0, 2.0]), proportional=True)
    with pytest.raises(ValueError, match="^this head has no linear EHR term"):
        head.fit_wide(torch.zeros(2, 2), torch.zeros(2, 1), torch.ones(2), torch.ones(2))


def test_fit_wide_never_reverses_the_network() -> None:
    """A network that ranks backwards gets scale 0 (not a negative scale): the features carry the model."""
    a, b, time, event = _two_factors(400, seed=11)
    head = DiscreteHazardHead(1, make_edges(time, event, 5), proportional=True, wide_dim=1)
    head.init_baseline(time, event)
    h = torch.as_tensor(-a, dtype=torch.float32)[:, None]  # the network learned minus the risk
    with torch.no_grad():
        head.linear.weight.fill_(0.5)
    wide = torch.as_tensor(b, dtype=torch.float32)[:, None]
    info = head.fit_wide(head(h).detach(), wide, torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.float32))
    assert info["kept"] and info["scale"] == 0.0
    assert float(head.linear.weight.detach().abs().max()) == 0.0 and float(head.wide.weight.detach()) > 0.5


def test_subjects_without_features_get_the_training_mean_of_the_linear_term() -> None:
    """An uploaded case has no tabular features: its linear EHR term is the training mean, not 0."""
    cfg = {"fusion": "ehr_only", "head": "discrete", "dim": 8, "edges": [0.0, 10.0, 30.0], "proportional_head": True,
           "ehr_linear": True, "image": {"kind": "none", "out_dim": 8, "hu_window": [-1000, 1000]},
           "ehr": {"sequence": None, "tabular": {"columns": ["a", "b"], "mean": [0, 0], "std": [1, 1]}, "embedding_dim": None}}
    net = SurvivalNet(ModelConfig.from_dict(cfg)).eval()
    assert net.wide_dim == 4 and float(net.wide_mean.abs().sum()) == 0.0
    batch = {"features": torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]),
             "feature_missing": torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]),
             "features_present": torch.tensor([1.0, 1.0, 0.0])}
    assert net.set_wide_mean(batch) == 2  # the subject without features does not count
    assert net.wide_mean.tolist() == [2.0, 3.0, 0.0, 0.5]
    x = net._wide_input(batch)
    assert x is not None and x[0].tolist() == [1.0, 2.0, 0.0, 1.0] and x[2].tolist() == [2.0, 3.0, 0.0, 0.5]
    # no feature tensors at all in the batch (an uploaded case): every row gets the mean
    none = {"codes": torch.zeros(2, 1, dtype=torch.long)}
    assert net._wide_input(none, 2).tolist() == [[2.0, 3.0, 0.0, 0.5]] * 2
    assert net._wide_input(none) is None  # without a batch size there is nothing to expand
    with torch.no_grad():
        before = net({"features_present": torch.zeros(1), "features": torch.zeros(1, 2),
                      "feature_missing": torch.zeros(1, 2)})["raw"]
        net.head.wide.weight.copy_(torch.tensor([[0.5, -1.0, 0.3, 0.4]]))
        after = net({"features_present": torch.zeros(1), "features": torch.zeros(1, 2),
                     "feature_missing": torch.zeros(1, 2)})["raw"]
    # every interval's logit moves by v . mean = 1.0 - 3.0 + 0.2 = -1.8
    assert torch.allclose(after - before, torch.full_like(before, -1.8), atol=1e-5)


def test_lateral_closing_adds_wall_lesions_not_mediastinum() -> None:
    """Closing the lateral side of each lung (5 % of the slice) covers big lesions on the chest wall, adds no vessel or bone."""
    from core.demo import phantom as P
    from core.demo.latents import sample_latents
    from core.preprocess.lung import lung_mask

    lat = sample_latents(300, seed=5)
    rows = lat[(lat["lesion"] == 1) & (lat["lesion_central"] == 0) & (lat["lesion_radius_mm"] > 15)].head(12)
    assert len(rows) == 12
    base, closed = [], []
    for _, row in rows.iterrows():
        ph = P.render_phantom(row, np.random.default_rng(2))
        hu, les = ph.hu.astype(np.float32), ph.labels == P.LESION
        m0, m1 = lung_mask(hu), lung_mask(hu, close_fraction=0.05)
        assert (m0 <= m1).all()  # the closing only adds
        base.append(m0[les].mean())
        closed.append(m1[les].mean())
        for tissue in (P.BLOOD, P.VESSEL, P.RIB, P.CORTICAL, P.CANCELLOUS, P.AIR):
            assert m1[ph.labels == tissue].mean() < 0.01, P.LABEL_NAMES[tissue]
        assert m1[ph.labels == P.MYOCARDIUM].mean() < 0.02
        assert (m1 & ~m0 & ~les & (ph.hu > -300)).sum() < 120  # extra soft tissue that is not lesion
    base_a, closed_a = np.array(base), np.array(closed)
    missed = base_a < 0.5  # lesions the plain mask leaves out: indentations of the lung border
    assert missed.sum() >= 3, base
    assert closed_a[missed].mean() > 0.7 and closed_a.mean() > base_a.mean() + 0.15, (base, closed)


def test_medial_closing_adds_hilar_lesions_not_vessel_rims() -> None:
    """On the mediastinal side the closing adds solid tissue (> -100 HU) away from enhanced vessels: central lesions."""
    from core.demo import phantom as P
    from core.demo.latents import sample_latents
    from core.preprocess.lung import lung_mask

    lat = sample_latents(300, seed=5)
    rows = lat[(lat["lesion"] == 1) & (lat["lesion_central"] == 1) & (lat["lesion_radius_mm"] > 15)].head(12)
    assert len(rows) == 12
    lateral, medial = [], []
    for _, row in rows.iterrows():
        ph = P.render_phantom(row, np.random.default_rng(2))
        hu, les = ph.hu.astype(np.float32), ph.labels == P.LESION
        m1, m2 = lung_mask(hu, close_fraction=0.05), lung_mask(hu, close_fraction=0.05, medial=True)
        assert (m1 <= m2).all()  # the medial side only adds
        lateral.append(m1[les].mean())
        medial.append(m2[les].mean())
        added = m2 & ~m1
        assert (hu[added] > -100).all() and (hu[added] < 120).all()
        for tissue in (P.BLOOD, P.VESSEL, P.RIB, P.CORTICAL, P.CANCELLOUS, P.AIR, P.FAT):
            assert m2[ph.labels == tissue].mean() < 0.01, P.LABEL_NAMES[tissue]
        assert m2[ph.labels == P.MYOCARDIUM].mean() < 0.02
        assert (added & ~les).sum() < 60  # extra voxels that are not lesion
    lat_a, med_a = np.array(lateral), np.array(medial)
    missed = lat_a < 0.6  # hilar lesions the lateral closing leaves out
    assert missed.sum() >= 3, lateral
    assert med_a[missed].mean() > lat_a[missed].mean() + 0.25 and med_a.mean() > lat_a.mean() + 0.1, (lateral, medial)


def test_lung_coverage_warning_on_an_abdominal_ct_not_on_demo_chests(real_ct: Path) -> None:
    """The shared real CT is abdominal (0.31 L of enclosed gas, mostly bowel): warned; demo chest phantoms: not."""
    from core.demo import phantom as P
    from core.demo.latents import sample_latents
    from core.io.study import load_study
    from core.preprocess.lung import MIN_LUNG_ML, lung_coverage_warning, lung_volume_ml

    volume = load_study(real_ct)
    assert lung_volume_ml(volume.hu, volume.spacing_mm) == pytest.approx(314.6, abs=1.0)
    note = lung_coverage_warning(volume.hu, volume.spacing_mm)
    assert note is not None and note.startswith("This CT shows 0.31 L of air inside the body;")
    assert "\n" not in note and "do not rely on the image part" in note
    lat = sample_latents(20, seed=3)
    for i in range(0, 20, 4):
        ph = P.render_phantom(lat.iloc[i], np.random.default_rng(i))
        spacing = tuple(float(x) for x in P.SPACING_MM)
        assert lung_volume_ml(ph.hu, spacing) > 1.4 * MIN_LUNG_ML
        assert lung_coverage_warning(ph.hu, spacing) is None


@pytest.mark.parametrize("radius", [1, 3, 5, 26])
def test_distance_transform_closing_equals_binary_closing_with_a_disk(radius: int) -> None:
    """The lung closing uses distance transforms (cost independent of the radius); same result as scipy's closing."""
    from scipy import ndimage

    from core.preprocess.lung import _close_disk

    rng = np.random.default_rng(radius)
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = yy ** 2 + xx ** 2 <= radius * radius + 0.5
    pad = radius + 1
    for _ in range(5):
        region = ndimage.binary_opening(rng.random((60, 70)) < 0.55)
        expected = ndimage.binary_closing(np.pad(region, pad), structure=disk)[pad:-pad, pad:-pad]
        got = _close_disk(region, radius)
        assert got.shape == region.shape and (got == expected).all()
        assert (got >= region).all()


# ----------------------------------------------------------------------------- organ-agnostic 2D encoder (issue 14)

NEW_2D = {"kind": "2d", "out_dim": 8, "size": 32, "channels": [4, 8, 8], "hu_window": [-1000.0, 1000.0], "lung_mask": False,
          "windows": [[-160.0, 240.0], [-200.0, 1000.0]], "contrast": [5], "strides": [2, 2, 1], "pool": "attnmax"}


def test_old_2d_configs_build_the_encoder_they_were_trained_with() -> None:
    """A config without the organ-agnostic keys (the lung-focused demo models shipped up to session 14, kept in
    tests/fixtures) gets the old encoder, key for key."""
    fixtures = Path(__file__).resolve().parent / "fixtures"
    for name in ("image_only", "coattention_image"):
        d = __import__("json").loads((fixtures / f"lung_2d_{name}_config.json").read_text())
        cfg = ModelConfig.from_dict(d)
        assert cfg.image.windows == () and cfg.image.strides is None and cfg.image.pool == "meanmax"
        assert cfg.to_dict()["image"] == d["image"]  # written back without new keys
        enc = SurvivalNet(cfg).image_encoder
        assert isinstance(enc, SliceEncoder2D) and enc.stem is None and enc.attn is None
        assert tuple(enc.features[0].weight.shape) == (8, 3, 3, 3)  # one HU channel + 2 coordinates
        assert [m.stride for m in enc.features if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 4
        assert enc.soft_tissue is not None  # the lung-masked models keep their soft-tissue input
        steps = [s["name"] for s in cfg.image.transforms().describe()]
        assert steps == ["hu_window", "lung_mask", "resize_slices"]


def test_organ_agnostic_encoder_config_round_trip_and_transforms() -> None:
    cfg = ImageConfig.from_dict(NEW_2D)
    assert ImageConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict() == NEW_2D
    chain = cfg.transforms()
    described = chain.describe()
    assert [s["name"] for s in described] == ["hu_window", "resize_slices", "channel_stack"]
    assert described[-1]["windows_hu"] == [[-160.0, 240.0], [-200.0, 1000.0]] and described[-1]["local_contrast_kernels_px"] == [5]
    assert chain.soft_tissue_step() is None  # no lung mask: no lung soft-tissue count
    enc = SliceEncoder2D.from_config(cfg)
    assert tuple(enc.features[0].weight.shape) == (4, 2 * 2 + 2, 3, 3)  # 2 windows + 2 contrast + 2 coordinates
    x = chain(torch.zeros(2, 3, 40, 36))
    assert x.shape == (2, 3, 32, 32) and enc(x).shape == (2, 3, 8)
    assert enc.gradcam_layer is enc.features[-3] and enc.features[-3].stride == (1, 1)


def test_channel_stack_marks_a_hypodense_lesion_wherever_it_lies() -> None:
    """Local contrast is a per-image filter: a 40 HU darker disc gives the same negative response in any place."""
    from core.preprocess.transforms import ChannelStack, HUWindow

    window = HUWindow(-1000.0, 1000.0)
    stack = ChannelStack(window, ((-160.0, 240.0),), (9,))
    yy, xx = np.mgrid[:48, :48]
    responses = []
    for cy, cx in ((12, 12), (30, 35)):
        hu = np.full((48, 48), 60.0, np.float32)          # liver-like tissue
        hu[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 20.0   # a 3-pixel hypodense lesion
        y = stack(window(torch.from_numpy(hu))[None, None])[0]
        assert y.shape == (2, 48, 48)
        assert float(y[0, cy, cx]) == pytest.approx((20.0 - 40.0) / 200.0)   # the window channel
        responses.append(float(y[1, cy, cx]))
        far = y[1, (yy - cy) ** 2 + (xx - cx) ** 2 > 100]
        assert float(far.abs().max()) < 1e-6            # flat tissue: no contrast
    assert responses[0] < -0.1 and responses[0] == pytest.approx(responses[1], abs=1e-6)


@pytest.mark.parametrize("shape,k", [((2, 3, 96, 96), 9), ((1, 1, 7, 11), 3), ((4, 1, 5, 6), 9), ((3, 20, 33), 15)])
def test_box_mean_equals_average_pooling_without_the_padding(shape: tuple[int, ...], k: int) -> None:
    """The summed-area local mean gives what avg_pool2d(count_include_pad=False) gives, values and gradients,
    also where the kernel is wider than the image and on a large flat background (no float cancellation)."""
    import torch.nn.functional as F

    from core.preprocess.transforms import box_mean

    gen = torch.Generator().manual_seed(k)
    x = torch.randn(*shape, generator=gen)
    x[..., : shape[-2] // 2, :] = -1.0  # air clamped to the window's floor over half of every image
    x4 = x if x.dim() == 4 else x[:, None]
    ref = F.avg_pool2d(x4, k, stride=1, padding=k // 2, count_include_pad=False).reshape(shape)
    a = x.clone().requires_grad_(True)
    b = x4.clone().requires_grad_(True)
    got = box_mean(a, k)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert float((got - ref).detach().abs().max()) < 1e-5
    weights = torch.randn(*shape, generator=gen)
    (got * weights).sum().backward()
    (F.avg_pool2d(b, k, stride=1, padding=k // 2, count_include_pad=False).reshape(shape) * weights).sum().backward()
    assert b.grad is not None and a.grad is not None
    assert float((a.grad - b.grad.reshape(shape)).abs().max()) < 1e-5


def test_organ_agnostic_encoder_gradients_reach_tissue_outside_the_lungs() -> None:
    """The lung mask zeroes every gradient outside the lungs; the organ-agnostic chain reaches liver and bone."""
    hu = torch.full((1, 2, 40, 40), 60.0)
    hu[:, :, 10:30, 10:30] = -850.0                  # a lung
    hu[:, :, 34:37, 5:8] = 600.0                     # bone outside it
    hu[:, :, 2:6, 30:36] = 20.0                      # a liver lesion outside it
    masked = ImageConfig(kind="2d", size=40, lung_mask=True).transforms()
    open_cfg = ImageConfig.from_dict({**NEW_2D, "size": 40})
    for chain, enc, outside_zero in ((masked, SliceEncoder2D(8, 40, (4, 8), soft_tissue=masked.soft_tissue_step()), True),
                                     (open_cfg.transforms(), SliceEncoder2D.from_config(open_cfg), False)):
        h = hu.clone().requires_grad_(True)
        torch.manual_seed(0)
        enc(chain(h)).sum().backward()
        assert h.grad is not None
        for region in (h.grad[0, :, 34:37, 5:8], h.grad[0, :, 2:6, 30:36]):
            assert (float(region.abs().sum()) == 0.0) == outside_zero


def test_encoder_2d_settings_are_checked() -> None:
    from core.errors import InputError
    from core.train.image_stage import encoder_2d_config

    assert encoder_2d_config({"windows": [[-160, 240]], "contrast": [9], "last_stride": 1, "pool": "attnmax"}, 3) == {
        "windows": [[-160.0, 240.0]], "contrast": [9], "strides": [2, 2, 1], "pool": "attnmax"}
    for bad in ({"windows": [[240, -160]]}, {"windows": [[0, 1]], "contrast": [4]}, {"last_stride": 3}, {"pool": "sum"}):
        with pytest.raises(InputError):
            encoder_2d_config(bad, 3)


def test_augment_slices_shifts_each_subject_alike_across_its_slices() -> None:
    from core.preprocess.transforms import augment_slices

    x = torch.zeros(3, 4, 16, 16)
    x[:, :, 8, 8] = 1.0
    g = torch.Generator().manual_seed(0)
    y = augment_slices(x, 3, 0.0, g)
    for i in range(3):
        peaks = [divmod(int(torch.argmax(y[i, s])), 16) for s in range(4)]
        assert len(set(peaks)) == 1 and max(abs(peaks[0][0] - 8), abs(peaks[0][1] - 8)) <= 3
    z = augment_slices(x, 0, 0.05, g)
    offsets = (z - x).flatten(1)
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-6) and float(offsets.abs().max()) <= 0.05 + 1e-6


def test_stage_a_batch_of_a_3d_encoder_masks_its_patch_tokens() -> None:
    """Issue 14: stage A of `--image-encoder-kind 3d` failed with `size of tensor a (32) must match ... (256)`: the
    prepared volume's mask counts grid slices, the encoder gives patch tokens."""
    from core.train.image_stage import _stage_a_batch

    cfg = {"fusion": "image_only", "head": "discrete", "dim": 8, "edges": [0.0, 10.0, 30.0], "proportional_head": True,
           "image": {"kind": "3d", "out_dim": 8, "grid": [16, 32, 32], "channels": [4, 8, 8], "hu_window": [-1000, 1000]},
           "ehr": {"sequence": None, "tabular": None, "embedding_dim": None}}
    net = SurvivalNet(ModelConfig.from_dict(cfg))
    batch = {"image_preprocessed": torch.zeros(3, 16, 32, 32), "image_token_mask": torch.ones(3, 16),
             "image_present": torch.tensor([1.0, 1.0, 0.0])}
    b = _stage_a_batch(net, batch, (2, 0.01))  # augmentation applies to per-slice inputs only: the volume passes as is
    assert b["image_tokens"].shape == (3, 32, 8) and b["image_token_mask"].tolist() == [[1.0] * 32, [1.0] * 32, [0.0] * 32]
    out = net(b)
    assert out["survival"].shape == (3, 3) and torch.isfinite(out["risk"]).all()
    # 2d: one token per slice, the slice mask (with padding) is kept as it is
    cfg["image"] = {"kind": "2d", "out_dim": 8, "size": 16, "channels": [4, 8], "hu_window": [-1000, 1000]}
    net2 = SurvivalNet(ModelConfig.from_dict(cfg))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    b2 = _stage_a_batch(net2, {"image_preprocessed": torch.zeros(2, 3, 16, 16), "image_token_mask": mask,
                               "image_present": torch.ones(2)})
    assert torch.equal(b2["image_token_mask"], mask) and b2["image_tokens"].shape == (2, 3, 8)
