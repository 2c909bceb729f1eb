"""The app's long jobs as functions for the background queue (core.jobs): training and evaluating models, and
building a cohort from MEDS events (a case's exports: ``core.app.export_jobs``).

Each takes the job context first (``ctx.progress(fraction, message)``, which
raises ``JobCancelled`` on a cancel) and only plain, picklable arguments, so the
queue can run it in its own process (``heavy=True``). Results are plain dicts;
a trained model is written to its folder on disk before the job ends, so it
outlives the server.
"""

from __future__ import annotations

import json
import shutil
import time
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.app.workspace import TRAINED_MARKER, is_built_cohort, recorded_cohort
from core.job_state import JobContext, ServerGone

COHORT_STAMP = "%Y%m%d-%H%M%S"  # the name of a cohort folder that unpack_gated makes (the time it was unpacked)
UNPACKED = ".ctehr-unpacked"  # in that folder once it is whole: the tag of the training that unpacked it (job_restart)
# train_every_job's bar, until the strategies' own times are known (see bar_span and encoder_share): the first
# strategy that reads the CT trains the image encoder. Its lesion pretext costs the same on any cohort, about what a
# fusion costs on ENCODER_FIXED subjects; after it the CT strategy grows with the subjects as a fusion does, and a
# fusion has a fixed part worth FUSION_FIXED subjects (its members' set-up, its evaluation). Fitted on "all 7" as the
# app runs it (one torch thread, 10 epochs, 30 slices a study, session 55): 200 subjects, image_only 411 s against
# 33-55 s a fusion (10.5 : 1); 60 subjects, 456 s against 17-19 s (26 : 1) and, in a run slowed by another job at
# first, 572 s against 22-28 s. A lesion pretext step took 128-147 ms in these runs.
ENCODER_FIXED = 3100.0
FUSION_FIXED = 100.0
ENCODER_SHARE_N = 400  # the cohort size assumed when cohort.csv cannot be counted
# a strategy's evaluation on the test split, as a share of a fusion's whole time (60 patients, one thread, session 55:
# 6-9 s of 23-27 s); the CT strategy's evaluation costs about the same, a far smaller share of its time
EVAL_SHARE = 0.3


def encoder_share(n_subjects: int) -> float:
    """The CT strategy's time over a fusion's on a cohort of ``n_subjects``, before either is timed:
    ``(ENCODER_FIXED + n) / (FUSION_FIXED + n)``, from about 30 on a handful of subjects down towards 1 on many
    thousands. With bfloat16 on two threads (session 54) it was 22 : 1 on 60 subjects and 8 : 1 on 400 x 100 slices;
    this rule says 19.8 and 7.0. No count: as for :data:`ENCODER_SHARE_N` subjects.

    >>> [round(encoder_share(n), 1) for n in (400, 200, 60, 10, 8000, 0)]
    [7.0, 11.0, 19.8, 28.3, 1.4, 7.0]
    """
    n = n_subjects if n_subjects >= 1 else ENCODER_SHARE_N
    return (ENCODER_FIXED + n) / (FUSION_FIXED + n)


ENCODER_SHARE = encoder_share(ENCODER_SHARE_N)


def first_ct_strategy(runs: list[str]) -> int | None:
    """The index in ``runs`` of the first strategy that reads the CT (it trains the cohort's image encoder), or None.

    >>> first_ct_strategy(["ehr_only", "concat", "image_only"]), first_ct_strategy(["ehr_only"])
    (1, None)
    """
    return next((j for j, f in enumerate(runs) if f != "ehr_only"), None)


def bar_span(i: int, runs: list[str], seconds: dict[int, float], spent: float, floor: float,
             share: float = ENCODER_SHARE) -> tuple[float, float]:
    """The part ``(lo, hi)`` of train_every_job's bar for strategy ``i`` of ``runs`` (fusion slugs, in order).

    ``seconds``: how long each strategy done so far took (index -> s; a refused one is left out), ``spent``: the
    job's own seconds so far, ``floor``: where the bar stands now (it never goes back). Before any strategy's time is
    known the shares come from ``share`` (:func:`encoder_share` of the cohort; the bar from 0.1, after the upload's
    gate). From then on the bar is the share of time spent, with each strategy left estimated from those done: a
    fusion's time from the fusions done (ehr_only, much faster, is no guide), or else the CT strategy's time over
    ``share``; so a job's time estimate follows what this cohort costs, not the prior's ratio.

    >>> [round(x, 3) for x in bar_span(0, ["image_only", "ehr_only", "concat"], {}, 1.0, 0.1)]
    [0.1, 0.8]
    >>> [round(x, 3) for x in bar_span(2, ["image_only", "ehr_only", "concat"], {0: 900.0, 1: 2.0}, 905.0, 0.84)]
    [0.876, 1.0]
    """
    first_ct = first_ct_strategy(list(runs))
    weights = [share if j == first_ct else 1.0 for j in range(len(runs))]
    fused = [s for j, s in seconds.items() if j != first_ct and runs[j] != "ehr_only"]
    unit = sum(fused) / len(fused) if fused else (seconds[first_ct] / share if first_ct in seconds else None)
    if unit is None:  # nothing timed yet: the prior's shares of what is left of the bar
        left = sum(weights[i:])
        lo = max(floor, 0.1 + 0.9 * sum(weights[:i]) / sum(weights))
        return lo, lo + (1.0 - lo) * weights[i] / left
    todo = [unit * w for w in weights[i:]]
    total = spent + sum(todo)
    lo = min(max(floor, spent / total), 1.0)
    return lo, max(lo, min((spent + todo[0]) / total, 1.0))


def _count_subjects(cohort_dir: Path | str) -> int:
    """Rows of the cohort's cohort.csv (its header left out); 0 when it cannot be read (the training says why)."""
    try:
        with open(Path(cohort_dir) / "cohort.csv", encoding="utf-8", errors="replace") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)
    except OSError:
        return 0


def _refuse(report: object) -> None:
    """Raise the one-line refusal of a cohort whose gate found identifying data or burned-in text."""
    from core.deid.cohort_gate import FIX
    from core.errors import InputError

    rows = [r.line_text() for r in report.blocked_rows]  # type: ignore[attr-defined]
    raise InputError("cohort", f"{len(rows)} of its studies", "hold identifying data or burned-in "
                     f"text ({'; '.join(rows[:3])}{'; ...' if len(rows) > 3 else ''})",
                     f"{FIX}, then upload the cohort again")


def gate_cohort_folder(ctx: JobContext, cohort_dir: str, span: tuple[float, float] = (0.0, 0.1)) -> None:
    """The PHI gate on every study of a cohort folder (its progress over ``span`` of the job's bar); a refused folder
    is deleted and named row by row."""
    from core.deid.cohort_gate import gate_cohort

    a, b = span
    report = gate_cohort(cohort_dir, progress=lambda f, m: ctx.progress(a + (b - a) * f, f"PHI check: {m}"))
    if not report.ok:
        shutil.rmtree(cohort_dir, ignore_errors=True)
        _refuse(report)


def train_uploaded_job(ctx: JobContext, data: bytes, cohorts_dir: str, fusion: str, out: str, epochs: int, *,
                       label: str = "", image_encoder_kind: str = "auto", body_crop: bool = False, tag: str = "") -> dict:
    """A zipped cohort from an upload: gated and unpacked (:func:`unpack_gated`, ``tag`` in its marker) and trained as
    :func:`train_job`; a training that fails or is cancelled removes the unpacked cohort."""
    cohort_dir = unpack_gated(ctx, data, cohorts_dir, tag)
    try:
        return train_job(ctx, str(cohort_dir), fusion, out, epochs, label=label, gate=False, span=(0.1, 1.0),
                         image_encoder_kind=image_encoder_kind, body_crop=body_crop)
    except ServerGone:  # a restart: the record of the job keeps the cohort to start it again, or removes it
        raise
    except BaseException:  # failed or cancelled: no model keeps the unpacked cohort, which would fill the quota
        remove_unpacked(cohorts_dir, cohort_dir)
        raise


def remove_unpacked(cohorts_dir: str | Path, cohort_dir: Path) -> None:
    """Delete the folder :func:`unpack_gated` made in ``cohorts_dir`` for ``cohort_dir`` (the zip's cohort folder may
    lie deeper inside it)."""
    shutil.rmtree(Path(cohorts_dir) / Path(cohort_dir).relative_to(cohorts_dir).parts[0], ignore_errors=True)


def unpack_gated(ctx: JobContext, data: bytes, cohorts_dir: str, tag: str = "") -> Path:
    """A zipped cohort gated for PHI in memory (nothing written when refused; the first 10 % of the progress) and
    unpacked into ``cohorts_dir/<time>`` (the user's cohorts folder), marked whole with ``tag`` (:data:`UNPACKED`: a
    restart keeps it for starting the training again, ``core.app.job_restart``); returns the cohort folder."""
    import time

    from core.app.workspace import unpack_cohort_zip
    from core.deid.cohort_gate import gate_cohort_zip

    report = gate_cohort_zip(data, progress=lambda f, m: ctx.progress(0.1 * f, f"PHI check: {m}"))
    if not report.ok:
        _refuse(report)
    target = Path(cohorts_dir) / time.strftime(COHORT_STAMP)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    cohort_dir = unpack_cohort_zip(data, target)
    (target / UNPACKED).write_text(tag, encoding="utf-8")
    return cohort_dir


def validate_uploaded_job(ctx: JobContext, data: bytes, cohorts_dir: str, models: dict[str, str], device: str = "cpu",
                          subgroup: str | None = None, recalibrate: dict[str, str] | None = None,
                          keep: str | None = None, site: str | None = None) -> dict[str, dict]:
    """An external validation: a zipped cohort the models never saw, gated and unpacked as for training, and each
    model of ``models`` ({name: model folder}) evaluated on every subject (``core.evaluation.evaluate_model`` with
    split "all", three risk groups, and per group of ``subgroup``, a column of its cohort.csv or features.csv, when
    given). Returns {name: metrics}; with several models the first one's metrics also hold ``fusion_gain``
    (``core.evaluation.paired_fusion_gain`` of them all on this cohort, or None); a model after the first that cannot
    be evaluated gets {"error": text}, while
    the first one's error (no outcomes, an unknown subgroup column) stops the job; the first one's also hold
    ``subject_risk`` (each patient's risk and outcome, for the patients it orders worst). The unpacked cohort is
    removed afterwards (the upload is the user's copy).

    ``recalibrate`` ({"out", "label", "base_cohort", "site"}): the first model is also recalibrated to this cohort
    (:func:`core.recalibrate.recalibrate_model`) into ``out``, listed among the user's models as ``label`` (its
    ``base_cohort``, the original's, is where the app evaluates it); the report, or {"error": text}, is the first
    model's ``recalibration``. Between two models it makes way (``ctx.yield_turn``) for heavy jobs queued meanwhile.
    ``keep`` (the upload's file name): the first model's ``validated_on`` {"cohort": the ``site`` (``validations
    .site_name``), "upload", "at", "model_fingerprint"} names it and its weights for the report and the pooling of
    sites, and the result is kept in the user's folder (when that fails, the first model's ``not_kept`` says why)."""
    from core.app import validations
    from core.errors import InputError
    from core.evaluation import ALL_SPLITS, evaluate_model, model_fingerprint, paired_fusion_gain

    version = model_fingerprint(next(iter(models.values())))  # the weights read: a model replaced later is another
    cohort_dir = unpack_gated(ctx, data, cohorts_dir)

    def inside(text: str) -> str:  # the server's folder means nothing to the user: name the file in the zip
        return text.replace(f"{cohort_dir}/", "")

    out: dict[str, dict] = {}
    span = (0.75 if recalibrate else 0.85) / max(len(models), 1)
    try:
        for i, (name, model_dir) in enumerate(models.items()):
            if i:  # between two models, heavy jobs queued meanwhile run first
                ctx.yield_turn()
            try:
                out[name] = evaluate_model(Path(model_dir), cohort_dir, split=ALL_SPLITS, device=device, risk_groups=3,
                                           subgroup=subgroup or None, keep_risk=i == 0 or len(models) > 1,
                                           progress=lambda f, m, i=i, name=name: ctx.progress(
                                               0.1 + span * (i + f), f"{name}: {m}" if len(models) > 1 else m))
            except (InputError, OSError) as err:
                if i == 0:
                    if isinstance(err, InputError):
                        raise InputError(err.field, inside(str(err.value)), inside(err.problem), inside(err.fix)) from None
                    raise
                out[name] = {"error": inside(" ".join(str(err).split()))}
        if len(models) > 1:  # the best fusion against the best single modality here, on the same patients
            gain = paired_fusion_gain(out, cohort_dir)
            for m in list(out.values())[1:]:
                m.pop("subject_risk", None)  # the others' risks served the paired comparison only
            out[next(iter(models))]["fusion_gain"] = gain
        if recalibrate:
            first = next(iter(models))
            try:
                out[first]["recalibration"] = validations.recalibrated_copy(ctx, models[first], cohort_dir, recalibrate,
                                                                            device)
            except (InputError, OSError) as err:  # the validation above is still shown
                out[first]["recalibration"] = {"error": inside(" ".join(str(err).split()))}
    finally:
        remove_unpacked(cohorts_dir, cohort_dir)
    if keep is not None:  # the user's folder holds the cohorts folder
        out[next(iter(models))]["validated_on"] = {"cohort": validations.site_name(site, keep), "upload": keep,
                                                   "at": time.strftime("%Y-%m-%d %H:%M"), "model_fingerprint": version}
        try:
            validations.save(Path(cohorts_dir).parent, out, next(iter(models)), keep, subgroup, site=site)
        except (InputError, OSError) as err:  # a full disk or quota: the result is still shown, and why it is not kept
            out[next(iter(models))]["not_kept"] = " ".join(str(err).split())
    ctx.progress(1.0, "done")
    return out


def train_job(ctx: JobContext, cohort_dir: str, fusion: str, out: str, epochs: int, *, label: str = "",
              gate: bool = True, span: tuple[float, float] = (0.0, 1.0), image_encoder_kind: str = "auto",
              body_crop: bool = False, ehr_encoder: str = "auto") -> dict:
    """Gate (PHI) and train ``fusion`` on ``cohort_dir`` into ``out`` (written only when training succeeds);
    ``image_encoder_kind`` and ``ehr_encoder`` as in ``core.train.train_model`` ("detector": the whole-CT lesion
    detector; "summary": the timeline's summary as the tabular features); ``body_crop``: every CT cut to a square
    box around the body first (``image.body_crop``)."""
    if gate:
        gate_cohort_folder(ctx, cohort_dir)
        span = (0.1, 1.0)
    return _train_one(ctx.progress, cohort_dir, fusion, out, epochs, label=label, span=span,
                      image_encoder_kind=image_encoder_kind, body_crop=body_crop, ehr_encoder=ehr_encoder,
                      between=ctx.yield_turn)


def _train_one(progress: Callable[[float, str], None], cohort_dir: str, fusion: str, out: str, epochs: int, *,
               label: str, span: tuple[float, float], image_encoder_kind: str, body_crop: bool,
               ehr_encoder: str = "auto", between: Callable[[], None] | None = None) -> dict:
    """:func:`train_job` after the gate: ``progress`` gets the fractions of ``span``; ``between`` (the job's
    ``yield_turn``) is where the training may let queued heavy jobs run first (``core.train.train_model``)."""
    from core.train import train_model

    final = Path(out)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    progress(span[0], "loading the cohort")
    try:
        metrics = train_model(cohort_dir, fusion, partial, epochs=int(epochs), device="auto",
                              image_encoder_kind=image_encoder_kind, ehr_encoder=ehr_encoder,
                              progress=lambda f, m: progress(span[0] + (span[1] - span[0]) * f, m),
                              overrides={"image": {"body_crop": True}} if body_crop else None, between=between)
        (partial / TRAINED_MARKER).write_text(json.dumps({"cohort_dir": str(cohort_dir), "fusion": fusion,
                                                          "label": label or fusion, "epochs": int(epochs),
                                                          "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    test = metrics.get("test") or {}
    return {"out": str(final), "cohort_dir": str(cohort_dir), "label": label or fusion,
            "c_index": test.get("c_index"), "c_index_ci": test.get("c_index_ci"),
            "data_notes": list(metrics.get("data_notes") or [])}


def train_every_job(ctx: JobContext, data: bytes, cohorts_dir: str, runs: dict[str, tuple[str, str]],
                    epochs: int, *, image_encoder_kind: str = "auto", body_crop: bool = False,
                    device: str = "cpu", ehr_encoder: str = "auto", tag: str = "") -> dict:
    """Several strategies on one uploaded cohort, to compare them: the zip gated and unpacked once
    (:func:`unpack_gated`), then each ``fusion -> (model folder, label)`` of ``runs`` trained in turn (they share the
    cohort's cached image encoder, trained by the first strategy that reads the CT) and evaluated on the test split,
    its evaluation kept beside the model as Cohort & models keeps it (``test_metrics.json``).

    Returns ``{"cohort_dir", "models": {label: metrics or {"error": text}}, "data_notes", "paired"}`` (``paired``:
    the best fusion against the best single-modality model, ``core.evaluation.paired_fusion_gain``, or None). A strategy that cannot
    be trained on this cohort (an image strategy without studies) is named with its error and the others go on;
    when none can be, the first one's error ends the job. Models trained before a cancel are kept. Between two
    strategies, and within one (in the lesion pretext, between the ensemble's members), the job makes way
    (``ctx.yield_turn``) for the heavy jobs queued meanwhile, such as another user's evaluation; its bar follows the
    strategies' own times, the waits left out (:func:`bar_span`). A job that fails or is cancelled before any model
    was written removes the cohort it unpacked."""
    started = time.monotonic()
    cohort_dir = unpack_gated(ctx, data, cohorts_dir, tag)
    try:
        return _train_each(ctx, cohort_dir, runs, epochs, image_encoder_kind, body_crop, device, started, ehr_encoder)
    except ServerGone:  # a restart: the job's record decides (core.app.job_journal)
        raise
    except BaseException:  # failed or cancelled: the cohort stays only for the models trained before
        if not any((Path(out) / TRAINED_MARKER).is_file() for out, _ in runs.values()):
            remove_unpacked(cohorts_dir, cohort_dir)
        raise


def train_every_on_folder_job(ctx: JobContext, cohort_dir: str, runs: dict[str, tuple[str, str]], epochs: int, *,
                              image_encoder_kind: str = "auto", body_crop: bool = False, device: str = "cpu",
                              ehr_encoder: str = "auto") -> dict:
    """:func:`train_every_job` on a cohort folder the user keeps (one built from MEDS): gated as it is
    (:func:`gate_cohort_folder`), trained in place, never removed here; not an upload, so a restart that stops it
    asks to start it again, not to upload a zip."""
    started = time.monotonic()
    gate_cohort_folder(ctx, cohort_dir)
    return _train_each(ctx, Path(cohort_dir), runs, epochs, image_encoder_kind, body_crop, device, started, ehr_encoder)


def _train_each(ctx: JobContext, cohort_dir: Path, runs: dict[str, tuple[str, str]], epochs: int,
                image_encoder_kind: str, body_crop: bool, device: str, started: float,
                ehr_encoder: str = "auto") -> dict:
    """:func:`train_every_job`'s strategies, one after another, on the unpacked ``cohort_dir``."""
    from core.errors import InputError
    from core.evaluation import evaluate_model, model_fingerprint, paired_fusion_gain, save_metrics

    models: dict[str, dict] = {}
    notes: list[str] = []
    first_error: InputError | None = None
    seconds: dict[int, float] = {}  # each trained strategy's own time, for the bar (see bar_span)
    waited, hi = [0.0], 0.1
    share = encoder_share(_count_subjects(cohort_dir))
    first_ct = first_ct_strategy(list(runs))

    def make_way() -> None:  # heavy jobs that other users queued meanwhile run first; their time is not ours
        t = time.monotonic()
        ctx.yield_turn()
        waited[0] += time.monotonic() - t

    for i, (fusion, (out, label)) in enumerate(runs.items()):
        if i:  # between two strategies
            make_way()
        t_start, waited_before = time.monotonic(), waited[0]
        lo, hi = bar_span(i, list(runs), seconds, t_start - started - waited[0], hi, share)

        def progress(f: float, m: str, lo: float = lo, step: float = hi - lo, fusion: str = fusion, i: int = i) -> None:
            ctx.progress(lo + step * f, f"{fusion} ({i + 1} of {len(runs)}): {m}")

        ev = EVAL_SHARE / (share if i == first_ct else 1.0)  # the CT strategy's evaluation costs what a fusion's does
        try:
            trained = _train_one(lambda f, m, ev=ev: progress((1 - ev) * f, m), str(cohort_dir), fusion, out, epochs, label=label,
                                 span=(0.0, 1.0), image_encoder_kind=image_encoder_kind, body_crop=body_crop,
                                 ehr_encoder=ehr_encoder,
                                 between=make_way)  # and within a strategy: in the lesion pretext, between members
            result = evaluate_model(Path(out), cohort_dir, split="test", device=device, keep_risk=True,
                                    progress=lambda f, m, ev=ev: progress(1 - ev + ev * f, f"evaluating: {m}"))
        except InputError as err:
            first_error = first_error or err
            models[label] = {"error": " ".join(str(err).replace(f"{cohort_dir}/", "").split())}
            continue
        save_metrics(Path(out) / "test_metrics.json", result, model_fingerprint(out))
        models[label] = result
        seconds[i] = time.monotonic() - t_start - (waited[0] - waited_before)
        notes += [n for n in trained["data_notes"] if n not in notes]
    if first_error is not None and all("error" in m for m in models.values()):
        raise first_error  # train_every_job removes the cohort: no model was trained on it
    ctx.progress(1.0, "done")
    return {"cohort_dir": str(cohort_dir), "models": models, "data_notes": notes,
            "paired": paired_fusion_gain(models, cohort_dir)}


def evaluate_job(ctx: JobContext, models: dict[str, tuple[str, str, str | None, float]], device: str = "cpu",
                 subgroup: str | None = None) -> dict:
    """Evaluate each ``name -> (model_dir, cohort_dir, saved_path or None, stamp)`` on its test split (``subgroup``: per
    group of that column too, ``evaluate_model``'s ``subgroups``).

    A model with a ``saved_path`` (a demo model) reads and keeps its evaluation there, tagged with ``stamp`` (see
    ``core.evaluation.save_metrics``), so a later comparison reads it instead of computing it again (one kept without
    each patient's risk, from before the paired comparison, is computed again). Returns ``{name: metrics}`` and, for
    models that could not be evaluated, ``{name: {"error": text}}``. Between two evaluations it makes way
    (``ctx.yield_turn``) for heavy jobs queued meanwhile."""
    from core.errors import InputError
    from core.evaluation import evaluate_model, read_saved_metrics, save_metrics

    out: dict[str, Any] = {}
    computed = 0
    for i, (name, (model_dir, cohort_dir, saved, stamp)) in enumerate(models.items()):
        ctx.progress(i / max(len(models), 1), f"evaluating {name} ({i + 1} of {len(models)})")
        found = read_saved_metrics(Path(saved), stamp, with_risk=True) if saved else None
        if found is not None:
            out[name] = found
            continue
        if computed:  # between two evaluations, heavy jobs queued meanwhile run first
            ctx.yield_turn()
        computed += 1
        try:
            result = evaluate_model(Path(model_dir), Path(cohort_dir), split="test", device=device, keep_risk=True,
                                    subgroup=subgroup, progress=lambda f, m, i=i: ctx.progress(
                                        (i + f) / len(models), f"{name}: {m}" if len(models) > 1 else m))
        except (InputError, OSError) as err:
            out[name] = {"error": " ".join(str(err).split())}
            continue
        if saved:
            save_metrics(Path(saved), result, stamp)
        out[name] = result
    ctx.progress(1.0, "done")
    return out


MODEL_BYTES = 5 * 1024**2  # what a model takes when no shipped demo model of its strategy tells (those: 2.8-5.2 MB)


def expected_model_bytes(fusions: list[str] | tuple[str, ...], has_ct: bool = True, has_ehr: bool = True) -> int:
    """What trained models of ``fusions`` will take on disk, for the quota check before a training starts: the size
    of the shipped demo model of each strategy (``MODEL_BYTES`` for one without). A strategy that the cohort cannot
    train (``has_ct``, ``has_ehr``: what it holds) writes no model and counts nothing.

    >>> expected_model_bytes(["ehr_only", "image_only", "concat"], has_ct=False) == expected_model_bytes(["ehr_only"])
    True
    """
    from core.app.paths import ASSETS
    from core.app.workspace import folder_bytes

    shipped = ASSETS / "demo_models"
    trainable = [f for f in fusions if (has_ct or f == "ehr_only") and (has_ehr or f == "image_only")]
    return sum(folder_bytes(shipped / f) if (shipped / f / "config.json").is_file() else MODEL_BYTES for f in trainable)


def trained_models(models_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Models trained in the app under ``models_dir``: ``label -> (model folder, cohort folder)``, newest first."""
    found: list[tuple[float, str, Path, Path]] = []
    if not models_dir.is_dir():
        return {}
    for marker in models_dir.glob(f"*/{TRAINED_MARKER}"):
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        cohort = recorded_cohort(str(info.get("cohort_dir", "")), models_dir)  # in a moved data folder too
        if (marker.parent / "config.json").is_file() and cohort.is_dir():
            found.append((marker.stat().st_mtime, str(info.get("label") or marker.parent.name), marker.parent, cohort))
    return {label: (model, cohort) for _, label, model, cohort in sorted(found, reverse=True)}


def refuse_while_read(jobs: Iterable[Any], folder: Path, field: str, name: str) -> None:
    """Raise an ``InputError`` (``field``: ``name``) naming the first active job of ``jobs`` (``core.jobs.Job``, or
    ``core.app.job_journal.Elsewhere``: one another replica runs) one of whose arguments names ``folder`` or a path
    under it: a model or cohort folder is not deleted under a job that reads it (its evaluation, a training on that
    cohort), which would then fail half-way."""
    from core.errors import InputError
    from core.job_pickle import paths_in

    root = os.path.realpath(folder)
    for job in jobs:
        if job.active and any(p == root or p.startswith(root + os.sep) for p in paths_in((job.args, job.kwargs))):
            raise InputError(field, name, f'is read by your job "{job.title}" ({job.state})',
                             "wait for it to end, or cancel it (its Cancel button, or the sidebar's job list), then delete again")


def delete_trained_model(models_dir: Path, model_dir: Path, cohorts_dir: Path, jobs: Iterable[Any] = ()) -> list[Path]:
    """Remove a model trained in the app (a folder of ``models_dir`` with its ``TRAINED_MARKER``) and, when none of
    the other models there was trained on it, its kept cohort (a folder of ``cohorts_dir``; not a cohort built from
    MEDS, which stays in the user's list of them, ``core.app.meds_cohorts``); return what was removed. Anything else
    (a demo model, a folder elsewhere, a link) is refused with an ``InputError``, and so is a model or cohort that one
    of the user's active ``jobs`` reads (:func:`refuse_while_read`)."""
    from core.errors import InputError

    target = Path(model_dir)
    if target.is_symlink() or target.resolve().parent != Path(models_dir).resolve() \
            or not (target / TRAINED_MARKER).is_file():
        raise InputError("model", target.name, "is not a model you trained here", "pick one of your own models")
    try:
        info = json.loads((target / TRAINED_MARKER).read_text())
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    cohort, name = recorded_cohort(str(info.get("cohort_dir", "")), Path(models_dir)), str(info.get("label") or target.name)
    in_use = {c.resolve() for n, c in trained_models(Path(models_dir)).values() if n.resolve() != target.resolve()}
    drop_cohort = bool(str(cohort) and cohort.is_dir() and not cohort.is_symlink() and cohort.resolve() not in in_use
                       and cohort.resolve().parent == Path(cohorts_dir).resolve() and not is_built_cohort(cohort))
    jobs = list(jobs)
    refuse_while_read(jobs, target, "model", name)
    if drop_cohort:
        refuse_while_read(jobs, cohort, "model", f"{name} (its cohort)")
    shutil.rmtree(target)
    removed = [target]
    if drop_cohort:
        shutil.rmtree(cohort)
        removed.append(cohort)
    return removed


UPLOAD_JOBS = (train_uploaded_job, train_every_job, validate_uploaded_job)  # the jobs that unpack an uploaded zip
