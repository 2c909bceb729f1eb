"""Sign-outs that reach every session of a user: each browser tab keeps the identity it signed in with.

Streamlit's ``st.logout`` clears the sign-in cookie of the tab that signs out; another tab of the same browser keeps
its session (it was told who the user is when it connected), and a copy of the old cookie still signs in for its
30 days. So a sign-out is also recorded here, on the server, for every replica that shares the data folder:
``<data_dir>/audit/signouts.json`` maps the SHA-256 of the user's ``sub`` claim (never the claim itself) to the
time of the user's last sign-out. A session whose ID token was issued (its ``iat`` claim) before that time is signed
out: the app shows it the sign-in screen, and signing in again issues a new token.

>>> import tempfile; folder = Path(tempfile.mkdtemp())
>>> record_sign_out("user-7", folder, now=1000.0)
>>> signed_out_since("user-7", 990.0, folder), signed_out_since("user-7", 1001.0, folder), signed_out_since("u8", 5.0, folder)
(True, False, False)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from core.app import paths

#: a token issued up to this many seconds before a sign-out still counts as issued after it: the identity
#: provider's clock may run behind the server's, and a user who signs out and straight back in must get in
CLOCK_SKEW_S = 5.0
FILE_NAME = "signouts.json"


def _file(folder: Path | None) -> Path:
    return (folder if folder is not None else paths.data_dir() / "audit") / FILE_NAME


def _key(user: str) -> str:
    return hashlib.sha256(user.encode("utf-8")).hexdigest()


def _read(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged file signs nobody out; the next sign-out writes it whole again
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_sign_out(user: str, folder: Path | None = None, now: float | None = None) -> None:
    """Record that ``user`` (the ``sub`` claim) signed out at ``now`` (default: the time now)."""
    path = _file(folder)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a", encoding="utf-8") as lock:  # replicas on one host: one writer at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _read(path)
        entries[_key(user)] = float(time.time() if now is None else now)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def signed_out_since(user: str, issued_at: float | None, folder: Path | None = None) -> bool:
    """Whether ``user`` signed out after their session's ID token was issued (``issued_at``, its ``iat`` claim in
    seconds since the epoch). A token without ``iat`` cannot be told apart: False."""
    if issued_at is None:
        return False
    last = _read(_file(folder)).get(_key(user))
    return last is not None and float(issued_at) < last - CLOCK_SKEW_S
