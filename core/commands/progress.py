"""Progress of a long command on stderr: a bar on a terminal, a line now and then in a log.

``train`` and ``compare`` run for minutes to tens of minutes on a CPU; without a word on stderr a user cannot tell
them from a hung process. :func:`command_progress` gives a command the ``progress(fraction, label)`` callback the
core functions take:

- stderr is a terminal: a tqdm bar (percentage, the current stage, elapsed and remaining time);
- otherwise (a log file, a pipe, CI): one line ``"<desc>: 42% <stage> (3 min)"`` (time since the start) every
  ``every_s`` seconds,
  and none before the first ``every_s``, so a quick command, or one refused with a one-line error, prints nothing.

stdout stays the command's result (its ``--json`` object, or its summary line).

>>> import io
>>> log = io.StringIO()
>>> with command_progress("train", every_s=0.0, stream=log) as progress:
...     progress(0.5, "fusion epoch 3/60")
>>> log.getvalue().startswith("train:  50% fusion epoch 3/60 (")
True
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from core.durations import duration_text

Progress = Callable[[float, str], None]
#: seconds between two lines when stderr is not a terminal
EVERY_S = 30.0


@contextmanager
def command_progress(desc: str, *, enabled: bool = True, every_s: float = EVERY_S,
                     stream: TextIO | None = None) -> Iterator[Progress]:
    """A ``progress(fraction, label)`` callback for a command named ``desc`` (see the module docstring); with
    ``enabled`` False it does nothing. Calls from several threads are serialised."""
    out = stream if stream is not None else sys.stderr
    lock = threading.Lock()
    if not enabled:
        yield lambda fraction, label: None
        return
    if out.isatty():
        from tqdm import tqdm

        bar = tqdm(total=1000, file=out, desc=desc, leave=False, mininterval=0.5,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

        def on_bar(fraction: float, label: str) -> None:
            with lock:
                text = f"{desc}: {label}" if label else desc
                if bar.desc != text:
                    bar.set_description_str(text, refresh=False)
                bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
                bar.refresh()

        try:
            yield on_bar
        finally:
            bar.close()
        return
    start = time.monotonic()
    last = [start]

    def on_line(fraction: float, label: str) -> None:
        now = time.monotonic()
        with lock:
            if now - last[0] < every_s:
                return
            last[0] = now
            pct = 100.0 * min(max(fraction, 0.0), 1.0)
            print(f"{desc}: {pct:3.0f}% {label} ({duration_text(now - start)})".rstrip(), file=out, flush=True)

    yield on_line
