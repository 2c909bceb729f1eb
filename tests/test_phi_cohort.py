"""The cohort gate (every study of a training cohort), MEDS code redaction for exports, NIfTI header cleaning."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.deid.cohort_gate import gate_cohort, gate_study
from core.deid.nifti import deidentify_nifti_bytes
from core.deid.text import REDACTED, redact_codes
from core.errors import InputError
from core.io.nifti import load_nifti_bytes, nifti_header_phi
from core.io.study import inspect_study
from tests.dicom_factory import (
    append_private_after_pixels,
    deflate_bomb_dicom,
    secondary_capture,
    write_deidentified_series,
    write_series,
    zip_folder,
)

# ---------------------------------------------------------------- redact_codes


VOCAB = {"ICD10CM//I10", "ICD10CM//E11.9", "ATC//C09AA05", "LAB//50912//mg/dL", "MEDS_DEATH", "NOTE//FOLLOW_UP"}


def test_codes_in_the_vocabulary_pass_others_are_redacted():
    codes = [
        "ICD10CM//I10",  # known
        "ICD10CM//Z99.89 John Doe",  # unknown code of a known vocabulary: prefix kept
        "NOTE//Patient John Doe called from 555-0199",  # free text under a known prefix
        "John Doe MRN 4455",  # free text without a prefix
        "SMITH//JANE",  # an unknown prefix could itself be a name: all redacted
        "LAB//50912//mg/dL",
        "MEDS_DEATH",
        None,
        float("nan"),
        "",
    ]
    out = redact_codes(codes, VOCAB)
    assert out == [
        "ICD10CM//I10",
        f"ICD10CM//{REDACTED}",
        f"NOTE//{REDACTED}",
        REDACTED,
        REDACTED,
        "LAB//50912//mg/dL",
        "MEDS_DEATH",
        "",
        "",
        REDACTED,
    ]
    joined = " ".join(out).lower()
    assert "john" not in joined and "doe" not in joined and "555" not in joined and "smith" not in joined


def test_redaction_accepts_any_collection_and_keeps_order():
    codes = ["ATC//C09AA05", "ATC//X", "ICD10CM//E11.9"] * 1000
    out = redact_codes(iter(codes), list(VOCAB))
    assert len(out) == 3000
    assert out[:3] == ["ATC//C09AA05", f"ATC//{REDACTED}", "ICD10CM//E11.9"]
    assert redact_codes([], VOCAB) == []
    assert redact_codes(["ICD10CM//I10"], set()) == [REDACTED]  # empty vocabulary: nothing known


def test_real_meds_codes_outside_a_vocabulary(real_meds):
    import pandas as pd

    codes = pd.read_parquet(real_meds, columns=["code"])["code"].astype(str).tolist()
    vocab = set(codes[: len(codes) // 2])
    out = redact_codes(codes, vocab)
    kept = sum(1 for a, b in zip(codes, out) if a == b)
    assert kept == sum(1 for c in codes if c in vocab)
    assert all(b == a or b.endswith(REDACTED) for a, b in zip(codes, out))


# ---------------------------------------------------------------- cohort gate


def _cohort(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    clean = write_deidentified_series(root / "studies" / "s1", shape=(3, 16, 16))
    phi = write_deidentified_series(root / "studies" / "s2", shape=(4, 16, 16), seed=2)
    append_private_after_pixels(sorted(phi.paths)[3], "John Doe MRN55501")  # last instance, after PixelData
    named = write_series(root / "studies" / "s3", shape=(2, 16, 16))  # identified hospital export
    (root / "studies" / "s4").mkdir()
    secondary_capture(root / "studies" / "s4" / "sc.dcm")
    img = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4))
    img.header["descrip"] = b"John Doe 1958"
    nib.save(img, str(root / "studies" / "n1.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)), str(root / "studies" / "n2.nii"))
    (root / "studies" / "z1.zip").write_bytes(zip_folder(named.folder))
    deflate_bomb_dicom(root / "studies" / "bomb.dcm", inflated_bytes=1 << 30)
    rows = [
        "subject_id,time,event,study",
        "a,100,1,studies/s1",
        "b,200,0,studies/s2",
        "c,50,1,studies/s3",
        "d,70,0,studies/s4",
        "e,80,1,studies/n1.nii.gz",
        "f,90,0,studies/n2.nii",
        "g,95,1,studies/z1.zip",
        "h,10,1,../outside",
        "i,11,0,/etc/passwd",
        "j,12,1,studies/missing.nii.gz",
        "k,13,0,studies/bomb.dcm",
        "l,14,1,",
        "m,15,0,studies/s1",
    ]
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    assert clean.paths
    return root


def test_every_study_of_a_cohort_is_gated(tmp_path):
    root = _cohort(tmp_path)
    report = gate_cohort(root)
    by = {r.subject_id: r for r in report.rows}
    assert report.n_rows == 13 and len(report.rows) == 12  # row l has no study
    assert not by["a"].blocked and not by["m"].blocked and not by["f"].blocked
    assert by["b"].phi == ["PrivateTags"] and by["b"].line == 3
    assert {"PatientName", "PatientID", "PrivateTags"} <= set(by["c"].phi)
    assert by["d"].phi == [] and any("BurnedInAnnotation YES" in r for r in by["d"].burned_in)
    assert by["e"].phi == ["nifti.descrip"]
    assert by["g"].phi == by["c"].phi  # the same study zipped
    assert by["h"].error == "study path leaves the cohort folder" and by["i"].error == "study path leaves the cohort folder"
    assert "does not exist" in by["j"].error
    assert "decompression bomb" in by["k"].error
    assert not report.ok
    assert {r.subject_id for r in report.blocked_rows} == {"b", "c", "d", "e", "g", "h", "i", "j", "k"}
    lines = report.lines()
    assert lines[0] == "12 studies checked in 13 rows: 9 blocked"
    assert "cohort.csv line 3 (subject b, study studies/s2): PHI in PrivateTags" in lines
    text = "\n".join(lines).lower()
    assert "john" not in text and "mrn" not in text  # the report names attributes, never values
    assert report.to_dict()["rows"][0]["blocked"] is False


def test_a_clean_cohort_passes_and_progress_is_reported(tmp_path):
    root = tmp_path / "ok"
    write_deidentified_series(root / "s1", shape=(2, 16, 16))
    (root / "cohort.csv").write_text("subject_id,time,event,study\n1,10,1,s1\n2,20,0,s1\n3,5,1,\n")
    seen: list[float] = []
    report = gate_cohort(root, progress=lambda f, _label: seen.append(f))
    assert report.ok and len(report.rows) == 2 and seen[-1] == 1.0
    # the same table as a spreadsheet in a decimal-comma locale saves it (semicolons, cp1252): the same rows
    # (before, its one column "subject_id;time;event;study" had no subject_id and the zip was refused)
    (root / "cohort.csv").write_bytes("subject_id;time;event;study;note\n1;10,5;1;s1;Übelkeit\n2;20;0;s1;\n3;5;1;;\n"
                                      .encode("cp1252"))
    again = gate_cohort(root)
    assert again.ok and [(r.subject_id, r.study) for r in again.rows] == [("1", "s1"), ("2", "s1")]
    (root / "cohort.csv").write_text("Patient ID,futime,status,Study\n1,10,1,s1\n")  # named as the cohort reads them
    assert [(r.subject_id, r.study) for r in gate_cohort(root).rows] == [("1", "s1")]


def test_cohort_gate_errors(tmp_path):
    with pytest.raises(InputError, match="is not a folder"):  # as load_cohort says it (was "has no cohort.csv")
        gate_cohort(tmp_path / "missing")
    with pytest.raises(InputError, match="has no cohort.csv"):
        gate_cohort(tmp_path)
    (tmp_path / "cohort.csv").write_text("id,time\n1,2\n")
    with pytest.raises(InputError, match="has no subject_id column"):
        gate_cohort(tmp_path)
    (tmp_path / "cohort.csv").write_text("subject_id,time,event,study\n1,2,1,notes.nii.gz\n")
    (tmp_path / "notes.nii.gz").write_text("not a volume\n" * 20)
    row = gate_cohort(tmp_path).rows[0]  # named as inspect names it (was "holds no readable DICOM file (1 not DICOM)")
    assert row.blocked and row.error == "is a text file, not a DICOM, NIfTI or zip file (study)"


def test_a_burned_in_risk_passes_once_deid_declares_the_pixels_checked(tmp_path):
    """A DERIVED\\SECONDARY series stayed blocked after deid, with no way through (the project's own export-dicom CT
    is one): deid --pixels-checked declares the Clean Pixel Data Option (113101), which the gate honours."""
    from core.cli import main
    from tests.dicom_factory import edit_file

    src = tmp_path / "src"
    written = write_series(src, shape=(3, 16, 16))
    for path in written.paths:
        edit_file(path, lambda ds: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "AXIAL"]))
    root = tmp_path / "cohort"
    root.mkdir()
    (root / "cohort.csv").write_text("subject_id,time,event,study\n1,10,1,plain\n2,20,0,checked\n")
    assert main(["deid", str(src), str(root / "plain"), "--seed", "1"]) == 0
    assert main(["deid", str(src), str(root / "checked"), "--seed", "1", "--pixels-checked"]) == 0
    rows = {r.subject_id: r for r in gate_cohort(root).rows}
    assert rows["1"].phi == [] and rows["1"].burned_in == ["ImageType DERIVED\\SECONDARY\\AXIAL (3 of 3 instances)"]
    assert rows["2"].phi == [] and rows["2"].burned_in == [] and not rows["2"].blocked
    lines = gate_cohort(root).lines()
    assert lines[-1].startswith("fix: de-identify each blocked study") and "--pixels-checked" in lines[-1]
    import pydicom

    codes = [item.CodeValue for item in pydicom.dcmread(next((root / "checked").iterdir())).DeidentificationMethodCodeSequence]
    assert codes[:2] == ["113100", "113101"]


def test_gate_study_reads_headers_only(tmp_path):
    written = write_deidentified_series(tmp_path / "s", shape=(3, 16, 16))
    # pixel data cut short: loading would fail, the gate still answers from the headers
    data = written.paths[0].read_bytes()
    written.paths[0].write_bytes(data[: len(data) - 100])
    gate = gate_study(written.folder)
    assert gate.format == "dicom" and gate.n_instances == 3 and gate.phi == []


# ---------------------------------------------------------------- NIfTI header cleaning


def test_nifti_header_text_and_extensions_are_cleared(tmp_path, real_ct):
    img = nib.load(str(real_ct))
    img.header["descrip"] = b"Jane Doe 19580214"
    img.header["aux_file"] = b"MRN77889911"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"referring: Dr House"))
    path = tmp_path / "named.nii.gz"
    nib.save(img, str(path))
    assert inspect_study(path)["phi"] == ["nifti.aux_file", "nifti.descrip", "nifti.extensions"]
    clean, cleared = deidentify_nifti_bytes(path.read_bytes(), "named.nii.gz")
    assert cleared == ["nifti.aux_file", "nifti.descrip", "nifti.extensions"]
    raw = gzip.decompress(clean)
    assert nifti_header_phi(raw) == []
    assert b"Doe" not in raw and b"MRN77889911" not in raw and b"House" not in raw
    before, after = load_nifti_bytes(path.read_bytes(), "a.nii.gz"), load_nifti_bytes(clean, "b.nii.gz")
    assert np.array_equal(before.hu, after.hu) and np.allclose(before.affine, after.affine) and after.phi == []


def test_nifti_deid_refuses_non_nifti(tmp_path):
    with pytest.raises(InputError, match="has no NIfTI-1/2 header"):
        deidentify_nifti_bytes(b"hello world" * 100, "x.nii")


def test_nifti_upload_deidentified_through_deidentify_bytes(tmp_path):
    from core.deid import deidentify_bytes
    from core.io.study import load_study_bytes

    img = nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 1000, np.diag([0.8, 0.8, 2.0, 1.0]))
    img.header["descrip"] = b"Jane Doe"
    img.header["intent_name"] = b"MRN7788"
    path = tmp_path / "upload.nii.gz"
    nib.save(img, str(path))
    before = load_study_bytes(path.read_bytes(), "upload.nii.gz")
    assert before.phi == ["nifti.descrip", "nifti.intent_name"]
    blob, report = deidentify_bytes(path.read_bytes(), "upload.nii.gz")
    assert report.files_written == ["VOL00001.nii.gz"] and report.n_instances == 1
    assert sorted(report.changes) == [("nifti.descrip", "Z"), ("nifti.intent_name", "Z")]
    text = "\n".join(report.lines())  # no DICOM profile or date shift claimed for a NIfTI
    assert "profile:" not in text and "dates:" not in text and "NIfTI: 1 volume(s)" in text
    assert "emptied (Z, 2 elements): nifti.descrip, nifti.intent_name" in text
    # ... nor in the JSON and the upload's summary (--json named the DICOM profile and "dates": "shift")
    as_json = report.to_dict()
    assert as_json["dates"] is None and as_json["profile"].startswith("NIfTI header") and "PS3.15" not in report.summary()
    assert "(VOL00001.nii.gz)" in text and ".." not in text.splitlines()[0]
    after = load_study_bytes(blob, "clean.zip")  # the zip the upload page gets back loads as the volume
    assert after.phi == [] and np.array_equal(after.hu, before.hu)


def test_inspect_cohort_command(tmp_path):
    import json
    import subprocess
    import sys

    root = tmp_path / "c"
    write_series(root / "named", shape=(2, 16, 16))
    write_deidentified_series(root / "clean", shape=(2, 16, 16))
    (root / "cohort.csv").write_text("subject_id,time,event,study\n1,10,1,named\n2,20,0,clean\n")
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "core", "inspect", str(root), "--cohort", "--json"],
                         cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr  # a blocked row
    out = json.loads(run.stdout)
    assert out["ok"] is False and [r["blocked"] for r in out["rows"]] == [True, False]
    (root / "cohort.csv").write_text("subject_id,time,event,study\n2,20,0,clean\n")
    run = subprocess.run([sys.executable, "-m", "core", "inspect", str(root), "--cohort"],
                         cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "1 studies checked in 1 rows: 0 blocked"
    # then what its tables leave out, as train would say it (here: a features row missing, a value that is no number)
    (root / "cohort.csv").write_text("subject_id,time,event,study\n2,20,0,clean\n3,30,1,\n4,40,1,clean\n")
    (root / "features.csv").write_text("subject_id,bnp\n2,<50\n4,310\n")
    run = subprocess.run([sys.executable, "-m", "core", "inspect", str(root), "--cohort", "--json"],
                         cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    notes = json.loads(run.stdout)["data_notes"]
    assert run.returncode == 0 and len(notes) == 3, notes
    assert notes[0].startswith("features.csv: 1 value is not a number and is read as missing (bnp 1; e.g. '<50')")
    assert "no row for 1 of 3 subjects (3)" in notes[1] and "1 of 3 subjects has no study (3)" in notes[2]


def test_a_zipped_cohort_is_gated_in_memory_like_its_folder(tmp_path):
    import io
    import zipfile

    from core.deid.cohort_gate import gate_cohort_zip

    root = _cohort(tmp_path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, "cohort/" + p.relative_to(root).as_posix())
    folder = {r.subject_id: (r.blocked, r.phi, bool(r.burned_in)) for r in gate_cohort(root).rows}
    zipped_report = gate_cohort_zip(buf.getvalue())
    zipped = {r.subject_id: (r.blocked, r.phi, bool(r.burned_in)) for r in zipped_report.rows}
    assert zipped == folder  # the same findings, row by row, without unpacking anything
    by = {r.subject_id: r for r in zipped_report.rows}
    assert by["h"].error == "study path leaves the cohort folder" and "not in the zip" in by["j"].error
    assert zipped_report.n_rows == 13 and not zipped_report.ok
