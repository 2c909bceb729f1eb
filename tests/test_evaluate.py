"""Evaluation metrics: cross-checked against a second implementation, on data with a known truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored
from sksurv.nonparametric import kaplan_meier_estimator

from core.errors import InputError
from core.evaluation import evaluate_model
from core.evaluate import (
    harrell_c,
    kaplan_meier,
    km_by_risk_group,
    paired_bootstrap,
    risk_from_survival,
    survival_at,
    survival_metrics,
)
from core.evaluate.metrics import harrell_c_fast

ROOT = Path(__file__).resolve().parents[1]
GRID = np.linspace(5.0, 2000.0, 80)


def simulate(n: int, seed: int, censor_max: float | None = 2500.0) -> dict[str, np.ndarray]:
    """Exponential times with a known hazard per subject; S(t) = exp(-rate t) is the truth."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    rate = 1e-3 * np.exp(0.8 * x)
    t_true = rng.exponential(1.0 / rate)
    if censor_max is None:
        time, event = t_true, np.ones(n, dtype=int)
    else:
        c = rng.uniform(0, censor_max, n)
        time, event = np.minimum(t_true, c), (t_true <= c).astype(int)
    surv = np.exp(-rate[:, None] * GRID[None, :])
    return {"x": x, "rate": rate, "time": time, "event": event, "surv": surv}


@pytest.fixture(scope="module")
def train() -> dict[str, np.ndarray]:
    return simulate(800, seed=1)


@pytest.fixture(scope="module")
def test_set() -> dict[str, np.ndarray]:
    return simulate(600, seed=2)


@pytest.fixture(scope="module")
def metrics(train: dict, test_set: dict) -> dict:
    return survival_metrics(GRID, test_set["surv"], test_set["time"], test_set["event"], train["time"],
                            train["event"], n_boot=100, full_ci=True)


# --- discrimination -----------------------------------------------------------------------------


def test_harrell_c_equals_lifelines_and_sksurv(test_set: dict, metrics: dict) -> None:
    t, e = test_set["time"], test_set["event"]
    risk = risk_from_survival(GRID, test_set["surv"])
    ref_lifelines = concordance_index(t, -risk, e)
    ref_sksurv = concordance_index_censored(e.astype(bool), t, risk)[0]
    assert harrell_c_fast(t, e, risk) == pytest.approx(ref_sksurv, abs=1e-12)
    assert metrics["c_index"] == pytest.approx(ref_lifelines, abs=1e-12)
    assert metrics["c_index"] == pytest.approx(ref_sksurv, abs=1e-12)
    # the true model discriminates: beta = 0.8 on a standard normal gives C about 0.7
    assert 0.65 < metrics["c_index"] < 0.78


def test_fast_harrell_equals_sksurv_with_ties_in_bootstrap_resamples() -> None:
    rng = np.random.default_rng(0)
    t = np.round(rng.exponential(100, 300))
    e = rng.random(300) < 0.6
    r = np.round(rng.normal(size=300), 1)
    for _ in range(5):
        idx = rng.integers(0, 300, 300)
        ref = concordance_index_censored(e[idx], t[idx], r[idx])[0]
        assert harrell_c_fast(t[idx], e[idx], r[idx]) == pytest.approx(ref, abs=1e-12)
        assert harrell_c(t[idx], e[idx], r[idx]) == pytest.approx(ref, abs=1e-12)


def test_default_risk_ranks_like_the_hazard(test_set: dict) -> None:
    risk = risk_from_survival(GRID, test_set["surv"])
    assert np.array_equal(np.argsort(risk), np.argsort(test_set["rate"]))


def test_given_risk_is_used(train: dict, test_set: dict) -> None:
    m = survival_metrics(GRID, test_set["surv"], test_set["time"], test_set["event"], train["time"], train["event"],
                         risk=-test_set["x"], n_boot=0)
    assert m["risk_score"] == "given"
    assert m["c_index"] == pytest.approx(1 - concordance_index_censored(
        test_set["event"].astype(bool), test_set["time"], test_set["x"])[0], abs=1e-9)
    assert m["c_index"] < 0.35
    assert m["c_index_ci"] is None and m["n_boot"] == 0


def test_uno_c_close_to_harrell_without_censoring() -> None:
    d = simulate(1000, seed=3, censor_max=None)
    tr = simulate(1000, seed=4, censor_max=None)
    m = survival_metrics(GRID, d["surv"], d["time"], d["event"], tr["time"], tr["event"], n_boot=0)
    assert m["uno_c"] == pytest.approx(m["c_index"], abs=0.02)
    assert m["uno_tau"] < tr["time"].max()


def test_uno_c_is_in_range_with_censoring(metrics: dict) -> None:
    assert 0.6 < metrics["uno_c"] < 0.8
    assert abs(metrics["uno_c"] - metrics["c_index"]) < 0.05


def test_td_auc_in_unit_interval_and_null_beyond_follow_up(metrics: dict, train: dict, test_set: dict) -> None:
    assert set(metrics["td_auc"]) == {30, 365, 1825}
    for h in (30, 365):
        assert 0.6 < metrics["td_auc"][h] <= 1.0
    # test follow-up ends before 2500 days (uniform censoring) but the grid ends at 2000: 1825 estimable
    assert metrics["td_auc"][1825] is not None
    m = survival_metrics(GRID, test_set["surv"], test_set["time"], test_set["event"], train["time"], train["event"],
                         horizons=(365, 3000, 10_000), n_boot=0)
    assert m["td_auc"][3000] is None and m["td_auc"][10_000] is None
    assert m["calibration"][10_000] is None
    assert json.loads(json.dumps(m))["td_auc"]["10000"] is None


def test_td_auc_equals_roc_auc_without_censoring() -> None:
    d = simulate(500, seed=5, censor_max=None)
    m = survival_metrics(GRID, d["surv"], d["time"], d["event"], d["time"], d["event"], horizons=(365,), n_boot=0)
    cases = d["time"] <= 365
    ref = roc_auc_score(cases, 1 - survival_at(GRID, d["surv"], [365])[:, 0])
    assert m["td_auc"][365] == pytest.approx(ref, abs=1e-9)


# --- accuracy and calibration -------------------------------------------------------------------


def test_ibs_equals_plain_brier_without_censoring() -> None:
    d = simulate(400, seed=6, censor_max=None)
    m = survival_metrics(GRID, d["surv"], d["time"], d["event"], d["time"], d["event"], n_boot=0)
    lo, hi = m["ibs_range"]
    times = np.linspace(lo, hi, 100)
    s = survival_at(GRID, d["surv"], times)
    alive = (d["time"][:, None] > times[None, :]).astype(float)
    brier = ((alive - s) ** 2).mean(axis=0)
    ref = np.trapezoid(brier, times) / (times[-1] - times[0])
    assert m["ibs"] == pytest.approx(ref, rel=1e-9)


def test_ibs_orders_true_km_and_reversed_predictors(train: dict, test_set: dict, metrics: dict) -> None:
    t, e = test_set["time"], test_set["event"]
    kmf = KaplanMeierFitter().fit(train["time"], train["event"])
    km = kmf.survival_function_at_times(GRID).to_numpy()
    km_surv = np.tile(km, (t.size, 1))
    # a bad predictor: the true curves handed to the wrong subjects (reversed risk order)
    order = np.argsort(test_set["rate"])
    bad = np.empty_like(test_set["surv"])
    bad[order] = test_set["surv"][order[::-1]]
    ibs_km = survival_metrics(GRID, km_surv, t, e, train["time"], train["event"], n_boot=0)["ibs"]
    ibs_bad = survival_metrics(GRID, bad, t, e, train["time"], train["event"], n_boot=0)["ibs"]
    assert metrics["ibs"] < ibs_km < ibs_bad
    assert 0.05 < metrics["ibs"] < 0.25


def test_perfectly_calibrated_model_has_small_ici() -> None:
    d = simulate(3000, seed=7)
    tr = simulate(1000, seed=8)
    m = survival_metrics(GRID, d["surv"], d["time"], d["event"], tr["time"], tr["event"], horizons=(365, 1000),
                         n_boot=0)
    cal = m["calibration"][365]
    assert len(cal["groups"]) == 10 and sum(g["n"] for g in cal["groups"]) == 3000
    assert cal["ici"] < 0.035  # KM noise alone is about 0.02 with 300 subjects per decile
    assert cal["slope"] == pytest.approx(1.0, abs=0.15)
    # predicted risk rises over the deciles
    preds = [g["predicted"] for g in cal["groups"]]
    assert preds == sorted(preds)
    # a model that overstates risk (S ** 3) is visibly miscalibrated
    over = survival_metrics(GRID, d["surv"] ** 3, d["time"], d["event"], tr["time"], tr["event"], horizons=(365,),
                            n_boot=0)["calibration"][365]
    assert over["ici"] > 5 * cal["ici"] and over["ici"] > 0.1


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_narrows_with_n(train: dict) -> None:
    widths = []
    for n, seed in ((150, 10), (1000, 11)):
        d = simulate(n, seed=seed)
        m = survival_metrics(GRID, d["surv"], d["time"], d["event"], train["time"], train["event"], n_boot=200,
                             full_ci=True)
        lo, hi = m["c_index_ci"]
        assert lo <= m["c_index"] <= hi
        assert m["uno_c_ci"][0] <= m["uno_c"] <= m["uno_c_ci"][1]
        assert m["ibs_ci"][0] <= m["ibs"] <= m["ibs_ci"][1]
        assert m["n_boot"] == 200
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]


def test_bootstrap_is_seeded(train: dict, test_set: dict) -> None:
    args = (GRID, test_set["surv"], test_set["time"], test_set["event"], train["time"], train["event"])
    a = survival_metrics(*args, n_boot=50, seed=3)["c_index_ci"]
    b = survival_metrics(*args, n_boot=50, seed=3)["c_index_ci"]
    c = survival_metrics(*args, n_boot=50, seed=4)["c_index_ci"]
    assert a == b and a != c


def test_paired_bootstrap_detects_better_model(test_set: dict) -> None:
    t, e = test_set["time"], test_set["event"]
    noise = np.random.default_rng(0).normal(size=t.size)
    res = paired_bootstrap(test_set["x"], noise, t, e, n_boot=300)
    assert res["delta_c"] == pytest.approx(res["c_a"] - res["c_b"])
    assert res["c_a"] == pytest.approx(harrell_c(t, e, test_set["x"]))
    assert res["ci"][0] > 0 and res["p_value"] < 0.01
    same = paired_bootstrap(test_set["x"], 2 * test_set["x"] + 1, t, e, n_boot=100)
    assert same["delta_c"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert same["tied"] == 1.0 and res["tied"] < 0.05  # one order twice: every resample ties, and the note says so
    from core.evaluate import tie_note

    assert tie_note(same["tied"]).startswith("100 % of the resamples rank every pair alike") and tie_note(res["tied"]) == ""
    # 8 subjects, two scores that differ in one pair: many resamples tie (compare printed "to +0.000, p = 0.387")
    small = paired_bootstrap([1, 2, 3, 4, 5, 6, 8, 7], [1, 2, 3, 4, 5, 6, 7, 8], np.arange(8.0, 0, -1), np.ones(8),
                             n_boot=200)
    assert small["tied"] > 0.2 and small["ci"][1] == 0.0


def test_paired_bootstrap_on_a_few_events() -> None:
    """15 subjects with 2 events: many resamples hold events but no comparable pair, where lifelines raises
    ZeroDivisionError (it stopped `compare` and the app's "all 7" job after every model was trained); they are
    skipped. A split with no comparable pair at all is a one-line error naming it."""
    for k in range(5):
        rng = np.random.default_rng(k)
        t = rng.uniform(10, 1000, 15)
        e = np.zeros(15, int)
        e[rng.choice(15, 2, replace=False)] = 1
        res = paired_bootstrap(rng.normal(size=15), rng.normal(size=15), t, e, n_boot=300)
        assert 0 < res["n_boot"] <= 300 and 0.0 <= res["p_value"] <= 1.0
    with pytest.raises(InputError, match="time/event: got 3 subjects, 1 event, hold no comparable pair"):
        paired_bootstrap([1, 2, 3], [3, 2, 1], [5.0, 1.0, 2.0], [1, 0, 0])


# --- Kaplan-Meier -------------------------------------------------------------------------------


def test_kaplan_meier_matches_sksurv(test_set: dict) -> None:
    t, s, lo, hi = kaplan_meier(test_set["time"], test_set["event"])
    ref_t, ref_s = kaplan_meier_estimator(test_set["event"].astype(bool), test_set["time"])
    assert t[0] == 0.0 and s[0] == 1.0
    assert np.allclose(t[1:], ref_t) and np.allclose(s[1:], ref_s)
    assert np.all(lo <= s + 1e-12) and np.all(s <= hi + 1e-12)
    assert np.all(np.diff(s) <= 0)


def test_km_by_risk_group_separates(test_set: dict) -> None:
    res = km_by_risk_group(test_set["x"], test_set["time"], test_set["event"], groups=3)
    labels = [g["label"] for g in res["groups"]]
    assert labels == ["low", "intermediate", "high"]
    assert sum(g["n"] for g in res["groups"]) == test_set["time"].size
    s365 = [float(survival_at(g["t"], g["s"][None, :], [365])[0, 0]) for g in res["groups"]]
    assert s365[0] > s365[1] > s365[2]
    assert res["logrank_p"] < 1e-6


# --- bad input ------------------------------------------------------------------------------------

N = 6
GOOD_T = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
GOOD_E = [1, 0, 1, 1, 0, 1]
SMALL_GRID = np.array([15.0, 35.0, 55.0])
GOOD_S = np.tile([0.9, 0.6, 0.3], (N, 1))


def _bad(time=GOOD_T, event=GOOD_E, surv=GOOD_S, grid=SMALL_GRID, train_time=GOOD_T, train_event=GOOD_E):  # type: ignore[no-untyped-def]
    return survival_metrics(grid, surv, time, event, train_time, train_event, n_boot=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time": [10.0, np.nan, 30, 40, 50, 60]},
         "time: got nan, must be a finite number (subject at position 1); "
         "fix: drop subjects without a follow-up time or fill it in"),
        ({"time": [10.0, 20, np.inf, 40, 50, 60]},
         "time: got inf, must be a finite number (subject at position 2); "
         "fix: drop subjects without a follow-up time or fill it in"),
        ({"time": [10.0, 20, 30, -4, 50, 60]},
         "time: got -4.0, must be >= 0 days (subject at position 3); "
         "fix: times are days from the index date; drop or correct negative follow-up times"),
        ({"time": [], "event": [], "surv": np.zeros((0, 3))},
         "time: got 0 subjects, needs at least 2 subjects; fix: evaluate on a split with more subjects"),
        ({"event": [0, 0, 0, 0, 0, 0]},
         "event: got 0 events in 6 subjects, all subjects are censored, so no metric is defined; "
         "fix: evaluate on subjects that include at least one event (event=1)"),
        ({"event": [1, 0, 2, 1, 0, 1]},
         "event: got 2.0, must be 0 (censored) or 1 (event) (subject at position 2); "
         "fix: code events as 1 and censoring as 0"),
        ({"event": [1, 0, 1]},
         "event: got 3 values, must have one value per subject (6); fix: pass time and event for the same subjects"),
        ({"surv": GOOD_S[:5]},
         "surv: got shape (5, 3), must have one row per subject (6) and one column per time in times_grid (3); "
         "fix: pass survival curves with shape [n, T] on times_grid"),
        ({"surv": np.where(np.eye(N, 3, 1) > 0, np.nan, GOOD_S)},
         "surv: got nan, must be finite (subject 0, time index 1); fix: check the model output for NaN or inf"),
        ({"surv": GOOD_S * 1.5},
         "surv: got 1.35, must be a probability in [0, 1] (subject 0, time index 0); "
         "fix: pass survival probabilities S(t), not hazards or risk scores"),
        ({"surv": 1 - GOOD_S},
         "surv: got 0.1 -> 0.4 (subject 0), must be non-increasing in time; "
         "fix: pass S(t) (not 1 - S(t)) on an increasing time grid"),
        ({"grid": np.array([15.0, 55.0, 35.0])},
         "times_grid: got 55.0 then 35.0, must be strictly increasing; "
         "fix: pass the model's time grid sorted, without repeats"),
        ({"train_time": [10.0, 20, 30, 40, np.nan, 60]},
         "train_time: got nan, must be a finite number (subject at position 4); "
         "fix: drop subjects without a follow-up time or fill it in"),
        ({"train_event": [0, 0, 0, 0, 0, 0]},
         "train_event: got 0 events in 6 subjects, all subjects are censored, so no metric is defined; "
         "fix: pass train subjects that include at least one event (the censoring weights need one)"),
    ],
    ids=["nan", "inf", "negative", "empty", "all-censored", "event-not-binary", "event-length", "surv-shape",
         "surv-nan", "surv-above-1", "surv-increasing", "grid-unsorted", "train-nan", "train-all-censored"],
)
def test_bad_input_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError) as info:
        _bad(**kwargs)
    assert str(info.value) == message


def test_bad_inputs_elsewhere() -> None:
    with pytest.raises(InputError, match=r"^risk_b: got 2 values, must have one value per subject \(6\)"):
        paired_bootstrap(np.arange(6.0), [1.0, 2.0], GOOD_T, GOOD_E)
    with pytest.raises(InputError, match=r"^horizons: got -30.0, must be a positive number of days"):
        survival_metrics(SMALL_GRID, GOOD_S, GOOD_T, GOOD_E, GOOD_T, GOOD_E, horizons=(-30,))
    with pytest.raises(InputError, match=r"^groups: got 1, must be between 2 and the number of subjects \(6\)"):
        km_by_risk_group(np.arange(6.0), GOOD_T, GOOD_E, groups=1)


def test_test_follow_up_longer_than_training() -> None:
    # IPCW metrics are truncated below the last training time instead of failing in scikit-survival
    d = simulate(200, seed=40, censor_max=None)
    tr = simulate(300, seed=41, censor_max=400.0)
    m = survival_metrics(GRID, d["surv"], d["time"], d["event"], tr["time"], tr["event"], n_boot=30, full_ci=True)
    assert m["uno_tau"] < tr["time"].max() and m["ibs_range"][1] < tr["time"].max()
    assert m["td_auc"][1825] is None and 0.5 < m["td_auc"][365] < 1.0
    assert m["ibs_ci"][0] <= m["ibs"] <= m["ibs_ci"][1]


def test_small_split_never_crashes() -> None:
    # 6 subjects, short follow-up: most quantities are not estimable and come back as None, not errors
    m = survival_metrics(SMALL_GRID, GOOD_S, GOOD_T, GOOD_E, GOOD_T, GOOD_E, n_boot=50)
    assert m["n"] == 6 and m["events"] == 4
    assert m["td_auc"][365] is None and m["td_auc"][1825] is None
    assert m["td_auc"][30] is not None
    json.dumps(m, allow_nan=False)


# --- model folder + command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tabular_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tab_cohort")
    d = simulate(240, seed=20)
    ids = [f"p{i:03d}" for i in range(240)]
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test"], size=240, p=[0.6, 0.2, 0.2])
    pd.DataFrame({"subject_id": ids, "time": d["time"].round(1), "event": d["event"], "split": split,
                  "true_risk": d["x"]}).to_csv(root / "cohort.csv", index=False)
    noise = rng.normal(size=240)
    x = np.where(rng.random(240) < 0.1, np.nan, d["x"])
    pd.DataFrame({"subject_id": ids, "x": x, "noise": noise}).to_csv(root / "features.csv", index=False)
    return root


def test_unknown_split_is_reported_before_loading_a_model(tmp_path: Path) -> None:
    d = simulate(30, seed=30)
    pd.DataFrame({"subject_id": range(30), "time": d["time"], "event": d["event"],
                  "split": ["train"] * 20 + ["val"] * 10}).to_csv(tmp_path / "cohort.csv", index=False)
    with pytest.raises(InputError, match=r"^split: got test, has no subjects in .*cohort.csv; "
                                         r"fix: use one of the splits present \(train, val\) or all$"):
        evaluate_model(tmp_path / "no_model", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "core", "evaluate", "--model", str(tmp_path / "m"), "--cohort",
                           str(tmp_path), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --split: got test, has no subjects in ")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_evaluate_trained_ehr_only_model_end_to_end(tabular_cohort: Path, tmp_path_factory, capsys) -> None:  # type: ignore[no-untyped-def]
    train_mod = pytest.importorskip("core.train", reason="core.train (models helper) not available yet")
    model_dir = tmp_path_factory.mktemp("models") / "ehr_only"
    train_mod.train_model(tabular_cohort, "ehr_only", model_dir, seed=0, epochs=20, device="cpu", ensemble=2)
    res = evaluate_model(model_dir, tabular_cohort, n_boot=50)
    assert res["n"] == int((pd.read_csv(tabular_cohort / "cohort.csv")["split"] == "test").sum())
    assert res["c_index_ci"][0] <= res["c_index"] <= res["c_index_ci"][1]
    assert res["c_index"] > 0.6 and res["oracle_c_index"] > 0.6
    proc = subprocess.run([sys.executable, "-m", "core", "evaluate", "--model", str(model_dir), "--cohort",
                           str(tabular_cohort), "--n-boot", "50", "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("c_index", "c_index_ci", "uno_c", "td_auc", "ibs", "n", "events"):
        assert key in out
    assert out["c_index"] == pytest.approx(res["c_index"])
    assert set(out["td_auc"]) == {"30", "365", "1825"}
    assert "subject_risk" not in out and "subject_risk" not in res  # only on request (the app's comparisons)
    # a bad option's error names the option typed (it named the function's argument, n_boot)
    bad = subprocess.run([sys.executable, "-m", "core", "evaluate", "--model", str(model_dir), "--cohort",
                          str(tabular_cohort), "--n-boot", "-5"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --n-boot: got -5, must be >= 0; fix: use e.g. 200"
    # a list that starts with a minus reaches its own check (argparse said "--horizons: expected one argument")
    from core.cli import main as cli_main

    assert cli_main(["evaluate", "--model", str(model_dir), "--cohort", str(tabular_cohort), "--horizons", "-30,365"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: horizons: got -30.0, must be a positive number of days")
    # the span an IBS averages (it moves the value) is printed beside it, and the card names both spans
    patients = tmp_path_factory.mktemp("pairs") / "patients.csv"
    report = patients.with_name("report.pdf")
    assert cli_main(["evaluate", "--model", str(model_dir), "--cohort", str(tabular_cohort), "--n-boot", "20",
                     "--patients", str(patients), "--report", str(report)]) == 0
    printed = capsys.readouterr().out.splitlines()
    from tests.test_report import pdf_text  # --report: the same numbers as printed, on the test split

    harrell = next(ln for ln in printed if ln.startswith("Harrell C")).split()[2]
    text = pdf_text(report.read_bytes())
    assert f"Evaluation of {model_dir.name}, test split" in text and f"{harrell} [" in text
    assert "the patients of its test split; report made " in " ".join(text.split("\n"))
    assert cli_main(["evaluate", "--model", str(model_dir), "--cohort", str(tabular_cohort), "--report", "r.txt"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --report: got r.txt, is not a .pdf file; fix: end the report's "
                                               "name in .pdf")
    a, b = res["ibs_range"]
    assert f"(days {a:.0f}-{b:.0f})" in [ln for ln in printed if ln.startswith("IBS")][0]
    # --patients: every test patient's rank and pairs, worst-ordered first, summing to the C-index printed
    pairs = pd.read_csv(patients, dtype={"subject_id": str})
    test = pd.read_csv(tabular_cohort / "cohort.csv", dtype={"subject_id": str}).query("split == 'test'")
    assert sorted(pairs["subject_id"]) == sorted(test["subject_id"]) and "n" not in pairs.columns
    assert pairs["concordant"].sum() / pairs["comparable"].sum() == pytest.approx(res["c_index"], abs=1e-9)
    assert pairs["share"].dropna().is_monotonic_increasing
    assert [ln for ln in printed if ln.startswith("patients")] == [
        f"patients    every patient's rank and pairs in {patients}; ordered worst (share of pairs ordered right): "
        + ", ".join(f"{r.subject_id} ({r.share:.0%} of {r.comparable})"
                    for r in pairs[pairs["comparable"] >= 5].head(3).itertuples())]
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert "- Spans: Uno's C compares pairs up to day " in card and "the integrated Brier score averages days " in card
    # an image model on a cohort without CT read nothing of anyone: refused, not a C of 0.5
    from core.app.demo_install import SHIPPED_MODELS

    with pytest.raises(InputError, match=r"^model: got image_only, read nothing of any of the \d+ subjects evaluated"):
        evaluate_model(SHIPPED_MODELS / "image_only", tabular_cohort, n_boot=10)
    kept = evaluate_model(model_dir, tabular_cohort, n_boot=50, keep_risk=True)
    table = pd.read_csv(tabular_cohort / "cohort.csv", dtype={"subject_id": str}).set_index("subject_id")
    rows = table.loc[kept["subject_risk"]["ids"]]
    assert list(rows["split"].unique()) == ["test"] and len(rows) == kept["n"]
    assert harrell_c(rows["time"].to_numpy(), rows["event"].to_numpy().astype(bool),
                     np.asarray(kept["subject_risk"]["risk"])) == pytest.approx(kept["c_index"])

    # the best fusion against the best single modality, paired on the same subjects: a "fusion" that reads the
    # true risk beats this ehr_only, by as much as a direct paired bootstrap says
    from core.evaluation import paired_fusion_gain

    ids = kept["subject_risk"]["ids"]
    oracle = {"fusion": "concat", "c_index": kept["oracle_c_index"],
              "subject_risk": {"ids": ids, "risk": rows["true_risk"].tolist()}}
    weak = {"fusion": "cross_attention", "c_index": 0.5, "subject_risk": {"ids": ids, "risk": [0.0] * len(ids)}}
    gain = paired_fusion_gain({"ehr": kept, "oracle": oracle, "weak": weak, "broken": {"error": "x"}}, tabular_cohort)
    direct = paired_bootstrap(rows["true_risk"].to_numpy(), np.asarray(kept["subject_risk"]["risk"]),
                              rows["time"].to_numpy(), rows["event"].to_numpy(), n_boot=1000, seed=0)
    assert gain is not None and (gain["fusion"], gain["unimodal"], gain["n"]) == ("oracle", "ehr", len(ids))
    assert gain["delta_c"] == pytest.approx(direct["delta_c"]) and gain["ci"] == pytest.approx(direct["ci"])
    assert gain["c_fusion"] == pytest.approx(kept["oracle_c_index"]) and gain["p_value"] == direct["p_value"]
    assert paired_fusion_gain({"ehr": kept}, tabular_cohort) is None  # nothing to compare it with
    assert paired_fusion_gain({"ehr": res, "oracle": oracle}, tabular_cohort) is None  # no per-subject risks


# --- real tabular benchmark cohorts (bench/survset_cohorts.py) ---------------------------------------


def test_survset_cohorts_keep_missing_values_and_load(tmp_path: Path) -> None:
    pytest.importorskip("SurvSet", reason="SurvSet (requirements-dev.txt) not installed")
    sys.path.insert(0, str(ROOT / "bench"))
    from survset_cohorts import write_survset_cohort

    from core.cohort import load_cohort

    info = write_survset_cohort("colon", tmp_path, seed=0)
    cohort = load_cohort(tmp_path / "colon")
    assert info["n"] == len(cohort.table) == 929 and info["events"] == int(cohort.table["event"].sum()) == 452
    feats = cohort.features
    assert feats is not None and feats.shape == (929, 18)
    # 'differ' is missing for 23 patients (3 one-hot columns each), 'nodes' for 18: kept as NaN, not imputed
    assert int(feats.isna().sum().sum()) == 87
    assert int(feats["differ=1"].isna().sum()) == 23 and int(feats["nodes"].isna().sum()) == 18
    counts = cohort.table["split"].value_counts()
    assert abs(counts["train"] / 929 - 0.6) < 0.01 and abs(counts["test"] / 929 - 0.2) < 0.01
    for split in ("train", "val", "test"):  # stratified by event
        assert abs(cohort.table.loc[cohort.table["split"] == split, "event"].mean() - 452 / 929) < 0.01
    # months are converted to days where SurvSet's source documents months
    rott = write_survset_cohort("rott2", tmp_path, seed=0)
    assert "months" in rott["unit"]
    assert pd.read_csv(tmp_path / "rott2" / "cohort.csv")["time"].max() == pytest.approx(231.4 * 365.25 / 12, rel=1e-3)


def test_calibration_says_how_many_subjects_its_summaries_cover() -> None:
    """12 subjects: the low-risk half is censored before the horizon (no observed risk), so the ICI is of the other 6
    (the demo's "ICI 0.358" was of 6 of 12 with nothing saying so), and 2 groups give no slope: a line through 2
    points fits them exactly ("slope 0.00 / +0.17" was shown)."""
    from core.evaluate.calibration import calibration_at
    from core.figures.curves import calibration_figure

    t = np.arange(10.0, 130.0, 10.0)
    e = np.array([1] * 6 + [0] * 6)
    cal = calibration_at(np.linspace(0.9, 0.1, 12), t, e, 125.0)
    assert [g["observed"] for g in cal["groups"]] == [None, 1.0]
    assert cal["n_observed"] == 6 and cal["slope"] is None and cal["ici"] == pytest.approx(1.0 - 0.718182, abs=1e-6)
    assert [tr.name for tr in calibration_figure({1825: cal}).data][1] == "5 years (ICI 0.282, 6 of 12 subjects)"


def test_a_model_that_gives_everyone_the_same_risk_is_said() -> None:
    """`evaluate`'s notes say when the middle 90 % of the patients' 1-year risks lie within 1 percentage point (a
    model that learned almost nothing, as on a 100-patient cohort); none of the shipped models' test predictions
    does, nor a spread of a few points."""
    from core.app.demo_install import SHIPPED_MODELS
    from core.evaluation import flat_risk_note

    for model in sorted(p for p in SHIPPED_MODELS.iterdir() if (p / "reference_predictions.npz").is_file()):
        with np.load(model / "reference_predictions.npz") as ref:
            assert flat_risk_note(ref["times"], ref["surv"]) is None, model.name
            times, surv = ref["times"], ref["surv"]
    mean = surv.mean(axis=0, keepdims=True)
    flat = np.repeat(mean, 50, axis=0) * (1 + np.linspace(-1e-3, 1e-3, 50)[:, None])
    note = flat_risk_note(times, flat)
    assert note is not None and note.startswith("the model gives nearly every patient the same risk: ")
    assert " at 1 year for 90 % of the 50 patients. It learned little from these inputs" in note
    spread = np.repeat(mean, 50, axis=0) ** np.linspace(0.8, 1.25, 50)[:, None]
    assert flat_risk_note(times, spread) is None


def test_a_subgroup_on_a_cohort_without_columns_says_what_to_add(tmp_path: Path) -> None:
    """A cohort built from MEDS has no column besides its outcomes: the error says so instead of an empty list."""
    from core.cohort import load_cohort
    from core.errors import InputError

    (tmp_path / "cohort.csv").write_text("subject_id,time,event,split\n" + "".join(
        f"s{i},{100 + i},{i % 2},{'train' if i < 6 else 'test'}\n" for i in range(8)))
    cohort = load_cohort(tmp_path, for_training=False)
    with pytest.raises(InputError, match=r"^subgroup: got sex, is not a column of cohort.csv or features.csv; fix: "
                                         r"this cohort has no column to group by besides its outcomes: add one"):
        cohort.column_values("sex", cohort.ids())


def test_an_evaluation_on_the_models_own_training_cohort_says_so(tmp_path: Path) -> None:
    """A model records its training cohort's outcomes digest: evaluated on every patient of that cohort (a copy of
    it too), the notes say it is not an external validation and the report's title says whose patients they are; on
    its test split, or on another cohort, nothing is said. `site-model add` refuses a cohort it was not trained on."""
    import shutil

    from core.app.site_models import add_site_model
    from core.demo import write_demo_cohort
    from core.errors import InputError
    from core.evaluation import ALL_SPLITS, TRAINING_COHORT, evaluate_model
    from core.train import train_model
    from core.validation_report import validation_report_pdf
    from tests.test_report import pdf_text

    cohort = write_demo_cohort(tmp_path / "c", n=60, seed=5, volumes=False)
    model = tmp_path / "m"
    metrics = train_model(cohort, "ehr_only", model, epochs=1, device="cpu", ensemble=1, overrides={"dim": 16})
    assert metrics["cohort_outcomes"]["subjects"] == 60 and len(metrics["cohort_outcomes"]["digest"]) == 16
    copy = shutil.copytree(cohort, tmp_path / "copy")
    every = evaluate_model(model, copy, split=ALL_SPLITS, n_boot=20)
    (note,) = [n for n in every["notes"] if n.startswith(TRAINING_COHORT)]
    assert "the same 60 patients and outcomes. Every patient includes those it was fitted and stopped on" in note
    pdf = pdf_text(validation_report_pdf({"ehr_only": every}, "ehr_only", cohort="copy", when="2026-11-29 10:00"))
    assert "Evaluation of ehr_only on every patient of its training cohort" in pdf and "External validation" not in pdf
    test = evaluate_model(model, cohort, split="test", n_boot=20)
    assert not [n for n in test["notes"] if n.startswith(TRAINING_COHORT)]
    other = write_demo_cohort(tmp_path / "other", n=60, seed=6, volumes=False)
    assert not [n for n in evaluate_model(model, other, split=ALL_SPLITS, n_boot=20)["notes"]
                if n.startswith(TRAINING_COHORT)]
    with pytest.raises(InputError, match=r"^--cohort: got .*other, is not the cohort this model was trained on "
                                         r"\(other patients or outcomes than its 60\)"):
        add_site_model(model, other, "Site model", tmp_path / "data")
    assert add_site_model(model, copy, "Site model", tmp_path / "data").is_dir()


def test_a_mistyped_option_is_named_beside_the_missing_one(capsys: pytest.CaptureFixture[str]) -> None:
    """`predict --subjet P1`: argparse says only that --subject is missing; the error also names the typo."""
    from core.cli import main

    assert main(["predict", "--model", "m", "--cohort", "c", "--subjet", "P1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --subject: got nothing, is required (--subjet is not an option of this command: "
                   "mistyped?); fix: python -m core predict --help lists the arguments")
    assert main(["predict", "--model", "m", "--cohort", "c"]) == 2  # nothing mistyped: the plain message
    assert capsys.readouterr().err.strip() == ("error: --subject: got nothing, is required; fix: python -m core "
                                               "predict --help lists the arguments")
