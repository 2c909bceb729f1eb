"""Per-user workspaces, saved cases, quotas, the scratch sweep, and uploads checked in memory before any write."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.app import cases, uploads, workspace
from core.errors import InputError
from tests.conftest import ROOT
from tests.dicom_factory import (
    PHI_VALUES,
    edit_file,
    secondary_capture,
    write_deidentified_series,
    write_series,
)


def _files_under(path: Path) -> list[Path]:
    return [p for p in Path(path).rglob("*") if p.is_file()] if Path(path).exists() else []


def _events(n: int = 5, subject: str = "10042") -> pd.DataFrame:
    times = pd.date_range("2020-01-01", periods=n, freq="7D")
    return pd.DataFrame({"subject_id": subject, "time": times, "code": [f"LAB//{i}" for i in range(n)],
                         "numeric_value": np.arange(n, dtype=float)})


def _series_files(folder: Path, *, identified: bool, shape: tuple[int, int, int] = (6, 32, 32)) -> list[tuple[str, bytes]]:
    (write_series if identified else write_deidentified_series)(folder, shape=shape)
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def _nifti_bytes(descrip: bytes = b"") -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.full((16, 16, 4), -500, dtype=np.int16), np.diag([1.5, 1.5, 3.0, 1.0]))
    img.header["descrip"] = descrip
    return img.to_bytes()


# ------------------------------------------------------------------ users kept apart


def test_user_folders_are_private_hashed_and_apart(tmp_path: Path) -> None:
    a, b = workspace.user_root("clinician-7f3a", tmp_path), workspace.user_root("second-b21c", tmp_path)
    assert a != b and a.parent == b.parent == tmp_path / "users"
    for folder in (a, b, a.parent, workspace.user_models_dir("clinician-7f3a", tmp_path),
                   workspace.user_exports_dir("clinician-7f3a", tmp_path)):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert "clinician" not in str(a) and len(a.name) == 32
    assert workspace.user_root("clinician-7f3a", tmp_path) == a  # stable across calls and restarts
    with pytest.raises(InputError, match="user"):
        workspace.user_root("  ", tmp_path)


def test_a_second_user_cannot_list_open_or_delete_the_first_users_case(tmp_path: Path) -> None:
    info = cases.save_case("alice", events=_events(), index_time="2020-03-01", base=tmp_path)
    assert [c.case_id for c in cases.list_cases("alice", tmp_path)] == [info.case_id]
    assert cases.list_cases("bob", tmp_path) == []
    with pytest.raises(InputError, match="not one of your saved cases"):
        cases.get_case("bob", info.case_id, tmp_path)
    with pytest.raises(InputError, match="not one of your saved cases"):
        cases.delete_case("bob", info.case_id, tmp_path)
    with pytest.raises(InputError):
        cases.add_timeline("bob", info.case_id, _events(), "2020-03-01", tmp_path)
    assert cases.get_case("alice", info.case_id, tmp_path).case_id == info.case_id
    # models: each user lists only their own folder
    model = workspace.user_models_dir("alice", tmp_path) / "cox-1"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert list(workspace.list_user_models("alice", tmp_path)) == ["cox-1"]
    assert workspace.list_user_models("bob", tmp_path) == {}


@pytest.mark.parametrize("bad", ["..", "../x", "/etc/passwd", "0123456789abcdeg", "0123456789ABCDEF", "", "a" * 200])
def test_case_ids_that_are_not_ours_are_refused(tmp_path: Path, bad: str) -> None:
    cases.save_case("alice", events=_events(), index_time="2020-03-01", base=tmp_path)
    with pytest.raises(InputError) as err:
        cases.get_case("alice", bad, tmp_path)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)


def test_a_link_planted_among_the_cases_is_not_listed_or_followed(tmp_path: Path) -> None:
    victim = cases.save_case("bob", events=_events(), index_time="2020-03-01", base=tmp_path)
    link = workspace.user_cases_dir("alice", tmp_path) / victim.case_id
    link.symlink_to(victim.path)
    assert cases.list_cases("alice", tmp_path) == []
    with pytest.raises(InputError):
        cases.get_case("alice", victim.case_id, tmp_path)


# ------------------------------------------------------------------ persistence


def test_cases_persist_across_processes_and_a_timeline_is_added_without_the_ct(tmp_path: Path) -> None:
    files = _series_files(tmp_path / "s", identified=False)
    checked = uploads.check_study(files)
    assert not checked.blocked and checked.name == "6 files"
    first = uploads.save_checked_case("local", checked, base=tmp_path)
    second = cases.save_case("local", events=_events(3), index_time="2020-01-20", base=tmp_path)
    assert (first.number, second.number) == (1, 2) and first.modalities == ("CT",)
    study_hash = hashlib.sha256(first.study_path.read_bytes()).hexdigest()

    updated = cases.add_timeline("local", first.case_id, _events(4), "2020-01-25", tmp_path)
    assert updated.modalities == ("CT", "timeline") and updated.version == 2
    assert hashlib.sha256(updated.study_path.read_bytes()).hexdigest() == study_hash  # CT untouched
    events = cases.case_events(updated)
    assert len(events) == 4 and set(events["subject_id"]) == {first.case_id}  # the source id is not kept
    assert cases.case_index_time(updated) == pd.Timestamp("2020-01-25")

    # a fresh interpreter (a restarted server) lists the same cases and loads the same CT
    code = ("import sys; from pathlib import Path; from core.app import cases;"
            "cs = cases.list_cases('local', Path(sys.argv[1]));"
            "v = cases.load_case_volume(cs[0]);"
            "print([c.label for c in cs], [c.modalities for c in cs], v.shape, round(float(v.hu.mean()), 3))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    vol = checked.volume
    assert out == (f"['Case 1', 'Case 2'] [('CT', 'timeline'), ('timeline',)] {vol.shape} "
                   f"{round(float(vol.hu.mean()), 3)}")

    cases.delete_case("local", second.case_id, tmp_path)
    assert [c.label for c in cases.list_cases("local", tmp_path)] == ["Case 1"]
    assert not second.path.exists()
    third = cases.save_case("local", events=_events(2), index_time="2020-01-10", base=tmp_path)
    assert third.number == 3  # numbers are never reused after a delete


# ------------------------------------------------------------------ quotas


def test_user_quota_refuses_with_one_line_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases.save_case("alice", events=_events(), index_time="2020-03-01", base=tmp_path)
    used = workspace.user_usage("alice", tmp_path)
    assert used > 0
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, str((used + 100) / workspace.GB))
    before = sorted(_files_under(tmp_path))
    with pytest.raises(InputError) as err:
        cases.save_case("alice", study=b"\0" * 4096, study_name="x.dcm", base=tmp_path)
    text = str(err.value)
    assert "\n" not in text and text.startswith("disk quota: got")
    assert "your quota of" in text and "delete cases" in text and workspace.USER_QUOTA_ENV in text
    assert sorted(_files_under(tmp_path)) == before
    # another user still has room: the quota is per user
    cases.save_case("bob", study=b"\0" * 1000, study_name="x.dcm", base=tmp_path)


def test_overall_quota_counts_every_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases.save_case("alice", study=b"\1" * 20_000, study_name="x.dcm", base=tmp_path)
    monkeypatch.setenv(workspace.TOTAL_QUOTA_ENV, str(30_000 / workspace.GB))
    with pytest.raises(InputError, match="server's quota") as err:
        cases.save_case("bob", study=b"\2" * 20_000, study_name="x.dcm", base=tmp_path)
    assert workspace.TOTAL_QUOTA_ENV in str(err.value)
    assert cases.list_cases("bob", tmp_path) == []
    monkeypatch.setenv(workspace.TOTAL_QUOTA_ENV, "lots")
    with pytest.raises(InputError, match="CTEHR_TOTAL_QUOTA_GB: got lots"):
        workspace.total_quota_bytes()
    monkeypatch.delenv(workspace.TOTAL_QUOTA_ENV)
    monkeypatch.delenv(workspace.USER_QUOTA_ENV, raising=False)
    assert (workspace.user_quota_bytes(), workspace.total_quota_bytes()) == (5 * workspace.GB, 50 * workspace.GB)


# ------------------------------------------------------------------ scratch sweep


def test_sweep_removes_scratch_of_a_killed_server_and_keeps_ours(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = tmp_path / f"{workspace.WORKSPACE_PREFIX}{dead.pid}-abc123"
    killed.mkdir()
    (killed / "upload.bin").write_bytes(b"x" * 100)
    ours = workspace.new_session_workspace(tmp_path)
    (ours.path / "export.png").write_bytes(b"png")
    old = workspace.new_session_workspace(tmp_path)
    os.utime(old.path, (1, 1))  # untouched for decades
    assert ours.path.name.startswith(f"{workspace.WORKSPACE_PREFIX}{os.getpid()}-")
    assert workspace.sweep_stale_workspaces(max_age_s=3600, root=tmp_path) == 2
    assert not killed.exists() and not old.path.exists() and ours.path.is_dir()
    assert ours.path.stat().st_mode & 0o777 == 0o700


def test_start_up_sweeps_once_and_exit_removes_this_process_scratch(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from core.app import workspace as w;"
            "base = Path(sys.argv[1]); print(w.start_up(base), w.start_up(base));"
            "ws = w.new_session_workspace(w.scratch_root(base)); (ws.path / 'f').write_text('x');"
            "keep = ws  # alive until exit: removed by the exit sweep")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = workspace.scratch_root(tmp_path) / f"{workspace.WORKSPACE_PREFIX}{dead.pid}-zz"
    leftover.mkdir()
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "0"]
    assert list(workspace.scratch_root(tmp_path).iterdir()) == []


def test_each_session_prepares_its_exports_apart_and_they_go_with_it(tmp_path: Path) -> None:
    """One user's two sessions shared users/<key>/exports/<kind>, emptied at each prepare: session B's prepare
    deleted the file session A was offering (and A's download then sent B's file or nothing)."""
    scratch = workspace.scratch_root(tmp_path)
    a, b = workspace.new_session_workspace(scratch), workspace.new_session_workspace(scratch)
    report_a = a.exports_dir("alice", "report", tmp_path) / "case-report_case01.pdf"
    report_a.write_bytes(b"%PDF a")
    report_b = b.exports_dir("alice", "report", tmp_path) / "case-report_case02.pdf"
    report_b.write_bytes(b"%PDF b")
    assert report_a.read_bytes() == b"%PDF a" and report_b.parent != report_a.parent
    assert report_a.parent.parent.parent == workspace.user_exports_dir("alice", tmp_path)
    assert report_a.parent.stat().st_mode & 0o777 == 0o700
    assert workspace.user_usage("alice", tmp_path) >= len(b"%PDF a%PDF b")  # in the user's quota
    again = a.exports_dir("alice", "report", tmp_path)  # a second prepare in A replaces A's file only
    assert list(again.iterdir()) == [] and report_b.is_file()
    with pytest.raises(InputError, match="workspace folder"):
        a.exports_dir("alice", "../cases", tmp_path)
    a.cleanup()  # the session ended: its scratch and its exports go, B's stay
    assert not a.path.exists() and not report_a.parent.parent.exists() and report_b.is_file()
    # a closed tab's session is dropped only when collected: its exports untouched for an hour go at another's prepare
    c = workspace.new_session_workspace(scratch)
    os.utime(report_b.parent.parent, (1, 1))
    c.exports_dir("alice", "figure", tmp_path)
    assert not report_b.exists() and b.path.is_dir()
    b.touch()  # B in use again: its (new) exports are not swept by C
    kept = b.exports_dir("alice", "nifti", tmp_path)
    c.exports_dir("alice", "figure", tmp_path)
    assert kept.is_dir()
    # over the quota: before a refusal, the files the user's other sessions prepared give way (C's own stay)
    (kept / "map.nii.gz").write_bytes(b"m" * 5000)
    own = c.exports_dir("alice", "report", tmp_path) / "r.pdf"
    own.write_bytes(b"%PDF")
    assert c.drop_other_exports("alice", tmp_path) >= 5000
    assert not kept.exists() and own.is_file()


def test_exports_of_a_killed_server_and_the_old_shared_ones_are_swept_at_start(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    exports = workspace.user_exports_dir("alice", tmp_path)
    killed = exports / f"{workspace.WORKSPACE_PREFIX}{dead.pid}-abc123" / "dicom"
    killed.mkdir(parents=True)
    (killed / "dicom_case01.zip").write_bytes(b"z" * 1000)
    (workspace.scratch_root(tmp_path) / killed.parent.name).mkdir()  # its session's scratch, left too
    shared = exports / "dicom"  # the layout before: one folder per kind for all of a user's sessions
    shared.mkdir()
    (shared / "old.zip").write_bytes(b"z")
    live = workspace.new_session_workspace(workspace.scratch_root(tmp_path))
    kept = live.exports_dir("alice", "nifti", tmp_path) / "map.nii.gz"
    kept.write_bytes(b"n")
    code = "import sys; from pathlib import Path; from core.app import workspace as w; print(w.start_up(Path(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["2"]  # the killed server's scratch, then its session's exports
    assert not killed.parent.exists() and not shared.exists() and kept.is_file()


# ------------------------------------------------------------------ uploads checked in memory


def test_a_study_with_phi_is_refused_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _series_files(tmp_path / "src", identified=True)
    base, scratch = tmp_path / "data", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    checked = uploads.check_study(files)
    assert checked.blocked
    identifying = set(checked.identifying)
    assert {"PatientName", "PatientID", "PatientBirthDate"} <= identifying
    with pytest.raises(InputError, match="De-identify and continue") as err:
        uploads.save_checked_case("alice", checked, events=_events(), index_time="2020-03-01", base=base)
    assert "\n" not in str(err.value)
    assert _files_under(base) == [] and _files_under(scratch) == []  # checked in memory: nothing on disk
    assert cases.list_cases("alice", base) == []

    clean = uploads.deidentify(checked)
    assert not clean.blocked and clean.deidentified
    assert _files_under(scratch) == []
    info = uploads.save_checked_case("alice", clean, base=base)
    stored = info.study_path.read_bytes()
    from core.io.safezip import read_zip

    blob = b"".join(m.data for m in read_zip(stored))
    for value in ("DOE^JANE", PHI_VALUES["PatientID"]):
        assert value.encode() not in blob
    assert cases.load_case_volume(info).shape == checked.volume.shape


def test_nifti_header_text_blocks_until_cleared(tmp_path: Path) -> None:
    checked = uploads.check_study([("scan.nii", _nifti_bytes(b"Jane Doe 1954"))])
    assert checked.identifying == ["nifti.descrip"] and checked.name == "scan.nii"
    with pytest.raises(InputError):
        uploads.save_checked_case("local", checked, base=tmp_path)
    assert _files_under(tmp_path) == []
    clean = uploads.deidentify(checked)
    assert clean.volume.phi == []
    info = uploads.save_checked_case("local", clean, base=tmp_path)
    assert b"Jane Doe" not in info.study_path.read_bytes()


def test_burned_in_risk_blocks_until_acknowledged(tmp_path: Path) -> None:
    sc = secondary_capture(tmp_path / "sc.dcm")
    checked = uploads.check_study([("sc.dcm", sc.read_bytes())])
    assert checked.volume.burned_in and not checked.blocked
    with pytest.raises(InputError, match="burned-in"):
        uploads.save_checked_case("local", checked, base=tmp_path / "d")
    assert _files_under(tmp_path / "d") == []
    info = uploads.save_checked_case("local", checked, burned_in_acknowledged=True, base=tmp_path / "d")
    assert info.study_path.read_bytes() == sc.read_bytes()


def test_clinical_attributes_are_not_called_identifying_and_show_their_values(tmp_path: Path) -> None:
    files_dir = tmp_path / "s"
    write_deidentified_series(files_dir, shape=(4, 32, 32))

    def characteristics(ds: object) -> None:
        ds.PatientWeight, ds.PatientSize, ds.PatientSex, ds.PatientAge = "72.5", "1.68", "F", "063Y"  # type: ignore[attr-defined]

    for p in files_dir.iterdir():
        edit_file(p, characteristics)
    checked = uploads.check_study([(p.name, p.read_bytes()) for p in sorted(files_dir.iterdir())])
    rows = {f.attribute: (f.group, f.value) for f in checked.findings()}
    assert rows["PatientWeight"] == ("clinical, kept", "72.5 kg")
    assert rows["PatientSize"] == ("clinical, kept", "1.68 m")
    assert rows["PatientAge"] == ("clinical, kept", "63 years")
    assert not checked.blocked  # nothing identifying: kept as they are
    # an age of 90 or more identifies (HIPAA safe harbour): hidden and blocking
    for p in files_dir.iterdir():
        edit_file(p, lambda ds: setattr(ds, "PatientAge", "094Y"))
    old = uploads.check_study([(p.name, p.read_bytes()) for p in sorted(files_dir.iterdir())])
    assert ("PatientAge", "identifying", uploads.HIDDEN) in [(f.attribute, f.group, f.value) for f in old.findings()]
    assert old.blocked


def test_header_age_and_sex_survive_deidentification_as_offered_values(tmp_path: Path) -> None:
    files_dir = tmp_path / "s"
    write_series(files_dir, shape=(4, 32, 32))  # identified: blocked until de-identified

    def characteristics(ds: object) -> None:
        ds.PatientSex, ds.PatientAge = "F", "063Y"  # type: ignore[attr-defined]

    for p in files_dir.iterdir():
        edit_file(p, characteristics)
    checked = uploads.check_study([(p.name, p.read_bytes()) for p in sorted(files_dir.iterdir())])
    assert checked.blocked and checked.header_clinical["PatientAge"] == "63 years"
    clean = uploads.deidentify(checked)
    assert not clean.blocked
    assert "PatientAge" not in clean.clinical  # the basic profile drops it from the stored study ...
    assert clean.header_clinical == {"PatientSex": "F", "PatientAge": "63 years"}  # ... the upload keeps what it read
    names = ["age", "sex_female", "last_bnp"]
    assert uploads.header_demographics(clean.header_clinical, names) == {"age": 63.0, "sex_female": 1.0}
    assert uploads.header_demographics(clean.clinical, names) == {}
    again = uploads.with_series(clean, clean.volume.meta["series_key"])  # another series read: still offered
    assert again.header_clinical == clean.header_clinical
    info = uploads.save_checked_case("local", again, features={"age": 63.0}, base=tmp_path / "d")
    assert b"063Y" not in info.study_path.read_bytes()  # stored only as the value the user saved
    assert cases.case_features(info) == {"age": 63.0}


def test_upload_names_are_the_users_own(tmp_path: Path) -> None:
    assert uploads.upload_label(["C:\\scans\\IM0001.dcm"]) == "IM0001.dcm"
    assert uploads.upload_label(["a.dcm", "b.dcm", "c.dcm"]) == "3 files"
    with pytest.raises(InputError, match="limit 10"):
        uploads.study_payload([("a.dcm", b"x" * 8), ("b.dcm", b"y" * 8)], max_bytes=10)


def test_timeline_bytes_read_like_the_file(tmp_path: Path) -> None:
    from core.io.timeline import read_timeline, read_timeline_bytes

    frame = _events(6).assign(subject_id=["7", "7", "8", "8", "8", "9"])
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    (tmp_path / "t.parquet").write_bytes(buf.getvalue())
    frame.to_csv(tmp_path / "t.csv", index=False)
    for name in ("t.parquet", "t.csv"):
        from_file = read_timeline(tmp_path / name, subjects=["8"])
        from_bytes = read_timeline_bytes((tmp_path / name).read_bytes(), name, subjects=["8"])
        pd.testing.assert_frame_equal(from_file, from_bytes)
        assert len(from_bytes) == 3
    with pytest.raises(InputError, match="timeline: got t.bin"):
        read_timeline_bytes(b"\x00\x01", "t.bin")


def test_a_timeline_follows_the_date_shift_of_its_deidentified_study(tmp_path: Path) -> None:
    from core.io.timeline import default_index_time

    checked = uploads.check_study(_series_files(tmp_path / "src", identified=True))
    original = pd.to_datetime(checked.volume.study_date, format="%Y%m%d")
    clean = uploads.deidentify(checked)
    assert -3650 <= clean.date_shift_days <= -365
    shifted = pd.to_datetime(clean.volume.study_date, format="%Y%m%d")
    assert (shifted - original).days == clean.date_shift_days
    # events around the scan: two before it, three after, on the patient's real calendar
    events = _events(5).assign(time=lambda f: original + pd.to_timedelta([-20, -5, 3, 10, 40], unit="D"))
    moved = uploads.shift_events(events, clean.date_shift_days)
    index, source = default_index_time(moved, clean.volume.study_date)
    assert source == "the study's DICOM StudyDate" and int((moved["time"] <= index).sum()) == 2
    unmoved_index, _ = default_index_time(events, clean.volume.study_date)
    assert int((events["time"] <= unmoved_index).sum()) == 0  # what happened before: no event before the index
    assert "date_shift" not in json.dumps(uploads.save_checked_case("bob", clean, events=moved, index_time=index,
                                                                    base=tmp_path / "data").path.joinpath("case.json").read_text())


def test_the_sweep_of_closed_sessions_counts_from_the_last_disconnect_and_forgets_collected_ones(tmp_path: Path) -> None:
    """core.app.session_sweep: a session seen connected again starts its clock anew (Streamlit resumed it); only one
    disconnected for longer than its TTL plus the grace loses its folders; a workspace already collected (Streamlit
    dropped the session) just leaves the registry."""
    import gc

    from core.app.session_sweep import SessionSweep
    from core.app.workspace import new_session_workspace

    sweep = SessionSweep(ttl_s=120.0, grace_s=10.0)
    kept, gone = new_session_workspace(tmp_path / "scratch"), new_session_workspace(tmp_path / "scratch")
    sweep.register("kept", kept)
    sweep.register("gone", gone)
    connected = {"kept": False, "gone": False}
    assert sweep.sweep(connected.get, now=0.0) == []
    connected["kept"] = True  # a reload within the TTL: Streamlit resumed the session
    assert sweep.sweep(connected.get, now=100.0) == []
    connected["kept"] = False
    assert sweep.sweep(connected.get, now=120.0) == [] and kept.alive and gone.alive
    assert sweep.sweep(connected.get, now=200.0) == [gone.path] and kept.alive and not gone.alive
    assert sweep.sweep(connected.get, now=251.0) == [kept.path] and not kept.alive and len(sweep) == 0
    other = new_session_workspace(tmp_path / "scratch")
    sweep.register("collected", other)
    del other
    gc.collect()  # Streamlit dropped that session: its finalizer removed the folder, the sweep forgets it
    assert sweep.sweep(lambda sid: False, now=0.0) == [] and len(sweep) == 0
