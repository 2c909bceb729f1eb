"""A reload (F5) or a bookmark of a tab opens the same review: case, model, horizon and viewer (not a page).

The address carries an opaque token only (``?review=<token>``); what it stands for is kept in the user's own folder
by ``core.app.kept_reviews``. The first run of a browser session (:func:`restore`) reads the review its address names
and hands it to the ways this app already carries settings across pages (the sidebar's kept values, Case review's
saved viewer settings, the session's case numbers, the worst-ordered list being stepped through), so the pages check it as they check any value: a case or a model
that no longer exists falls back to the default, and the page says so. The session goes on under the same token until
its review first changes, then under a token of its own (:func:`remember`): opening a bookmark writes nothing, and two
tabs opened from one address go their own ways.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.app import kept_reviews
from pages import _session as session
from pages import _state as K

PARAM = "review"  # the address's query parameter
POSITION = (K.SLICE_CASE, K.CORONAL_ROW, K.SAGITTAL_COL)  # the viewer's crosshair, kept beside its settings
NUMBERS = "case_numbers"  # the review's key of the session's case numbers (core.app.kept_reviews.KINDS)


def restore() -> None:
    """Once per browser session, before the sidebar is drawn: the review named by the address, if this user has it."""
    if K.REVIEW_TOKEN in st.session_state:
        return
    st.session_state[K.REVIEW_TOKEN] = kept_reviews.new_token()
    asked = st.query_params.get(PARAM)
    if not asked:
        return
    kept = kept_reviews.load(session.user_id(), asked)
    if kept is None:
        st.toast("This address's review token is not valid: showing the default case and model." if not
                 kept_reviews.is_token(asked) else "This address's review is no longer kept (or belongs to another "
                 "sign-in): showing the default case and model.", icon=":material/info:")
        return
    from core.io.windows import WINDOWS

    if kept.get(K.WINDOW) not in WINDOWS:  # a window preset this version does not have: the viewer's default
        kept.pop(K.WINDOW, None)
    sidebar = {key: kept[key] for key in (K.MODEL_NAME, K.HORIZON) if key in kept}
    st.session_state[K.SIDEBAR_KEPT] = {**sidebar, **st.session_state.get(K.SIDEBAR_KEPT, {})}
    viewer = {key: kept[key] for key in K.VIEWER_KEYS if key in kept}
    st.session_state[K.SAVED_VIEWER] = {**viewer, **st.session_state.get(K.SAVED_VIEWER, {})}
    if all(key in kept for key in POSITION):
        for key in POSITION:
            st.session_state.setdefault(key, kept[key])
    numbers = st.session_state.setdefault(K.CASE_NUMBERS, {})
    for source, subject_id, number in kept.get(NUMBERS, []):  # "Demo case 2" stays case 2 in this tab's exports
        if number not in numbers.values():
            numbers.setdefault((source, subject_id), number)
    if K.WORST_LIST in kept:  # stepping through a model's worst-ordered patients: the strip stays
        st.session_state.setdefault(K.WORST_LIST, kept[K.WORST_LIST])
    st.session_state[K.REVIEW_TOKEN] = asked  # until the review first changes (remember)
    st.session_state[K.REVIEW_SHARED] = True
    st.session_state[K.REVIEW_KEPT] = kept


def current() -> dict[str, Any]:
    """This session's review as it stands: the sidebar's and the viewer's values, live ones over saved ones."""
    state: dict[str, Any] = {**st.session_state.get(K.SIDEBAR_KEPT, {}), **st.session_state.get(K.SAVED_VIEWER, {})}
    for key in (K.MODEL_NAME, K.HORIZON, *K.VIEWER_KEYS, *POSITION, K.WORST_LIST):
        if key in st.session_state:
            state[key] = st.session_state[key]
    if st.session_state.get(K.CASE_NUMBERS):
        state[NUMBERS] = st.session_state[K.CASE_NUMBERS]
    return kept_reviews.clean(state)


def remember() -> None:
    """Keep this session's review under its token when it changed, and put the token in the address.

    Called by every run of app.py (a page switch clears the address's parameters) and whenever Case review saves its
    viewer settings (the viewer's own reruns do not run app.py)."""
    token = st.session_state.get(K.REVIEW_TOKEN)
    if token is None:  # before restore(): the sign-in screen, the demo build
        return
    state = current()
    if state != st.session_state.get(K.REVIEW_KEPT):
        if st.session_state.pop(K.REVIEW_SHARED, False):  # opened from an address: its review stays as it was
            token = st.session_state[K.REVIEW_TOKEN] = kept_reviews.new_token()
        kept_reviews.save(session.user_id(), token, state)
        st.session_state[K.REVIEW_KEPT] = state
    if st.query_params.get(PARAM) != token:
        st.query_params[PARAM] = token
