"""An uploaded cohort zip read at once, in memory (``core.app.cohort_preview``): the same counts and notes as the
unpacked folder gives, the dates of studies held as folders, files and zips inside it, and what would stop its job."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.app.cohort_preview import preview_cohort_zip
from core.cohort import load_cohort
from core.cohort_notes import split_event_notes
from core.commands.inspect import _cohort_notes
from core.errors import InputError
from core.io.study_date import study_date, zip_study_dates
from tests.dicom_factory import STUDY_DATE, edit_file, write_series, zip_folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo cohort of 12 without volumes (timeline and features) where four subjects have a DICOM study of
    2024-09-17 (a folder, a zip stored and a zip deflated, and a folder whose StudyDate is empty but its SeriesDate
    kept), with index times before, long after and on that day; no split column."""
    from core.demo import write_demo_cohort

    root = write_demo_cohort(tmp_path_factory.mktemp("preview") / "site", n=12, seed=6, volumes=False)
    table = pd.read_csv(root / "cohort.csv", dtype={"subject_id": str}).drop(columns=["split"])
    ids = table["subject_id"].tolist()
    series = write_series(root / "studies" / ids[0], shape=(6, 32, 32))
    (root / "studies" / f"{ids[1]}.zip").write_bytes(zip_folder(series.folder, compress=False))
    (root / "studies" / f"{ids[2]}.zip").write_bytes(zip_folder(series.folder))
    shutil.copytree(series.folder, root / "studies" / ids[3])
    for path in (root / "studies" / ids[3]).iterdir():  # an export that blanked the StudyDate and kept the rest
        edit_file(path, lambda ds: setattr(ds, "StudyDate", ""))
    table["study"] = ""
    table.loc[:3, "study"] = [f"studies/{ids[0]}", f"studies/{ids[1]}.zip", f"studies/{ids[2]}.zip", f"studies/{ids[3]}"]
    table.loc[:3, "index_time"] = ["2024-09-10 09:00", "2025-03-01 09:00", "2024-09-17 18:00", "2024-09-01 08:00"]
    table.to_csv(root / "cohort.csv", index=False)
    return root


def _zip(root: Path, top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            zf.write(path, f"{top}{path.relative_to(root).as_posix()}")
    return buf.getvalue()


def test_the_preview_of_a_zip_says_what_its_unpacked_folder_says(cohort: Path) -> None:
    ids = load_cohort(cohort).ids()
    folder = load_cohort(cohort)  # as the job reads it once unpacked: the split drawn with seed 0
    for top in ("", "export/site/"):  # cohort.csv at the zip's top, or in a folder inside it
        p = preview_cohort_zip(_zip(cohort, top))
        assert (p.subjects, p.events) == (12, int(folder.table["event"].sum()))
        assert p.drawn and p.splits == {s: len(folder.ids(s)) for s in ("train", "val", "test")}
        assert p.studies == 4 and p.timeline_subjects == 12 and p.timeline_events == len(folder.timeline)
        assert p.feature_columns == folder.features.shape[1] and p.embeddings == () and p.blocking == ()
        assert p.median_follow_up_days == pytest.approx(folder.table["time"].median())
        # the notes `inspect --cohort` gives the unpacked folder (read from the studies on disk), and the splits'
        assert list(p.notes) == _cohort_notes(cohort) + split_event_notes(folder.table)
    after, old = [n for n in p.notes if n.startswith("studies:")]
    assert after.startswith(f"studies: a CT taken after the index_time for 2 of 4 subjects ({ids[0]}, {ids[3]})")
    assert old.startswith(f"studies: a CT taken more than 90 days before the index_time for 1 of 4 subjects ({ids[1]})")
    # the dates themselves: a folder, a stored and a deflated zip inside the zip, and a SeriesDate where the
    # StudyDate is empty; a NIfTI, a path the zip does not hold and an empty name give none
    with zipfile.ZipFile(io.BytesIO(_zip(cohort))) as zf:
        dates = zip_study_dates(zf, {s: f"studies/{s}" + (".zip" if s in ids[1:3] else "") for s in ids[:4]}
                                | {"nifti": "cohort.csv", "gone": "studies/nobody", "blank": ""})
    assert dates == {**dict.fromkeys(ids[:4], STUDY_DATE), "nifti": "", "gone": "", "blank": ""}
    assert study_date(cohort / "studies" / ids[3]) == STUDY_DATE  # the same fallback on disk


def test_what_would_stop_the_job_is_said_before_it_is_queued(cohort: Path, tmp_path: Path) -> None:
    site = shutil.copytree(cohort, tmp_path / "site")
    table = pd.read_csv(site / "cohort.csv", dtype={"subject_id": str})
    ids = table["subject_id"].tolist()
    shutil.rmtree(site / "studies" / ids[0])  # named, not zipped
    table.loc[4, "study"] = "../elsewhere/ct.nii.gz"  # out of the cohort folder
    table.to_csv(site / "cohort.csv", index=False)
    p = preview_cohort_zip(_zip(site))
    assert p.blocking == (
        f"cohort.csv: 1 of 12 subjects name a study that is not in the zip ({ids[0]}: 'studies/{ids[0]}'): the "
        "job's PHI check stops at them; add the studies to the zip at those paths (relative to cohort.csv) or leave "
        "their study cells empty",
        f"cohort.csv: 1 of 12 subjects name a study outside the cohort folder ({ids[4]}): the job refuses it; give "
        "paths inside the folder, without '..'")
    assert p.studies == 3
    # the job's own gate refuses both rows (and the others for their identifying headers: the preview reads none)
    from core.deid.cohort_gate import gate_cohort_zip

    refused = {r.subject_id: r.error for r in gate_cohort_zip(_zip(site)).blocked_rows if r.error}
    assert refused == {ids[0]: "is not in the zip (study)", ids[4]: "study path leaves the cohort folder"}
    # what the job stops with at once is raised, as the Train button's check raises it
    table.drop(columns=["event"]).to_csv(site / "cohort.csv", index=False)
    with pytest.raises(InputError, match="^columns: got event, required column"):
        preview_cohort_zip(_zip(site))
    # a validation cohort needs no train split and no event; the Train tab's preview does
    table.assign(event=0).to_csv(site / "cohort.csv", index=False)
    with pytest.raises(InputError, match="every subject is censored"):
        preview_cohort_zip(_zip(site))
    assert preview_cohort_zip(_zip(site), for_training=False).events == 0


def test_a_zip_of_more_files_than_a_cohort_may_hold_is_refused_before_its_job(cohort: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from core.app import workspace

    data = _zip(cohort)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        n = len(zf.infolist())
    monkeypatch.setattr(workspace, "MAX_COHORT_FILES", n - 1)
    for check in (preview_cohort_zip, workspace.check_cohort_zip):  # on upload, at the button, as unpacking would
        with pytest.raises(InputError, match=f"^cohort zip: got {n} files, has more than {n - 1:,} files; fix: zip "
                                             "each study's slices into one file"):
            check(data)
    monkeypatch.setattr(workspace, "MAX_COHORT_FILES", n)
    assert preview_cohort_zip(data).subjects == 12
