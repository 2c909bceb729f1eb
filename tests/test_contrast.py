"""Contrast: the record a study carries (DICOM header or cohort.csv), the training profile's counts, the warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset

from core.errors import InputError
from core.io.contrast import agent_status, describe, dicom_contrast, table_contrast
from core.study_profile import build_profile, card_lines, cohort_profile, contrast_warning
from tests.dicom_factory import write_series

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODELS = ROOT / "assets" / "demo_models"


def _ds(**elements: object) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def test_header_records() -> None:
    assert dicom_contrast(_ds(ContrastBolusAgent="OMNIPAQUE 350")) == ("yes", "ContrastBolusAgent")
    assert dicom_contrast(_ds(ContrastBolusAgent="APPLIED")) == ("yes", "ContrastBolusAgent")
    for none in ("NONE", "no", "No IV contrast", "non contrast", "W/O", "  n  "):
        assert dicom_contrast(_ds(ContrastBolusAgent=none)) == ("no", "ContrastBolusAgent"), none
    assert agent_status("NONIONIC") == "yes"  # a kind of agent, not "none"
    # an empty agent (as de-identification leaves it, action Z) records nothing; the module's other elements do
    assert dicom_contrast(_ds(ContrastBolusAgent="")) == ("", "")
    assert dicom_contrast(_ds(ContrastBolusAgent="", ContrastBolusRoute="IV")) == ("yes", "ContrastBolusRoute")
    assert dicom_contrast(_ds(ContrastBolusVolume=90)) == ("yes", "ContrastBolusVolume")
    assert dicom_contrast(_ds(ContrastBolusVolume=0)) == ("", "")
    assert dicom_contrast(_ds(ContrastFlowRate=[0, 4.5])) == ("yes", "ContrastFlowRate")  # one rate per injection
    assert dicom_contrast(_ds(ContrastBolusAgentSequence=[_ds(CodeValue="C-B0322")])) == ("yes", "ContrastBolusAgentSequence")
    # an enhanced CT: the usage sequence in its shared functional groups, NO beating a stale agent text
    usage = _ds(ContrastBolusUsageSequence=[_ds(ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="NO")])
    enhanced = _ds(SharedFunctionalGroupsSequence=[usage], ContrastBolusAgent="IOPAMIDOL")
    assert dicom_contrast(enhanced) == ("no", "ContrastBolusUsageSequence")
    usage.ContrastBolusUsageSequence[0].ContrastBolusAgentAdministered = "YES"
    assert dicom_contrast(enhanced) == ("yes", "ContrastBolusUsageSequence")
    assert dicom_contrast(Dataset()) == ("", "")
    assert describe({"contrast": "no", "contrast_source": "cohort.csv contrast"}) == "without contrast (cohort.csv contrast)"
    assert describe({}) == ""


def test_table_values() -> None:
    assert [table_contrast(v) for v in ("yes", "No", "TRUE", "without", "", np.nan, None, 1, 0.0, np.int64(1), False)] == \
        ["yes", "no", "yes", "no", "", "", "", "yes", "no", "yes", "no"]
    with pytest.raises(InputError, match=r"contrast \(subject 'P7'\): got 'arterial'.*write yes or no"):
        table_contrast("arterial", "P7")


def test_dicom_series_carries_its_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.io.dicom import load_dicom

    plain = write_series(tmp_path / "plain", shape=(6, 32, 32))
    assert "contrast" not in load_dicom(plain.folder).meta
    enhanced = write_series(tmp_path / "enhanced", shape=(6, 32, 32), seed=1)
    for path in enhanced.paths:
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent, ds.ContrastBolusRoute = "IOHEXOL", "IV"
        ds.save_as(path)
    vol = load_dicom(enhanced.folder)
    assert vol.meta["contrast"] == "yes" and vol.meta["contrast_source"] == "ContrastBolusAgent"
    assert "IOHEXOL" not in json.dumps(vol.meta)  # the agent's free text is never copied
    # two phases of one study: the series list (Upload's choice) says which one records contrast
    both = tmp_path / "both"
    shutil.copytree(plain.folder, both)
    for path in enhanced.paths:
        shutil.copy(path, both / f"C{path.name}")
    infos = {s.key: s.contrast for s in load_dicom(both).series}
    assert sorted(infos.values()) == ["", "yes"] and infos[enhanced.series_uid] == "yes"
    from core.cli import main

    assert main(["inspect", str(both), "--series", enhanced.series_uid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["contrast"], shown["contrast_source"]) == ("yes", "ContrastBolusAgent")
    assert {s["key"]: s["contrast"] for s in shown["series"]} == {enhanced.series_uid: "yes", plain.series_uid: None}


def test_deidentification_keeps_the_record_not_the_text(tmp_path: Path) -> None:
    """The project's de-identification replaces ContrastBolusAgent by a dummy (PS3.15 allows Z or D): "APPLIED" for an
    agent, "NONE" for a "none" text; the loaded copy keeps its record and no phrase of the original text. An agent
    written as the dummy itself ("NONE", "APPLIED": common on scanners) keeps it too: the check of the written bytes
    for original text used to remove it as a leak of its own value, and the study lost its record."""
    from core.deid.study import deidentify_study
    from core.io.dicom import load_dicom

    for agent, status in (("Visipaque 320 Dr Smith", "yes"), ("no contrast", "no"), ("NONE", "no"), ("Applied", "yes")):
        status_dir = f"{status}_{agent[:4]}"
        series = write_series(tmp_path / f"in_{status_dir}", shape=(4, 24, 24))
        for path in series.paths:
            ds = pydicom.dcmread(path)
            ds.ContrastBolusAgent = agent
            ds.save_as(path)
        report = deidentify_study(series.folder, tmp_path / f"out_{status_dir}", seed=1)
        assert report.n_instances == 4
        out = sorted((tmp_path / f"out_{status_dir}").iterdir())
        written = {str(pydicom.dcmread(p).get("ContrastBolusAgent")) for p in out}
        assert written == {"APPLIED" if status == "yes" else "NONE"}, agent
        assert not any(b"Smith" in p.read_bytes() or b"Visipaque" in p.read_bytes() for p in out)
        vol = load_dicom(tmp_path / f"out_{status_dir}")
        assert vol.meta["contrast"] == status and not vol.phi, (vol.meta, vol.phi)


def _nifti_cohort(root: Path, contrast: list[str]) -> Path:
    import nibabel as nib

    (root / "studies").mkdir(parents=True)
    hu = np.full((24, 24, 6), -1000.0, dtype=np.float32)
    hu[4:20, 4:20] = 40.0
    hu[8:16, 8:16] = -850.0
    nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 6.0, 1.0])), root / "studies" / "s.nii.gz")
    rows = [{"subject_id": f"P{i}", "time": 100 + i, "event": i % 2, "split": "train", "study": "studies/s.nii.gz",
             "contrast": c} for i, c in enumerate(contrast)]
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    return root


def test_cohort_column_and_profile_counts(tmp_path: Path) -> None:
    from core.cohort import load_cohort

    cohort = load_cohort(_nifti_cohort(tmp_path / "c", ["no", "No", "", "0"]))
    assert cohort.table["contrast"].tolist() == ["no", "no", "", "no"]
    vol = cohort.load_volume("P0")
    assert vol is not None and vol.meta["contrast"] == "no" and vol.meta["contrast_source"] == "cohort.csv contrast"
    assert "contrast" not in cohort.load_volume("P2").meta  # type: ignore[union-attr]
    prof = cohort_profile(cohort, cohort.ids("train"))
    assert prof is not None and prof["contrast"] == {"yes": 0, "no": 3, "unknown": 1}
    card = "\n".join(card_lines(prof))
    assert "0 studies with, 3 without, 1 with no record" in card
    bad = _nifti_cohort(tmp_path / "bad", ["no", "venous"])
    with pytest.raises(InputError, match=r"contrast \(subject 'P1'\): got 'venous'"):
        load_cohort(bad)


def test_warning_rule() -> None:
    rows = [{"slice_mm": 3.0}] * 4
    without = build_profile(rows, contrast=["no", "no", "no", ""])
    text = contrast_warning(without, {"contrast": "yes", "contrast_source": "ContrastBolusAgent"})
    assert text is not None and text.startswith("Contrast unlike the training studies: this CT was acquired with "
                                                "contrast (ContrastBolusAgent); all 3 of the model's training studies")
    assert "(1 had no record)" in text and "do not rely on the image part" in text
    assert contrast_warning(without, {"contrast": "no"}) is None
    assert contrast_warning(without, {}) is None  # a study without a record: nothing to compare
    assert contrast_warning(build_profile(rows, contrast=["yes", "no", "", ""]), {"contrast": "yes"}) is None  # both seen
    assert contrast_warning(build_profile(rows, contrast=[""] * 4), {"contrast": "yes"}) is None  # no training record
    assert contrast_warning(build_profile(rows), {"contrast": "yes"}) is None  # a profile from before the records
    assert "not recorded for this model" in "\n".join(card_lines(build_profile(rows)))
    enhanced = build_profile(rows, contrast=["yes"] * 4)
    assert "acquired without contrast (cohort.csv contrast); all 4" in str(
        contrast_warning(enhanced, {"contrast": "no", "contrast_source": "cohort.csv contrast"}))


@pytest.mark.slow
def test_predict_warns_on_a_study_acquired_otherwise(tmp_path: Path) -> None:
    """A shipped model whose profile records unenhanced training studies: a demo study stated as enhanced in
    cohort.csv gets the contrast warning in ``predict`` (the CT is still read), one stated as unenhanced none."""
    from core.demo import write_demo_cohort
    from core.predict import predict_subject

    model = tmp_path / "concat"
    shutil.copytree(DEMO_MODELS / "concat", model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["study_profile"]["contrast"] = {"yes": 0, "no": 200, "unknown": 0}
    (model / "config.json").write_text(json.dumps(cfg))
    cohort = write_demo_cohort(tmp_path / "cohort", n=10, seed=5)
    table = pd.read_csv(cohort / "cohort.csv")
    sids = table.loc[table["split"] == "test", "subject_id"].astype(str).tolist()[:2]
    table["contrast"] = ["yes" if str(s) == sids[0] else "no" for s in table["subject_id"]]
    table.to_csv(cohort / "cohort.csv", index=False)
    warned = predict_subject(model, cohort, sids[0])
    assert [w for w in warned["warnings"] if w.startswith("Contrast unlike the training studies")], warned["warnings"]
    assert "all 200 of the model's training studies" in warned["warnings"][-1]
    assert warned["image_withheld"] is None and "image" in warned["modalities_used"]
    quiet = predict_subject(model, cohort, sids[1])
    assert not [w for w in quiet["warnings"] if w.startswith("Contrast")], quiet["warnings"]
    assert quiet["risk"] == pytest.approx(predict_subject(DEMO_MODELS / "concat", cohort, sids[1])["risk"])


def test_saved_case_keeps_the_stated_contrast(tmp_path: Path) -> None:
    """Upload's statement for a file that records nothing is kept in case.json and comes back with the case's CT;
    a file with its own record keeps that; anything else than yes / no is refused before anything is written."""
    import nibabel as nib

    from core.app import cases

    hu = np.full((24, 24, 6), -1000.0, dtype=np.float32)
    nifti = nib.Nifti1Image(hu, np.diag([4.0, 4.0, 6.0, 1.0])).to_bytes()
    info = cases.save_case("local", study=nifti, study_name="ct.nii", contrast="yes", base=tmp_path)
    assert json.loads((info.path / "case.json").read_text())["contrast"] == "yes"
    again = cases.get_case("local", info.case_id, base=tmp_path)
    vol = cases.load_case_volume(again)
    assert again.contrast == "yes" and vol is not None
    assert (vol.meta["contrast"], vol.meta["contrast_source"]) == ("yes", "stated on Upload")
    plain = cases.load_case_volume(cases.save_case("local", study=nifti, study_name="ct.nii", base=tmp_path))
    assert plain is not None and "contrast" not in plain.meta
    with pytest.raises(InputError, match="contrast"):
        cases.save_case("local", study=nifti, study_name="ct.nii", contrast="venous", base=tmp_path)
    assert len(cases.list_cases("local", base=tmp_path)) == 2
    series = write_series(tmp_path / "dcm", shape=(4, 24, 24))
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = "NONE"
        ds.save_as(path)
    from core.io.dicom import load_dicom

    own = cases.stated_contrast(load_dicom(series.folder), "yes")
    assert (own.meta["contrast"], own.meta["contrast_source"]) == ("no", "ContrastBolusAgent")


def _two_phases(folder: Path) -> tuple[str, str]:
    """A study of two series: one recorded without contrast (8 images) and one with (6 images); their UIDs."""
    plain = write_series(folder.parent / "plain", shape=(8, 32, 32))
    enhanced = write_series(folder.parent / "enhanced", shape=(6, 32, 32), seed=1)
    folder.mkdir(parents=True)
    for series, agent in ((plain, "NONE"), (enhanced, "IOHEXOL")):
        for path in series.paths:
            ds = pydicom.dcmread(path)
            ds.ContrastBolusAgent = agent
            ds.save_as(folder / f"{agent}{path.name}")
    return plain.series_uid, enhanced.series_uid


def test_cohort_series_column_and_the_phase_the_model_knows(tmp_path: Path) -> None:
    """cohort.csv's ``series`` column picks the series of a multi-phase study (by UID or a unique prefix); a name
    that is not a series of the study, a series for a NIfTI study or for a subject without a study is refused naming
    the subject. A study loaded in the phase the model never saw gets a warning that names the study's other phase."""
    from core.cohort import load_cohort

    root = tmp_path / "cohort"
    plain_uid, enhanced_uid = _two_phases(root / "s1")
    rows = [{"subject_id": "A", "time": 10, "event": 1, "split": "train", "study": "s1", "series": ""},
            {"subject_id": "B", "time": 20, "event": 0, "split": "train", "study": "s1", "series": enhanced_uid[:-1]}]
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    cohort = load_cohort(root)
    default, named = cohort.load_volume("A"), cohort.load_volume("B")
    assert default is not None and named is not None
    assert (default.meta["series_key"], default.meta["contrast"]) == (plain_uid, "no")  # the larger series
    assert (named.meta["series_key"], named.meta["contrast"], named.shape[0]) == (enhanced_uid, "yes", 6)

    enhanced_only = build_profile([{"slice_mm": 2.5}] * 3, contrast=["yes"] * 3)
    text = contrast_warning(enhanced_only, default.meta, default.series)
    assert text is not None and f"Series {enhanced_uid} of this study (6 images) was acquired with contrast" in text
    assert "the series column of cohort.csv" in text
    assert contrast_warning(enhanced_only, named.meta, named.series) is None
    plain_only = build_profile([{"slice_mm": 2.5}] * 3, contrast=["no"] * 3)
    assert f"Series {plain_uid} of this study (8 images)" in str(contrast_warning(plain_only, named.meta, named.series))

    rows[1]["series"] = "9.9.9"
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    assert load_cohort(root).fingerprint() != cohort.fingerprint()  # caches of the preprocessed CTs are keyed by it
    with pytest.raises(InputError, match=r"series \(subject B\): got 9\.9\.9, is not a series of this study; fix: "
                                         r"choose one of: .*\(in the series column of cohort\.csv\)"):
        load_cohort(root).load_volume("B")
    nifti = _nifti_cohort(tmp_path / "n", ["no", "no"])
    table = pd.read_csv(nifti / "cohort.csv").assign(series=["", "1.2.3"])
    table.to_csv(nifti / "cohort.csv", index=False)
    with pytest.raises(InputError, match=r"series \(subject P1\): got 1\.2\.3, was given but a NIfTI file holds one "
                                         r"volume; fix: leave its series empty in cohort\.csv"):
        load_cohort(nifti).load_volume("P1")
    table.assign(study=["studies/s.nii.gz", ""]).to_csv(nifti / "cohort.csv", index=False)
    with pytest.raises(InputError, match=r"series: got '1\.2\.3' \(subject 'P1'\), names a series but the subject has "
                                         "no study"):
        load_cohort(nifti)


def test_saved_case_reads_the_phase_the_model_knows(tmp_path: Path) -> None:
    """A two-phase study saved in its larger, unenhanced series, against a model whose training studies were all
    enhanced: the model's read of the CT names the other phase (``ImageRead.like_training``, Case review's button),
    and ``set_series`` reads the saved case in it from then on (version + 1); the warning is then gone. A series that
    is not in the study is refused and the case stays as it was."""
    import io
    import zipfile

    from core.app import cases
    from core.predict import image_read
    from core.registry import load_model

    plain_uid, enhanced_uid = _two_phases(tmp_path / "study")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((tmp_path / "study").iterdir()):
            zf.write(path, path.name)
    data = tmp_path / "data"
    info = cases.save_case("local", study=buf.getvalue(), study_name="study.zip", base=data)
    before = cases.load_case_volume(info)
    assert before is not None and before.meta["series_key"] == plain_uid
    model_dir = tmp_path / "image_only"
    shutil.copytree(DEMO_MODELS / "image_only", model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["study_profile"]["contrast"] = {"yes": 200, "no": 0, "unknown": 0}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    model = load_model(model_dir)
    read = image_read(model, before)
    assert read.like_training == enhanced_uid
    assert [w for w in read.warnings if w.startswith("Contrast unlike the training studies")]
    with pytest.raises(InputError, match="is not a series of this study"):
        cases.set_series("local", info.case_id, "9.9.9", base=data)
    changed = cases.set_series("local", info.case_id, enhanced_uid, base=data)
    assert (changed.series, changed.version) == (enhanced_uid, info.version + 1)
    after = cases.load_case_volume(changed)
    assert after is not None and (after.meta["series_key"], after.shape[0]) == (enhanced_uid, 6)
    again = image_read(model, after)
    assert again.like_training is None and not [w for w in again.warnings if w.startswith("Contrast")]
