"""core.app.user_cohorts: which of a user's cohorts Case review may open, and nothing else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.app import user_cohorts
from core.app.workspace import MEDS_SUMMARY, TRAINED_MARKER
from core.errors import InputError


def _cohort(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "cohort.csv").write_text("subject_id,time,event,split\nP1,10,1,test\n")
    return folder


def test_the_list_holds_trained_and_built_cohorts_only(tmp_path: Path) -> None:
    cohorts, models = tmp_path / "cohorts", tmp_path / "models"
    trained = _cohort(cohorts / "20261128-120000")
    built = _cohort(cohorts / "meds-20261128-130000-a1b2c3")
    (built / MEDS_SUMMARY).write_text("{}")
    _cohort(cohorts / "meds-20261128-140000-d4e5f6")  # a build still running (no summary yet)
    _cohort(cohorts / "20261128-150000")  # unpacked for a training that has not finished
    outside = _cohort(tmp_path / "elsewhere")  # e.g. the demo cohort a user trained a model on
    os.symlink(trained, cohorts / "link")
    for name, cohort in (("m1", trained), ("m2", outside)):
        (models / name).mkdir(parents=True)
        (models / name / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(cohort), "label": name}))
    os.utime(trained, (1, 1))  # older than the built one: listed after it
    found = user_cohorts.reviewable(cohorts, models)
    assert [(c.name, c.models, c.label) for c in found] == [
        ("meds-20261128-130000-a1b2c3", (), "MEDS cohort built 28 Nov 13:00"),
        ("20261128-120000", ("m1",), "cohort uploaded 28 Nov 12:00")]
    assert user_cohorts.resolve(cohorts, models, "20261128-120000") == trained
    for name in ("20261128-150000", "meds-20261128-140000-d4e5f6", "link", "../elsewhere", str(outside), ""):
        with pytest.raises(InputError, match="is not one of your cohorts"):
            user_cohorts.resolve(cohorts, models, name)
    # another user's folders are another cohorts folder: nothing of this user's list resolves there
    assert user_cohorts.reviewable(tmp_path / "other" / "cohorts", tmp_path / "other" / "models") == []


def test_decoded_studies_of_a_users_cohorts_give_way_to_the_quota(tmp_path: Path) -> None:
    """Case review keeps the decoded studies of the user's cohorts in ``<user>/cache/studies``: counted in the user's
    quota and, like the decoded copies of their cases, dropped first when a save needs the room."""
    import numpy as np

    from core.app import workspace
    from core.io.study_cache import StudyCache
    from core.io.volume import Volume

    study = _cohort(tmp_path / "c") / "ct.nii.gz"
    study.write_bytes(b"stand-in")
    folder = workspace.user_root("ann", tmp_path) / "cache" / workspace.STUDIES
    cache = StudyCache(folder)
    cache.put(study, Volume(hu=np.zeros((4, 64, 64), np.int16), spacing_mm=(3.0, 1.0, 1.0), affine=np.eye(4)))
    used = workspace.user_usage("ann", tmp_path)
    assert used >= 4 * 64 * 64 * 2 and cache.get(study) is not None
    assert workspace.drop_caches("ann", tmp_path) >= 4 * 64 * 64 * 2
    assert cache.get(study) is None and workspace.user_usage("ann", tmp_path) < used


def test_the_picker_reads_a_cohort_table_as_training_did(tmp_path: Path) -> None:
    """Case review lists a cohort's patients from cohort.csv read as ``load_cohort`` reads it: a table whose id
    column has another accepted name and that has no split column lists the ids under the seeded split the model
    was trained and evaluated with, test first."""
    from core.cohort import load_cohort
    from pages import _cohort_cases

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "cohort.csv").write_text("PatientID,time,event\n" + "".join(f"P{i},{10 + i},{i % 2}\n" for i in range(20)))
    listed = _cohort_cases._ids(str(folder), 1.0)
    cohort = load_cohort(folder)
    assert [sid for sid, split in listed if split == "test"] == cohort.ids("test") and len(listed) == 20
    assert [split for _, split in listed] == sorted((s for _, s in listed), key=_cohort_cases.SPLIT_ORDER.index)


def test_a_copied_or_moved_data_folder_reads_its_own_cohorts(tmp_path: Path) -> None:
    """trained_in_app.json records the cohort's absolute path. In a data folder copied or restored elsewhere, that
    path still named the old folder: the copy's cohort patients vanished from Case review and Cohort & models read
    the old copy's cohort. A cohort recorded under another ``.../cohorts/`` folder is read in this user's own."""
    import shutil

    from core.app.background import delete_trained_model, trained_models
    from core.app.workspace import recorded_cohort

    old = tmp_path / "old" / "users" / "u1"
    cohort = _cohort(old / "cohorts" / "20261129-003000")
    (old / "models" / "m1").mkdir(parents=True)
    (old / "models" / "m1" / "config.json").write_text("{}")
    (old / "models" / "m1" / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(cohort), "label": "m1"}))
    new = tmp_path / "new" / "users" / "u1"
    shutil.copytree(old, new)
    mine = new / "cohorts" / "20261129-003000"
    assert recorded_cohort(str(cohort), new / "models") == mine
    assert trained_models(new / "models") == {"m1": (new / "models" / "m1", mine)}
    assert [c.path for c in user_cohorts.reviewable(new / "cohorts", new / "models")] == [mine]
    assert recorded_cohort("/srv/demo/cohort", new / "models") == Path("/srv/demo/cohort")  # not a user's: as recorded
    assert recorded_cohort(str(tmp_path / "x" / "cohorts" / "gone"), new / "models") == tmp_path / "x" / "cohorts" / "gone"
    assert delete_trained_model(new / "models", new / "models" / "m1", new / "cohorts") == [new / "models" / "m1", mine]
    assert cohort.is_dir()  # the old copy's cohort is not touched
