"""Recalibration of a model to a site (core.evaluate.recalibration, core.recalibrate, the network's
SiteRecalibration, `recalibrate`, the Validate tab's job): a known miscalibration is undone, a calibrated model is
left alone, the copy's curves are the original's transformed and its ranking is the original's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import InputError
from core.evaluate.recalibration import compose, fit_recalibration, recalibrated, recalibration_report

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "demo_models"
GRID = np.linspace(0.0, 1825.0, 24)


def GRID_OF(model_dir: Path) -> list[float]:
    return json.loads((model_dir / "config.json").read_text())["edges"]


def _site(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponential survival with a log-normal frailty, uniform censoring: true curves and outcomes."""
    rng = np.random.default_rng(seed)
    rate = np.exp(rng.normal(size=n)) / 1500.0
    t, c = rng.exponential(1.0 / rate), rng.uniform(0.0, 2500.0, n)
    return np.exp(-rate[:, None] * GRID[None]), np.minimum(t, c), (t <= c).astype(float)


def test_a_known_miscalibration_is_undone() -> None:
    """Curves whose cumulative hazard is 0.5 * H_true ** 0.7 (too optimistic, too close together): the fit finds
    b = c = 1 / 0.7 and a = -b log 0.5 within its intervals, and the cross-fitted curves score the true curves' IBS."""
    true, time, event = _site(n=2000)  # three numbers: 600 patients left b 0.2 off in one draw
    wrong = np.exp(-0.5 * (-np.log(true)) ** 0.7)
    report = recalibration_report(GRID, wrong, time, event, (365, 1825))
    b_true = 1 / 0.7
    a_true = -b_true * np.log(0.5)
    assert report["b_ci"][0] < b_true < report["b_ci"][1] and abs(report["b"] - b_true) < 0.1
    assert report["c_ci"][0] < b_true < report["c_ci"][1]
    assert report["a_ci"][0] < a_true < report["a_ci"][1]
    oracle = recalibration_report(GRID, true, time, event, (365, 1825), n_boot=0)["before"]
    assert report["before"]["ibs"] > oracle["ibs"] + 0.02  # 0.182 against 0.154
    assert abs(report["after"]["ibs"] - oracle["ibs"]) < 0.005
    one_year = report["after"]["calibration"][365]
    assert report["before"]["calibration"][365]["ici"] > one_year["ici"] + 0.04  # 0.121 -> 0.064
    assert abs(one_year["ici"] - oracle["calibration"][365]["ici"]) < 0.02
    assert abs(one_year["predicted"] - one_year["observed"]) < 0.05  # 0.180 predicted against 0.272 before
    assert report["nll_after"] < report["nll_before"] and report["note"] is None and report["folds"] == 5
    # curves that were right already, on a small site: the cross-check scores the fit worse, and the report says so
    right, time, event = _site(n=60)
    small = recalibration_report(GRID, right, time, event, (365, 1825), n_boot=0)
    assert small["after"]["ibs"] > small["before"]["ibs"] + 0.05  # 0.173 -> 0.234
    assert "cross-fitted, the recalibration scores worse than the original (integrated Brier score 0.173 -> 0.234): " \
           "this cohort does not support it, keep the original model" in small["note"]


def test_risks_too_close_together_are_spread_apart() -> None:
    """Each patient's log H pulled a third of the way to the mean at every time (the average curve right, the
    spread a third): the fit finds b = 3 and c = 1, which the two-number update H' = exp(a) * H ** b (b = c) could
    not (it had to bend the course of the average curve to spread the patients)."""
    from core.evaluate.recalibration import log_hazard, mean_log_hazard

    true, time, event = _site(n=2000, seed=4)
    log_h, positive = log_hazard(true)
    m = mean_log_hazard(true)
    squeezed = np.where(positive, np.exp(-np.exp(m + (log_h - m) / 3)), 1.0)
    report = recalibration_report(GRID, squeezed, time, event, (365, 1825))
    assert report["b_ci"][0] < 3 < report["b_ci"][1] and report["c_ci"][0] < 1 < report["c_ci"][1]
    assert abs(report["a"]) < 0.15
    two = recalibration_report(GRID, squeezed, time, event, (365, 1825), n_boot=0)  # b = c: the old update
    oracle = recalibration_report(GRID, true, time, event, (365,), n_boot=0)["before"]
    assert abs(report["after"]["ibs"] - oracle["ibs"]) < 0.005
    assert report["after"]["calibration"][365]["slope"] == pytest.approx(1.0, abs=0.35)
    assert report["before"]["calibration"][365]["slope"] > 2.0
    assert two["after"]["ibs"] == pytest.approx(report["after"]["ibs"])  # n_boot changes only the intervals


def test_a_fit_at_the_limit_of_its_range_is_said() -> None:
    """Curves nearly the same for every patient (a model that learned almost nothing) against outcomes that differ:
    the slope b runs to its upper limit (10) and the report says that stretching them does not make them rank the
    patients, and to keep the original; a fit inside its range says nothing of the kind."""
    true, time, event = _site(n=400, seed=6)
    mean = np.exp(np.log(np.clip(true, 1e-9, 1)).mean(axis=0))
    flat = np.clip(mean[None] ** (1 + np.random.default_rng(6).normal(0, 1e-4, (400, 1))), 0, 1)
    report = recalibration_report(GRID, flat, time, event, (365,), n_boot=0)
    assert report["b"] == pytest.approx(10.0)
    assert ("the fit stopped at the limit of its range (b = 10): the model's risks hardly differ between this "
            "cohort's patients, and stretching them this far does not make them rank the patients; keep the "
            "original model") in report["note"]
    assert "limit of its range" not in (recalibration_report(GRID, true, time, event, (365,), n_boot=0)["note"] or "")


def test_a_calibrated_model_is_left_as_it_is() -> None:
    true, time, event = _site(seed=1)
    fit = fit_recalibration(GRID, true, time, event)
    assert abs(fit["a"]) < 0.15 and abs(fit["b"] - 1) < 0.1
    report = recalibration_report(GRID, true, time, event, (365,), n_boot=0)
    assert abs(report["after"]["ibs"] - report["before"]["ibs"]) < 0.003


def test_too_few_events_and_bad_shapes_are_refused() -> None:
    true, time, event = _site(n=60, seed=2)
    event[np.flatnonzero(event)[12:]] = 0.0
    with pytest.raises(InputError, match=r"event: got 12 events in 60 subjects, are too few to fit a recalibration "
                                         r"\(at least 20\)"):
        fit_recalibration(GRID, true, time, event)
    with pytest.raises(InputError, match=r"surv: got shape \(60, 23\), is not \[60 subjects, 24 times\]"):
        fit_recalibration(GRID, true[:, 1:], time, event)


def test_two_recalibrations_compose_and_the_network_applies_the_same_formula() -> None:
    from core.evaluate.recalibration import mean_log_hazard, offsets
    from core.models.recalibration import SiteRecalibration

    true, _, _ = _site(n=20, seed=3)
    first = {"offset": offsets(0.3, 1.4, 0.9, mean_log_hazard(true)), "b": 1.4}
    once = recalibrated(true, first["offset"], 1.4)
    then = {"offset": offsets(-0.2, 0.8, 1.1, mean_log_hazard(once)), "b": 0.8}
    twice = recalibrated(once, then["offset"], 0.8)
    kept = once > 1e-10  # S below 1e-12 is clamped before the log: the second update then starts from 1e-12
    np.testing.assert_allclose(recalibrated(true, *compose(first, then))[kept], twice[kept], atol=1e-6)
    old = {"a": 0.3, "b": 1.4}  # an entry written before offsets (session 41): one a for every time
    older = recalibrated(true, 0.3, 1.4)
    np.testing.assert_allclose(recalibrated(true, *compose(old, then))[older > 1e-10],
                               recalibrated(older, then["offset"], 0.8)[older > 1e-10], atol=1e-6)
    site = SiteRecalibration(first["offset"].tolist(), 1.4)
    np.testing.assert_allclose(site(torch.as_tensor(true, dtype=torch.float64)).numpy(), once, atol=1e-12)
    assert (np.diff(once, axis=1) <= 0).all() and (once[:, 0] == 1).all()  # S(0) = 1 kept, curves non-increasing
    with pytest.raises(ValueError, match="b must be a positive number"):
        SiteRecalibration(0.0, -1.0)
    with pytest.raises(ValueError, match="got 3 offsets for a model with 24 time points"):
        SiteRecalibration.from_config({"offset": [0.0, 0.1, 0.2], "b": 1.0}, 24)


@pytest.mark.slow
def test_a_recalibrated_copy_of_the_shipped_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A site whose patients live 2.5 times longer: the copy's curves (and band) are the original's recalibrated,
    the order of patients at each time is the original's, and the cross-fitted Brier score improves; recalibrating
    the copy again composes the fits. Caches of the original are not copied."""
    from core.cli import main
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.evaluate import harrell_c
    from core.horizons import HORIZONS
    from core.predict import predict_cohort
    from core.recalibrate import CARD_HEADING, recalibrate_model
    from core.registry import load_model

    site = write_demo_cohort(tmp_path / "site", n=150, seed=5, volumes=False)
    table = pd.read_csv(site / "cohort.csv")
    table["time"] *= 2.5
    table.to_csv(site / "cohort.csv", index=False)
    original = tmp_path / "ehr_only"
    shutil.copytree(SHIPPED / "ehr_only", original)
    (original / "reference_curves.json").write_text("{}")  # a cache the app writes beside a model
    report = recalibrate_model(original, site, tmp_path / "copy")
    copy = tmp_path / "copy"
    entry = json.loads((copy / "config.json").read_text())["recalibration"]
    assert entry["fit"]["a"] == report["a"] < -0.3 and entry["n"] == 150 and entry["cohort"] == "site"
    assert entry["b"] == report["b"] and len(entry["offset"]) == len(GRID_OF(copy))
    assert not (copy / "reference_curves.json").exists() and (copy / "model.safetensors").exists()
    assert CARD_HEADING in (copy / "MODEL_CARD.md").read_text()
    from core.report import card_summary  # the case report says so first

    first = card_summary((copy / "MODEL_CARD.md").read_text()).splitlines()[0]
    assert first.startswith("Recalibrated on site (150 subjects") and first.endswith("its absolute risks are this site's.")
    assert json.loads((copy / "metrics.json").read_text())["recalibration"]["b"] == report["b"]
    assert report["after"]["ibs"] < report["before"]["ibs"] - 0.01  # cross-fitted
    cohort = load_cohort(site, for_training=False)
    ids = cohort.ids()
    before, after = load_model(original), load_model(copy)
    times, s0 = predict_cohort(before, cohort, ids)
    _, s1 = predict_cohort(after, cohort, ids)
    np.testing.assert_allclose(s1, recalibrated(s0, np.asarray(entry["offset"]), entry["b"]), atol=2e-5)
    one_year = int(np.searchsorted(times, 365.0))
    t, e = table.set_index("subject_id").loc[ids, "time"].to_numpy(), table.set_index("subject_id").loc[ids, "event"].to_numpy()
    assert harrell_c(t, e.astype(bool), 1 - s1[:, one_year]) == pytest.approx(harrell_c(t, e.astype(bool), 1 - s0[:, one_year]))
    case0 = before.predict_case(before.case_inputs(cohort, ids[0]), HORIZONS)
    case1 = after.predict_case(after.case_inputs(cohort, ids[0]), HORIZONS)
    for name in ("survival", "lower", "upper"):  # the band of the ensemble's members too
        np.testing.assert_allclose(getattr(case1, name), recalibrated(getattr(case0, name), np.asarray(entry["offset"]),
                                                                              entry["b"]),
                                   atol=2e-5)
    from core.predict import prediction_json

    said = prediction_json(after, cohort, ids[0])
    assert said["recalibration"] == entry and prediction_json(before, cohort, ids[0])["recalibration"] is None
    assert said["survival"] == pytest.approx(case1.survival.tolist(), abs=1e-5)
    with pytest.raises(InputError, match="exists and is not empty"):
        recalibrate_model(original, site, copy)
    unknown = tmp_path / "unknown"  # patients without outcomes: said in words, not with the split's name ("for all")
    unknown.mkdir()
    table[["subject_id"]].to_csv(unknown / "cohort.csv", index=False)
    with pytest.raises(InputError, match=r"unknown, gives no outcomes to recalibrate on; fix: add time and event"):
        recalibrate_model(original, unknown, tmp_path / "never")
    assert main(["recalibrate", "--model", str(copy), "--cohort", str(site), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fitted on 150 subjects") and "integrated Brier score" in out and "wrote " in out
    assert "calibration slope" in out and "(1 ideal)" in out
    again = json.loads((tmp_path / "again" / "config.json").read_text())["recalibration"]
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())["recalibration"]
    off, b = compose(entry, second)
    assert again["composed"] and again["b"] == pytest.approx(b) and again["offset"] == pytest.approx(off.tolist())
    assert abs(second["a"]) < 0.15 and abs(second["b"] - 1) < 0.15  # the copy is already calibrated to this site
    assert (tmp_path / "again" / "MODEL_CARD.md").read_text().count(CARD_HEADING) == 1


@pytest.mark.slow
def test_the_validation_job_saves_a_recalibrated_copy_among_the_users_models(tmp_path: Path) -> None:
    from core.app.background import trained_models, validate_uploaded_job
    from core.demo import write_demo_cohort
    from tests.test_background import _ctx, _zip

    site = write_demo_cohort(tmp_path / "site", n=90, seed=9, volumes=False)
    table = pd.read_csv(site / "cohort.csv")
    table["time"] *= 2.5
    table.to_csv(site / "cohort.csv", index=False)
    models = tmp_path / "user" / "models"
    spec = {"out": str(models / "ehr_only-recalibrated"), "label": "ehr_only recalibrated to site.zip",
            "base_cohort": str(tmp_path / "site"), "site": "site.zip"}
    seen: list[float] = []
    res = validate_uploaded_job(_ctx(seen), _zip(site), str(tmp_path / "user" / "cohorts"),
                                {"ehr_only": str(SHIPPED / "ehr_only")}, recalibrate=spec)
    recal = res["ehr_only"]["recalibration"]
    assert recal["label"] == spec["label"] and recal["n"] == 90 and recal["a"] < -0.3
    assert trained_models(models) == {spec["label"]: (Path(spec["out"]), tmp_path / "site")}
    assert seen == sorted(seen) and seen[-1] == 1.0
    from core.validation_report import validation_report_pdf  # the report names the copy and its three numbers
    from tests.test_report import pdf_text

    text = " ".join(pdf_text(validation_report_pdf(res, "ehr_only", cohort="site.zip", when="today")).split("\n"))
    assert "Recalibration to this cohort" in text
    assert f"Copy {spec['label']}: level a = {recal['a']:.3f}, spread b = {recal['b']:.3f}" in text
    table.loc[table["event"] == 1, "event"] = 0
    table.loc[table.index[:5], "event"] = 1  # five events: too few to fit, the validation itself still shown
    table.to_csv(site / "cohort.csv", index=False)
    spec["out"] = str(models / "second")
    res = validate_uploaded_job(_ctx(), _zip(site), str(tmp_path / "user" / "cohorts"),
                                {"ehr_only": str(SHIPPED / "ehr_only")}, recalibrate=spec)
    assert res["ehr_only"]["recalibration"]["error"].startswith("event: got 5 events in 90 subjects")
    assert res["ehr_only"]["n"] == 90 and not (models / "second").exists()
