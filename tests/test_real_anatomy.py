"""core.demo.real_anatomy and bench/real_anatomy.py: cohorts rendered from the real abdominal CT in ../shared/data.

Every test that reads the CT skips (through the ``real_ct`` fixture) when
../shared/data is absent; the latent-only tests run everywhere.
"""

from __future__ import annotations

import importlib.util
import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from core.demo import real_anatomy as R
from core.demo.anatomy import LABELS
from core.demo.cohort import harrell_c
from core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
# seed 4 with n = 12 draws liver and bone lesions, both bone kinds and subjects with two lesions
SEED, N, SLICES = 4, 12, 30


@pytest.fixture(scope="module")
def base(real_ct: Path) -> R.BaseAnatomy:
    return R.load_base_anatomy(real_ct)


@pytest.fixture(scope="module")
def cohort(real_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real_anatomy") / "cohort"
    return R.write_real_anatomy_cohort(out, real_ct, n=N, seed=SEED, organs="liver,bone", slices=SLICES)


@pytest.fixture(scope="module")
def table(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})


def test_organs_found_where_anatomy_puts_them(base: R.BaseAnatomy) -> None:
    body_centre = np.argwhere(base.body).mean(0)
    vox_ml = float(np.prod(base.spacing_mm)) / 1000.0
    liver = base.masks["liver"]
    assert 500.0 < liver.sum() * vox_ml < 1600.0                       # the part of a liver an upper-abdomen CT shows
    assert np.argwhere(liver).mean(0)[2] < body_centre[2] - 10          # patient's right: low column index
    assert 40.0 < float(np.median(base.hu[liver])) < 70.0
    bone = base.masks["bone"]
    bc = np.argwhere(bone).mean(0)
    assert abs(bc[2] - body_centre[2]) < 6 and bc[1] > body_centre[1]  # midline, posterior
    assert float(np.median(base.hu[bone])) > 120.0
    assert bone[:, :, : int(body_centre[2]) - 20].sum() == 0            # no rib far to the side
    lung = base.masks["lung"]
    assert lung.any() and float(np.median(base.hu[lung])) < -700.0
    assert np.argwhere(lung)[:, 0].min() >= base.hu.shape[0] // 2       # bases: upper slices only
    assert base.inscribed_mm["liver"] > 25.0 and base.inscribed_mm["bone"] > 12.0
    muscle = base.masks["muscle"]                                       # the paraspinal muscles
    mc = np.argwhere(muscle)
    assert 150.0 < muscle.sum() * vox_ml < 400.0 and base.inscribed_mm["muscle"] > 10.0
    assert mc[:, 1].mean() > bc[1] + 5 and abs(mc[:, 2].mean() - bc[2]) < 6  # behind the vertebra, on the midline
    assert (mc[:, 2] < bc[2] - 5).sum() > 0.3 * len(mc) and (mc[:, 2] > bc[2] + 5).sum() > 0.3 * len(mc)  # both sides
    assert 15.0 < float(np.median(base.hu[muscle])) < 70.0                  # soft tissue (fat is below -50)
    for a, b in [("liver", "bone"), ("liver", "lung"), ("bone", "lung"), ("muscle", "bone"), ("muscle", "liver")]:
        assert not (base.masks[a] & base.masks[b]).any()


def test_cohort_files_and_columns(cohort: Path, table: pd.DataFrame) -> None:
    from core.cohort import load_cohort

    assert list(table.columns) == list(R.COHORT_COLUMNS)
    assert len(table) == N and table["subject_id"].is_unique
    assert set(table["split"]) == {"train", "val", "test"}
    assert sorted(table["split"].value_counts().tolist()) == [2, 3, 7]
    assert (np.abs(table["true_risk"] - table["risk_image"] - table["risk_ehr"]) < 1e-9).all()
    assert len(list((cohort / "studies").glob("*.nii.gz"))) == N
    c = load_cohort(cohort)
    assert c.features is not None and len(c.features) == N and c.features.isna().any().any()
    assert c.timeline is not None and (c.timeline["code"] == "MEDS_BIRTH").sum() == N
    # lesion bookkeeping: first lesion on every lesion subject, a second one only with n_lesions == 2
    les = table["lesion"] == 1
    assert table.loc[les, ["lesion_slice", "lesion_row", "lesion_col", "lesion_radius_mm"]].notna().all().all()
    assert table.loc[~les, "lesion_slice"].isna().all()
    assert ((table["n_lesions"] == 2) == table["lesion2_slice"].notna()).all()
    assert table.loc[les, "lesion_radius_mm"].between(5.0, 16.0).all()
    two = table[table["n_lesions"] == 2]
    assert len(two) > 0 and (two["lesion_organ"] != two["lesion2_organ"]).all()


def test_studies_load_back_identical_and_lesions_sit_in_their_organ(base: R.BaseAnatomy, cohort: Path,
                                                                      table: pd.DataFrame) -> None:
    from core.io.study import load_study

    lat = R.sample_real_latents(N, SEED, "liver,bone")
    poses = pd.read_csv(cohort / "poses.csv", dtype={"subject_id": str})
    checked = {"hypodense": 0, "sclerotic": 0, "lytic": 0}
    for i, row in table.iterrows():
        vol = load_study(cohort / row["study"])
        again = R.render_subject(base, lat.iloc[i], SLICES, R.subject_rng(SEED, i))
        assert vol.hu.dtype == np.float32 and vol.hu.shape == again.hu.shape
        assert np.array_equal(vol.hu, again.hu.astype(np.float32))          # the file holds exactly the render
        assert np.allclose(vol.spacing_mm, again.spacing_mm, atol=1e-4)
        p = poses.iloc[i]
        assert (p["slices"], p["rows"], p["cols"]) == vol.shape and vol.shape[0] == SLICES
        for k in ("", "2"):
            organ = row[f"lesion{k}_organ"]
            if not isinstance(organ, str) or not organ:
                continue
            centre = tuple(int(row[f"lesion{k}_{a}"]) for a in ("slice", "row", "col"))
            mask = again.labels == LABELS[organ]
            assert mask[centre], f"{row['subject_id']}: {organ} lesion centre outside the {organ} mask"
            depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=again.spacing_mm)[1:-1, 1:-1, 1:-1]
            radius = float(row[f"lesion{k}_radius_mm"])
            assert depth.max() >= 0.5 * base.inscribed_mm[organ]
            assert depth[centre] >= min(radius, 0.8 * depth.max()) - 1e-6
            # the lesion core differs from the organ tissue around it in the expected direction
            sp = np.asarray(vol.spacing_mm)
            grid = np.indices(vol.shape).reshape(3, -1).T
            d = np.sqrt((((grid - np.asarray(centre)) * sp) ** 2).sum(1)).reshape(vol.shape)
            core = vol.hu[d <= 0.5 * radius].mean()
            ring = vol.hu[mask & (d > radius + 2.0) & (d < radius + 12.0)]
            kind = row[f"lesion{k}_kind"]
            checked[kind] += 1
            if kind == "hypodense":
                assert core < np.median(ring) - 15.0
            elif kind == "sclerotic":
                assert core > np.median(ring) + 100.0
            else:                                                             # lytic: bone replaced by soft tissue
                assert core < 80.0
    assert all(v > 0 for v in checked.values()), checked


def test_muscle_lesions_are_enhancing_or_necrotic_masses_inside_the_paraspinal_muscles(base: R.BaseAnatomy) -> None:
    lat = R.sample_real_latents(16, seed=2, organs="muscle")
    checked = {"enhancing": 0, "hypodense": 0}
    for i, row in lat[lat["lesion"] == 1].iterrows():
        r = R.render_subject(base, row, SLICES, R.subject_rng(2, int(i)))
        (les,) = r.lesions
        centre = (les["slice"], les["row"], les["col"])
        mask = r.labels == LABELS["muscle"]
        assert les["organ"] == "muscle" and mask[centre]
        d = np.sqrt((((np.indices(r.hu.shape).reshape(3, -1).T - np.asarray(centre)) * np.asarray(r.spacing_mm)) ** 2)
                    .sum(1)).reshape(r.hu.shape)
        core = r.hu[d <= 0.5 * les["radius_mm"]].mean()
        ring = np.median(r.hu[mask & (d > les["radius_mm"] + 2.0) & (d < les["radius_mm"] + 12.0)])
        checked[les["kind"]] += 1
        if les["kind"] == "enhancing":
            assert core > ring + 25.0
        else:
            assert core < ring - 15.0
    assert all(v > 0 for v in checked.values()), checked


def test_subjects_do_not_share_a_voxel_grid(cohort: Path, table: pd.DataFrame) -> None:
    from core.io.study import load_study

    vols = [load_study(cohort / s) for s in table["study"]]
    shapes = {v.shape for v in vols}
    assert len(shapes) >= N // 2, shapes
    spacings = {round(v.spacing_mm[0], 3) for v in vols}
    assert len(spacings) >= N // 2
    # the vertebra's centre of mass (HU > 150 near the image's midline) lands on different voxels
    centres = []
    for v in vols:
        c = v.shape[2]
        bone = v.hu > 150.0
        bone[:, :, : c // 3] = False
        bone[:, :, 2 * c // 3:] = False
        centres.append(np.argwhere(bone).mean(0)[1:])
    spread = np.ptp(np.array(centres), axis=0)
    assert (spread > 2.0).all(), spread
    poses = pd.read_csv(cohort / "poses.csv")
    assert poses["yaw_deg"].abs().max() > 3.0 and poses["scale"].between(0.9, 1.1).all()


def test_oracle_of_a_large_latent_draw_is_sensible() -> None:
    lat = R.sample_real_latents(6000, seed=3, organs="liver,bone")
    t, e = lat["time"].to_numpy(), lat["event"].to_numpy()
    full = harrell_c(t, e, lat["true_risk"].to_numpy())
    image = harrell_c(t, e, lat["risk_image"].to_numpy())
    ehr = harrell_c(t, e, lat["risk_ehr"].to_numpy())
    assert 0.75 < full < 0.83 and 0.66 < image < 0.74 and 0.63 < ehr < 0.72
    assert full > max(image, ehr) + 0.06
    # no single-organ shortcut: the liver term alone (or the bone term alone) falls well short of the image part
    for organ in ("liver", "bone"):
        only = np.where(lat["lesion_organ"] == organ, lat["lesion_radius_mm"].fillna(0) + 100.0, 0.0)
        only = only + np.where(lat["lesion2_organ"] == organ, lat["lesion2_radius_mm"].fillna(0) + 100.0, 0.0)
        assert harrell_c(t, e, only) < image - 0.04
    assert 0.45 < lat["lesion"].mean() < 0.55
    share_two = (lat["n_lesions"] == 2).sum() / lat["lesion"].sum()
    assert 0.25 < share_two < 0.35
    assert abs(lat["risk_image"].mean()) < 0.05


def test_bad_input_is_refused(real_ct: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="organs"):
        R.check_organs("liver,heart")
    with pytest.raises(InputError, match="organs"):
        R.check_organs("liver,liver")
    with pytest.raises(InputError, match="slices"):
        R.write_real_anatomy_cohort(tmp_path / "a", real_ct, n=12, seed=0, organs="liver", slices=3)
    with pytest.raises(InputError, match="n"):
        R.write_real_anatomy_cohort(tmp_path / "b", real_ct, n=5, seed=0, organs="liver", slices=30)
    with pytest.raises(InputError, match="ct"):
        R.write_real_anatomy_cohort(tmp_path / "c", tmp_path / "missing.nii.gz", n=12, seed=0, organs="liver", slices=30)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("someone's file")
    with pytest.raises(InputError, match="OUT"):
        R.write_real_anatomy_cohort(tmp_path / "busy", real_ct, n=12, seed=0, organs="liver", slices=30)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "someone's file"


def test_bench_oracle_only_prints_the_cohort_oracles(cohort: Path, table: pd.DataFrame, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_real_anatomy", ROOT / "bench" / "real_anatomy.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = bench.main(["--cohort", str(cohort), "--work", str(tmp_path), "--oracle-only", "--json", str(tmp_path / "o.json")])
    assert rc == 0
    c = R.oracle_summary(table, "test")
    text = buf.getvalue()
    assert f"full (true_risk) {c['oracle']:.3f}" in text and f"image part (risk_image) {c['image_part']:.3f}" in text
    assert not (tmp_path / "models").exists()                                # --oracle-only trains nothing
    assert "learnable from the train split (Cox told the true form; test C): EHR part " in text
    rows = [{"encoder": "default", "fusion": "image_only", "c_index": 0.61, "train_s": 10.0, "eval_s": 1.0},
            {"encoder": "default", "fusion": "concat", "c_index": 0.70, "train_s": 12.0, "eval_s": 1.0},
            {"encoder": "default", "fusion": "cross_attention", "c_index": 0.72, "train_s": 12.0, "eval_s": 1.0},
            {"encoder": "(none)", "fusion": "ehr_only", "c_index": 0.65, "train_s": 5.0, "eval_s": 1.0}]
    line = bench.summary_table(rows, {"oracle": 0.78, "image_part": 0.70, "ehr_part": 0.66}, ["default"]).splitlines()[-1]
    assert line.startswith("| default | 0.610 | 0.700 | 0.090 | 0.650 | cross_attention | 0.720 | 0.780 | 0.060 | 0.070 |")


def _bench(name: str) -> object:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_image_settings_reach_train_model_as_overrides(tmp_path: Path) -> None:
    """--image-settings: the train command the CLI cannot express becomes the same train_model call with overrides."""
    import json

    bench = _bench("real_anatomy")
    plain = bench._train_cmd(tmp_path / "c", tmp_path / "m", "image_only", "3d", ["--epochs", "2"], None)
    assert plain[1:4] == ["-m", "core", "train"] and plain[-2:] == ["--image-encoder-kind", "3d"]
    settings = {"image": {"lung_mask": False, "windows": [[-160, 240]], "contrast": [9]}}
    cmd = bench._train_cmd(tmp_path / "c", tmp_path / "m", "concat", None, ["--epochs", "2", "--ensemble", "1", "--device", "cpu"], settings)
    assert cmd[1] == "-c" and cmd[3:6] == [str(tmp_path / "c"), "concat", str(tmp_path / "m")]
    assert json.loads(cmd[6]) == {"epochs": 2, "ensemble": 1, "device": "cpu", "image_encoder_kind": "auto", "overrides": settings}
    # --settings merges at the top level (the foundation grid), --image-settings into its image part
    assert bench.run_overrides(None, None) is None
    assert bench.run_overrides('{"foundation": {"grid": [160, 224, 224]}}', '{"lung_mask": true}') == {
        "foundation": {"grid": [160, 224, 224]}, "image": {"lung_mask": True}}
    assert bench.run_overrides('{"image": {"windows": [[-160, 240]]}}', '{"lung_mask": false}') == {
        "image": {"windows": [[-160, 240]], "lung_mask": False}}


def test_pointing_game_reads_every_lesion_of_a_case(table: pd.DataFrame) -> None:
    from core.sanity import has_lesion, lesion_centres

    pg = _bench("pointing_game")
    two = table[table["n_lesions"] == 2].iloc[0]
    centres = lesion_centres(two)
    assert len(centres) == 2 and [r for _, r in centres] == [two["lesion_radius_mm"], two["lesion2_radius_mm"]]
    assert centres[1][0].tolist() == [two["lesion2_slice"], two["lesion2_row"], two["lesion2_col"]]
    assert lesion_centres(table[table["lesion"] == 0].iloc[0]) == []
    assert has_lesion(table).tolist() == (table["lesion"] == 1).tolist()
    assert pg.lesion_organs(two) == [two["lesion_organ"], two["lesion2_organ"]]
    amap = np.zeros((6, 20, 20), np.float32)
    amap[4, 7, 13] = 5.0                                   # one hot voxel: the smoothed peak stays there
    assert pg.peak_voxel(amap).tolist() == [4.0, 7.0, 13.0]


def test_a_profile_of_real_anatomy_reads_the_real_ct_and_withholds_a_chest_phantom(
        real_ct: Path, cohort: Path, tmp_path: Path) -> None:
    """The withholding rule follows the training studies: a profile of the real-anatomy subjects accepts the
    original abdominal CT they are rendered from (the demo models' profile withholds it) and withholds a demo
    chest phantom instead."""
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.io.study import load_study
    from core.study_profile import cohort_profile, study_stats, withhold_reason

    real = load_cohort(cohort)
    profile = cohort_profile(real, real.ids())
    assert profile is not None and profile["n_studies"] == N
    original = load_study(real_ct)
    assert withhold_reason(profile, study_stats(original.hu, original.spacing_mm)) is None
    demo = load_cohort(write_demo_cohort(tmp_path / "demo", n=10, seed=2))
    phantom = demo.load_volume(demo.ids()[0])
    assert phantom is not None
    reason = withhold_reason(profile, study_stats(phantom.hu, phantom.spacing_mm))
    assert reason is not None and reason.startswith(f"it shows other anatomy than the model's {N} training studies")


def test_a_wide_field_of_view_pads_with_air_and_moves_the_lesions(real_ct: Path, cohort: Path, table: pd.DataFrame,
                                                                  tmp_path: Path) -> None:
    """``fov`` 1.5: the same renderings inside 1.5 x the rows and columns of air, lesion voxels moved with them."""
    from core.io.study import load_study

    wide = R.write_real_anatomy_cohort(tmp_path / "wide", real_ct, n=N, seed=SEED, organs="liver,bone", slices=SLICES,
                                       fov=1.5)
    t2 = pd.read_csv(wide / "cohort.csv", dtype={"subject_id": str})
    poses = pd.read_csv(wide / "poses.csv", dtype={"subject_id": str})
    for i in range(3):
        tight, big = load_study(cohort / table["study"][i]).hu, load_study(wide / t2["study"][i]).hu
        r0, c0 = int(poses["pad_row"][i]), int(poses["pad_col"][i])
        s, r, c = tight.shape
        assert big.shape == (s, r + round(r * 0.5), c + round(c * 0.5))
        assert np.array_equal(big[:, r0:r0 + tight.shape[1], c0:c0 + tight.shape[2]], tight)
        rest = big.copy()
        rest[:, r0:r0 + tight.shape[1], c0:c0 + tight.shape[2]] = -1000.0
        assert abs(float(rest.mean()) + 1000.0) < 2.0 and float(rest.max()) < -900.0
        if int(table["lesion"][i]):
            assert (t2["lesion_row"][i], t2["lesion_col"][i]) == (table["lesion_row"][i] + r0, table["lesion_col"][i] + c0)
    cols = ["subject_id", "time", "event", "split", "true_risk", "lesion_slice", "lesion_radius_mm"]
    assert t2[cols].equals(table[cols])
    with pytest.raises(InputError, match="fov"):
        R.check_fov(0.5)


def test_the_learnable_ceiling_nears_the_oracle_only_with_many_training_subjects(tmp_path: Path) -> None:
    """bench/real_anatomy.py's ceiling: a Cox model told the hazard's form, fitted on the train split."""
    bench = _bench("real_anatomy")
    ceilings = {}
    for n in (3000, 150):
        lat = R.sample_real_latents(n, seed=5, organs="liver,bone")
        folder = tmp_path / str(n)
        folder.mkdir()
        lat[["subject_id", "time", "event", "split", "risk_image", "risk_ehr", "true_risk"]].to_csv(folder / "cohort.csv", index=False)
        features = lat[["subject_id", "age", "last_bnp", "last_creatinine", "last_albumin"]].copy()
        for name in ("heart_failure", "copd", "ckd", "diabetes"):
            features[f"n_dx_{name}"] = lat[name] * 2  # counts of diagnosis codes, as features.csv holds them
        features.to_csv(folder / "features.csv", index=False)
        oracle = R.oracle_summary(lat, "test")
        ceilings[n] = (bench.learnable_ceiling(folder), oracle)
    big, oracle = ceilings[3000]
    assert abs(big["image_part_plus_ehr_form"] - oracle["oracle"]) < 0.01    # told the form, 1,800 subjects suffice
    assert abs(big["ehr_form"] - oracle["ehr_part"]) < 0.01
    small, oracle_small = ceilings[150]
    assert small["ehr_form"] < oracle_small["ehr_part"] + 0.01
    assert 0.5 < small["image_part_plus_ehr_form"] <= oracle_small["oracle"] + 0.01
