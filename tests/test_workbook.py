"""Excel workbooks uploaded as features tables (core.io.workbook): read in memory, checked as untrusted zips."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from core.errors import InputError

openpyxl = pytest.importorskip("openpyxl", reason="openpyxl (requirements.txt) reads .xlsx workbooks")


def _book(sheets: dict[str, list[list[object]]]) -> bytes:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_features_workbook_reads_the_first_sheet_with_rows() -> None:
    from core.app.uploads import read_features_bytes

    values = [["Patient ID", "Age", "sex", "last_bnp"], [7, 61.5, "F", 310], [None, None, None, None],
              [8, 70, "M", None], [None, 55, "F", 12]]
    data = _book({"Empty": [], "About": [["Export"], ["2026-11-20, the clinic's system"]], "Values": values,
                  "Old": [["subject_id", "age"], ["x", 1]]})
    table = read_features_bytes(data, "clinic.xlsx", names=["age", "sex_female", "last_bnp"])
    assert table.attrs["sheet"] == "Values" and table.attrs["other_sheets"] == 2  # the cover sheet is not the table
    # ids typed as numbers in a column with a blank are 7 and 8, not 7.0; a blank row and a row without an id are dropped
    assert table.index.tolist() == ["7", "8"]
    assert table.loc["7"].to_dict() == pytest.approx({"Age": 61.5, "last_bnp": 310.0, "sex_female": 1.0})
    assert table.loc["8", "sex_female"] == 0.0 and np.isnan(table.loc["8", "last_bnp"])
    # a date column is text, as in a CSV, not nanoseconds since 1970
    import datetime

    dated = _book({"Values": [["subject_id", "age", "admitted"], [7, 61.5, datetime.datetime(2020, 1, 2)]]})
    read = read_features_bytes(dated, "clinic.xlsx", names=["age"])
    assert list(read.columns) == ["age"] and read.attrs["text_columns"] == ["admitted"]


def test_workbooks_that_are_not_read() -> None:
    from core.app.uploads import read_features_bytes
    from core.io.workbook import MAX_RATIO, OLE_MAGIC

    def zipped(parts: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, body in parts.items():
                archive.writestr(name, body)
        return buffer.getvalue()

    entity = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><workbook>&lol;</workbook>'
    bomb = b"<worksheet>" + b" " * (4 * MAX_RATIO << 12) + b"</worksheet>"
    for data, name, message in [
            (OLE_MAGIC + b"\0" * 504, "clinic.xls", r"Excel 97-2003 \(.xls\) or password-protected workbook"),
            (OLE_MAGIC + b"\0" * 504, "clinic.xlsx", "password-protected"),  # an encrypted .xlsx is an OLE file too
            (b"subject_id,age\n7,61\n", "clinic.xlsx", "is not an .xlsx workbook"),
            (b"PK\x03\x04broken", "clinic.xlsx", "broken zip"),
            (zipped({"xl/workbook.xml": entity}), "clinic.xlsx", "declares a DOCTYPE"),
            (zipped({"xl/worksheets/sheet1.xml": bomb}), "clinic.xlsx", f"limit {MAX_RATIO}x"),
            (zipped({"xl/workbook.xml": b"<workbook/>"}), "clinic.xlsx", "cannot be read as a workbook"),
            (_book({"Empty": []}), "clinic.xlsx", "has no sheet with rows"),
            (_book({"Ids": [["id", "age"], [7, 61]]}), "clinic.xlsx", r"\(sheet Ids\), has no subject_id column \(columns: id, age\)")]:
        with pytest.raises(InputError, match=message) as err:
            read_features_bytes(data, name)
        assert str(err.value).startswith("features table: got clinic.xls")


def test_a_cohort_folder_reads_features_xlsx_as_features_csv(tmp_path) -> None:
    import pandas as pd

    from core.cohort import load_cohort

    table = pd.DataFrame({"subject_id": ["P1", "P2", "P3"], "time": [10.0, 20.0, 30.0], "event": [1, 0, 1],
                          "split": ["train", "val", "test"]})
    features = pd.DataFrame({"subject_id": ["P1", "P2", "P3"], "age": [61.5, 70.0, None], "sex": ["F", "M", "F"]})
    for name in ("csv", "xlsx"):
        (tmp_path / name).mkdir()
        table.to_csv(tmp_path / name / "cohort.csv", index=False)
    features.to_csv(tmp_path / "csv" / "features.csv", index=False)
    features.to_excel(tmp_path / "xlsx" / "features.xlsx", index=False, sheet_name="Values")
    a, b = load_cohort(tmp_path / "csv"), load_cohort(tmp_path / "xlsx")
    pd.testing.assert_frame_equal(a.features, b.features)
    assert list(b.features.columns) == ["age", "sex_female", "sex_male"]
    (tmp_path / "xlsx" / "features.xlsx").write_bytes(b"subject_id,age\n")  # not a workbook: the fix, by file name
    with pytest.raises(InputError, match="features.xlsx: got features.xlsx, is not an .xlsx workbook"):
        load_cohort(tmp_path / "xlsx")
