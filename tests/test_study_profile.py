"""What a model can read: study statistics, the training-profile rule, shipped demo models, the real abdominal CT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.study_profile import (
    allowed_range,
    build_profile,
    card_lines,
    model_profile,
    model_study_stats,
    outside,
    profile_warnings,
    study_stats,
    study_warnings,
    withhold_reason,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODELS = ROOT / "assets" / "demo_models"
IMAGE_MODELS = ("image_only", "concat", "contrastive", "cross_attention", "coattention_image", "coattention_ehr")


def _phantom(lung: bool = True) -> np.ndarray:
    """A 10 x 40 x 40 box body of water (40 HU) in air; with ``lung`` a 20 x 20 air block inside it."""
    hu = np.full((10, 40, 40), -1000.0, dtype=np.float32)
    hu[:, 5:35, 5:35] = 40.0
    if lung:
        hu[:, 10:30, 10:30] = -850.0
    hu[:, 5:7, 18:22] = 700.0  # a little bone
    return hu


def test_study_stats_numbers() -> None:
    s = study_stats(_phantom(), (5.0, 2.0, 2.0))
    assert s["z_extent_mm"] == 50.0 and s["slice_mm"] == 5.0 and s["pixel_mm"] == 2.0
    # body 10 x 30 x 30 voxels of 20 mm^3 = 0.18 L; enclosed air 10 x 20 x 20 voxels = 0.08 L
    assert s["body_l"] == pytest.approx(0.18) and s["lung_air_l"] == pytest.approx(0.08)
    assert s["air"] == pytest.approx(400 / 900) and s["bone"] == pytest.approx(8 / 900)
    assert s["soft"] == pytest.approx((900 - 400 - 8) / 900) and s["fat"] == 0.0
    assert s["lung_slices"] == 1.0
    none = study_stats(_phantom(lung=False), (5.0, 2.0, 2.0))
    assert none["lung_air_l"] == 0.0 and none["lung_slices"] == 0.0 and none["air"] == 0.0
    with pytest.raises(InputError, match="study"):
        study_stats(np.zeros((4, 4)), (1.0, 1.0, 1.0))


def test_range_rule_follows_the_training_data() -> None:
    rows = [{"z_extent_mm": z, "lung_air_l": a} for z, a in ((180.0, 2.0), (200.0, 3.0), (220.0, 4.0))]
    p = build_profile(rows, encoder="2d", transforms=[{"name": "hu_window", "low_hu": -1000.0}])
    assert p["stats"]["z_extent_mm"]["min"] == 180.0 and p["stats"]["z_extent_mm"]["max"] == 220.0
    # widened by 25 % of the width (40 mm -> 10 mm) on each side
    assert allowed_range(p["stats"]["z_extent_mm"]) == (170.0, 230.0)
    assert allowed_range({"min": 6.0, "max": 6.0}) == pytest.approx((5.85, 6.15))  # one fixed value: 2.5 % of it
    assert profile_warnings(p, {"z_extent_mm": 171.0, "lung_air_l": 1.6}) == []
    bad = profile_warnings(p, {"z_extent_mm": 90.0, "lung_air_l": 0.4})
    assert len(bad) == 1 and "z-extent 90 mm (training 180-220 mm)" in bad[0] and "lung air" in bad[0]
    assert "do not rely on the image part" in bad[0]
    assert [k for k, _, _ in outside(p, {"z_extent_mm": 240.0, "lung_air_l": 3.0})] == ["z_extent_mm"]
    # the same study is fine for a model trained on short scans
    short = build_profile([{"z_extent_mm": 80.0}, {"z_extent_mm": 100.0}])
    assert profile_warnings(short, {"z_extent_mm": 90.0, "lung_air_l": 0.4}) == []
    assert profile_warnings(None, {"z_extent_mm": 90.0}) == []
    # a tissue share warns only when it also departs by more than 1 % of the body's voxels: a bone share of 0.6 %
    # against 0.2-0.3 % is blur (the same CT at another pose), 2.5 % is not
    bone = build_profile([{"bone": 0.002}, {"bone": 0.003}])
    assert profile_warnings(bone, {"bone": 0.006}) == [] and profile_warnings(bone, {"bone": 0.0}) == []
    assert "bone (>= 300 HU) 2.5%" in profile_warnings(bone, {"bone": 0.025})[0]
    card = "\n".join(card_lines(p))
    assert "## What this model can read" in card and "z-extent: 180-220 mm" in card and "hu_window (low_hu -1000.0)" in card
    with pytest.raises(InputError):
        build_profile([])


def test_encoder_pixel_follows_the_field_of_view() -> None:
    """The same body at the same pixel spacing in a field of view twice as wide: every acquisition statistic is
    unchanged, but the encoder (slices resized to 96 px) sees the body at half the scale; the body box sees the
    same body."""
    from core.preprocess.transforms import BodyCrop, HUWindow, ImageTransforms, ResizeSlices

    plain = ImageTransforms(HUWindow(-1000.0, 1000.0), ResizeSlices(96))
    boxed = ImageTransforms(HUWindow(-1000.0, 1000.0), ResizeSlices(96), crop=BodyCrop(margin=0.0))
    tight = _phantom()
    wide = np.full((10, 80, 80), -1000.0, dtype=np.float32)
    wide[:, 20:60, 20:60] = tight
    sp = (5.0, 2.0, 2.0)
    base = study_stats(wide, sp)
    assert {k: v for k, v in base.items()} == pytest.approx({**study_stats(tight, sp), "pixel_mm": 2.0})
    assert model_study_stats(tight, sp, None) == study_stats(tight, sp)
    assert model_study_stats(tight, sp, plain)["encoder_px_mm"] == pytest.approx(40 * 2.0 / 96)
    assert model_study_stats(wide, sp, plain, base)["encoder_px_mm"] == pytest.approx(80 * 2.0 / 96)
    # the box is the body (30 px, margin 0) in both studies
    assert model_study_stats(tight, sp, boxed)["encoder_px_mm"] == model_study_stats(wide, sp, boxed)["encoder_px_mm"] == pytest.approx(30 * 2.0 / 96)

    trained = build_profile([model_study_stats(tight, sp, plain)], transforms=plain.describe())
    bad = profile_warnings(trained, model_study_stats(wide, sp, plain))
    assert len(bad) == 1 and "(scale)" in bad[0] and "encoder pixel (field of view or body box / encoder size) 1.67 mm (training 0.83 mm)" in bad[0]
    assert "train --body-crop" in bad[0]
    assert profile_warnings(trained, model_study_stats(tight, sp, plain)) == []
    # twice the training scale is more than 25 % beyond the range: not read at all
    assert withhold_reason(trained, model_study_stats(wide, sp, plain)) == (
        "it shows the body at another scale than the model's 1 training studies: encoder pixel (field of view or body "
        "box / encoder size) 1.67 mm (training 0.83 mm)")
    assert withhold_reason(trained, model_study_stats(tight, sp, plain)) is None
    boxed_profile = build_profile([model_study_stats(tight, sp, boxed)], transforms=boxed.describe())
    assert profile_warnings(boxed_profile, model_study_stats(wide, sp, boxed)) == []
    small = np.full((10, 40, 40), -1000.0, dtype=np.float32)
    small[:, 12:28, 12:28] = 40.0  # a smaller body: the box shows it larger than any training body
    warned = profile_warnings(boxed_profile, model_study_stats(small, sp, boxed))
    assert len(warned) == 1 and "scale" in warned[0] and "a body of another size" in warned[0] and "--body-crop" not in warned[0]
    # the 3D chain and the foundation backbone's grid: the rows and columns of their grid
    from core.models.foundation_cache import FoundationTransforms, ResizeVolumeArea, UnitWindow
    from core.preprocess.transforms import ResizeVolume

    cube = ImageTransforms(HUWindow(-1000.0, 1000.0), ResizeVolume((8, 32, 20)))
    assert cube.encoder_pixel_mm(wide, sp) == pytest.approx((80 * 2.0 / 32 + 80 * 2.0 / 20) / 2)
    backbone = FoundationTransforms(ResizeVolumeArea((8, 40, 40)), UnitWindow(-1000.0, 1000.0))
    assert backbone.encoder_pixel_mm(wide, sp) == pytest.approx(4.0)
    # a profile written before the statistic existed checks what it has
    old = build_profile([study_stats(tight, sp)])
    assert "encoder_px_mm" not in old["stats"] and profile_warnings(old, model_study_stats(wide, sp, plain)) == []


def test_shipped_models_carry_their_profile() -> None:
    for name in IMAGE_MODELS:
        cfg = json.loads((DEMO_MODELS / name / "config.json").read_text())
        prof = model_profile(cfg)
        assert prof is not None, name
        assert prof["n_studies"] == 200 and prof["stats"]["slice_mm"]["min"] == 6.0 and prof["stats"]["pixel_mm"]["max"] == 4.0
        assert 1.0 < prof["stats"]["lung_air_l"]["min"] < prof["stats"]["lung_air_l"]["max"] < 6.0
        assert "2D CNN per axial slice" in prof["encoder"] and prof["transforms"][0]["name"] == "hu_window"
        card = (DEMO_MODELS / name / "MODEL_CARD.md").read_text()
        assert card.count("## What this model can read") == 1 and card.index("What this model") < card.index("## Limitations")
    assert model_profile(json.loads((DEMO_MODELS / "ehr_only" / "config.json").read_text())) is None


@pytest.fixture(scope="module")
def new_demo_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.demo import write_demo_cohort

    return write_demo_cohort(tmp_path_factory.mktemp("profile") / "cohort", n=10, seed=5)


def test_new_demo_cases_get_no_warning(new_demo_cases: Path) -> None:
    from core.cohort import load_cohort
    from core.predict import predict_subject

    cohort = load_cohort(new_demo_cases)
    prof = model_profile(json.loads((DEMO_MODELS / "image_only" / "config.json").read_text()))
    for sid in cohort.ids():
        vol = cohort.load_volume(sid)
        assert vol is not None and study_warnings(prof, vol.hu, vol.spacing_mm) == [], sid
    p = predict_subject(DEMO_MODELS / "image_only", new_demo_cases, cohort.ids("test")[0])
    assert p["modalities_used"] == ["image"] and p["warnings"] == []


def test_a_series_of_another_modality_is_withheld(new_demo_cases: Path) -> None:
    """The same voxels as a demo case that the image model reads without a warning, labelled MR: withheld, since
    the values are not Hounsfield units whatever they look like; a series that names no modality is read."""
    import dataclasses

    from core.cohort import load_cohort
    from core.predict import image_read
    from core.registry import load_model

    model = load_model(DEMO_MODELS / "image_only")
    vol = load_cohort(new_demo_cases).load_volume(load_cohort(new_demo_cases).ids("test")[0])
    assert vol is not None and image_read(model, vol).withheld is None
    mr = image_read(model, dataclasses.replace(vol, modality="MR"))
    assert mr.withheld is not None and "MR, not CT" in mr.withheld
    assert "The CT is withheld from image_only: the series is MR" in str(mr.note("image_only"))
    assert image_read(model, dataclasses.replace(vol, modality="")).withheld is None
    # an MR whose values also look like other anatomy: withheld for being MR first (it named the soft-tissue share)
    soft = dataclasses.replace(vol, hu=np.full_like(vol.hu, 40.0))
    assert image_read(model, soft).withheld is not None and "MR" not in str(image_read(model, soft).withheld)
    assert str(image_read(model, dataclasses.replace(soft, modality="MR")).withheld).startswith("the series is MR, not CT")


def test_predict_json_carries_how_the_study_was_read(new_demo_cases: Path, tmp_path: Path) -> None:
    """A demo case written as a DICOM series with one slice missing: `predict --json` names the gap (the loader's
    note) before the model's own warnings; the same case as its NIfTI gets none."""
    from core.cohort import load_cohort
    from core.predict import predict_subject
    from tests.dicom_factory import write_series

    cohort = load_cohort(new_demo_cases)
    sid = cohort.ids("test")[0]
    vol = cohort.load_volume(sid)
    assert vol is not None
    write_series(tmp_path / "studies" / "gap", vol.hu.astype(np.float32), spacing_mm=vol.spacing_mm, drop_slices=(12,))
    pd.DataFrame({"subject_id": [sid], "time": [100.0], "event": [1], "split": ["test"],
                  "study": ["studies/gap"]}).to_csv(tmp_path / "cohort.csv", index=False)
    p = predict_subject(DEMO_MODELS / "image_only", tmp_path, sid)
    assert p["warnings"] and p["warnings"][0].startswith("missing slices: about 1 slice(s) absent"), p["warnings"]
    assert predict_subject(DEMO_MODELS / "image_only", new_demo_cases, sid)["warnings"] == []


def test_a_wider_field_of_view_is_flagged_and_at_twice_the_field_withheld(new_demo_cases: Path, tmp_path: Path) -> None:
    """Two demo studies put inside wider fields of view (air around them, the same 4 mm pixels): the shipped models
    resize every slice to 96 px, so they would see the body at a smaller scale than in training. 7/6 x the field:
    one warning, the CT still read; 2 x the field: withheld, concat predicts from the EHR alone."""
    import nibabel as nib

    from core.cohort import load_cohort
    from core.predict import predict_subject

    wide = tmp_path / "wide"
    shutil.copytree(new_demo_cases, wide)
    sids = load_cohort(wide).ids("test")[:2]
    for sid, pad in zip(sids, (8, 48)):
        path = wide / "studies" / f"{sid}.nii.gz"
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        padded = np.pad(data, ((pad, pad), (pad, pad), (0, 0)), constant_values=-1000)
        nib.save(nib.Nifti1Image(padded.astype(data.dtype), img.affine), path)
    label = "encoder pixel (field of view or body box / encoder size)"
    near = predict_subject(DEMO_MODELS / "concat", wide, sids[0])
    assert len(near["warnings"]) == 1, near["warnings"]
    assert near["warnings"][0].startswith("Out of distribution for this model's image part (scale)")
    assert f"{label} 4.67 mm (training 4.00 mm)" in near["warnings"][0] and "train --body-crop" in near["warnings"][0]
    assert near["image_withheld"] is None and near["modalities_used"] == ["image", "ehr_events", "ehr_features"]
    far = predict_subject(DEMO_MODELS / "concat", wide, sids[1])
    assert f"{label} 8.00 mm (training 4.00 mm)" in far["warnings"][0]
    assert "do not rely on the image part" in near["warnings"][0]  # read: its image part is there to doubt
    assert "this prediction is made without the CT, which is withheld." in far["warnings"][0]  # withheld: none
    assert far["image_withheld"] == (f"The CT is withheld from concat: it shows the body at another scale than the model's "
                                     f"200 training studies: {label} 8.00 mm (training 4.00 mm). Its image part would "
                                     "read something it never saw in training, so the prediction is made without the CT "
                                     "(the EHR alone, or nothing).")
    assert far["modalities_used"] == ["ehr_events", "ehr_features"] and far["scored"] is True


def _real_ct_cohort(real_ct: Path, root: Path) -> Path:
    (root / "studies").mkdir(parents=True)
    shutil.copyfile(real_ct, root / "studies" / "P1.nii.gz")
    (root / "cohort.csv").write_text("subject_id,time,event,split,study\nP1,100,1,train,studies/P1.nii.gz\n"
                                     "P2,200,0,train,studies/P1.nii.gz\n")
    return root


@pytest.mark.slow
def test_real_abdominal_ct_is_out_of_distribution_for_the_demo_models(real_ct: Path, tmp_path: Path) -> None:
    from core.io.study import load_study

    vol = load_study(real_ct)
    prof = model_profile(json.loads((DEMO_MODELS / "concat" / "config.json").read_text()))
    bad = {k: v for k, v, _ in outside(prof, study_stats(vol.hu, vol.spacing_mm))}
    # an abdominal CT: little enclosed air, few slices with lung, more soft tissue than a chest CT
    assert bad["lung_air_l"] < 0.5 and bad["lung_slices"] < 0.6 and bad["soft"] > 0.45
    cohort = _real_ct_cohort(real_ct, tmp_path / "real")
    out = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(DEMO_MODELS / "image_only"),
                          "--cohort", str(cohort), "--subject", "P1", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    warnings = got["warnings"]
    assert len(warnings) == 3 and warnings[0].startswith("Out of distribution for this model's image part")
    assert "region" in warnings[0] and "lung air (air enclosed by the body) 0.39 L" in warnings[0]
    # far outside in tissue composition: the CT is withheld, and image_only has nothing else to read
    assert got["image_withheld"].startswith("The CT is withheld from image_only: it shows other anatomy")
    assert "soft tissue (-30..150 HU) 55.6%" in got["image_withheld"] and got["image_withheld"] == warnings[1]
    assert got["modalities_used"] == [] and got["scored"] is False and got["top_slices"] == []
    # no numbers a reader could take for this case's risk (they were 0 % and a flat curve at 1)
    assert set(got["risk_at"].values()) == {None} and got["risk"] is None and got["survival"] is None
    assert set(got["risk_band_at"].values()) == {None}
    assert warnings[2] == "image_only read nothing of this case: its curve is not a prediction for this case."
    # read anyway on request: the bowel gas gives the confident risk the withholding keeps from the reader
    anyway = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(DEMO_MODELS / "image_only"),
                             "--cohort", str(cohort), "--subject", "P1", "--json", "--allow-ood"], cwd=ROOT,
                            capture_output=True, text=True)
    assert anyway.returncode == 0, anyway.stderr
    read = json.loads(anyway.stdout)
    assert read["modalities_used"] == ["image"] and read["scored"] is True and read["image_withheld"] is None
    # higher than 95 % of the demo's test patients (the shipped reference curves): a confident reading of bowel gas
    with np.load(DEMO_MODELS / "image_only" / "reference_predictions.npz") as ref:
        test_risks = 1.0 - ref["surv"][:, int(np.searchsorted(ref["times"], 365.0))]
    assert read["risk_at"]["365"] > np.quantile(test_risks, 0.95), (read["risk_at"]["365"], np.quantile(test_risks, 0.95))
    # withheld, the warning says the prediction is made without the CT; read on request, not to rely on its image part
    from core.study_profile import RELY, WITHOUT

    assert WITHOUT in warnings[0] and RELY not in warnings[0]
    assert read["warnings"][0] == warnings[0].replace(WITHOUT, RELY) and len(read["warnings"]) == 2
    assert read["warnings"][1].startswith("The CT was read on request although it would be withheld from image_only")


@pytest.mark.slow
def test_a_withheld_ct_leaves_a_fusion_model_its_ehr(real_ct: Path, new_demo_cases: Path, tmp_path: Path) -> None:
    """A demo patient whose study is replaced by the real abdominal CT: concat withholds the CT and predicts from
    the EHR alone, exactly as for the same patient without a study."""
    import pandas as pd

    from core.predict import predict_subject

    table = pd.read_csv(new_demo_cases / "cohort.csv")
    sid = str(table["subject_id"].iloc[0])
    swapped, none = tmp_path / "swapped", tmp_path / "none"
    for folder, study in ((swapped, "real.nii.gz"), (none, "")):
        shutil.copytree(new_demo_cases, folder)
        shutil.copyfile(real_ct, folder / "real.nii.gz")
        t = table.copy()
        t["study"] = t["study"].astype(object)
        t.loc[t["subject_id"].astype(str) == sid, "study"] = study or None
        t.to_csv(folder / "cohort.csv", index=False)
    with_ct = predict_subject(DEMO_MODELS / "concat", swapped, sid)
    without = predict_subject(DEMO_MODELS / "concat", none, sid)
    assert with_ct["image_withheld"].startswith("The CT is withheld from concat") and with_ct["scored"] is True
    assert "image" not in with_ct["modalities_used"] and with_ct["modalities_used"] == without["modalities_used"]
    assert with_ct["modalities_used"] and without["image_withheld"] is None
    assert with_ct["risk_at"] == without["risk_at"] and with_ct["survival"] == without["survival"]
    # on request the CT is read: another prediction
    anyway = predict_subject(DEMO_MODELS / "concat", swapped, sid, allow_ood=True)
    assert "image" in anyway["modalities_used"] and anyway["risk_at"] != with_ct["risk_at"]


@pytest.mark.slow
def test_evaluate_counts_the_studies_predict_would_withhold(real_ct: Path, new_demo_cases: Path, tmp_path: Path) -> None:
    """evaluate reads every study as it is, and says how many of the split's studies lie outside the model's
    training profile and how many predict and the app would withhold (one swapped for the real abdominal CT)."""
    import pandas as pd

    from core.evaluation import evaluate_model

    table = pd.read_csv(new_demo_cases / "cohort.csv")
    split = str(table["split"].value_counts().idxmax())
    ids = table.loc[table["split"] == split, "subject_id"].astype(str).tolist()
    folder = tmp_path / "swapped"
    shutil.copytree(new_demo_cases, folder)
    shutil.copyfile(real_ct, folder / "real.nii.gz")
    t = table.copy()
    t.loc[t["subject_id"].astype(str) == ids[0], "study"] = "real.nii.gz"
    t.to_csv(folder / "cohort.csv", index=False)
    res = evaluate_model(DEMO_MODELS / "image_only", folder, split=split, n_boot=10)
    prof = res["ct_profile"]
    assert prof["studies"] == len(ids) and prof["withheld"] == 1 and prof["warned"] == 1, prof
    assert prof["outside"]["body voxels in soft tissue (-30..150 HU)"] == 1
    assert res["n"] == len(ids)  # nothing left out of the metrics
    clean = evaluate_model(DEMO_MODELS / "image_only", new_demo_cases, split=split, n_boot=10)["ct_profile"]
    assert clean == {"studies": len(ids), "warned": 0, "withheld": 0, "outside": {}}
    assert evaluate_model(DEMO_MODELS / "ehr_only", folder, split=split, n_boot=10)["ct_profile"] is None
    out = subprocess.run([sys.executable, "-m", "core", "evaluate", "--model", str(DEMO_MODELS / "image_only"),
                          "--cohort", str(folder), "--split", split, "--n-boot", "10", "--no-band"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (f"CT profile  1 of {len(ids)} studies lie outside the model's training profile" in out.stdout
            and "1 would be withheld by predict and the app (read as they are in these metrics)" in out.stdout), out.stdout


@pytest.mark.slow
def test_explaining_a_withheld_ct_says_the_prediction_would_not_read_it(real_ct: Path, tmp_path: Path) -> None:
    """`explain` still maps what the model reads in the abdominal CT, and says the prediction would withhold it."""
    cohort = _real_ct_cohort(real_ct, tmp_path / "real")
    out = subprocess.run([sys.executable, "-m", "core", "explain", "--model", str(DEMO_MODELS / "image_only"),
                          "--cohort", str(cohort), "--subject", "P1", "--method", "gradcam", "--out",
                          str(tmp_path / "map.svg"), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    notes = json.loads(out.stdout)["warnings"]
    assert len(notes) == 2 and notes[0].startswith("Out of distribution for this model's image part")
    assert notes[1].startswith("This CT would be withheld from image_only when predicting: it shows other anatomy")
    assert f"warning: {notes[1]}" in out.stderr
    assert "outside the model's training CTs: predict withholds this CT" in (tmp_path / "map.svg").read_text()  # caption
