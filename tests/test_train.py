"""End to end: train every strategy on a tiny demo cohort, save, load, predict; bad model folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main as cli_main
from core.errors import InputError
from core.models import FUSIONS

TINY = {"dim": 16, "batch_size": 16, "patience": 3,
        "image": {"epochs": 2, "size": 32, "channels": [4, 8, 8], "batch_size": 8, "patience": 2},
        "contrastive": {"epochs": 2}}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.demo import write_demo_cohort

    import pandas as pd

    root = write_demo_cohort(tmp_path_factory.mktemp("tiny") / "cohort", n=48, seed=1)
    table = pd.read_csv(root / "cohort.csv")  # the phantoms' blood pool is enhanced (150-280 HU): with contrast,
    table["contrast"] = ["" if i % 8 == 0 else "yes" for i in range(len(table))]  # a few without a record
    table.to_csv(root / "cohort.csv", index=False)
    return root


@pytest.fixture(scope="session")
def models(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from core.train import train_model

    root = tmp_path_factory.mktemp("models")
    out = {}
    for fusion in FUSIONS:  # concat with the default ensemble (5 seeds, tested below), the others with 2 (quicker)
        train_model(tiny_cohort, fusion, root / fusion, epochs=3, device="cpu", overrides=TINY,
                    ensemble=None if fusion == "concat" else 2)
        out[fusion] = root / fusion
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_model_folder_and_predict_json(fusion: str, models: dict[str, Path], tiny_cohort: Path) -> None:
    from core.predict import predict_subject

    folder = models[fusion]
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "metrics.json", "model.safetensors"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["c_index"] <= 1.0 and len(metrics["test"]["c_index_ci"]) == 2
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Not a medical device" in card and fusion in card and "95% CI" in card
    p = predict_subject(folder, tiny_cohort, "demo0003")
    t, s, lo, hi = (np.array(p[k]) for k in ("times", "survival", "lower", "upper"))
    assert t[0] == 0 and np.all(np.diff(t) > 0)
    assert np.all(np.diff(s) <= 1e-9) and np.all((s >= 0) & (s <= 1))
    assert np.all(lo <= s + 1e-9) and np.all(s <= hi + 1e-9)
    assert set(p["risk_at"]) == {"30", "365", "1825"} and all(0 <= v <= 1 for v in p["risk_at"].values())
    # the risk read off the band's edges holds the risk (these models' band: their members' range)
    for h, (low, high) in p["risk_band_at"].items():
        assert low - 1e-6 <= p["risk_at"][h] <= high + 1e-6 and low == pytest.approx(1 - hi[t <= int(h)][-1], abs=1e-5)
    expected = {"image_only": ["image"], "ehr_only": ["ehr_events", "ehr_features"]}.get(fusion, ["image", "ehr_events", "ehr_features"])
    assert p["modalities_used"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_loaded_model_forward_is_differentiable(fusion: str, models: dict[str, Path], tiny_cohort: Path) -> None:
    from core.cohort import load_cohort
    from core.registry import load_model

    model = load_model(models[fusion])
    cohort = load_cohort(tiny_cohort)
    inputs = model.case_inputs(cohort, "demo0005")
    vol = cohort.load_volume("demo0005")
    if fusion == "ehr_only":
        assert inputs.image is None
    else:
        assert inputs.image is not None and tuple(inputs.image.shape) == (1, *vol.hu.shape)
        inputs.image.requires_grad_(True)
    out = model.forward(inputs)
    assert out.survival.shape == (1, len(model.times))
    if out.slice_weights is not None:
        assert out.slice_weights.shape == (1, vol.hu.shape[0])
        assert float(out.slice_weights.detach().sum()) == pytest.approx(1.0, abs=1e-4)
    if out.event_weights is not None:
        assert out.event_weights.shape == (1, len(inputs.events))
        assert float(out.event_weights.detach().sum()) == pytest.approx(1.0, abs=1e-4)
    if inputs.image is not None:
        out.risk.sum().backward()
        assert inputs.image.grad is not None and inputs.image.grad.shape == inputs.image.shape
        assert float(inputs.image.grad.abs().sum()) > 0


@pytest.mark.slow
def test_missing_image_uses_ehr_only(models: dict[str, Path], tiny_cohort: Path) -> None:
    from core.cohort import load_cohort
    from core.registry import load_model

    model = load_model(models["cross_attention"])
    inputs = model.case_inputs(load_cohort(tiny_cohort), "demo0005")
    inputs.image, inputs.image_mask = None, torch.zeros(1)
    pred = model.predict_case(inputs)
    assert pred.modalities_used == ["ehr_events", "ehr_features"]
    assert pred.slice_weights is not None and float(pred.slice_weights.sum()) == 0.0
    assert np.all(np.diff(pred.survival) <= 1e-9)


@pytest.mark.slow
def test_same_seed_same_weights(tiny_cohort: Path, models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from core.train import train_model

    train_model(tiny_cohort, "concat", tmp_path / "again", epochs=3, device="cpu", overrides=TINY)
    a, b = load_file(str(models["concat"] / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["pwe", "cox"])
def test_other_heads(head: str, tiny_cohort: Path, tmp_path: Path) -> None:
    from core.predict import predict_subject
    from core.train import train_model

    m = train_model(tiny_cohort, "concat", tmp_path / head, head=head, epochs=3, device="cpu", overrides=TINY)
    assert m["head"] == head and 0 <= m["test"]["c_index"] <= 1
    p = predict_subject(tmp_path / head, tiny_cohort, "demo0001")
    s = np.array(p["survival"])
    assert s[0] == 1.0 and np.all(np.diff(s) <= 1e-9) and np.all(np.array(p["lower"]) <= s + 1e-9)


def test_safetensors_whose_first_byte_looks_like_a_pickle_loads(tmp_path: Path) -> None:
    """A safetensors header of 128 + 256 k bytes makes the file start with 0x80, the pickle opcode."""
    from safetensors.torch import save_file

    from core.registry import read_safetensors

    for extra in range(300):
        path = tmp_path / "w.safetensors"
        save_file({"w" + "x" * extra: torch.arange(3.0)}, str(path))
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with low byte 0x80 in 300 tries")
    (key, value), = read_safetensors(path).items()
    assert value.tolist() == [0.0, 1.0, 2.0] and key.startswith("w")


def test_pickle_checkpoint_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    from core.registry import load_model

    bad = tmp_path / "bad"
    shutil.copytree(models["ehr_only"], bad)
    torch.save({"w": torch.zeros(2)}, bad / "model.safetensors")
    with pytest.raises(InputError, match=r"^model.safetensors: got a torch.save zip archive \(pickle\), not a safetensors file"):
        load_model(bad)
    import pickle

    (bad / "model.safetensors").write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(InputError, match="^model.safetensors: got a Python pickle, not a safetensors file"):
        load_model(bad)


def test_cli_predict_and_errors(models: dict[str, Path], tiny_cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["predict", "--model", str(models["ehr_only"]), "--cohort", str(tiny_cohort), "--subject", "demo0002", "--json"])
    out = capsys.readouterr()
    assert rc == 0
    assert set(json.loads(out.out)) >= {"times", "survival", "lower", "upper", "risk_at", "modalities_used"}
    rc = cli_main(["predict", "--model", str(models["ehr_only"]), "--cohort", str(tiny_cohort), "--subject", "nobody", "--json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --subject: got nobody, not in cohort.csv; fix:") and "\n" not in err
    rc = cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", "/tmp/x", "--device", "cuda"]) if not torch.cuda.is_available() else 2
    assert rc == 2
    capsys.readouterr()
    assert cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", "/tmp/x",
                     "--feature-dropout", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: --feature-dropout: got 2, must be a probability in [0, 1) or auto")


def test_cli_feature_dropout_reaches_training(tiny_cohort: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import core.train

    seen: dict = {}

    def fake(*args: object, **kwargs: object) -> dict:
        seen.update(kwargs)
        return {"test": {}, "train_seconds": 0.0, "world_size": 1}

    monkeypatch.setattr(core.train, "train_model", fake)
    assert cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", str(tmp_path / "x"),
                     "--body-crop", "--feature-dropout", "0.3"]) == 0
    assert seen["overrides"] == {"image": {"body_crop": True}, "feature_dropout": "0.3"}
    assert cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", str(tmp_path / "x")]) == 0
    assert seen["overrides"] is None  # auto: the strategy's default
    assert cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", str(tmp_path / "x"),
                     "--body-crop", "--pretext-steps", "600"]) == 0
    assert seen["overrides"] == {"image": {"body_crop": True, "pretext_steps": 600}}  # the detector's, faster
    seen.clear()
    for bad in (["--pretext-steps", "0"], ["--pretext-steps", "600", "--image-encoder-kind", "3d"]):
        assert cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", str(tmp_path / "x"),
                         *bad]) == 2
    assert not seen  # refused before any training
    # a folder of other files (the cohort itself, given by mistake) is refused before any training
    assert cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "concat", "--out", str(tiny_cohort)]) == 2
    assert cli_main(["compare", "--cohort", str(tiny_cohort), "--out", str(tiny_cohort)]) == 2


def test_unknown_fusion_and_missing_modality(tiny_cohort: Path, tmp_path: Path) -> None:
    from core.train import train_model

    with pytest.raises(InputError, match="^fusion: got fancy, unknown fusion strategy"):
        train_model(tiny_cohort, "fancy", tmp_path / "m")
    ehr_only = tmp_path / "no_images"
    ehr_only.mkdir()
    import pandas as pd

    pd.read_csv(tiny_cohort / "cohort.csv").drop(columns=["study"]).to_csv(ehr_only / "cohort.csv", index=False)
    shutil.copy(tiny_cohort / "features.csv", ehr_only / "features.csv")
    with pytest.raises(InputError, match="^fusion: got concat, needs images but the cohort has none"):
        train_model(ehr_only, "concat", tmp_path / "m")


@pytest.mark.slow
def test_pretrain_then_train_from_encoder(tiny_cohort: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from core.cohort import load_cohort
    from core.train import train_model
    from core.train.pretrain import pretrain_encoder, tte_tasks

    codes, time, event, mask = tte_tasks(load_cohort(tiny_cohort), k=4, min_events=3)
    assert 1 <= len(codes) <= 4 and "MEDS_BIRTH" not in codes
    assert time.shape == event.shape == mask.shape == (48, len(codes)) and (time[mask > 0] > 0).all()
    for bad in ({"epochs": -1}, {"epochs": 0}, {"tasks": 0}):  # -1 wrote an untrained encoder with a C-index
        with pytest.raises(InputError, match=f"^{next(iter(bad))}: got {next(iter(bad.values()))}, must be at least 1"):
            pretrain_encoder(tiny_cohort, tmp_path / "bad", **({"tasks": 4, "epochs": 2} | bad), device="cpu")
    assert not (tmp_path / "bad").exists()
    import pandas as pd

    no_ct = tmp_path / "no_ct"  # a cohort without studies: its error offered encoders pretraining has not
    no_ct.mkdir()
    pd.read_csv(tiny_cohort / "cohort.csv").drop(columns=["study"]).to_csv(no_ct / "cohort.csv", index=False)
    with pytest.raises(InputError, match=r"^cohort: got .*no_ct, has no study column with CT paths, and pretraining reads CT"):
        pretrain_encoder(no_ct, tmp_path / "bad", tasks=4, epochs=2, device="cpu")
    info = pretrain_encoder(tiny_cohort, tmp_path / "enc", tasks=4, epochs=2, min_events=3, device="cpu", overrides=TINY)
    assert info["tasks"] == codes and (tmp_path / "enc" / "encoder.safetensors").exists()
    m = train_model(tiny_cohort, "image_only", tmp_path / "m", epochs=2, device="cpu", overrides=TINY,
                    image_encoder=tmp_path / "enc")
    assert m["image_encoder"]["init"] == str(tmp_path / "enc")
    with pytest.raises(InputError, match="is not an image-encoder folder|has no config.json"):
        train_model(tiny_cohort, "image_only", tmp_path / "m2", epochs=2, device="cpu", overrides=TINY, image_encoder=tmp_path / "m")
    assert load_file(str(tmp_path / "enc" / "encoder.safetensors"))


@pytest.mark.slow
def test_compare_writes_tables(tiny_cohort: Path, tmp_path: Path) -> None:
    import pandas as pd

    from core.train.compare import compare_strategies

    table = compare_strategies(tiny_cohort, tmp_path / "cmp", fusions=["image_only", "ehr_only", "concat"], epochs=2,
                               device="cpu", overrides=TINY)
    assert list(table["fusion"]) == ["image_only", "ehr_only", "concat"]
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert {"c_index", "c_index_lo", "c_index_hi", "uno_c", "ibs"} <= set(csv.columns)
    assert ((csv["c_index_lo"] <= csv["c_index"]) & (csv["c_index"] <= csv["c_index_hi"])).all()
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| concat |" in md and "Paired bootstrap" in md and "not a medical device" in md


@pytest.mark.slow
def test_lung_mask_and_warm_started_image_path(models: dict[str, Path], tiny_cohort: Path) -> None:
    """New models mask the lungs (config), start the fusion from the image stage, and get no gradient outside the lungs."""
    from core.cohort import load_cohort
    from core.preprocess.lung import lung_mask
    from core.registry import load_model

    cfg = json.loads((models["concat"] / "config.json").read_text())
    assert cfg["image"]["lung_mask"] is True and cfg["image_anchor"] is True and cfg["image"]["lung_close"] == 0.05
    assert cfg["image"]["lung_medial"] is True
    assert "nodules at the hilum join the mask" in (models["concat"] / "MODEL_CARD.md").read_text()
    metrics = json.loads((models["concat"] / "metrics.json").read_text())
    assert metrics["image_encoder"]["warm_start"] == ["image_proj", "slice_pos", "pool", "mlp", "head"]
    model = load_model(models["image_only"])
    inputs = model.case_inputs(load_cohort(tiny_cohort), "demo0005")
    assert inputs.image is not None
    inputs.image.requires_grad_(True)
    model.forward(inputs).risk.sum().backward()
    grad = inputs.image.grad[0].abs().numpy()
    lung = lung_mask(inputs.image.detach()[0].numpy(), close_fraction=cfg["image"]["lung_close"], medial=True)
    assert lung.sum() > 100 and grad[~lung].sum() == 0.0 and grad[lung].sum() > 0.0


@pytest.mark.slow
def test_compare_cli_ehr_encoder(tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`compare --ehr-encoder tabular` trains every listed strategy on features.csv only."""
    rc = cli_main(["compare", "--cohort", str(tiny_cohort), "--out", str(tmp_path / "cmp"), "--fusions", "ehr_only",
                   "--ehr-encoder", "tabular", "--epochs", "2", "--device", "cpu", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["fusion"] for r in out["rows"]] == ["ehr_only"]
    cfg = json.loads((tmp_path / "cmp" / "ehr_only" / "config.json").read_text())
    assert cfg["ehr"]["tabular"] is not None and cfg["ehr"]["sequence"] is None
    assert cli_main(["compare", "--cohort", str(tiny_cohort), "--ehr-encoder", "pixels"]) == 2
    err = capsys.readouterr().err  # one line in the form of every other error, not argparse's usage block
    assert err.startswith("error: --ehr-encoder: got pixels, is not a choice; fix: use one of auto, ") and err.count("\n") == 1


@pytest.mark.slow
def test_ensemble_band_is_the_range_of_its_members(models: dict[str, Path], tiny_cohort: Path) -> None:
    from core.cohort import load_cohort
    from core.predict import prediction_json
    from core.registry import load_model

    model = load_model(models["concat"])
    assert model.ensemble_size == 5 and len(model.net.members) == 5
    info = json.loads((models["concat"] / "metrics.json").read_text())
    assert [m["seed"] for m in info["members"]] == [0, 1, 2, 3, 4] and info["ensemble"] == 5
    assert info["uncertainty"].startswith("ensemble of 5 seeds")
    inputs = model.case_inputs(load_cohort(tiny_cohort), "demo0003")
    with torch.no_grad():
        members = np.stack([m(model.encoded_batch(inputs))["survival"][0].numpy() for m in model.net.members])
    p = model.predict_case(inputs)
    assert np.allclose(p.survival, members.mean(0), atol=1e-6)
    assert np.allclose(p.lower, np.minimum(members.min(0), p.survival), atol=1e-6)
    assert np.allclose(p.upper, np.maximum(members.max(0), p.survival), atol=1e-6)
    js = prediction_json(model, load_cohort(tiny_cohort), "demo0003")
    assert js["uncertainty"] == "ensemble" and js["ensemble_size"] == 5
    assert js["warnings"] == []  # a demo chest CT covers the lungs


@pytest.mark.slow
def test_single_network_and_bad_ensemble_size(tiny_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.predict import predict_subject
    from core.registry import read_safetensors

    out = tmp_path / "single"
    rc = cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "ehr_only", "--out", str(out), "--epochs", "2",
                   "--ensemble", "1", "--device", "cpu"])
    capsys.readouterr()
    assert rc == 0 and json.loads((out / "config.json").read_text())["ensemble"] == 1
    assert not any(k.startswith("members.") for k in read_safetensors(out / "model.safetensors"))
    p = predict_subject(out, tiny_cohort, "demo0003")
    assert p["uncertainty"] == "mc_dropout" and p["ensemble_size"] == 1
    rc = cli_main(["train", "--cohort", str(tiny_cohort), "--fusion", "ehr_only", "--out", str(tmp_path / "x"), "--ensemble", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: --ensemble: got 0, must be an integer >= 1; fix: use e.g. --ensemble 5 (or 1 for a single network)\n"


@pytest.mark.slow
def test_linear_ehr_term_training_mean_for_cases_without_features(models: dict[str, Path], tiny_cohort: Path, tmp_path: Path) -> None:
    """The stored training mean stands in for missing features; folders saved before it existed still load (mean 0)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from core.cohort import load_cohort
    from core.registry import load_model

    model = load_model(models["concat"])
    cohort = load_cohort(tiny_cohort)
    member = model.net.members[0] if hasattr(model.net, "members") else model.net
    assert member.wide_dim > 0 and float(member.wide_mean.abs().sum()) > 0
    inputs = model.case_inputs(cohort, "demo0005")
    with_features = model.predict_case(inputs)
    inputs.ehr["features_present"] = torch.zeros(1)  # what an uploaded case looks like: no row in features.csv
    without = model.predict_case(inputs)
    assert without.modalities_used == ["image", "ehr_events"] and with_features.risk != without.risk
    # its linear term is exactly the term of the training mean: v . wide_mean
    batch = model.encoded_batch(inputs)
    assert torch.allclose(member._wide_input(batch), member.wide_mean[None])
    with torch.no_grad():
        term = member.head.wide_term(member._wide_input(batch))
        expected = float(member.head.wide.weight @ member.wide_mean)
    assert term is not None and float(term) == pytest.approx(expected, abs=1e-6)
    # an old folder: no wide_mean tensors; it loads, with the old behaviour (the term is 0 without features)
    old = tmp_path / "old"
    shutil.copytree(models["concat"], old)
    state = load_file(str(old / "model.safetensors"))
    kept = {k: v for k, v in state.items() if not k.endswith("wide_mean")}
    assert len(kept) < len(state)
    save_file(kept, str(old / "model.safetensors"))
    old_model = load_model(old)
    old_member = old_model.net.members[0] if hasattr(old_model.net, "members") else old_model.net
    assert float(old_member.wide_mean.abs().sum()) == 0.0


@pytest.mark.slow
def test_training_records_what_the_model_can_read(models: dict[str, Path], tiny_cohort: Path) -> None:
    """config.json and the card carry the profile of the model's own training studies; ehr_only has none."""
    import dataclasses

    from core.cohort import load_cohort
    from core.predict import image_warnings
    from core.registry import load_model
    from core.study_profile import model_profile, study_stats

    cohort = load_cohort(tiny_cohort)
    train_ids = cohort.ids("train")
    rows = [study_stats(v.hu, v.spacing_mm) for v in (cohort.load_volume(s) for s in train_ids) if v is not None]
    for fusion in ("image_only", "concat"):
        cfg = json.loads((models[fusion] / "config.json").read_text())
        prof = model_profile(cfg)
        assert prof is not None and prof["n_studies"] == len(train_ids) == len(rows)
        lung = prof["stats"]["lung_air_l"]
        assert lung["min"] == pytest.approx(min(r["lung_air_l"] for r in rows))
        assert lung["max"] == pytest.approx(max(r["lung_air_l"] for r in rows))
        assert prof["stats"]["z_extent_mm"]["min"] == 32 * 6.0 and prof["transforms"][0]["name"] == "hu_window"
        card = (models[fusion] / "MODEL_CARD.md").read_text()
        assert "## What this model can read" in card and "slice spacing: 6.00 mm" in card
    assert "study_profile" not in json.loads((models["ehr_only"] / "config.json").read_text())
    # and of its site's timelines
    timelines = json.loads((models["ehr_only"] / "config.json").read_text())["timeline_profile"]
    held_out = len(cohort.ids("val"))  # the validation patients when there are 10 of them, else the train split's
    assert (timelines["n_subjects"], timelines["split"]) == ((held_out, "validation") if held_out >= 10
                                                             else (len(train_ids), "training"))
    assert "## Timeline codes this model reads" in (models["ehr_only"] / "MODEL_CARD.md").read_text()
    # and the features.csv columns it reads, by name (the feature warnings refer to this list)
    tabular = json.loads((models["ehr_only"] / "config.json").read_text())["ehr"]["tabular"]
    features_card = (models["ehr_only"] / "MODEL_CARD.md").read_text().split("## Curated features this model reads")[1]
    assert all(f"`{c}` " in features_card for c in tabular["columns"])
    assert "timeline_profile" not in json.loads((models["image_only"] / "config.json").read_text())
    recorded = cohort.table.set_index("subject_id").loc[train_ids, "contrast"]
    counts = {"yes": int((recorded == "yes").sum()), "no": 0, "unknown": int((recorded == "").sum())}
    assert counts["yes"] and counts["unknown"] and prof["contrast"] == counts
    assert f"{counts['yes']} studies with, 0 without, {counts['unknown']} with no record" in card
    model = load_model(models["image_only"])
    vol = cohort.load_volume(cohort.ids("test")[0])
    assert vol is not None and image_warnings(model, vol) == []
    unenhanced = image_warnings(model, dataclasses.replace(vol, meta={"contrast": "no", "contrast_source": "ContrastBolusAgent"}))
    assert unenhanced == [f"Contrast unlike the training studies: this CT was acquired without contrast (ContrastBolusAgent); "
                          f"all {counts['yes']} of the model's training studies with a contrast record were acquired with it "
                          f"({counts['unknown']} had no record). Contrast changes the HU of vessels and organs: do not rely "
                          "on the image part of this prediction."]
    short = dataclasses.replace(vol, hu=vol.hu[:10])  # 10 of 32 slices: the scan covers less of the body
    assert "z-extent 60 mm (training 192 mm)" in image_warnings(model, short)[0]


def _linear_hazard_cohort(root: Path, n: int = 240, seed: int = 0) -> Path:
    """Tabular cohort whose log-hazard is 1.2 x a - 0.6 x b (c is noise); exponential times, 30 % censored."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    t = rng.exponential(365.0 * np.exp(-(1.2 * x[:, 0] - 0.6 * x[:, 1])))
    event = (rng.random(n) > 0.3).astype(int)
    ids = [f"s{i:03d}" for i in range(n)]
    root.mkdir(parents=True)
    split = np.where(np.arange(n) % 5 < 3, "train", np.where(np.arange(n) % 5 == 3, "val", "test"))
    pd.DataFrame({"subject_id": ids, "time": np.round(t + 1.0, 2), "event": event, "split": split}).to_csv(root / "cohort.csv", index=False)
    pd.DataFrame({"subject_id": ids, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}).to_csv(root / "features.csv", index=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("with_linear", [True, False])
def test_ehr_only_linear_members(with_linear: bool, tmp_path: Path) -> None:
    """ehr_only on features: beside the network a ridge linear model fitted alone on train, as an ensemble member."""
    from core.registry import load_model
    from core.train import train_model

    cohort = _linear_hazard_cohort(tmp_path / "cohort")
    out = tmp_path / "m"
    metrics = train_model(cohort, "ehr_only", out, device="cpu", ensemble=2, epochs=15,
                          overrides={"dim": 16, "ehr_only_linear_members": with_linear})
    model = load_model(out)
    card = (out / "MODEL_CARD.md").read_text()
    if not with_linear:  # two networks, each with the linear term fitted on top of it
        assert metrics["linear_members"] is None and model.ensemble_size == 2 and "Linear models beside" not in card
        assert all(float(m.head.wide.weight.abs().sum()) > 0 for m in model.net.members)
        return
    assert metrics["linear_members"] == {"n": 2, "penalty": 0.3} and model.ensemble_size == 4
    assert [bool(m.get("linear")) for m in metrics["members"]] == [False, False, True, True]
    for network in model.net.members[:2]:
        assert float(network.head.wide.weight.abs().sum()) == 0.0  # the network alone
    for linear in model.net.members[2:]:
        assert float(linear.head.linear.weight.abs().sum()) == 0.0  # the linear model reads no network output
        v = linear.head.wide.weight.detach().numpy()[0]  # [a, b, c, missing a, missing b, missing c]
        assert v[0] > 0.3 and v[1] < -0.1 and abs(v[2]) < abs(v[1])  # the true direction: a up, b down, c nothing
    assert metrics["test"]["c_index"] > 0.65  # the true linear predictor's C on this draw is about 0.75
    assert "2 of the 4 ensemble members are linear models" in card


@pytest.mark.slow
def test_ehr_only_linear_members_can_choose_their_penalty_by_cross_validation(tmp_path: Path) -> None:
    """``ehr_only_linear_penalty_cv``: each linear member's penalty is the argmin of its held-out NLL on train folds."""
    from core.train import train_model

    cohort = _linear_hazard_cohort(tmp_path / "cohort")
    grid = [0.01, 1.0, 100.0]
    metrics = train_model(cohort, "ehr_only", tmp_path / "m", device="cpu", ensemble=2, epochs=5,
                          overrides={"dim": 16, "ehr_only_linear_penalty_cv": grid})
    linear = [m for m in metrics["members"] if m.get("linear")]
    assert len(linear) == 2
    for member in linear:
        cv = member["cv"]
        assert cv["folds"] == 5 and set(cv["cv_nll"]) == {str(p) for p in grid}
        assert member["penalty"] == float(min(cv["cv_nll"], key=cv["cv_nll"].get))
        assert member["penalty"] < 100.0  # two real risk factors: the heaviest penalty predicts the folds worst
        assert cv["cv_nll"]["100.0"] > cv["cv_nll"]["0.01"]
    assert metrics["test"]["c_index"] > 0.65
    assert metrics["linear_members"]["penalties_cv"] == [m["penalty"] for m in linear]
    penalties = ", ".join(f"{m['penalty']:g}" for m in linear)
    assert f"penalties {penalties}, each chosen by 5-fold cross-validation" in (tmp_path / "m" / "MODEL_CARD.md").read_text()


def test_every_unreadable_study_is_named_at_once(tmp_path: Path) -> None:
    """Two broken studies in a cohort: training stops while reading the CTs, with one error naming both (and the
    reason of each), not one per run; nothing is cached or written."""
    from core.demo import write_demo_cohort
    from core.errors import InputError
    from core.train import train_model

    cohort = write_demo_cohort(tmp_path / "cohort", n=16, seed=2)
    studies = sorted((cohort / "studies").glob("*.nii.gz"))
    studies[3].write_bytes(studies[3].read_bytes()[:2000])  # a copy cut short
    studies[7].write_bytes(b"not a CT")
    with pytest.raises(InputError) as err:
        train_model(cohort, "image_only", tmp_path / "model", epochs=1, device="cpu", ensemble=1)
    text = str(err.value)
    assert text.startswith("study: got 2 of 16 subjects, cannot be read: ")
    assert f"{studies[3].name[:-7]} (NIfTI file: got {studies[3].name}, is truncated" in text
    assert f"{studies[7].name[:-7]} (study: got " in text and "drop their rows" in text
    assert not (tmp_path / "model").exists()


def test_a_network_given_weight_0_by_the_linear_term_is_said_in_the_card(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """24 subjects, 2 epochs, features hidden in training: the linear EHR term fitted after the network keeps none of
    it, so the CT is not read. The card, metrics.json and the saliency map say so (the map is zero)."""
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.explain import attribute
    from core.registry import load_model
    from core.train import train_model
    from core.train.model import _network_unread

    cohort_dir = write_demo_cohort(tmp_path / "cohort", n=24, seed=3)
    tiny = {"dim": 16, "image": {"epochs": 2, "size": 32, "channels": [4, 8, 8], "batch_size": 8, "z_scales": [3]}}
    metrics = train_model(cohort_dir, "concat", tmp_path / "m", epochs=2, device="cpu", image_encoder_kind="2d",
                          ensemble=1, overrides=tiny)
    assert metrics["steps"]["feature_dropout"] == 0.6 and metrics["steps"]["ehr_linear"]["scale"] == 0.0
    note = [n for n in metrics["data_notes"] if n.startswith("the network is not used")]
    assert note and "gave its network weight 0 (14 train subjects" in note[0]
    assert note[0] in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    model, cohort = load_model(tmp_path / "m", device="cpu"), load_cohort(cohort_dir)
    inputs = model.case_inputs(cohort, cohort.ids()[0])
    assert not np.abs(attribute(model, inputs, "saliency", 365.0, None, with_events=False).map).any()
    assert model.config.extra["ct_unread"] == note[0]
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(tmp_path / "m"), "--cohort", str(cohort_dir), "--subject",
                     cohort.ids()[0], "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert warnings[0].startswith("This model's risk does not change with the CT: in training, the linear term")
    # counted over an ensemble's networks; kept scales, ehr_only and image_only give no note
    info = [{"steps": {"ehr_linear": {"kept": True, "scale": s}}} for s in (0.0, 0.4, 0.0)]
    assert _network_unread(info, "concat", n_train=100, train_events=40)[0].startswith(
        "2 of the 3 networks are not used: the linear term of the tabular features, fitted after training, gave them "
        "weight 0 (100 train subjects, 40 events), so their risk comes from the features alone and only the other")
    assert "gave all 2 of its networks weight 0" in _network_unread(info[::2], "concat", n_train=9, train_events=4)[0]
    assert _network_unread(info, "ehr_only", n_train=100, train_events=40) == []
    assert _network_unread(info[1:2], "cross_attention", n_train=100, train_events=40) == []


def test_a_model_without_an_image_stage_spreads_its_bar_over_its_members(tmp_path: Path) -> None:
    """ehr_only has no image stage: its ensemble's members share the whole bar (it jumped to 0.70 at the first
    epoch of a 38 s training, and its time left read about 1 s for most of it)."""
    from core.demo import write_demo_cohort
    from core.train import train_model

    cohort = write_demo_cohort(tmp_path / "c", n=60, seed=2, volumes=False)
    seen: list[tuple[float, str]] = []
    train_model(cohort, "ehr_only", tmp_path / "m", epochs=2, device="cpu", progress=lambda f, m: seen.append((f, m)))
    first = [f for f, m in seen if " 1/" in m and ": epoch " in m]
    last = [f for f, m in seen if m.startswith("ehr_only/") and ": epoch " in m]
    assert first and max(first) < 0.3, first  # the first of the five members: its fifth of the bar
    assert last[-1] > 0.75 and [f for f, _ in seen] == sorted(f for f, _ in seen)
