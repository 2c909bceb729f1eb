"""Who uses this session and where their files go: sign-in, the audit log, the session's scratch workspace and the
user's export folders (not a page; app.py lists the pages).

Both the page chrome (the sidebar's sign-in line, app.py's login record) and the model and case views (a user's
trained models and prediction cache live in their folder) need the user, so this module imports neither.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from core.app import audit as audit_log
from core.app import workspace as workspaces
from core.errors import InputError
from pages import _state as K

LOG = logging.getLogger("ctehr.app")


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


def signed_out_elsewhere() -> bool:
    """Whether this session's sign-in is older than the user's last sign-out, in another tab or window, or this
    one's cookie copied before it (``core.app.signouts``): the session is then signed out too."""
    from core.app import signouts

    iat = st.user.get("iat")
    return signouts.signed_out_since(user_id(), float(iat) if isinstance(iat, (int, float)) else None)


_LOGINS_SEEN: set[tuple[str, float]] = set()  # (sub, the ID token's iat) this server has audited: one line per sign-in
_LOGINS_LOCK = threading.Lock()


def audit_login() -> None:
    """Record this user's sign-in in the audit log once per sign-in (the ID token's ``iat``), not once per browser
    session: a reload or a new tab of the same sign-in opens a new session with the same token."""
    if st.session_state.get(K.LOGIN_AUDITED):
        return
    iat = st.user.get("iat")
    key = (user_id(), float(iat)) if isinstance(iat, (int, float)) else None
    with _LOGINS_LOCK:
        seen = key is not None and key in _LOGINS_SEEN
    if not seen:
        audit("login", "session")  # stops the session when the log cannot be written
        if key is not None:
            with _LOGINS_LOCK:
                _LOGINS_SEEN.add(key)
    st.session_state[K.LOGIN_AUDITED] = True


#: pages asked for by a signed-out browser: sign-in ends on the app's root address (Streamlit's OpenID Connect
#: callback), so the page is kept here, by browser, and opened after the sign-in (at most ``ASKED_TTL_S`` later)
_ASKED: dict[str, tuple[float, str]] = {}
ASKED_TTL_S = 900.0
XSRF_COOKIE = "_streamlit_xsrf"


def _browser_key() -> str | None:
    """A key of this browser that survives the sign-in's redirects: the SHA-256 of its XSRF token (Streamlit's
    ``_streamlit_xsrf`` cookie, format ``2|mask|masked token|time``; the token is unmasked, since the mask changes
    whenever the cookie is set again). None without the cookie (XSRF protection off)."""
    import hashlib

    raw = st.context.cookies.get(XSRF_COOKIE)
    if not isinstance(raw, str) or not raw:  # (AppTest's context has no real cookies)
        return None
    parts = raw.split("|")
    try:
        token = bytes(a ^ b for a, b in zip(bytes.fromhex(parts[1]), bytes.fromhex(parts[2]))) \
            if parts[0] == "2" and len(parts) >= 3 else raw.encode("utf-8")
    except ValueError:
        token = raw.encode("utf-8")
    return hashlib.sha256(token).hexdigest()


def remember_asked_page(url_path: str) -> None:
    """A signed-out visitor opened ``url_path`` (a page of app.py's navigation; "" for the first page)."""
    import time

    key = _browser_key()
    if key is None:
        return
    with _LOGINS_LOCK:
        for k in [k for k, (t, _) in _ASKED.items() if time.time() - t > ASKED_TTL_S]:
            del _ASKED[k]
        if url_path:
            _ASKED[key] = (time.time(), url_path)
        else:
            _ASKED.pop(key, None)


def asked_page() -> str | None:
    """The page this browser asked for before it signed in (once; None when none, or asked too long ago)."""
    import time

    key = _browser_key()
    with _LOGINS_LOCK:
        found = _ASKED.pop(key, None) if key is not None else None
    return found[1] if found is not None and time.time() - found[0] <= ASKED_TTL_S else None


def sign_out() -> None:
    """Sign this user out everywhere: audited, recorded for every session (``core.app.signouts``), then
    ``st.logout``; the script stops here, so nothing after it runs without a signed-in user."""
    from core.app import signouts

    audit("logout", "session")
    try:
        signouts.record_sign_out(user_id())
    except OSError as err:  # this tab still signs out; the others stay signed in until their cookie ends
        LOG.error("sign-out not recorded for the other sessions: %s", err)
    st.logout()
    st.stop()


def audit(action: str, target: str, *, once: bool = False, patient: str | None = None, **details: Any) -> None:
    """Record ``action`` on ``target`` in the audit log as this session's user (see core.app.audit).

    ``once=True`` records an identical (action, target, details) only the first
    time in this session (a case opened, re-drawn on every slider move). ``patient``: the subject id of a patient of
    the user's cohorts, recorded as its keyed pseudonym (``core.app.audit.patient_ref``), never as itself. When the
    log cannot be written the action is stopped: nothing happens unaudited.
    """
    key = (action, target, patient, tuple(sorted(details.items())))
    done: set = st.session_state.setdefault(K.AUDITED, set())
    if once and key in done:
        return
    try:
        if patient is not None:
            details["patient"] = audit_log.patient_ref(patient)
        audit_log.record(user_id(), action, target, **details)
    except (OSError, InputError) as exc:  # InputError: the pseudonym key damaged (core.app.audit.patient_ref)
        LOG.error("audit log not written: %s", exc)
        st.error(f"The audit log could not be written ({type(exc).__name__}), so this was not done; "
                 "fix: ask the administrator to check the data folder's audit/ directory", icon=":material/error:")
        st.stop()
    done.add(key)


# ------------------------------------------------------- per-session state


def exports_dir(kind: str) -> Path:
    """A fresh folder for one kind of export (figure, report, dicom, nifti) of this session, in this user's
    exports (their quota): apart from their other sessions' exports, deleted when this session ends."""
    user, ws = user_id(), workspace()
    try:
        workspaces.check_quota(user, 0)  # refuse when the user is already over their quota ...
    except InputError:
        if not ws.drop_other_exports(user):  # ... after the files their other sessions prepared gave way
            raise
        workspaces.check_quota(user, 0)
    return ws.exports_dir(user, kind)


def workspace() -> workspaces.SessionWorkspace:
    """This session's private scratch folder (deleted when the session ends, or by :func:`session_sweep` once a
    closed tab's session cannot come back; a killed server's swept at start-up).

    Saved cases are not kept here but in the user's own folder (pages/_cases.py, core.app.cases)."""
    ws = st.session_state.get(K.WORKSPACE)
    if ws is None or not ws.alive:
        workspaces.start_up()
        ws = workspaces.new_session_workspace()
        st.session_state[K.WORKSPACE] = ws
        sweep = session_sweep()
        if sweep is not None:
            from streamlit.runtime.scriptrunner import get_script_run_ctx

            run = get_script_run_ctx()
            if run is not None:
                sweep.register(run.session_id, ws)
    ws.touch()
    return ws


def mark_run() -> None:
    """A page run of this session: its workspace, when it has one, counts the use (``SessionWorkspace.touch``), so
    the closed-session sweep does not take a session that reconnected between two of its looks for one gone since."""
    ws = st.session_state.get(K.WORKSPACE)
    if ws is not None and ws.alive:
        ws.touch()


_SWEEP: Any = None  # this server's core.app.session_sweep.SessionSweep, made with its thread on first use
_SWEEP_LOCK = threading.Lock()


def session_sweep() -> Any:
    """This server's sweep of closed sessions' workspaces (``core.app.session_sweep``): a daemon thread checks every
    ``min(30 s, TTL / 2)`` which sessions are still connected, and deletes the scratch and exports of those gone for
    longer than Streamlit's ``server.disconnectedSessionTTL`` (after which it cannot resume them) plus
    ``min(10 s, TTL)``. None outside a real server (AppTest's runtime is a stand-in)."""
    import time

    from streamlit import runtime
    from streamlit.runtime import Runtime

    global _SWEEP
    if not runtime.exists() or not isinstance(runtime.get_instance(), Runtime):
        return None
    with _SWEEP_LOCK:
        if _SWEEP is None:
            from core.app.session_sweep import SessionSweep

            ttl = float(st.get_option("server.disconnectedSessionTTL"))
            sweep = _SWEEP = SessionSweep(ttl, grace_s=min(10.0, ttl))
            every, server = min(30.0, max(ttl / 2, 1.0)), runtime.get_instance()

            def loop() -> None:
                while True:
                    time.sleep(every)
                    try:
                        for path in sweep.sweep(server.is_active_session):
                            LOG.info("closed session's scratch and exports removed: %s", path.name)
                    except OSError as err:  # a folder that could not be read: the next sweep tries again
                        LOG.warning("session sweep: %s", err)

            threading.Thread(target=loop, name="ctehr-session-sweep", daemon=True).start()
    return _SWEEP
