"""CT + EHR survival explorer. Run with ``streamlit run app.py``.

Streamlit finds ``app`` below (its ASGI ``st.App``) and serves this same file as the
script of every session. The server side (``__name__ != "__main__"``) starts, at the
server's start, the import of the first page's modules while the first browser is
still loading (``pages/_server.py``). Each session's script run (``__main__``) is
``pages/_main.py``: sign-in gate, navigation, sidebar, the one-time demo build; every
page lives in ``pages/``.
"""

from __future__ import annotations

import streamlit as st

if __name__ == "__main__":  # a session's script run (and AppTest.from_file("app.py"))
    from pages import _main

    _main.run()
else:  # imported by `streamlit run app.py`, which serves this ASGI app
    from pages import _server

    app = st.App(str(_server.SCRIPT), lifespan=_server.lifespan)
