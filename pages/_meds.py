"""Cohort & models > Cohort from MEDS: a MEDS file and an ACES task built into a cohort folder by a background job
(not a page itself)."""

from __future__ import annotations

import secrets
import time

import streamlit as st

from core.app import paths, workspace
from core.errors import InputError
from pages import _chrome as chrome
from pages import _jobs
from pages import _session as session
from pages import _state as K


def build_section() -> dict | None:
    """The MEDS uploader, the task picker and "Build the cohort"; the built cohort (``{"dir", "summary"}``, kept in
    the session) once there is one, else None.

    The build is a heavy job (``core.app.background.meds_cohort_job``: its own process, a progress bar with Cancel):
    a hospital's extract takes minutes and gigabytes (45.8 M events: 86 s, 12 GB), which the server that every user
    shares must not hold, nor block this page for."""
    from core.app.background import meds_cohort_job

    tasks = {p.name: p for p in sorted((paths.ASSETS / "tasks").glob("*.yaml"))}
    c1, c2 = st.columns(2)
    meds_file = c1.file_uploader(f"MEDS events (parquet, CSV or .xlsx; up to {chrome.upload_mb()} MB)",
                                 type=["parquet", "csv", "xlsx"], key="meds_file")
    task_choice = c2.selectbox("Task", [*tasks, "upload a task file"], key="meds_task")
    task_file = c2.file_uploader("Task (ACES YAML)", type=["yaml", "yml"], key="meds_task_file") \
        if task_choice == "upload a task file" else None
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
            user_cohorts = workspace.user_root(_jobs.owner()) / "cohorts"
            user_cohorts.mkdir(mode=0o700, exist_ok=True)
            out = user_cohorts / f"{time.strftime('meds-%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"  # two tabs, one second
            label = task.stem if task_choice in tasks else "uploaded"  # the audit log takes labels the code chose
            job = _jobs.submit_audited([("upload", "meds_cohort", {"task": label})],
                                       f"Cohort from MEDS ({task_choice})", meds_cohort_job, str(src), str(task),
                                       str(out), key=f"meds:{ws.path.name}", heavy=True, fresh=True)
            if job is not None:
                st.session_state[K.MEDS_JOB] = job.key
        if job is not None:
            st.rerun()  # once more, so that the sidebar's job list (drawn before this button) counts it
    ended = _jobs.follow(job)
    if ended is not None:
        if ended:
            st.session_state[K.MEDS_COHORT] = {"dir": job.result["out"], "summary": job.result}
        st.session_state.pop(K.MEDS_JOB, None)
    return st.session_state.get(K.MEDS_COHORT)
