"""Site models (core.app.site_models, `python -m core site-model`): a model trained on the command line, added by the
administrator with its cohort, is listed for every user, read against its own cohort and deleted by nobody."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.app import demo_install
from core.app.site_models import add_site_model, list_site_models, remove_site_model, site_models_dir
from core.errors import InputError
from tests.conftest import ROOT
from tests.test_app import _app, _no_exception, _wait_for_jobs, build_test_demo, using_data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with using_data_dir(build_test_demo(tmp_path_factory)) as base:
        yield base


def _site_cohort(tmp_path: Path) -> Path:
    """The demo cohort copied to a server folder outside every user's (where a site keeps its cohorts)."""
    cohort = tmp_path / "srv" / "lung2025"
    shutil.copytree(demo_install.demo_paths().cohort, cohort)
    return cohort


def test_add_list_replace_and_remove_check_the_model_and_the_cohort(data_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = _site_cohort(tmp_path)
    model = demo_install.demo_paths().models / "ehr_only"
    root = tmp_path / "data"
    copy = add_site_model(model, cohort, "  Lung CT   2025 ", root)
    assert copy == site_models_dir(root) / "lung-ct-2025"
    assert sorted(p.name for p in copy.iterdir()) == ["MODEL_CARD.md", "config.json", "metrics.json",
                                                       "model.safetensors", "trained_in_app.json"]
    assert (copy / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    record = json.loads((copy / "trained_in_app.json").read_text())
    assert (record["label"], record["fusion"], record["cohort_dir"]) == ("Lung CT 2025", "ehr_only", str(cohort))
    assert list_site_models(root) == {"Lung CT 2025": (copy, cohort)}
    half = site_models_dir(root) / ".other.partial"  # a copy another add is making: not listed until renamed
    shutil.copytree(copy, half)
    (half / "trained_in_app.json").write_text(json.dumps({**record, "label": "Other"}))
    assert list(list_site_models(root)) == ["Lung CT 2025"]
    shutil.rmtree(half)
    # a label that differs in case and spaces only is taken; --replace puts the new model in its place
    with pytest.raises(InputError, match=r"^--label: got lung ct 2025, is taken by the site model 'Lung CT 2025'"):
        add_site_model(model, cohort, "lung ct 2025", root)
    other = demo_install.demo_paths().models / demo_install.DEFAULT_FUSION
    removed: list[tuple[str, str]] = []  # the earlier copy is removed only once the new one holds the label
    real_rmtree = shutil.rmtree

    def watched(path: Path, *args: object, **kwargs: object) -> None:
        if Path(path).exists():
            removed.append((Path(path).name, json.loads((copy / "trained_in_app.json").read_text())["fusion"]))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watched)
    add_site_model(other, cohort, "lung ct 2025", root, replace=True)
    monkeypatch.undo()
    assert removed == [(".lung-ct-2025.replaced", demo_install.DEFAULT_FUSION)]
    assert json.loads((copy / "trained_in_app.json").read_text())["fusion"] == demo_install.DEFAULT_FUSION
    assert list(list_site_models(root)) == ["lung ct 2025"] and not list(site_models_dir(root).glob(".*"))
    # refused, with the field named: no network file, weights of another model, no cohort, an empty label
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"^model: got .*broken, holds no model.safetensors"):
        add_site_model(broken, cohort, "B", root)
    shutil.copy(other / "model.safetensors", broken / "model.safetensors")  # concat's weights, ehr_only's config
    # (the same names in other shapes were an "internal RuntimeError" of load_state_dict, for predict too)
    with pytest.raises(InputError, match=r"^model.safetensors: got \d+ tensors of other shapes, weights do not match "
                                         r"config.json; fix: re-train the model"):
        add_site_model(broken, cohort, "B", root)
    with pytest.raises(InputError, match=r"^--cohort: got .*nowhere, holds no cohort.csv"):
        add_site_model(model, tmp_path / "nowhere", "B", root)
    with pytest.raises(InputError, match=r"^--label: got -, must hold letters or digits"):
        add_site_model(model, cohort, " - ", root)
    assert list(list_site_models(root)) == ["lung ct 2025"]
    # a cohort moved away: not listed (the administrator adds it again); removal takes the copy, not the cohort
    moved = cohort.rename(tmp_path / "srv" / "moved")
    assert list_site_models(root) == {}
    assert remove_site_model("LUNG CT 2025", root) == copy and not copy.exists() and moved.is_dir()
    with pytest.raises(InputError, match=r"^label: got nope, is no site model here"):
        remove_site_model("nope", root)
    # each change is in the data folder's audit log: who at the command line, what, which strategy and label
    from core.app.audit import read_audit

    log = read_audit(root / "audit" / "audit.jsonl")
    assert [(r["action"], r["target"], r["details"]) for r in log] == [
        ("site_model", "ehr_only", {"change": "add", "model": "lung-ct-2025"}),
        ("site_model", demo_install.DEFAULT_FUSION, {"change": "replace", "model": "lung-ct-2025"}),
        ("site_model", demo_install.DEFAULT_FUSION, {"change": "remove", "model": "lung-ct-2025"})]
    assert all(r["user"].startswith("cli:") for r in log)
    # a label whose slug the log refuses (a date): recorded under a name of letters, the same each time, that
    # `site-model list` shows beside the label
    from core.app.site_models import audit_name

    add_site_model(model, moved, "Trial 20251124", root)
    name = read_audit(root / "audit" / "audit.jsonl")[-1]["details"]["model"]
    assert name == audit_name("trial 20251124") and re.fullmatch(r"site-[a-z]{10}", name)
    assert audit_name("Trial 20251125") != name


def test_the_command_line_adds_lists_and_removes(data_dir: Path, tmp_path: Path) -> None:
    cohort = _site_cohort(tmp_path)
    model = demo_install.demo_paths().models / "ehr_only"
    root = tmp_path / "data"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "core", "site-model", *args, "--data-dir", str(root)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    added = cli("add", str(model), "--cohort", str(cohort), "--label", "Lung CT 2025")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip().endswith("the app lists it as 'Lung CT 2025 (site)' for every user")
    listed = json.loads(cli("list", "--json").stdout)
    assert listed == {"models": [{"label": "Lung CT 2025", "model": str(site_models_dir(root) / "lung-ct-2025"),
                                  "cohort": str(cohort), "audit_name": "lung-ct-2025"}]}
    assert cli("list").stdout.strip().endswith(f"trained on {cohort}\taudit log: lung-ct-2025")
    missing = cli("add", str(model), "--label", "X")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "error: --cohort: got absent, is needed to add a site model; fix: pass the cohort folder it was trained on")
    removed = cli("remove", "Lung CT 2025")
    assert removed.returncode == 0 and "its cohort folder is kept" in removed.stdout
    assert cli("list").stdout.strip() == f"no site models in {root}"


def test_every_user_reads_a_site_model_against_its_own_cohort_and_cannot_delete_it(data_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """In the app: the model is in the sidebar's list as '<label> (site)'; Case review predicts a demo case with it,
    its grey curve from its own cohort's test split; Cohort & models evaluates it on that split (the C-index of
    `evaluate`), names the site's cohort, offers no Delete and lists none of that cohort's patients."""
    from core.evaluation import evaluate_model

    cohort = _site_cohort(tmp_path)
    label = "Lung CT 2025 (site)"
    copy = add_site_model(demo_install.demo_paths().models / demo_install.DEFAULT_FUSION, cohort, "Lung CT 2025",
                          data_dir)
    try:
        at = _app()
        at.session_state["model_name"] = label  # as the sidebar keeps it across pages in a browser
        at.run()
        _no_exception(at)
        assert label in at.selectbox(key="model_name").options and at.selectbox(key="model_name").value == label
        assert [m.label for m in at.metric if m.label.endswith(" risk")] == ["30-day risk", "1-year risk", "5-year risk"]
        assert any("patients of the cohort this model was trained on (its held-out test split)" in c.value
                   for c in at.caption), [c.value for c in at.caption]
        assert (copy / "test_predictions.npz").is_file()  # its reference curves, kept in its folder
        from core.app.audit import read_audit  # the case was read with the site model: the audit log says which

        opened = [r for r in read_audit(data_dir / "audit" / "audit.jsonl") if r["action"] == "open"][-1]["details"]
        assert (opened["fusion"], opened["models"], opened["model"]) == (demo_install.DEFAULT_FUSION, "site",
                                                                          "lung-ct-2025")
        at.switch_page("pages/cohort_models.py").run()
        _wait_for_jobs()  # its evaluation on the test split of its cohort
        at.run()
        _no_exception(at)
        assert any(c.value == f"Model **{label}**, evaluated on the test split of the site's cohort lung2025."
                   for c in at.caption), [c.value for c in at.caption]
        assert any(c.value.startswith("A site model: trained on the site's cohort and added for every user")
                   for c in at.caption)
        assert not [b for b in at.button if str(b.key).startswith("delete_model_")]  # no "Delete this model"
        assert not any("orders worst" in m.value for m in at.markdown)
        want = evaluate_model(copy, cohort, split="test")["c_index"]
        assert json.loads((copy / "test_metrics.json").read_text())["metrics"]["c_index"] == pytest.approx(want)
    finally:
        _wait_for_jobs()
        remove_site_model("Lung CT 2025", data_dir)


def test_a_site_model_a_users_job_reads_is_neither_removed_nor_replaced(data_dir: Path, tmp_path: Path) -> None:
    """`site-model remove` and `--replace` are refused, naming the job, while a live server of the site runs a
    user's job that reads the model (an external validation would stop half-way); a job of a server gone, or one
    reading another folder, does not hold it."""
    import os
    import time

    from core.app import job_journal

    cohort, root = _site_cohort(tmp_path), tmp_path / "data"
    model = demo_install.demo_paths().models / "ehr_only"
    copy = add_site_model(model, cohort, "Lung CT 2025", root)
    beat = root / "jobs" / "replica00001.json"  # another server of the site, beating (on another host)
    job_journal._write(beat, {"host": "another-host", "pid": 1})
    job_journal._write(root / "users" / "u7" / "jobs" / "replica00001-job9.json", {
        "title": "Validating Lung CT 2025", "queued_at": time.time(), "server": "replica00001",
        "reads": [str(copy), "/srv/other"]})
    for change in ("remove", "replace"):
        with pytest.raises(InputError, match=r'^label: got Lung CT 2025, is read by 1 running job of the site\'s '
                                             rf'users \("Validating Lung CT 2025"\); fix: wait for it to end .* then '
                                             rf'{change} again$'):
            if change == "remove":
                remove_site_model("Lung CT 2025", root)
            else:
                add_site_model(model, cohort, "Lung CT 2025", root, replace=True)
    assert (copy / "model.safetensors").is_file()
    os.utime(beat, (time.time() - job_journal.STALE_S - 30,) * 2)  # that server is gone: its job holds nothing
    assert remove_site_model("Lung CT 2025", root) == copy and not copy.exists()
