"""The app's background jobs (core.app.background): an uploaded cohort is gated in memory, then unpacked and
trained into the user's folders; evaluations are kept beside the model."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.app.background import evaluate_job, train_uploaded_job, trained_models
from core.errors import InputError
from core.evaluation import model_fingerprint, read_saved_metrics
from core.jobs import JobContext


def _ctx(seen: list[float] | None = None, breaks: list[float] | None = None) -> JobContext:
    """A job context that keeps the fractions reported (``seen``) and, at each ``yield_turn``, the last one
    (``breaks``: where the job would make way for heavy jobs queued meanwhile)."""
    return JobContext(lambda f, _m: seen.append(f) if seen is not None else None, lambda: False,
                      lambda: breaks.append(seen[-1] if seen else 0.0) if breaks is not None else None)


def _zip(folder: Path, top: str = "cohort") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}/{p.relative_to(folder).as_posix()}")
    return buf.getvalue()


def test_a_cohort_with_phi_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from tests.test_phi_cohort import _cohort

    data = _zip(_cohort(tmp_path / "src"))
    cohorts, models = tmp_path / "user" / "cohorts", tmp_path / "user" / "models"
    with pytest.raises(InputError, match=r"cohort: got 9 of its studies.*PHI in PrivateTags"):
        train_uploaded_job(_ctx(), data, str(cohorts), "ehr_only", str(models / "m"), 1)
    assert not cohorts.exists() and not models.exists()


@pytest.mark.slow
def test_an_uploaded_cohort_is_trained_listed_and_evaluated_once(tmp_path: Path) -> None:
    from core.demo import write_demo_cohort

    src = write_demo_cohort(tmp_path / "demo", n=48, seed=3)
    models = tmp_path / "user" / "models"
    seen: list[float] = []
    result = train_uploaded_job(_ctx(seen), _zip(src), str(tmp_path / "user" / "cohorts"), "ehr_only",
                                str(models / "ehr_only-1"), 2, label="ehr_only (your cohort)")
    assert Path(result["out"]) == models / "ehr_only-1" and 0.0 <= result["c_index"] <= 1.0
    assert seen == sorted(seen) and seen[-1] <= 1.0 and any(f >= 0.1 for f in seen)  # gate first, then training
    assert not list(models.glob("*.partial"))
    listed = trained_models(models)
    assert list(listed) == ["ehr_only (your cohort)"]
    model_dir, cohort_dir = listed["ehr_only (your cohort)"]
    assert (cohort_dir / "cohort.csv").is_file() and cohort_dir.parent == tmp_path / "user" / "cohorts"
    # the quota check before a training counts the model as the shipped one of its strategy: about its real size
    from core.app.background import expected_model_bytes
    from core.app.workspace import folder_bytes

    assert 0.5 < folder_bytes(model_dir) / expected_model_bytes(["ehr_only"]) < 1.5, folder_bytes(model_dir)
    saved = model_dir / "test_metrics.json"
    todo = {"mine": (str(model_dir), str(cohort_dir), str(saved), model_fingerprint(model_dir))}
    breaks: list[float] = []
    first = evaluate_job(_ctx(breaks=breaks), {**todo, "again": (*todo["mine"][:2], None, 0.0)})["mine"]
    assert len(breaks) == 1  # two evaluations computed: way made once, between them
    assert read_saved_metrics(saved, model_fingerprint(model_dir)) == json.loads(json.dumps(first))
    assert evaluate_job(_ctx(breaks=breaks), todo)["mine"] == read_saved_metrics(saved, model_fingerprint(model_dir))
    assert len(breaks) == 1  # a kept evaluation is read, not computed: no break
    # one kept before each patient's risk was (before the paired comparison): read as it is for its own metrics,
    # computed again (and kept again) for a comparison
    old = json.loads(saved.read_text())
    del old["metrics"]["subject_risk"]
    saved.write_text(json.dumps(old))
    stamp = model_fingerprint(model_dir)
    assert read_saved_metrics(saved, stamp) is not None and read_saved_metrics(saved, stamp, with_risk=True) is None
    again = evaluate_job(_ctx(), todo)["mine"]
    assert "subject_risk" in again and read_saved_metrics(saved, stamp, with_risk=True) == json.loads(json.dumps(again))
    assert abs(first["c_index"] - result["c_index"]) < 1e-9  # the same test split as training reported


def test_shipped_demo_models_carry_their_test_evaluation_and_predictions() -> None:
    """The Cohort page reads these instead of computing them on a first start; stale ones would be recomputed."""
    import numpy as np

    from core.app.demo_install import SHIPPED_MODELS, shipped_manifest

    manifest = shipped_manifest()
    for fusion, expected in manifest["test_metrics"].items():
        folder = SHIPPED_MODELS / fusion
        saved = read_saved_metrics(folder / "demo_test_metrics.json", model_fingerprint(folder))
        assert saved is not None, f"{fusion}: demo_test_metrics.json missing or stale"
        # the same predictions up to float32 rounding: training scored the detector's per-slice statistics computed
        # in batches, the evaluation runs each study through the whole network, and one near-tied pair of 9,969 may flip
        assert abs(saved["c_index"] - expected["c_index"]) < 5e-4 and saved["n"] == expected["n"]
        with np.load(folder / "reference_predictions.npz") as ref, np.load(folder / "val_predictions.npz") as val:
            assert len(ref["ids"]) == expected["n"] and ref["surv"].shape[0] == expected["n"]
            assert val["surv"].shape[0] == len(val["ids"]) > 0
            assert np.all(np.diff(ref["surv"], axis=1) <= 1e-9)  # survival curves never rise


def test_the_forms_body_crop_reaches_training_as_the_image_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training form's "Crop each CT to the body first" -> ``train_job(body_crop=True)`` -> ``train_model``
    with ``{"image": {"body_crop": True}}``; unticked, no override at all."""
    import core.train
    from core.app.background import train_job

    calls: list[dict | None] = []

    def fake_train(cohort_dir: str, fusion: str, out: Path, **kw: object) -> dict:
        calls.append(kw.get("overrides"))  # type: ignore[arg-type]
        Path(out).mkdir(parents=True)
        return {"test": {"c_index": 0.6, "c_index_ci": [0.5, 0.7]}}

    monkeypatch.setattr(core.train, "train_model", fake_train)
    for i, crop in enumerate((True, False)):
        out = train_job(_ctx(), str(tmp_path / "cohort"), "image_only", str(tmp_path / f"m{i}"), 2, gate=False,
                        body_crop=crop)
        assert out["c_index"] == 0.6 and Path(out["out"]).is_dir()
    assert calls == [{"image": {"body_crop": True}}, None]


def test_an_uploaded_cohort_validates_a_model_on_every_patient_and_is_removed_after(tmp_path: Path) -> None:
    """External validation in the app: the zip is gated and unpacked as for training, the shipped ehr_only is
    evaluated on all its patients with three risk groups, and nothing of the cohort stays on the server."""
    import pandas as pd

    from core.app.background import validate_uploaded_job
    from core.app.demo_install import SHIPPED_MODELS
    from core.demo import write_demo_cohort

    src = write_demo_cohort(tmp_path / "site", n=90, seed=9, volumes=False)
    table = pd.read_csv(src / "cohort.csv").drop(columns=["split"])
    table.to_csv(src / "cohort.csv", index=False)  # a hospital's cohort: no split column
    cohorts = tmp_path / "user" / "cohorts"
    seen: list[float] = []
    breaks: list[float] = []
    both = validate_uploaded_job(_ctx(seen, breaks), _zip(src), str(cohorts),
                                 {"ehr_only": str(SHIPPED_MODELS / "ehr_only"), "broken": str(tmp_path / "no_model"),
                                  "image_only": str(SHIPPED_MODELS / "image_only")},
                                 subgroup="sex_female", keep="site_b.zip", site="Hospital B")
    res = both["ehr_only"]
    assert both["broken"]["error"].startswith("model: got ")  # a later model's error is its row, not the job's end
    assert both["ehr_only"]["unread"] == 0  # no CT in this cohort: image_only read nothing, and says so
    assert both["image_only"]["error"].startswith("model: got image_only, read nothing of any of the 90 subjects")
    assert both["ehr_only"]["fusion_gain"] is None  # two single-modality models: no fusion to set against them
    # the validated model keeps each patient's risk and outcome (the patients it orders worst), the others do not
    assert [n for n, m in both.items() if "subject_risk" in m] == ["ehr_only"]
    kept = res["subject_risk"]
    outcomes = table.set_index("subject_id").loc[kept["ids"]]
    assert sorted(kept["ids"]) == sorted(table["subject_id"].astype(str))
    assert kept["event"] == outcomes["event"].astype(int).tolist()
    np.testing.assert_allclose(kept["time"], outcomes["time"].to_numpy(dtype=float))
    from core.evaluate.patient_pairs import patient_table

    pairs = patient_table(kept["ids"], kept["time"], kept["event"], kept["risk"])
    assert pairs["concordant"].sum() / pairs["comparable"].sum() == pytest.approx(res["c_index"], abs=1e-9)
    assert res["n"] == 90 and res["events"] == int(table["event"].sum()) and res["c_index"] > 0.55
    sexes = pd.read_csv(src / "features.csv")["sex_female"]
    assert [(g["label"], g["n"]) for g in res["subgroups"]["groups"]] == [("0", int((sexes == 0).sum())),
                                                                          ("1", int((sexes == 1).sum()))]
    assert [g["n"] for g in res["risk_groups"]["groups"]] == [30, 30, 30]
    assert seen == sorted(seen) and seen[-1] == 1.0 and any(0.1 < f < 0.95 for f in seen)  # gate, predictions
    assert len(breaks) == 2 and 0.1 < breaks[0] <= breaks[1] < 0.95  # way made between the three models
    assert list(cohorts.iterdir()) == []
    # kept in the user's folder (the one holding the cohorts folder), whole: the same numbers read back
    from core.app import validations
    from core.evaluation import json_plain

    (kept,) = validations.listing(cohorts.parent)
    assert (kept.validated, kept.others, kept.upload, kept.subgroup, kept.patients) == (
        "ehr_only", ("broken", "image_only"), "site_b.zip", "sex_female", 90)
    assert kept.site == "Hospital B" and (res["validated_on"]["cohort"], res["validated_on"]["upload"]) == (
        "Hospital B", "site_b.zip")  # the report names the site
    assert kept.c_index == pytest.approx(res["c_index"]) and validations.load(cohorts.parent, kept.id) == json.loads(
        json.dumps(both, default=json_plain))
    table[["subject_id"]].to_csv(src / "cohort.csv", index=False)
    with pytest.raises(InputError) as err:  # a validation that stops keeps nothing
        validate_uploaded_job(_ctx(), _zip(src), str(cohorts), {"ehr_only": str(SHIPPED_MODELS / "ehr_only")},
                              keep="site_c.zip")
    assert str(err.value).startswith("time: got absent, cohort.csv gives no outcomes") and str(cohorts) not in str(err.value)
    assert list(cohorts.iterdir()) == [] and [k.upload for k in validations.listing(cohorts.parent)] == ["site_b.zip"]


def test_a_cohort_with_phi_is_not_validated_on(tmp_path: Path) -> None:
    from core.app.background import validate_uploaded_job
    from core.app.demo_install import SHIPPED_MODELS
    from tests.test_phi_cohort import _cohort

    cohorts = tmp_path / "user" / "cohorts"
    with pytest.raises(InputError, match=r"cohort: got 9 of its studies.*PHI in PrivateTags"):
        validate_uploaded_job(_ctx(), _zip(_cohort(tmp_path / "src")), str(cohorts), {"m": str(SHIPPED_MODELS / "ehr_only")})
    assert not cohorts.exists()


@pytest.mark.slow
def test_the_bar_of_every_strategy_follows_the_strategies_own_times() -> None:
    """The "all 7" job's bar on a small cohort (session 51's 60 patients: the CT strategy 938 s, ehr_only 2 s, the
    fusions 7-17 s): once a fusion is timed, the time left that the bar implies is the fusions' own, where the
    benchmark's fixed 9:1 shares implied several minutes too many; the bar never goes back."""
    from core.app.background import bar_span
    from core.models import FUSIONS

    took = dict(zip(FUSIONS, [938.0, 2.0, 17.0, 12.0, 9.0, 14.0, 7.0]))
    runs, seconds, spent, hi, starts = list(FUSIONS), {}, 5.0, 0.1, []
    for i, fusion in enumerate(runs):
        lo, hi = bar_span(i, runs, seconds, spent, hi)
        assert (not starts or lo >= starts[-1]) and lo <= hi <= 1.0
        starts.append(lo)
        if i == 3:  # after image_only, ehr_only and concat: the time left that the bar implies (core.jobs' eta_s)
            implied, left = spent * (1 - lo) / lo, sum(list(took.values())[3:])
            fixed = 0.1 + 0.9 * (9 + 2) / 15  # the fixed shares' bar here
            assert 0.5 * left < implied < 2 * left and spent * (1 - fixed) / fixed > 5 * left
        seconds[i] = took[fusion]
        spent += took[fusion]
    assert starts[0] == 0.1 and hi == pytest.approx(1.0)
    # a refused strategy is not timed: nothing timed keeps the fixed shares, from where the bar stands
    from core.app.background import ENCODER_SHARE

    assert bar_span(1, ["ehr_only", "image_only"], {0: 2.0}, 3.0, 0.1) == (pytest.approx(0.1 + 0.9 / (1 + ENCODER_SHARE)), 1.0)
    assert bar_span(1, ["ehr_only", "image_only"], {0: 2.0}, 3.0, 0.25) == (0.25, 1.0)


def test_before_a_fusion_is_timed_the_bar_expects_the_cohorts_own_ratio() -> None:
    """During image_only of "all 7" the bar's share for image_only is a prior. The benchmark's fixed 9:1 and the
    later 9 x 400 / n (60:1 on 60 patients, 18:1 on 200) were fitted on float32 pretexts; on "all 7" as the app runs
    it now (one thread, bfloat16 pretext, session 55) image_only took 411 s against 33-55 s a fusion on 200 patients.
    At two thirds of image_only, the time left that the bar implies is within 1.5x of the truth with
    encoder_share, and not with the old rule."""
    from core.app.background import bar_span, encoder_share
    from core.models import FUSIONS

    took = [411.0, 17.6, 33.0, 55.0, 38.0, 36.0, 33.5]  # 200 patients x 30 slices, 10 epochs, one thread (session 55)
    runs, spent = list(FUSIONS), 2.0
    for share, close in ((9.0 * 400 / 200, False), (encoder_share(200), True)):
        lo, hi = bar_span(0, runs, {}, spent, 0.1, share)
        at = 280.0  # seconds into image_only
        bar = lo + (hi - lo) * at / took[0]  # image_only's own bar moves with its time (core.jobs' eta_s)
        implied, left = (spent + at) * (1 - bar) / bar, took[0] - at + sum(took[1:])
        assert (0.67 * left < implied < 1.5 * left) is close, (share, implied, left)


def test_every_strategy_is_trained_on_one_upload_evaluated_and_kept(tmp_path: Path) -> None:
    """Train on your cohort, "all 7, compared": one gated upload, each strategy trained in turn and evaluated on the
    test split (kept beside the model, so Cohort & models' comparison reads it at once); a strategy the cohort
    cannot feed (image_only without studies) is its own error row, the others go on."""
    from core.app.background import train_every_job
    from core.demo import write_demo_cohort

    src = write_demo_cohort(tmp_path / "demo", n=48, seed=3, volumes=False)
    models, cohorts = tmp_path / "user" / "models", tmp_path / "user" / "cohorts"
    runs = {f: (str(models / f"{f}-1"), f"{f} (your cohort)") for f in ("ehr_only", "image_only")}
    seen: list[float] = []
    breaks: list[float] = []
    result = train_every_job(_ctx(seen, breaks), _zip(src), str(cohorts), runs, 2)
    out = result["models"]
    assert list(out) == ["ehr_only (your cohort)", "image_only (your cohort)"]
    assert out["image_only (your cohort)"]["error"].startswith("fusion: got image_only, needs images but the cohort has none")
    assert not (models / "image_only-1").exists() and not list(models.glob("*.partial"))
    ehr = out["ehr_only (your cohort)"]
    import pandas as pd

    assert ehr["split"] == "test" and 0.0 <= ehr["c_index"] <= 1.0
    assert ehr["n"] == int((pd.read_csv(src / "cohort.csv")["split"] == "test").sum())
    assert read_saved_metrics(models / "ehr_only-1" / "test_metrics.json",
                              model_fingerprint(models / "ehr_only-1")) == json.loads(json.dumps(ehr))
    assert list(trained_models(models)) == ["ehr_only (your cohort)"]
    assert Path(result["cohort_dir"]).parent == cohorts
    # the gate, then ehr_only within its share of the bar (image_only, which would train the CT encoder, has
    # encoder_share(48) = 21 x as much on 48 subjects), training then evaluation, then the end
    from core.app.background import encoder_share

    top = 0.1 + 0.9 / (1 + encoder_share(48))
    assert seen == sorted(seen) and seen[0] <= 0.1 and seen[-1] == 1.0
    assert max(f for f in seen if f < 1.0) == pytest.approx(top) and any(0.1 + 0.5 * (top - 0.1) < f < top for f in seen)
    # where the job made way: between ehr_only's five members, then after its evaluation, before image_only
    assert len(breaks) == 5 and breaks == sorted(breaks) and breaks[0] > 0.1 and top - 0.1 * (top - 0.1) < breaks[-1] <= top
    # no strategy can be trained: the first one's error ends the job and the unpacked cohort goes
    with pytest.raises(InputError):
        train_every_job(_ctx(), _zip(src), str(cohorts), {"image_only": (str(models / "x"), "x")}, 2)
    assert [p.name for p in cohorts.iterdir()] == [Path(result["cohort_dir"]).name]


def test_every_strategy_trains_on_a_cohort_folder_the_user_keeps(tmp_path: Path) -> None:
    """"all 7, compared" on a cohort folder (one built from MEDS, given by its path instead of an upload's bytes):
    trained in place, its evaluation beside the model; a job that can train nothing fails and leaves the folder."""
    from core.app.background import UPLOAD_JOBS, train_every_on_folder_job
    from core.demo import write_demo_cohort

    assert train_every_on_folder_job not in UPLOAD_JOBS  # a restart that stops it does not ask for a zip
    src = write_demo_cohort(tmp_path / "kept", n=48, seed=3, volumes=False)
    models = tmp_path / "user" / "models"
    runs = {"ehr_only": (str(models / "ehr_only-1"), "ehr_only (your cohort)")}
    result = train_every_on_folder_job(_ctx(), str(src), runs, 2)
    assert result["cohort_dir"] == str(src) and 0.0 <= result["models"]["ehr_only (your cohort)"]["c_index"] <= 1.0
    assert (models / "ehr_only-1" / "test_metrics.json").is_file()
    with pytest.raises(InputError, match="needs images but the cohort has none"):
        train_every_on_folder_job(_ctx(), str(src), {"image_only": (str(models / "x"), "x")}, 2)
    assert (src / "cohort.csv").is_file() and not (tmp_path / "user" / "cohorts").exists()


def test_a_user_deletes_a_model_trained_here_and_its_cohort_when_no_other_model_needs_it(tmp_path: Path) -> None:
    """The disk quota's message asks the user to delete what they no longer need; models and kept cohorts count,
    and the app could delete neither. Only the user's own app-trained models go, a shared cohort stays."""
    import json as _json

    from core.app.background import TRAINED_MARKER, delete_trained_model, trained_models
    from core.errors import InputError

    models, cohorts = tmp_path / "models", tmp_path / "cohorts"
    for c in ("a", "b"):
        (cohorts / c).mkdir(parents=True)
        (cohorts / c / "cohort.csv").write_text("subject_id,time,event\n")
    for m, c in (("m1", "a"), ("m2", "a"), ("m3", "b")):
        (models / m).mkdir(parents=True)
        (models / m / "config.json").write_text("{}")
        (models / m / TRAINED_MARKER).write_text(_json.dumps({"cohort_dir": str(cohorts / c), "label": m}))
    assert delete_trained_model(models, models / "m3", cohorts) == [models / "m3", cohorts / "b"]
    assert delete_trained_model(models, models / "m1", cohorts) == [models / "m1"]  # m2 still reads cohort a
    assert (cohorts / "a").is_dir() and set(trained_models(models)) == {"m2"}
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    for bad in (tmp_path / "demo", models / "nothing"):
        with pytest.raises(InputError, match="is not a model you trained here"):
            delete_trained_model(models, bad, cohorts)
    assert delete_trained_model(models, models / "m2", cohorts) == [models / "m2", cohorts / "a"]


def models_trained_here(root: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    """``root/models/<name>`` for each of ``names``, each marked as trained in the app on ``root/cohorts/a``:
    (models folder, cohorts folder)."""
    import json as _json

    from core.app.background import TRAINED_MARKER

    models, cohorts = root / "models", root / "cohorts"
    (cohorts / "a").mkdir(parents=True)
    for m in names:
        (models / m).mkdir(parents=True)
        (models / m / "config.json").write_text("{}")
        (models / m / TRAINED_MARKER).write_text(_json.dumps({"cohort_dir": str(cohorts / "a"), "label": m}))
    return models, cohorts


def test_a_model_or_cohort_a_running_job_reads_is_not_deleted_under_it(tmp_path: Path) -> None:
    """Deleting a model while its evaluation ran made the job fail half-way (a failed job in the sidebar, no metrics);
    deleting a model's last cohort while a training read it did the same. Both are refused, naming the job, until the
    job has ended; a job on another folder (m10 beside m1) or one that has ended does not hold the deletion."""
    from core.app.background import delete_trained_model
    from core.errors import InputError
    from core.jobs import Job

    models, cohorts = models_trained_here(tmp_path, ("m1", "m10"))
    # shaped as pages/cohort_models.py submits them: evaluate_job({name: (model, cohort, saved, stamp)}, device)
    evaluation = Job(id="job1", owner="u", title="Evaluating m1 on the test split", key=None, heavy=True,
                     state="running", args=({"m1": (str(models / "m1"), str(cohorts / "a"), "/x/m.json", "s")}, "cpu"))
    other = Job(id="job2", owner="u", title="Evaluating m10", key=None, heavy=True, state="queued",
                args=({"m10": (str(models / "m10") + "/", "relative/m1", "m1")},))
    with pytest.raises(InputError, match=r'^model: got m1, is read by your job "Evaluating m1 on the test split" '
                                         r"\(running\); fix: wait for it to end, or cancel it"):
        delete_trained_model(models, models / "m1", cohorts, [other, evaluation])
    assert (models / "m1" / "config.json").is_file()
    evaluation.state = "done"
    assert delete_trained_model(models, models / "m1", cohorts, [other, evaluation]) == [models / "m1"]
    # the last model of cohort a: a training on that cohort (train_job(ctx, cohort_dir, fusion, out, ...)) keeps both
    training = Job(id="job3", owner="u", title="Training concat", key=None, heavy=True, state="running",
                   args=(str(cohorts / "a" / "."), "concat", str(models / "new")))
    with pytest.raises(InputError, match=r'^model: got m10 \(its cohort\), is read by your job "Training concat"'):
        delete_trained_model(models, models / "m10", cohorts, [evaluation, training])
    assert (models / "m10").is_dir() and (cohorts / "a").is_dir()
    training.state = "cancelled"
    assert delete_trained_model(models, models / "m10", cohorts, [training]) == [models / "m10", cohorts / "a"]


def test_a_training_cancelled_after_the_unpack_leaves_no_cohort_behind(tmp_path: Path) -> None:
    """A cancelled (or failed) training of an uploaded cohort removed nothing: its unpacked cohort stayed in the
    user's folder, counting against the quota, with no model to delete it with."""
    from core.app.background import train_every_job
    from core.demo import write_demo_cohort
    from core.jobs import JobCancelled

    data = _zip(write_demo_cohort(tmp_path / "demo", n=24, seed=3, volumes=False))
    cohorts, models = tmp_path / "user" / "cohorts", tmp_path / "user" / "models"
    seen: list[float] = []
    cancel_after_gate = JobContext(lambda f, _m: seen.append(f), lambda: bool(seen) and seen[-1] >= 0.1)
    with pytest.raises(JobCancelled):
        train_uploaded_job(cancel_after_gate, data, str(cohorts), "ehr_only", str(models / "m"), 1)
    assert seen[-1] >= 0.1 and list(cohorts.iterdir()) == [] and not list(models.glob("*"))
    seen.clear()
    with pytest.raises(JobCancelled):
        train_every_job(cancel_after_gate, data, str(cohorts), {"ehr_only": (str(models / "e"), "e")}, 1)
    assert list(cohorts.iterdir()) == []
