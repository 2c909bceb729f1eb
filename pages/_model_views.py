"""Model and case views shared by the pages (not a page; app.py lists the pages).

* models and the synthetic demo cohort live in ``st.cache_resource`` (shared, not patient data); a model known by
  its folder (:class:`LazyModel`) loads its network only on first use;
* everything about a case (a demo case or one of the user's saved cases) lives in ``st.session_state`` only, with a
  bounded per-session memo (pages/_memo.py); its prediction is kept in the disk cache (pages/_case_store.py);
* what a patient's curve is set against (reference curves, the conformal bound, subgroups): pages/_reference.py.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from core import horizons
from core import predict as predictions
from core.app import cases as saved_cases
from core.app import demo_install
from core.app import workspace as workspaces
from core.io.study_cache import VIEWER_NIFTI
from pages import _case_store, _cohort_cases
from pages import _state as K
from pages import _whose
from pages._case_store import data_cache_dir, prediction_cache, study_cache
from pages._memo import memo
from pages._session import user_id

DEMO, UPLOADED = _case_store.DEMO, _case_store.UPLOADED  # a case's source, as the pages name it (views.DEMO)


# ------------------------------------------------------- models (shared, not patient data)


def _device_name() -> str:
    from core import runtime

    return runtime.device_name()


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


def shared_model(model_dir: str, stamp: float) -> Any:
    """A demo model, loaded once for all sessions on this server's device (``stamp``: its files' change time)."""
    return _load_model(model_dir, stamp, _device_name())


def stamp(path: Path) -> float:
    """The modification time that keys a cached model or cohort (re-read when the folder changes)."""
    target = path / "metrics.json" if (path / "metrics.json").exists() else path / "cohort.csv"
    return target.stat().st_mtime if target.exists() else 0.0


def demo_cohort() -> Any:
    root = demo_install.demo_paths().cohort
    return _load_demo_cohort(str(root), stamp(root))


def available_models() -> dict[str, Path]:
    """Demo models (one per strategy), then the site's (``core.app.site_models``: the administrator's, for every
    user, named "<label> (site)"), then the models this user trained in the app (kept in their models folder).

    A site model is read as a model trained here (``TRAINED_MODELS`` / ``TRAINED_COHORTS``: evaluated on its own
    cohort's test split, its reference curves from it), and is also in ``SITE_MODELS`` (nobody deletes it here)."""
    from core.app import paths
    from core.app.background import trained_models
    from core.app.site_models import SUFFIX, list_site_models

    models = dict(demo_install.list_models(demo_install.demo_paths().models))
    site = {f"{label}{SUFFIX}": pair for label, pair in list_site_models(paths.data_dir()).items()}
    trained = {**site, **trained_models(workspaces.user_models_dir(user_id()))}
    st.session_state[K.SITE_MODELS] = {name: str(m) for name, (m, _) in site.items()}
    st.session_state[K.TRAINED_MODELS] = {name: str(m) for name, (m, _) in trained.items()}
    st.session_state[K.TRAINED_COHORTS] = {name: str(c) for name, (_, c) in trained.items()}
    models.update({name: m for name, (m, _) in trained.items()})
    return models


def training_cohort(name: str) -> str:
    """The folder of the cohort the model ``name`` was trained on (resolved, as text): its own for a model the user
    trained here, else the demo's (call after :func:`available_models`, which records the user's models)."""
    own = st.session_state.get(K.TRAINED_COHORTS, {}).get(name)
    return str(Path(own or demo_install.demo_paths().cohort).resolve())


def own_model_controls(name: str) -> None:
    """For a model this user trained here: a button that deletes it (and its kept cohort when no other of their
    models was trained on it), behind a confirmation: what the disk quota's message asks of the user. Nothing for a
    demo model."""
    if _whose.is_site(name):
        st.caption("A site model: trained on the site's cohort and added for every user of this server by its "
                   "administrator, who alone can remove it.")
        return
    path = st.session_state.get(K.TRAINED_MODELS, {}).get(name)
    if path is None:
        return
    with st.popover("Delete this model", icon=":material/delete:"):
        st.write(f"**{name}** and its files are removed from your folder (its cohort too, when no other of your "
                 "models was trained on it). This cannot be undone.")
        if st.button("Delete", type="primary", key=f"delete_model_{Path(path).name}"):
            from core.app.background import delete_trained_model
            from core.errors import InputError
            from pages import _jobs

            try:
                removed = delete_trained_model(workspaces.user_models_dir(user_id()), Path(path),
                                               workspaces.user_root(user_id()) / "cohorts", _jobs.readers())
            except InputError as err:
                st.error(str(err))
                return
            st.toast(f"Deleted {name}" + (" and its cohort" if len(removed) > 1 else "") + ".")
            st.rerun()


def model_by_name(name: str) -> Any:
    """A loaded model. Demo and site models are cached for all sessions; models trained on
    a user's cohort stay in that user's session."""
    models = available_models()
    if name not in models:
        raise ValueError(f"model: got {name!r}, not available; fix: pick a model in the sidebar")
    path = models[name]
    if _whose.whose(name) == "yours":
        key = ("model", str(path))
        return memo(key, lambda: _load_model_uncached(str(path), _device_name()))
    return shared_model(str(path), stamp(path))


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
    trained = _whose.whose(name) == "yours"  # a site model is shared, as a demo model

    def load() -> Any:
        if _in_script_thread():
            return model_by_name(name)
        if trained:
            return _load_model_uncached(str(path), _device_name())
        return shared_model(str(path), stamp(path))

    return LazyModel(name, path, load)


def current_model_name() -> str:
    models = available_models()
    name = st.session_state.get(K.MODEL_NAME)
    if name in models:
        return str(name)
    return demo_install.DEFAULT_FUSION if demo_install.DEFAULT_FUSION in models else next(iter(models), "")


def label_of(model: Any) -> str:
    """How the sidebar names ``model`` (a loaded or lazy model), else its folder's name."""
    folder = Path(model.model_dir).resolve()
    return next((n for n, p in available_models().items() if Path(p).resolve() == folder), folder.name)


def current_model() -> Any:
    return model_by_name(current_model_name())


def current_lazy_model() -> LazyModel:
    return lazy_model(current_model_name())


# ------------------------------------------------------- cases (per session)


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


def case_label(source: str, subject_id: str) -> str:
    """How a case is named in job titles and reports: "case 3" (an uploaded case), "demo case 3" or "cohort case 3"
    (a patient of one of the user's cohorts), so that a session-local number is never read as a saved case's."""
    kind = "case" if source == UPLOADED else "cohort case" if _cohort_cases.is_cohort(source) else "demo case"
    return f"{kind} {case_number(source, subject_id)}"


def case_exists(source: str, subject_id: str) -> bool:
    """Whether the case can still be opened: a saved case of this user, a patient of one of the user's cohorts (not
    deleted meanwhile), or a demo patient."""
    if source == UPLOADED:
        return uploaded_case(subject_id) is not None
    if _cohort_cases.is_cohort(source):
        return _cohort_cases.holds(source, subject_id)
    return subject_id in demo_cohort().ids()


def case_cohort(source: str, subject_id: str | None = None) -> Any:
    if source == UPLOADED:
        case = uploaded_case(subject_id)
        if case is None:
            raise ValueError("case: got an uploaded case that is not among your saved cases; "
                             "fix: pick a case from the list, or upload it on the Upload page")
        return case["cohort"]
    if _cohort_cases.is_cohort(source):
        if subject_id is None:
            raise ValueError("case: got a patient of your cohort without its id; fix: pick the case again")
        return _cohort_cases.cohort(source, subject_id)
    return demo_cohort()


def case_volume(source: str, subject_id: str) -> Any:
    if source == UPLOADED:
        case = uploaded_case(subject_id)
        return None if case is None else case["volume"]
    cohort = case_cohort(source, subject_id)

    def decode() -> Any:
        # a study file decoded once is read back with numpy alone (no nibabel import on a fresh server)
        path = cohort.study_path(subject_id)
        if path is None or not path.is_file():
            return cohort.load_volume(subject_id)
        return study_cache(source).load(path, lambda: cohort.load_volume(subject_id))

    return memo(("volume", source, subject_id), decode)


def case_viewer_nifti(source: str, subject_id: str, volume: Any, build: Callable[[], bytes]) -> bytes:
    """The gzipped NIfTI the CT viewer is sent for the case: ``build()``, kept on disk for a study file (a
    user's case: in its own folder, inside the user's quota)."""
    if source == UPLOADED:
        case = uploaded_case(subject_id)
        if case is None:
            return build()
        return saved_cases.case_viewer_nifti(case["info"], user_id(), build)
    path = case_cohort(source, subject_id).study_path(subject_id)
    if path is None or not path.is_file():
        return build()
    return study_cache(source).derived(path, VIEWER_NIFTI, build)


def read_ood(source: str, subject_id: str) -> bool:
    """Whether the user asked to read this case's CT even where a model would withhold it (Case review's toggle)."""
    return (source, subject_id, upload_token(source, subject_id)) in st.session_state.get(K.READ_OOD, set())


def set_read_ood(source: str, subject_id: str, value: bool) -> None:
    chosen: set = st.session_state.setdefault(K.READ_OOD, set())
    item = (source, subject_id, upload_token(source, subject_id))
    chosen.add(item) if value else chosen.discard(item)


def image_read(model: Any, source: str, subject_id: str) -> predictions.ImageRead:
    """What ``model`` may read of the case's CT (``core.predict.image_read``: warnings, withheld or not); the
    CT's statistics are measured once per case, then checked against each model's training profile."""
    if not model.config.image.voxels:  # a model that reads no CT voxels: nothing to measure
        return predictions.ImageRead()
    volume = case_volume(source, subject_id)
    if volume is None:
        return predictions.ImageRead()
    token = upload_token(source, subject_id)

    def stats() -> dict:
        from core.study_profile import study_stats

        return study_stats(volume.hu, volume.spacing_mm)

    return memo(("image-read", str(model.model_dir), source, subject_id, token),
                lambda: predictions.image_read(model, volume, memo(("study-stats", source, subject_id, token), stats)))


def withholds_ct(model: Any, source: str, subject_id: str) -> bool:
    """Whether the model's predictions of this case are made without its CT (withheld, and not read anyway)."""
    return image_read(model, source, subject_id).withheld is not None and not read_ood(source, subject_id)


def case_inputs(model: Any, source: str, subject_id: str) -> Any:
    """The model's inputs of a case (loads the model: a lazy model's first use), without the CT when the model
    withholds it (:func:`withholds_ct`)."""
    read, anyway = image_read(model, source, subject_id), read_ood(source, subject_id)
    key = ("inputs", str(model.model_dir), source, subject_id, upload_token(source, subject_id),
           withholds_ct(model, source, subject_id))
    return memo(key, lambda: predictions.gated_inputs(
        loaded(model).case_inputs(case_cohort(source, subject_id), subject_id), read, anyway))


class LazyInputs:
    """A case's model inputs, built (loading the model) on first use, after which the object *is* the inputs
    (a ``CaseInputs``: ``dataclasses.replace`` takes it as it is). The first paint of a cached case needs no
    inputs; the viewer's overlay builds them (in the page, or in its background job's thread)."""

    def __init__(self, model: Any, source: str, subject_id: str) -> None:
        self._args = (model, source, subject_id)
        self._cohort = case_cohort(source, subject_id)  # taken now: a job's thread has no session
        self._read = (image_read(model, source, subject_id), read_ood(source, subject_id))

    def resolve(self) -> Any:
        model, source, subject_id = self._args
        if _in_script_thread():
            real = case_inputs(model, source, subject_id)
        else:
            real = predictions.gated_inputs(loaded(model).case_inputs(self._cohort, subject_id), *self._read)
        self.__dict__.clear()
        self.__dict__.update(vars(real))
        self.__class__ = type(real)  # type: ignore[assignment]
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)


def case_view(model: Any, source: str, subject_id: str) -> predictions.CachedCase:
    """The case's prediction and the events the model read: from the disk cache (keyed by the model's
    fingerprint, the case's content, its index date and the horizons), else predicted and stored."""
    gate = withholds_ct(model, source, subject_id)
    # a withheld CT is part of the case's content as the model reads it; one read anyway on request is another case
    read_anyway = image_read(model, source, subject_id).withheld is not None and not gate
    key = ("case_view", str(model.model_dir), source, subject_id, upload_token(source, subject_id), gate)

    def compute() -> predictions.CachedCase:
        cohort = case_cohort(source, subject_id)
        digest = memo(("case_content", source, subject_id, upload_token(source, subject_id)),
                      lambda: predictions.case_digest(cohort, subject_id, case_volume(source, subject_id)))
        digest = digest + ("-ood" if read_anyway else "")
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

# ------------------------------------------------------- case details


def case_index_time(source: str, subject_id: str) -> Any:
    return case_cohort(source, subject_id).index_time(subject_id)


def case_event_scores(model: Any, source: str, subject_id: str, horizon: int) -> Any:
    """Per-event scores for the timeline: the fusion's attention over events."""
    pred = case_prediction(model, source, subject_id)
    return pred.event_weights
