"""Streamlit glue shared by the pages (not a page itself: app.py lists the pages).

* core errors become one-line ``st.error`` messages, never tracebacks;
* models and the synthetic demo cohort live in ``st.cache_resource`` (shared,
  not patient data); everything about an uploaded case lives in
  ``st.session_state`` only, with a bounded per-session memo;
* the sidebar: model picker, device, horizon.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st

from core import horizons
from core import predict as predictions
from core.app import audit as audit_log
from core.app import demo_install, paths, reference
from core.app import workspace as workspaces
from pages import _state as K
from pages._memo import forget, memo  # noqa: F401  (ui.memo / ui.forget for the pages)

LOG = logging.getLogger("ctehr.app")
CONFORMAL_ALPHA = 0.1  # the conformal bound's miscoverage: a 90 % bound
DEMO = "demo"
UPLOADED = "uploaded"


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


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def inject_style() -> None:
    css = paths.ASSETS / "style.css"
    if css.exists():
        st.html(f"<style>{css.read_text()}</style>")


# ------------------------------------------------------- shared (non-patient)


@st.cache_resource(show_spinner=False)
def _device_label() -> str:
    # imports torch: only when the label is measured (see device_label)
    from core import runtime

    return runtime.device_label()


def _device_name() -> str:
    from core import runtime

    return runtime.device_name()


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"device.{os.getpid()}.{threading.get_ident()}.partial")
        tmp.write_text(json.dumps({"fingerprint": _device_fingerprint(), "label": label}))
        tmp.replace(path)
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


def _load_model_uncached(model_dir: str, device: str) -> Any:
    from core.registry import load_model

    return load_model(Path(model_dir), device=device)


@st.cache_resource(show_spinner="Loading model...", max_entries=16)
def _load_model(model_dir: str, stamp: float, device: str) -> Any:
    return _load_model_uncached(model_dir, device)


@st.cache_resource(show_spinner="Loading the demo cohort...", max_entries=2)
def _load_demo_cohort(root: str, stamp: float) -> Any:
    from core.cohort import load_cohort

    return load_cohort(Path(root))


def stamp(path: Path) -> float:
    """The modification time that keys a cached model or cohort (re-read when the folder changes)."""
    target = path / "metrics.json" if (path / "metrics.json").exists() else path / "cohort.csv"
    return target.stat().st_mtime if target.exists() else 0.0


def demo_cohort() -> Any:
    root = demo_install.demo_paths().cohort
    return _load_demo_cohort(str(root), stamp(root))


def available_models() -> dict[str, Path]:
    """Demo models (one per strategy), then the models this user trained in the app (kept in their models folder)."""
    from core.app.background import trained_models

    models = dict(demo_install.list_models(demo_install.demo_paths().models))
    trained = trained_models(workspaces.user_models_dir(user_id()))
    st.session_state[K.TRAINED_MODELS] = {name: str(m) for name, (m, _) in trained.items()}
    st.session_state[K.TRAINED_COHORTS] = {name: str(c) for name, (_, c) in trained.items()}
    models.update({name: m for name, (m, _) in trained.items()})
    return models


def model_by_name(name: str) -> Any:
    """A loaded model. Demo models are cached for all sessions; models trained on
    a user's cohort stay in that user's session."""
    models = available_models()
    if name not in models:
        raise ValueError(f"model: got {name!r}, not available; fix: pick a model in the sidebar")
    path = models[name]
    if name in st.session_state.get(K.TRAINED_MODELS, {}):
        key = ("model", str(path))
        return memo(key, lambda: _load_model_uncached(str(path), _device_name()))
    return _load_model(str(path), stamp(path), _device_name())


class LazyModel:
    """A model known by its folder, without its network: name, folder, config, card, metrics, what it reads and
    how its band is made (``model_reads``, ``uncertainty``; kept in the prediction cache once the model was loaded).

    Anything else (``net``, ``predict_case``, ``case_inputs``, ...) loads the shared model (``model_by_name``)
    on first use and is read from it, so a page drawn from cached predictions never imports torch.
    """

    def __init__(self, name: str, model_dir: Path, load: Callable[[], Any]) -> None:
        self.name = name
        self.model_dir = Path(model_dir)
        self._load = load
        self._model: Any = None

    def loaded(self) -> Any:
        """The loaded model (shared between sessions), loaded now if needed."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def __getattr__(self, name: str) -> Any:  # only for what is not defined here
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.loaded(), name)

    @functools.cached_property
    def config(self) -> Any:
        from core.models.config import ModelConfig

        if self._model is not None:
            return self._model.config
        return ModelConfig.from_dict(json.loads((self.model_dir / "config.json").read_text()))

    @functools.cached_property
    def card(self) -> str:
        path = self.model_dir / "MODEL_CARD.md"
        return path.read_text() if path.exists() else ""

    @functools.cached_property
    def metrics(self) -> dict:
        path = self.model_dir / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @functools.cached_property
    def facts(self) -> dict:
        """``{"has_image", "has_ehr", "uncertainty"}`` of the network, from the cache or from the loaded model."""
        path = data_cache_dir() / "models" / f"{predictions.model_fingerprint(self.model_dir)}.json"
        if path.is_file():
            try:
                found = json.loads(path.read_text())
                if {"has_image", "has_ehr", "uncertainty"} <= set(found):
                    return found
            except ValueError:
                path.unlink(missing_ok=True)
        model = self.loaded()
        found = {"has_image": bool(getattr(model.net, "has_image", True)),
                 "has_ehr": bool(getattr(model.net, "has_ehr", True)), "uncertainty": str(model.uncertainty)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{threading.get_ident()}.partial")
        tmp.write_text(json.dumps(found))
        tmp.replace(path)
        return found

    @property
    def uncertainty(self) -> str:
        return str(self.facts["uncertainty"])


def loaded(model: Any) -> Any:
    """The loaded model behind a :class:`LazyModel` (a loaded model is returned as it is)."""
    return model.loaded() if isinstance(model, LazyModel) else model


def model_reads(model: Any) -> tuple[bool, bool]:
    """``(has_image, has_ehr)``: whether the model's network reads the CT and the EHR."""
    if isinstance(model, LazyModel):
        return bool(model.facts["has_image"]), bool(model.facts["has_ehr"])
    return bool(getattr(model.net, "has_image", True)), bool(getattr(model.net, "has_ehr", True))


def _in_script_thread() -> bool:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    return get_script_run_ctx() is not None


def lazy_model(name: str) -> LazyModel:
    """The model ``name`` without loading it (see :class:`LazyModel`). It loads as :func:`model_by_name` does,
    also from a background job's thread (the shared cache for demo models; a private copy of a trained one)."""
    models = available_models()
    if name not in models:
        raise ValueError(f"model: got {name!r}, not available; fix: pick a model in the sidebar")
    path = models[name]
    trained = name in st.session_state.get(K.TRAINED_MODELS, {})

    def load() -> Any:
        if _in_script_thread():
            return model_by_name(name)
        if trained:
            return _load_model_uncached(str(path), _device_name())
        return _load_model(str(path), stamp(path), _device_name())

    return LazyModel(name, path, load)


def current_model_name() -> str:
    models = available_models()
    name = st.session_state.get(K.MODEL_NAME)
    if name in models:
        return str(name)
    return demo_install.DEFAULT_FUSION if demo_install.DEFAULT_FUSION in models else next(iter(models), "")


def current_model() -> Any:
    return model_by_name(current_model_name())


def current_lazy_model() -> LazyModel:
    return lazy_model(current_model_name())


def horizon_days() -> int:
    return int(st.session_state.get(K.HORIZON, 365))


# ------------------------------------------------------- per-session state


def exports_dir(kind: str) -> Path:
    """A fresh folder for one kind of export (figure, report, dicom) in this user's exports (their quota)."""
    import shutil

    user = user_id()
    workspaces.check_quota(user, 0)  # refuse when the user is already over their quota
    folder = workspaces.user_exports_dir(user) / kind
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    return folder


def workspace() -> workspaces.SessionWorkspace:
    """This session's private scratch folder (deleted when the session ends; a killed server's swept at start-up).

    Saved cases are not kept here but in the user's own folder (pages/_cases.py, core.app.cases)."""
    ws = st.session_state.get(K.WORKSPACE)
    if ws is None or not ws.alive:
        workspaces.start_up()
        ws = workspaces.new_session_workspace()
        st.session_state[K.WORKSPACE] = ws
    ws.touch()
    return ws


def uploaded_case(subject_id: str | None = None) -> dict | None:
    """One of this user's saved cases (pages/_cases.py): {"cohort", "volume", "events", "label", "number",
    "version", "study_path", "info"}; without an id the uploaded case under review; None when not theirs."""
    from pages import _cases

    return _cases.uploaded_case(subject_id)


def user_cases() -> dict[tuple[str, str], str]:
    """{(UPLOADED, case id): label} of the signed-in user's saved cases, newest first (for case pickers)."""
    from pages import _cases

    return _cases.user_cases()


def case_number(source: str, subject_id: str) -> int:
    """The case's number on every page, in reports and in export names: an uploaded case's own number ("Case 3"
    in the picker); a demo case a session-local number that none of this user's saved cases uses."""
    if source == UPLOADED:
        case = uploaded_case(subject_id)
        if case is not None:
            return int(case["number"])
    numbers: dict = st.session_state.setdefault(K.CASE_NUMBERS, {})
    if (source, subject_id) not in numbers:
        from pages import _cases

        taken = set(numbers.values()) | {c.number for c in _cases.case_list()}
        numbers[(source, subject_id)] = next(n for n in range(1, len(taken) + 2) if n not in taken)
    return int(numbers[(source, subject_id)])


def case_cohort(source: str, subject_id: str | None = None) -> Any:
    if source == UPLOADED:
        case = uploaded_case(subject_id)
        if case is None:
            raise ValueError("case: got an uploaded case that is not among your saved cases; "
                             "fix: pick a case from the list, or upload it on the Upload page")
        return case["cohort"]
    return demo_cohort()


def case_volume(source: str, subject_id: str) -> Any:
    if source == UPLOADED:
        case = uploaded_case(subject_id)
        return None if case is None else case["volume"]
    cohort = demo_cohort()
    return memo(("volume", source, subject_id), lambda: cohort.load_volume(subject_id))


def case_inputs(model: Any, source: str, subject_id: str) -> Any:
    """The model's inputs of a case (loads the model: a lazy model's first use)."""
    key = ("inputs", str(model.model_dir), source, subject_id, upload_token(source, subject_id))
    return memo(key, lambda: loaded(model).case_inputs(case_cohort(source, subject_id), subject_id))


class LazyInputs:
    """A case's model inputs, built (loading the model) on first use, after which the object *is* the inputs
    (a ``CaseInputs``: ``dataclasses.replace`` takes it as it is). The first paint of a cached case needs no
    inputs; the viewer's overlay builds them (in the page, or in its background job's thread)."""

    def __init__(self, model: Any, source: str, subject_id: str) -> None:
        self._args = (model, source, subject_id)
        self._cohort = case_cohort(source, subject_id)  # taken now: a job's thread has no session

    def resolve(self) -> Any:
        model, source, subject_id = self._args
        if _in_script_thread():
            real = case_inputs(model, source, subject_id)
        else:
            real = loaded(model).case_inputs(self._cohort, subject_id)
        self.__dict__.clear()
        self.__dict__.update(vars(real))
        self.__class__ = type(real)  # type: ignore[assignment]
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)


def data_cache_dir() -> Path:
    return paths.data_dir() / "cache" / "predictions"


USER_PREDICTION_CACHE_MB = 64


def prediction_cache(model: Any, source: str) -> predictions.PredictionCache:
    """Demo cases under demo models: the server's shared cache. A user's case, or a model the user trained:
    that user's own folder (bounded, inside their quota)."""
    if source == UPLOADED or str(model.model_dir) in st.session_state.get(K.TRAINED_MODELS, {}).values():
        root = workspaces.user_root(user_id()) / "cache" / "predictions"
        return predictions.PredictionCache(root, max_entries=500, max_bytes=USER_PREDICTION_CACHE_MB * 2**20)
    return predictions.PredictionCache(data_cache_dir())


def case_view(model: Any, source: str, subject_id: str) -> predictions.CachedCase:
    """The case's prediction and the events the model read: from the disk cache (keyed by the model's
    fingerprint, the case's content, its index date and the horizons), else predicted and stored."""
    key = ("case_view", str(model.model_dir), source, subject_id, upload_token(source, subject_id))

    def compute() -> predictions.CachedCase:
        cohort = case_cohort(source, subject_id)
        digest = memo(("case_content", source, subject_id, upload_token(source, subject_id)),
                      lambda: predictions.case_digest(cohort, subject_id, case_volume(source, subject_id)))
        cache_key = predictions.PredictionCache.key(predictions.model_fingerprint(model.model_dir), digest,
                                                    cohort.index_time(subject_id), horizons.HORIZONS)

        def fresh() -> tuple[Any, Any]:
            inputs = case_inputs(model, source, subject_id)
            return loaded(model).predict_case(inputs, horizons.HORIZONS), inputs.events

        return prediction_cache(model, source).case(cache_key, fresh)

    return memo(key, compute)


def case_prediction(model: Any, source: str, subject_id: str) -> Any:
    return case_view(model, source, subject_id).prediction


def case_derived(model: Any, source: str, subject_id: str, name: str, compute: Callable[[], Any]) -> Any:
    """A JSON value derived from the case's prediction under ``model`` (a bound, warnings), kept beside it."""
    view = case_view(model, source, subject_id)
    return prediction_cache(model, source).derived(view.key, name, compute)


def upload_token(source: str, subject_id: str | None = None) -> int:
    """The version of an uploaded case (raised when a timeline is added), 0 for demo cases: part of every
    per-session memo key of a case."""
    case = uploaded_case(subject_id) if source == UPLOADED else None
    return 0 if case is None else int(case["version"])


# ------------------------------------------------------- sign-in and audit

AUTH_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOCAL_MODE = "local mode: no sign-in, this server listens on this machine only"


def auth_section() -> dict | None:
    """The ``[auth]`` section of ``.streamlit/secrets.toml`` (None when there is no such section)."""
    if not st.secrets.load_if_toml_exists() or "auth" not in st.secrets:
        return None
    return dict(st.secrets["auth"])


def auth_configured() -> bool:
    """Sign-in is on: secrets.toml has an ``[auth]`` section (incomplete ones are refused by app.py)."""
    return auth_section() is not None


def missing_auth_keys() -> list[str]:
    section = auth_section() or {}
    return [key for key in AUTH_KEYS if not section.get(key)]


def listens_on_loopback_only() -> bool:
    """``server.address`` is a loopback address (unset means every interface)."""
    return str(st.get_option("server.address") or "") in LOOPBACK


def user_id() -> str:
    """The signed-in user's ``sub`` claim from the identity provider, or ``"local"`` without sign-in."""
    if auth_configured() and st.user.is_logged_in:
        return str(st.user.get("sub") or "")
    return audit_log.LOCAL_USER


def audit(action: str, target: str, *, once: bool = False, **details: Any) -> None:
    """Record ``action`` on ``target`` in the audit log as this session's user (see core.app.audit).

    ``once=True`` records an identical (action, target, details) only the first
    time in this session (a case opened, re-drawn on every slider move). When the
    log cannot be written the action is stopped: nothing happens unaudited.
    """
    key = (action, target, tuple(sorted(details.items())))
    done: set = st.session_state.setdefault(K.AUDITED, set())
    if once and key in done:
        return
    try:
        audit_log.record(user_id(), action, target, **details)
    except OSError as exc:
        LOG.error("audit log not written: %s", exc)
        st.error(f"The audit log could not be written ({type(exc).__name__}), so this was not done; "
                 "fix: ask the administrator to check the data folder's audit/ directory", icon=":material/error:")
        st.stop()
    done.add(key)


# ------------------------------------------------------------------ sidebar




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


def viewer_setting(key: str, default: Any) -> Any:
    """A case-review setting: its live value, else the one last shown in Case review (for other pages)."""
    return st.session_state.get(key, st.session_state.get(K.SAVED_VIEWER, {}).get(key, default))


def sidebar() -> None:
    models = available_models()
    with st.sidebar:
        st.subheader("Model")
        if models:
            names = list(models)
            default = current_model_name()
            if st.session_state.get(K.MODEL_NAME) not in models:
                st.session_state[K.MODEL_NAME] = default
            st.selectbox(
                "Fusion strategy / model",
                names,
                key=K.MODEL_NAME,
                help="One model per fusion strategy was trained on the demo cohort; models you train "
                "on the Cohort & models page are added here for this session.",
            )
        else:
            st.warning("No model found; train one on the Cohort & models page.")
        st.caption(f"Device: **{device_label()}**")  # no torch import on a warm start (see device_label)
        st.session_state.setdefault(K.HORIZON, 365)
        st.select_slider(
            "Horizon for explanations",
            options=list(horizons.HORIZON_CHOICES),
            key=K.HORIZON,
            format_func=lambda d: horizons.HORIZON_LABELS.get(d, f"{d} days"),
            help="Target of the saliency maps: predicted risk 1 - S(t) at this horizon.",
        )
        info = demo_install.demo_build_info()
        if info:
            st.caption(f"Demo: {info['n']} synthetic patients, {len(info['fusions'])} strategies.")
        if auth_configured() and st.user.is_logged_in:
            who = " · ".join(str(v) for v in (st.user.get("name"), st.user.get("email")) if v)
            st.caption(f"Signed in as **{who or user_id()}**")
            if st.button("Sign out", key=K.SIGN_OUT, icon=":material/logout:"):
                audit("logout", "session")
                st.logout()
        else:
            st.caption(LOCAL_MODE)
        st.caption("Research use only. Not a medical device.")


# ------------------------------------------------------- model-derived views


@st.cache_resource(show_spinner="Predicting the demo cohort...", max_entries=16)
def _demo_reference(model_name: str, model_dir: str, stamp: float) -> dict:
    """Cohort KM and risk-group KM curves of the synthetic demo cohort (not patient data)."""
    cohort = demo_cohort()
    return reference.reference_curves(lambda: _load_model(model_dir, stamp, _device_name()), cohort,
                                      reference.reference_ids(cohort), cache=Path(model_dir) / "reference_predictions.npz")


@st.cache_resource(show_spinner="Calibrating the conformal bound on the demo val split...", max_entries=16)
def _demo_conformal(model_name: str, model_dir: str, stamp: float, alpha: float) -> Any:
    """The conformal lower bound of a demo model, calibrated on the synthetic demo's val split (not patient data)."""
    cohort = demo_cohort()
    return reference.conformal_calibration(lambda: _load_model(model_dir, stamp, _device_name()), cohort, alpha,
                                           cache=Path(model_dir) / "val_predictions.npz")


def conformal_bound(model_name: str, prediction: Any, alpha: float = CONFORMAL_ALPHA) -> tuple[float, float] | None:
    """``(days, horizon)``: with probability >= 1 - alpha the event time is at least ``days`` (capped at the
    horizon), from the model's conformal calibration on the demo val split; None when it cannot be given."""
    from core.evaluate.conformal import apply_lower_bound

    path = available_models()[model_name]
    if model_name in st.session_state.get(K.TRAINED_MODELS, {}):
        return None  # calibrated on the demo only; a model of the user's cohort has its own val split
    cal = _demo_conformal(model_name, str(path), stamp(path), alpha)
    if cal is None:
        return None
    bounds = apply_lower_bound(prediction.times, prediction.survival[None, :], cal)[0]
    k = len(cal.horizons) - 1  # the longest calibrated horizon
    return float(bounds[k]), float(cal.horizons[k])


def case_conformal_bound(model: Any, source: str, subject_id: str,
                         alpha: float = CONFORMAL_ALPHA) -> tuple[float, float] | None:
    """:func:`conformal_bound` of the case's prediction under ``model``, kept beside the cached prediction
    (keyed by the demo cohort the bound is calibrated on), so a cached case needs no calibration."""
    name = str(getattr(model, "name", "")) or next(n for n, p in available_models().items() if Path(p) == Path(model.model_dir))
    if name in st.session_state.get(K.TRAINED_MODELS, {}):
        return None
    pred = case_prediction(model, source, subject_id)
    found = case_derived(model, source, subject_id, f"conformal:{alpha:g}:{demo_cohort().fingerprint()}",
                         lambda: conformal_bound(name, pred, alpha))
    return None if found is None else (float(found[0]), float(found[1]))


def case_risk_group(model: Any, source: str, subject_id: str, groups: list[dict]) -> dict:
    """The reference risk group the case falls into (its risk score kept beside the cached prediction)."""
    pred = case_prediction(model, source, subject_id)
    risk = case_derived(model, source, subject_id, "reference_risk", lambda: reference.prediction_risk(pred))
    return reference.risk_group_of(pred, groups, risk=float(risk))


def reference_curves(model_name: str) -> dict:
    path = available_models()[model_name]
    if model_name in st.session_state.get(K.TRAINED_MODELS, {}):
        return memo(("reference", str(path)), lambda: reference.reference_curves(
            model_by_name(model_name), demo_cohort(), reference.reference_ids(demo_cohort())))
    return _demo_reference(model_name, str(path), stamp(path))


def subgroup_table(model_name: str, column: str) -> dict:
    """Per-group C-index and calibration of a model on the demo test split (per session memo)."""
    path = available_models()[model_name]
    cohort = demo_cohort()
    cache = None if model_name in st.session_state.get(K.TRAINED_MODELS, {}) else Path(path) / "reference_predictions.npz"
    return memo(("subgroups", str(path), column), lambda: reference.subgroups(
        model_by_name(model_name), cohort, column, reference.reference_ids(cohort), cache=cache))


def case_index_time(source: str, subject_id: str) -> Any:
    return case_cohort(source, subject_id).index_time(subject_id)


def case_event_scores(model: Any, source: str, subject_id: str, horizon: int) -> Any:
    """Per-event scores for the timeline: the fusion's attention over events."""
    pred = case_prediction(model, source, subject_id)
    return pred.event_weights
