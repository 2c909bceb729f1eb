"""matplotlib's pyplot on the Agg backend for the PDF and PNG outputs, safe to use first from any thread.

matplotlib reads ``IPython.version_info`` when it makes its first figure in a process, if IPython is in
``sys.modules``. In the app another thread may be importing IPython right then (a page run's first plotly chart, or
the server's preload of the first page imports it through plotly or pandas): the half-made module has no
``version_info`` yet, and the first report or figure failed with an AttributeError. Importing IPython here first
waits for that import to finish (Python's per-module import lock), so matplotlib always finds it whole.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend (unless one was chosen), IPython's import finished first when it
    is installed."""
    if importlib.util.find_spec("IPython") is not None:
        importlib.import_module("IPython")  # blocks while another thread is still importing it
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
