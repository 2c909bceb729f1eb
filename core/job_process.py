"""A heavy background job's own process (``python -m core.job_process FD``), started by :mod:`core.jobs`.

The queue's worker starts this fresh interpreter and sends it the job's function and arguments over a socket. The
process lowers its priority, limits torch to the queue's thread count, runs the job and
sends back what it reports:

* ``("progress", fraction, message)`` for each ``ctx.progress``;
* ``("yield",)`` for each ``ctx.yield_turn()``, then waits for ``"go"`` (the heavy jobs queued meanwhile have run)
  or ``"cancel"``;
* at the end one of ``("done", result)``, ``("cancelled", None)``, ``("failed", one-line error)``.

The parent may send ``"cancel"`` at any time; ``ctx.progress`` raises :class:`core.jobs.JobCancelled` after it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from core.jobs import JobCancelled, JobContext, one_line
from core.job_state import ServerGone


def child_main(conn: Any, fn: Callable[..., Any], args: tuple, kwargs: dict, nice: int, threads: int) -> None:
    """Run ``fn(ctx, *args, **kwargs)`` in this process and send its progress, breaks and outcome over ``conn``."""
    try:
        os.nice(nice)
    except OSError:
        pass  # not allowed to lower priority here: run at the parent's
    import torch

    torch.set_num_threads(max(int(threads), 1))  # this process only
    cancelled = False

    def talk(what: Callable[[], Any]) -> Any:
        try:
            return what()
        except (OSError, EOFError) as exc:  # the server went away (a restart): nobody reads this job any more
            raise ServerGone(f"the server is gone ({type(exc).__name__})") from None

    def is_cancelled() -> bool:
        nonlocal cancelled
        while not cancelled and talk(conn.poll):
            cancelled = talk(conn.recv) == "cancel"
        return cancelled

    def send(message: tuple) -> None:
        talk(lambda: conn.send(message))

    def yield_turn() -> None:
        nonlocal cancelled
        send(("yield",))
        answer = talk(conn.recv)  # "go" once the jobs queued meanwhile have run, or "cancel"
        cancelled = cancelled or answer == "cancel"

    ctx = JobContext(lambda f, m: send(("progress", f, m)), is_cancelled, yield_turn)
    try:
        outcome: tuple = ("done", fn(ctx, *args, **kwargs))
    except JobCancelled:
        outcome = ("cancelled", None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the job's one-line error
        outcome = ("failed", one_line(exc))
    try:
        conn.send(outcome)
    except (OSError, EOFError) as exc:  # the server went away (a restart): the job has cleaned up, nobody to tell
        print(f"job process {os.getpid()}: the server is gone ({type(exc).__name__}); job {outcome[0]}, exiting",
              file=sys.stderr)
    finally:
        conn.close()


def child_entry(fd: int) -> None:
    """The heavy job's process: receive the job on the socket ``fd`` and run it (:func:`child_main`).

    SIGTERM and SIGINT are ignored here: a restart sends them to the whole process group (systemd's control-group
    kill, Ctrl-C in a terminal), and a job ended by them would read as failed, its record gone before the server
    settles its jobs, so that no one is told it was stopped and the sidebar offers no "Start again". The server ends
    this process itself as it stops (``core.jobs.JobQueue.close``), and a server gone without that ends it at the
    job's next report (:class:`core.job_state.ServerGone`)."""
    import signal

    from core.job_pickle import loads

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        fn, args, kwargs, nice, threads = loads(conn.recv_bytes())  # core.jobs sent it with core.job_pickle.dumps
    except Exception as exc:  # noqa: BLE001 - e.g. a mapped CT's file trimmed before this start: the job's error
        conn.send(("failed", one_line(exc)))
        conn.close()
        return
    child_main(conn, fn, args, kwargs, nice, threads)


if __name__ == "__main__":  # python -m core.job_process FD
    child_entry(int(sys.argv[1]))
