"""Non-UI helpers for the Streamlit app (this module never imports streamlit).

* where the app keeps its data (``CTEHR_DATA_DIR`` or ``./data``), and the demo
  cohort plus its models, built once on disk by :func:`ensure_demo`;
* per-session workspaces for uploads (private temp folders removed when the
  session object is garbage collected, at interpreter exit, or by a sweep);
* the CT viewer's planes: axial / coronal / sagittal reformats of a
  ``[slices, rows, cols]`` array and their pixel spacing (for the aspect ratio);
* a one-subject cohort folder for an uploaded case, so that every model call
  goes through the same ``core.cohort`` / ``LoadedModel`` path as the demo;
* non-identifying export file names.

The app's demo is deliberately smaller than ``core.demo``'s default so that the
first start (cohort + all seven strategies) fits in about a minute on 2 CPU
cores; ``CTEHR_DEMO_N`` and ``CTEHR_DEMO_EPOCHS`` change it (see README).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import InputError
from core.models import FUSIONS  # names only: core.models does not import torch

if TYPE_CHECKING:
    import pandas as pd

    from core.cohort import Cohort
    from core.io.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
Progress = Callable[[float, str], None]

DEFAULT_FUSION = "coattention_image"
HORIZONS_DAYS: tuple[int, ...] = (30, 365, 1825)
HORIZON_LABELS: dict[int, str] = {30: "30 days", 365: "1 year", 1825: "5 years"}

APP_DEMO_N = 120  # demo size when no shipped models exist (CTEHR_DEMO_N overrides)
APP_DEMO_EPOCHS = int(os.environ.get("CTEHR_DEMO_EPOCHS", "4"))
APP_DEMO_SEED = 0
_READY = "READY.json"
WORKSPACE_PREFIX = "ctehr-session-"


# --------------------------------------------------------------------------- data


def data_dir() -> Path:
    """The folder the app keeps its demo in: ``$CTEHR_DATA_DIR`` or ``./data``."""
    env = os.environ.get("CTEHR_DATA_DIR")
    return Path(env).expanduser().resolve() if env else ROOT / "data"


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def ready_file(self) -> Path:
        return self.root / _READY


def demo_paths(base: Path | None = None) -> DemoPaths:
    return DemoPaths((base or data_dir()) / "demo")


def demo_ready(base: Path | None = None) -> bool:
    paths = demo_paths(base)
    return paths.ready_file.exists() and (paths.cohort / "cohort.csv").exists()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so two sessions that start together build the demo once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


SHIPPED_MODELS = ROOT / "assets" / "demo_models"
_MANIFEST = "MANIFEST.json"


def shipped_manifest(shipped: Path = SHIPPED_MODELS) -> dict:
    """The manifest of the demo models shipped in ``assets/demo_models`` ({} when none).

    It records the demo cohort they were trained on (``n``, ``seed`` and the
    SHA-256 of its ``cohort.csv``), the command that trained them and their test
    metrics. Weights are safetensors, loaded like any model folder.
    """
    path = shipped / _MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _install_shipped(cohort: Path, models: Path, fusions: Sequence[str], shipped: Path) -> list[str]:
    """Copy the shipped models that were trained on exactly this cohort; returns the ones copied."""
    manifest = shipped_manifest(shipped)
    if not manifest or manifest.get("cohort_sha256") != _sha256(cohort / "cohort.csv"):
        return []
    copied = []
    for fusion in fusions:
        src = shipped / fusion
        if (src / "metrics.json").is_file() and (src / "model.safetensors").is_file():
            dst = models / fusion
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
            copied.append(fusion)
    return copied


def ensure_demo(
    base: Path | None = None,
    progress: Progress | None = None,
    *,
    n: int | None = None,
    epochs: int = APP_DEMO_EPOCHS,
    fusions: Sequence[str] = FUSIONS,
    seed: int = APP_DEMO_SEED,
    shipped: Path = SHIPPED_MODELS,
) -> DemoPaths:
    """Build the demo cohort and one model per fusion strategy once, on disk.

    The cohort is generated (deterministic for ``n`` and ``seed``). Models come
    from ``assets/demo_models`` when they were trained on a cohort with the same
    ``cohort.csv`` bytes (the default: ``n`` and ``seed`` of the manifest);
    otherwise, or for strategies not shipped, they are trained here.
    Idempotent: finished parts are kept (a model folder counts as finished when
    its ``metrics.json`` exists), so an interrupted build resumes. ``progress``
    receives (fraction 0..1, label).
    """
    paths = demo_paths(base)
    report = progress or (lambda _f, _l: None)
    manifest = shipped_manifest(shipped)
    if n is None:
        n = int(os.environ.get("CTEHR_DEMO_N", manifest.get("n", APP_DEMO_N)))
    if demo_ready(base):
        report(1.0, "demo ready")
        return paths
    with _file_lock(paths.root.parent / ".demo.lock"):
        if demo_ready(base):
            report(1.0, "demo ready")
            return paths
        started = time.perf_counter()
        cohort_share = 0.8 if manifest else 0.25
        if not (paths.cohort / "cohort.csv").exists():
            from core.demo import write_demo_cohort

            tmp = paths.root / "cohort.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            write_demo_cohort(
                tmp, n=n, seed=seed, progress=lambda f, l: report(cohort_share * f, f"demo cohort: {l}")
            )
            shutil.rmtree(paths.cohort, ignore_errors=True)
            tmp.rename(paths.cohort)
        report(cohort_share, "demo cohort ready")
        paths.models.mkdir(parents=True, exist_ok=True)
        installed = _install_shipped(paths.cohort, paths.models, fusions, shipped)
        if installed:
            report(min(0.95, cohort_share + 0.05), f"installed {len(installed)} shipped demo models")
        to_train = [f for f in fusions if not (paths.models / f / "metrics.json").exists()]
        if to_train:
            from core.train import train_model

            lo_all = cohort_share + 0.05 if installed else cohort_share
            share = (1.0 - lo_all) / len(to_train)
            for i, fusion in enumerate(to_train):
                out = paths.models / fusion
                lo = lo_all + i * share
                report(lo, f"training {fusion} ({i + 1}/{len(to_train)})")

                def _sub(f: float, label: str, lo: float = lo, fusion: str = fusion) -> None:
                    report(min(1.0, lo + share * f), f"training {fusion}: {label}")

                shutil.rmtree(out, ignore_errors=True)
                train_model(paths.cohort, fusion, out, epochs=epochs, seed=seed, device="auto", progress=_sub)
        paths.ready_file.write_text(
            json.dumps(
                {
                    "n": n,
                    "epochs": epochs if to_train else manifest.get("epochs"),
                    "seed": seed,
                    "fusions": list(fusions),
                    "shipped_models": installed,
                    "trained_here": to_train,
                    "build_seconds": round(time.perf_counter() - started, 1),
                },
                indent=2,
            )
        )
        report(1.0, "demo ready")
    return paths


def demo_build_info(base: Path | None = None) -> dict:
    paths = demo_paths(base)
    if not paths.ready_file.exists():
        return {}
    return json.loads(paths.ready_file.read_text())


def list_models(models_root: Path) -> dict[str, Path]:
    """Model folders (``config.json`` + ``metrics.json``) under ``models_root``, by name.

    Fusion strategies come first in the canonical order, then any other model.
    """
    if not models_root.is_dir():
        return {}
    found = {
        p.name: p
        for p in sorted(models_root.iterdir())
        if p.is_dir() and (p / "config.json").exists() and (p / "metrics.json").exists()
    }
    order = [f for f in FUSIONS if f in found] + [k for k in found if k not in FUSIONS]
    return {k: found[k] for k in order}


def device_label() -> str:
    """The device models run on: the CUDA GPU's name, or ``CPU``."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------- workspaces


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class SessionWorkspace:
    """A private temp folder for one browser session's uploads.

    Created with mode 0700 under the system temp dir with a random name; it is
    never derived from user input, so other sessions cannot guess or reach it.
    The folder is deleted when this object is garbage collected (Streamlit
    drops a session's state when the session ends), at interpreter exit, or by
    :func:`sweep_stale_workspaces`.
    """

    path: Path
    _finalizer: weakref.finalize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _rmtree, str(self.path))

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self.path.is_dir()

    def touch(self) -> None:
        """Mark the workspace as in use (the sweep skips recently used ones)."""
        if self.alive:
            os.utime(self.path)

    def fresh_dir(self, name: str) -> Path:
        """An empty sub-folder (replaced when it exists)."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise InputError("workspace folder", name, "must be letters, digits, - or _", "use a plain name")
        target = self.path / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target


def new_session_workspace(root: Path | None = None) -> SessionWorkspace:
    path = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=str(root) if root else None))
    os.chmod(path, 0o700)
    return SessionWorkspace(path)


def sweep_stale_workspaces(max_age_s: float = 6 * 3600, root: Path | None = None) -> int:
    """Delete session folders untouched for ``max_age_s`` (a crash left them behind)."""
    base = Path(root or tempfile.gettempdir())
    now = time.time()
    removed = 0
    for p in base.glob(WORKSPACE_PREFIX + "*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


# ------------------------------------------------------------------------- viewer

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


def plane_count(shape: tuple[int, int, int], plane: str) -> int:
    """How many slices a plane has for a ``[slices, rows, cols]`` volume."""
    s, r, c = shape
    return {"axial": s, "coronal": r, "sagittal": c}[_check_plane(plane)]


def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise InputError("plane", plane, f"must be one of {', '.join(PLANES)}", "pick a listed plane")
    return plane


ATTENTION_PEAK_RATIO = 1.5  # attention over slices counts as peaked when its maximum is this many times uniform


def default_slice(weights: np.ndarray | None, n_slices: int) -> int:
    """The axial slice a case opens on.

    The slice the model attends to most when its attention over slices has a
    clear peak (maximum at least ``ATTENTION_PEAK_RATIO`` times the uniform
    weight ``1 / n_slices``); otherwise the middle slice. A nearly flat attention
    (the shipped demo models' is within 10 % of uniform) would otherwise open on
    an arbitrary slice, often an apex with no lung.

    >>> default_slice(np.full(32, 1 / 32), 32), default_slice(np.r_[np.full(31, 0.02), 0.38], 32), default_slice(None, 5)
    (16, 31, 2)
    """
    middle = n_slices // 2
    if weights is None:
        return middle
    w = np.asarray(weights, dtype=float).ravel()
    if w.size != n_slices or n_slices == 0 or not np.isfinite(w).all() or w.max() <= 0:
        return middle
    return int(np.argmax(w)) if w.max() >= ATTENTION_PEAK_RATIO * w.sum() / n_slices else middle


def plane_slice(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One 2D plane of a ``[slices, rows, cols]`` array, oriented for display.

    axial: rows (anterior at top) x cols (patient right on the left);
    coronal and sagittal: superior at the top (slice 0 is inferior, so flipped).
    """
    n = plane_count(array.shape, plane)  # type: ignore[arg-type]
    if not 0 <= index < n:
        raise InputError("slice", index, f"must be in 0..{n - 1} for the {plane} plane", "move the slider into range")
    if plane == "axial":
        return array[index]
    if plane == "coronal":
        return array[::-1, index, :]
    return array[::-1, :, index]


def plane_spacing(spacing_mm: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(vertical, horizontal) pixel spacing in mm of a displayed plane."""
    s, r, c = (float(x) for x in spacing_mm)
    return {"axial": (r, c), "coronal": (s, c), "sagittal": (s, r)}[_check_plane(plane)]


# ---------------------------------------------------------------- uploaded cases

UPLOAD_SUBJECT = "uploaded-case"


def upload_cohort(
    root: Path,
    *,
    volume: Volume | None,
    events: pd.DataFrame | None,
    index_time: pd.Timestamp | None = None,
    subject_id: str = UPLOAD_SUBJECT,
) -> Cohort:
    """A one-subject cohort for an uploaded case, held in memory.

    The volume is the one the user sees in the viewer (after de-identification
    and the series choice), so the model explains exactly that image. ``events``
    are the subject's MEDS rows (columns of ``read_timeline``); the index time
    defaults to the last event, so no event is dropped. Follow-up time and
    event are unknown for an uploaded case: they are written as 1 day /
    censored so that the table has the usual columns, and are never shown.
    """
    import pandas as pd

    from core.cohort import Cohort

    if volume is None and (events is None or events.empty):
        raise InputError("upload", "nothing", "a case needs a study or a timeline", "upload a CT study or a timeline")
    row: dict[str, object] = {"subject_id": subject_id, "time": 1.0, "event": 0, "split": "test"}
    timeline = None
    if volume is not None:
        row["study"] = "uploaded study (in memory)"
    if events is not None and not events.empty:
        timeline = events.loc[:, ["subject_id", "time", "code", "numeric_value"]].copy()
        timeline["subject_id"] = subject_id
        timeline = timeline.reset_index(drop=True)
        index_time = index_time if index_time is not None else pd.Timestamp(timeline["time"].max())
    row["index_time"] = pd.Timestamp(index_time) if index_time is not None else pd.NaT
    table = pd.DataFrame([row])
    table["index_time"] = pd.to_datetime(table["index_time"])

    class UploadedCohort(Cohort):
        def load_volume(self, sid: str) -> Volume | None:  # noqa: D102 - the in-memory study
            self.row(sid)
            return volume

        def study_path(self, sid: str) -> Path | None:  # noqa: D102 - nothing on disk
            self.row(sid)
            return None

    # No curated features for an uploaded case: an empty table (rather than None) tells the
    # model the features are missing for this subject (masked, with missing indicators).
    features = pd.DataFrame(index=pd.Index([], name="subject_id", dtype=str))
    return UploadedCohort(root=root, table=table, timeline=timeline, features=features)


# ------------------------------------------------------------------------ export


def export_name(kind: str, case_number: int, suffix: str, *, method: str | None = None, slice_index: int | None = None) -> str:
    """A file name with nothing identifying: kind, a session-local case number, method, slice."""
    parts = [kind, f"case{case_number:02d}"]
    if method:
        parts.append(method)
    if slice_index is not None:
        parts.append(f"slice{slice_index:03d}")
    safe = "_".join("".join(ch for ch in p if ch.isalnum() or ch in "-") for p in parts)
    return f"{safe}.{suffix.lstrip('.')}"


# ------------------------------------------------------ reference curves, groups


def reference_ids(cohort: Cohort) -> list[str] | None:
    """The patients the reference curves are drawn from: the held-out test split when there is one.

    Held-out patients show how the model separates patients it was not trained
    on, and predicting 160 demo patients instead of 800 keeps the first view fast.
    """
    test = cohort.ids("test")
    return list(test) if test else None


def _cached_predictions(model: object, cohort: Cohort, ids: list[str], cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``predict_cohort`` of the synthetic demo, kept in ``cache`` (an .npz) for later server starts.

    The file is reused only for the same subject ids; it holds no patient data (demo only).
    """
    from core.predict import predict_cohort

    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if saved["ids"].tolist() == ids:
                return saved["times"], saved["surv"]
    times, surv = predict_cohort(model, cohort, ids)  # type: ignore[arg-type]
    if cache is not None:
        tmp = cache.with_suffix(".partial.npz")
        np.savez(tmp, ids=np.asarray(ids, dtype=str), times=np.asarray(times, dtype=float),
                 surv=np.asarray(surv, dtype=float))
        tmp.replace(cache)
    return np.asarray(times, dtype=float), np.asarray(surv, dtype=float)


def reference_curves(model: object, cohort: Cohort, ids: Sequence[str] | None = None, groups: int = 3,
                     cache: Path | None = None) -> dict:
    """Cohort Kaplan-Meier and the KM curves of predicted risk groups under ``model``.

    Returns ``{"cohort_km": (t, s, lo, hi), "groups": [...km_by_risk_group groups...],
    "logrank_p", "n", "events"}``. Risk is ``core.evaluate.risk_from_survival`` of the
    model's curves, the same score :func:`risk_group_of` uses for one case. ``cache``
    (demo models only) keeps the predictions on disk between server starts.
    """
    from core.evaluate import kaplan_meier, km_by_risk_group, risk_from_survival

    chosen = list(ids) if ids is not None else cohort.ids()
    times, surv = _cached_predictions(model, cohort, chosen, cache)
    risk = risk_from_survival(np.asarray(times, dtype=float), np.asarray(surv, dtype=float))
    table = cohort.table.set_index("subject_id").loc[chosen]
    time = table["time"].to_numpy(dtype=float)
    event = table["event"].to_numpy(dtype=int)
    by_group = km_by_risk_group(risk, time, event, groups=groups)
    return {
        "cohort_km": kaplan_meier(time, event),
        "groups": by_group["groups"],
        "logrank_p": by_group["logrank_p"],
        "n": len(chosen),
        "events": int(event.sum()),
        "risk": risk,
    }


def risk_group_of(prediction: object, groups: Sequence[dict]) -> dict:
    """The risk group (from :func:`reference_curves`) whose risk range holds this case.

    Ranges are contiguous in sorted order, so the case falls into the first group
    whose upper bound is at least its risk (the last group above every bound).
    """
    from core.evaluate import risk_from_survival

    if not groups:
        raise InputError("groups", "[]", "no risk groups", "compute reference curves on a cohort first")
    times = np.asarray(prediction.times, dtype=float)  # type: ignore[attr-defined]
    surv = np.asarray(prediction.survival, dtype=float)[None, :]  # type: ignore[attr-defined]
    risk = float(risk_from_survival(times, surv)[0])
    for group in groups:
        if risk <= group["risk_range"][1]:
            return group
    return groups[-1]


# --------------------------------------------------------------- attention maps


def event_labels(events: pd.DataFrame | None, n: int) -> list[str]:
    """Short labels for event tokens: the code (prefix dropped), or a token number."""
    if events is None or len(events) != n:
        return [f"event {i}" for i in range(n)]
    out = []
    for i, code in enumerate(events["code"].astype(str)):
        parts = code.split("//")
        short = "/".join(parts[1:]) if len(parts) > 1 else code
        out.append(f"{i}: {short[:24]}")
    return out


def attention_maps(attention: dict[str, np.ndarray], events: pd.DataFrame | None) -> list[dict]:
    """Raw fusion attention maps as heatmap inputs: per map, weights [heads, key tokens].

    ``attention`` holds ``"img<-ehr"`` ``[B, heads, S, E]`` (image tokens query
    EHR tokens) and/or ``"ehr<-img"`` ``[B, heads, E, S]``; each is averaged over
    its queries, giving for every head how much attention each key token got.
    """
    maps = []
    for key, raw in attention.items():
        a = np.asarray(raw, dtype=np.float32)
        if a.ndim == 4:
            a = a[0]
        if a.ndim != 3 or a.size == 0 or not np.isfinite(a).all():
            continue
        weights = a.mean(axis=1)  # [heads, keys]
        if key.startswith("img<-"):
            cols, axis, title = event_labels(events, weights.shape[1]), "timeline event (key)", "CT slices attending to events"
        else:
            cols, axis, title = [f"slice {i}" for i in range(weights.shape[1])], "slice token (key)", "events attending to CT slices"
        maps.append({"key": key, "title": f"{title} ({key})", "weights": weights,
                     "rows": [f"head {h}" for h in range(weights.shape[0])], "cols": cols, "x_title": axis})
    return maps


def describe_deid(report: object) -> str:
    """One line about what de-identification changed (no identifying values)."""
    if report is None:
        return "identifying attributes removed."
    fields = {k: getattr(report, k) for k in dir(report) if not k.startswith("_") and not callable(getattr(report, k))}
    counts = [f"{k.replace('_', ' ')}: {len(v) if isinstance(v, (list, tuple, set, dict)) else v}"
              for k, v in fields.items() if isinstance(v, (int, list, tuple, set, dict)) and not isinstance(v, bool)]
    return ("; ".join(counts[:6]) + ".") if counts else "identifying attributes removed."


# ------------------------------------------------------------ uploaded cohorts

MAX_COHORT_FILES = 5000


def unpack_cohort_zip(data: bytes, dest: Path) -> Path:
    """Write an uploaded zip of a cohort folder under ``dest``; return the folder holding cohort.csv.

    The archive is read in memory by :func:`core.io.safezip.read_zip` (no ``..``,
    no absolute names, no links, size and ratio caps). Names are re-checked to
    stay under ``dest`` before anything is written.
    """
    from core.io.safezip import read_zip

    members = read_zip(data)
    if len(members) > MAX_COHORT_FILES:
        raise InputError("cohort zip", f"{len(members)} files", f"has more than {MAX_COHORT_FILES} files",
                         "zip one cohort folder (cohort.csv, timeline, features, studies)")
    csvs = [m.name for m in members if m.name.replace("\\", "/").split("/")[-1] == "cohort.csv"]
    if len(csvs) != 1:
        raise InputError("cohort zip", f"{len(csvs)} cohort.csv files", "must hold exactly one cohort.csv",
                         "zip one cohort folder with cohort.csv at its top")
    top = csvs[0].replace("\\", "/").rsplit("/", 1)[0] if "/" in csvs[0] else ""
    root = dest.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for m in members:
        name = m.name.replace("\\", "/")
        if top and not name.startswith(top + "/"):
            continue
        rel = name[len(top) + 1:] if top else name
        target = (root / rel).resolve()
        if root not in target.parents:
            raise InputError("zip entry", m.name, "points outside the cohort folder", "re-create the zip with relative names")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(m.data)
    return root


# ------------------------------------------------------------------ calibration


def calibration_figure(calibration: dict, title: str = "") -> object:
    """Predicted against Kaplan-Meier observed risk per risk group, one trace per horizon.

    ``calibration`` is ``survival_metrics(...)["calibration"]``: ``{horizon: {"groups":
    [{"n", "events", "predicted", "observed"}], "ici", ...} | None}``.
    """
    import plotly.graph_objects as go

    from core.figures import PALETTE

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "rgb(150,150,150)"}, hoverinfo="skip"))
    top = 0.05
    for i, (h, cal) in enumerate(calibration.items()):
        if not cal:
            continue
        rows = [g for g in cal["groups"] if g["observed"] is not None]
        if not rows:
            continue
        x = [g["predicted"] for g in rows]
        y = [g["observed"] for g in rows]
        top = max(top, *x, *y)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=f"{HORIZON_LABELS.get(int(float(h)), f'{h} d')} (ICI {cal['ici']:.3f})",
            marker={"size": [6 + 0.3 * g["n"] for g in rows], "color": PALETTE[i % len(PALETTE)]},
            customdata=[[g["n"], g["events"]] for g in rows],
            hovertemplate="predicted %{x:.2f}, observed %{y:.2f}<br>n=%{customdata[0]}, events=%{customdata[1]}<extra></extra>",
        ))
    lim = min(1.0, top * 1.1)
    fig.update_layout(title={"text": title} if title else None, xaxis_title="predicted risk 1 - S(t)",
                      yaxis_title="observed risk (1 - Kaplan-Meier)", template="plotly_white", height=420,
                      xaxis={"range": [0, lim]}, yaxis={"range": [0, lim]}, legend={"orientation": "h", "y": -0.25})
    return fig
