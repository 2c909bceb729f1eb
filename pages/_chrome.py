"""Page chrome shared by the pages (not a page; app.py lists the pages).

* the navigation that every page hands over to app.py, the stylesheet;
* core errors become one-line ``st.error`` messages, never tracebacks;
* the sidebar: model picker, device line, horizon, sign-in line; the device line kept for the next start and the
  background preload of what later interactions import;
* the case-review widget settings kept across pages.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from core import disk_cache, horizons
from core.app import demo_install, paths
from pages import _kept_review as kept_review
from pages import _model_views as views
from pages import _session as session
from pages import _state as K

LOG = logging.getLogger("ctehr.app")


# ------------------------------------------------------------------ navigation

def require_app_navigation() -> None:
    """Hand a page that Streamlit started on its own over to app.py's navigation (call first on every page).

    Because this project keeps its pages in ``pages/``, a new Streamlit server
    runs a deep link such as ``/cohort_models`` as that page alone until app.py
    has declared its navigation once, without app.py's sidebar, layout or page
    list. app.py marks every run it makes (``K.NAVIGATED``); a page run without
    the mark remembers which page was asked for and switches to app.py, which
    declares the navigation and then switches on to that page.
    """
    if st.session_state.get(K.NAVIGATED):
        return
    import inspect

    page = Path(inspect.stack()[1].filename).resolve()
    st.session_state[K.DEEP_LINK] = f"pages/{page.name}"
    st.switch_page("app.py")


def follow_deep_link() -> None:
    """Called by app.py after ``st.navigation``: open the page a visitor asked for before navigation existed."""
    target = st.session_state.pop(K.DEEP_LINK, None)
    if target:
        st.switch_page(target)


# ------------------------------------------------------------------ errors


_MARKUP = re.compile(r"([\\\[\]*`$])")
#: where GitHub-flavoured markdown would link a bare address (before the "://" of http(s), the "." of "www." and the
#: "@" of an e-mail address): a word joiner (U+2060, invisible) there stops it; a backslash does not, Streamlit's
#: markdown links the text after escapes are read
_AUTOLINK = re.compile(r"(?i)(?<=\bhttp)(?=://)|(?<=\bhttps)(?=://)|(?<=\bwww)(?=\.)|(?<=[\w.+-])(?=@[\w-]+\.\w)")
WORD_JOINER = "\u2060"


def md(value: object) -> str:
    r"""``value`` as text for a markdown element (``st.markdown``, ``st.warning``, a ``st.table`` cell...), shown as it
    is: text from a user's file (a DICOM header value, a zip entry's name, a timeline code, a column name) must not
    become a remote image the browser fetches (``![](http://...)``), a link or emphasis. Streamlit escapes raw HTML
    itself; this escapes what markdown builds links, images, emphasis, code and formulas from, and makes one line.
    A bare address (http://host/x, www.host, name@host.org), which GitHub-flavoured markdown links by itself, gets an
    invisible word joiner (U+2060) and shows as typed, as plain text.

    >>> print(md("![x](http://127.0.0.1:9/a.png) **b** `c` $d$ C:\\data").replace(WORD_JOINER, "^"))
    !\[x\](http^://127.0.0.1:9/a.png) \*\*b\*\* \`c\` \$d\$ C:\\data
    >>> print(md("see HTTPS://h/x or www.h.org, ask a@h.org").replace(WORD_JOINER, "^"))
    see HTTPS^://h/x or www^.h.org, ask a^@h.org
    >>> md("3.5 mm at 10:30, user@localhost, mailto:a")
    '3.5 mm at 10:30, user@localhost, mailto:a'
    >>> md("line 1\n# line 2")
    'line 1 # line 2'
    """
    text = _MARKUP.sub(r"\\\1", " ".join(str(value).splitlines()))
    return _AUTOLINK.sub(WORD_JOINER, text)


def sheet_cell(value: str) -> str:
    r"""A cell of a table a user downloads as CSV: text that a spreadsheet would run as a formula (it starts with
    =, +, -, @, a tab or a carriage return and is no number) gets a leading apostrophe.

    >>> [sheet_cell(v) for v in ('=HYPERLINK("http://x")', "-1.5", "@SUM(1)", "site A")]
    ['\'=HYPERLINK("http://x")', '-1.5', "'@SUM(1)", 'site A']
    """
    if not value or value[0] not in "=+-@\t\r":
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def one_line(exc: BaseException) -> str:
    """The first line of an error's message, escaped for markdown (it quotes values from users' files)."""
    text = str(exc).strip()
    return md(text.splitlines()[0]) if text else type(exc).__name__


@contextmanager
def core_errors(stop: bool = True, what: str = "") -> Iterator[None]:
    """Show bad input as a one-line ``st.error`` (and stop the page by default).

    ``InputError``/``ValueError``/``FileNotFoundError`` carry a message meant for
    the user. Anything else raised by a third-party decoder on untrusted data is
    logged on the server and shown as a short generic message.
    """
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        st.error(f"{what}{one_line(exc)}", icon=":material/error:")
        if stop:
            st.stop()
    except (OSError, EOFError, RuntimeError, KeyError, IndexError, TypeError) as exc:
        LOG.exception("unexpected failure in %s", what or "a core call")
        st.error(f"{what}could not process the input ({type(exc).__name__}); check the file and try again",
                 icon=":material/error:")
        if stop:
            st.stop()


# plotly's mode bar, shown on hover over a chart's top right corner, keeps only "download as PNG" and "reset axes":
# the full bar (zoom, pan, select, lasso, zoom in and out, autoscale) covered the end of a chart's title on a narrow
# page. Dragging still zooms, and a double click resets.
PLOTLY_CONFIG: dict[str, object] = {
    "displaylogo": False,
    "modeBarButtonsToRemove": ["zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"],
}
# the CT planes drawn by plotly where the browser has no WebGL2 keep zoom and pan (their titles are short)
PLOTLY_PLANE_CONFIG: dict[str, object] = {"displaylogo": False,
                                           "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def upload_mb() -> int:
    """What the server accepts per uploaded file (server.maxUploadSize, MB of 1024 x 1024 bytes). Streamlit's own
    drop-zone text rounds 512 MB up to "1GB" (decimal units, no decimals): assets/style.css hides it, and the
    uploaders' labels state this instead."""
    return int(st.get_option("server.maxUploadSize"))


def inject_style() -> None:
    css = paths.ASSETS / "style.css"
    if css.exists():
        st.html(f"<style>{css.read_text()}</style>")


# ------------------------------------------------------------------ device line


@st.cache_resource(show_spinner=False)
def _device_label() -> str:
    # imports torch: only when the label is measured (see device_label)
    from core import runtime

    return runtime.device_label()


def _device_fingerprint() -> str:
    """What the device line depends on, read without torch: host, usable CPUs, thread and GPU environment
    variables, the NVIDIA devices present, the installed torch version."""
    import hashlib
    import importlib.metadata
    import platform

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    env = {k: os.environ.get(k, "") for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                                              "MKL_NUM_THREADS", "TORCH_NUM_THREADS")}
    nvidia = sorted(n for n in os.listdir("/dev") if n.startswith("nvidia")) if os.path.isdir("/dev") else []
    gpus = sorted(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir("/proc/driver/nvidia/gpus") else []
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = ""
    text = json.dumps([platform.node(), sys.executable, cpus, env, nvidia, gpus, torch_version])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _device_file() -> Path:
    return paths.data_dir() / "cache" / "device.json"


_device_saved = threading.Event()


def refresh_device_label() -> str:
    """The device line measured now (imports torch), kept on disk once per server process for the next start."""
    label = _device_label()
    if not _device_saved.is_set():
        path = _device_file()
        disk_cache.write_bytes_atomic(path, json.dumps({"fingerprint": _device_fingerprint(), "label": label}).encode())
        _device_saved.set()
    return label


def device_label() -> str:
    """The device models run on, for the sidebar. Once torch is imported it is asked; before that (the first page
    of a warm start, drawn from cached predictions) the label measured at the last start is used when nothing it
    depends on changed (:func:`_device_fingerprint`), and measured again in the background preload."""
    if "torch" not in sys.modules:
        try:
            saved = json.loads(_device_file().read_text())
            if saved.get("fingerprint") == _device_fingerprint() and isinstance(saved.get("label"), str):
                return str(saved["label"])
        except (OSError, ValueError):
            pass
    return refresh_device_label()


PRELOAD = ("core.registry", "core.explain", "captum.attr", "core.evaluate", "core.sanity")
PRELOAD_DELAY_S = 10.0  # from the first page run: the browser is still loading the viewer and the charts
_preload_started = threading.Event()


def preload_in_background(delay_s: float = PRELOAD_DELAY_S) -> None:
    """Import what later interactions need (the model code, captum, lifelines via ``core.evaluate``) in a
    background thread, once per server process, ``delay_s`` after the first page run began: the first paint
    never waits on them, and on two cores they do not compete with the browser drawing that page."""
    if _preload_started.is_set():
        return
    _preload_started.set()

    def run() -> None:
        import importlib

        for name in PRELOAD:
            if name not in sys.modules:
                try:
                    importlib.import_module(name)
                except ImportError as exc:  # the page imports it again when needed and shows the error there
                    LOG.warning("preloading %s failed: %s", name, exc)
        try:
            refresh_device_label()  # the next start's device line, measured on this start
        except OSError as exc:
            LOG.warning("device line not kept for the next start: %s", exc)

    timer = threading.Timer(delay_s, run)
    timer.name, timer.daemon = "ctehr-preload", True
    timer.start()


# ------------------------------------------------------------------ sidebar


def horizon_days() -> int:
    return int(st.session_state.get(K.HORIZON, 365))


def restore_viewer_settings() -> None:
    """Give the case-review widgets back the values they had when the page was last left.

    Streamlit drops a widget's state at the end of a run that does not draw it
    (any other page), so Case review saves its viewer settings in a plain
    session key (:func:`save_viewer_settings`) and restores them before drawing
    its widgets; Export reads them with :func:`viewer_setting`.
    """
    for key, value in st.session_state.get(K.SAVED_VIEWER, {}).items():
        if key not in st.session_state:
            st.session_state[key] = value


def save_viewer_settings() -> None:
    """Remember the case-review widget values drawn so far in this run (call after drawing them)."""
    saved = dict(st.session_state.get(K.SAVED_VIEWER, {}))
    saved.update({k: st.session_state[k] for k in K.VIEWER_KEYS if k in st.session_state})
    st.session_state[K.SAVED_VIEWER] = saved
    kept_review.remember()  # a reload of the tab opens this view again


def viewer_setting(key: str, default: Any) -> Any:
    """A case-review setting: its live value, else the one last shown in Case review (for other pages)."""
    return st.session_state.get(key, st.session_state.get(K.SAVED_VIEWER, {}).get(key, default))


def method_setting(model: Any) -> str:
    """The attribution method chosen in Case review when it applies to ``model`` (the user's own choice where a
    model that could not use it only stood in, :func:`settle_method`), else the model's preferred one
    (``core.explain.methods_for``: the detector's own method for a lesion-detector model, saliency otherwise)."""
    from core.explain import methods_for

    options = methods_for(model)
    wanted = st.session_state.get(K.METHOD_WANTED)
    if wanted in options:  # (only kept while the method shown is a stand-in)
        return str(wanted)
    chosen = viewer_setting(K.METHOD, None)
    return chosen if chosen in options else options[0]


def settle_method(state: MutableMapping[str, Any], options: Sequence[str]) -> str:
    """The method the viewer shows for a model with ``options`` (its preferred first), set in ``state``.

    A method the model cannot use stands aside rather than being lost: the model shows its own first option in its
    place, and the next model that can use it shows it again, unless the user picked another one meanwhile.

    >>> s = {}
    >>> [settle_method(s, o) for o in (["detector_ig", "saliency"], ["saliency", "gradcam"], ["detector_ig", "saliency"])]
    ['detector_ig', 'saliency', 'detector_ig']
    >>> s[K.METHOD] = "saliency"  # the user's pick (a widget change) ...
    >>> [settle_method(s, o) for o in (["saliency"], ["gradcam"], ["detector_ig", "saliency"])]
    ['saliency', 'gradcam', 'saliency']
    """
    current = state.get(K.METHOD)
    wanted = state.get(K.METHOD_WANTED)
    if wanted is not None and current != state.get(K.METHOD_STANDIN):  # the user picked another one meanwhile
        wanted = None
        state.pop(K.METHOD_WANTED, None)
    if wanted in options:
        state.pop(K.METHOD_WANTED, None)
        state.pop(K.METHOD_STANDIN, None)
        state[K.METHOD] = wanted
    elif current not in options:
        if current is not None and wanted is None:
            state[K.METHOD_WANTED] = current
        state[K.METHOD] = state[K.METHOD_STANDIN] = options[0]
    return str(state[K.METHOD])


def _kept(key: str, valid: Any) -> Any:
    """The sidebar widget ``key``'s last value when Streamlit dropped its state, if still ``valid`` (else None).

    A page that leaves with ``st.switch_page`` (Upload's "Save", "Review") ends its run early, and Streamlit
    then forgets the sidebar's widget values: the model chosen would fall back to the default on the next page.
    """
    value = st.session_state.get(K.SIDEBAR_KEPT, {}).get(key)
    return value if valid(value) else None


def _keep(*keys: str) -> None:
    """Remember the sidebar widgets' values drawn in this run (see :func:`_kept`)."""
    st.session_state[K.SIDEBAR_KEPT] = {k: st.session_state[k] for k in keys if k in st.session_state}


SIDEBAR_BOX_CHARS = 26  # a model name longer than this is cut in the sidebar's box: its whole name is shown under it


def sidebar() -> None:
    models = views.available_models()
    with st.sidebar:
        st.subheader("Model", anchor=False)
        if models:
            names = list(models)
            if st.session_state.get(K.MODEL_NAME) not in models:
                gone = st.session_state.get(K.MODEL_NAME) or st.session_state.get(K.SIDEBAR_KEPT, {}).get(K.MODEL_NAME)
                st.session_state[K.MODEL_NAME] = _kept(K.MODEL_NAME, models.__contains__) or views.current_model_name()
                if gone and gone not in models:  # deleted meanwhile (another tab): said, not switched in silence
                    st.toast(md(f"{gone} is no longer among your models (deleted): now showing "
                                f"{st.session_state[K.MODEL_NAME]}."), icon=":material/info:")
            st.selectbox(
                "Fusion strategy / model",
                names,
                key=K.MODEL_NAME,
                help="One model per fusion strategy was trained on the demo cohort; models marked (site) were "
                "added by this server's administrator for every user; models you train on the Cohort & models page "
                "are added here, and kept in your folder.",
            )
            if len(st.session_state[K.MODEL_NAME]) > SIDEBAR_BOX_CHARS:  # the box cuts it: a model's date and time
                st.caption(md(st.session_state[K.MODEL_NAME]))
        else:
            st.warning("No model found; train one on the Cohort & models page.")
        st.caption(f"Device: **{device_label()}**")  # no torch import on a warm start (see device_label)
        if K.HORIZON not in st.session_state:
            st.session_state[K.HORIZON] = _kept(K.HORIZON, lambda d: d in horizons.HORIZON_CHOICES) or 365
        st.select_slider(
            "Horizon for explanations",
            options=list(horizons.HORIZON_CHOICES),
            key=K.HORIZON,
            format_func=lambda d: horizons.HORIZON_LABELS.get(d, f"{d} days"),
            help="Target of the saliency maps: predicted risk 1 - S(t) at this horizon.",
        )
        _keep(K.MODEL_NAME, K.HORIZON)
        info = demo_install.demo_build_info()
        if info:
            st.caption(f"Demo: {info['n']} synthetic patients, {len(info['fusions'])} strategies.")
        if session.auth_configured() and st.user.is_logged_in:
            who = " · ".join(str(v) for v in (st.user.get("name"), st.user.get("email")) if v)
            st.caption(f"Signed in as **{who or session.user_id()}**")
            if st.button("Sign out", key=K.SIGN_OUT, icon=":material/logout:"):
                session.sign_out()
        else:
            st.caption(session.LOCAL_MODE)
        st.caption("Research use only. Not a medical device.")


