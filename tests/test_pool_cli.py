"""``python -m core pool``: one model's C-index and observed / expected risk over several sites' ``evaluate --split all --json`` outputs, pooled
(core.evaluate.pooled), printed, as JSON and as CSV; files it cannot use are refused in one line naming them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from core.app import demo_install
from core.cli import main as cli_main
from core.demo import write_demo_cohort
from core.evaluate.pooled import pooled_c_index, pooled_oe


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The shipped ehr_only evaluated by `evaluate --split all --json` on three new demo cohorts, each saved as a file."""
    model = demo_install.SHIPPED_MODELS / "ehr_only"
    folder = tmp_path_factory.mktemp("pool")
    out = []
    for name, seed, n in (("north", 41, 80), ("south", 42, 60), ("east", 43, 100)):
        cohort = write_demo_cohort(folder / name, n=n, seed=seed, volumes=False)
        target = folder / f"{name}.json"
        with pytest.MonkeyPatch.context() as mp:
            printed: list[str] = []
            mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
            assert cli_main(["evaluate", "--model", str(model), "--cohort", str(cohort), "--split", "all",
                             "--n-boot", "50", "--no-band", "--json"]) == 0
        target.write_text(printed[-1])
        out.append(target)
    return out


def test_pool_prints_the_pooled_c_index_of_the_sites_files(sites: list[Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    evaluated = [json.loads(p.read_text()) for p in sites]
    want = pooled_c_index([e["c_index"] for e in evaluated], [e["c_index_ci"][0] for e in evaluated],
                          [e["c_index_ci"][1] for e in evaluated])
    table = tmp_path / "out" / "pooled.csv"
    assert cli_main(["pool", *map(str, sites), "--json", "--csv", str(table)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["c"] == pytest.approx(want["c"]) and got["prediction"] == pytest.approx(want["prediction"])
    assert [s["site"] for s in got["sites"]] == ["north", "south", "east"]
    assert [s["patients"] for s in got["sites"]] == [80, 60, 100]
    rows = list(csv.DictReader(table.open()))
    assert [r["site"] for r in rows] == ["north", "south", "east", "pooled (random effects)"]
    assert float(rows[-1]["c_index"]) == pytest.approx(want["c"]) and rows[-1]["patients"] == "240"
    assert sum(float(r["weight"]) for r in rows[:3]) == pytest.approx(1.0)
    # as text, with the sites named
    assert cli_main(["pool", *map(str, sites), "--labels", "Hospital N, Hospital S, Clinic E"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("Hospital N") and re.search(rf"^pooled C +{want['c']:.3f} \(95% CI", text, re.M)
    assert "(95% prediction interval)" in text and "Cochran's Q" in text
    # calibration in the large at 1 year, pooled on the log scale
    cal = [e["calibration"]["365"] for e in evaluated]
    want_oe = pooled_oe([c["oe"] for c in cal], [c["oe_ci"][0] for c in cal], [c["oe_ci"][1] for c in cal])
    assert got["oe"]["oe"] == pytest.approx(want_oe["oe"]) and got["horizon"] == 365
    assert re.search(rf"^pooled O:E at 1 year +{want_oe['oe']:.3f} \(95% CI", text, re.M) and "under-predicts" in text
    assert float(rows[-1]["oe"]) == pytest.approx(want_oe["oe"])
    # two sites: pooled, no prediction interval; at 5 years the demo's follow-up
    assert cli_main(["pool", *map(str, sites[:2]), "--horizon", "30"]) == 0
    text = capsys.readouterr().out
    assert "needs 3 sites for a prediction interval" in text and "O:E at 30 days" in text


def test_pool_refuses_files_it_cannot_use_in_one_line(sites: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text("not json")
    empty = tmp_path / "empty.json"
    empty.write_text('{"c_index": null, "c_index_ci": [null, null]}')
    for argv, message in (
            ([str(sites[0])], "error: validations: got 1, are too few to pool (at least 2); fix: validate the model "
                              "on another site's cohort"),
            ([str(sites[0]), str(notes)], "error: SITE.json: got notes.json, is not a JSON file"),
            ([str(sites[0]), str(empty)], "error: SITE.json: got empty.json, holds no C-index with its interval"),
            ([str(sites[0]), str(tmp_path / "gone.json")], "error: SITE.json: got "),
            ([*map(str, sites), "--labels", "a,b"], "error: --labels: got a,b, names 2 sites for 3 files")):
        assert cli_main(["pool", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err


def test_pool_refuses_what_is_not_one_models_validations_at_several_sites(sites: list[Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Each file records the model it evaluated (strategy and weights' stamp) and the split: another model, a model's
    own training patients, the same evaluation twice and a horizon no file holds are refused in one line."""
    from core.evaluation import model_fingerprint

    first = json.loads(sites[0].read_text())
    assert first["model_fingerprint"] == model_fingerprint(demo_install.SHIPPED_MODELS / "ehr_only") > 0
    assert first["split"] == "all" and first["fusion"] == "ehr_only"

    def variant(name: str, **changes: object) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({**json.loads(sites[1].read_text()), **changes}))
        return str(path)

    for argv, message in (
            ([str(sites[0]), variant("concat.json", fusion="concat", model_fingerprint=7.0)],
             "error: SITE.json: got north.json, concat.json, are evaluations of different models (other strategies)"),
            ([str(sites[0]), variant("retrained.json", model_fingerprint=7.0)],
             "error: SITE.json: got north.json, retrained.json, are evaluations of different models (other weights)"),
            ([str(sites[0]), variant("train.json", split="train")],
             "error: SITE.json: got train.json, evaluates the model's own train split"),
            ([str(sites[0]), str(sites[1]), str(sites[0])],
             "error: SITE.json: got north.json, north.json, hold the same evaluation"),
            ([*map(str, sites), "--horizon", "0"], "error: --horizon: got 0.0, is not a positive number of days"),
            ([*map(str, sites), "--horizon", "730"],
             "error: --horizon: got 730.0, is not a horizon of these evaluations (they hold 30, 365, 1825 days)")):
        assert cli_main(["pool", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err
    # a file evaluated before evaluations recorded their weights: pooled with the others by its strategy
    older = {k: v for k, v in json.loads(sites[2].read_text()).items() if k != "model_fingerprint"}
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert cli_main(["pool", str(sites[0]), str(sites[1]), str(tmp_path / "older.json"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["sites"]) == 3
