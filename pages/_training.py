"""Cohort & models' trainings: the form's image encoders, a training queued as the user's background job (one
strategy or every one, on an uploaded cohort zip or a cohort folder built from MEDS), and its status drawn in the tab
it was started from."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import runtime
from core.app import workspace
from core.models import FUSIONS
from pages import _chrome as chrome
from pages import _jobs
from pages import _metric_views as metric_views
from pages import _state as K
from pages._metric_views import ci_text

TRAIN_KEY = "train"
MEDS_TRAIN_KEY = TRAIN_KEY + "meds:"  # a training started on the MEDS tab: its status is drawn there, not twice
EVERY = f"all {len(FUSIONS)}, compared"  # the training form's choice that trains every strategy
KIND_NAMES = {"detector": "Whole CT: lesion detector", "2d": "Lung-focused (fast)"}  # core.train image kinds


def image_kinds() -> dict[str, str]:
    """The training form's encoders: "auto" (this site's default for new models, named) first, then the other one;
    with a bad CTEHR_IMAGE_KIND_DEFAULT, its one-line error and the two encoders by name."""
    from core.models import default_image_kind  # names only: no torch on this page's render

    with chrome.core_errors(stop=False, what="Image encoder setting: "):
        default = default_image_kind()
        return {"auto": f"{KIND_NAMES.get(default, default)} (default)", **{k: v for k, v in KIND_NAMES.items() if k != default}}
    return dict(KIND_NAMES)


def start_training(cdir: Path | None, fusion: str, epochs: int, *, upload: bytes | None = None,
                   image_encoder_kind: str = "auto", body_crop: bool = False, ehr_encoder: str = "auto",
                   place: str = "train") -> None:
    """Queue training of ``fusion`` as this user's background job, saved in their models folder: on the cohort
    folder ``cdir``, or on an uploaded cohort zip (``upload``), which the job gates for PHI in memory first."""
    import secrets
    import time

    from core.app.background import expected_model_bytes, train_job, train_uploaded_job

    user, reads = _jobs.owner(), (True, True)  # reads: the cohort holds CT, EHR (checked now, not in a job)
    if upload is None and cdir is not None:  # a cohort folder (built from MEDS): CT only when it names studies
        import pandas as pd

        reads = ("study" in pd.read_csv(Path(cdir) / "cohort.csv", nrows=0).columns, True)
    if upload is not None:
        reads = workspace.check_cohort_zip(upload, fusion=None if fusion == EVERY else fusion, for_training=True)
    workspace.check_quota(user, 2 * len(upload or b"") + expected_model_bytes(FUSIONS if fusion == EVERY else [fusion], *reads))
    stamp_text, when = time.strftime("%Y%m%d-%H%M%S"), time.strftime("%d %b %H:%M")
    tag = secrets.token_hex(8)  # marks the cohort an upload unpacks: a restart keeps it to start this again
    job_key = (MEDS_TRAIN_KEY if place == "meds" else TRAIN_KEY) + stamp_text
    runs = {f: (str(workspace.user_models_dir(user) / f"{f}-{stamp_text}"), f"{f} (your cohort, {when})")
            for f in (FUSIONS if fusion == EVERY else [fusion])}  # model folder, label in the sidebar
    if fusion == EVERY:
        from core.app.background import train_every_job, train_every_on_folder_job

        what = (train_every_job, upload, str(workspace.user_root(user) / "cohorts")) if upload is not None \
            else (train_every_on_folder_job, str(cdir))  # an upload, or a cohort folder the user keeps (MEDS)
        job = _jobs.submit_audited([("train", f, {"epochs": int(epochs)}) for f in FUSIONS],
                                   f"Training all {len(FUSIONS)} strategies", *what, runs, int(epochs),
                                   image_encoder_kind=image_encoder_kind, body_crop=bool(body_crop),
                                   device=runtime.device_name(), ehr_encoder=ehr_encoder, key=job_key, heavy=True,
                                   **({"tag": tag} if upload is not None else {}))
    elif upload is not None:
        out, label = runs[fusion]
        job = _jobs.submit_audited([("train", fusion, {"epochs": int(epochs)})], f"Training {fusion}",
                                   train_uploaded_job, upload, str(workspace.user_root(user) / "cohorts"), fusion, out,
                                   int(epochs), label=label, image_encoder_kind=image_encoder_kind,
                                   body_crop=bool(body_crop), tag=tag, key=job_key, heavy=True)
    else:
        out, label = runs[fusion]
        job = _jobs.submit_audited([("train", fusion, {"epochs": int(epochs)})], f"Training {fusion}", train_job,
                                   str(cdir), fusion, out, int(epochs), label=label,
                                   image_encoder_kind=image_encoder_kind, body_crop=bool(body_crop),
                                   ehr_encoder=ehr_encoder, key=job_key, heavy=True)
    if job is not None:
        st.session_state[K.TRAIN_JOB] = job.id
        st.rerun()


def training_status(current: str, place: str = "train") -> None:
    """The user's training job: live progress and cancel while it runs, its result when it ended; drawn in the tab
    it was started from (``place``: "train" or "meds"), once per run (two would repeat its widgets' keys);
    ``current``: the model in use, coloured in the comparison of a training of every strategy."""
    from core.jobs import default_queue

    job_id = st.session_state.get(K.TRAIN_JOB)
    job = default_queue().get(job_id, _jobs.owner()) if job_id else _jobs.latest(TRAIN_KEY)  # a page opened anew
    if job is None or str(job.key or "").startswith(MEDS_TRAIN_KEY) != (place == "meds"):
        return
    if job.active:
        _jobs.show(job)
        st.caption("Training runs in the background: you can review cases meanwhile; each model is saved in your "
                   "models folder and appears in the sidebar when it is done.")
    elif not _jobs.outcome(job):  # failed or cancelled: said once
        return
    elif "models" in job.result:  # every strategy, compared on the cohort's test split
        r = job.result
        done = [n for n, m in r["models"].items() if "error" not in m]
        st.success(f"Trained {len(done)} of {len(r['models'])} strategies on your cohort, now in the sidebar's list. "
                   + ("Their test-split metrics:" if len(done) > 1 else
                      f"Test C-index {ci_text(r['models'][done[0]].get('c_index'), r['models'][done[0]].get('c_index_ci'))}."))
        metric_views.show_comparison(r["models"], current, "train_every", "your_cohort_strategies.csv",
                                     paired=r.get("paired"))
        metric_views.data_notes(r)
    else:
        r = job.result
        st.success(f"Trained {r['label']}: test C-index {ci_text(r.get('c_index'), r.get('c_index_ci'))}. "
                   "Pick it in the sidebar to review cases and metrics.")
        metric_views.data_notes(r)
