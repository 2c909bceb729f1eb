"""The embedded demo cohort: files, phantoms (HU, orientation, lesions), timelines, outcomes, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from core.cli import main
from core.demo import c_index_summary, sample_latents, write_demo_cohort
from core.demo.cohort import COHORT_COLUMNS, harrell_c
from core.demo.ehr import curate_features
from core.demo.phantom import (
    AIR,
    BLOOD,
    CANCELLOUS,
    CORTICAL,
    FAT,
    LESION,
    LIVER,
    LIVER_LESION,
    LUNG,
    MUSCLE,
    SHAPE,
    SPACING_MM,
    render_phantom,
)
from core.errors import InputError
from core.io.timeline import events_before, read_timeline

N, SEED = 24, 3


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort", n=N, seed=SEED)


@pytest.fixture(scope="session")
def table(demo: Path) -> pd.DataFrame:
    return pd.read_csv(demo / "cohort.csv", dtype={"subject_id": str})


def _load_volume(path: Path) -> np.ndarray:
    """Load with nibabel and reorient to [slice (I->S), row (A->P), col (R->L)], independently of core.demo."""
    img = nib.load(str(path))
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(("S", "P", "L")))
    return nib.orientations.apply_orientation(np.asanyarray(img.dataobj), ornt)


def _phantom(lat: pd.DataFrame, i: int, lesion: bool | None = None):
    return render_phantom(lat.iloc[i], np.random.default_rng(np.random.SeedSequence([SEED, i, 2])), lesion=lesion)


def test_files_and_columns(demo: Path, table: pd.DataFrame) -> None:
    for name in ("cohort.csv", "timeline.parquet", "features.csv", "README.md"):
        assert (demo / name).is_file(), name
    assert tuple(table.columns) == COHORT_COLUMNS
    assert len(table) == N and table["subject_id"].is_unique
    assert table["split"].value_counts().to_dict() == {"train": 14, "val": 5, "test": 5}
    assert 0 < table["event"].sum() < N  # events and censoring both present
    assert (table["time"] > 0).all()
    assert np.allclose(table["true_risk"], table["risk_image"] + table["risk_ehr"], atol=1e-5)
    for study in table["study"]:
        assert study.startswith("studies/") and (demo / study).is_file()
    assert (table["lesion"] == table["lesion_slice"].notna()).all()
    assert (table["liver_lesion"] == table["liver_lesion_slice"].notna()).all()
    assert np.allclose(table["risk_image"], table["risk_lung"] + table["risk_liver"], atol=1e-5)
    readme = (demo / "README.md").read_text()
    assert "true_risk = risk_image + risk_ehr" in readme and f"{N} subjects" in readme


def test_volumes_orientation_and_hu(demo: Path, table: pd.DataFrame) -> None:
    lat = sample_latents(N, SEED)
    img = nib.load(str(demo / table["study"].iloc[0]))
    assert img.get_data_dtype() == np.int16
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.allclose(nib.affines.voxel_sizes(img.affine), SPACING_MM[::-1])
    for i in range(4):
        hu = _load_volume(demo / table["study"].iloc[i])
        assert hu.shape == SHAPE
        p = _phantom(lat, i)
        assert np.array_equal(hu, p.hu)  # the file reorients back to the renderer's [slice, row, col]
        mean = {k: float(hu[p.labels == k].mean()) for k in (AIR, FAT, MUSCLE, LUNG, BLOOD, CORTICAL, CANCELLOUS)}
        assert -1005 < mean[AIR] < -990
        assert -900 < mean[LUNG] < -780
        assert -160 < mean[FAT] < -60
        assert 0 < mean[MUSCLE] < 80
        assert mean[BLOOD] > 120
        assert mean[CORTICAL] > 500 and mean[CANCELLOUS] > 150
        assert (hu[(p.labels == CORTICAL)] > 300).mean() > 0.6
        # noise: soft tissue sd in the 8-30 HU range away from edges
        core = (p.labels == MUSCLE)
        assert 5 < float(hu[core].std()) < 120


def test_lesion_voxel_is_soft_tissue_in_lung(demo: Path, table: pd.DataFrame) -> None:
    lat = sample_latents(N, SEED)
    with_lesion = table.index[table["lesion"] == 1].tolist()
    without = table.index[table["lesion"] == 0].tolist()
    assert with_lesion and without
    for i in with_lesion:
        row = table.loc[i]
        k, r, c = int(row["lesion_slice"]), int(row["lesion_row"]), int(row["lesion_col"])
        hu = _load_volume(demo / row["study"])
        assert hu[k, r, c] > -150, (row["subject_id"], hu[k, r, c])  # soft tissue, not aerated lung
        p = _phantom(lat, i)
        assert p.labels[k, r, c] == LESION
        clean = _phantom(lat, i, lesion=False)
        assert clean.labels[k, r, c] == LUNG and clean.hu[k, r, c] < -600  # the lesion sits inside the lung
        expected_side = "left" if (c - (SHAPE[2] - 1) / 2.0) * SPACING_MM[2] > lat.loc[i, "shift_x_mm"] else "right"
        assert expected_side == row["lesion_side"]  # cols run patient right -> left
    for i in without[:4]:
        p = _phantom(lat, i)
        assert not (p.labels == LESION).any()
        hu = _load_volume(demo / table.loc[i, "study"])
        deep_lung = ndimage.binary_erosion(p.labels == LUNG, structure=np.ones((3, 3, 3), bool))
        assert int(hu[deep_lung].max()) < -500  # no nodule anywhere inside the lungs


def test_liver_lesion_is_hypodense_in_the_right_liver(demo: Path, table: pd.DataFrame) -> None:
    lat = sample_latents(N, SEED)
    with_lesion = table.index[table["liver_lesion"] == 1].tolist()
    assert with_lesion and (table["liver_lesion"] == 0).any()
    for i in with_lesion:
        row = table.loc[i]
        k, r, c = int(row["liver_lesion_slice"]), int(row["liver_lesion_row"]), int(row["liver_lesion_col"])
        p = _phantom(lat, i)
        assert p.labels[k, r, c] == LIVER_LESION and p.liver_lesion_voxel == (k, r, c)
        clean = _phantom(lat, i, lesion=False)
        assert clean.labels[k, r, c] == LIVER and not (clean.labels == LIVER_LESION).any()
        hu = _load_volume(demo / row["study"])
        lesion_hu = float(hu[p.labels == LIVER_LESION].mean())
        liver_hu = float(hu[p.labels == LIVER].mean())
        # darker than the liver by about the drawn contrast (blur and noise soften it at 4 mm voxels)
        assert -60 < lesion_hu - liver_hu < -10, (row["subject_id"], lesion_hu, liver_hu)
        assert (c - (SHAPE[2] - 1) / 2.0) * SPACING_MM[2] < lat.loc[i, "shift_x_mm"]  # the patient's right
    for i in table.index[table["liver_lesion"] == 0].tolist()[:4]:
        assert not (_phantom(lat, i).labels == LIVER_LESION).any()


def test_timeline_and_features(demo: Path, table: pd.DataFrame) -> None:
    events = read_timeline(demo / "timeline.parquet")
    assert set(events["subject_id"]) == set(table["subject_id"])
    per = events.groupby("subject_id")
    assert (per["code"].apply(lambda c: int((c == "MEDS_BIRTH").sum())) == 1).all()
    codes = set(events["code"])
    for code in ("DIAGNOSIS//ICD10//I50.9", "MEDICATION//ATC//C03CA01", "LAB//creatinine//mg/dL",
                 "OUTPATIENT_VISIT//CLINIC", "IMAGING//CT//CHEST"):
        assert code in codes, code
    assert events.loc[events["code"].str.startswith("LAB//"), "numeric_value"].notna().all()
    index = dict(zip(table["subject_id"], pd.to_datetime(table["index_time"])))
    deaths = events[events["code"] == "MEDS_DEATH"].set_index("subject_id")["time"]
    assert set(deaths.index) == set(table.loc[table["event"] == 1, "subject_id"])
    for _, row in table[table["event"] == 1].iterrows():
        days = (deaths[row["subject_id"]] - index[row["subject_id"]]) / pd.Timedelta(days=1)
        assert abs(days - row["time"]) < 1 / 1440 + 1e-9
    # nothing after the end of follow-up; pre-index history exists for everyone
    end = {s: index[s] + pd.Timedelta(days=t) for s, t in zip(table["subject_id"], table["time"])}
    assert (events["time"] <= events["subject_id"].map(end) + pd.Timedelta(minutes=1)).all()
    features = pd.read_csv(demo / "features.csv", dtype={"subject_id": str}).set_index("subject_id")
    assert features.index.tolist() == table["subject_id"].tolist()
    assert features["last_bnp"].isna().any() and features["last_creatinine"].notna().any()
    # features use only events at or before the index time: recompute from events_before
    pre = pd.concat([events_before(g, index[s]) for s, g in events.groupby("subject_id")])
    assert len(pre) < len(events)  # post-index outcome events exist and are excluded
    again = curate_features(pre, index).set_index("subject_id")
    pd.testing.assert_frame_equal(again, features, check_dtype=False, atol=1e-6)
    lat = sample_latents(N, SEED).set_index("subject_id")
    np.testing.assert_allclose(features["last_albumin"], lat["last_albumin"], equal_nan=True)
    np.testing.assert_allclose(features["age"], lat["age"], atol=0.01)


def test_same_seed_same_bytes_other_seed_differs(demo: Path, tmp_path: Path) -> None:
    again = write_demo_cohort(tmp_path / "again", n=N, seed=SEED)
    assert (again / "cohort.csv").read_bytes() == (demo / "cohort.csv").read_bytes()
    for name in sorted(p.name for p in (demo / "studies").iterdir())[:5]:
        assert (again / "studies" / name).read_bytes() == (demo / "studies" / name).read_bytes()
    pd.testing.assert_frame_equal(read_timeline(again / "timeline.parquet"), read_timeline(demo / "timeline.parquet"))
    other = write_demo_cohort(tmp_path / "other", n=N, seed=SEED + 1, volumes=False)
    assert (other / "cohort.csv").read_bytes() != (demo / "cohort.csv").read_bytes()


def test_phantoms_on_three_processes_are_byte_identical_to_one(demo: Path, tmp_path: Path) -> None:
    progress: list[float] = []
    split = write_demo_cohort(tmp_path / "split", n=N, seed=SEED, workers=3,
                              progress=lambda f, label: progress.append(f) if label == "CT phantoms" else None)
    assert (split / "cohort.csv").read_bytes() == (demo / "cohort.csv").read_bytes()  # lesion voxels from every shard
    names = sorted(p.name for p in (demo / "studies").iterdir())
    assert names == sorted(p.name for p in (split / "studies").iterdir()) and len(names) == N
    assert all((split / "studies" / name).read_bytes() == (demo / "studies" / name).read_bytes() for name in names)
    assert progress == sorted(progress) and 0 < progress[-1] <= 1


def test_demo_workers_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.demo.shards import MIN_PER_SHARD, default_workers

    monkeypatch.delenv("CTEHR_DEMO_WORKERS", raising=False)
    assert default_workers(MIN_PER_SHARD - 1) == 1  # a small cohort stays in one process
    assert 1 <= default_workers(800) <= 4
    monkeypatch.setenv("CTEHR_DEMO_WORKERS", "3")
    assert default_workers(10) == 3
    monkeypatch.setenv("CTEHR_DEMO_WORKERS", "two")
    with pytest.raises(ValueError, match="CTEHR_DEMO_WORKERS: got 'two'"):
        default_workers(800)


def test_oracle_beats_each_modality() -> None:
    lat = sample_latents(4000, seed=0)
    assert abs(np.corrcoef(lat["image_part"], lat["ehr_part"])[0, 1]) < 0.05  # independent parts
    ratio = lat["image_part"].var() / lat["ehr_part"].var()
    assert 0.7 < ratio < 1.4  # comparable contributions
    censored = 1 - lat["event"].mean()
    assert 0.30 < censored < 0.45
    test = lat[lat["split"] == "test"]
    c = {k: harrell_c(test["time"], test["event"], test[k]) for k in ("true_risk", "image_part", "ehr_part")}
    assert 0.76 < c["true_risk"] < 0.84
    assert c["true_risk"] - c["image_part"] >= 0.05
    assert c["true_risk"] - c["ehr_part"] >= 0.05
    assert min(c["image_part"], c["ehr_part"]) > 0.62  # both modalities carry real signal
    # two organs of comparable weight: reading one organ (plus the EHR) stays well below the oracle
    assert 0.7 < lat["lung_part"].var() / lat["liver_part"].var() < 1.4
    assert abs(np.corrcoef(lat["lung_part"], lat["liver_part"])[0, 1]) < 0.05
    for organ in ("lung_part", "liver_part"):
        one = harrell_c(test["time"], test["event"], test[organ] + test["ehr_part"])
        assert c["true_risk"] - one >= 0.03, organ
        assert c["image_part"] - harrell_c(test["time"], test["event"], test[organ]) >= 0.04, organ
    # horizons 30 d, 1 y, 5 y are all meaningful
    for h, lo, hi in ((30, 0.03, 0.15), (365, 0.2, 0.5), (1825, 0.4, 0.75)):
        frac = ((lat["event"] == 1) & (lat["time"] <= h)).mean()
        assert lo < frac < hi, h
    assert (lat["time"] > 1825).mean() > 0.05


def test_c_index_summary_of_written_cohort(table: pd.DataFrame) -> None:
    c = c_index_summary(table, None)
    assert set(c) == {"oracle", "image_part", "ehr_part", "lung_part", "liver_part"}
    assert all(0.0 <= v <= 1.0 for v in c.values())


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="n: got 5, must be an integer >= 10"):
        sample_latents(5)


def test_cli_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", str(tmp_path / "d"), "--n", "12", "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    assert summary["n"] == 12 and summary["splits"] == {"test": 3, "train": 7, "val": 2}
    assert len(list((tmp_path / "d" / "studies").glob("*.nii.gz"))) == 12

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = main(["demo", str(blocker), "--n", "12"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error: OUT: got ") and err.count("\n") == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    code = main(["demo", str(foreign), "--n", "12"])
    _, err = capsys.readouterr()
    assert code == 2 and "non-empty folder without a demo cohort" in err
    assert (foreign / "keep.txt").read_text() == "x" and not (foreign / "studies").exists()
    code = main(["demo", str(tmp_path / "e"), "--n", "3"])
    _, err = capsys.readouterr()
    assert code == 2 and "n: got 3" in err
