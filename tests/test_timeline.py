"""MEDS timelines: read_timeline, summaries and the `timeline` command, checked against plain pandas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.errors import InputError
from core.io.timeline import (
    _read_parquet,
    events_before,
    map_columns,
    read_timeline,
)
from core.io.timeline_summary import reading_notes, summarize_file, summarize_subject
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def real_frame(real_meds: Path) -> pd.DataFrame:
    return pd.read_parquet(real_meds)


def _pandas_summary(df: pd.DataFrame, sid: int) -> dict[str, object]:
    s = df[df["subject_id"] == sid]
    timed = s["time"].dropna()
    death = s.loc[s["code"] == "MEDS_DEATH", "time"]
    return {
        "n_events": len(s),
        "n_codes": s["code"].nunique(),
        "first_time": timed.min().isoformat(),
        "last_time": timed.max().isoformat(),
        "death_time": death.min().isoformat() if len(death) else None,
    }


def _subjects(df: pd.DataFrame) -> list[int]:
    dead = sorted(df.loc[df["code"] == "MEDS_DEATH", "subject_id"].unique())
    alive = sorted(set(df["subject_id"].unique()) - set(dead))
    return [int(dead[0]), int(dead[-1]), int(alive[0]), int(alive[len(alive) // 2])]


def test_summaries_match_pandas_on_real_file(real_meds: Path, real_frame: pd.DataFrame) -> None:
    for sid in _subjects(real_frame):
        got = summarize_subject(real_meds, str(sid))
        want = _pandas_summary(real_frame, sid)
        for key, value in want.items():
            assert got[key] == value, (sid, key)
        s = real_frame[real_frame["subject_id"] == sid]
        prefixes = s["code"].str.split("//").str[0].value_counts().to_dict()
        assert got["code_prefixes"] == prefixes
        assert sum(got["code_prefixes"].values()) == got["n_events"]


def test_death_subject_has_death_time(real_meds: Path, real_frame: pd.DataFrame) -> None:
    sid = _subjects(real_frame)[0]
    got = summarize_subject(real_meds, str(sid))
    assert got["death_time"] is not None
    assert got["death_time"] <= got["last_time"]
    alive = summarize_subject(real_meds, str(_subjects(real_frame)[2]))
    assert alive["death_time"] is None


def test_whole_file_counts(real_meds: Path, real_frame: pd.DataFrame) -> None:
    overview = summarize_file(real_meds)
    assert overview["n_events"] == 916_166 == len(real_frame)
    assert overview["n_subjects"] == 100
    assert overview["n_deaths"] == 31
    assert overview["columns"]["numeric_value"] == "value"
    events = read_timeline(real_meds)
    assert int((events["code"] == "MEDS_DEATH").sum()) == 31
    assert list(events.columns) == ["subject_id", "time", "code", "numeric_value"]
    assert str(events["time"].dtype) == "datetime64[ns]"
    assert events["numeric_value"].dtype == np.float64
    assert events["subject_id"].map(type).eq(str).all()
    # static (null-time) rows are kept as NaT
    assert int(events["time"].isna().sum()) == int(real_frame["time"].isna().sum())


def test_subject_filter_is_pushed_down(real_meds: Path, real_frame: pd.DataFrame) -> None:
    sid = _subjects(real_frame)[1]
    mapping = map_columns(["subject_id", "time", "code", "value"])
    table = _read_parquet(real_meds, mapping, [str(sid)])  # arrow table before any pandas conversion
    n = int((real_frame["subject_id"] == sid).sum())
    assert table.num_rows == n < len(real_frame) / 10
    events = read_timeline(real_meds, [str(sid), "not-an-int"])
    assert len(events) == n and set(events["subject_id"]) == {str(sid)}
    s = real_frame[real_frame["subject_id"] == sid]
    np.testing.assert_allclose(np.sort(events["numeric_value"].dropna().to_numpy()),
                               np.sort(s["value"].dropna().to_numpy().astype(np.float64)))
    assert events["time"].dropna().is_monotonic_increasing


def test_csv_aliases_filter_and_static_rows(tmp_path: Path) -> None:
    path = tmp_path / "tl.csv"
    path.write_text(
        "patient_id,Timestamp,concept,val\n"
        "7,2020-01-01 10:00,MEDS_BIRTH,\n"
        "7,,GENDER//F,\n"
        "7,2021-03-04T08:30:00,LAB//creatinine//mg/dL,1.4\n"
        "8,2020-05-05,LAB//bnp//pg/mL,UNK\n"
        "7,2022-01-01,MEDS_DEATH,\n"
    )
    events = read_timeline(path, ["7"])
    assert events["code"].tolist() == ["GENDER//F", "MEDS_BIRTH", "LAB//creatinine//mg/dL", "MEDS_DEATH"]
    assert pd.isna(events["time"].iloc[0])
    assert events["numeric_value"].iloc[2] == 1.4
    all_events = read_timeline(path)
    assert sorted(all_events["subject_id"].unique()) == ["7", "8"]
    assert np.isnan(all_events.loc[all_events["subject_id"] == "8", "numeric_value"].iloc[0])
    summary = summarize_subject(path, "7")
    assert summary["n_events"] == 4 and summary["n_static_events"] == 1
    assert summary["first_time"] == "2020-01-01T10:00:00"
    assert summary["death_time"] == "2022-01-01T00:00:00"


def test_csv_bad_time_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "tl.csv"
    path.write_text("subject_id,time,code\n1,yesterday,A\n")
    with pytest.raises(InputError, match="time: got yesterday, is not a date/time \\(1 such rows in tl.csv\\); fix"):
        read_timeline(path)
    path.write_text("subject_id,time,code\n1,1577836800,A\n1,1577923200000,B\n")  # a warehouse's epoch times
    with pytest.raises(InputError, match="got 1577836800, is not a date/time \\(2 such rows in tl.csv\\); a whole "
                                         "number \\(seconds to nanoseconds since 1970, or a date and hour "
                                         "without separators\\) is not read as a time; fix: write times as ISO"):
        read_timeline(path)


@pytest.mark.parametrize("clock", ["08:30", "8:30:15.5 PM", " 12:00 a.m."])
def test_a_time_of_day_without_a_date_is_refused(tmp_path: Path, clock: str) -> None:
    """pandas read a time alone as today's date: the event then came after every index time, or before all of them."""
    import datetime

    from core.io.timeline_times import index_times

    path = tmp_path / "tl.csv"
    path.write_text(f"subject_id,time,code\n1,2020-01-01 08:00,A\n1,{clock},B\n1,2020-01-02T10:00,C\n")
    with pytest.raises(InputError, match=f"time: got {clock.strip()}, is a time of day without a date \\(1 such rows "
                                         "in tl.csv; it would be read as today's date\\); fix: write the date with it"):
        read_timeline(path)
    book = tmp_path / "tl.xlsx"  # a cell typed as a time in Excel
    pd.DataFrame({"subject_id": ["1", "1"], "time": [datetime.datetime(2020, 1, 1, 8), datetime.time(9, 30)],
                  "code": ["A", "B"]}).to_excel(book, index=False)
    with pytest.raises(InputError, match="time: got 09:30:00, is a time of day without a date"):
        read_timeline(book)
    with pytest.raises(InputError, match="index_time: got 09:00, is a time of day without a date"):
        index_times(pd.Series(["2020-01-01", "09:00"]))
    path.write_text("subject_id,time,code\n1,2020-01-01 08:30,A\n")  # with its date it is read
    assert str(read_timeline(path)["time"].iloc[0]) == "2020-01-01 08:30:00"


def test_missing_columns_list_what_was_found() -> None:
    with pytest.raises(InputError) as err:
        map_columns(["subject_id", "time", "value"], "x.csv")
    msg = str(err.value)
    assert msg.startswith("columns: got subject_id, time, value, x.csv has no column for code")
    assert "code, concept, event_code" in msg


def test_events_before_excludes_later_events() -> None:
    ev = pd.DataFrame({
        "subject_id": ["1"] * 4,
        "time": pd.to_datetime([None, "2020-01-01", "2020-06-01 10:00", "2020-06-01 10:01"], format="mixed"),
        "code": ["GENDER//F", "A", "B", "C"],
        "numeric_value": [np.nan] * 4,
    })
    kept = events_before(ev, pd.Timestamp("2020-06-01 10:00"))
    assert kept["code"].tolist() == ["GENDER//F", "A", "B"]
    with pytest.raises(InputError, match="index_time"):
        events_before(ev, pd.NaT)


# ----------------------------------------------------------------------------- command line
def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_matches_pandas(real_meds: Path, real_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    sid = _subjects(real_frame)[0]
    code, out, err = _cli(["timeline", str(real_meds), "--subject", str(sid), "--json"], capsys)
    assert code == 0 and err == ""
    got = json.loads(out)
    want = _pandas_summary(real_frame, sid)
    assert {k: got[k] for k in want} == want


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path, real_meds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["timeline", str(tmp_path / "missing.parquet"), "--subject", "1"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: PATH: got ") and "file not found" in err

    nocode = tmp_path / "nocode.csv"
    nocode.write_text("subject_id,time,value\n1,2020-01-01,3\n")
    code, out, err = _cli(["timeline", str(nocode), "--subject", "1"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "columns: got subject_id, time, value" in err and "no column for code" in err

    code, out, err = _cli(["timeline", str(real_meds), "--subject", "123", "--json"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "subject: got 123, is not in mimic_iv_demo_meds_events.parquet (100 subjects" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, _, err = _cli(["timeline", str(empty), "--subject", "1"], capsys)
    assert code == 2 and "empty file" in err

    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x00\x01not parquet at all" * 10)
    code, _, err = _cli(["timeline", str(junk), "--subject", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a readable parquet file" in err


def test_timeline_command_does_not_import_torch(real_meds: Path) -> None:
    code = (
        "import sys; from core.cli import main; "
        f"rc = main(['timeline', {str(real_meds)!r}, '--subject', '10000032', '--json']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "NO-TORCH 0", proc.stderr


@pytest.mark.parametrize("aware_first", [True, False])
def test_times_with_and_without_an_offset_in_one_file(tmp_path: Path, aware_first: bool) -> None:
    """A merged export with some times in UTC offsets and some without: the offset ones are converted to UTC, the
    others stay as written, whatever the row order (pandas alone gave a naive time the offset of the row before)."""
    from core.io.timeline import read_timeline

    rows = ["1,2020-01-03T10:00:00+02:00,LAB//a,1", "1,2020-01-05 10:00:00,LAB//b,2", "1,2020-01-06T09:30Z,LAB//c,3",
            "1,2020-01-07,LAB//d,4"]
    path = tmp_path / "t.csv"
    path.write_text("subject_id,time,code,numeric_value\n" + "\n".join(rows if aware_first else rows[::-1]) + "\n")
    got = read_timeline(path).set_index("code")["time"].astype(str).to_dict()
    assert got == {"LAB//a": "2020-01-03 08:00:00", "LAB//b": "2020-01-05 10:00:00", "LAB//c": "2020-01-06 09:30:00",
                   "LAB//d": "2020-01-07 00:00:00"}


def test_values_that_are_not_numbers_are_counted(tmp_path: Path) -> None:
    """"<0.5" or "positive" in numeric_value cannot be a number: read as no value, and said so (count, examples)."""
    from core.io.timeline import read_timeline, unreadable_values_note
    from core.io.timeline_summary import summarize_file, summarize_subject

    path = tmp_path / "t.csv"
    path.write_text("subject_id,time,code,numeric_value\n1,2020-01-01,LAB//crp,<0.5\n1,2020-01-02,LAB//crp,1.2\n"
                    "1,2020-01-03,LAB//culture,positive\n1,2020-01-04,DX//I10,\n2,2020-01-05,LAB//crp,<0.5\n")
    events = read_timeline(path)
    assert events["numeric_value"].notna().sum() == 1 and events.attrs["unreadable_values"] == 3
    assert unreadable_values_note(events).startswith("3 values of numeric_value are not numbers (e.g. '<0.5', 'positive')")
    assert summarize_file(path)["unreadable_values"] == 3
    one = summarize_subject(path, "1")  # one subject's rows: its own count and the note (before: nothing)
    assert one["unreadable_values"] == 2 and one["notes"][0].startswith("2 values of numeric_value are not numbers")
    path.write_text(path.read_text() + "2,2020-01-06,,3.0\n")
    assert summarize_file(path)["notes"][-1] == "1 row without a code is left out: give every event a code"
    numbers = tmp_path / "n.csv"
    numbers.write_text("subject_id,time,code,numeric_value\n1,2020-01-01,LAB//crp,0.4\n1,2020-01-02,DX//I10,\n")
    assert unreadable_values_note(read_timeline(numbers)) is None


def test_one_day_order_per_file(tmp_path: Path) -> None:
    """Numeric dates are read with one day / month order for the whole file, decided by the dates that can only be
    read one way; a file with both orders, or with only dates that read either way, is refused with the fix."""
    from core.io.timeline import read_timeline

    def times(rows: list[str]) -> list[str]:
        path = tmp_path / "t.csv"
        path.write_text("subject_id,time,code,numeric_value\n" + "\n".join(f"1,{t},C{i}," for i, t in enumerate(rows)) + "\n")
        return read_timeline(path)["time"].dt.strftime("%Y-%m-%d").tolist()

    assert times(["03/04/2021 10:00", "25/04/2021 10:00"]) == ["2021-04-03", "2021-04-25"]  # day first (pandas: 03-04 Mar 4)
    assert times(["03/04/2021", "04/25/2021"]) == ["2021-03-04", "2021-04-25"]  # month first
    assert times(["03.04.2021", "13.04.2021", "2021-05-01"]) == ["2021-04-03", "2021-04-13", "2021-05-01"]
    assert times(["05/05/2021"]) == ["2021-05-05"]  # the same either way
    with pytest.raises(InputError, match="day first in some rows of t.csv and the month first in others"):
        times(["25/04/2021", "04/25/2021"])
    with pytest.raises(InputError, match=r"time: got 03/04/2021, can be read day first or month first.*ISO 8601"):
        times(["03/04/2021"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".xlsx"])
def test_one_subject_reads_with_the_whole_files_day_order(tmp_path: Path, suffix: str) -> None:
    """A subject whose dates all read either way takes the day / month order of the whole file (it was refused when
    read alone, as `timeline --subject` and a cohort of some of the file's subjects do), and a subject whose own dates
    are consistent is still refused when the file mixes both orders."""
    from core.io.timeline import read_timeline
    from core.io.timeline_summary import summarize_subject

    def write(rows: list[tuple[str, str]]) -> Path:
        frame = pd.DataFrame({"subject_id": [s for s, _ in rows], "time": [t for _, t in rows],
                              "code": [f"C{i}" for i in range(len(rows))]})
        path = tmp_path / f"t{suffix}"
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".xlsx":  # dates typed as text in a workbook
            frame.to_excel(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return path

    path = write([("1", "03/04/2021"), ("1", "05/06/2021"), ("2", "25/04/2021")])
    assert read_timeline(path, ["1"])["time"].dt.strftime("%Y-%m-%d").tolist() == ["2021-04-03", "2021-06-05"]
    assert summarize_subject(path, "1")["n_events"] == 2
    mixed = write([("1", "04/25/2021"), ("2", "25/04/2021")])
    with pytest.raises(InputError, match="day first in some rows"):
        read_timeline(mixed, ["1"])


def test_a_binary_file_named_csv_is_named_as_such() -> None:
    """Bytes that are no text in the sniffed encoding: one line saying so and how to export, where it printed
    Python's codec message ("'charmap' codec can't decode byte 0x81...")."""
    from core.errors import InputError
    from core.io.timeline import read_timeline_bytes

    data = b"subject_id,time,code\n" + bytes(range(128, 256)) * 40
    with pytest.raises(InputError, match=r"^PATH: got binary.csv, is not text in a known encoding .*; fix: export"):
        read_timeline_bytes(data, "binary.csv")


def test_whole_file_summary_streams_and_matches_the_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``timeline FILE`` counts batch by batch (a 45.8 M-event file took 13 GB as a frame, 4.4 GB read whole in Arrow):
    the same numbers as the frame on a semicolon CSV with decimal commas, day-first dates, a row without a code, a
    value that is no number and a death, read in batches of a few rows; and an upload over the events limit is
    refused before it becomes a frame."""
    import core.io.timeline as tl

    rows = ["subject_id;time;code;numeric_value", " 7;03/04/2021;LAB//X;1,5", "7;25/04/2021;LAB//X;<0.5",
            "8;01/02/2020;;2", "8;13/02/2020;MEDS_DEATH;", "9;;STATIC//SEX;"] * 3
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows[:1] + [r for r in rows if not r.startswith("subject_id")]) + "\n")
    monkeypatch.setattr(tl, "CSV_BLOCK_BYTES", 64)  # a batch of a few rows: the day / month order is still the file's
    frame = read_timeline(path)
    overview = summarize_file(path)
    timed = frame["time"].dropna()
    assert overview["n_events"] == len(frame) == 12 and overview["n_subjects"] == frame["subject_id"].nunique() == 3
    assert overview["n_deaths"] == 1
    assert (overview["first_time"], overview["last_time"]) == (timed.min().isoformat(), timed.max().isoformat())
    assert overview["last_time"].startswith("2021-04-25")  # day first, as the whole file says
    assert overview["unreadable_values"] == frame.attrs["unreadable_values"] == 3
    assert overview["notes"] == [n for n in reading_notes(frame)]
    monkeypatch.setattr(tl, "MAX_UPLOAD_EVENTS", 10)
    with pytest.raises(InputError, match=r"^timeline: got t.csv, holds 15 events \(limit 10 for one upload\)"):
        tl.read_timeline_bytes(path.read_bytes(), "t.csv")
