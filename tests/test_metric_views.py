"""Cohort & models' comparison table as shown (pages/_metric_views.py): what is said once is not repeated per row."""

from __future__ import annotations

import pandas as pd

from pages._metric_views import comparison_shown, failure_lines, shared_suffix


def test_models_trained_together_lose_their_shared_suffix_and_then_the_fusion_column() -> None:
    names = ["image_only (your cohort, 27 Nov 04:51)", "ehr_only (your cohort, 27 Nov 04:51)"]
    suffix = shared_suffix(names)
    assert suffix == " (your cohort, 27 Nov 04:51)"
    assert shared_suffix([names[0], "ehr_only (your cohort, 27 Nov 05:10)"]) == ""  # two trainings: kept apart
    assert shared_suffix([names[0], "ehr_only"]) == "" and shared_suffix(names[:1]) == ""
    table = pd.DataFrame({"model": names, "fusion": ["image_only", "ehr_only"], "n / events": ["12 / 5", "12 / 5"],
                          "C-index [95% CI]": ["0.750", "0.409"]})
    assert list(comparison_shown(table).columns) == ["model", "fusion", "C-index [95% CI]"]
    short = table.assign(model=table["model"].str.removesuffix(suffix))
    assert list(comparison_shown(short).columns) == ["model", "C-index [95% CI]"]
    assert list(comparison_shown(short)["model"]) == ["image_only", "ehr_only"]


def test_strategies_refused_for_one_reason_are_named_on_one_line() -> None:
    errors = {f"{f} (your cohort, 27 Nov 05:17)": f"fusion: got {f}, needs images but the cohort has none; fix: add a "
              "study column" for f in ("image_only", "concat")}
    errors["old (your cohort, 27 Nov 05:17)"] = "model: got /x, is not a model folder; fix: train it again"
    assert failure_lines(errors) == [
        "- **image_only, concat** (your cohort, 27 Nov 05:17): needs images but the cohort has none; fix: add a study column",
        "- **old (your cohort, 27 Nov 05:17)**: model: got /x, is not a model folder; fix: train it again"]
