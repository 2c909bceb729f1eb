"""Command-line adapters: one module per ``python -m core`` command.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. They parse and print; the work is done by core modules.
"""

from __future__ import annotations

from pathlib import Path


def check_out_folder(out: Path, flag: str, written: tuple[str, ...], what: str) -> None:
    """Refuse an ``out`` folder that holds files but none of those the command writes (``written``): a cohort or
    a home folder given by mistake would get a model's files mixed into it. An earlier output of the command is
    replaced, as a rerun expects.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "cohort.csv").write_text("x")
    1
    >>> try:
    ...     check_out_folder(d, "--out", ("config.json",), "a model")
    ... except ValueError as err:
    ...     print(str(err).split(", ", 1)[1])
    holds files but no earlier model (no config.json); fix: pass a new or empty folder, or the folder of a model to replace
    """
    from core.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError(flag, str(out), "is a file, not a folder", "pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in written):
        raise InputError(flag, str(out), f"holds files but no earlier {what.split(' ', 1)[-1]} (no {written[0]})",
                         f"pass a new or empty folder, or the folder of {what} to replace")
