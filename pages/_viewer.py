"""The Case review CT viewer: NiiVue (WebGL) in a Streamlit component, the overlay computed once in the background.

* The component is ``assets/viewer/`` (index.html, viewer.js, viewer.css) plus
  ``niivue.js.gz``: NiiVue as bundled in the pinned ``ipyniivue`` wheel (with its
  class exported), gzipped once into ``<data dir>/cache/viewer-<hash>/`` at first
  use. As ``application/gzip`` it leaves the server as stored (1.6 MB), where
  Streamlit would compress the 5 MB module again for every browser (about 0.4 s of
  server CPU each); viewer.js inflates it. Nothing is fetched from a network at run time.
* The CT goes to the browser once per case and browser as gzipped NIfTI in HU with
  its true affine (``core.app.volume_nifti``); the whole-volume attribution map
  goes once per (case, model, method, horizon) as a second volume. Each volume has
  a content id; the component reports the ids it holds (its value's ``held``) and
  a rerun sends a volume's bytes only while the component does not hold it (a
  component that lost them, say a new iframe, asks again with ``need``). The bytes
  travel only on the session's own WebSocket: no URL serves case data. Scrolling,
  crosshairs, window/level, zoom and pan then run in the browser only.
* The map is computed by a background job (``core.jobs``, ``core.app.attribution_volume.map_job``; a large CT's in
  the job's own process) and kept on disk (:func:`map_store`: a saved case's maps in its own folder, in the user's
  quota), read back memory-mapped.
* Without WebGL2 the component says so and the page falls back to plotly planes.
* First paint: on a session's first Case review the charts below the viewer wait until the viewer has
  reported its CT (:func:`below_fold_waits`), so the browser's one main thread loads NiiVue and the CT before
  it draws them; the report reruns the page once and they appear (a button shows them at once).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from core import figures as F
from core.app import attribution_volume as AV
from core.app import cases as saved
from core.app import viewer
from core.app import volume_nifti as VN
from core.app import workspace as workspaces
from core.app.paths import ASSETS, data_dir
from core.errors import InputError
from core.explain import METHOD_LABELS, methods_for
from core.sanity import in_body
from pages import _case_store, _cases
from pages import _chrome as chrome
from pages import _jobs
from pages import _model_views as views
from pages import _session as session
from pages import _state as K
from pages._memo import memo

COMPONENT_ASSETS = ASSETS / "viewer"
COMPONENT_FILES = ("index.html", "viewer.js", "viewer.css", "LICENSE-niivue.txt")
NIIVUE_FILE = "niivue.js.gz"  # served as application/gzip: Streamlit does not compress it again
# NiiVue 0.65.0 as bundled in ipyniivue 2.4.4 (BSD-2); the copy exports its Niivue class next to the widget
NIIVUE_SOURCE_SHA256 = "922951141f03da6294cc74a7c520d694a9723733ee25d997b85da8136057a96b"
VIEWER_KEY = "ct_viewer"  # the component's key: its value (the crosshair, the volumes it holds) is in session state
THRESHOLD = "overlay_threshold"  # session key of the overlay threshold slider (kept beside the keys of pages/_state)
COLORMAP = "warm"
VIEWER_HEIGHT = 560


def niivue_bundle() -> str:
    """NiiVue's ES module from the installed ipyniivue wheel, with ``Niivue`` added to its exports."""
    data = _widget_js().read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != NIIVUE_SOURCE_SHA256:
        raise InputError("ipyniivue", digest[:12], "is not the pinned build (ipyniivue==2.4.4)",
                         "pip install -r requirements.txt")
    text = data.decode("utf-8")
    cls = re.search(r"vA=new ([A-Za-z0-9_$]+)\(C\)", text)
    tail = re.search(r"export\{([A-Za-z0-9_$]+) as default\};\s*$", text)
    if cls is None or tail is None:
        raise InputError("ipyniivue", digest[:12], "has no Niivue class to export", "pip install -r requirements.txt")
    return text[:tail.start()] + f"export{{{tail.group(1)} as default,{cls.group(1)} as Niivue}};\n"


def _widget_js() -> Path:
    spec = importlib.util.find_spec("ipyniivue")
    if spec is None or spec.origin is None:
        raise InputError("ipyniivue", "not installed", "the CT viewer loads NiiVue from it",
                         "pip install -r requirements.txt")
    return Path(spec.origin).parent / "static" / "widget.js"


def component_dir() -> Path:
    """The component's folder (assets/viewer + the NiiVue module), rebuilt when any part changes.

    Every rerun asks for it: the parts are read and hashed again only when one of them changed on disk.
    """
    stamps = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                   for p in [*(COMPONENT_ASSETS / name for name in COMPONENT_FILES), _widget_js()])
    path = _component_dir(str(data_dir()), stamps)
    if not (path / "index.html").is_file():  # removed while the server ran: build it again
        _component_dir.cache_clear()
        path = _component_dir(str(data_dir()), stamps)
    return path


@functools.lru_cache(maxsize=4)
def _component_dir(root: str, stamps: tuple[tuple[str, int, int], ...]) -> Path:
    parts = [(name, (COMPONENT_ASSETS / name).read_bytes()) for name in COMPONENT_FILES]
    bundle = niivue_bundle().encode("utf-8")
    h = hashlib.sha256(bundle)
    for name, data in parts:
        h.update(name.encode() + data)
    target = Path(root) / "cache" / f"viewer-{h.hexdigest()[:12]}"
    if not (target / "index.html").is_file():
        # a folder of this process's own: replicas started together each build one (a shared name had each delete
        # the other's while it was written: "warm-up stopped: ... viewer-....partial/niivue.js.gz")
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in parts:
            (tmp / name).write_bytes(data)
        (tmp / NIIVUE_FILE).write_bytes(gzip.compress(bundle, compresslevel=9, mtime=0))
        try:
            tmp.rename(target)
        except OSError:  # another session built it first, or an incomplete folder is in the way
            if (target / "index.html").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    return target


@functools.lru_cache(maxsize=1)
def _component(path: str) -> Any:
    return components.declare_component("ctehr_ct_viewer", path=path)


USER_MAP_FILES = 16  # maps of the models a user trained here, on demo cases (their cache/maps) ...
USER_MAP_BYTES = 2 * 10**9  # ... and their bytes (inside the user's quota as well)
CASE_MAP_FILES = 8  # maps of one saved case (its maps/ folder, inside the user's quota)


def map_store(model: Any, source: str, subject_id: str) -> AV.MapStore:
    """Where the case's maps are kept: a saved case's own ``maps/`` (in the user's quota, deleted with the case); the
    maps of a model the user trained here, and of a patient of the user's own cohorts, in that user's folder; demo
    cases under demo models in the server's bounded folder. Once per session, case version and model (the viewer's
    fragment reruns at each crosshair move)."""
    key = ("map_store", source, subject_id, views.upload_token(source, subject_id), str(model.model_dir))
    return memo(key, lambda: _map_store(model, source, subject_id))


def _map_store(model: Any, source: str, subject_id: str) -> AV.MapStore:
    user = session.user_id()
    base = str(data_dir())
    if source == views.UPLOADED:
        info = _cases.case_info(subject_id)
        if info is None:
            raise InputError("case", subject_id, "is not among your saved cases", "pick a case from the list")
        return AV.MapStore(str(saved.maps_dir(info)), CASE_MAP_FILES, workspaces.user_quota_bytes(), user, base)
    if _case_store.kept_by_user(model, source):  # a model the user trained here, or a patient of the user's cohorts
        return AV.MapStore(str(_case_store.user_cache(workspaces.MAPS)), USER_MAP_FILES, USER_MAP_BYTES, user, base)
    return AV.MapStore(str(data_dir() / "cache" / workspaces.MAPS))


def map_key(model: Any, inputs: Any, source: str, subject_id: str, method: str, horizon: int) -> str:
    """The key of the case's map in its store (``map_store``): the case's digest worked out once per session."""
    token = views.upload_token(source)
    digest = memo(("case_digest", source, subject_id, token, str(model.model_dir)), lambda: AV.case_digest(inputs))
    return AV.map_key(digest, AV.model_stamp(model.model_dir), method, horizon)


def map_peak(model: Any, inputs: Any, source: str, subject_id: str, method: str, horizon: int, raw: np.ndarray,
             volume: Any) -> tuple[tuple[int, int, int] | None, str | None]:
    """The whole-volume map ``raw``'s strongest voxel (None: a map zero everywhere), and the warning Case review shows
    when it lies outside the patient's body (None: inside). The peak is made by the map's job and kept beside the map,
    read once per session (Case review, Export's figure and report), not on each crosshair report."""
    key = map_key(model, inputs, source, subject_id, method, horizon)
    store = map_store(model, source, subject_id)
    peak = memo(("map_peak", key), lambda: AV.read_peak(store.cache().derived(key, AV.PEAK, lambda: AV.peak_bytes(raw))))
    if peak is None or memo(("peak_in_body", key), lambda: in_body(volume.hu, peak)):  # one slice: ms
        return peak, None
    return peak, (f"The map's strongest spot (slice {peak[0] + 1}) lies outside the patient's body, in the air around "
                  "it or on the table: what this model reads most in this CT is not anatomy. Read its risk with care.")


def overlay_map(model: Any, inputs: Any, source: str, subject_id: str, method: str, horizon: int) -> np.ndarray | None:
    """The case's whole-volume map when it is ready; otherwise queue (or show) its background job and return None.

    A large CT's map (``AV.is_heavy``) is made in the job's own process, one such job at a time on the server, so
    two users' maps neither share the cores nor add their gigabytes to the server's memory."""
    key = map_key(model, inputs, source, subject_id, method, horizon)
    store = map_store(model, source, subject_id)
    found = store.cache().get(key)
    if found is not None:
        return found
    job = _jobs.find(key)
    if job is not None and job.state == "done" and job.result is not None:
        return job.result  # no room to keep it on disk: the job's own copy
    if job is not None and job.state in ("failed", "cancelled"):
        _jobs.outcome(job)
        if not st.button("Compute the map again", key=f"again_{key}"):
            return None
        job = None
    if job is None or job.state == "done":  # none yet, or written and since trimmed from its folder
        title = f"{METHOD_LABELS[method]} map, {views.case_label(source, subject_id)}, {views.label_of(model)}"
        from core import runtime

        heavy = AV.is_heavy(inputs)
        target, sent = (str(model.model_dir), AV.portable(inputs)) if heavy else (views.loaded(model), inputs)
        volume = views.case_volume(source, subject_id)
        grid = None if volume is None else AV.Grid.of(volume)  # the job makes the viewer's copy of the map too
        job = _jobs.submit(title, AV.map_job, store, key, target, sent, method, float(horizon),
                           runtime.device_name(), grid, key=key, heavy=heavy, fresh=job is not None, journal=False)
    if job is not None and job.active:
        _jobs.show(job)
    return None


def _position(volume: Any, n_default: int) -> tuple[int, int, int]:
    s, r, c = volume.shape
    z = int(st.session_state.get(K.AXIAL_SLICE, n_default))
    row = int(st.session_state.get(K.CORONAL_ROW, r // 2))
    col = int(st.session_state.get(K.SAGITTAL_COL, c // 2))
    return min(max(z, 0), s - 1), min(max(row, 0), r - 1), min(max(col, 0), c - 1)


def show(volume: Any, model: Any, inputs: Any, pred: Any, source: str, subject_id: str) -> None:
    """The viewer section of Case review for the case's ``volume`` (not None).

    One fragment: its controls (window, overlay, method, opacity, threshold) and the viewer's reports
    rerun only this section, not the page (a job that ends reruns the page, see ``pages/_jobs``).
    """
    n_slices = volume.shape[0]
    if st.session_state.get(K.SLICE_CASE) != (source, subject_id):
        st.session_state[K.AXIAL_SLICE] = viewer.default_slice(pred.slice_weights, n_slices)
        st.session_state[K.CORONAL_ROW] = volume.shape[1] // 2
        st.session_state[K.SAGITTAL_COL] = volume.shape[2] // 2
        st.session_state[K.SLICE_CASE] = (source, subject_id)
    _section(volume, model, inputs, pred, source, subject_id)


@st.fragment
def _section(volume: Any, model: Any, inputs: Any, pred: Any, source: str, subject_id: str) -> None:
    from core.io.windows import WINDOWS

    case_id = f"{source}:{subject_id}:{views.upload_token(source)}"
    uses_image = "image" in pred.modalities_used
    window_names = list(WINDOWS)
    st.session_state.setdefault(K.WINDOW, "soft_tissue" if "soft_tissue" in WINDOWS else window_names[0])
    st.session_state.setdefault(K.SHOW_SALIENCY, False)
    st.session_state.setdefault(K.OPACITY, 0.6)
    st.session_state.setdefault(THRESHOLD, 0.25)
    c1, c2 = st.columns(2)
    window_name = c1.selectbox("Window", window_names, key=K.WINDOW,
                               format_func=lambda w: f"{WINDOWS[w].label} [{WINDOWS[w].low:g}, {WINDOWS[w].high:g}] HU",
                               help="Preset; drag with the right mouse button on the image to adjust it freely.")
    show_map = c2.toggle("Saliency overlay", key=K.SHOW_SALIENCY, disabled=not uses_image,
                         help="Captum attribution of the predicted risk at the sidebar horizon, over the whole CT "
                              "(computed once in the background, then shown on all three planes).")
    maps = show_map and uses_image  # the overlay's own controls: off with it, and for a model that reads no CT
    c3, c4, c5 = st.columns([2, 1, 1])  # the method's name whole at 1280-1366 px ("Detector evidence (IG)")
    options = methods_for(model)
    chrome.settle_method(st.session_state, options)  # first draw; a model that cannot use the method chosen, or can again
    method = c3.selectbox("Method", options, key=K.METHOD, format_func=METHOD_LABELS.get, disabled=not maps,
                          on_change=lambda: st.session_state.__setitem__(K.METHOD_PICKED, True))
    if st.session_state.pop(K.METHOD_PICKED, False):
        # the page outside this fragment names the method too (its caveats, its sanity check): rerun it all, once
        st.rerun(scope="app")
    opacity = c4.slider("Opacity", 0.0, 1.0, step=0.05, key=K.OPACITY, disabled=not maps)
    threshold = c5.slider("Threshold", 0.0, 0.95, step=0.05, key=THRESHOLD, disabled=not maps,
                          help="Map values (0-1, scaled to the 99.5th percentile of |attribution|) below this are "
                               "transparent.")
    chrome.save_viewer_settings()
    overlay: np.ndarray | None = None
    overlay_key = None
    store = None
    status = st.container()  # always drawn, so the viewer below keeps its place (and its WebGL state) when a job ends
    if show_map and uses_image:
        with status, chrome.core_errors(stop=False):
            raw = overlay_map(model, inputs, source, subject_id, method, chrome.horizon_days())
            if raw is not None:
                overlay_key = map_key(model, inputs, source, subject_id, method, chrome.horizon_days())
                overlay = raw
                store = map_store(model, source, subject_id)
                peak, outside = map_peak(model, inputs, source, subject_id, method, chrome.horizon_days(), raw, volume)
                if peak is None:
                    st.info("This map is zero everywhere: this model's risk does not change with the CT (its model "
                            "card's Data section says why).", icon=":material/info:")
                elif outside:
                    st.warning(outside, icon=":material/warning:")
                if peak is not None and st.button(f"Go to the map's strongest spot (slice {peak[0] + 1} of {volume.shape[0]})",
                               icon=":material/my_location:", key=f"peak_{overlay_key}",
                               help="Moves the crosshair onto the map's strongest spot (the voxel the sanity "
                                    "checks' pointing game scores), on all three planes."):
                    st.session_state[K.AXIAL_SLICE], st.session_state[K.CORONAL_ROW], \
                        st.session_state[K.SAGITTAL_COL] = peak
                    st.session_state[K.VIEWER_JUMP] = st.session_state.get(K.VIEWER_JUMP, 0) + 1
    win = WINDOWS[window_name]
    _viewer(volume, source, subject_id, case_id, (float(win.low), float(win.high)), window_name, overlay, overlay_key,
            bool(show_map), float(opacity), float(threshold), pred.slice_weights, store)
    st.caption(
        f"{volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]} voxels, spacing "
        f"{' x '.join(f'{s:g}' for s in volume.spacing_mm)} mm, shown in radiological convention (patient right on "
        "the image left) on the study's own geometry. Research use only."
    )


def _content_id(kind: str, data: bytes) -> str:
    """A volume's id for the browser: what it is and a digest of its bytes (the same bytes, the same id)."""
    return f"{kind}-{hashlib.sha256(data).hexdigest()[:24]}"


def held_volumes(value: Any) -> frozenset[str]:
    """The volume ids the component says it holds (its last value); none when it has not said."""
    if not isinstance(value, dict) or not isinstance(value.get("held"), list):
        return frozenset()
    return frozenset(v for v in value["held"] if isinstance(v, str))


def _viewer(volume: Any, source: str, subject_id: str, case_id: str, window: tuple[float, float], window_name: str,
                     overlay: np.ndarray | None, overlay_key: str | None, show_map: bool, opacity: float,
                     threshold: float, slice_weights: Any, store: AV.MapStore | None = None) -> None:
    """The component; its reports (the crosshair's voxel, the volumes it holds) rerun only the section's fragment.

    The map's NIfTI for the browser is kept beside the map in ``store`` (made once, not once per session)."""
    held = held_volumes(st.session_state.get(VIEWER_KEY))

    def ct_payload() -> tuple[str, bytes]:
        data = views.case_viewer_nifti(source, subject_id, volume, lambda: VN.volume_to_nifti(volume))
        return _content_id("ct", data), data

    ct_id, ct_bytes = memo(("viewer_nifti", case_id), ct_payload)
    map_id, map_bytes = None, None
    if overlay is not None and overlay_key is not None:
        def map_payload() -> tuple[str, bytes]:
            def build() -> bytes:  # the map's job made it, unless the map came from before (or had no room)
                return AV.viewer_bytes(AV.Grid.of(volume), overlay)

            data = build() if store is None else store.cache().derived(overlay_key, AV.VIEWER, build)
            return _content_id("map", data), data

        map_id, map_bytes = memo(("viewer_map", overlay_key), map_payload)
    pos = _position(volume, volume.shape[0] // 2)
    try:
        component = _component(str(component_dir()))
    except (InputError, OSError) as exc:
        st.warning(f"The WebGL CT viewer is unavailable ({chrome.one_line(exc)}); showing plain planes instead.",
                   icon=":material/warning:")
        _plotly_fallback(volume, window, overlay, overlay_key, opacity, pos)
        st.session_state[K.VIEWER_READY] = True  # no component to wait for
        return
    value = component(
        volume=None if ct_id in held else ct_bytes, volume_id=ct_id,
        overlay=None if map_id is None or map_id in held else map_bytes, overlay_id=map_id, show_overlay=show_map,
        opacity=opacity, threshold=threshold, colormap=COLORMAP, window=list(window),
        window_id=f"{case_id}:{window_name}", position_mm=VN.index_to_ras_mm(volume, pos),
        position_id=f"{case_id}:{st.session_state.get(K.VIEWER_JUMP, 0)}", height=VIEWER_HEIGHT, key=VIEWER_KEY, default=None,
    )
    if isinstance(value, dict) and value.get("error"):
        st.warning(f"The WebGL CT viewer could not start ({value['error']}); showing plain planes instead.",
                   icon=":material/warning:")
        _plotly_fallback(volume, window, overlay, overlay_key, opacity, pos)
        _viewer_reported()
        return
    if ct_id in held_volumes(value):
        _viewer_reported()
    if isinstance(value, dict) and value.get("volume_id") == ct_id and value.get("mm") is not None:
        with chrome.core_errors(stop=False):
            s, r, c = VN.ras_mm_to_index(volume, value["mm"])
            st.session_state[K.AXIAL_SLICE], st.session_state[K.CORONAL_ROW], st.session_state[K.SAGITTAL_COL] = s, r, c
            chrome.save_viewer_settings()
            pos = (s, r, c)
    n = volume.shape[0]
    if not st.session_state.get(K.VIEWER_READY):
        return  # the attention strip is drawn with the charts below the viewer (see below_fold_waits)
    if slice_weights is not None and np.size(slice_weights) == n and np.max(slice_weights) > 0:
        strip = F.slice_strip(slice_weights, selected=pos[0], title="Attention over slices")
        strip.update_layout(width=None, height=200)
        st.plotly_chart(strip, width="stretch", key="slice_strip", config=chrome.PLOTLY_CONFIG)


def _viewer_reported() -> None:
    """The viewer holds the case's CT (or failed): charts that waited for it are drawn now, by one page rerun."""
    if st.session_state.get(K.VIEWER_READY):
        return
    st.session_state[K.VIEWER_READY] = True
    if st.session_state.pop(K.BELOW_FOLD_WAITING, False):
        st.rerun(scope="app")


def _show_below_fold() -> None:
    st.session_state[K.VIEWER_READY] = True


def below_fold_waits(volume: Any) -> bool:
    """Whether Case review's charts below the viewer wait (the session's first view of a CT, viewer not yet loaded).

    The browser draws every chart on the one thread that also starts NiiVue and uploads the CT, and a fresh
    page receives them all within a fraction of a second: drawn at once, they hold the viewer back by about
    a second on two cores. While this returns True the page shows :func:`waiting_note` in their place; the
    viewer's first report reruns the page with them.
    """
    waiting = volume is not None and not st.session_state.get(K.VIEWER_READY)
    if waiting:
        st.session_state[K.BELOW_FOLD_WAITING] = True
    return waiting


def waiting_note(what: str, key: str) -> None:
    """The one line shown where charts wait for the viewer, with a button that draws them at once."""
    st.caption(f"{what} appear once the CT viewer has loaded the scan.")
    st.button("Show them now", key=f"show_below_fold_{key}", on_click=_show_below_fold)


def _plotly_fallback(volume: Any, window: tuple[float, float], overlay: np.ndarray | None, overlay_key: str | None,
                     opacity: float, pos: tuple[int, int, int]) -> None:
    """Static plotly planes (no WebGL): axial with a slider, coronal and sagittal through the saved position."""
    n = volume.shape[0]
    z = st.slider("Axial slice (inferior → superior)", 0, n - 1, pos[0], key="fallback_slice")
    st.session_state[K.AXIAL_SLICE] = z
    top = None if overlay is None else memo(("map_top", overlay_key), lambda: F.map_top(overlay))  # once per map
    cols = st.columns(3)
    for col, plane, idx in zip(cols, viewer.PLANES, (z, pos[1], pos[2])):
        fig = F.slice_overlay(viewer.plane_slice(volume.hu, plane, idx),
                              None if top is None else F.scale_map(viewer.plane_slice(overlay, plane, idx), top),
                              window=window, opacity=opacity, spacing_mm=viewer.plane_spacing(volume.spacing_mm, plane),
                              normalize=False, plane=plane,
                              title=f"{plane} {idx + 1}/{viewer.plane_count(volume.shape, plane)}")
        fig.update_layout(width=None, height=320, showlegend=False)
        col.plotly_chart(fig, width="stretch", key=f"fallback_{plane}", config=chrome.PLOTLY_PLANE_CONFIG)
