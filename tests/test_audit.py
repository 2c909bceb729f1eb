"""core.app.audit: one whole JSON line per record under concurrency, mode 0600, no PHI accepted."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
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


def test_a_cohort_patient_is_named_by_a_keyed_pseudonym(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The log named a cohort patient by a session-local case number only: "who opened patient X?" had no answer.
    Now by HMAC-SHA256 of its id under a key kept beside the log: letters only (a slug the PHI rule accepts), the
    same for every session, another for another id or another key, and the id's records are found with the key."""
    ref = audit.patient_ref("MRN-0012345")
    assert ref == audit.patient_ref(" MRN-0012345 ") and ref != audit.patient_ref("MRN-0012346")
    assert ref.startswith("pt-") and len(ref) == 19 and ref[3:].isalpha() and audit.check_label("patient", ref) == ref
    key = data_dir / "audit" / audit.KEY_FILE
    assert len(key.read_bytes()) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "0012345" not in ref and audit.patient_ref("MRN-0012345", tmp_path_factory.mktemp("other")) != ref
    audit.record("clinician-7f3a", "open", "case", source="cohort", case=2, patient=ref)
    audit.record("clinician-9b1c", "open", "case", source="cohort", case=1, patient=audit.patient_ref("MRN-7"))
    audit.record("clinician-9b1c", "export", "case_report_pdf", source="cohort", case=1, patient=ref)
    assert [(r["user"], r["action"]) for r in audit.records_of("MRN-0012345")] == \
        [("clinician-7f3a", "open"), ("clinician-9b1c", "export")]
    assert "MRN" not in audit.audit_path().read_text()
    key.write_bytes(b"short")
    with pytest.raises(InputError, match="audit key: got 5 bytes"):
        audit.patient_ref("MRN-0012345")


def test_a_damaged_pseudonym_key_stops_the_action_in_one_line(data_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    (data_dir / "audit").mkdir()
    (data_dir / "audit" / audit.KEY_FILE).write_bytes(b"x")

    def script() -> None:
        import streamlit as st

        from pages import _session

        _session.audit("open", "case", patient="P1", source="cohort", case=1)
        st.write("opened")

    at = AppTest.from_function(script, default_timeout=30)
    at.run()
    assert not at.exception and not at.markdown  # stopped: nothing happens unaudited
    assert at.error[0].value.startswith("The audit log could not be written (InputError), so this was not done")
    assert not (data_dir / "audit" / "audit.jsonl").exists()


def test_replicas_making_the_key_at_once_share_one(tmp_path: Path) -> None:
    refs: list[str] = []
    threads = [threading.Thread(target=lambda: refs.append(audit.patient_ref("P1", tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == 8 and len(set(refs)) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [audit.KEY_FILE]


# ------------------------------------------- the app: sign-in gate, local mode, audit calls (AppTest, no browser)

AUTH = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "c" * 64,
        "client_id": "ctehr", "client_secret": "s" * 32,
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from tests.test_app import build_test_demo, using_data_dir

    with using_data_dir(build_test_demo(tmp_path_factory)) as base:
        yield base


def _app(secrets: dict | None = None, user: dict | None = None):  # type: ignore[no-untyped-def]
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    if secrets:
        at.secrets["auth"] = secrets
    if user is not None:
        at.user = user
    return at


def _texts(at) -> str:  # type: ignore[no-untyped-def]
    parts = [str(e.value) for kind in ("title", "markdown", "caption", "error", "subheader", "header")
             for e in getattr(at, kind)]
    return "\n".join(parts + [b.label for b in at.button])


def test_app_local_mode_says_so_and_audits_as_local(demo_dir: Path) -> None:
    before = len(audit.read_audit())
    at = _app()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [str(c.value) for c in at.sidebar.caption]
    assert any("local mode: no sign-in, this server listens on this machine only" in c for c in captions), captions
    assert "Sign out" not in [b.label for b in at.sidebar.button]
    at.run()  # a rerun of the same case is not a second "open"
    new = audit.read_audit()[before:]
    assert [(e["user"], e["action"], e["target"]) for e in new] == [("local", "open", "case")], new
    assert set(new[0]["details"]) == {"source", "case", "fusion", "models"} and new[0]["details"]["source"] == "demo"
    # which model the case was read with (a strategy, whose model): the same case under another model is another record
    from core.app.demo_install import DEFAULT_FUSION

    assert (new[0]["details"]["fusion"], new[0]["details"]["models"]) == (DEFAULT_FUSION, "demo")
    at.session_state["model_name"] = "ehr_only"  # the sidebar's model
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    again = audit.read_audit()[before + 1:]
    assert [(e["action"], e["details"]["fusion"], e["details"]["models"]) for e in again] == [("open", "ehr_only", "demo")]


def test_app_without_sign_in_refuses_a_non_loopback_address(demo_dir: Path) -> None:
    from streamlit import config

    old = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = _app()
        at.run()
    finally:
        config.set_option("server.address", old)
    text = _texts(at)
    assert "No sign-in is configured and server.address is 0.0.0.0" in text and "fix:" in text
    assert "Case review" not in text and not at.selectbox


def test_app_with_auth_shows_only_the_sign_in_screen(demo_dir: Path) -> None:
    before = len(audit.read_audit())
    at = _app(AUTH, {"is_logged_in": False})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b.label for b in at.button] == ["Sign in"]
    text = _texts(at)
    assert "Case review" not in text and "1-year risk" not in text and "local mode" not in text
    assert not at.selectbox and not at.slider and not at.metric
    assert audit.read_audit()[before:] == []


def test_app_with_incomplete_auth_stops_with_one_line(demo_dir: Path) -> None:
    at = _app({k: v for k, v in AUTH.items() if k != "client_secret"}, {"is_logged_in": False})
    at.run()
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and "lacks client_secret" in errors[0] and "fix:" in errors[0]
    assert not at.button


def test_app_signed_in_user_is_audited_by_sub_and_shown_in_the_sidebar(demo_dir: Path) -> None:
    before = len(audit.read_audit())
    user = {"is_logged_in": True, "sub": "clinician-7f3a", "name": "Ada Clinician", "email": "ada@hospital.test"}
    at = _app(AUTH, user)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    captions = " ".join(str(c.value) for c in at.sidebar.caption)
    assert "Ada Clinician" in captions and "ada@hospital.test" in captions and "local mode" not in captions
    assert "Sign out" in [b.label for b in at.sidebar.button]
    at.run()
    new = audit.read_audit()[before:]
    assert [(e["user"], e["action"], e["target"]) for e in new] == [
        ("clinician-7f3a", "login", "session"), ("clinician-7f3a", "open", "case")], new
    raw = audit.audit_path().read_text()
    assert "Ada" not in raw and "hospital.test" not in raw
