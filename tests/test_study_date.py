"""A CT's own date against the time a model predicts from: read from one DICOM header (folder, zip, single file),
named for a cohort's subjects (train's and evaluate's notes) and for one subject (``predict --json`` warnings)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.cohort import load_cohort
from core.cohort_notes import coverage_notes, is_leak_note, scan_date_notes
from core.io.study_date import HEAD_BYTES, study_date
from tests.dicom_factory import STUDY_DATE, write_deflated, write_deidentified_series, write_series, zip_folder


def test_the_date_of_a_folder_a_zip_a_single_file_and_a_deflated_file(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", shape=(4, 32, 32))
    assert STUDY_DATE == "20240917"
    assert study_date(tmp_path / "ct") == STUDY_DATE == study_date(series.paths[0])
    (tmp_path / "ct.zip").write_bytes(zip_folder(tmp_path / "ct"))
    assert study_date(tmp_path / "ct.zip") == STUDY_DATE
    assert study_date(write_deflated(tmp_path / "deflated.dcm", series.paths[1])) == STUDY_DATE
    # a zip whose first members are no DICOM (a readme, a folder entry) or a DICOMDIR (DICOM, with no StudyDate of
    # its own) still gives the series' date
    deid = write_deidentified_series(tmp_path / "deid", shape=(1, 16, 16))
    with zipfile.ZipFile(tmp_path / "mixed.zip", "w") as zf:
        zf.writestr("0_README.txt", "exported by the PACS")
        zf.write(deid.paths[0], "DICOMDIR")
        zf.writestr("images/", "")
        for p in series.paths:
            zf.write(p, f"images/{p.name}")
    assert study_date(tmp_path / "mixed.zip") == STUDY_DATE


def test_no_date_where_none_is_recorded_or_the_file_is_no_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.io.study_date as sd

    write_deidentified_series(tmp_path / "deid", shape=(3, 32, 32))
    read = []
    monkeypatch.setattr(sd, "_date_in", lambda head, real=sd._date_in: read.append(1) or real(head))
    (tmp_path / "deid.zip").write_bytes(zip_folder(tmp_path / "deid"))
    assert study_date(tmp_path / "deid") == "" == study_date(tmp_path / "deid.zip")  # the de-identified StudyDate is empty
    assert len(read) == 2  # one header of each: the study's other files are of the same study
    (tmp_path / "notes.txt").write_text("not a study")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    for name in ("notes.txt", "empty.dcm", "broken.zip", "absent.dcm"):
        assert study_date(tmp_path / name) == "", name
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"
    if shared.exists():
        assert study_date(shared) == ""  # a NIfTI file records no date


def test_a_large_member_is_read_only_up_to_its_header(tmp_path: Path) -> None:
    """The date lies in the first bytes: a zip member of 64 MiB of zeros after a DICOM header is not inflated whole
    (a bounded read), and its date still comes back."""
    series = write_series(tmp_path / "ct", shape=(2, 16, 16))
    head = series.paths[0].read_bytes()
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("a.dcm", "w") as fh:
            fh.write(head)
            for _ in range(64):
                fh.write(bytes(1 << 20))
    assert (tmp_path / "big.zip").stat().st_size < (1 << 20) and HEAD_BYTES < (1 << 20)
    assert study_date(tmp_path / "big.zip") == STUDY_DATE


@pytest.fixture(scope="module")
def dated_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo cohort of 10 (no NIfTI studies) where three subjects get a DICOM series taken on 2024-09-17: one with
    an index_time a week before it, one five months after it, one later on the scan's own day."""
    from core.demo import write_demo_cohort

    root = write_demo_cohort(tmp_path_factory.mktemp("dated") / "demo", n=10, seed=4, volumes=False)
    table = pd.read_csv(root / "cohort.csv", dtype={"subject_id": str})
    series = write_series(root / "studies" / "ct", shape=(32, 96, 96), spacing_mm=(6.0, 4.0, 4.0))
    ids = table["subject_id"].tolist()[:3]
    for sid in ids[1:]:
        shutil.copytree(series.folder, root / "studies" / sid)
    shutil.move(root / "studies" / "ct", root / "studies" / ids[0])
    table["study"] = ""
    table.loc[:2, "study"] = [f"studies/{s}" for s in ids]
    table.loc[:2, "index_time"] = ["2024-09-10 09:00", "2025-02-14 09:00", "2024-09-17 16:00"]
    table.to_csv(root / "cohort.csv", index=False)
    return root


def test_a_cohort_names_its_cts_taken_after_the_index_time_or_long_before_it(dated_cohort: Path) -> None:
    cohort = load_cohort(dated_cohort)
    ids = cohort.ids()
    after, old = scan_date_notes(cohort, ids)
    assert after.startswith(f"studies: a CT taken after the index_time for 1 of 10 subjects ({ids[0]}): ")
    assert is_leak_note(after) and not is_leak_note(old)  # a page shows the first as a warning
    assert old.startswith(f"studies: a CT taken more than 90 days before the index_time for 1 of 10 subjects ({ids[1]})")
    assert scan_date_notes(cohort, ids, max_age_days=200) == [after]  # 150 days: within 200
    assert scan_date_notes(cohort, ids[2:]) == []  # the scan's own day: nothing
    notes = coverage_notes(cohort, studies=True)  # train's data notes and evaluate's: after the subjects without CT
    assert notes[0].startswith("cohort.csv: 7 of 10 subjects have no study")
    assert notes[1:] == [after.replace("of 10", "of 3"), old.replace("of 10", "of 3")]
    # a timeline de-identified on another calendar (MIMIC's years 2110-2210) beside studies with their real dates
    shifted = cohort.table.assign(index_time=pd.Timestamp("2150-06-01"))
    (moved,) = scan_date_notes(type(cohort)(root=cohort.root, table=shifted), ids)
    assert moved.startswith("studies: a CT taken more than 90 days before the index_time for 3 of 10 subjects")
    assert moved.endswith("every one of them a year or more apart: are the index times (or the timeline they come "
                          "from) de-identified with shifted dates and the studies not? Then they cannot be compared")
    table = cohort.table.drop(columns=["index_time"])
    assert scan_date_notes(type(cohort)(root=cohort.root, table=table), ids) == []  # no index time: nothing to compare


def test_predict_json_warns_of_a_ct_taken_after_the_index_time(dated_cohort: Path) -> None:
    from core.predict import predict_subject
    from tests.conftest import ROOT

    ids = load_cohort(dated_cohort).ids()
    model = ROOT / "assets" / "demo_models" / "concat"
    warned = predict_subject(model, dated_cohort, ids[0])["warnings"]
    assert [w for w in warned if w.startswith("The index date")] == [
        "The index date 2024-09-10 is 7 days before the CT was taken (2024-09-17): the CT shows the patient after the "
        "index date, so the risk reads what came later. Set the index date to the scan's date or later."]
    assert not any("CT was taken" in w or "index date" in w for w in predict_subject(model, dated_cohort, ids[2])["warnings"])
