"""PHI detection and de-identification (core.deid, ``python -m core deid``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, SecondaryCaptureImageStorage

from core.cli import main
from core.deid import (
    DeidReport,
    PhiFinding,
    deidentify_bytes,
    deidentify_study,
    find_phi,
    phi_keywords,
)
from core.deid.clean import StudyCleaner, shift_da, shift_dt
from core.phi.profile import ANNEX_E, RULES
from core.errors import InputError, _short  # _short: a long path in a message keeps its start and its name
from core.io.safezip import read_zip
from tests.conftest import ROOT
from tests.dicom_factory import PHI_STRINGS, write_deidentified_series, write_series

# Extra identifying content added on top of the factory's PHI (see _enrich).
NESTED_CREATOR = "NESTEDCREATOR^KAREN"  # ReferencedImageSequence[0].ContentCreatorName
DEEP_PRIVATE = "deep private Jane Doe 4242"  # private element inside ReferencedImageSequence[0]
UNLISTED_PN = "INTERPRETER^ROI"  # ROIInterpreter: a PN the Annex E table does not list
EXTRA_PHI: dict[str, str] = {
    "PatientTelephoneNumbers": "555-0123-777",
    "InstitutionalDepartmentName": "Radiology Dept Wing C",
    "NameOfPhysiciansReadingStudy": "CUDDY^LISA",
    "DeviceSerialNumber": "SN-98765-XYZ",
    "StudyComments": "biopsy planned for Jane Doe",
    "PatientComments": "prefers morning calls",
    "AdditionalPatientHistory": "smoker since 1975 per Jane",
    "RequestingService": "Oncology Ward Seven",
    "ProtocolName": "Chest Protocol Dr House",
}
ACQ_DATETIME = "20240917101530.250000"
SHIFT = -400
EXPECTED_PHI_KEYWORDS = sorted(
    {
        "AccessionNumber", "AdditionalPatientHistory", "ContentCreatorName", "CurveData", "DeviceSerialNumber",
        "ImageComments", "InstitutionAddress", "InstitutionName", "InstitutionalDepartmentName", "IssuerOfPatientID",
        "NameOfPhysiciansReadingStudy", "OperatorsName", "OtherPatientIDsSequence", "OverlayData", "OverlayComments",
        "PatientAddress", "PatientAge", "PatientBirthDate", "PatientComments", "PatientID", "PatientName", "PatientSex",
        "PatientTelephoneNumbers", "PerformingPhysicianName", "PrivateTags", "ProtocolName", "ROIInterpreter",
        "ReferringPhysicianName", "RequestAttributesSequence", "RequestedProcedureID", "RequestingPhysician",
        "RequestingService", "SeriesDescription", "StationName", "StudyComments", "StudyDescription", "StudyID",
    }
)


def _enrich(path: Path, referenced_uid: str, burned_in: str | None) -> None:
    """Add overlays, curves, nested names and private data, free text, a DT, a reference."""
    ds = pydicom.dcmread(path)
    for keyword, value in EXTRA_PHI.items():
        setattr(ds, keyword, value)
    ds.ROIInterpreter = UNLISTED_PN
    ds.AcquisitionDateTime = ACQ_DATETIME
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = referenced_uid
    item.ContentCreatorName = NESTED_CREATOR
    block = item.private_block(0x0029, "DEEP_VENDOR", create=True)
    block.add_new(0x10, "LO", DEEP_PRIVATE)
    ds.ReferencedImageSequence = Sequence([item])
    ds.add_new(0x60000010, "US", 16)  # OverlayRows
    ds.add_new(0x60000011, "US", 16)  # OverlayColumns
    ds.add_new(0x60000100, "US", 1)  # OverlayBitsAllocated
    ds.add_new(0x60003000, "OW", b"\xff\x00" * 16)  # OverlayData
    ds.add_new(0x60004000, "LT", "overlay note for Jane Doe")  # OverlayComments
    ds.add_new(0x50003000, "OW", b"\x01\x02" * 8)  # CurveData (retired)
    if burned_in is None:
        del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = burned_in
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two series of one PHI-carrying study (4 + 3 slices) and a stray text file."""
    root = tmp_path_factory.mktemp("phi_study") / "in"
    one = write_series(root, shape=(4, 16, 16), series_number=1, prefix="A", seed=1)
    two = write_series(root, shape=(3, 16, 16), series_number=2, prefix="B", seed=2,
                       study_uid=one.study_uid, frame_of_reference_uid=one.frame_of_reference_uid)
    first_uid = str(pydicom.dcmread(one.paths[0]).SOPInstanceUID)
    for path in one.paths:
        _enrich(path, first_uid, burned_in="NO")
    for path in two.paths:
        _enrich(path, first_uid, burned_in=None)  # series 2: BurnedInAnnotation missing
    (root / "notes.txt").write_text("not a dicom file\n")
    originals = {p: pydicom.dcmread(p) for p in [*one.paths, *two.paths]}
    uids: set[str] = set()
    for ds in originals.values():
        uids |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), str(ds.FrameOfReferenceUID)}
    return {"root": root, "one": one, "two": two, "originals": originals, "uids": uids, "first_uid": first_uid}


@pytest.fixture(scope="session")
def cleaned(study: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeidReport]:
    out = tmp_path_factory.mktemp("deid") / "out"
    report = deidentify_study(study["root"], out, shift_days=SHIFT, seed=7)  # type: ignore[arg-type]
    return out, report


def _outputs(out: Path) -> list[tuple[Path, pydicom.Dataset]]:
    return [(p, pydicom.dcmread(p)) for p in sorted(out.glob("*.dcm"))]


def _match(study: dict[str, object], ds: pydicom.Dataset) -> pydicom.Dataset:
    """The original of a cleaned instance (SeriesNumber and InstanceNumber are kept)."""
    originals: dict[Path, pydicom.Dataset] = study["originals"]  # type: ignore[assignment]
    hits = [o for o in originals.values() if o.SeriesNumber == ds.SeriesNumber and o.InstanceNumber == ds.InstanceNumber]
    assert len(hits) == 1
    return hits[0]


# ------------------------------------------------------------------ detection


def test_profile_table_is_data_with_known_actions() -> None:
    assert len(ANNEX_E) > 250
    assert {action for _, _, action, _ in ANNEX_E} <= {"X", "Z", "D", "U", "K"}
    assert RULES["PatientBirthDate"].action == "Z" and RULES["InstitutionAddress"].action == "X"
    assert RULES["StudyInstanceUID"].action == "U" and RULES["ReferencedImageSequence"].action == "K"


def test_find_phi_reports_profile_attributes_with_kinds(study: dict[str, object]) -> None:
    ds = pydicom.dcmread(study["one"].paths[0])  # type: ignore[attr-defined]
    findings = find_phi(ds)
    assert all(isinstance(f, PhiFinding) for f in findings)
    kinds = {f.path: f.kind for f in findings}
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "InstitutionName",
                    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                    "NameOfPhysiciansReadingStudy", "AccessionNumber", "DeviceSerialNumber", "StationName",
                    "PatientTelephoneNumbers", "RequestingService", "ROIInterpreter"):
        assert kinds[keyword] == "identifier", keyword
    for keyword in ("StudyDescription", "SeriesDescription", "ImageComments", "StudyComments", "PatientComments",
                    "AdditionalPatientHistory", "ProtocolName"):
        assert kinds[keyword] == "free_text", keyword
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "AcquisitionDateTime"):
        assert kinds[keyword] == "date", keyword
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                    "ReferencedImageSequence[0].ReferencedSOPInstanceUID"):
        assert kinds[keyword] == "uid", keyword
    assert "SOPClassUID" not in kinds and "ReferencedImageSequence[0].ReferencedSOPClassUID" not in kinds
    # names and IDs nested in sequences, with their path and tag
    assert kinds["RequestAttributesSequence[0].RequestingPhysician"] == "identifier"
    assert kinds["OtherPatientIDsSequence[0].PatientID"] == "identifier"
    assert kinds["ReferencedImageSequence[0].ContentCreatorName"] == "identifier"
    nested = next(f for f in findings if f.path == "RequestAttributesSequence[0].RequestingPhysician")
    assert nested.tag == "(0032,1032)" and nested.keyword == "RequestingPhysician" and nested.action == "X"
    # private tags (top level and nested), overlays and curves
    private = [f for f in findings if f.kind == "private"]
    assert {f.tag for f in private} >= {"(0011,0010)", "(0011,1001)", "(0029,0010)", "(0029,1010)"}
    assert all(f.keyword == "PrivateTags" for f in private)
    assert {f.keyword for f in findings if f.kind == "overlay"} == {"OverlayData", "OverlayComments", "CurveData"}
    assert "OverlayRows" not in {f.keyword for f in findings}  # overlay geometry is not itself identifying
    # BurnedInAnnotation NO on series 1: no pixel risk
    assert not [f for f in findings if f.kind == "pixel_risk"]


def test_phi_keywords_is_the_sorted_identifying_list(study: dict[str, object]) -> None:
    ds = pydicom.dcmread(study["one"].paths[0])  # type: ignore[attr-defined]
    keywords = phi_keywords(ds)
    assert keywords == EXPECTED_PHI_KEYWORDS
    assert "StudyDate" not in keywords and "StudyInstanceUID" not in keywords  # dates and UIDs are separate classes


def test_empty_values_are_not_phi() -> None:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = "  "
    ds.ReferringPhysicianName = "^^"
    ds.StudyDate = ""
    ds.OtherPatientIDsSequence = Sequence([])
    ds.AccessionNumber = None
    assert find_phi(ds) == []
    assert phi_keywords(ds) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {"BurnedInAnnotation"}),  # missing
        ({"BurnedInAnnotation": "YES"}, {"BurnedInAnnotation"}),
        ({"BurnedInAnnotation": "NO"}, set()),
        ({"BurnedInAnnotation": "NO", "SOPClassUID": SecondaryCaptureImageStorage}, {"SOPClassUID"}),
        ({"BurnedInAnnotation": "NO", "ImageType": ["DERIVED", "SECONDARY"]}, {"ImageType"}),
        ({"BurnedInAnnotation": "NO", "Modality": "OT"}, {"Modality"}),
        ({"Modality": "SC", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"}, {"BurnedInAnnotation", "Modality", "SOPClassUID"}),
    ],
)
def test_pixel_risk(changes: dict[str, object], expected: set[str]) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 4
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    findings = find_phi(ds)
    assert {f.keyword for f in findings if f.kind == "pixel_risk"} == expected
    assert phi_keywords(ds) == []  # pixel risk is a warning, not an identifying attribute


def test_declared_deidentified_study_is_clean(tmp_path: Path) -> None:
    written = write_deidentified_series(tmp_path, shape=(2, 16, 16))
    ds = pydicom.dcmread(written.paths[0])
    assert phi_keywords(ds) == []
    assert find_phi(ds) == []
    ds.InstitutionAddress = "1 Real Street"  # an X attribute left behind is still flagged
    assert phi_keywords(ds) == ["InstitutionAddress"]


# ------------------------------------------------------------ de-identification


def test_output_bytes_hold_no_original_identifying_string(study: dict[str, object], cleaned: tuple[Path, DeidReport]) -> None:
    out, report = cleaned
    needles = {*PHI_STRINGS, *EXTRA_PHI.values(), NESTED_CREATOR, DEEP_PRIVATE, UNLISTED_PN, "DEEP_VENDOR", "ACME_SCANNER",
               "overlay note", *study["uids"]}  # type: ignore[misc]
    files = sorted(out.iterdir())
    assert [p.name for p in files] == [f"IM{i:05d}.dcm" for i in range(1, 8)]
    for path in files:
        data = path.read_bytes()
        assert not [n for n in needles if n.encode() in data], path.name
    assert report.residual == [] and report.leaks_removed == 0


def test_no_private_overlay_or_curve_left(cleaned: tuple[Path, DeidReport]) -> None:
    for _, ds in _outputs(cleaned[0]):
        tags = [e.tag for e in ds.iterall()]
        assert not [t for t in tags if t.is_private]
        assert not [t for t in tags if 0x5000 <= t.group <= 0x60FF]
        # ROI Interpreter is Z in Table E.1-1 (2026c): kept empty
        assert not str(ds.get("ROIInterpreter", "") or "") and "ProtocolName" not in ds and "StudyComments" not in ds
        assert ds.InstitutionName == "" and ds.AccessionNumber == "" and ds.PatientBirthDate == ""
        assert ds.ReferencedImageSequence[0].get("ContentCreatorName", "") == ""


def test_uids_replaced_consistently(study: dict[str, object], cleaned: tuple[Path, DeidReport]) -> None:
    outputs = _outputs(cleaned[0])
    originals = [_match(study, ds) for _, ds in outputs]
    assert len({str(ds.StudyInstanceUID) for _, ds in outputs}) == 1
    assert str(outputs[0][1].StudyInstanceUID) != str(originals[0].StudyInstanceUID)
    assert len({str(ds.FrameOfReferenceUID) for _, ds in outputs}) == 1
    series: dict[str, set[str]] = {}
    for (_, ds), orig in zip(outputs, originals):
        series.setdefault(str(orig.SeriesInstanceUID), set()).add(str(ds.SeriesInstanceUID))
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != orig.SOPInstanceUID
        assert ds.SOPClassUID == orig.SOPClassUID
    assert [len(v) for v in series.values()] == [1, 1] and len(set.union(*series.values())) == 2
    assert len({str(ds.SOPInstanceUID) for _, ds in outputs}) == 7
    # the reference in every instance points at the new UID of the referenced instance
    new_of_first = next(str(ds.SOPInstanceUID) for (_, ds), o in zip(outputs, originals) if o.SOPInstanceUID == study["first_uid"])
    assert {str(ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID) for _, ds in outputs} == {new_of_first}


def test_pixel_data_bit_identical(study: dict[str, object], cleaned: tuple[Path, DeidReport]) -> None:
    for _, ds in _outputs(cleaned[0]):
        orig = _match(study, ds)
        assert ds.PixelData == orig.PixelData
        assert ds.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID


def _days(a: str, b: str) -> int:
    return (date(int(b[:4]), int(b[4:6]), int(b[6:8])) - date(int(a[:4]), int(a[4:6]), int(a[6:8]))).days


def test_dates_shifted_by_one_offset(study: dict[str, object], cleaned: tuple[Path, DeidReport]) -> None:
    for _, ds in _outputs(cleaned[0]):
        orig = _match(study, ds)
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            assert _days(orig.get(keyword), ds.get(keyword)) == SHIFT, keyword
        assert _days(ACQ_DATETIME[:8], ds.AcquisitionDateTime[:8]) == SHIFT
        assert ds.AcquisitionDateTime[8:] == ACQ_DATETIME[8:]  # time of day kept
        assert ds.StudyTime == orig.StudyTime
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_random_offset_is_shared_by_the_whole_study(study: dict[str, object], tmp_path: Path) -> None:
    deidentify_study(study["root"], tmp_path / "o")  # type: ignore[arg-type]
    offsets = {_days(_match(study, ds).StudyDate, ds.StudyDate) for _, ds in _outputs(tmp_path / "o")}
    offsets |= {_days(_match(study, ds).AcquisitionDate, ds.AcquisitionDate) for _, ds in _outputs(tmp_path / "o")}
    assert len(offsets) == 1
    assert -3650 <= offsets.pop() <= -365


def test_identity_marked_and_pseudonymised(cleaned: tuple[Path, DeidReport]) -> None:
    out, report = cleaned
    pseudonym = report.pseudonyms[0]
    assert pseudonym.startswith("ANON-") and len(report.pseudonyms) == 1
    for _, ds in _outputs(out):
        assert ds.PatientIdentityRemoved == "YES"
        assert "basic profile" in ds.DeidentificationMethod
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]
        assert str(ds.PatientName) == ds.PatientID == pseudonym
        assert find_phi(ds) == [] or {f.kind for f in find_phi(ds)} == {"pixel_risk"}


def test_report_counts_changes_and_warnings(cleaned: tuple[Path, DeidReport]) -> None:
    _, report = cleaned
    assert report.n_instances == 7 and report.n_series == 2
    assert report.skipped == {"not DICOM": 1}
    changes = set(report.changes)
    for pair in [("PatientName", "D"), ("PatientID", "D"), ("PrivateTags", "X"), ("OverlayData", "X"), ("CurveData", "X"),
                 ("StudyDate", "shift"), ("StudyInstanceUID", "U"), ("ReferencedSOPInstanceUID", "U"),
                 ("InstitutionName", "Z"), ("RequestAttributesSequence", "X"), ("ROIInterpreter", "Z")]:
        assert pair in changes, pair
    assert report.action_counts["D"] == 14  # PatientName + PatientID in 7 instances
    assert report.action_counts["U"] == 7 * 5  # SOP, series, study, frame of reference, one reference
    assert report.pixel_risk == [
        "3 of 7 instance(s) have BurnedInAnnotation YES or missing: check the pixels for burned-in text"
    ]
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["files_written"][0] == "IM00001.dcm" and ["PatientName", "D"] in as_json["changes"]
    assert "shift_days" not in as_json  # the offset is never reported


def test_dates_remove_and_keep(study: dict[str, object], tmp_path: Path) -> None:
    deidentify_study(study["root"], tmp_path / "rm", dates="remove", seed=1)  # type: ignore[arg-type]
    for _, ds in _outputs(tmp_path / "rm"):
        assert not [e for e in ds.iterall() if e.VR in ("DA", "DT", "TM") and e.value not in ("", None)]
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]
    deidentify_study(study["root"], tmp_path / "keep", dates="keep", seed=1)  # type: ignore[arg-type]
    for _, ds in _outputs(tmp_path / "keep"):
        assert ds.StudyDate == "20240917" and ds.AcquisitionDateTime == ACQ_DATETIME
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113106"]
        assert ds.PatientBirthDate == ""  # the birth date is an identifier, not a study date


def test_seed_makes_output_reproducible(study: dict[str, object], tmp_path: Path) -> None:
    a = deidentify_study(study["root"], tmp_path / "a", seed=3, pseudonym="SUBJ-0001")  # type: ignore[arg-type]
    b = deidentify_study(study["root"], tmp_path / "b", seed=3, pseudonym="SUBJ-0001")  # type: ignore[arg-type]
    assert a.pseudonyms == b.pseudonyms == ["SUBJ-0001"]
    assert (tmp_path / "a" / "IM00003.dcm").read_bytes() == (tmp_path / "b" / "IM00003.dcm").read_bytes()
    c = deidentify_study(study["root"], tmp_path / "c", seed=4)  # type: ignore[arg-type]
    uid = lambda d: str(pydicom.dcmread(d / "IM00001.dcm").StudyInstanceUID)  # noqa: E731
    assert uid(tmp_path / "a") != uid(tmp_path / "c") and c.pseudonyms != a.pseudonyms


def test_verification_removes_identifying_text_outside_the_profile(tmp_path: Path) -> None:
    written = write_series(tmp_path / "in", shape=(2, 16, 16))
    for path in written.paths:
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "Saint Hypothetical General Hospital"  # the institution name, where the profile keeps text
        ds.save_as(path, enforce_file_format=True)
    report = deidentify_study(tmp_path / "in", tmp_path / "out", seed=0)
    assert report.leaks_removed == 2 and report.residual == []
    for path in (tmp_path / "out").iterdir():
        assert b"Saint Hypothetical" not in path.read_bytes()
        assert "Manufacturer" not in pydicom.dcmread(path)


def test_zip_input_and_deidentify_bytes(study: dict[str, object], tmp_path: Path) -> None:
    root: Path = study["root"]  # type: ignore[assignment]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.iterdir()):
            zf.write(path, f"Doe_Jane/{path.name}")
    data = buf.getvalue()
    (tmp_path / "study.zip").write_bytes(data)
    report = deidentify_study(tmp_path / "study.zip", tmp_path / "out", seed=1)
    assert report.n_instances == 7 and report.skipped == {"not DICOM": 1}
    cleaned_zip, report2 = deidentify_bytes(data, "Doe_Jane.zip", seed=1)
    members = read_zip(cleaned_zip)
    assert [m.name for m in members] == [f"IM{i:05d}.dcm" for i in range(1, 8)]
    assert not [s for s in PHI_STRINGS if s.encode() in cleaned_zip]
    assert not [m.name for m in members if any(s.encode() in m.data for s in PHI_STRINGS)]
    assert report2.n_series == 2
    single, report3 = deidentify_bytes(study["one"].paths[0].read_bytes(), "x.dcm")  # type: ignore[attr-defined]
    assert report3.n_instances == 1 and len(read_zip(single)) == 1


def test_implicit_vr_file_without_meta(tmp_path: Path) -> None:
    written = write_series(tmp_path / "src", shape=(1, 16, 16))
    ds = pydicom.dcmread(written.paths[0])
    pixels = ds.PixelData
    raw = tmp_path / "in" / "raw.dcm"
    raw.parent.mkdir()
    del ds.file_meta
    ds.preamble = None
    ds.save_as(raw, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert raw.read_bytes()[128:132] != b"DICM"
    deidentify_study(raw, tmp_path / "out")
    out = pydicom.dcmread(tmp_path / "out" / "IM00001.dcm")
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert out.PixelData == pixels and out.PatientIdentityRemoved == "YES"


def test_two_patients_get_two_pseudonyms(tmp_path: Path) -> None:
    a = write_series(tmp_path / "in", shape=(1, 16, 16), prefix="A")
    b = write_series(tmp_path / "in", shape=(1, 16, 16), prefix="B", series_number=2)
    ds = pydicom.dcmread(b.paths[0])
    ds.PatientID, ds.PatientName = "OTHER998877", "ROE^RICHARD"
    ds.save_as(b.paths[0], enforce_file_format=True)
    report = deidentify_study(tmp_path / "in", tmp_path / "out", pseudonym="P1")
    assert report.pseudonyms == ["P1", "P1-2"] and len(a.paths) == 1


@pytest.mark.parametrize(
    ("text", "days", "expected"),
    [("20240229", 365, "20250228"), ("20240101", -1, "20231231"), ("20240101-20240201", 10, "20240111-20240211"),
     ("2024", 5, None), ("2024AB01", 1, None), ("20241301", 1, None)],
)
def test_shift_da(text: str, days: int, expected: str | None) -> None:
    assert shift_da(text, days) == expected


def test_shift_dt_keeps_time_and_offset() -> None:
    assert shift_dt("20240301120000.5+0100", -1) == "20240229120000.5+0100"
    assert shift_dt("202403", 1) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dates": "blur"}, "dates: got blur, is not one of shift, remove, keep; fix: use --dates shift, remove or keep"),
        ({"shift_days": 0}, "shift_days: got 0, must be non-zero and within +-36500; fix: give an offset such as -400"),
        ({"dates": "keep", "shift_days": 5}, "shift_days: got 5, only applies with dates='shift' (got dates='keep'); fix: drop --shift-days or use --dates shift"),
        ({"pseudonym": "a\\b"}, "pseudonym: got a\\b, must be 1-64 characters without a backslash; fix: give a study code such as SUBJ-0001"),
    ],
)
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as err:
        StudyCleaner(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_bad_bytes() -> None:
    with pytest.raises(InputError, match=r"^upload: got \.zip, is an empty file"):
        deidentify_bytes(b"", "a.zip")
    with pytest.raises(InputError, match=r"^upload: got \.dcm, holds no readable DICOM instance \(1 file\(s\) not DICOM\)"):
        deidentify_bytes(b"\x00\x01random bytes" * 50, "a.dcm")


# ------------------------------------------------------------------ command line


def test_cli_json(study: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["deid", str(study["root"]), str(tmp_path / "o"), "--json", "--shift-days", "-30"])
    captured = capsys.readouterr()
    assert code == 0
    out = json.loads(captured.out)
    assert out["n_instances"] == 7 and out["dates"] == "shift" and out["output"] == str(tmp_path / "o")
    assert not [s for s in PHI_STRINGS if s in captured.out + captured.err]  # nothing identifying printed


def test_cli_text(study: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deid", str(study["root"]), str(tmp_path / "o"), "--dates", "remove"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "de-identified 7 instance(s) in 2 series -> 7 file(s) (IM00001.dcm .. IM00007.dcm)"
    assert lines[1] == "profile: DICOM PS3.15 2026c Table E.1-1 basic profile (652 attributes; generated from dicom-anonymizer 2.1.0)"
    assert lines[2] == "dates: removed"
    assert any(line.startswith("removed (X, ") and "PatientAddress" in line for line in lines)
    assert any(line.startswith("warning: pixel risk: 3 of 7 instance(s)") for line in lines)


def test_cli_nifti_to_a_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``deid in.nii.gz out.nii`` writes the file out.nii (it made a folder named out.nii holding VOL00001.nii.gz)."""
    import nibabel as nib
    import numpy as np

    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4)), src)
    assert main(["deid", str(src), str(tmp_path / "out.nii"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files_written"] == ["out.nii"] and (tmp_path / "out.nii").is_file()
    assert (tmp_path / "out.nii").read_bytes()[:2] != b"\x1f\x8b"  # plain, as its name says (the input was gzipped)
    assert np.asarray(nib.load(tmp_path / "out.nii").dataobj).tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii"]
    assert main(["deid", str(src), str(tmp_path / "out.nii")]) == 2  # nothing is overwritten
    assert capsys.readouterr().err.startswith("error: OUT: got ") and (tmp_path / "out.nii").is_file()
    assert main(["deid", str(src), str(tmp_path / "again.nii.gz")]) == 0  # the text names the file written
    assert capsys.readouterr().out.splitlines()[0].endswith("-> 1 file(s) (again.nii.gz)")


@pytest.mark.parametrize("case", ["missing", "inside", "same", "not_dicom", "not_empty"])
def test_cli_errors(case: str, study: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root: Path = study["root"]  # type: ignore[assignment]
    text = tmp_path / "report.txt"
    text.write_text("hello")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    args, expected = {
        "missing": ([str(tmp_path / "nope"), str(tmp_path / "o")], f"error: IN: got {_short(str(tmp_path / 'nope'))}, does not exist; fix: give a DICOM file, a folder of DICOM files or a zip"),
        "inside": ([str(root), str(root / "clean")], f"error: OUT: got {_short(str(root / 'clean'))}, is inside the input folder {root}; fix: write the de-identified copy outside the input"),
        "same": ([str(root), str(root)], f"error: OUT: got {_short(str(root))}, is the input itself; fix: write the de-identified copy to a new folder"),
        "not_dicom": ([str(text), str(tmp_path / "o")], f"error: IN: got {_short(str(text))}, holds no readable DICOM instance (1 file(s) not DICOM); fix: give a DICOM file, a folder of DICOM files or a zip of them"),
        "not_empty": ([str(root), str(tmp_path / "full")], f"error: OUT: got {_short(str(tmp_path / 'full'))}, is not empty; fix: give a new or empty folder (nothing is overwritten)"),
    }[case]
    code = main(["deid", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err == expected + "\n"
    assert not (tmp_path / "o").exists() and not (root / "clean").exists()
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_cli_subprocess_does_not_import_torch(study: dict[str, object], tmp_path: Path) -> None:
    code = (
        "import sys; from core.cli import main; "
        f"rc = main(['deid', {str(study['root'])!r}, {str(tmp_path / 'o')!r}, '--json']); "
        "assert 'torch' not in sys.modules and 'streamlit' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_instances"] == 7
    bad = subprocess.run([sys.executable, "-m", "core", "deid", str(tmp_path / "missing"), str(tmp_path / "o2")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1


def test_compressed_pixel_data_kept_bit_identical(tmp_path: Path) -> None:
    written = write_series(tmp_path / "in", shape=(3, 32, 32), compression="rle")
    report = deidentify_study(tmp_path / "in", tmp_path / "out", seed=2)
    assert report.n_instances == 3
    for path, ds in _outputs(tmp_path / "out"):
        orig = next(o for o in map(pydicom.dcmread, written.paths) if o.InstanceNumber == ds.InstanceNumber)
        assert ds.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
        assert ds.PixelData == orig.PixelData
        assert not [s for s in PHI_STRINGS if s.encode() in path.read_bytes()]


@pytest.mark.parametrize(("cut", "reason"), [(600, "truncated (image without pixel data)"),
                                             (-10, "truncated (pixel data shorter than Rows x Columns x frames)")])
def test_truncated_files(cut: int, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = write_series(tmp_path / "in", shape=(3, 16, 16))
    data = written.paths[0].read_bytes()
    written.paths[0].write_bytes(data[:cut])
    report = deidentify_study(tmp_path / "in", tmp_path / "out")  # a study with one broken file: the rest is cleaned
    assert report.n_instances == 2 and report.skipped == {reason: 1}
    assert f"skipped 1 input file(s): {reason}" in report.lines()
    code = main(["deid", str(written.paths[0]), str(tmp_path / "out2")])  # the broken file alone: an error
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: IN: got {_short(str(written.paths[0]))}, holds no readable DICOM instance (1 file(s) {reason}); fix: give a DICOM file, a folder of DICOM files or a zip of them\n"
    assert err.split(",")[0].endswith(written.paths[0].name)
