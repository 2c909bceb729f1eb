"""The examples in the docstrings of core and of the pages' helper modules (``pages/_*.py``) run as written
(``python -m pytest --doctest-modules core`` does the same for core; the default test command collects ``tests/``
only, so without this module they were never checked)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import core
import pages

MODULES = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core.") if not m.name.endswith("__main__")) + sorted(
    m.name for m in pkgutil.iter_modules(pages.__path__, "pages.") if m.name.split(".")[-1].startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_written(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (output above)"
