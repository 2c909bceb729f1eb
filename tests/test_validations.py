"""External validations kept on disk (core.app.validations): a validation ends in the user's folder, is listed
newest first, shown again on Cohort & models after the server restarted (nothing of it in memory), and removed."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.app import demo_install, validations, workspace
from tests.test_app import _app, _no_exception, _wait_for_jobs, build_test_demo, using_data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with using_data_dir(build_test_demo(tmp_path_factory)) as base:
        yield base


def _result(c: float, n: int = 40) -> dict[str, dict]:
    return {"ehr_only": {"c_index": c, "n": n, "events": 12, "subject_risk": {"ids": ["a", "b"], "risk": [0.1, 0.2],
                                                                              "time": [5.0, 9.0], "event": [1, 0]}},
            "concat": {"error": "model: got concat, read nothing of any of the 40 subjects"}}


def test_kept_listed_newest_first_pruned_and_removed(tmp_path: Path) -> None:
    user = tmp_path / "users" / "u1"
    assert validations.listing(user) == []
    t0 = 1_790_000_000.0
    first = validations.save(user, _result(0.61), "ehr_only", "site_a.zip", None, now=t0)
    second = validations.save(user, _result(0.72, n=90), "ehr_only", "site_b.zip", "sex", now=t0 + 60)
    listed = validations.listing(user)
    assert [k.id for k in listed] == [second, first]
    assert (listed[0].upload, listed[0].subgroup, listed[0].c_index, listed[0].patients, listed[0].events,
            listed[0].others) == ("site_b.zip", "sex", 0.72, 90, 12, ("concat",))
    assert listed[0].label().endswith("ehr_only and 1 more on site_b.zip · C 0.720 · 90 patients")
    assert listed[0].version is None  # no validated_on: weights not recorded
    assert listed[0].site == "site_b.zip" and listed[0].where == "site_b.zip"  # no site typed: the file's name
    assert validations.load(user, first) == json.loads(json.dumps(_result(0.61)))
    folder = user / validations.FOLDER
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    # a file that is no summary written here is skipped; an id that is no id reads nothing and removes nothing
    (folder / "notes.json").write_text("{}")
    (folder / "20261129-101010-00000000.json").write_text('{"at": 1}')
    assert [k.id for k in validations.listing(user)] == [second, first]
    assert validations.load(user, "../../etc/passwd") is None
    with pytest.raises(ValueError, match=r"^kept_id: '\.\./x' is not a validation's id"):
        validations.remove(user, "../x")
    with pytest.raises(ValueError, match=r"^validated: 'image_only' is not among the results"):
        validations.save(user, _result(0.5), "image_only", "x.zip")
    # a site named: listed, and its file's name beside it; a name too long or with a control character is refused
    named = validations.save(user, _result(0.66), "ehr_only", "export_0412.zip", site=" Hospital\tB ", now=t0 + 90)
    k = validations.listing(user)[0]
    assert (k.id, k.site, k.where) == (named, "Hospital B", "Hospital B (export_0412.zip)")
    assert k.label().endswith("ehr_only and 1 more on Hospital B (export_0412.zip) · C 0.660 · 40 patients")
    from core.errors import InputError

    with pytest.raises(InputError, match=r"^site: got .*, is 61 characters long, longer than 60; fix: a short name"):
        validations.save(user, _result(0.5), "ehr_only", "x.zip", site="H" * 61)
    with pytest.raises(InputError, match=r"^site: got .*, holds a control character; fix: type the site's name"):
        validations.save(user, _result(0.5), "ehr_only", "x.zip", site="Hospital\x00B")
    validations.remove(user, named)
    validations.remove(user, first)
    assert [k.id for k in validations.listing(user)] == [second] and validations.load(user, first) is None
    # beyond MAX_KEPT, the oldest go
    for i in range(validations.MAX_KEPT):
        validations.save(user, _result(0.5 + i / 100), "ehr_only", f"s{i}.zip", now=t0 + 120 + i)
    listed = validations.listing(user)
    assert len(listed) == validations.MAX_KEPT and second not in {k.id for k in listed}
    assert listed[0].upload == f"s{validations.MAX_KEPT - 1}.zip" and listed[-1].upload == "s0.zip"
    assert len(list(folder.glob("*.result.json"))) == validations.MAX_KEPT


def test_a_validation_over_the_quota_is_refused_and_none_kept_is_lost(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeping a validation counts in the user's disk quota: one that fits in the room the oldest beyond MAX_KEPT
    leaves replaces it; one that does not is refused with the quota's message, and no kept validation is removed."""
    from core.errors import InputError

    user, t0 = tmp_path / "users" / "u2", 1_790_000_000.0
    monkeypatch.setattr(validations, "MAX_KEPT", 2)
    a = validations.save(user, _result(0.61), "ehr_only", "a.zip", now=t0)
    b = validations.save(user, _result(0.62), "ehr_only", "b.zip", now=t0 + 60)
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, repr((workspace.folder_bytes(user) + 50) / workspace.GB))
    c = validations.save(user, _result(0.63), "ehr_only", "c.zip", now=t0 + 120)  # in a's room
    assert [k.id for k in validations.listing(user)] == [c, b] and validations.load(user, a) is None
    big = _result(0.7, n=500)
    big["ehr_only"]["subject_risk"] = {"ids": [f"p{i}" for i in range(500)], "risk": [0.5] * 500,
                                       "time": [1.0] * 500, "event": [0] * 500}
    with pytest.raises(InputError, match=r"^disk quota: got .* in use after this, exceeds your quota of "):
        validations.save(user, big, "ehr_only", "d.zip", now=t0 + 180)
    assert [k.id for k in validations.listing(user)] == [c, b]
    assert not list((user / validations.FOLDER).glob(".*.tmp"))


def _evaluated(cohort: Path) -> dict[str, dict]:
    """The shipped-demo ehr_only evaluated as an external validation evaluates it (every patient, three risk groups,
    each patient's risk kept)."""
    from core.evaluation import ALL_SPLITS, evaluate_model

    model = demo_install.demo_paths().models / "ehr_only"
    return {"ehr_only": evaluate_model(model, cohort, split=ALL_SPLITS, risk_groups=3, keep_risk=True,
                                       subgroup="sex_female")}


def test_an_earlier_validation_is_shown_again_after_a_restart_and_removed(data_dir: Path) -> None:
    """No job in memory (a server started anew): the validation kept in the user's folder is listed on the
    Validate tab, shows its metrics, risk groups and worst-ordered patients, and goes with Remove."""
    from core.jobs import default_queue

    result = _evaluated(demo_install.demo_paths().cohort)
    user_dir = workspace.user_root("local", data_dir)
    kept_id = validations.save(user_dir, result, "ehr_only", "hospital_b.zip", None)
    try:
        assert default_queue().get("no-such-job", "local") is None
        at = _app()
        at.run()
        at.switch_page("pages/cohort_models.py").run()
        _wait_for_jobs()  # the selected model's own test-split evaluation (unless an earlier test kept it)
        at.run()
        _no_exception(at)
        (box,) = [s for s in at.selectbox if s.key == "kept_validation"]
        assert box.value is None and len(box.options) == 1 and "on hospital_b.zip" in box.options[0]
        at.session_state["kept_validation"] = kept_id
        at.run()
        _no_exception(at)
        m = result["ehr_only"]
        shown = {x.label: x.value for x in at.metric}
        assert shown["Subjects / events"] == f"{m['n']} / {m['events']}"
        assert any(f"{m['c_index']:.3f}" in str(v) for k, v in shown.items() if k == "Harrell's C-index"), shown
        assert any(c.value.startswith("ehr_only validated on hospital_b.zip on ") for c in at.caption)
        table = next(d.value for d in at.dataframe if "pairs ordered right" in d.value.columns)
        assert 1 <= len(table) <= 10
        # the subgroups as in memory (read back from JSON, the horizons are text: still each group's 1-year numbers)
        groups = [d.value for d in at.dataframe if "sex_female" in d.value.columns][-1]  # after Selected model's
        want = [f"{g['calibration'][365]['predicted']:.2f} / {g['calibration'][365]['observed']:.2f}"
                for g in m["subgroups"]["groups"]]
        assert groups["1 year (pred. / obs.)"].tolist() == want and len(want) == 2
        # the report buttons: the kept validation's, and the selected model's own (its test split)
        labels = [d.proto.label for d in at.get("download_button")]
        assert "Validation report (PDF)" in labels and "Model report (PDF)" in labels, labels
        (remove,) = [b for b in at.button if b.key == "kept_validation_remove"]
        remove.click().run()
        _no_exception(at)
        assert validations.listing(user_dir) == []
        assert not [s for s in at.selectbox if s.key == "kept_validation"]
    finally:
        if validations.load(user_dir, kept_id) is not None:
            validations.remove(user_dir, kept_id)


def test_a_models_validations_on_three_sites_are_pooled(data_dir: Path, tmp_path: Path) -> None:
    """Validate on your cohort: the shipped ehr_only kept validated on three sites' cohorts (one of them twice, from
    two files named as one site) is pooled on a toggle: by default the newest validation of each site; the pooled
    C-index, the prediction interval
    and I^2 are core.evaluate.pooled's of the kept numbers; the forest plot holds the three sites and the pooled row;
    the table downloads as CSV."""
    from core.demo import write_demo_cohort
    from core.evaluate.pooled import pooled_c_index, pooled_oe

    user_dir = workspace.user_root("local", data_dir)
    t0, kept = 1_790_000_000.0, []
    for i, (name, site, seed) in enumerate((("site_a.zip", "Hospital A", 21), ("site_b.zip", None, 22),
                                           ("export_2.zip", "Hospital A", 23), ("site_c.zip", None, 24))):
        result = _evaluated(write_demo_cohort(tmp_path / f"c{i}", n=60, seed=seed, volumes=False))
        kept.append((validations.save(user_dir, result, "ehr_only", name, now=t0 + 60 * i, site=site),
                     result["ehr_only"]))
    try:
        newest = [m for (_, m), i in zip(kept, range(4)) if i != 0][::-1]  # site_c, Hospital A (again), site_b
        want = pooled_c_index([m["c_index"] for m in newest], [m["c_index_ci"][0] for m in newest],
                              [m["c_index_ci"][1] for m in newest])
        at = _app()
        at.run()
        at.switch_page("pages/cohort_models.py").run()
        _wait_for_jobs()
        at.session_state["pool_on"] = True
        at.run()
        _no_exception(at)
        (chosen,) = [m for m in at.multiselect if m.key == "pool_ids_ehr_only"]
        assert chosen.value == [k for k, _ in kept[1:]][::-1] and len(chosen.options) == 4
        assert chosen.format_func(kept[2][0]).startswith("Hospital A (export_2.zip) · ")
        shown = [(x.label, x.value) for x in at.metric]
        assert ("Pooled C-index", f"{want['c']:.3f}") in shown
        lo, hi = want["prediction"]
        assert ("A new site's C-index", f"{lo:.2f}-{hi:.2f}") in shown
        assert shown[shown.index(("Pooled C-index", f"{want['c']:.3f}")) + 2] == ("Between sites (I²)",
                                                                                 f"{100 * want['i2']:.0f} %")
        # calibration in the large at 1 year, pooled on the log scale
        cal = [m["calibration"][365] for m in newest]
        want_oe = pooled_oe([c["oe"] for c in cal], [c["oe_ci"][0] for c in cal], [c["oe_ci"][1] for c in cal])
        assert all(c["oe"] == pytest.approx(c["observed"] / c["expected"]) for c in cal)
        assert ("Pooled O:E at 1 year", f"{want_oe['oe']:.2f}") in shown
        charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")[-2:]]
        assert [list(t["y"]) for t in charts[0]["data"]][1] == ["Pooled (random effects)"]
        assert [y.split(" (")[0] for y in charts[0]["data"][0]["y"]] == ["site_c.zip", "Hospital A", "site_b.zip"]
        assert charts[1]["data"][0]["x"] == pytest.approx([c["oe"] for c in cal])
        labels = [d.proto.label for d in at.get("download_button")]
        assert "Download the pooled table (CSV)" in labels and "Pooled report (PDF)" in labels
        # two sites chosen: no prediction interval yet
        at.session_state["pool_ids_ehr_only"] = [k for k, _ in kept[2:]]
        at.run()
        _no_exception(at)
        assert ("A new site's C-index", "3 sites needed") in [(x.label, x.value) for x in at.metric]
        # the model replaced under its name (other weights) and validated on two sites: pooled apart
        from core.evaluation import json_plain

        for i, name in enumerate(("site_a.zip", "site_d.zip")):
            again = json.loads(json.dumps(kept[i][1], default=json_plain))
            again["validated_on"] = {"cohort": name, "at": "2026-11-30 10:00", "model_fingerprint": 1234567.0}
            kept.append((validations.save(user_dir, {"ehr_only": again}, "ehr_only", name, now=t0 + 600 + i), again))
        at.run()
        (box,) = [b for b in at.selectbox if b.key == "pool_model"]
        assert box.options == [f"ehr_only (version 1, validated from {validations.listing(user_dir)[1].at})",
                               "ehr_only (weights not recorded)"]
        box.set_value(box.options[0]).run()
        _no_exception(at)
        (chosen,) = [m for m in at.multiselect if m.key == f"pool_ids_{box.options[0]}"]
        assert chosen.value == [kept[5][0], kept[4][0]]
        assert ("A new site's C-index", "3 sites needed") in [(x.label, x.value) for x in at.metric]
    finally:
        for kept_id, _ in kept:
            validations.remove(user_dir, kept_id)


def test_a_validation_that_cannot_be_kept_is_still_returned_with_the_reason(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk when the validation is kept: the job still returns its result (shown on the page, its tables
    downloadable), the first model's ``not_kept`` saying why, and nothing half-written is listed."""
    from core.app.background import validate_uploaded_job
    from core.app.demo_install import SHIPPED_MODELS
    from core.demo import write_demo_cohort
    from tests.test_background import _ctx, _zip

    src = write_demo_cohort(tmp_path / "site", n=30, seed=5, volumes=False)
    cohorts = tmp_path / "user" / "cohorts"

    def full(*_args: object, **_kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(validations, "save", full)
    res = validate_uploaded_job(_ctx(), _zip(src), str(cohorts), {"ehr_only": str(SHIPPED_MODELS / "ehr_only")},
                                keep="site.zip")
    assert res["ehr_only"]["n"] == 30 and 0 < res["ehr_only"]["c_index"] < 1
    assert res["ehr_only"]["not_kept"] == "[Errno 28] No space left on device"
    assert validations.listing(cohorts.parent) == [] and list(cohorts.iterdir()) == []
    # over the user's quota (the upload was checked before the job; the kept result is measured when it is written)
    monkeypatch.undo()
    monkeypatch.setenv(workspace.USER_QUOTA_ENV, "0.000001")  # 1 KB
    res = validate_uploaded_job(_ctx(), _zip(src), str(cohorts), {"ehr_only": str(SHIPPED_MODELS / "ehr_only")},
                                keep="site.zip")
    assert res["ehr_only"]["n"] == 30 and res["ehr_only"]["not_kept"].startswith("disk quota: got ")
    from core.evaluation import model_fingerprint  # the weights validated, for pooling one model's sites

    assert res["ehr_only"]["validated_on"]["model_fingerprint"] == model_fingerprint(SHIPPED_MODELS / "ehr_only") > 0
    assert "exceeds your quota of 1.0 KB" in res["ehr_only"]["not_kept"]
    assert validations.listing(cohorts.parent) == [] and list(cohorts.iterdir()) == []
