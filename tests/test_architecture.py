"""The architecture stays as built: import contracts (import-linter), module sizes, docs naming every module."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MAX_LINES = 500


def _lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -r requirements-dev.txt)")
    return subprocess.run([exe, "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_are_kept() -> None:
    """core never imports streamlit; the layers pages -> app -> training -> inference -> leaves; no cycles."""
    res = _lint_imports(ROOT / ".importlinter")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout or "broken" not in res.stdout.split("Contracts:")[-1]


def test_a_violation_breaks_the_contracts(tmp_path: Path) -> None:
    """The checker is live: a contract that forbids an import the code really makes is reported broken."""
    text = (ROOT / ".importlinter").read_text()
    text += ("\n[importlinter:contract:probe]\nname = probe: predictions may not read model folders\n"
             "type = forbidden\nsource_modules =\n    core.predict\nforbidden_modules =\n    core.registry\n")
    config = tmp_path / "probe.ini"
    config.write_text(text)
    res = _lint_imports(config)
    assert res.returncode != 0
    assert "core.predict is not allowed to import core.registry" in res.stdout


def test_no_core_module_is_over_the_size_limit() -> None:
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "core").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these modules (over {MAX_LINES} lines): {big}"


def test_contracts_doc_names_every_core_module() -> None:
    """docs/CONTRACTS.md names every module of core, and every core module it names exists."""
    doc = (ROOT / "docs" / "CONTRACTS.md").read_text()
    named = set(re.findall(r"\bcore(?:\.[a-z_0-9]+)+", doc))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "core").rglob("*.py")}
    missing = sorted(m for m in modules if m not in named and m != "core" and not m.endswith("__main__"))
    assert not missing, f"docs/CONTRACTS.md does not name: {missing}"
    # a function or class of a module or package is fine (core.horizons.survival_at), a missing module is not
    unknown = sorted(n for n in named if n not in modules and (n.rsplit(".", 1)[0] not in modules or n.count(".") < 2))
    assert not unknown, f"docs/CONTRACTS.md names modules that do not exist: {unknown}"


def test_inference_imports_without_training() -> None:
    """Predicting and explaining never load the training code (a fresh interpreter, checked by sys.modules)."""
    code = ("import sys; import core.predict, core.explain, core.registry, core.evaluation; "
            "bad = [m for m in sys.modules if m == 'core.train' or m.startswith('core.train.')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
