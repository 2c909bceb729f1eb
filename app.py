"""CT + EHR survival explorer: navigation, sidebar and the one-time demo build. Run with ``streamlit run app.py``.

Every page lives in ``pages/``; :func:`main`, this file's script run, only gates sign-in
(``st.login`` when ``[auth]`` is in secrets.toml) and declares the navigation and the
sidebar (model, device, horizon). ``streamlit run app.py`` finds ``app`` at the bottom
(Streamlit's ASGI ``st.App``) and serves this same file as every session's script; the
server's start imports the first page's modules while the first browser is still
loading (``pages/_server.py``).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages import _preload, _server


#: app.py's navigation: (file, title, icon), the first page the default
PAGES = (("pages/case_review.py", "Case review", ":material/radiology:"),
         ("pages/upload.py", "Upload", ":material/upload_file:"),
         ("pages/cohort_models.py", "Cohort & models", ":material/monitoring:"),
         ("pages/export.py", "Export", ":material/download:"),
         ("pages/about.py", "About", ":material/info:"))


def _sign_in_screen() -> None:
    st.title("CT + EHR survival explorer", anchor=False)
    if st.user.is_logged_in:  # a sign-in older than the user's last sign-out (another tab, an old cookie)
        st.info("You signed out (in this or another window): sign in again to continue.", icon=":material/logout:")
    st.write("Sign in with your hospital account to continue.")
    st.button("Sign in", type="primary", icon=":material/login:", on_click=st.login)
    st.caption("Research use only. Not a medical device.")


def main() -> None:
    """One script run: what ``streamlit run app.py`` executes for each session (and AppTest on app.py)."""
    st.set_page_config(
        page_title="CT + EHR survival explorer",
        page_icon=str(Path(__file__).resolve().parent / "assets" / "icon.svg"),  # a data: URL; a Material icon made the browser ask fonts.gstatic.com
        layout="wide",
        initial_sidebar_state="expanded",
    )
    # before the imports below: the browser loads the first screen's code meanwhile
    _preload.warm_browser()
    # the server imports the first page's modules at its start (pages/_server.py): wait for that rather than
    # import the same modules from two threads at once; a server started without it (AppTest) does not wait
    _server.wait_until_warm()

    from core.app import demo_install, paths
    from core.models import FUSIONS
    from pages import _chrome as chrome
    from pages import _jobs
    from pages import _kept_review as kept_review
    from pages import _session as session
    from pages import _state as K
    from pages._memo import new_run

    chrome.inject_style()
    st.logo(str(paths.ASSETS / "logo.svg"), size="large")

    # Sign-in gate, before anything else (the demo build, the pages): with [auth] in secrets.toml a
    # visitor without a session gets the sign-in screen only; without it the server must listen on
    # loopback only (.streamlit/config.toml: server.address = "127.0.0.1"). See docs/DEPLOYMENT.md.
    if session.auth_configured():
        if session.missing_auth_keys():
            st.error(f"Sign-in is configured but [auth] in secrets.toml lacks {', '.join(session.missing_auth_keys())}; "
                     "fix: complete it as in .streamlit/secrets.example.toml", icon=":material/error:")
            st.stop()
        if not st.user.is_logged_in or session.signed_out_elsewhere():
            st.session_state.pop(K.NAVIGATED, None)
            # the sign-in screen at every page's address (no "Page not found" on a deep link); the page asked for
            # opens after the sign-in
            gate = st.navigation([st.Page(_sign_in_screen, title="Sign in", icon=":material/login:", default=True)]
                                 + [st.Page(_sign_in_screen, title="Sign in", url_path=Path(file).stem)
                                    for file, *_ in PAGES[1:]], position="hidden")
            # a new server runs a deep link as that page alone first, which hands it over to app.py (K.DEEP_LINK)
            session.remember_asked_page(gate.url_path or Path(st.session_state.get(K.DEEP_LINK, "")).stem)
            gate.run()
            st.stop()
        session.audit_login()
        asked = session.asked_page()
        if asked:
            st.session_state[K.DEEP_LINK] = f"pages/{asked}.py"
    elif not session.listens_on_loopback_only():
        st.error(f"No sign-in is configured and server.address is {st.get_option('server.address') or 'unset (every interface)'}; "
                 "fix: set server.address = \"127.0.0.1\" or configure [auth] (docs/DEPLOYMENT.md)", icon=":material/error:")
        st.stop()

    pages = [st.Page(file, title=title, icon=icon, default=file == PAGES[0][0]) for file, title, icon in PAGES]
    ready = demo_install.demo_ready()
    # navigation is declared first, so the first start shows no raw page list; it stays hidden until the demo exists
    current = st.navigation(pages, position="sidebar" if ready else "hidden")
    st.session_state[K.NAVIGATED] = True

    # First start: build the demo cohort and one model per fusion strategy, once, on disk.
    if not ready:
        st.title("Preparing the demo", anchor=False)
        st.write(
            "First start: generating the synthetic demo cohort (CT phantoms, MEDS timelines, outcomes) "
            "and installing one model per fusion strategy "
            f"({len(FUSIONS)} strategies; models that were not shipped in assets/demo_models are "
            "trained here). This happens once; later starts reuse it from disk."
        )
        bar = st.progress(0.0, text="starting")
        # one build per server, in its own thread: leaving or reloading this page does not stop it, and every
        # visitor who arrives meanwhile watches the same build instead of waiting on its lock
        build = demo_install.background_build()
        while not build.wait(0.5):
            fraction, label = build.progress
            bar.progress(fraction, text=label)
        if build.error is not None:
            with chrome.core_errors(stop=True):
                raise build.error
        bar.empty()
        st.rerun()

    new_run()  # what the last run held beyond the session memo's budget is let go
    session.mark_run()  # the closed-session sweep counts a page run as the session seen connected
    chrome.follow_deep_link()
    kept_review.restore()  # a reloaded or bookmarked tab: its case, model and view (the address's ?review= token)
    chrome.sidebar()
    kept_review.remember()
    with chrome.core_errors(stop=True, what="Server setting: "):  # a bad CTEHR_HEAVY_THREADS in one line, not a crash
        _jobs.sidebar_list()
    # once per server: the imports later interactions need (captum, lifelines), in the background and 10 s from now,
    # so the first page waits on none of them
    chrome.preload_in_background()
    current.run()


if __name__ == "__main__":  # a session's script run (and AppTest.from_file("app.py"))
    main()
else:  # imported by `streamlit run app.py`, which serves this ASGI app
    app = st.App(str(_server.SCRIPT), lifespan=_server.lifespan)
