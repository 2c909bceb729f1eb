"""A study whose DICOM still carries PHI, explained and exported: no identifying string in any output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from tests.dicom_factory import PHI_STRINGS, STUDY_DATE, write_series
from tests.test_explain import build_case


@pytest.fixture(scope="module")
def phi_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The tiny demo cohort with one test subject's CT replaced by an identified DICOM series of the same voxels."""
    from core.io.study import load_study

    cohort_dir, model_dir = build_case(tmp_path_factory)
    root = tmp_path_factory.mktemp("phi") / "cohort"
    shutil.copytree(cohort_dir, root)
    table = pd.read_csv(root / "cohort.csv", dtype={"subject_id": str})
    sid = str(table.loc[table["split"] == "test", "subject_id"].iloc[0])
    vol = load_study(root / table.loc[table["subject_id"] == sid, "study"].iloc[0])
    write_series(root / "studies" / "dicom_case", np.round(vol.hu), spacing_mm=vol.spacing_mm, identified=True)
    table.loc[table["subject_id"] == sid, "study"] = "studies/dicom_case"
    table.to_csv(root / "cohort.csv", index=False)
    loaded = load_study(root / "studies" / "dicom_case")
    assert loaded.phi, "the factory study must carry PHI for this test to mean anything"
    np.testing.assert_array_equal(loaded.hu, np.round(vol.hu))
    return root, model_dir, sid


def _assert_clean(data: bytes, where: str) -> None:
    for s in (*PHI_STRINGS, STUDY_DATE):
        for variant in {s, s.upper(), s.replace("^", " ")}:
            assert variant.encode() not in data, f"{variant!r} found in {where}"


@pytest.mark.parametrize("suffix", (".png", ".svg", ".pdf"))
def test_explained_phi_study_exports_nothing_identifying(phi_cohort: tuple[Path, Path, str], tmp_path: Path,
                                                         suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    cohort, model, sid = phi_cohort
    out = tmp_path / f"case_1{suffix}"
    npy = tmp_path / ("case_1_map.nii" if suffix == ".pdf" else "case_1_map.npy")  # .nii: its header is scanned raw
    rc = main(["explain", "--model", str(model), "--cohort", str(cohort), "--subject", sid, "--method", "saliency",
               "--out", str(out), "--json", "--save-map", str(npy)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result["out"] == str(out) and len(result["top_slices"]) == 5
    for path in tmp_path.rglob("*"):
        _assert_clean(path.name.encode(), f"file name {path.name}")
        _assert_clean(path.read_bytes(), path.name)
    _assert_clean((captured.out + captured.err).encode(), "command output")
    assert sid.encode() not in out.read_bytes()


def test_case_report_of_phi_study_has_nothing_identifying(phi_cohort: tuple[Path, Path, str], tmp_path: Path) -> None:
    from core.cohort import load_cohort
    from core.evaluate import kaplan_meier
    from core.explain import attribute, event_attributions
    from core.registry import load_model
    from core.report import card_summary, case_report_pdf

    cohort_dir, model_dir, sid = phi_cohort
    cohort, model = load_cohort(cohort_dir), load_model(model_dir)
    inputs = model.case_inputs(cohort, sid)
    vol = cohort.load_volume(sid)
    assert vol is not None and vol.format == "dicom" and vol.phi
    out = case_report_pdf(
        tmp_path / "report.pdf", model=model, inputs=inputs, prediction=model.predict_case(inputs), volume_hu=vol.hu,
        spacing_mm=vol.spacing_mm, attribution=attribute(model, inputs, "gradcam", 365.0, None, with_events=False),
        events_table=event_attributions(model, inputs, 365.0, n_steps=8),
        cohort_km=kaplan_meier(cohort.table["time"].to_numpy(), cohort.table["event"].to_numpy()),
        model_card_summary=card_summary(model.card), case_label="case 1")
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    _assert_clean(data, "report.pdf")
    assert sid.encode() not in data


def test_case_report_redacts_timeline_text_outside_the_model_vocabulary(phi_cohort: tuple[Path, Path, str],
                                                                      tmp_path: Path) -> None:
    """A timeline code the model never learned (free text that could hold a name) is redacted in the PDF."""
    import subprocess

    from core.cohort import load_cohort
    from core.explain import event_attributions
    from core.registry import load_model
    from core.report import card_summary, case_report_pdf

    cohort_dir, model_dir, sid = phi_cohort
    cohort, model = load_cohort(cohort_dir), load_model(model_dir)
    inputs = model.case_inputs(cohort, sid)
    table = event_attributions(model, inputs, 365.0, n_steps=4)
    if not len(table):
        pytest.skip("the fixture model reads no timeline events")
    table.loc[table.index[0], "code"] = "NOTE//seen by Dr Quixotewright"  # not in the vocabulary
    table.loc[table.index[0], "score"] = 1e9  # the top event, so it would be printed
    out = case_report_pdf(tmp_path / "r.pdf", model=model, inputs=inputs, prediction=model.predict_case(inputs),
                          volume_hu=None, spacing_mm=None, attribution=None, events_table=table, cohort_km=None,
                          model_card_summary=card_summary(model.card), case_label="case 1")
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        pytest.skip("pdftotext (Debian poppler-utils) is needed to read the PDF's text")
    text = subprocess.run([pdftotext, str(out), "-"], capture_output=True, text=True).stdout
    assert "Top timeline events" in text  # the text layer is readable
    assert "Quixotewright" not in text and "[redacted]" in text
