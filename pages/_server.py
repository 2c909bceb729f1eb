"""The server's start: import what the first page needs while the first browser is still loading.

``streamlit run app.py`` serves ``app.py``'s ``st.App`` (Streamlit's ASGI app), whose
lifespan calls :func:`lifespan` once when the server starts. It starts one
background thread that imports the first page's modules (pandas, the model views,
the viewer, the figures, the parquet reader of the timelines), writes the CT
viewer's component folder and installs again the shipped demo models that changed
since the demo was built (``core.app.demo_install.refresh_shipped``): about a second on two cores that the first
session would otherwise spend after its browser connected, while the server sits idle
as the browser loads Streamlit's front end.

A script run waits for that thread (:func:`wait_until_warm`) before its own imports,
so no module is imported from two threads at once. Nothing here is per user: no
patient data and no session state.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "app.py"
# what app.py and Case review import, in the order a script run imports them
FIRST_PAGE = ("pandas", "core.app.demo_install", "core.models", "pages._chrome", "pages._jobs", "pages._session",
              "core.figures", "core.explain", "pages._viewer", "pages._model_views", "pages._review",
              "core.cohort", "core.io.timeline", "pyarrow.parquet", "pyarrow.dataset")
WAIT_S = 60.0  # a script run waits at most this long for the warm-up (it then imports what it needs itself)

LOG = logging.getLogger(__name__)
_started = threading.Event()
_warm = threading.Event()
took_s: dict[str, float] = {}  # what the warm-up took, for the log and the tests


def warm_up() -> None:
    """Import the first page's modules and write the viewer's folder (once per server)."""
    t0 = time.perf_counter()
    try:
        for name in FIRST_PAGE:
            importlib.import_module(name)
        took_s["imports"] = time.perf_counter() - t0
        from pages import _viewer

        _viewer.component_dir()
        from core.app import demo_install

        # a newer version of the app on an existing data folder: its changed shipped models, before any session
        replaced = demo_install.refresh_shipped()
        if replaced:
            LOG.info("shipped demo models installed again (changed since the demo was built): %s", ", ".join(replaced))
    except (ImportError, OSError, ValueError) as exc:  # the script run meets the same problem and shows it
        LOG.warning("warm-up stopped: %s", exc)
    finally:
        took_s["total"] = time.perf_counter() - t0
        _warm.set()
        LOG.info("warm-up took %.2f s", took_s["total"])


def start_warm_up() -> None:
    """Start :func:`warm_up` in a background thread, once per process."""
    if _started.is_set():
        return
    _started.set()
    threading.Thread(target=warm_up, name="ctehr-warm-up", daemon=True).start()


def wait_until_warm(timeout_s: float = WAIT_S) -> bool:
    """Block a script run until the warm-up is done; True at once when none was started (AppTest, bare mode)."""
    return _warm.wait(timeout_s) if _started.is_set() else True


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """``st.App``'s lifespan: start the warm-up and return at once (the server answers while it runs); at its end (the
    server stops) the job records and heartbeat are settled and the job queue closed. Under uvicorn a SIGTERM ends the
    process right after this, re-raised without ``atexit``: the exit hooks of ``core.jobs`` and
    ``core.app.job_journal`` would not run (site tickets and heartbeats left, ended jobs read as stopped)."""
    start_warm_up()
    try:
        yield
    finally:
        from core.app import job_journal
        from core.jobs import close_default

        job_journal.stop_heartbeats()  # first: the jobs still running keep their records (they are being stopped)
        close_default()
