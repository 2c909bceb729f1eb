"""Timelines kept as Excel workbooks (core.io.timeline through core.io.workbook): read as the same file in parquet or
CSV is, on Upload (bytes), in a cohort folder (timeline.xlsx), for `timeline` and for `cohort --meds`."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pandas as pd
import pytest

from core.errors import InputError
from core.io.timeline import read_timeline, read_timeline_bytes

openpyxl = pytest.importorskip("openpyxl", reason="openpyxl (requirements.txt) reads .xlsx workbooks")
from tests.test_workbook import _book  # noqa: E402  (after the skip: it needs openpyxl)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_real_meds_rows_saved_from_excel_read_as_the_parquet(real_meds: Path, tmp_path: Path) -> None:
    """Three MIMIC-IV demo patients (6,941 rows, static GENDER rows without a time, codes with a trailing space)
    written by pandas to a workbook read back exactly as from the parquet file, whole and one subject alone."""
    raw = pd.read_parquet(real_meds)
    ids = sorted(raw["subject_id"].unique())[:3]
    rows = raw[raw["subject_id"].isin(ids)]
    book = tmp_path / "events.xlsx"
    rows.to_excel(book, index=False, sheet_name="events")
    want = read_timeline(real_meds, [str(i) for i in ids])
    assert len(want) == len(rows) > 1000 and want["time"].isna().any()
    _same(read_timeline(book), want)
    _same(read_timeline_bytes(book.read_bytes(), "events.xlsx"), want)
    _same(read_timeline(book, [str(ids[1])]), want[want["subject_id"] == str(ids[1])])


def test_workbook_cells_read_as_the_same_rows_written_as_csv(tmp_path: Path) -> None:
    """A hand-made export: a cover sheet first, ids and a code typed as numbers, date cells, a date Excel stores as a
    serial number, a text date, a static row without a time and a value given as text."""
    data = _book({
        "About": [["Timeline export"], ["site A, 2026-11"]],
        "Events": [["Patient ID", "Date", "Code", "Value"],
                   [7, datetime.datetime(2020, 1, 2, 10, 30), "LAB//bnp", 310],
                   [7, 43831.5, "DX//I50", None],
                   [8, "2020-03-04 08:00", 250, "<0.5"],
                   [8, None, "GENDER//F", None],
                   [None, None, None, None]],
    })
    csv = ("Patient ID,Date,Code,Value\n7,2020-01-02 10:30,LAB//bnp,310\n7,2020-01-01 12:00,DX//I50,\n"
           "8,2020-03-04 08:00,250,<0.5\n8,,GENDER//F,\n")
    got = read_timeline_bytes(data, "export.xlsx")
    _same(got, read_timeline_bytes(csv.encode(), "export.csv"))
    assert got["code"].tolist() == ["DX//I50", "LAB//bnp", "GENDER//F", "250"]
    assert str(got["time"].iloc[0]) == "2020-01-01 12:00:00"  # serial 43831.5
    assert got.attrs["unreadable_values"] == 1 and got.attrs["unreadable_examples"] == ["<0.5"]
    assert read_timeline_bytes(data, "export.xlsx", ["8"])["subject_id"].tolist() == ["8", "8"]


def test_timeline_workbooks_that_are_not_read(tmp_path: Path) -> None:
    from core.io.workbook import OLE_MAGIC

    days = _book({"Events": [["subject_id", "time", "code"], [7, 0, "DX//A"], [7, 30, "DX//B"]]})
    with pytest.raises(InputError, match=r"time: got 0, is a number in t.xlsx, and as an Excel date it would be "
                                         r"1899-12-30; fix: format the column as dates"):
        read_timeline_bytes(days, "t.xlsx")
    no_code = _book({"Events": [["subject_id", "time", "what"], [7, datetime.datetime(2020, 1, 1), "DX//A"]]})
    with pytest.raises(InputError, match=r"t.xlsx \(sheet Events\) has no column for code"):
        read_timeline_bytes(no_code, "t.xlsx")
    with pytest.raises(InputError, match=r"timeline: got t.xls, is an Excel 97-2003 \(.xls\)"):
        read_timeline_bytes(OLE_MAGIC + b"\0" * 504, "t.xls")
    with pytest.raises(InputError, match="is neither parquet, plain CSV nor an .xlsx workbook"):
        read_timeline_bytes(b"{}", "t.json")
    legacy = tmp_path / "events.xls"
    legacy.write_bytes(OLE_MAGIC + b"\0" * 504)
    with pytest.raises(InputError, match="is an Excel 97-2003"):
        read_timeline(legacy)


def test_a_cohort_folder_reads_timeline_xlsx_as_timeline_csv(tmp_path: Path) -> None:
    from core.cohort import load_cohort

    table = pd.DataFrame({"subject_id": ["P1", "P2", "P3"], "time": [10.0, 20.0, 30.0], "event": [1, 0, 1],
                          "split": ["train", "val", "test"], "index_time": ["2021-01-01"] * 3})
    events = pd.DataFrame({"subject_id": ["P1", "P1", "P2", "P3", "P9"],
                           "time": pd.to_datetime(["2020-05-01 09:00", "2020-06-01 00:00", "2020-07-01 00:00", None,
                                                   "2020-01-01 00:00"]),
                           "code": ["LAB//bnp", "DX//I50", "DX//E11", "GENDER//F", "DX//A"],
                           "numeric_value": [310.0, None, None, None, None]})
    for name in ("csv", "xlsx"):
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "cohort.csv", index=False)
    events.to_csv(tmp_path / "csv" / "timeline.csv", index=False)
    events.to_excel(tmp_path / "xlsx" / "timeline.xlsx", index=False)
    a, b = load_cohort(tmp_path / "csv"), load_cohort(tmp_path / "xlsx")
    _same(a.timeline, b.timeline)
    assert sorted(b.timeline["subject_id"].unique()) == ["P1", "P2", "P3"]  # P9 is not in cohort.csv
    before = b.fingerprint()
    events.iloc[:2].to_excel(tmp_path / "xlsx" / "timeline.xlsx", index=False)
    assert load_cohort(tmp_path / "xlsx").fingerprint() != before  # a changed workbook renews cached predictions


def test_timeline_command_and_meds_cohort_read_a_workbook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main
    from core.meds_cohort import build_meds_cohort
    from tests.test_meds_cohort import TASK, _write_synthetic

    meds = tmp_path / "events.parquet"
    _write_synthetic(meds)
    pd.read_parquet(meds).to_excel(tmp_path / "events.xlsx", index=False)
    assert main(["timeline", str(tmp_path / "events.xlsx"), "--subject", "6", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n_events"] == 2 and got["death_time"] == "2023-01-02T00:00:00"
    build_meds_cohort(meds, TASK, tmp_path / "a", seed=0)
    build_meds_cohort(tmp_path / "events.xlsx", TASK, tmp_path / "b", seed=0)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "cohort.csv"), pd.read_csv(tmp_path / "b" / "cohort.csv"))
