"""Durations as people read them: the time a job has run, the time left."""

from __future__ import annotations


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min``, ``2 h 2 min``: seconds below 90 s, whole minutes below an hour.

    >>> duration_text(42), duration_text(200), duration_text(7300)
    ('42 s', '3 min', '2 h 2 min')
    """
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {round((s % 3600) / 60)} min"


def format_eta(seconds: float | None) -> str:
    """``about 3 min left`` style text (empty when unknown; "finishing" under a second, not "about 0 s left").

    >>> format_eta(None), format_eta(42), format_eta(200), format_eta(7300), format_eta(0.3)
    ('', 'about 42 s left', 'about 3 min left', 'about 2 h 2 min left', 'finishing')
    """
    if seconds is None:
        return ""
    return "finishing" if seconds < 1 else f"about {duration_text(seconds)} left"
