"""De-identification by the generated PS3.15 table: listed attributes, names in code text, one pseudonym per
patient, a case-insensitive residual check, files with empty SOP UIDs."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from core.deid import deidentify_study, phi_keywords
from core.phi.profile import (
    ANNEX_E,
    PROFILE_NAME,
    RULES,
    TABLE,
    TABLE_EDITION,
    rule_for,
)
from core.io.study import inspect_study
from tests.dicom_factory import blank_sop_uids, edit_file, write_deflated, write_series

ROOT = Path(__file__).resolve().parents[1]
WORD = re.compile(rb"[a-z0-9]+")


def _all_bytes(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(folder.glob("*.dcm")))


def _words(data: bytes) -> set[bytes]:
    return set(WORD.findall(data.lower()))


# ---------------------------------------------------------------- the table


def test_table_is_the_generated_edition():
    assert TABLE["edition"] == TABLE_EDITION == "2026c"
    assert TABLE["source"]["package"] == "dicom-anonymizer" and len(TABLE["source"]["wheel_sha256"]) == 64
    assert TABLE["n_rows"] == len(TABLE["rows"]) == 652
    assert PROFILE_NAME.startswith("DICOM PS3.15 2026c Table E.1-1 basic profile (652 attributes")
    standard = {row["keyword"]: row["action"] for row in TABLE["rows"]}
    # the attributes the issue names, with their Table E.1-1 actions
    assert standard["ClinicalTrialSubjectID"] == "D" and standard["ClinicalTrialSponsorName"] == "D"
    assert standard["SecondaryCaptureDeviceID"] == "X" and standard["UDISequence"] == "X"
    for keyword in ("UDISequence", "ClinicalTrialSubjectID", "ClinicalTrialSponsorName", "SecondaryCaptureDeviceID"):
        assert RULES[keyword].action == "X", keyword
    # attributes newer than pydicom's dictionary are matched by tag
    tag = pydicom.tag.Tag(0x00081301)  # Principal Diagnosis Code Sequence
    assert rule_for(tag, "SQ", "").keyword == "PrincipalDiagnosisCodeSequence"
    assert sum(1 for _, std, _, _ in ANNEX_E if std != "(project)") == 652


def test_generator_reads_the_wheel_as_data(tmp_path):
    spec = importlib.util.spec_from_file_location("build_annex_e_table", ROOT / "scripts" / "build_annex_e_table.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    source = (
        "# Replaced tags\nD_TAGS = [\n    (0x0012, 0x0040),  # Clinical Trial Subject ID\n]\n"
        "Z_TAGS = [\n    (0x0010, 0x0010),  # Patient's Name\n]\nX_TAGS = [\n    (0x6000, 0x3000, 0xFF00, 0xFFFF),  # Overlay Data\n"
        "    (0x0018, 0x1010),  # Secondary Capture Device ID\n]\nU_TAGS = []\nZ_D_TAGS = []\nX_Z_TAGS = []\nX_D_TAGS = []\n"
        "X_Z_D_TAGS = [\n    (0x0008, 0x0080),  # Institution Name\n]\nX_Z_U_STAR_TAGS = []\nALL_TAGS = []\n"
        "raise SystemExit('never executed')\n"
    )
    wheel = tmp_path / "dicom_anonymizer-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("dicomanonymizer/dicom_anonymization_databases/dicomfields_2099a.py", source)
        archive.writestr("dicom_anonymizer-9.9.9.dist-info/METADATA", "Name: dicom-anonymizer\nVersion: 9.9.9\n")
    table = module.build(wheel, "2099a")
    rows = {r["keyword"]: r for r in table["rows"]}
    assert table["edition"] == "2099a" and table["source"]["version"] == "9.9.9"
    assert rows["ClinicalTrialSubjectID"]["action"] == "D" and rows["ClinicalTrialSubjectID"]["name"] == "Clinical Trial Subject ID"
    assert rows["InstitutionName"]["action"] == "X/Z/D" and rows["PatientName"]["vr"] == "PN"
    assert rows["UDISequence"]["source"] == "supplement"  # absent from the source: added and marked
    assert table["repeating_groups"] == [
        {"group": "6000", "element": "3000", "group_mask": "FF00", "element_mask": "FFFF", "name": "Overlay Data", "action": "X"}
    ]
    assert table["n_rows"] == 5


# ---------------------------------------------------------------- attributes and names in code text


def _inject(ds: pydicom.Dataset) -> None:
    udi = Dataset()
    udi.UniqueDeviceIdentifier = "(01)00812345678901(21)SN4477"
    udi.DeviceDescription = "injector of Jane Doe"
    ds.UDISequence = DicomSequence([udi])
    ds.ClinicalTrialSubjectID = "TRIAL-SUBJ-8812"
    ds.ClinicalTrialSponsorName = "Hypothetical Pharma Sponsor"
    ds.SecondaryCaptureDeviceID = "SCDEV-4471"
    region = Dataset()
    region.CodeValue = "T-D3000"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = "Chest of jane DOE"
    ds.AnatomicRegionSequence = DicomSequence([region])
    ds.ManufacturerModelName = "Doe, Jane"  # a kept attribute holding the name, reordered and in another case
    ds.ConvolutionKernel = "mrn77889911"  # the PatientID in lower case, in a kept attribute


@pytest.fixture
def injected(tmp_path: Path) -> tuple[Path, Path]:
    written = write_series(tmp_path / "in", shape=(3, 16, 16))  # identified: PatientName DOE^JANE^Q, PatientID MRN77889911
    for path in written.paths:
        edit_file(path, _inject)
    info = inspect_study(written.folder)
    for keyword in ("ClinicalTrialSubjectID", "ClinicalTrialSponsorName", "SecondaryCaptureDeviceID", "UDISequence", "CodeMeaning", "ManufacturerModelName"):
        assert keyword in info["phi"], keyword
    return written.folder, tmp_path / "out"


def test_listed_attributes_and_names_in_code_text_are_removed(injected):
    src, dst = injected
    report = deidentify_study(src, dst, seed=1)
    assert report.edition == "2026c" and report.to_dict()["profile"] == PROFILE_NAME
    for path in sorted(dst.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword in ("UDISequence", "ClinicalTrialSubjectID", "ClinicalTrialSponsorName", "SecondaryCaptureDeviceID"):
            assert keyword not in ds, keyword
        assert all("CodeMeaning" not in item for item in ds.AnatomicRegionSequence)
        assert ds.AnatomicRegionSequence[0].CodeValue == "T-D3000"  # the code itself stays
        assert "2026c" in ds.DeidentificationMethod
        assert phi_keywords(ds) == []
    words = _words(_all_bytes(dst))
    for word in (b"jane", b"doe", b"mrn77889911", b"sn4477", b"scdev", b"hypothetical", b"trial"):
        assert word not in words, word
    assert report.residual == []


def test_residual_check_is_case_insensitive_in_any_order(tmp_path):
    written = write_series(tmp_path / "in", shape=(2, 16, 16), identified=False)

    def name(ds: pydicom.Dataset) -> None:
        ds.PatientIdentityRemoved = "NO"
        del ds.DeidentificationMethod
        ds.PatientName = "DOE^JOHN"
        ds.PatientID = "ID-5566"
        ds.StationName = ""
        ds.ManufacturerModelName = "john DOE"  # kept by the profile: only the case-insensitive check catches it
        ds.ProtocolName = "Doe John protocol"
        ds.SoftwareVersions = "id-5566 build"

    for path in written.paths:
        edit_file(path, name)
    report = deidentify_study(written.folder, tmp_path / "out", seed=2)
    data = _all_bytes(tmp_path / "out").lower()
    assert b"john" not in _words(data) and b"doe" not in _words(data) and b"id-5566" not in data
    assert report.residual == []
    assert report.leaks_removed >= 2  # ManufacturerModelName and SoftwareVersions, once per instance


# ---------------------------------------------------------------- pseudonyms


def test_one_pseudonym_per_patient_across_series_with_inconsistent_names(tmp_path):
    root = tmp_path / "in"
    spellings = ["DOE^JOHN", "Doe^John^", "JOHN DOE"]
    for number, spelling in enumerate(spellings, start=1):
        series = write_series(root / f"s{number}", shape=(2, 16, 16), series_number=number, seed=number)
        for path in series.paths:
            edit_file(path, lambda ds, s=spelling: (setattr(ds, "PatientName", s), setattr(ds, "PatientID", "MRN-42")))
    # a fourth series without PatientID: matched by its name parts, in another order and case
    extra = write_series(root / "s4", shape=(2, 16, 16), series_number=4, seed=4)
    for path in extra.paths:
        edit_file(path, lambda ds: (setattr(ds, "PatientName", "doe^john"), setattr(ds, "PatientID", "")))
    report = deidentify_study(root, tmp_path / "out", seed=3)
    assert report.n_series == 4
    assert len(report.pseudonyms) == 1
    names = {str(pydicom.dcmread(p).PatientName) for p in (tmp_path / "out").glob("*.dcm")}
    ids = {str(pydicom.dcmread(p).PatientID) for p in (tmp_path / "out").glob("*.dcm")}
    assert names == ids == {report.pseudonyms[0]}


def test_two_patients_with_one_name_keep_two_pseudonyms(tmp_path):
    root = tmp_path / "in"
    for number, pid in enumerate(["MRN-1", "MRN-2"], start=1):
        series = write_series(root / f"s{number}", shape=(1, 16, 16), series_number=number, seed=number)
        edit_file(series.paths[0], lambda ds, p=pid: (setattr(ds, "PatientName", "SMITH^ANNA"), setattr(ds, "PatientID", p)))
    report = deidentify_study(root, tmp_path / "out", pseudonym="P")
    assert report.pseudonyms == ["P", "P-2"]


# ---------------------------------------------------------------- real-world files


def test_empty_sop_uids_deidentify_and_pass_the_residual_check(tmp_path):
    written = write_series(tmp_path / "in", shape=(3, 16, 16))
    for path in written.paths:
        blank_sop_uids(path)
    raw = pydicom.dcmread(written.paths[0])
    assert "SOPInstanceUID" in raw and raw.SOPInstanceUID == "" and raw.SOPClassUID == ""
    run = subprocess.run([sys.executable, "-m", "core", "deid", str(written.folder), str(tmp_path / "out"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["n_instances"] == 3 and report["residual"] == [] and report["edition"] == "2026c"
    uids = set()
    for path in sorted((tmp_path / "out").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage, from the modality
        assert ds.SOPInstanceUID and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert phi_keywords(ds) == []
        uids.add(str(ds.SOPInstanceUID))
    assert len(uids) == 3
    info = inspect_study(tmp_path / "out")
    assert info["shape"] == [3, 16, 16] and info["phi"] == []


def test_deflated_instance_deidentifies(tmp_path):
    written = write_series(tmp_path / "in", shape=(1, 16, 16))
    (tmp_path / "deflated").mkdir()
    write_deflated(tmp_path / "deflated" / "a.dcm", written.paths[0])
    report = deidentify_study(tmp_path / "deflated", tmp_path / "out", seed=5)
    assert report.n_instances == 1 and report.residual == []
    ds = pydicom.dcmread(tmp_path / "out" / "IM00001.dcm")
    assert phi_keywords(ds) == [] and ds.pixel_array.shape == (16, 16)
    assert b"doe" not in _words(_all_bytes(tmp_path / "out"))


def test_deidentified_zip_upload_has_no_names(tmp_path):
    from core.deid import deidentify_bytes
    from tests.dicom_factory import zip_folder

    written = write_series(tmp_path / "in", shape=(2, 16, 16))
    for path in written.paths:
        edit_file(path, _inject)
    blob, report = deidentify_bytes(zip_folder(written.folder), "study.zip", seed=7)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        data = b"".join(archive.read(n) for n in archive.namelist())
    assert not {b"jane", b"doe", b"mrn77889911"} & _words(data)
    assert report.residual == []


def test_names_and_ids_from_other_instances_are_removed_too(tmp_path):
    # instance 1 carries the patient's name and ID; instance 2 only repeats them in kept free text
    written = write_series(tmp_path / "in", shape=(2, 16, 16), identified=False)
    first, second = sorted(written.paths)

    def named(ds: pydicom.Dataset) -> None:
        ds.PatientIdentityRemoved = "NO"
        ds.PatientName = "ROE^RICHARD"
        ds.PatientID = "PX-778899"

    def only_text(ds: pydicom.Dataset) -> None:
        ds.PatientIdentityRemoved = "NO"
        region = Dataset()
        region.CodeValue = "T-D3000"
        region.CodingSchemeDesignator = "SRT"
        region.CodeMeaning = "chest, richard roe"
        ds.AnatomicRegionSequence = DicomSequence([region])
        ds.ManufacturerModelName = "px-778899"

    edit_file(first, named)
    edit_file(second, only_text)
    report = deidentify_study(written.folder, tmp_path / "out", seed=9)
    words = _words(_all_bytes(tmp_path / "out"))
    assert not {b"richard", b"roe", b"px"} & words
    assert report.residual == []
    out = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").glob("*.dcm"))]
    assert all(ds.ImagePositionPatient for ds in out)  # geometry untouched by the removal pass
    assert inspect_study(tmp_path / "out")["shape"] == [2, 16, 16]
