"""Cohort & models > Cohort from MEDS: a MEDS file and an ACES task built into a cohort folder by a background job,
and the user's built cohorts to reopen or delete (not a page itself)."""

from __future__ import annotations

import streamlit as st

from core.app import meds_cohorts, paths, workspace
from core.errors import InputError
from pages import _chrome as chrome
from pages import _jobs
from pages import _session as session
from pages import _state as K


def build_section() -> dict | None:
    """The MEDS uploader, the task picker and "Build the cohort", then the user's built cohorts (:func:`pick`); the
    chosen one (``{"dir", "summary"}``), else None.

    The build is a heavy job (``core.app.meds_cohorts.meds_cohort_job``: its own process, a progress bar with
    Cancel): a hospital's extract takes minutes and gigabytes (45.8 M events: 86 s, 12 GB), which the server that
    every user shares must not hold, nor block this page for. The cohort counts in the user's disk quota."""
    tasks = {p.name: p for p in sorted((paths.ASSETS / "tasks").glob("*.yaml"))}
    c1, c2 = st.columns(2)
    meds_file = c1.file_uploader(f"MEDS events (parquet, CSV or .xlsx; up to {chrome.upload_mb()} MB)",
                                 type=["parquet", "csv", "xlsx"], key="meds_file")
    task_choice = c2.selectbox("Task", [*tasks, "upload a task file"], key="meds_task")
    task_file = c2.file_uploader("Task (ACES YAML)", type=["yaml", "yml"], key="meds_task_file") \
        if task_choice == "upload a task file" else None
    studies = c1.file_uploader(f"CT studies (optional; a zip up to {chrome.upload_mb()} MB): one study per patient, "
                               "named by subject id",
                               type=["zip"], key="meds_studies",
                               help="`<id>.nii.gz`, `<id>.nii`, `<id>.zip` (a DICOM series), `<id>.dcm` or a folder "
                                    "`<id>/` of DICOM files, where `<id>` is the patient's subject_id in the MEDS "
                                    "file; studies under other names (accession numbers) with a `studies.csv` beside "
                                    "them, columns `subject_id,study` (the study's file or folder name). With them the "
                                    "cohort trains every fusion strategy, not only ehr_only; each study passes the PHI "
                                    "check first. A larger set: `python -m core cohort "
                                    "--meds ... --task ... --studies FOLDER --out ...` on the server.")
    pending = st.session_state.get(K.MEDS_JOB)
    job = _jobs.find(pending) if pending else None
    if job is None:  # none, or forgotten by the queue an hour after it ended
        st.session_state.pop(K.MEDS_JOB, None)
    if meds_file is not None and st.button("Build the cohort", type="primary", key="meds_build",
                                           disabled=job is not None and job.active):
        with chrome.core_errors(stop=False, what="Cohort not built: "):
            ws = session.workspace()
            src = ws.fresh_dir("meds") / ("events." + meds_file.name.rsplit(".", 1)[-1].lower())
            src.write_bytes(meds_file.getvalue())
            task = tasks.get(task_choice)
            if task is None:
                if task_file is None:
                    raise InputError("task", "no file", "was uploaded", "upload an ACES task YAML or pick a bundled task")
                task = src.parent / "task.yaml"
                task.write_bytes(task_file.getvalue())
            zipped = None
            if studies is not None:
                zipped = src.parent / "studies.zip"
                zipped.write_bytes(studies.getvalue())
            user = _jobs.owner()
            workspace.check_quota(user, 0)  # a user already over the quota is told now, not after a queue
            out = meds_cohorts.new_folder(workspace.private_dir(workspace.user_root(user) / "cohorts"))
            label = task.stem if task_choice in tasks else "uploaded"  # the audit log takes labels the code chose
            job = _jobs.submit_audited([("upload", "meds_cohort", {"task": label, "studies": zipped is not None})],
                                       f"Cohort from MEDS ({task_choice})", meds_cohorts.meds_cohort_job, str(src),
                                       str(task), str(out), user=user, base=str(paths.data_dir()),
                                       studies_zip=str(zipped) if zipped else None, key=f"meds:{ws.path.name}",
                                       heavy=True, fresh=True)
            if job is not None:
                st.session_state[K.MEDS_JOB] = job.key
        if job is not None:
            st.rerun()  # once more, so that the sidebar's job list (drawn before this button) counts it
    ended = _jobs.follow(job)
    if ended is not None:
        if ended:
            st.session_state[K.MEDS_COHORT] = job.result["out"]  # shown first in the list below
            st.session_state.pop(PICK, None)
        st.session_state.pop(K.MEDS_JOB, None)
    return pick()


PICK = "meds_pick"


def pick() -> dict | None:
    """The user's cohorts built from MEDS (newest first, the one just built chosen), kept across reloads and
    sessions until deleted here; the chosen one as ``{"dir", "summary"}``, or None when there is none."""
    user_dir = workspace.user_root(_jobs.owner())
    cohorts_dir, models_dir = user_dir / "cohorts", workspace.user_models_dir(_jobs.owner())
    built = {str(b.path): b for b in meds_cohorts.built_cohorts(cohorts_dir, models_dir)}
    if not built:
        return None
    if st.session_state.get(PICK) not in built:
        st.session_state[PICK] = st.session_state.get(K.MEDS_COHORT) if st.session_state.get(K.MEDS_COHORT) in built \
            else next(iter(built))
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    chosen = built[c1.selectbox(f"Your cohorts built from MEDS ({len(built)})", list(built), key=PICK,
                                format_func=lambda d: f"{built[d].label} · {workspace.human_bytes(built[d].n_bytes)}",
                                help="Kept in your folder (they count in your disk quota) until you delete them.")]
    with c2.popover("Delete", icon=":material/delete:", width="stretch"):
        if chosen.models:
            st.write(f"Kept while your model{'s' if len(chosen.models) > 1 else ''} {', '.join(chosen.models)} "
                     "use it: delete those first (Selected model > Delete this model).")
        else:
            st.write(f"The cohort built {meds_cohorts.made_at(chosen.path.name)} "
                     f"({workspace.human_bytes(chosen.n_bytes)}) is removed from your folder. This cannot be undone.")
            if st.button("Delete", type="primary", key="meds_delete"):
                with chrome.core_errors(stop=False, what="Cohort not deleted: "):
                    meds_cohorts.delete_built(cohorts_dir, chosen.path, models_dir, _jobs.readers())
                    st.session_state.pop(PICK, None)
                    st.toast("Deleted the cohort.")
                    st.rerun()
    return {"dir": str(chosen.path), "summary": chosen.summary}
