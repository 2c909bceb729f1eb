"""core.app.audit: one whole JSON line per record under concurrency, mode 0600, no PHI accepted."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.app import audit
from core.errors import InputError


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CTEHR_DATA_DIR", str(tmp_path))
    return tmp_path


def test_record_appends_one_json_line_with_utc_time(data_dir: Path) -> None:
    audit.record("clinician-7f3a", "open", "case", source="demo", case=3)
    audit.record("local", "export", "saliency_png", case=3, dpi=300)
    path = data_dir / "audit" / "audit.jsonl"
    assert audit.audit_path() == path
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["user"] == "clinician-7f3a" and first["action"] == "open" and first["target"] == "case"
    assert first["details"] == {"source": "demo", "case": 3}
    when = datetime.strptime(first["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)
    assert audit.read_audit(path) == [first, json.loads(lines[1])]
    assert audit.read_audit() == audit.read_audit(path)


def test_file_is_private_and_only_appended(data_dir: Path) -> None:
    audit.record("local", "login", "session")
    path = audit.audit_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before = path.read_bytes()
    os.chmod(path, 0o644)  # loosened by hand: the next record puts it back
    audit.record("local", "logout", "session")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2


def test_a_symlinked_log_is_refused(data_dir: Path) -> None:
    (data_dir / "audit").mkdir()
    elsewhere = data_dir / "elsewhere.txt"
    elsewhere.write_text("")
    (data_dir / "audit" / "audit.jsonl").symlink_to(elsewhere)
    with pytest.raises(OSError):
        audit.record("local", "open", "case", case=1)
    assert elsewhere.read_text() == ""


def test_concurrent_threads_lose_no_line(data_dir: Path) -> None:
    threads, per_thread = 8, 60
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            audit.record(f"user-{t}", "open", "case", case=i, thread=t, note="x" * 60)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    raw = audit.audit_path().read_text().splitlines()
    assert len(raw) == threads * per_thread
    entries = [json.loads(line) for line in raw]  # every line whole and valid JSON
    seen = {(e["details"]["thread"], e["details"]["case"]) for e in entries}
    assert seen == {(t, i) for t in range(threads) for i in range(per_thread)}
    assert all(e["user"] == f"user-{e['details']['thread']}" for e in entries)


@pytest.mark.parametrize("value", [
    "DOE^JOHN",                 # DICOM person name
    "John Doe",                 # spaces and capitals
    "john.doe@hospital.org",    # e-mail
    "scan_0001.dcm",            # an uploaded file name
    "/data/uploads/ct",         # a path
    "mrn1234567",               # a run of 5+ digits
    "2024-01-05",               # a date
    "born-1961-03-07",          # a date inside a label
    "x" * 65,                   # too long
    "",                         # empty
])
def test_phi_like_strings_are_refused_without_echoing_them(data_dir: Path, value: str) -> None:
    with pytest.raises(InputError) as err:
        audit.record("local", "upload", "dicom_zip", name=value)
    assert "details.name" in str(err.value)
    if value:
        assert value not in str(err.value)
    with pytest.raises(InputError):
        audit.record("local", "upload", value)
    assert audit.read_audit() == []


@pytest.mark.parametrize("value", [1234567, 10**5, -10**5, 1.7e9, float("nan"), float("inf"), None, b"x",
                                   ["a"], {"a": 1}, datetime(2024, 1, 5)])
def test_numbers_that_could_identify_and_other_types_are_refused(data_dir: Path, value: object) -> None:
    with pytest.raises(InputError):
        audit.record("local", "open", "case", value=value)
    assert audit.read_audit() == []


def test_labels_the_code_chooses_are_accepted(data_dir: Path) -> None:
    audit.record("local", "train", "cross_attention", epochs=3, lr=0.001, patients=400, gpu=False,
                 kind="cohort_zip", case=99999, fusion="ehr_only", step="fold:2")
    (entry,) = audit.read_audit()
    assert entry["details"]["patients"] == 400 and entry["details"]["gpu"] is False


def test_action_user_and_keys_are_checked(data_dir: Path) -> None:
    with pytest.raises(InputError, match="action"):
        audit.record("local", "delete", "case")
    with pytest.raises(InputError, match="user_id"):
        audit.record("Ada Clinician", "open", "case")
    with pytest.raises(InputError, match="user_id"):
        audit.record("", "open", "case")
    with pytest.raises(InputError, match="details"):
        audit.record("local", "open", "case", PatientName="x")
    with pytest.raises(InputError, match="details"):
        audit.record("local", "open", "case", user="someone-else")
    assert audit.read_audit() == []


def test_read_audit_names_a_broken_line(data_dir: Path) -> None:
    audit.record("local", "open", "case", case=1)
    with open(audit.audit_path(), "ab") as fh:
        fh.write(b"{not json\n")
    with pytest.raises(InputError, match="line 2"):
        audit.read_audit()
    assert audit.read_audit(data_dir / "missing.jsonl") == []
