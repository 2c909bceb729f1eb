"""Decision curves (dcurves) and subgroup tables (core.evaluate.decision, core.evaluate.subgroups)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

from core.errors import InputError
from core.models.config import EHRConfig
from core.evaluate.decision import decision_curve
from core.evaluate.metrics import harrell_c
from core.cohort import Cohort
from core.evaluate.subgroups import readable_label, subgroup_labels, subgroup_table

TIMES = np.linspace(5.0, 1200.0, 120)


def _cohort(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(40, 90, n)
    sex = rng.integers(0, 2, n)
    rate = 0.0008 * np.exp(0.04 * (age - 65) + 0.5 * sex)
    t_true = rng.exponential(1 / rate)
    c = rng.uniform(0, 1500, n)
    surv = np.exp(-np.outer(rate, TIMES))
    return age, sex, surv, np.minimum(t_true, c), (t_true <= c).astype(int)


def _km_risk(time: np.ndarray, event: np.ndarray, h: float) -> float:
    return 1.0 - float(KaplanMeierFitter().fit(time, event).survival_function_at_times(h).iloc[0])


def test_net_benefit_matches_the_kaplan_meier_formula():
    _, _, surv, time, event = _cohort()
    h, p = 365.0, 0.3
    dc = decision_curve(TIMES, surv, time, event, [h], thresholds=[p])["horizons"][365]
    risk = 1.0 - surv[:, np.searchsorted(TIMES, h, side="right") - 1]
    pos = risk >= p
    km_pos = _km_risk(time[pos], event[pos], h)
    expected = km_pos * pos.mean() - (1 - km_pos) * pos.mean() * p / (1 - p)
    prev = _km_risk(time, event, h)
    assert dc["net_benefit"][0] == pytest.approx(expected, abs=1e-9)
    assert dc["treat_all"][0] == pytest.approx(prev - (1 - prev) * p / (1 - p), abs=1e-9)
    assert dc["treat_none"] == [0.0] and dc["event_prob"] == pytest.approx(prev)


def test_informative_model_beats_a_useless_one_and_horizons_outside_follow_up_are_none():
    _, _, surv, time, event = _cohort(seed=1)
    flat = np.tile(surv.mean(axis=0), (surv.shape[0], 1))
    th = [0.1, 0.2, 0.3, 0.4]
    good = decision_curve(TIMES, surv, time, event, [365, 9000], thresholds=th)
    useless = decision_curve(TIMES, flat, time, event, [365], thresholds=th)["horizons"][365]
    nb_good = np.array(good["horizons"][365]["net_benefit"])
    nb_flat = np.array([max(v, 0.0) for v in useless["net_benefit"]])
    assert (nb_good >= nb_flat - 1e-9).all() and (nb_good > nb_flat + 0.005).any()
    assert good["horizons"][9000] is None
    with pytest.raises(InputError, match="thresholds"):
        decision_curve(TIMES, surv, time, event, [365], thresholds=[1.2])


def test_a_decision_curve_that_breaks_off_says_why_in_its_panel():
    from core.figures.curves import decision_curve_figure

    rng = np.random.default_rng(0)
    rate = rng.uniform(0.0005, 0.02, 60)
    surv = np.exp(-np.outer(rate, TIMES))
    t, c = rng.exponential(1 / rate), rng.uniform(0, 900, 60)
    c[rate > 0.008] = rng.uniform(10, 200, int((rate > 0.008).sum()))  # the high-risk patients leave early,
    t[rate > 0.008] = 1e4  # censored (had they all had the event, their net benefit would be defined)
    dc = decision_curve(TIMES, surv, np.minimum(t, c), (t <= c).astype(int), [365])
    nb = dc["horizons"][365]["net_benefit"]
    assert nb[0] is not None and nb[-1] is None  # dcurves: undefined where the test positives' follow-up ends first
    notes = [a.text for a in decision_curve_figure(dc).layout.annotations if a.text.startswith("gap")]
    assert len(notes) == 1 and "before 1 year" in notes[0]
    whole = {"horizons": {365: {**dc["horizons"][365], "net_benefit": [0.1] * (len(nb) - 1) + [-0.15]}}}
    fig = decision_curve_figure(whole)
    assert not [a for a in fig.layout.annotations if a.text.startswith("gap")]
    assert fig.layout.yaxis.range[0] < -0.15  # a model below treat-none stays in view (the axis stopped at -0.05)


def test_net_benefit_where_every_test_positive_had_the_event_before_the_horizon():
    """Their Kaplan-Meier risk is 1, so NB = P(positive) (dcurves leaves it undefined and the line broke off there,
    "net benefit undefined", where the model was most confident and right); censored before it stays undefined."""
    t = np.array([1.0, 2, 3, 50, 60, 70, 80, 90])
    e = np.array([1, 1, 1, 0, 1, 0, 0, 1])
    risk = np.array([0.95, 0.95, 0.95, 0.1, 0.1, 0.1, 0.1, 0.1])
    grid = np.array([0.0, 10.0, 100.0])
    surv = np.stack([np.ones(8), 1 - risk, 1 - risk], axis=1)
    nb = decision_curve(grid, surv, t, e, [10.0], thresholds=[0.5, 0.97])["horizons"][10]["net_benefit"]
    assert nb == [pytest.approx(3 / 8), 0.0]  # 0.97: nobody is treated
    e[2] = 0  # one of them censored at day 3, before the horizon: their curve is not defined at day 10
    assert decision_curve(grid, surv, t, e, [10.0], thresholds=[0.5])["horizons"][10]["net_benefit"] == [None]


def test_subgroup_labels_categories_quantile_bands_and_missing():
    labels, kind = subgroup_labels(["F", "M", None, "F"])
    assert kind == "categorical" and labels.tolist() == ["F", "M", "missing", "F"]
    labels, kind = subgroup_labels(np.arange(100.0), bands=4)
    assert kind == "quantile"
    assert pd.Series(labels).value_counts().tolist() == [25, 25, 25, 25]
    with pytest.raises(InputError, match="too many groups"):
        subgroup_labels([f"site{i}" for i in range(30)])


def test_the_groups_of_a_yes_no_column_are_named_in_tables():
    labels, _ = subgroup_labels([1.0, 0.0, np.nan, 1.0])  # sex_female as features.csv holds it
    groups = sorted(set(labels))
    assert [readable_label(g, groups) for g in groups] == ["0 (no)", "1 (yes)", "missing"]
    labels, _ = subgroup_labels([0.0, 1.0, 2.0])  # a count: its values stay as they are
    assert [readable_label(g, sorted(set(labels))) for g in ("0", "1", "2")] == ["0", "1", "2"]
    assert readable_label("F", ["F", "M"]) == "F"


def test_subgroup_table_c_index_per_group_and_calibration():
    age, _, surv, time, event = _cohort(n=800, seed=2)
    tab = subgroup_table(TIMES, surv, time, event, time, event, age, [365], column="age", n_boot=30)
    assert tab["kind"] == "quantile" and len(tab["groups"]) == 4
    risk = -(surv * np.diff(np.concatenate([[0.0], TIMES]))).sum(axis=1)  # minus the RMST, the default score
    labels, _ = subgroup_labels(age)
    for g in tab["groups"]:
        idx = labels == g["label"]
        assert g["n"] == int(idx.sum())
        assert g["c_index"] == pytest.approx(harrell_c(time[idx], event[idx].astype(bool), risk[idx]), abs=0.01)
        lo, hi = g["c_index_ci"]
        assert lo <= g["c_index"] <= hi
        cal = g["calibration"][365]
        # the curves are the true ones: predicted risk lies inside the KM interval of every group
        assert cal["observed_ci"][0] - 0.02 <= cal["predicted"] <= cal["observed_ci"][1] + 0.02
        assert cal["ici"] is not None
    # groups ordered by age
    assert tab["groups"][0]["label"].startswith("[")


def test_subgroup_without_events_keeps_its_counts_with_a_note():
    _, sex, surv, time, event = _cohort(n=300, seed=3)
    event = np.where(sex == 1, 0, event)
    tab = subgroup_table(TIMES, surv, time, event, time, event, sex, [365], column="sex", n_boot=20)
    none_group = next(g for g in tab["groups"] if g["label"] == "1")
    assert none_group["c_index"] is None and "0 events" in none_group["note"]
    assert none_group["events"] == 0 and none_group["n"] == int((sex == 1).sum())


def test_a_tiny_subgroup_keeps_its_c_index_without_an_interval():
    """A bootstrap of 2 subjects printed "C 1.000 (95% CI 1.000-1.000)"."""
    _, _, surv, time, event = _cohort(n=300, seed=3)
    site = np.array(["big"] * 295 + ["tiny"] * 5)
    event = event.copy()
    event[-5:] = 1
    tab = subgroup_table(TIMES, surv, time, event, time, event, site, [365], column="site", n_boot=20)
    big, tiny = (next(g for g in tab["groups"] if g["label"] == name) for name in ("big", "tiny"))
    assert tiny["n"] == 5 and tiny["c_index"] is not None and tiny["c_index_ci"] is None
    assert tiny["note"].startswith("n=5: too few subjects for a bootstrap interval")
    assert big["c_index_ci"] is not None and big["note"] is None


def test_the_subgroup_table_a_user_downloads_holds_no_formula():
    """Its CSV download (the table's toolbar) wrote a group '=HYPERLINK(...)' as it was: a spreadsheet runs it."""
    from pages._metric_views import subgroup_rows

    group = {"n": 2, "events": 1, "c_index": None, "c_index_ci": None, "calibration": {}}
    rows = subgroup_rows({"column": "@site", "groups": [{**group, "label": '=HYPERLINK("http://x")'},
                                                        {**group, "label": "-1"}]})
    assert [list(r.values())[0] for r in rows] == ['\'=HYPERLINK("http://x")', "-1"] and "'@site" in rows[0]


def test_subgroup_values_reads_cohort_then_features_and_names_the_columns():
    table = pd.DataFrame({"subject_id": ["a", "b"], "time": [1.0, 2.0], "event": [1, 0], "site": ["x", "y"]})
    feats = pd.DataFrame({"age": [50.0, np.nan]}, index=pd.Index(["a", "b"], name="subject_id"))
    cohort = Cohort(root=Path("."), table=table, features=feats)
    assert cohort.column_values("site", ["b", "a"]) == ["y", "x"]
    assert cohort.column_values("age", ["a", "b"])[0] == 50.0
    with pytest.raises(InputError, match="site, age"):
        cohort.column_values("height", ["a"])


def test_evaluate_command_prints_the_new_sections():
    from core.commands.evaluate import _print_extras

    res = {
        "coverage": {"alpha": 0.1, "band": "range of an ensemble of 5 seeds", "horizons": {
            365: {"band": {"coverage": 0.95}, "curve": {"coverage": 0.91, "event_prob": 0.4}}, 30: None}},
        "conformal": {"horizons": {365: {"coverage": 0.9}}},
        "decision_curve": {"horizons": {365: {"thresholds": [0.1, 0.2], "net_benefit": [0.3, 0.2],
                                              "treat_all": [0.33, 0.1], "treat_none": [0.0, 0.0]}}},
        "subgroups": {"column": "sex", "kind": "categorical", "groups": [
            {"label": "0", "n": 10, "events": 4, "c_index": 0.7, "c_index_ci": [0.6, 0.8]}]},
    }
    buf = io.StringIO()
    _print_extras(res, buf)
    text = buf.getvalue()
    assert "365  0.950  0.910      0.900" in text
    assert "between thresholds 0.20-0.20" in text and "n=10" in text


class _FakeModel:
    """Stands in for a LoadedModel: true exponential curves, a band of +-50 % on the hazard."""

    # no CT, no EHR inputs of its own: the split's CT and EHR checks have nothing to report
    config = SimpleNamespace(fusion="fake", extra={}, image=SimpleNamespace(voxels=False), ehr=EHRConfig())
    fusion = "fake"
    uncertainty = "hazard x 0.5 to x 1.5"

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates
        self.times = np.concatenate([[0.0], TIMES])

    def curve(self, sid: str, scale: float = 1.0) -> np.ndarray:
        return np.exp(-self.rates[sid] * scale * self.times)

    def case_inputs(self, cohort: object, sid: str) -> str:
        return sid

    def predict_case(self, sid: str) -> SimpleNamespace:
        return SimpleNamespace(times=self.times, survival=self.curve(sid), lower=self.curve(sid, 1.5),
                               upper=self.curve(sid, 0.5))


def test_evaluate_model_reports_coverage_conformal_decision_and_subgroups(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    import core.predict
    import core.registry
    from core.evaluation import evaluate_model

    n = 600
    rng = np.random.default_rng(4)
    ids = [f"s{i:03d}" for i in range(n)]
    age = rng.uniform(40, 90, n)
    rate = 0.0008 * np.exp(0.04 * (age - 65))
    t_true = rng.exponential(1 / rate)
    c = rng.uniform(0, 2500, n)
    pd.DataFrame({"subject_id": ids, "time": np.minimum(t_true, c).round(2), "event": (t_true <= c).astype(int),
                  "split": ["train"] * 200 + ["val"] * 200 + ["test"] * 200,
                  "site": rng.choice(["A", "B"], n)}).to_csv(tmp_path / "cohort.csv", index=False)
    pd.DataFrame({"subject_id": ids, "age": age}).to_csv(tmp_path / "features.csv", index=False)
    model = _FakeModel(dict(zip(ids, rate)))
    monkeypatch.setattr(core.registry, "load_model", lambda path, device="cpu": model)
    monkeypatch.setattr(core.predict, "predict_cohort",
                        lambda m, cohort, sel, progress=None, unread=None: (m.times, np.stack([m.curve(s) for s in sel])))
    res = evaluate_model(tmp_path / "model", tmp_path, horizons=(365,), n_boot=20, subgroup="site", band=True)
    assert res["ct_profile"] is None and res["timeline_codes"] is None and res["features"] is None  # nothing to check
    for key in ("c_index", "c_index_ci", "uno_c", "td_auc", "ibs", "n", "events", "calibration",
                "coverage", "conformal", "decision_curve", "subgroups"):
        assert key in res
    cov = res["coverage"]["horizons"][365]
    assert cov["curve"]["coverage"] == pytest.approx(0.9, abs=0.06)  # true curves: their 10 % quantile covers 90 %
    assert cov["band"]["coverage"] > cov["curve"]["coverage"]  # the lower edge is more pessimistic
    assert res["coverage"]["band"] == "hazard x 0.5 to x 1.5"
    assert res["ct_profile"] is None  # a model without a CT training profile reads no CT
    conf = res["conformal"]
    assert conf["calibration"]["alpha"] == 0.1 and not conf["in_sample"]
    assert conf["horizons"][365]["coverage"] == pytest.approx(0.9, abs=0.06)
    assert [g["label"] for g in res["subgroups"]["groups"]] == ["A", "B"]
    assert res["decision_curve"]["horizons"][365]["thresholds"][0] == 0.01
    json.loads(json.dumps(res, allow_nan=False))  # the --json output stays valid JSON
    with pytest.raises(InputError, match="subgroup: got height"):
        evaluate_model(tmp_path / "model", tmp_path, subgroup="height")


def test_evaluate_model_on_every_subject_of_a_cohort_without_a_train_split(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """External validation (``split="all"``): a cohort the model never saw, all of it, with its own censoring; the
    old loader refused it ("training needs a train split") and the test split held a fifth of the patients."""
    import core.predict
    import core.registry
    from core.evaluation import evaluate_model

    n = 300
    rng = np.random.default_rng(7)
    ids = [f"x{i:03d}" for i in range(n)]
    rate = 0.0008 * np.exp(rng.normal(0, 0.8, n))
    t_true, c = rng.exponential(1 / rate), rng.uniform(0, 2500, n)
    table = pd.DataFrame({"subject_id": ids, "time": np.minimum(t_true, c).round(2), "event": (t_true <= c).astype(int)})
    table.to_csv(tmp_path / "cohort.csv", index=False)  # no split column: an automatic 60/20/20 split
    model = _FakeModel(dict(zip(ids, rate)))
    monkeypatch.setattr(core.registry, "load_model", lambda path, device="cpu": model)
    seen: list[float] = []

    def predict(m, cohort, sel, progress=None, unread=None):  # type: ignore[no-untyped-def]
        for i in range(len(sel)):
            if progress is not None:
                progress(i / len(sel), "predicting")
        return m.times, np.stack([m.curve(s) for s in sel])
    monkeypatch.setattr(core.predict, "predict_cohort", predict)
    test = evaluate_model(tmp_path / "model", tmp_path, horizons=(365,), n_boot=20)
    every = evaluate_model(tmp_path / "model", tmp_path, split="all", horizons=(365,), n_boot=20, risk_groups=3,
                           progress=lambda f, _m: seen.append(f))
    assert test["n"] == 60 and every["n"] == n and every["events"] == int(table["event"].sum())
    assert every["c_index"] > 0.65 and every["conformal"]["in_sample"]  # the val subjects are among those evaluated
    groups = every["risk_groups"]["groups"]
    assert [g["n"] for g in groups] == [100, 100, 100] and every["risk_groups"]["logrank_p"] < 1e-3
    assert [g["label"] for g in groups][0] == "low" and groups[0]["events"] < groups[-1]["events"]
    assert seen and seen == sorted(seen) and "risk_groups" not in test
    # the censoring weights of an external validation are the cohort's own, and the JSON's texts say so
    assert "G = censoring Kaplan-Meier of this cohort" in every["coverage"]["definition"]
    assert "of the train split" in test["coverage"]["definition"]
    assert every["conformal"]["calibration"]["method"].count("of this cohort") == 1
    table.assign(split="test").to_csv(tmp_path / "cohort.csv", index=False)  # every subject marked test
    assert evaluate_model(tmp_path / "model", tmp_path, horizons=(365,), n_boot=20)["n"] == n
    table[["subject_id"]].to_csv(tmp_path / "cohort.csv", index=False)
    with pytest.raises(InputError, match="time: got absent, .*cohort.csv gives no outcomes"):
        evaluate_model(tmp_path / "model", tmp_path, split="all")
    table.assign(event=0).to_csv(tmp_path / "cohort.csv", index=False)
    with pytest.raises(InputError, match="event: got all 0 in every subject, no subject has an observed event"):
        evaluate_model(tmp_path / "model", tmp_path, split="all")
