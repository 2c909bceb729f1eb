"""What a cohort's timeline gives a model at the index time, as hospital exports write it: integer ids in the
timeline against zero-padded ones in cohort.csv, no index_time column, dates without a time of day, times with UTC
offsets, rows the reader leaves out; and the MEDS cohort builder on deaths at the index time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.cohort import load_cohort
from core.cohort_notes import is_leak_note, coverage_notes

SHARED_MEDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "meds" / "mimic_iv_demo_meds_events.parquet"


def _cohort(root: Path, timeline: pd.DataFrame, index_time: list[str] | None, ids: list[str]) -> Path:
    root.mkdir(parents=True)
    table = pd.DataFrame({"subject_id": ids, "time": [100.0 + i for i in range(len(ids))],
                          "event": [i % 2 for i in range(len(ids))], "split": ["train", "val", "test"] * (len(ids) // 3)})
    if index_time is not None:
        table["index_time"] = index_time
    table.to_csv(root / "cohort.csv", index=False)
    timeline.to_parquet(root / "timeline.parquet", index=False)
    return root


def _timeline(ids: list, times: list[str], codes: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": ids, "time": pd.to_datetime(times), "code": codes, "numeric_value": [1.0] * len(ids)})


def test_integer_timeline_ids_match_zero_padded_cohort_ids(tmp_path: Path) -> None:
    """A parquet id column of int64 cannot hold "008": its rows were read (the filter matched 8) and then not found
    under "008", and the notes said the subjects had "no row at all in the timeline"."""
    ids = ["001", "002", "010"]
    timeline = _timeline([1, 2, 10, 10], ["2020-01-01 08:00"] * 4, ["A", "B", "C", "D"])
    cohort = load_cohort(_cohort(tmp_path / "c", timeline, ["2020-01-02 00:00"] * 3, ids))
    assert [len(cohort.events(s)) for s in ids] == [1, 1, 2]
    assert coverage_notes(cohort, timeline=True) == []


def test_a_cohort_without_index_time_is_told_that_every_event_is_read(tmp_path: Path) -> None:
    ids = ["a", "b", "c"]
    timeline = _timeline(ids, ["2020-01-01 08:00", "2020-01-05 00:00", "2021-01-01 00:00"], ["A", "B", "LATER"])
    cohort = load_cohort(_cohort(tmp_path / "c", timeline, None, ids))
    assert cohort.events("c")["code"].tolist() == ["LATER"]
    notes = coverage_notes(cohort, timeline=True)
    assert any(n.startswith("cohort.csv has no index_time column: every timeline event is read") for n in notes)
    assert [is_leak_note(n) for n in notes].count(True) == 1  # the app shows it as a warning, not as information


def test_dates_only_timeline_against_a_timed_index_reads_earlier_days_only(tmp_path: Path) -> None:
    """A lab dated on the scan's day (no time of day) may come from its afternoon: it was read as 00:00, before an
    08:30 scan. An index written as a date keeps that day's dated events."""
    ids = ["a", "b", "c"]
    timeline = _timeline(["a", "a", "b", "b", "c"], ["2020-01-02", "2020-01-03", "2020-01-02", "2020-01-03", "2020-01-03"],
                         ["DAY_BEFORE", "SCAN_DAY", "DAY_BEFORE", "SCAN_DAY", "SCAN_DAY"])
    cohort = load_cohort(_cohort(tmp_path / "c", timeline, ["2020-01-03 08:30", "2020-01-03", "2020-01-03 08:30"], ids))
    assert cohort.events("a")["code"].tolist() == ["DAY_BEFORE"]
    assert cohort.events("b")["code"].tolist() == ["DAY_BEFORE", "SCAN_DAY"]
    notes = coverage_notes(cohort, timeline=True)
    assert any(n.startswith("timeline: dates without a time of day, and index_time has one: 2 of 3 subjects have "
                            "events dated on the scan's day (a, c)") for n in notes)
    assert any(n.startswith("timeline: 1 of 3 subjects has no event at or before the index time (c)") for n in notes)


def test_timeline_with_utc_offsets_and_unreadable_rows_get_notes(tmp_path: Path) -> None:
    ids = ["a", "b", "c"]
    timeline = pd.DataFrame({"subject_id": ids + ["a"], "time": ["2020-01-01T08:00+01:00"] * 4,
                             "code": ["A", "B", None, "C"], "numeric_value": ["1,5", "2", "3", "4"]})
    cohort = load_cohort(_cohort(tmp_path / "c", timeline, ["2020-01-02 00:00"] * 3, ids))
    notes = coverage_notes(cohort, timeline=True)
    assert "timeline: 1 rows without a code are left out" in notes
    assert any(n.startswith("timeline: 1 value of numeric_value is not a number (e.g. '1,5')") and "decimal point" in n
               for n in notes)
    assert any(n.startswith("timeline: its times carry UTC offsets and are read in UTC") for n in notes)
    assert not any("without a code" in n for n in coverage_notes(cohort, timeline=True, ids=["a"]))  # the file's, once


@pytest.mark.skipif(not SHARED_MEDS.exists(), reason="../shared/data/meds (MIMIC-IV demo in MEDS) is absent")
def test_a_death_at_the_admission_time_is_an_event_at_time_zero(tmp_path: Path) -> None:
    """The shipped task's outcome window began after the admission: a death at its very timestamp (dates-only exports
    put an in-hospital death on the admission day at 00:00) was neither history nor outcome, and the subject was
    censored, alive, 59 days after a recorded death."""
    from core.meds_cohort import build_meds_cohort

    events = pd.read_parquet(SHARED_MEDS)
    admissions = events[events["code"].astype(str).str.startswith("HOSPITAL_ADMISSION//")]
    first = admissions.sort_values("time").groupby("subject_id").head(1)
    dead = set(events.loc[events["code"] == "MEDS_DEATH", "subject_id"])
    subject, at = next((s, t) for s, t in zip(first["subject_id"], first["time"]) if s not in dead)
    events = events[events["subject_id"].isin([subject, *sorted(set(first["subject_id"]) - {subject})[:11]])]  # 12 subjects
    moved = pd.concat([events, pd.DataFrame({"subject_id": [subject], "time": [at], "code": ["MEDS_DEATH"],
                                             "table": ["x"], "value": [events["value"].iloc[0]]})], ignore_index=True)
    moved.to_parquet(tmp_path / "meds.parquet", index=False)
    task = Path(__file__).resolve().parents[1] / "assets" / "tasks" / "mimic_death_after_admission.yaml"
    build_meds_cohort(tmp_path / "meds.parquet", task, tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "cohort.csv", dtype={"subject_id": str}).set_index("subject_id").loc[str(subject)]
    assert (row["time"], row["event"]) == (0.0, 1)
    exclusive = tmp_path / "exclusive.yaml"
    exclusive.write_text(task.read_text().replace("start_inclusive: true  #", "start_inclusive: false  #"))
    summary = build_meds_cohort(tmp_path / "meds.parquet", exclusive, tmp_path / "out2")
    assert any(n.startswith(f"1 subject has a death event at the index time itself ({subject})") for n in summary["notes"])


def test_times_written_as_epoch_counts_are_refused_saying_so(tmp_path: Path) -> None:
    """Nanoseconds since 1970 (19 digits) and a birth before 1970 (negative) got no hint that they are counts."""
    from core.errors import InputError
    from core.io.timeline import read_timeline

    for values in ([1577836800000000000, -755049600000000000], [-755049600, 1577836800]):
        path = tmp_path / "t.parquet"
        pd.DataFrame({"subject_id": [1, 2], "time": values, "code": ["A", "B"]}).to_parquet(path, index=False)
        with pytest.raises(InputError, match=r"a whole number \(seconds to nanoseconds since 1970"):
            read_timeline(path)
