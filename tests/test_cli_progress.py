"""Long commands report their progress on stderr: a bar on a terminal, a line now and then in a log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.commands.progress import command_progress

ROOT = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_in_a_log_and_nothing_from_a_quick_command() -> None:
    log = io.StringIO()
    with command_progress("compare", every_s=0.0, stream=log) as progress:
        progress(0.25, "image_only: image stage")
        progress(1.5, "done")  # clamped
    assert log.getvalue().splitlines()[0].startswith("compare:  25% image_only: image stage (0 s)")
    assert log.getvalue().splitlines()[1].startswith("compare: 100% done (")
    quiet = io.StringIO()
    with command_progress("compare", stream=quiet) as progress:  # the first line comes after 30 s
        for i in range(100):
            progress(i / 100, "fusion epoch")
    with command_progress("deid", enabled=False, stream=_Terminal()) as progress:
        progress(0.5, "x")
    assert quiet.getvalue() == ""


def test_a_bar_on_a_terminal() -> None:
    term = _Terminal()
    with command_progress("train concat", stream=term) as progress:
        progress(0.5, "image stage")
    shown = term.getvalue()
    assert "train concat: image stage:  50%|" in shown


@pytest.mark.slow
def test_train_shows_its_bar_on_a_terminal(tmp_path: Path) -> None:
    """``python -m core train`` with stderr on a pseudo-terminal draws the bar with the training stages; stdout
    keeps only the result line."""
    from core.demo import write_demo_cohort

    cohort = write_demo_cohort(tmp_path / "cohort", n=24, seed=3)
    import fcntl
    import struct
    import termios

    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a terminal 160 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--cohort", str(cohort), "--fusion", "ehr_only",
                             "--out", str(tmp_path / "model"), "--epochs", "2", "--ensemble", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=secondary, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    stdout, _ = proc.communicate(timeout=300)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, shown[-2000:]
    assert "train ehr_only: " in shown and "%|" in shown, shown[-2000:]
    assert stdout.startswith(f"wrote {tmp_path / 'model'}: test C-index") and stdout.count("\n") == 1
