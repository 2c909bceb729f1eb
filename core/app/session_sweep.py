"""Closed browser sessions' scratch and export folders, removed soon after the session can no longer come back.

A session's :class:`core.app.workspace.SessionWorkspace` (its scratch folder and its prepared exports, hundreds of
MB for a full-resolution case) is deleted when Streamlit drops the session's state. Streamlit keeps a disconnected
session for ``server.disconnectedSessionTTL`` seconds (120 by default) so that a reload or a dropped connection
resumes it, and drops it lazily after that: at the next disconnect of another session, then when the garbage
collector gets to it. On a quiet server a closed tab's files stayed until the server restarted.

:class:`SessionSweep` holds this server's workspaces by session id (weakly: a collected one simply leaves) and,
asked with a function that says whether a session is connected, deletes the folders of each session seen
disconnected for longer than the TTL plus a grace: Streamlit can no longer resume such a session, so nobody can
reach its files. A session that reconnects within the TTL keeps them, also one that reconnected and dropped again
between two sweeps: its page ran meanwhile (:meth:`SessionWorkspace.touch` counts the runs), which starts its time
anew, as Streamlit's own TTL starts anew at its second disconnect.

>>> import tempfile
>>> from core.app.workspace import new_session_workspace
>>> ws = new_session_workspace(Path(tempfile.mkdtemp()))
>>> sweep = SessionSweep(ttl_s=120.0, grace_s=10.0)
>>> sweep.register("s1", ws)
>>> sweep.sweep(lambda sid: False, now=1000.0), ws.alive  # first seen disconnected: its time starts
([], True)
>>> sweep.sweep(lambda sid: False, now=1100.0), ws.alive  # within the TTL: a reload would resume it
([], True)
>>> ws.touch()  # it reconnected, its page ran, and it dropped again, all between two sweeps: its time starts anew
>>> sweep.sweep(lambda sid: False, now=1131.0), ws.alive
([], True)
>>> sweep.sweep(lambda sid: False, now=1262.0) == [ws.path], ws.alive, len(sweep)
(True, False, 0)
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from core.app.workspace import SessionWorkspace


class SessionSweep:
    """This server's session workspaces by session id; :meth:`sweep` deletes those of sessions gone for good."""

    def __init__(self, ttl_s: float, grace_s: float = 10.0) -> None:
        self.ttl_s = float(ttl_s)
        self.grace_s = float(grace_s)
        self._lock = threading.Lock()
        self._workspaces: dict[str, weakref.ref[SessionWorkspace]] = {}
        self._away_since: dict[str, float] = {}
        self._uses: dict[str, int] = {}  # each workspace's use count at the last sweep

    def __len__(self) -> int:
        with self._lock:
            return len(self._workspaces)

    def register(self, session_id: str, workspace: SessionWorkspace) -> None:
        """``workspace`` belongs to the browser session ``session_id`` (a new one replaces an earlier one)."""
        with self._lock:
            self._workspaces[session_id] = weakref.ref(workspace)
            self._away_since.pop(session_id, None)
            self._uses[session_id] = workspace.uses

    def sweep(self, is_connected: Callable[[str], bool], now: float | None = None) -> list[Path]:
        """Delete the workspaces of sessions not connected for longer than ``ttl_s + grace_s`` (counted from the
        first sweep that saw them disconnected); return their scratch folders' paths."""
        now = time.monotonic() if now is None else now
        removed: list[tuple[str, SessionWorkspace]] = []
        with self._lock:
            for sid, ref in list(self._workspaces.items()):
                ws = ref()
                if ws is None or not ws.alive:  # collected (Streamlit dropped the session), or cleaned up already
                    self._forget(sid)
                elif is_connected(sid):
                    self._away_since.pop(sid, None)
                    self._uses[sid] = ws.uses
                elif self._uses.get(sid) != ws.uses:  # its page ran since the last sweep, and it is gone again
                    self._away_since[sid] = now
                    self._uses[sid] = ws.uses
                elif now - self._away_since.setdefault(sid, now) > self.ttl_s + self.grace_s:
                    removed.append((sid, ws))
                    self._forget(sid)
        for _, ws in removed:
            ws.cleanup()
        return [ws.path for _, ws in removed]

    def _forget(self, sid: str) -> None:
        self._workspaces.pop(sid, None)
        self._away_since.pop(sid, None)
        self._uses.pop(sid, None)
