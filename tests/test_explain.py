"""core.explain, core.sanity and ``python -m core explain|sanity`` on a tiny demo cohort and a 1-epoch model."""

from __future__ import annotations

import dataclasses

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.cli import main
from core.errors import InputError
from tests.conftest import ROOT

METHODS = ("saliency", "integrated_gradients", "gradcam", "occlusion", "smoothgrad")


def build_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cohort, model): demo n=40 and a cross-attention model trained 1 epoch (2 seeds); built once per session."""
    from core.demo import write_demo_cohort
    from core.train import train_model

    base = tmp_path_factory.getbasetemp() / "explain-demo"
    cohort, model = base / "cohort", base / "model"
    if not (model / "config.json").exists():
        write_demo_cohort(cohort, n=40, seed=0)
        train_model(cohort, "cross_attention", model, epochs=1, device="cpu", seed=0, ensemble=2)
    return cohort, model


@pytest.fixture(scope="session")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from core.cohort import load_cohort
    from core.registry import load_model

    cohort_dir, model_dir = build_case(tmp_path_factory)
    cohort = load_cohort(cohort_dir)
    model = load_model(model_dir)
    sid = cohort.ids("test")[0]
    return {"cohort_dir": cohort_dir, "model_dir": model_dir, "cohort": cohort, "model": model, "sid": sid,
            "inputs": model.case_inputs(cohort, sid), "volume": cohort.load_volume(sid)}


@pytest.mark.parametrize("method", METHODS)
def test_per_slice_map_has_volume_shape_and_is_zero_off_the_slice(case: dict, method: str) -> None:
    from core.explain import attribute

    k = 12
    a = attribute(case["model"], case["inputs"], method, 365.0, k, n_steps=8)
    assert a.map.shape == case["volume"].hu.shape and a.map.dtype == np.float32
    assert np.isfinite(a.map).all()
    assert np.abs(a.map[k]).max() > 0
    off = np.delete(a.map, k, axis=0)
    assert not off.any()
    assert a.slice_index == k and a.top_slices == [(k, 1.0)]
    assert a.method == method and a.target == "risk 1 - S(t) at 365 d" and a.horizon_days == 365.0


@pytest.mark.parametrize("method", ("saliency", "gradcam"))
def test_whole_volume_maps(case: dict, method: str) -> None:
    from core.explain import attribute

    a = attribute(case["model"], case["inputs"], method, 365.0, None)
    s = case["volume"].hu.shape[0]
    assert a.map.shape == case["volume"].hu.shape and np.isfinite(a.map).all()
    assert (np.abs(a.map).sum(axis=(1, 2)) > 0).sum() >= s // 2  # spread over the volume, not one slice
    assert a.slice_index is None
    shares = [v for _, v in a.top_slices]
    assert len(a.top_slices) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-6


def test_per_slice_saliency_equals_the_whole_volume_gradient_on_that_slice(case: dict) -> None:
    from core.explain import attribute

    k = 9
    whole = attribute(case["model"], case["inputs"], "saliency", 365.0, None, with_events=False).map
    lazy = attribute(case["model"], case["inputs"], "saliency", 365.0, k, with_events=False).map
    scale = float(np.abs(whole[k]).max())
    assert scale > 0
    np.testing.assert_allclose(lazy[k], whole[k], rtol=1e-3, atol=1e-4 * scale)


def test_attribution_computes_the_lung_mask_once_and_matches_the_plain_gradient(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Integrated gradients and occlusion run perturbed copies of the CT: its lung mask is computed once and held fixed."""

    from core import explain
    from core.preprocess import transforms

    model, inputs = case["model"], case["inputs"]
    chain = model.transforms
    assert chain is not None and chain.lung is not None
    calls: list[tuple[int, ...]] = []
    real = transforms.lung_mask

    def counting(hu: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(tuple(hu.shape))
        return real(hu, *args, **kwargs)

    monkeypatch.setattr(transforms, "lung_mask", counting)
    shape = tuple(case["volume"].hu.shape)
    ig = explain.attribute(model, inputs, "integrated_gradients", 365.0, None, n_steps=8, internal_batch_size=4,
                           with_events=False).map
    assert calls == [shape]
    lungs = real(inputs.image.detach()[0].numpy(), close_fraction=chain.lung.close, medial=chain.lung.medial)
    assert np.abs(ig[lungs]).sum() > 0 and not ig[~lungs].any()  # attributions only inside this CT's lungs
    calls.clear()
    explain.attribute(model, inputs, "occlusion", 365.0, 7, with_events=False)
    assert calls == [shape]  # per-slice mode too: the case's mask once, its slice held fixed for that slice
    # saliency (one forward, nothing pinned) is the plain gradient of the risk
    calls.clear()
    got = explain.attribute(model, inputs, "saliency", 365.0, None, with_events=False).map
    assert calls == [shape]
    x = inputs.image.detach().float().clone().requires_grad_(True)
    batch = model.encoded_batch(dataclasses.replace(inputs, image=x))
    explain.risk_at(model.net(batch)["survival"], np.asarray(model.times, float), 365.0).sum().backward()
    expected = x.grad[0].abs().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_risk_target_is_the_risk_predict_reports(case: dict) -> None:
    """Between grid times the explained risk is the step reading that predictions report, not an interpolation."""
    import torch

    from core.explain import risk_at

    model = case["model"]
    times = model.times
    with torch.no_grad():
        surv = model.forward(case["inputs"]).survival
    mid = float((times[2] + times[3]) / 2)
    assert float(risk_at(surv, times, mid)[0]) == pytest.approx(1.0 - float(surv[0, 2]), abs=1e-6)
    reported = model.predict_case(case["inputs"], horizons=(int(mid),)).risk_at[int(mid)]
    assert float(risk_at(surv, times, int(mid))[0]) == pytest.approx(reported, abs=1e-5)
    assert float(risk_at(surv, times, times[-1] + 1000)[0]) == pytest.approx(1.0 - float(surv[0, -1]), abs=1e-6)


def test_large_study_is_attributed_one_copy_at_a_time_with_the_same_map(case: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """IG and occlusion hold fewer copies of a large CT per forward pass (memory), and give the same map."""
    import captum.attr

    from core import explain

    assert explain.batch_for(150 * 512 * 512, 8) == 1  # a full-size CT: one copy (8 copies held 5.8-12 GB)
    assert explain.batch_for(32 * 96 * 96, 8) == 8 and explain.batch_for(10, 3) == 3
    voxels = int(case["inputs"].image.numel())
    before = {m: explain.attribute(case["model"], case["inputs"], m, with_events=False).map
              for m in ("integrated_gradients", "occlusion")}
    seen: list[int] = []
    for cls, key in ((captum.attr.IntegratedGradients, "internal_batch_size"),
                     (captum.attr.Occlusion, "perturbations_per_eval")):
        original = cls.attribute

        def spy(self: Any, *args: Any, _original: Any = original, _key: str = key, **kwargs: Any) -> Any:
            seen.append(int(kwargs[_key]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "attribute", spy)
    monkeypatch.setattr(explain, "BATCH_VOXELS", 2 * voxels)  # this small study now counts as a large one
    for m, ref in before.items():
        got = explain.attribute(case["model"], case["inputs"], m, with_events=False).map
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))  # float sums
    assert seen == [2, 2]


def test_smoothgrad_is_the_same_map_on_every_run_at_any_batch_size(case: dict,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SmoothGrad's noise comes from a seeded generator: the same map again (and with fewer copies per forward pass),
    torch's process-wide random state untouched; without noise it is the plain saliency map."""
    import torch

    from core import explain

    def sg() -> np.ndarray:
        return explain.attribute(case["model"], case["inputs"], "smoothgrad", 365.0, None, with_events=False).map

    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = sg()
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(sg(), first)
    monkeypatch.setattr(explain, "BATCH_VOXELS", 2 * int(case["inputs"].image.numel()))  # 2 copies, not 8
    np.testing.assert_allclose(sg(), first, rtol=1e-4, atol=1e-4 * float(np.abs(first).max()))
    plain = explain.attribute(case["model"], case["inputs"], "saliency", 365.0, None, with_events=False).map
    assert np.abs(first - plain).max() > 0.05 * np.abs(plain).max()  # the noise is really there
    monkeypatch.setattr(explain, "SMOOTHGRAD_STDEV_HU", 1e-6)
    np.testing.assert_allclose(sg(), plain, rtol=1e-4, atol=1e-4 * float(np.abs(plain).max()))


def test_bad_arguments_raise_one_line_input_errors(case: dict) -> None:
    from core.explain import attribute

    with pytest.raises(InputError, match="method: got lime, "):
        attribute(case["model"], case["inputs"], "lime")
    with pytest.raises(InputError, match="horizon_days: got -5"):
        attribute(case["model"], case["inputs"], "saliency", -5)
    with pytest.raises(InputError, match="slice_index: got 99"):
        attribute(case["model"], case["inputs"], "saliency", 365, 99)
    hidden = type(case["inputs"])(**{**case["inputs"].__dict__})
    import torch

    hidden.image, hidden.image_mask = None, torch.zeros(1)
    with pytest.raises(InputError, match="image: got not used, "):
        attribute(case["model"], hidden, "saliency")


def test_event_attributions_one_row_per_event(case: dict) -> None:
    from core.explain import event_attributions, top_event_rows

    table = event_attributions(case["model"], case["inputs"], 365.0, n_steps=16)
    n = len(case["inputs"].events)
    assert n > 0 and len(table) == n
    assert list(table.columns) == ["code", "time", "numeric_value", "days_before_index", "score", "attention"]
    assert np.isfinite(table["score"]).all() and np.abs(table["score"]).max() > 0
    assert table["attention"].sum() == pytest.approx(1.0, abs=1e-4)  # event weights sum to 1
    assert (table["days_before_index"] >= 0).all()
    top = top_event_rows(table, k=3)
    assert len(top) == 3 and all(t[2].startswith("day ") for t in top)
    assert abs(top[0][3]) == pytest.approx(float(np.abs(table["score"]).max()))


def test_explain_cli_saves_the_map_as_nifti_on_the_study_geometry(case: dict, tmp_path: Path) -> None:
    """--save-map map.nii.gz / map.nii: the .npy map's values, on the study's own affine (the viewer's NIfTI's)."""
    import nibabel as nib

    from core.app.volume_nifti import nifti_to_grid, volume_to_nifti

    args = ["explain", "--model", str(case["model_dir"]), "--cohort", str(case["cohort_dir"]), "--subject", case["sid"],
            "--method", "gradcam", "--out", str(tmp_path / "f.png"), "--slice", "10"]
    maps = {}
    for name in ("map.npy", "map.nii.gz", "map.nii"):
        assert main([*args, "--save-map", str(tmp_path / name)]) == 0
        maps[name] = tmp_path / name
    ref = np.load(maps["map.npy"])
    assert float(np.abs(ref).max()) > 0
    ct_grid, ct_affine = nifti_to_grid(volume_to_nifti(case["volume"]))
    for name in ("map.nii.gz", "map.nii"):
        data = maps[name].read_bytes()
        assert (data[:2] == b"\x1f\x8b") == name.endswith(".gz")
        grid, affine = nifti_to_grid(data)
        np.testing.assert_allclose(grid, ref, rtol=1e-6, atol=1e-9)  # back on [S, R, C], value for value
        np.testing.assert_allclose(affine, ct_affine)  # the CT's own geometry: the map lies over the study
        assert nib.load(str(maps[name])).shape == ct_grid.shape[::-1]


@pytest.mark.parametrize("suffix", (".png", ".svg", ".pdf"))
def test_explain_cli_writes_valid_figures_without_the_subject_id(case: dict, tmp_path: Path, suffix: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"figure{suffix}"
    npy = tmp_path / "map.npy"
    rc = main(["explain", "--model", str(case["model_dir"]), "--cohort", str(case["cohort_dir"]), "--subject", case["sid"],
               "--method", "gradcam", "--out", str(out), "--slice", "10", "--json", "--save-map", str(npy)])
    assert rc == 0
    stdout = capsys.readouterr().out
    result = json.loads(stdout)
    assert {"top_slices", "top_events", "method", "target", "horizon_days", "out"} <= set(result)
    assert result["method"] == "gradcam" and result["horizon_days"] == 365.0 and result["out"] == str(out)
    assert result["top_slices"][0][0] == 10
    assert case["sid"] not in stdout
    data = out.read_bytes()
    assert case["sid"].encode() not in data
    assert 0.0 < result["target_value"] < 1.0
    if suffix == ".png":
        from PIL import Image

        # the value the map attributes is the risk predict gives the case (it printed none before)
        assert main(["predict", "--model", str(case["model_dir"]), "--cohort", str(case["cohort_dir"]),
                     "--subject", case["sid"], "--json"]) == 0
        predicted = json.loads(capsys.readouterr().out)
        assert predicted["image_withheld"] is None
        assert result["target_value"] == pytest.approx(predicted["risk_at"]["365"], abs=1e-5)
        with Image.open(out) as im:
            assert im.format == "PNG" and im.info["dpi"][0] >= 300 and im.size[0] >= 1000
    elif suffix == ".svg":
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    else:
        assert data.startswith(b"%PDF")
    amap = np.load(npy)
    assert amap.shape == case["volume"].hu.shape and amap[10].any() and not amap[:10].any()


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "lime", "--out", "x.png"], "error: --method: got lime, is not an attribution method"),
    (["--method", "saliency", "--out", "x.png", "--save-map", "x.mat"],
     "error: --save-map: got x.mat, must end in .npy, .nii.gz, .nii; fix: pass e.g. map.nii.gz"),
    (["--method", "saliency", "--out", "x.gif"], "error: --out: got x.gif, has an unknown suffix"),
    (["--method", "saliency", "--out", "x.png", "--subject", "nobody"], "error: --subject: got nobody, not in cohort.csv"),
])
def test_explain_cli_bad_input_exits_2(case: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str], message: str) -> None:
    base = ["explain", "--model", str(case["model_dir"]), "--cohort", str(case["cohort_dir"]), "--subject", case["sid"]]
    args = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    rc = main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith(message), err


def test_explain_with_a_model_that_reads_no_ct_blames_the_model(case: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """It said the subject had no study, where the subject has one and ehr_only reads none."""
    rc = main(["explain", "--model", str(ROOT / "assets" / "demo_models" / "ehr_only"), "--cohort", str(case["cohort_dir"]),
               "--subject", case["sid"], "--method", "saliency", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --model: got ehr_only, reads no CT voxels"), err


def test_sanity_randomization_and_pointing_game(case: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from core.sanity import spearman

    assert spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)
    model_copy = tmp_path / "model"
    shutil.copytree(case["model_dir"], model_copy)
    rc = main(["sanity", "--model", str(model_copy), "--cohort", str(case["cohort_dir"]), "--max-cases", "2",
               "--randomization-cases", "1", "--json", "--update-card"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    corr = [r["spearman"] for r in result["randomization"]]
    assert corr[0] == 1.0 and all(-1.0 <= c <= 1.0 for c in corr)
    assert result["randomization"][1]["layer"] == "head"
    assert any(r["layer"].startswith("image_encoder.") for r in result["randomization"])
    assert corr[-1] < 0.9  # re-initialising the whole network changes the map
    assert 0.0 <= result["pointing_rate"] <= 1.0 and 1 <= result["pointing_n"] <= 2
    card = (model_copy / "MODEL_CARD.md").read_text()
    assert card.count("## Sanity checks") == 1 and f"{result['pointing_hits']} hits" in card
    # the block says which cases it measured (it named neither the cohort nor the randomization cases)
    assert f"Method `saliency` (cohort {Path(case['cohort_dir']).resolve().name}, test split, 1 randomization case(s))" in card
