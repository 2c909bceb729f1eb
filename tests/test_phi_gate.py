"""The PHI gate of ``inspect`` and uploads sees every instance and every element, NIfTI header text and burned-in risk."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from core.io.nifti import nifti_header_phi, nifti_prefix
from core.io.study import inspect_study, load_study_bytes
from tests.dicom_factory import (
    append_private_after_pixels,
    edit_file,
    secondary_capture,
    write_deflated,
    write_deidentified_series,
    zip_folder,
)

ROOT = Path(__file__).resolve().parents[1]


def _clean(tmp_path: Path, n: int = 6, name: str = "clean") -> list[Path]:
    written = write_deidentified_series(tmp_path / name, shape=(n, 24, 24))
    assert inspect_study(written.folder)["phi"] == []
    return sorted(written.paths)


def test_phi_in_the_fifth_of_six_instances_is_found(tmp_path):
    paths = _clean(tmp_path)

    def add_name(ds: pydicom.Dataset) -> None:
        ds.PatientName = "DOE^JOHN"
        ds.OtherPatientIDs = "MRN55501"

    edit_file(paths[4], add_name)
    info = inspect_study(paths[0].parent)
    assert info["phi"] == ["OtherPatientIDs", "PatientName"]
    # the same through the upload path (a zip held in memory)
    volume = load_study_bytes(zip_folder(paths[0].parent), "study.zip")
    assert volume.phi == ["OtherPatientIDs", "PatientName"]


def test_private_element_after_pixel_data_is_found(tmp_path):
    paths = _clean(tmp_path)
    append_private_after_pixels(paths[2], "John Doe MRN55501")
    ds = pydicom.dcmread(paths[2])
    assert ds[0x7FE11001].value.startswith("John Doe")  # really stored after (7FE0,0010)
    info = inspect_study(paths[0].parent)
    assert info["phi"] == ["PrivateTags"]
    assert info["shape"] == [6, 24, 24]  # the image still loads


def test_unparseable_bytes_after_pixel_data_are_flagged(tmp_path):
    paths = _clean(tmp_path)
    with open(paths[1], "ab") as fh:
        fh.write(b"\x01\x02JOHN DOE 555-0199")
    assert inspect_study(paths[0].parent)["phi"] == ["DataAfterPixelData"]


def test_names_in_nested_sequences_and_code_meanings(tmp_path):
    paths = _clean(tmp_path, n=3)

    def nested(ds: pydicom.Dataset) -> None:
        ds.PatientName = "Doe^John"
        code = Dataset()
        code.CodeValue = "CT-CHEST"
        code.CodingSchemeDesignator = "99LOCAL"
        code.CodeMeaning = "CT chest for JOHN doe"
        ds.ProcedureCodeSequence = DicomSequence([code])
        ds.ReferencedImageSequence = DicomSequence([Dataset()])
        inner = Dataset()
        inner.ScheduledPerformingPhysicianName = "HOUSE^GREGORY"
        ds.ReferencedImageSequence[0].ScheduledProcedureStepSequence = DicomSequence([inner])

    edit_file(paths[1], nested)
    info = inspect_study(paths[0].parent)
    assert info["phi"] == ["CodeMeaning", "PatientName", "ScheduledPerformingPhysicianName"]


def test_a_code_meaning_without_names_is_not_flagged(tmp_path):
    paths = _clean(tmp_path, n=2)

    def code(ds: pydicom.Dataset) -> None:
        ds.PatientName = "Doe^John"
        item = Dataset()
        item.CodeValue = "T-D3000"
        item.CodingSchemeDesignator = "SRT"
        item.CodeMeaning = "Chest"  # "Doe" in "Does"-like words must not match: whole words only
        ds.AnatomicRegionSequence = DicomSequence([item])
        ds.BodyPartExamined = "CHEST"
        ds.ImageComments = ""

    edit_file(paths[0], code)
    assert inspect_study(paths[0].parent)["phi"] == ["PatientName"]


def test_non_image_instances_and_other_series_are_gated(tmp_path):
    paths = _clean(tmp_path, n=4)
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: no pixel data
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.PatientName = "ROE^RICHARD"
    sr.Modality = "SR"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(paths[0].parent / "report.dcm", enforce_file_format=True)
    other = write_deidentified_series(paths[0].parent / "scout", shape=(1, 16, 16), series_number=9)
    edit_file(other.paths[0], lambda ds: setattr(ds, "InstitutionName", "Saint Hypothetical"))
    info = inspect_study(paths[0].parent)
    assert info["shape"] == [4, 24, 24]  # the largest series is loaded ...
    assert info["phi"] == ["InstitutionName", "PatientName"]  # ... but every file was gated


def test_a_genuine_deflated_file_loads_and_is_gated(tmp_path):
    paths = _clean(tmp_path, n=3)
    edit_file(paths[0], lambda ds: setattr(ds, "PatientName", "DOE^JOHN"))
    deflated = write_deflated(tmp_path / "deflated.dcm", paths[0])
    assert pydicom.dcmread(deflated).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    info = inspect_study(deflated)
    assert info["shape"] == [1, 24, 24]
    assert info["phi"] == ["PatientName"]
    truth = pydicom.dcmread(paths[0]).pixel_array.astype(np.float32) - 1024.0
    volume = load_study_bytes(deflated.read_bytes(), "deflated.dcm")
    assert volume.hu.shape == (1, 24, 24)
    assert float(np.abs(np.sort(volume.hu.ravel()) - np.sort(truth.ravel())).max()) == 0.0


# ---------------------------------------------------------------- burned-in risk


def test_secondary_capture_with_burned_in_annotation_is_a_distinct_finding(tmp_path):
    sc = secondary_capture(tmp_path / "sc.dcm", burned_in="YES")
    run = subprocess.run([sys.executable, "-m", "core", "inspect", str(sc), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["phi"] == []  # no identifying attribute ...
    assert info["burned_in"] is True  # ... but the pixels may show text
    reasons = " | ".join(info["burned_in_reasons"])
    assert "BurnedInAnnotation YES (1 of 1 instances)" in reasons
    assert "secondary capture SOP class 1.2.840.10008.5.1.4.1.1.7 (1 of 1 instances)" in reasons
    assert "ImageType DERIVED\\SECONDARY\\SCREEN SAVE" in reasons


def test_burned_in_flags_and_non_flags(tmp_path):
    paths = _clean(tmp_path, n=3)
    assert inspect_study(paths[0].parent)["burned_in"] is False  # BurnedInAnnotation NO, ORIGINAL\PRIMARY
    edit_file(paths[0], lambda ds: delattr(ds, "BurnedInAnnotation"))
    assert inspect_study(paths[0].parent)["burned_in"] is False  # missing alone is no reason (most CTs)
    edit_file(paths[1], lambda ds: setattr(ds, "ImageType", ["DERIVED", "SECONDARY", "AXIAL"]))
    info = inspect_study(paths[0].parent)
    assert info["burned_in"] is True
    assert info["burned_in_reasons"] == ["ImageType DERIVED\\SECONDARY\\AXIAL (1 of 3 instances)"]
    edit_file(paths[2], lambda ds: setattr(ds, "BurnedInAnnotation", "YES"))
    assert "BurnedInAnnotation YES (1 of 3 instances)" in inspect_study(paths[0].parent)["burned_in_reasons"]


# ---------------------------------------------------------------- NIfTI header text


def _nifti(tmp_path: Path, name: str, **text: str) -> Path:
    img = nib.Nifti1Image(np.full((8, 8, 4), -1000, dtype=np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    for key, value in text.items():
        img.header[key] = value.encode()
    path = tmp_path / name
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("field", ["descrip", "aux_file", "intent_name", "db_name"])
def test_nifti_text_fields_are_phi(tmp_path, field):
    path = _nifti(tmp_path, f"{field}.nii.gz", **{field: "John Doe"})
    info = inspect_study(path)
    assert info["phi"] == [f"nifti.{field}"]
    assert info["burned_in"] is False


def test_nifti_extension_is_phi_and_blank_header_is_not(tmp_path):
    clean = _nifti(tmp_path, "clean.nii")
    assert inspect_study(clean)["phi"] == []
    img = nib.load(str(clean))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"patient: John Doe, MRN55501"))
    path = tmp_path / "ext.nii.gz"
    nib.save(img, str(path))
    assert inspect_study(path)["phi"] == ["nifti.extensions"]
    raw = path.read_bytes()
    assert nifti_header_phi(nifti_prefix(raw, "ext.nii.gz")) == ["nifti.extensions"]
    # header read without inflating the voxels: the prefix stops at vox_offset
    vox_offset = int(struct.unpack("<f", nifti_prefix(raw, "x")[108:112])[0])
    assert len(nifti_prefix(raw, "ext.nii.gz")) == vox_offset


def test_real_ct_header_is_clean(real_ct):
    info = inspect_study(real_ct)
    assert info["phi"] == []
    assert info["burned_in"] is False


def test_private_file_meta_and_nifti_beside_a_series_are_gated(tmp_path):
    paths = _clean(tmp_path, n=2)

    def private_meta(ds: pydicom.Dataset) -> None:
        ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
        ds.file_meta.PrivateInformation = b"patient John Doe"

    edit_file(paths[1], private_meta)
    assert inspect_study(paths[0].parent)["phi"] == ["PrivateInformation"]
    edit_file(paths[1], lambda ds: (delattr(ds.file_meta, "PrivateInformation"), delattr(ds.file_meta, "PrivateInformationCreatorUID")))
    assert inspect_study(paths[0].parent)["phi"] == []
    _nifti(paths[0].parent, "notes.nii.gz", descrip="John Doe")
    volume = load_study_bytes(zip_folder(paths[0].parent), "study.zip")
    assert volume.format == "dicom" and volume.phi == ["nifti.descrip"]
