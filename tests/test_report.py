"""core.report.case_report_pdf: a valid one-page PDF with no identifying strings."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import InputError
from tests.test_explain import build_case


def pdf_text(data: bytes) -> str:
    """The page's text: matplotlib writes kerned ``[ (a) -0.5 (b) ] TJ`` arrays (uncompressed in our reports)."""
    parts = []
    for arr in re.findall(rb"\[(.*?)\]\s*TJ", data, flags=re.S):
        parts.append(b"".join(re.findall(rb"\(((?:[^()\\]|\\.)*)\)", arr)).decode("latin-1"))
    for s in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", data):
        parts.append(s.decode("latin-1"))
    return re.sub(r"\\([()\\])", r"\1", "\n".join(parts))  # PDF string escapes


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from core.cohort import load_cohort
    from core.evaluate import kaplan_meier
    from core.explain import attribute, event_attributions
    from core.registry import load_model

    cohort_dir, model_dir = build_case(tmp_path_factory)
    cohort = load_cohort(cohort_dir)
    model = load_model(model_dir)
    sid = cohort.ids("test")[1]
    inputs = model.case_inputs(cohort, sid)
    vol = cohort.load_volume(sid)
    return {
        "sid": sid, "model": model, "inputs": inputs, "prediction": model.predict_case(inputs),
        "volume_hu": vol.hu, "spacing_mm": vol.spacing_mm,
        "attribution": attribute(model, inputs, "saliency", 365.0, None, with_events=False),
        "events_table": event_attributions(model, inputs, 365.0, n_steps=8),
        "cohort_km": kaplan_meier(cohort.table["time"].to_numpy(), cohort.table["event"].to_numpy()),
    }


def _kwargs(parts: dict[str, Any]) -> dict[str, Any]:
    from core.report import card_summary

    return {k: v for k, v in parts.items() if k != "sid"} | {
        "model_card_summary": card_summary(parts["model"].card), "case_label": "case 3"}


def test_case_report_is_a_one_page_pdf_without_identifiers(parts: dict[str, Any], tmp_path: Path) -> None:
    from core.report import case_report_pdf

    out = case_report_pdf(tmp_path / "report.pdf", **_kwargs(parts))
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1
    text = pdf_text(data)
    for expected in ("Case report: case 3", "Research use only, not a medical device", "Predicted risk",
                     "cohort Kaplan-Meier", "Top timeline events", "Model card", "Harrell"):
        assert expected in text, expected
    assert re.search(r"1 year:\s+\d+\.\d %", text)
    assert parts["sid"] not in text and parts["sid"].encode() not in data
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text)  # no dates: event times are days before the index
    n = parts["volume_hu"].shape[0]
    shown = [int(k) - 1 for k in re.findall(rf"axial slice (\d+)/{n} \(", text)]  # 1-based, as in the viewer
    assert shown and shown[0] == parts["attribution"].top_slices[0][0]  # the map's strongest slice first
    z_mm = float(parts["spacing_mm"][0])
    assert all(abs(a - b) * z_mm >= 10.0 for a, b in itertools.combinations(shown, 2)), (shown, z_mm)
    info = re.findall(rb"/(Author|Creator|Producer|Subject|Keywords|CreationDate)\b", data)
    assert info == []
    assert "conformal" not in text  # no bound given: none drawn
    assert "risk group" not in text
    group = (parts["cohort_km"], "high-risk group (53 patients)")  # Case review's green curve
    bounded = pdf_text(case_report_pdf(tmp_path / "bound.pdf", **_kwargs(parts), conformal_bound=(212.0, 1825.0, 0.9),
                                       group_km=group).read_bytes())  # Case review's conformal bound, on the curve
    assert "90 % conformal bound: T >= 212 d" in bounded and "(conformal): >= 212 d" in bounded
    assert "Kaplan-Meier, high-risk group (53 patients)" in bounded


def test_case_report_rejects_identifying_labels_and_bad_names(parts: dict[str, Any], tmp_path: Path) -> None:
    from core.report import case_report_pdf

    kw = _kwargs(parts)
    with pytest.raises(InputError, match="case_label: got contains the subject id"):
        case_report_pdf(tmp_path / "r.pdf", **(kw | {"case_label": f"patient {parts['sid']}"}))
    with pytest.raises(InputError, match="out: got r.png, is not a .pdf file"):
        case_report_pdf(tmp_path / "r.png", **kw)


def test_case_report_without_ct_or_events(parts: dict[str, Any], tmp_path: Path) -> None:
    from core.report import case_report_pdf

    kw = _kwargs(parts) | {"volume_hu": None, "attribution": None, "events_table": None, "cohort_km": None}
    text = pdf_text(case_report_pdf(tmp_path / "r.pdf", **kw).read_bytes())
    assert "No CT attribution for this case." in text and "No timeline events used" in text
    assert np.isfinite(parts["prediction"].survival).all()


# ------------------------------------------------ warnings, strategies and layout (issue 18)

PDFTOTEXT = shutil.which("pdftotext")


def words(pdf: Path, page: int = 1) -> list[tuple[float, float, float, float, str]]:
    """(xMin, yMin, xMax, yMax, word) of every word on ``page`` (from 1; poppler's pdftotext -bbox; y grows
    downwards)."""
    if PDFTOTEXT is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    html = subprocess.run([PDFTOTEXT, "-bbox", "-f", str(page), "-l", str(page), str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout
    out = []
    for m in re.finditer(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', html):
        out.append((float(m[1]), float(m[2]), float(m[3]), float(m[4]), m[5]))
    return out


def plain_text(pdf: Path) -> str:
    """The page's text as pdftotext reads it, lines joined with single spaces (wrapped warnings read whole)."""
    if PDFTOTEXT is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    text = subprocess.run([PDFTOTEXT, str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    return " ".join(text.split())


def overlaps(ws: list[tuple[float, float, float, float, str]]) -> list[tuple[str, str]]:
    """Pairs of words whose glyph cores cross: poppler's boxes span the font's full ascent and descent (about
    twice the size), so each box is cut to its middle 30 % in height before comparing."""
    core = []
    for x0, y0, x1, y1, w in ws:
        mid, half = (y0 + y1) / 2, 0.15 * (y1 - y0)
        core.append((x0 + 0.3, mid - half, x1 - 0.3, mid + half, w))
    bad = []
    for i, a in enumerate(core):
        for b in core[i + 1:]:
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                bad.append((a[4], b[4]))
    return bad


def test_report_carries_every_warning_and_the_strategy_table_without_overlap(parts: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    from core.app.case_warnings import disagreement, strategy_risk_table
    from core.report import case_report_pdf

    p = parts["prediction"]
    flat = np.full_like(p.survival, 0.45)
    table = strategy_risk_table({"cross_attention": (p.times, p.survival), "other": (p.times, flat),
                                 "low": (p.times, np.full_like(p.survival, 0.05))}, current="cross_attention")
    flag = disagreement(table)
    top = float(table["survival 5 years"].max())
    name = str(table.loc[table["survival 5 years"].idxmax(), "strategy"])
    assert top >= 0.45 and flag is not None and f"from {100 * (1 - top):.1f} % ({name}) to 95.0 % (low)" in flag
    assert f", {100 * (top - 0.05):.1f} percentage points apart (flagged above 20)" in flag
    # the case against a flat 0.45: flagged exactly when their 5-year survival lies more than 0.2 apart
    pair = table[table["strategy"] != "low"]
    case = float(pair.loc[pair["strategy"] == "cross_attention", "survival 5 years"].iloc[0])
    assert (disagreement(pair) is not None) == (abs(case - 0.45) > 0.2), (case, disagreement(pair))
    warnings = ["First warning: the image part is masked out for this case.", "A long warning: " + " ".join(f"part{i}" for i in range(70)) + " end.",
                flag]
    long_card = "\n".join(f"- card line {i}: " + "metric " * 12 for i in range(40)) + "\nlast card line"
    out = case_report_pdf(tmp_path / "r.pdf", **(_kwargs(parts) | {
        "warnings": warnings, "strategy_risks": table, "strategies_skipped": ["ehr_only reads only the EHR; the case has none"],
        "model_card_summary": long_card}))
    text = plain_text(out)
    for w in warnings:
        assert " ".join(w.split()) in text, w[:40]
    assert "Warnings (3, as shown on the case review page)" in text
    assert "* cross_attention" in text and "not scored: ehr_only reads only the EHR; the case has none" in text
    # the card was cut to the room left on page 1 (not run into the footer) and printed whole on page 2
    assert "more lines: the whole block is on page 2)" in text and "Model card (continued)" not in text
    assert "card line 39" in text and "last card line" in text
    page2 = words(out, 2)
    assert page2 and overlaps(page2) == [] and [w[4] for w in page2[:3]] == ["Case", "report:", "case"]
    ws = words(out)
    footer = [w for w in ws if w[4] == "Times"]
    assert footer, "footer missing"
    mid = [(w[1] + w[3]) / 2 for w in ws]
    foot = (footer[0][1] + footer[0][3]) / 2
    above = [m for m, w in zip(mid, ws) if m < foot - 2]
    assert len(above) == len(ws) - len([m for m in mid if abs(m - foot) <= 2])  # nothing on or below the footer
    assert foot - max(above) >= 12, "a block runs into the footer"  # at least a line of clear space
    assert overlaps(ws) == []
    assert len(re.findall(rb"/Type\s*/Page\b", out.read_bytes())) == 2


def test_report_of_the_real_abdominal_ct_carries_its_coverage_warning(parts: dict[str, Any], real_ct: Path,
                                                                      tmp_path: Path) -> None:
    """The shared real abdominal CT, scored as an upload: the warnings the page gathers reach the PDF's text."""
    from core.app.case_warnings import gather_case_warnings
    from core.cohort import UPLOAD_SUBJECT, uploaded_case_cohort
    from core.io.study import load_study
    from core.preprocess.lung import lung_coverage_warning
    from core.report import case_report_pdf

    model = parts["model"]
    volume = load_study(real_ct)
    cohort = uploaded_case_cohort(tmp_path / "case", volume=volume, events=None)
    inputs = model.case_inputs(cohort, UPLOAD_SUBJECT)
    pred = model.predict_case(inputs)
    coverage = lung_coverage_warning(volume.hu, volume.spacing_mm)
    assert coverage is not None and "may not cover the chest" in coverage
    notes = gather_case_warnings(model_name="cross_attention", has_image=True, has_ehr=True,
                                 modalities_used=pred.modalities_used, ct_present=True, coverage=coverage,
                                 prediction_warnings=getattr(pred, "warnings", None) or [])
    kinds = [w.kind for w in notes]
    assert kinds[0] == "modality" and "No EHR data" in notes[0].text and "coverage" in kinds
    out = case_report_pdf(tmp_path / "real.pdf", **(_kwargs(parts) | {
        "inputs": inputs, "prediction": pred, "volume_hu": volume.hu, "spacing_mm": volume.spacing_mm,
        "attribution": None, "events_table": None, "warnings": [w.text for w in notes]}))
    text = plain_text(out)
    assert "may not cover the chest" in text and "do not rely on the image part of this prediction" in text
    assert "No EHR data" in text
    assert overlaps(words(out)) == []


def test_report_of_a_withheld_ct_draws_no_curve_and_says_why(parts: dict[str, Any], real_ct: Path,
                                                             tmp_path: Path) -> None:
    """The real abdominal CT under a model trained on chest phantoms: the CT is withheld, the model reads nothing
    else of the case, and the report says so instead of printing risks."""
    from core.app.case_warnings import gather_case_warnings
    from core.cohort import UPLOAD_SUBJECT, uploaded_case_cohort
    from core.io.study import load_study
    from core.predict import gated_inputs, image_read
    from core.report import case_report_pdf

    model = parts["model"]
    volume = load_study(real_ct)
    cohort = uploaded_case_cohort(tmp_path / "case", volume=volume, events=None)
    read = image_read(model, volume)
    assert read.withheld is not None and "soft tissue" in read.withheld
    inputs = gated_inputs(model.case_inputs(cohort, UPLOAD_SUBJECT), read)
    assert inputs.image is None and float(inputs.image_mask.sum()) == 0.0
    pred = model.predict_case(inputs)
    assert pred.modalities_used == []
    notes = gather_case_warnings(model_name="cross_attention", has_image=True, has_ehr=True,
                                 modalities_used=pred.modalities_used, ct_present=True,
                                 prediction_warnings=list(read.warnings), image_withheld=read.note("cross_attention"))
    assert [w.kind for w in notes][:3] == ["withheld", "modality", "prediction"]
    assert "cannot read this CT (other anatomy or another scale than its training studies); the case has no EHR" in notes[1].text
    out = case_report_pdf(tmp_path / "withheld.pdf", **(_kwargs(parts) | {
        "inputs": inputs, "prediction": pred, "volume_hu": volume.hu, "spacing_mm": volume.spacing_mm,
        "attribution": None, "events_table": None, "warnings": [w.text for w in notes]}))
    text = plain_text(out)
    assert "The CT is withheld from cross_attention" in text and "No curve for this case" in text
    assert "Predicted risk" in text and text.count("not scored") == 3  # one per horizon, no percentage
    assert overlaps(words(out)) == []


def test_sanity_result_of_a_method_is_run_saved_and_read_back(parts: dict[str, Any], tmp_path: Path) -> None:
    """The randomisation check the page runs in the background (pages/_review.run_sanity) is saved beside the
    model and read back with the model card's result; a failing method is then named in the case warnings."""
    import dataclasses

    from core.app.case_warnings import gather_case_warnings, sanity_from_card
    from pages import _review

    model = parts["model"]
    folder = tmp_path / "model"
    shutil.copytree(model.model_dir, folder)
    copy = dataclasses.replace(model, model_dir=folder)
    steps: list[tuple[float, str]] = []
    ctx = type("Ctx", (), {"progress": lambda self, f, label: steps.append((f, label))})()
    result = _review.run_sanity(ctx, copy, parts["inputs"], "gradcam", 365.0)
    assert -1.0 <= result.final_spearman <= 1.0 and steps[-1][0] == 1.0
    known = _review.method_sanity(copy)
    assert known["gradcam"].final_spearman == pytest.approx(result.final_spearman)
    assert set(sanity_from_card(model.card)) <= set(known)  # the card's own result is kept beside it
    failing = dataclasses.replace(result, final_spearman=0.9)
    notes = gather_case_warnings(model_name="m", has_image=True, has_ehr=True, modalities_used=["image", "ehr_events"],
                                 ct_present=True, sanity=failing)
    assert [w.kind for w in notes] == ["sanity"] and "FAILS the model-randomisation check" in notes[0].text
    assert "Spearman 0.90" in notes[0].text


def test_report_carries_the_outcome_removed_from_a_real_mimic_timeline(parts: dict[str, Any], real_meds: Path,
                                                                       tmp_path: Path) -> None:
    """A real MIMIC-IV demo timeline that ends in MEDS_DEATH: the case warnings say the outcome was removed and
    how many events after the index date were not used, and the report prints it."""
    from core.app.case_warnings import gather_case_warnings, timeline_messages
    from core.io.timeline import default_index_time, read_timeline
    from core.report import case_report_pdf

    frame = read_timeline(real_meds)
    dead = frame.loc[frame["code"] == "MEDS_DEATH", "subject_id"].astype(str).iloc[0]
    events = frame[frame["subject_id"].astype(str) == dead].sort_values("time", kind="stable")
    index_time, _ = default_index_time(events)
    after = int(((events["time"] > index_time) & (events["code"] != "MEDS_DEATH")).sum())
    messages = timeline_messages(events, index_time)
    assert messages[0].startswith("The timeline records the outcome (MEDS_DEATH): 1 outcome event(s) removed")
    assert (after == 0 and len(messages) == 1) or messages[1] == f"{after} timeline event(s) after the index date were not used."
    notes = gather_case_warnings(model_name="cross_attention", has_image=True, has_ehr=True,
                                 modalities_used=["ehr_events"], ct_present=False, timeline=messages)
    out = case_report_pdf(tmp_path / "mimic.pdf", **(_kwargs(parts) | {"warnings": [w.text for w in notes]}))
    text = plain_text(out)
    assert "The timeline records the outcome (MEDS_DEATH)" in text and "No CT study for this case" in text


def test_report_says_how_a_tilted_ct_was_read(parts: dict[str, Any], tmp_path: Path) -> None:
    """A CT whose loader shifted tilted slices onto one grid, from a folder with a stray file: the case warnings
    (and the report) say how the voxels were read, not which files were ignored; a model that reads no image,
    or a case without the CT, gets no such note."""
    from core.app.case_warnings import gather_case_warnings
    from core.io.study import load_study
    from core.report import case_report_pdf
    from tests.dicom_factory import write_series

    written = write_series(tmp_path / "ct", shape=(8, 32, 32), inplane_step_mm=(0.0, 0.75), identified=False)
    (written.folder / "README.txt").write_text("not DICOM")
    volume = load_study(written.folder)
    assert any(w.startswith("ignored files") for w in volume.warnings)
    common = dict(model_name="cross_attention", has_ehr=True, modalities_used=["image"])
    notes = gather_case_warnings(has_image=True, ct_present=True, study=volume.warnings, **common)
    study = [w.text for w in notes if w.kind == "study"]
    assert len(study) == 1 and study[0].startswith("How this CT was read: gantry tilt: the slice positions step 16.7 deg")
    assert not any("ignored files" in w.text for w in notes)
    assert not any(w.kind == "study" for w in gather_case_warnings(has_image=False, ct_present=True,
                                                                   study=volume.warnings, **common))
    out = case_report_pdf(tmp_path / "tilt.pdf", **(_kwargs(parts) | {"warnings": [w.text for w in notes]}))
    assert "How this CT was read: gantry tilt" in " ".join(plain_text(out).split())


def test_report_prints_the_clinical_values_the_model_read(parts: dict[str, Any], tmp_path: Path) -> None:
    """The report lists the curated features the model read for the case (an uploaded case's clinical values, or a
    features.csv row); a value the model does not read (an MRN) is not printed."""
    from core.report import case_report_pdf

    names = parts["model"].config.ehr.curated_features
    assert len(names) >= 3
    values = {names[0]: 67.33, names[1]: 1.0, "mrn": 81234567.0}
    text = pdf_text(case_report_pdf(tmp_path / "values.pdf", **(_kwargs(parts) | {"clinical_values": values})).read_bytes())
    assert f"Clinical values read (2 of {len(names)}; the others as the training mean)" in text
    assert f"{names[0]} 67.33, {names[1]} 1" in text and "81234567" not in text and "mrn" not in text
    assert f"Clinical values read (0 of {len(names)}" in pdf_text(case_report_pdf(tmp_path / "none.pdf", **_kwargs(parts)).read_bytes())


def test_a_ct_taken_after_the_index_date_or_long_before_it_is_named_in_the_report(parts: dict[str, Any],
                                                                                  tmp_path: Path) -> None:
    """A DICOM study's StudyDate against the case's index date: a scan after it shows what came later (the risk
    would read the future), one more than 90 days before it may no longer show the patient then; the case warnings
    and the report say so, in one line each. Same day, or a NIfTI without a date: nothing."""
    import pandas as pd

    from core.app.case_warnings import gather_case_warnings
    from core.io.study_date import scan_date_note
    from core.io.study import load_study
    from core.report import case_report_pdf
    from tests.dicom_factory import STUDY_DATE, write_series

    volume = load_study(write_series(tmp_path / "ct", shape=(8, 32, 32), identified=True).folder)  # a dated study
    assert volume.study_date == STUDY_DATE == "20240917"
    before = scan_date_note(volume.study_date, pd.Timestamp("2024-09-10 23:59:59"))
    assert before == ("The index date 2024-09-10 is 7 days before the CT was taken (2024-09-17): the CT shows the "
                      "patient after the index date, so the risk reads what came later. Set the index date to the "
                      "scan's date or later.")
    old = scan_date_note(volume.study_date, pd.Timestamp("2025-03-01"))
    assert old is not None and old.startswith("The CT was taken 165 days before the index date 2025-03-01 (2024-09-17)")
    assert scan_date_note(volume.study_date, pd.Timestamp("2024-09-17 23:59:59")) is None
    assert scan_date_note(volume.study_date, pd.Timestamp("2024-12-01")) is None  # 75 days: within 90
    assert scan_date_note("", pd.Timestamp("2024-09-10")) is None  # a NIfTI carries no study date
    notes = gather_case_warnings(model_name="cross_attention", has_image=True, has_ehr=True,
                                 modalities_used=["image", "ehr_events"], ct_present=True, timeline=[before])
    assert [w.kind for w in notes] == ["timeline"]
    text = plain_text(case_report_pdf(tmp_path / "dated.pdf", **(_kwargs(parts) | {"warnings": [w.text for w in notes]})))
    assert "7 days before the CT was taken (2024-09-17)" in " ".join(text.split())
