"""core.report.case_report_pdf: a valid one-page PDF with no identifying strings."""

from __future__ import annotations

import re
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
    top = [i for i, _ in parts["attribution"].top_slices[:3]]
    assert all(f"slice {k} (" in text for k in top)
    info = re.findall(rb"/(Author|Creator|Producer|Subject|Keywords|CreationDate)\b", data)
    assert info == []


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
