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
    one_year = m["calibration"][365]  # calibration in the large, as the page's caption writes it
    assert one_year["oe"] is not None
    assert (f"1 year {one_year['oe']:.2f} ({one_year['oe_ci'][0]:.2f}-{one_year['oe_ci'][1]:.2f})"
            in " ".join(text.split("\n"))), text
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
    # a test split's evaluation holds no risk groups (the page passes its reference curves): one plot, no empty axes
    alone = {k: v for k, v in res["ehr_only"].items() if k != "risk_groups"}
    lines = pdf_text(validation_report_pdf({"m": alone}, "m", cohort="demo", when="today", split="test")).split("\n")
    assert "Kaplan-Meier by predicted risk group" not in lines and "Calibration by predicted risk group" in lines
    assert lines.count("0.8") == 2 and "Evaluation of m, test split" in lines  # the calibration plot's two axes only
    with pytest.raises(InputError, match=r"^validated: got image_only, has no metrics in this validation"):
        validation_report_pdf(res, "image_only", cohort="x.zip", when="today")


def test_the_first_figure_waits_for_an_ipython_import_another_thread_has_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """In the app, a page run may be importing IPython (through plotly) while a report is made in another thread:
    matplotlib's first figure read the half-made module (``version_info``, ``get_ipython``) and the download failed. A slow stand-in
    IPython, imported by another thread, shows the wait (in a fresh process: the first figure of its life)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    fake = tmp_path / "IPython"
    fake.mkdir()
    (fake / "__init__.py").write_text("import time\ntime.sleep(1.5)\nversion_info = (9, 0)\n\n\ndef get_ipython():\n    return None\n")
    script = (
        "import sys, threading, time\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "threading.Thread(target=lambda: __import__('IPython')).start()\n"
        "time.sleep(0.3)\n"
        "assert 'IPython' in sys.modules and not hasattr(sys.modules['IPython'], 'version_info')\n"
        "from core.figures.pyplot import pyplot\nplt = pyplot()\n"
        "plt.figure()\nprint('figure made')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "figure made", done.stderr[-2000:]
    plain = script.replace("from core.figures.pyplot import pyplot\nplt = pyplot()\n",
                           "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n")
    failed = subprocess.run([sys.executable, "-c", plain], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "partially initialized module 'IPython'" in failed.stderr  # the race


def test_the_pooled_report_holds_each_site_and_the_pooled_numbers() -> None:
    from core.errors import InputError
    from core.evaluate.pooled import pooled_c_index, pooled_oe
    from core.validation_report import pooled_report_pdf

    rows = [{"site": f"site_{k}.zip (2026-11-29 1{k}:00)", "patients": 80 + k, "events": 30 + k, "c_index": c,
             "c_low": c - 0.06, "c_high": c + 0.05, "oe": oe, "oe_low": None if oe is None else oe * 0.8,
             "oe_high": None if oe is None else oe * 1.25} for k, (c, oe) in enumerate(((0.70, 0.9), (0.75, 1.1),
                                                                                      (0.66, 1.0), (0.72, None)))]
    text = " ".join(pdf_text(pooled_report_pdf(rows, "ehr_only", horizon=365, when="2026-11-29 20:50")).split("\n"))
    c = pooled_c_index([r["c_index"] for r in rows], [r["c_low"] for r in rows], [r["c_high"] for r in rows])
    with_oe = rows[:3]
    oe = pooled_oe([r["oe"] for r in with_oe], [r["oe_low"] for r in with_oe], [r["oe_high"] for r in with_oe])
    assert "Validation of ehr_only across 4 sites" in text and "326 patients, 126 events in all" in text
    assert f"Pooled C-index: {c['c']:.3f} (95 % CI {c['ci'][0]:.3f}-{c['ci'][1]:.3f}) over 4 sites" in text
    assert f"Pooled O:E at 1 year: {oe['oe']:.2f} (95 % CI {oe['ci'][0]:.2f}-{oe['ci'][1]:.2f}) over 3 sites" in text
    assert all(r["site"] in text for r in rows) and "0.720 [0.660, 0.770]" in text
    two = " ".join(pdf_text(pooled_report_pdf(rows[2:], "m", horizon=365, when="now")).split("\n"))
    assert "O:E at 1 year: known at 1 of 2 sites, 2 needed to pool." in two and "no prediction interval" in two
    with pytest.raises(InputError, match=r"^sites: got 1, are too few to pool"):
        pooled_report_pdf(rows[:1], "m", horizon=365, when="now")


def test_every_line_of_the_report_stays_on_the_page(validation: tuple[dict[str, dict], list[str]], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Long lines wrap inside the page's right margin: calibration at three horizons, observed / expected with its
    intervals (cut at the edge before), and a long model name in the title."""
    from core.validation_report import PAGE_IN, validation_report_pdf
    from tests.test_report import words

    res = copy.deepcopy(validation[0])
    m = res["ehr_only"]
    for h, cal in m["calibration"].items():  # every horizon known, as on a cohort with long follow-up
        cal.update(slope=cal.get("slope") or 1.23, intercept=cal.get("intercept") or -0.45, oe=cal.get("oe") or 0.99,
                   oe_ci=cal.get("oe_ci") or [0.86, 1.14])
    name = "ehr_only (your cohort, 27 Nov 18:39) recalibrated to St Mary's Hospital, Leeds 2025 (20261129)"
    res = {name: m}
    out = tmp_path / "report.pdf"
    out.write_bytes(validation_report_pdf(res, name, cohort="St Mary's Hospital, Leeds 2025", when="2026-11-29 17:40"))
    right = PAGE_IN[0] * 72 - 6  # points: inside the paper's edge
    ws = words(out)
    assert ws and [w for w in ws if w[2] > right] == []
    text = " ".join(w[4] for w in ws)
    assert "(0.86-1.14)." in text or re.search(r"\(\d\.\d\d-\d\.\d\d\)\.", text), text[-800:]
    assert "Leeds" in text and "(20261129)" in text  # the title's second line
