"""core.validation_report: an external validation as a PDF for a committee, from the result in memory or read back
from JSON; aggregate numbers only, flowing over pages."""

from __future__ import annotations

import copy
import json
import re

import pytest

from core.errors import InputError
from tests.test_report import pdf_text


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], list[str]]:
    """The shipped ehr_only validated on 80 new patients (every patient, three risk groups, per sex), beside
    image_only, which reads nothing of a cohort without CT; and the cohort's subject ids."""
    import pandas as pd

    from core.app.demo_install import SHIPPED_MODELS
    from core.demo import write_demo_cohort
    from core.evaluation import ALL_SPLITS, evaluate_model

    src = write_demo_cohort(tmp_path_factory.mktemp("site") / "site", n=80, seed=21, volumes=False)
    res = {"ehr_only": evaluate_model(SHIPPED_MODELS / "ehr_only", src, split=ALL_SPLITS, risk_groups=3,
                                      keep_risk=True, subgroup="sex_female", n_boot=50),
           "image_only": {"error": "model: got image_only, read nothing of any of the 80 subjects evaluated"}}
    return res, pd.read_csv(src / "cohort.csv")["subject_id"].astype(str).tolist()


def test_the_report_holds_the_metrics_groups_and_other_models_and_no_patient(
        validation: tuple[dict[str, dict], list[str]]) -> None:
    from core.evaluation import json_plain
    from core.validation_report import validation_report_pdf

    res, ids = validation
    m = res["ehr_only"]
    pdf = validation_report_pdf(res, "ehr_only", cohort="hospital_b.zip", when="2026-11-29 17:40")
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 1
    text = pdf_text(pdf)
    assert "External validation of ehr_only" in text
    assert ("Cohort: hospital_b.zip. 80 patients, " f"{m['events']} events, every patient evaluated; validated "
            "2026-11-29 17:40; strategy ehr_only.") in " ".join(text.split("\n"))
    c, (lo, hi) = m["c_index"], m["c_index_ci"]
    assert f"{c:.3f} [{lo:.3f}, {hi:.3f}]" in text and f"{m['ibs']:.3f} [" in text
    assert f"Log-rank test across the risk groups: p = {m['risk_groups']['logrank_p']:.3g}." in text
    assert [f"{g['n']} / {g['events']}" in text for g in m["subgroups"]["groups"]] == [True, True]
    assert "Subgroups by sex_female" in text and "0 (no)" in text and "1 (yes)" in text
    assert "image_only: not evaluated: model: got image_only, read nothing of any of the 80" in text
    # aggregate only: no subject id anywhere in the file, and a neutral title in the information dictionary
    found = [i for i in ids if i.encode() in pdf]
    assert found == [] and re.search(rb"/Title \(External validation report\)", pdf)
    # read back from JSON (a kept validation: the horizons as text), the same report
    back = json.loads(json.dumps(res, default=json_plain))
    assert pdf_text(validation_report_pdf(back, "ehr_only", cohort="hospital_b.zip", when="2026-11-29 17:40")) == text


def test_a_long_report_flows_onto_more_pages_and_a_missing_model_is_refused(
        validation: tuple[dict[str, dict], list[str]]) -> None:
    from core.validation_report import validation_report_pdf

    res, _ = validation
    many = {"ehr_only": res["ehr_only"], **{f"site model {i}": copy.deepcopy(res["ehr_only"]) for i in range(60)}}
    pdf = validation_report_pdf(many, "ehr_only", cohort="big.zip", when="today")
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf))
    text = pdf_text(pdf)
    assert pages >= 2 and f"Page {pages} of {pages}." in text and "External validation of ehr_only (continued)" in text
    assert all(f"site model {i} " in text for i in range(60))  # every row, none cut off at the foot of a page
    with pytest.raises(InputError, match=r"^validated: got image_only, has no metrics in this validation"):
        validation_report_pdf(res, "image_only", cohort="x.zip", when="today")
