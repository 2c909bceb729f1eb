"""DICOM exports (core.dicom_export, ``python -m core export-dicom``): read back and validated.

Every written object is read back with highdicom and pydicom and checked
against the arrays it came from, with geometry computed here independently of
the exporter: the Parametric Map's value at each frame pixel (stored value x
Real World Value slope + intercept) must equal the saliency map at the Volume
voxel that pixel's patient position falls on (1e-4, and 1e-4 of the map's peak),
the Segmentation must be the top region, the SR must carry the prediction, all
three must share the source series' Frame of Reference and reference its
instances, and dciodvfy (dicom3tools) must report no error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest

from core.errors import InputError
from tests.conftest import ROOT
from tests.dicom_factory import write_series

DEMO_MODELS = ROOT / "assets" / "demo_models"
DCIODVFY = shutil.which("dciodvfy")
N_CASES = 3


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# --- independent readers -------------------------------------------------------------------------------------

def _frame_voxels(ipp: np.ndarray, iop: np.ndarray, spacing: tuple[float, float], rows: int, cols: int,
                  affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Volume indices of the pixels of a frame, from its patient geometry and the Volume's affine."""
    i, j = np.mgrid[0:rows, 0:cols].astype(np.float64)
    pos = (ipp[:, None, None] + iop[:3, None, None] * j[None] * spacing[1] + iop[3:, None, None] * i[None] * spacing[0])
    idx = np.tensordot(np.linalg.inv(affine)[:3, :3], pos, axes=1) + np.linalg.inv(affine)[:3, 3][:, None, None]
    rounded = np.rint(idx)
    assert np.abs(idx - rounded).max() < 1e-3, "frame pixels fall between voxels"
    for axis in range(3):
        assert rounded[axis].min() >= 0 and rounded[axis].max() < shape[axis]
    return tuple(rounded[a].astype(int) for a in range(3))


def _frames_on_grid(ds: pydicom.Dataset, values: np.ndarray, affine: np.ndarray,
                    shape: tuple[int, int, int]) -> np.ndarray:
    """Scatter enhanced multi-frame ``values`` [frames, rows, cols] back to the Volume grid (NaN where no frame)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
    spacing = tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    grid = np.full(shape, np.nan, dtype=np.float64)
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        k, r, c = _frame_voxels(ipp, iop, spacing, int(ds.Rows), int(ds.Columns), affine, shape)  # type: ignore[arg-type]
        grid[k, r, c] = values[f]
    return grid


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def _source_uids(folder_or_files: list[Path]) -> tuple[set[str], str, str]:
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder_or_files]
    return ({str(d.SOPInstanceUID) for d in datasets}, str(datasets[0].FrameOfReferenceUID),
            str(datasets[0].SeriesInstanceUID))


def check_export(out: Path, saliency: np.ndarray, affine: np.ndarray, risk_at: dict[int, float],
                 modalities: list[str], source_files: list[Path], percentile: float = 99.0) -> dict[str, float]:
    """All the read-back checks of one export folder; returns the numbers for the report."""
    shape = tuple(int(v) for v in saliency.shape)
    source_sops, source_for, source_series = _source_uids(source_files)
    source0 = pydicom.dcmread(source_files[0], stop_before_pixels=True)

    # Parametric Map: highdicom reads it; the values on the source grid equal the map
    pm_ds = pydicom.dcmread(out / "saliency_pm.dcm")
    pm = hd.pm.ParametricMap.from_dataset(pm_ds)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert str(pm.FrameOfReferenceUID) == source_for
    rwvm = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(rwvm.RealWorldValueSlope), float(rwvm.RealWorldValueIntercept)
    values = pm_ds.pixel_array.astype(np.float64) * slope + intercept
    assert int(pm.NumberOfFrames) == sum(int(pydicom.dcmread(f, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
                                         for f in source_files)
    on_grid = _frames_on_grid(pm_ds, values, affine, shape)
    assert not np.isnan(on_grid).any(), "some voxels of the volume have no Parametric Map pixel"
    err = float(np.max(np.abs(on_grid - saliency)))
    peak = float(np.max(np.abs(saliency)))
    assert peak > 0
    assert err <= 1e-4 and err <= 1e-4 * peak, (err, peak)
    referenced = pm.ReferencedSeriesSequence[0]
    assert str(referenced.SeriesInstanceUID) == source_series
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == source_sops
    per_frame_sources = {str(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                         for g in pm.PerFrameFunctionalGroupsSequence}
    assert per_frame_sources == source_sops
    source_orientation = (source0.ImageOrientationPatient if "ImageOrientationPatient" in source0 else  # enhanced: shared group
                          source0.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    assert [float(v) for v in pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient] \
        == pytest.approx([float(v) for v in source_orientation], abs=1e-6)

    # Segmentation: the top region on the same grid
    seg = hd.seg.segread(out / "saliency_seg.dcm")
    assert str(seg.FrameOfReferenceUID) == source_for
    assert seg.SegmentationType == "BINARY"
    seg_grid = _frames_on_grid(seg, seg.pixel_array.astype(np.float64), affine, shape)
    magnitude = np.abs(saliency)
    threshold = np.percentile(magnitude[magnitude > 0], percentile)
    expected = (magnitude >= threshold) & (magnitude > 0)
    assert np.array_equal(np.nan_to_num(seg_grid, nan=0.0) > 0, expected)
    assert {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == source_sops

    # SR: the prediction, the model, the evidence
    sr = hd.sr.srread(out / "prediction_sr.dcm")
    items = list(sr.ContentSequence)
    nums = {str(i.ConceptNameCodeSequence[0].CodeValue): float(i.MeasuredValueSequence[0].NumericValue)
            for i in items if i.ValueType == "NUM"}
    assert nums == {f"RISK{d}D": pytest.approx(v, abs=1e-6) for d, v in risk_at.items()}
    texts = [(str(i.ConceptNameCodeSequence[0].CodeMeaning), str(i.TextValue)) for i in items if i.ValueType == "TEXT"]
    assert sorted(v for k, v in texts if k == "Input modality used") == sorted(modalities)
    names = dict(texts)
    assert "fusion" in names["Algorithm Name"] and "weights sha256:" in names["Algorithm Version"]
    assert "MODEL_CARD.md sha256:" in names["Model card reference"]
    assert {str(pm.SOPInstanceUID), str(seg.SOPInstanceUID)} | source_sops <= _evidence_sops(sr)
    images = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in items if i.ValueType == "IMAGE"}
    assert images == {str(pm.SOPInstanceUID), str(seg.SOPInstanceUID)}

    # identity: copied from the source, nothing added
    for obj in (pm, seg, sr):
        assert str(obj.StudyInstanceUID) == str(source0.StudyInstanceUID)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            assert str(obj.get(keyword, "")) == str(source0.get(keyword, "")), keyword

    # dciodvfy: no errors on any object and derived CT image (when installed; test_dciodvfy_reports_no_errors
    # shows the skip otherwise)
    if DCIODVFY is not None:
        checked = [out / "saliency_pm.dcm", out / "saliency_seg.dcm", out / "prediction_sr.dcm"]
        if (out / "CT").is_dir():
            checked += [source_files[0], source_files[-1]]
        for path in checked:
            assert _dciodvfy_errors(path) == [], path
    return {"max_abs_error": err, "peak": peak, "region_voxels": float(expected.sum())}


def _evidence_sops(sr: pydicom.Dataset) -> set[str]:
    uids: set[str] = set()
    for item in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in item.ReferencedSeriesSequence:
            uids |= {str(s.ReferencedSOPInstanceUID) for s in series.ReferencedSOPSequence}
    return uids


# --- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dcmexp") / "demo"
    proc = _cli("demo", str(out), "--n", "20", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def demo_exports(demo_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """Three demo cases through the concat demo model: predict, saliency, export."""
    from core.cohort import load_cohort
    from core.dicom_export import export_dicom, model_info, source_series_for
    from core.explain import attribute
    from core.registry import load_model

    model_dir = DEMO_MODELS / "concat"
    model = load_model(model_dir)
    cohort = load_cohort(demo_cohort)
    table = pd.read_csv(demo_cohort / "cohort.csv", dtype={"subject_id": str})
    ids = list(table.sort_values(["lesion", "subject_id"], ascending=[False, True])["subject_id"])[:N_CASES]
    cases: list[dict[str, object]] = []
    for sid in ids:
        inputs = model.case_inputs(cohort, sid)
        prediction = model.predict_case(inputs)
        attribution = attribute(model, inputs, "saliency")
        volume = cohort.load_volume(sid)
        assert volume is not None
        out = tmp_path_factory.mktemp("case") / "export"
        result = export_dicom(volume, attribution.map, prediction.risk_at, prediction.modalities_used,
                              model_info(model_dir), "saliency", out,
                              source=source_series_for(volume, out))
        cases.append({"sid": sid, "out": out, "map": np.asarray(attribution.map, dtype=np.float32),
                      "affine": volume.affine, "risk_at": dict(prediction.risk_at),
                      "modalities": list(prediction.modalities_used), "result": result})
    return cases


# --- tests -----------------------------------------------------------------------------------------------------

def test_three_demo_cases_read_back(demo_exports: list[dict[str, object]]) -> None:
    assert len(demo_exports) == N_CASES
    for case in demo_exports:
        out = case["out"]
        assert isinstance(out, Path)
        ct_files = sorted((out / "CT").glob("CT*.dcm"))
        saliency = case["map"]
        assert isinstance(saliency, np.ndarray)
        assert len(ct_files) == saliency.shape[0]
        numbers = check_export(out, saliency, case["affine"], case["risk_at"], case["modalities"],  # type: ignore[arg-type]
                               ct_files)
        assert numbers["region_voxels"] == case["result"].region_voxels  # type: ignore[union-attr]
        assert {"image", "ehr_events"} <= set(case["modalities"])  # type: ignore[arg-type]
        # the subject id appears in no written byte
        sid = str(case["sid"]).encode()
        for path in [*out.glob("*.dcm"), ct_files[0]]:
            assert sid not in path.read_bytes()


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not found (Debian package dicom3tools: apt-get install dicom3tools)")
def test_dciodvfy_reports_no_errors(demo_exports: list[dict[str, object]]) -> None:
    """dicom3tools' validator on every object of the demo exports and on derived CT images."""
    for case in demo_exports:
        out = case["out"]
        assert isinstance(out, Path)
        ct = sorted((out / "CT").glob("CT*.dcm"))
        for path in [out / "saliency_pm.dcm", out / "saliency_seg.dcm", out / "prediction_sr.dcm", ct[0], ct[-1]]:
            assert _dciodvfy_errors(path) == [], path


def test_derived_ct_series_reproduces_the_volume(demo_cohort: Path, demo_exports: list[dict[str, object]]) -> None:
    """The derived CT, loaded back by pydicom, is the Volume rounded to integer HU, on the Volume's geometry."""
    from core.cohort import load_cohort

    case = demo_exports[0]
    volume = load_cohort(demo_cohort).load_volume(str(case["sid"]))
    assert volume is not None
    files = sorted((case["out"] / "CT").glob("CT*.dcm"))  # type: ignore[operator]
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.Modality == "CT" and str(ds.PatientName) == "" and str(ds.PatientID) == ""
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu, np.rint(volume.hu[k]))
        expected_ipp = volume.affine[:3, :3] @ np.array([k, 0, 0]) + volume.affine[:3, 3]
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], expected_ipp, atol=1e-4)


def test_real_nifti_via_command_line(real_ct: Path, tmp_path: Path) -> None:
    """The shared real abdominal CT (NIfTI): derived series + PM + SEG + SR through the CLI, --json."""
    cohort = tmp_path / "cohort"
    (cohort / "studies").mkdir(parents=True)
    shutil.copyfile(real_ct, cohort / "studies" / "ct.nii.gz")  # into pytest's tmp folder, never into the repo
    (cohort / "cohort.csv").write_text(
        "subject_id,time,event,split,study\n"
        "r1,400,1,test,studies/ct.nii.gz\nr2,500,0,train,studies/ct.nii.gz\nr3,600,0,val,studies/ct.nii.gz\n")
    out, map_path = tmp_path / "out", tmp_path / "map.npy"
    # the abdominal CT is far outside the demo model's chest phantoms: refused unless asked, no file written
    refused = _cli("export-dicom", "--model", str(DEMO_MODELS / "image_only"), "--cohort", str(cohort),
                   "--subject", "r1", "--out", str(out))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert refused.stderr.startswith("error: --subject: got this subject's CT, is withheld from this model: it shows")
    assert "--allow-ood" in refused.stderr and "r1" not in refused.stderr and not (out.exists() and any(out.iterdir()))
    proc = _cli("export-dicom", "--model", str(DEMO_MODELS / "image_only"), "--cohort", str(cohort),
                "--subject", "r1", "--method", "saliency", "--out", str(out), "--save-map", str(map_path), "--json",
                "--allow-ood")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert any(w.startswith("The CT was read on request although it would be withheld") for w in report["warnings"])
    assert report["n_frames"] == 30 and report["n_derived_files"] == 30
    saliency = np.load(map_path)
    from core.cohort import load_cohort

    volume = load_cohort(cohort).load_volume("r1")
    assert volume is not None and saliency.shape == volume.shape == (30, 101, 122)
    risk_at = {int(k): float(v) for k, v in report["risk_at"].items()}
    assert set(risk_at) == {30, 365, 1825} and risk_at[30] <= risk_at[365] <= risk_at[1825]
    ct_files = sorted((out / "CT").glob("CT*.dcm"))
    check_export(out, saliency, volume.affine, risk_at, report["modalities_used"], ct_files)
    assert report["modalities_used"] == ["image"]
    sr = pydicom.dcmread(out / "prediction_sr.dcm")  # the caution travels with the risks into PACS
    comments = [it.TextValue for it in sr.ContentSequence
                if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert len(comments) == 1 and comments[0].startswith("The CT was read on request although it would be withheld")
    # the same export again refuses to overwrite
    again = _cli("export-dicom", "--model", str(DEMO_MODELS / "image_only"), "--cohort", str(cohort),
                 "--subject", "r1", "--out", str(out))
    assert again.returncode == 2 and again.stderr.startswith("error: --out:") and again.stderr.count("\n") == 1


def _export_random_map(volume: object, study_path: Path, out: Path, seed: int) -> tuple[object, np.ndarray, dict[int, float]]:
    """Export a random map of ``volume`` (loaded from ``study_path``) on its own DICOM source into ``out``."""
    from core.dicom_export import ModelInfo, export_dicom, source_series_for

    saliency = (np.random.default_rng(seed).standard_normal(volume.shape) * 1e-3).astype(np.float32)  # type: ignore[attr-defined]
    risk_at = {30: 0.05, 365: 0.25, 1825: 0.5}
    info = ModelInfo(name="test fusion, discrete head", version="core test; weights sha256:0", card="test/MODEL_CARD.md sha256:0",
                     device_serial="0")
    source = source_series_for(volume, out, study_path=study_path)  # type: ignore[arg-type]
    return export_dicom(volume, saliency, risk_at, ["image"], info, "saliency", out, source=source), saliency, risk_at  # type: ignore[arg-type]


@pytest.mark.parametrize("orientation", ["axial_rot180", "coronal"])
def test_dicom_source_series_is_referenced_not_derived(tmp_path: Path, orientation: str) -> None:
    """A DICOM study: the objects sit on its own instances (stored flipped or coronal), identity copied.

    (The factory's identified studies carry an OtherPatientIDsSequence without TypeOfPatientID, an error
    of the source that highdicom copies faithfully, so the de-identified variant is used here.)"""
    from core.cohort import load_cohort

    cohort = tmp_path / "cohort"
    written = write_series(cohort / "studies" / "s1", shape=(12, 40, 36), spacing_mm=(3.0, 2.0, 2.5),
                           orientation=orientation, identified=False)
    (cohort / "cohort.csv").write_text("subject_id,time,event,split,study\ns1,100,1,train,studies/s1\n")
    volume = load_cohort(cohort).load_volume("s1")
    assert volume is not None and volume.format == "dicom"
    out = tmp_path / "out"
    result, saliency, risk_at = _export_random_map(volume, cohort / "studies" / "s1", out, seed=0)
    assert result.derived_series == [] and not (out / "CT").exists()
    assert result.source_series_uid == written.series_uid
    numbers = check_export(out, saliency, volume.affine, risk_at, ["image"], list(written.paths))
    assert numbers["max_abs_error"] == 0.0  # float32 frames: stored exactly
    # the patient attributes are the source's (check_export compares them), none added
    pm = pydicom.dcmread(out / "saliency_pm.dcm", stop_before_pixels=True)
    first = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    assert {e.keyword for e in pm if e.tag.group == 0x0010} <= {e.keyword for e in first if e.tag.group == 0x0010}


def test_enhanced_ct_source_is_referenced_frame_by_frame(tmp_path: Path) -> None:
    """An enhanced (multi-frame) CT study: the objects refer to its one instance, every derived frame to the source
    frame at the same position (ReferencedFrameNumber), with nothing derived."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    from core.cohort import load_cohort

    written = write_series(tmp_path / "classic", shape=(9, 40, 36), spacing_mm=(3.0, 2.0, 2.5), orientation="coronal",
                           identified=False)
    enhanced = LegacyConvertedEnhancedCTImage([pydicom.dcmread(p) for p in written.paths],
                                              series_instance_uid=pydicom.uid.generate_uid(), series_number=7,
                                              sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    cohort = tmp_path / "cohort"
    (cohort / "studies").mkdir(parents=True)
    enhanced.save_as(cohort / "studies" / "s1.dcm")
    (cohort / "cohort.csv").write_text("subject_id,study\ns1,studies/s1.dcm\n")
    volume = load_cohort(cohort, for_training=False).load_volume("s1")
    assert volume is not None and np.array_equal(volume.hu, written.hu)
    out = tmp_path / "out"
    result, saliency, risk_at = _export_random_map(volume, cohort / "studies" / "s1.dcm", out, seed=1)
    assert result.derived_series == [] and not (out / "CT").exists() and result.n_frames == int(enhanced.NumberOfFrames)
    assert not any("could not be used" in w for w in result.warnings), result.warnings
    numbers = check_export(out, saliency, volume.affine, risk_at, ["image"], [cohort / "studies" / "s1.dcm"])
    assert numbers["max_abs_error"] == 0.0
    src_positions = [tuple(np.round(g.PlanePositionSequence[0].ImagePositionPatient, 3))
                     for g in enhanced.PerFrameFunctionalGroupsSequence]
    pm = pydicom.dcmread(out / "saliency_pm.dcm", stop_before_pixels=True)
    for group in pm.PerFrameFunctionalGroupsSequence:
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        position = tuple(np.round(group.PlanePositionSequence[0].ImagePositionPatient, 3))
        assert str(ref.ReferencedSOPInstanceUID) == str(enhanced.SOPInstanceUID)
        assert src_positions[int(ref.ReferencedFrameNumber) - 1] == position


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    from core.dicom_export import ModelInfo, export_dicom
    from core.dicom_export.objects import top_region
    from core.io.volume import Volume

    volume = Volume(hu=np.zeros((4, 8, 8), np.float32), spacing_mm=(2.0, 1.0, 1.0),
                    affine=_affine())
    info = ModelInfo(name="m", version="v", card="c", device_serial="0")
    with pytest.raises(InputError, match="saliency map"):
        export_dicom(volume, np.zeros((4, 8, 9), np.float32), {30: 0.1}, ["image"], info, "saliency", tmp_path / "a")
    with pytest.raises(InputError, match="no region"):
        top_region(np.zeros((4, 8, 8), np.float32))
    with pytest.raises(InputError, match="probability"):
        export_dicom(volume, np.ones((4, 8, 8), np.float32), {30: 1.5}, ["image"], info, "saliency", tmp_path / "b")
    proc = _cli("export-dicom", "--model", str(tmp_path / "nope"), "--cohort", str(tmp_path), "--subject", "x",
                "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --model:") and proc.stdout == ""
    proc = _cli("export-dicom", "--model", str(DEMO_MODELS / "concat"), "--cohort", str(tmp_path), "--subject", "x",
                "--method", "lime", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "error: --method: got lime" in proc.stderr


def _affine() -> np.ndarray:
    """Slices along +z (superior, 2 mm), rows along +y (posterior), cols along +x (left), 1 mm."""
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, 2.0]
    affine[:3, 1] = [0.0, 1.0, 0.0]
    affine[:3, 2] = [1.0, 0.0, 0.0]
    return affine


def test_uneven_dicom_series_falls_back_to_a_derived_series(tmp_path: Path) -> None:
    """Slices off the Volume's regular grid cannot carry the map: a derived series is used, with a warning, in the
    source's patient and study (it was a new study with no patient name or ID: PACS could not file the results)."""
    from core.cohort import load_cohort
    from core.dicom_export import ModelInfo, export_dicom, source_series_for

    cohort = tmp_path / "cohort"
    written = write_series(cohort / "studies" / "s1", shape=(10, 32, 32), z_jitter_mm={4: 0.8})
    src = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    assert str(src.PatientID) != ""
    (cohort / "cohort.csv").write_text("subject_id,time,event,split,study\ns1,100,1,train,studies/s1\n")
    volume = load_cohort(cohort).load_volume("s1")
    assert volume is not None
    out = tmp_path / "out"
    source = source_series_for(volume, out, study_path=cohort / "studies" / "s1")
    assert source.derived and "derived CT series" in source.warnings[0]
    saliency = np.linspace(0.0, 1.0, int(np.prod(volume.shape)), dtype=np.float32).reshape(volume.shape)
    info = ModelInfo(name="test fusion, discrete head", version="core test; weights sha256:0",
                     card="test/MODEL_CARD.md sha256:0", device_serial="0")
    result = export_dicom(volume, saliency, {30: 0.1, 365: 0.2, 1825: 0.2}, ["image"], info, "saliency", out,
                          source=source, times=[0.0, 30.0, 400.0])
    assert any("derived CT series" in w for w in result.warnings)
    # the model's curve ends at day 400: no 5-year risk goes into the SR (it held the day-400 risk), a comment says why
    assert result.risk_at == {30: 0.1, 365: 0.2}
    assert any(w.startswith("the model's curve ends at day 400") and "5-year" in w for w in result.warnings)
    sr = pydicom.dcmread(out / "prediction_sr.dcm")
    assert any(it.ValueType == "TEXT" and "gives no 5-year risk; left out of this report" in it.TextValue
               for it in sr.ContentSequence)
    numbers = check_export(out, saliency, volume.affine, {30: 0.1, 365: 0.2}, ["image"],
                           sorted((out / "CT").glob("CT*.dcm")))
    assert numbers["max_abs_error"] == 0.0
    assert numbers["region_voxels"] == int(np.ceil(0.01 * (saliency.size - 1)))  # the top 1 % of the ramp (0 excluded)
    for path in [*sorted((out / "CT").glob("CT*.dcm"))[:1], out / "prediction_sr.dcm", out / "saliency_pm.dcm"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.PatientName, ds.PatientID, ds.StudyInstanceUID) == (src.PatientName, src.PatientID,
                                                                        src.StudyInstanceUID), path.name
        assert ds.get("FrameOfReferenceUID") != src.FrameOfReferenceUID  # restacked: a grid of its own
    ct = pydicom.dcmread(sorted((out / "CT").glob("CT*.dcm"))[0], stop_before_pixels=True)
    assert ct.DerivationDescription.startswith("Restacked from the source DICOM series")


def test_tilted_source_series_gives_a_derived_series(tmp_path: Path) -> None:
    """A tilted-gantry series, shifted onto one grid when loaded: its own instances no longer lie on the volume's
    voxels, so the objects refer to a derived CT series written beside them, with a warning that says why."""
    from core.cohort import load_cohort

    cohort = tmp_path / "cohort"
    write_series(cohort / "studies" / "s1", shape=(8, 40, 36), spacing_mm=(3.0, 2.0, 2.5), inplane_step_mm=(0.0, 2.0),
                 identified=False)
    (cohort / "cohort.csv").write_text("subject_id,study\ns1,studies/s1\n")
    volume = load_cohort(cohort, for_training=False).load_volume("s1")
    assert volume is not None and any("gantry tilt" in w for w in volume.warnings)
    result, _, _ = _export_random_map(volume, cohort / "studies" / "s1", tmp_path / "out", seed=2)
    assert result.derived_series and (tmp_path / "out" / "CT").is_dir()
    assert any("could not be the source of the objects" in w and "regular grid" in w for w in result.warnings), \
        result.warnings


def test_repeated_acquisition_exports_onto_the_loaded_one(tmp_path: Path) -> None:
    """A series that repeats an acquisition at the same positions loads the larger acquisition; the objects refer
    to its instances only, not to the other acquisition's images at the same positions."""
    from core.cohort import load_cohort

    cohort = tmp_path / "cohort"
    folder = cohort / "studies" / "s1"
    uids = {"series_uid": pydicom.uid.generate_uid(), "study_uid": pydicom.uid.generate_uid(),
            "frame_of_reference_uid": pydicom.uid.generate_uid(), "identified": False, "shape": (8, 40, 36),
            "spacing_mm": (3.0, 2.0, 2.5)}
    write_series(folder, acquisition_number=1, seed=1, prefix="A", drop_slices=[7], **uids)
    loaded = write_series(folder, acquisition_number=2, seed=2, prefix="B", **uids)
    (cohort / "cohort.csv").write_text("subject_id,study\ns1,studies/s1\n")
    volume = load_cohort(cohort, for_training=False).load_volume("s1")
    assert volume is not None and volume.meta["acquisition"] == "2/" and np.array_equal(volume.hu, loaded.hu)
    result, saliency, risk_at = _export_random_map(volume, folder, tmp_path / "out", seed=3)
    assert result.derived_series == [] and result.n_frames == 8
    numbers = check_export(tmp_path / "out", saliency, volume.affine, risk_at, ["image"], list(loaded.paths))
    assert numbers["max_abs_error"] == 0.0


def test_a_source_without_patient_and_study_attributes_exports(tmp_path: Path) -> None:
    """A series whose files leave out PatientID, PatientName, StudyDate and the like (type 2 in the objects derived
    from them): highdicom read them off the source and the export stopped with an internal AttributeError."""
    from core.cohort import load_cohort

    cohort = tmp_path / "cohort"
    written = write_series(cohort / "studies" / "s1", shape=(8, 32, 32), identified=False)
    gone = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
            "AccessionNumber", "ReferringPhysicianName")
    for path in written.paths:
        ds = pydicom.dcmread(path)
        for keyword in gone:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
    (cohort / "cohort.csv").write_text("subject_id,time,event,split,study\ns1,100,1,train,studies/s1\n")
    volume = load_cohort(cohort).load_volume("s1")
    out = tmp_path / "out"
    result, saliency, risk_at = _export_random_map(volume, cohort / "studies" / "s1", out, seed=1)
    assert result.derived_series == [] and result.source_series_uid == written.series_uid
    pm = pydicom.dcmread(out / "saliency_pm.dcm", stop_before_pixels=True)
    assert (pm.PatientID, str(pm.PatientName), pm.StudyDate) == ("", "", "")
    if shutil.which("dciodvfy"):
        for name in ("saliency_pm.dcm", "saliency_seg.dcm", "prediction_sr.dcm"):
            assert _dciodvfy_errors(out / name) == [], name


def test_the_export_zip_is_written_beside_its_folder_not_into_it(tmp_path: Path) -> None:
    """The Export page's zip of a full-resolution export (hundreds of MB) goes to a file, not to bytes in memory."""
    import zipfile

    from core.dicom_export import zip_folder

    folder = tmp_path / "objects"
    (folder / "CT").mkdir(parents=True)
    (folder / "saliency_pm.dcm").write_bytes(b"pm" * 1000)
    (folder / "CT" / "1.dcm").write_bytes(b"ct")
    out = zip_folder(folder, tmp_path / "dicom_case01.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["CT/1.dcm", "saliency_pm.dcm"]
        assert zf.read("saliency_pm.dcm") == b"pm" * 1000
    with pytest.raises(ValueError, match="inside"):  # it would zip itself
        zip_folder(folder, folder / "CT" / "again.zip")


def test_the_export_pages_job_zips_the_stored_map_of_a_case(demo_cohort: Path, tmp_path: Path) -> None:
    """The Export page's DICOM objects are made by a job (its own process for a large CT) from the map kept in its
    store: the zip holds the Parametric Map of that map; a map trimmed from its store meanwhile is a one-line error."""
    import io
    import zipfile

    from core.app import attribution_volume as AV
    from core.app.export_jobs import dicom_export_job
    from core.cohort import load_cohort
    from core.jobs import JobContext
    from core.registry import load_model

    model_dir = DEMO_MODELS / "concat"
    model = load_model(model_dir)
    cohort = load_cohort(demo_cohort)
    sid = cohort.ids()[0]
    inputs = model.case_inputs(cohort, sid)
    pred = model.predict_case(inputs)
    volume = cohort.load_volume(sid)
    values = np.zeros(volume.shape, np.float32)
    values[volume.shape[0] // 2, 10:20, 10:20] = 2.5
    store = AV.MapStore(str(tmp_path / "maps"))
    assert store.cache().put("k1", values)
    seen: list[str] = []
    ctx = JobContext(lambda f, m: seen.append(m), lambda: False)
    args = (pred.risk_at, list(pred.modalities_used), pred.times, str(model_dir), "saliency")
    path, summary = dicom_export_job(ctx, volume, store, "k1", None, *args, str(tmp_path / "out"), "dicom_case01.zip",
                                     str(cohort.study_path(sid)))
    assert Path(path) == tmp_path / "out" / "dicom_case01.zip" and not (tmp_path / "out" / "objects").exists()
    assert summary.startswith(f"{volume.shape[0]} frames; segment of 100 voxels")
    assert seen[0] == "reading the map" and seen[-1] == "zipping"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pm = pydicom.dcmread(io.BytesIO(zf.read("saliency_pm.dcm")))
    assert {"saliency_pm.dcm", "saliency_seg.dcm", "prediction_sr.dcm"} <= set(names)
    assert np.isclose(float(pm.pixel_array.max()), 2.5, rtol=1e-4)  # the stored map's value (32-bit float, identity)
    with pytest.raises(InputError, match="is no longer kept"):
        dicom_export_job(ctx, volume, store, "gone", None, *args, str(tmp_path / "out2"), "x.zip", None)


def test_the_export_pages_nifti_job_writes_the_stored_map_on_the_studys_own_grid(demo_cohort: Path,
                                                                                  tmp_path: Path) -> None:
    """The map as NIfTI was written in the server's page run (half a gigabyte of copies and 5 s at 512 x 512 x 150);
    a job writes it now (its own process for a large CT), from the map kept in its store, voxel for voxel on the NIfTI
    study's own array and affine."""
    import nibabel as nib

    from core.app import attribution_volume as AV
    from core.app.export_jobs import nifti_map_job
    from core.cohort import load_cohort
    from core.jobs import JobContext

    cohort = load_cohort(demo_cohort)
    sid = cohort.ids()[0]
    volume = cohort.load_volume(sid)
    values = np.zeros(volume.shape, np.float32)
    values[volume.shape[0] // 2, 10:20, 10:20] = -2.5  # signed, as computed
    store = AV.MapStore(str(tmp_path / "maps"))
    assert store.cache().put("k1", values)
    seen: list[str] = []
    ctx = JobContext(lambda f, m: seen.append(m), lambda: False)
    (tmp_path / "out").mkdir()
    path = Path(nifti_map_job(ctx, volume, store, "k1", None, str(tmp_path / "out"), "saliency-map_demo01.nii.gz"))
    assert path == tmp_path / "out" / "saliency-map_demo01.nii.gz" and seen[0] == "reading the map"
    study = nib.load(str(cohort.study_path(sid)))
    written = nib.load(str(path))
    data = np.asarray(written.dataobj)
    assert data.dtype == np.float32 and data.shape == study.shape and np.allclose(written.affine, study.affine)
    assert int((data != 0).sum()) == 100 and float(data.min()) == -2.5
    with pytest.raises(InputError, match="is no longer kept"):
        nifti_map_job(ctx, volume, store, "gone", None, str(tmp_path / "out"), "x.nii.gz")
