"""The signed-in user's saved cases for the pages (core.app.cases): the case picker, a case's cohort and CT.

Cases live on disk in the user's own folder, so they survive page switches, reloads and server restarts,
and another user never sees them: every lookup goes through ``core.app.cases`` with this session's user
id (the provider's ``sub``, or "local" without sign-in). What is loaded from a case (its CT, its
one-subject cohort) is kept in the per-session memo, keyed by the case's version, so adding a timeline
to a case is seen at once.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core import cohort as cohorts
from core.app import cases as saved
from core.app import workspace as workspaces
from core.errors import InputError
from pages import _chrome as chrome
from pages import _model_views as views
from pages import _session as session
from pages import _state as K
from pages._memo import forget, memo


def user() -> str:
    """The user whose folder this session reads and writes (OIDC ``sub`` or "local")."""
    workspaces.start_up()
    return session.user_id()


def case_list() -> list[saved.CaseInfo]:
    """This user's saved cases, newest first."""
    return list(reversed(saved.list_cases(user())))


def user_cases() -> dict[tuple[str, str], str]:
    """{(source, case id): label} of this user's saved cases, newest first, for the case pickers."""
    return {(views.UPLOADED, c.case_id): f"Uploaded: {c.describe()}" for c in case_list()}


def case_info(case_id: str) -> saved.CaseInfo | None:
    """One of this user's cases, or None (deleted, or not theirs)."""
    try:
        return saved.get_case(user(), case_id)
    except InputError:
        return None


def _load(info: saved.CaseInfo) -> dict[str, Any]:
    volume = saved.load_case_volume(info, user())
    events = saved.case_events(info)
    features = saved.case_features(info)
    cohort = cohorts.uploaded_case_cohort(info.path, volume=volume, events=events, features=features,
                                          index_time=saved.case_index_time(info), subject_id=info.case_id)
    return {"cohort": cohort, "volume": volume, "events": events, "features": features, "label": info.label,
            "number": info.number, "version": info.version,
            "study_path": str(info.study_path) if info.study_path else None, "info": info}


def uploaded_case(case_id: str | None = None) -> dict[str, Any] | None:
    """A saved case as {"cohort", "volume", "events", "features", "label", "number", "version", "study_path", "info"}.

    Without ``case_id``: the uploaded case under review (the Case review picker's value), if any. None when
    the case is not one of this user's.
    """
    if case_id is None:
        chosen = chrome.viewer_setting(K.CASE, None)
        if not chosen or chosen[0] != views.UPLOADED:
            return None
        case_id = str(chosen[1])
    info = case_info(case_id)
    if info is None:
        return None
    return memo(("saved-case", info.case_id, info.version), lambda: _load(info))


def open_in_review(case_id: str) -> None:
    """Make ``case_id`` the case under review (the pages' memo of older versions is dropped)."""
    for prefix in ("inputs", "prediction", "saved-case"):
        forget(prefix)
    st.session_state[K.CASE] = (views.UPLOADED, case_id)
    saved_viewer = dict(st.session_state.get(K.SAVED_VIEWER, {}))
    saved_viewer[K.CASE] = (views.UPLOADED, case_id)
    st.session_state[K.SAVED_VIEWER] = saved_viewer


def read_series(case_id: str, series: str) -> saved.CaseInfo:
    """Read another series of this user's saved study from now on (the case's version is raised, so every memo of
    the case is rebuilt)."""
    return saved.set_series(user(), case_id, series)
