"""The ``time`` column of a MEDS timeline (and cohort.csv's ``index_time``, :func:`index_times`): Arrow timestamps,
dates or text, as naive UTC ``datetime64[ns]``.

Used by ``core.io.timeline``. Text is read as ISO 8601 first, else value by value (``format="mixed"``), with two
rules pandas alone does not keep:

- values with a UTC offset (or ``Z``) are converted to UTC and values without one are read as written, parsed apart
  (parsed together, pandas gives a value without an offset the offset of the row before it);
- a time of day alone (08:30) is refused: pandas reads it as today's date;
- numeric dates (03/04/2021) get one day / month order for the whole file, told by the dates with a number above 12
  (pandas alone read 03/04/2021 as March 4 and 25/04/2021 as April 25 in one file); a file with both orders, or
  with only dates that read either way, is refused with the fix. When only some subjects' rows are read, the order
  is still told by the whole file's time column (``whole``), so one subject reads the same alone as with the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import InputError

#: a time of day followed by a UTC offset or Z ("10:00:00+02:00", "10:00Z"); a bare date's "-05" is not one
_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def _with_offset(col: pa.ChunkedArray) -> np.ndarray:
    """Which values of a text column end with a UTC offset (``_OFFSET``; RE2 in Arrow: 0.05 s per million rows)."""
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    return pc.fill_null(pc.match_substring_regex(text, _OFFSET), False).to_numpy(zero_copy_only=False).astype(bool)


#: a time of day with no date ("08:30", "8:30:15.5 pm"): pandas reads it as today's date
_CLOCK_ONLY = r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[ap]\.?m\.?)?"


def _clock_only(col: pa.ChunkedArray) -> np.ndarray:
    """Which values of a text column are a time of day alone (``_CLOCK_ONLY``), matched in Arrow as ``_with_offset``."""
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    found = pc.match_substring_regex(text, f"^(?:{_CLOCK_ONLY})$", ignore_case=True)
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False).astype(bool)


_NUMERIC_DATE = r"^(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}\b"


def _day_first(text: pd.Series, path: Path) -> bool:
    """Whether the numeric dates of ``text`` (03/04/2021, 25.04.2021) put the day first: decided once for the whole
    file from the values whose first or second number exceeds 12. Left to pandas value by value, 03/04/2021 became
    March 4 and 25/04/2021 April 25 in one file. InputError when the file holds both orders, or only dates that
    read either way (every number 12 or below, some with the two numbers different).

    >>> _day_first(pd.Series(["03/04/2021", "25/04/2021"]), Path("t.csv")), _day_first(pd.Series(["04/25/2021"]), Path("t.csv"))
    (True, False)
    """
    parts = text.dropna().str.extract(_NUMERIC_DATE).dropna().astype(int)
    if parts.empty:
        return False
    first, second = parts[0], parts[1]
    day_first, month_first = bool((first > 12).any()), bool((second > 12).any())
    if day_first and month_first:
        raise InputError("time", f"{text[first.index[first > 12][0]]!s} and {text[second.index[second > 12][0]]!s}",
                         f"put the day first in some rows of {path.name} and the month first in others",
                         "write times as ISO 8601, e.g. 2021-04-03 10:00")
    if not day_first and not month_first and bool((first != second).any()):
        example = text[first.index[first != second][0]]
        raise InputError("time", str(example), f"can be read day first or month first (no date read from {path.name} "
                         "has a number above 12 to tell)", "write times as ISO 8601, e.g. 2021-04-03 10:00")
    return day_first


def _parse_times(text: pd.Series, fmt: str, aware: np.ndarray, day_first: bool = False) -> pd.Series:
    """UTC times of ``text`` (NaT where unparsable): the values marked ``aware`` (with an offset) converted to UTC,
    the others read as they are. The two kinds are parsed apart: parsed together, pandas gives a value without an
    offset the offset of the value before it (a naive 10:00 after a "+02:00" one became 08:00).

    >>> t = pa.chunked_array([["2020-01-03T10:00:00+02:00", "2020-01-05 10:00:00", "2020-01-06"]])
    >>> [str(v) for v in _parse_times(t.to_pandas().astype("string"), "ISO8601", _with_offset(t))]
    ['2020-01-03 08:00:00+00:00', '2020-01-05 10:00:00+00:00', '2020-01-06 00:00:00+00:00']
    """
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    if aware.any():
        parsed[aware] = pd.to_datetime(text[aware], errors="coerce", format=fmt, utc=True, dayfirst=day_first)
    if (~aware).any():
        parsed[~aware] = pd.to_datetime(text[~aware], errors="coerce", format=fmt,
                                        dayfirst=day_first).dt.tz_localize("UTC")
    return parsed


def to_datetime(col: pa.ChunkedArray, path: Path, whole: Callable[[], pa.ChunkedArray] | None = None) -> np.ndarray:
    """The ``time`` column of a timeline as naive UTC ``datetime64[ns]`` (NaT for empty cells; see the module
    docstring); InputError naming a value that is not a date/time.

    ``whole``: when ``col`` holds some subjects' rows only, a function returning the whole file's time column, read
    only if numeric dates need the file's day / month order.

    >>> rows = pa.chunked_array([["03/04/2021"]])
    >>> str(to_datetime(rows, Path("t.csv"), lambda: pa.chunked_array([["03/04/2021", "25/04/2021"]]))[0])[:10]
    '2021-04-03'
    """
    typ = col.type
    if pa.types.is_timestamp(typ):
        series = col.to_pandas()
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.astype("datetime64[ns]").to_numpy()
    if pa.types.is_date(typ):
        return pd.to_datetime(col.to_pandas()).astype("datetime64[ns]").to_numpy()
    text = col.to_pandas().astype("string").str.strip()
    text = text.mask(text == "")
    clock = _clock_only(col)
    if clock.any():
        raise InputError("time", str(text[clock].iloc[0]), f"is a time of day without a date ({int(clock.sum())} such "
                         f"rows in {path.name}; it would be read as today's date)",
                         "write the date with it, e.g. 2021-04-03 08:30")
    aware = _with_offset(col)
    parsed = _parse_times(text, "ISO8601", aware)
    bad = parsed.isna() & text.notna()
    if bad.any():  # not all ISO 8601: let pandas infer each value (e.g. 03/04/2021 10:00), one day order per file
        if whole is None:
            day_first = _day_first(text[bad], path)
        else:
            file_text = whole().to_pandas().astype("string").str.strip()
            day_first = _day_first(file_text.mask(file_text == "").reset_index(drop=True), path)
        parsed = _parse_times(text, "mixed", aware, day_first)
        bad = parsed.isna() & text.notna()
    if bad.any():
        example = text[bad].iloc[0]
        # 1577836800 (seconds since 1970), its milli- to nanoseconds, or before 1970 (negative): a count, not a time
        epoch = bool(text[bad].str.fullmatch(r"-?\d{6,19}(?:\.\d+)?").all())
        raise InputError("time", example, f"is not a date/time ({int(bad.sum())} such rows in {path.name})"
                         + ("; a whole number (seconds to nanoseconds since 1970, or a date and hour without "
                            "separators) is not read as a time" if epoch else ""),
                         "write times as ISO 8601, e.g. 2180-03-23 11:51:00 (leave empty for static events)")
    return parsed.dt.tz_localize(None).astype("datetime64[ns]").to_numpy()


def index_times(values: pd.Series, source: str = "cohort.csv", field: str = "index_time") -> pd.Series:
    """A cohort table's index times read as a timeline's times are (25.04.2021 day first, one order per file, UTC
    offsets converted): pandas alone read 01.02.2020 as January 2 and 13.02.2020 as no time (the subject then had no
    events). An empty cell is no index time; any other unreadable one an InputError naming it.

    >>> index_times(pd.Series(["01.02.2020", "13.02.2020 10:00", None])).dt.strftime("%Y-%m-%d %H:%M").tolist()
    ['2020-02-01 00:00', '2020-02-13 10:00', nan]
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
    text = pa.chunked_array([[None if pd.isna(v) else str(v) for v in values]], type=pa.string())
    try:
        return pd.Series(to_datetime(text, Path(source)), index=values.index)
    except InputError as exc:
        raise InputError(field, exc.value, exc.problem.replace("rows in", "cells in"),
                         f"write the {field} cells as ISO 8601, e.g. 2021-04-03 10:00 (an empty cell: no time)") from None


def follow_up_days(index: pd.Series, end: pd.Series, source: str = "cohort.csv") -> tuple[pd.Series, pd.Series]:
    """Days (fractional) from each index time to its ``end_time`` (the date of the event, or of the last follow-up
    for a censored subject, as registries export outcomes), and the index times read. Both columns are read together
    as :func:`index_times` (one day / month order for the two); a blank is NaN.

    >>> follow_up_days(pd.Series(["01.02.2020", "01.03.2020"]), pd.Series(["13.02.2020", "01.03.2020 12:00"]))[0].tolist()
    [12.0, 0.5]
    """
    both = index_times(pd.concat([index.astype(object), end.astype(object)], ignore_index=True), source,
                       field="index_time / end_time")
    start, stop = both.iloc[:len(index)].set_axis(index.index), both.iloc[len(index):].set_axis(index.index)
    return (stop - start).dt.total_seconds() / 86400.0, start


def outcome_from_dates(table: pd.DataFrame, source: str = "cohort.csv", end: str = "end_time") -> tuple[pd.DataFrame, bool]:
    """``table`` with ``time`` = ``end`` - ``index_time`` in days when it has the two dates and no time (and True);
    when it has all three, the time given is checked against the dates: more than a day apart for a subject (time in
    months or years, or from another index date) is refused, naming the subject and both numbers.

    >>> t = pd.DataFrame({"subject_id": ["a", "b"], "time": [30.0, 2.0], "index_time": ["2020-01-01"] * 2,
    ...                   "end_time": ["2020-01-31", "2020-03-01"]})
    >>> outcome_from_dates(t)
    Traceback (most recent call last):
    ...
    core.errors.InputError: time: got 2.0 (subject 'b'), disagrees with end_time - index_time, 60.0 days (1 of 2 subjects more than a day apart); fix: keep one of time and end_time in cohort.csv, or correct it (is time in days?)
    """
    if not {end, "index_time"} <= set(table.columns):
        return table, False
    days, starts = follow_up_days(table["index_time"], table[end], source)
    if "time" not in table.columns:
        return table.assign(time=days, index_time=starts), True
    given = pd.to_numeric(table["time"], errors="coerce")
    apart = ((given - days).abs() > 1.0).to_numpy()  # NaN on either side: not compared
    if apart.any():
        i = int(np.flatnonzero(apart)[0])
        who = table["subject_id"].iloc[i] if "subject_id" in table.columns else i
        raise InputError("time", f"{table['time'].iloc[i]} (subject {str(who)!r})",
                         f"disagrees with {end} - index_time, {days.iloc[i]:.1f} days ({int(apart.sum())} of {len(table)} "
                         "subjects more than a day apart)", f"keep one of time and {end} in {source}, or correct it "
                         "(is time in days?)")
    return table.assign(index_time=starts), False  # read with end_time: one day / month order for both


def dates_only(timeline: pd.DataFrame) -> bool:
    """True when every dated event of ``timeline`` (a ``read_timeline`` frame) is at 00:00: dates without a time
    of day (a date-only export). Kept in ``timeline.attrs`` once computed.

    >>> dates_only(pd.DataFrame({"time": pd.to_datetime(["2020-01-03", None, "2020-01-05"])}))
    True
    """
    if "dates_only" not in timeline.attrs:
        t = timeline["time"].dropna()
        timeline.attrs["dates_only"] = bool(len(t)) and bool((t == t.dt.normalize()).all())
    return bool(timeline.attrs["dates_only"])


def known_at(times: pd.Series, index: pd.Timestamp | pd.Series, day_only: bool) -> np.ndarray:
    """Which events (``times``) were known at the ``index`` time: those at or before it. In a timeline of dates only
    (``day_only``), an event dated on the day of an index with a time of day is not known to come before it (a lab
    of the scan's day may be from its afternoon): only earlier days are. A missing time on either side: not known.

    >>> t = pd.Series(pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-04"]))
    >>> known_at(t, pd.Timestamp("2020-01-03 08:30"), True).tolist(), known_at(t, pd.Timestamp("2020-01-03"), True).tolist()
    ([True, False, False], [True, True, False])
    """
    index = pd.to_datetime(index)
    at_or_before = np.asarray(times <= index, dtype=bool)
    if not day_only:
        return at_or_before
    day = index.normalize() if isinstance(index, pd.Timestamp) else index.dt.normalize()
    timed = np.asarray(index != day, dtype=bool)
    return np.where(timed, np.asarray(times < day, dtype=bool), at_or_before)


def has_offsets(col: pa.ChunkedArray) -> bool:
    """Whether a timeline's time column carries UTC offsets (a zoned timestamp type, or text such as
    ``10:00+02:00``): :func:`to_datetime` reads those in UTC.

    >>> has_offsets(pa.chunked_array([["2020-01-03T10:00:00+02:00", "2020-01-05"]])), has_offsets(pa.chunked_array([["2020-01-05"]]))
    (True, False)
    """
    if pa.types.is_timestamp(col.type):
        return col.type.tz is not None
    return bool(pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and bool(_with_offset(col).any())
