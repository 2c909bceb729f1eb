"""Tables as hospitals export them: semicolon (with decimal commas), tab or pipe separated. A semicolon cohort.csv,
features.csv or timeline CSV used to be refused ("no subject_id column", "not a readable CSV file"), or read as one
column."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.io.delimited import sniff_delimiter


def test_sniff() -> None:
    assert sniff_delimiter(b"subject_id,time,code\n1,2,3\n") == ","
    assert sniff_delimiter(b"subject_id;time;code\n1;2,5;3\n") == ";"
    assert sniff_delimiter(b"subject_id\ttime\tcode\n") == "\t"
    assert sniff_delimiter(b"subject_id|time|code\n") == "|"
    assert sniff_delimiter(b'"id;x;y",b,c\n') == ","  # semicolons inside a quoted name do not count
    assert sniff_delimiter(b"subject_id\n1\n") == "," and sniff_delimiter(b"subject_id\n", "\t") == "\t"
    assert sniff_delimiter(b"\xef\xbb\xbfsubject_id;age\n") == ";"  # a byte-order mark, as Excel writes


def test_a_semicolon_cohort_reads_as_the_comma_one(tmp_path: Path) -> None:
    """The demo cohort written as a German-locale spreadsheet saves it (semicolons, decimal commas; the timeline as
    CSV): the same outcomes, features and events as the original."""
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort

    src = write_demo_cohort(tmp_path / "comma", n=12, seed=3, volumes=False)
    events = pd.read_parquet(src / "timeline.parquet")
    events.to_csv(src / "timeline.csv", index=False)
    (src / "timeline.parquet").unlink()
    euro = tmp_path / "semicolon"
    euro.mkdir()
    for name in ("cohort.csv", "features.csv", "timeline.csv"):
        pd.read_csv(src / name).to_csv(euro / name, sep=";", decimal=",", index=False)
    for name in ("features.csv", "timeline.csv"):  # decimal commas in the values, semicolons between fields
        text = (euro / name).read_text()
        assert re.search(r";-?\d+,\d+(;|$)", text, flags=re.M) and "," not in text.splitlines()[0], name
    a, b = load_cohort(src), load_cohort(euro)
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.features, b.features)
    sid = a.ids()[0]
    assert a.events(sid)["numeric_value"].notna().sum() > 3
    pd.testing.assert_frame_equal(a.events(sid).reset_index(drop=True), b.events(sid).reset_index(drop=True))


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_uploaded_timeline_and_features_in_other_separators(sep: str) -> None:
    from core.app.uploads import read_features_bytes
    from core.io.timeline import read_timeline_bytes

    value = "1,5" if sep == ";" else "1.5"
    text = sep.join(["subject_id", "time", "code", "numeric_value"]) + "\n" + sep.join(["7", "2020-01-01", "LAB//X", value])
    events = read_timeline_bytes((text + "\n").encode(), "timeline.csv")
    assert events[["subject_id", "code"]].values.tolist() == [["7", "LAB//X"]]
    assert events["numeric_value"].tolist() == [1.5] and events.attrs["unreadable_values"] == 0
    table = read_features_bytes(f"subject_id{sep}age\nP1{sep}{'61,5' if sep == ';' else '61.5'}\n".encode(), "f.csv")
    assert table.loc["P1", "age"] == 61.5
    # in a comma file a quoted "1,5" is not read as 1.5 (it could be 1,500): counted as unreadable, as before
    comma = read_timeline_bytes(b'subject_id,time,code,numeric_value\n7,2020-01-01,LAB//X,"1,5"\n', "t.csv")
    assert np.isnan(comma["numeric_value"].iloc[0]) and comma.attrs["unreadable_values"] == 1


def test_encodings_of_spreadsheet_exports(tmp_path: Path) -> None:
    """A timeline saved in the Windows code page (cp1252, as a German-locale spreadsheet saves "Übelkeit") was refused
    ("invalid UTF8 data"), and one saved as "Unicode text" (UTF-16, tab separated) read as one column. Both read now,
    from a cohort folder and as uploads; so does a features table."""
    from core.app.uploads import read_features_bytes
    from core.cohort import load_cohort
    from core.io.timeline import read_timeline, read_timeline_bytes

    text = "subject_id;time;code;numeric_value\nP1;2020-01-01;DIAG//Übelkeit;\nP1;2020-01-02;LAB//Kreatinin//mg/dL;1,2\n"
    (tmp_path / "timeline.csv").write_bytes(text.encode("cp1252"))
    pd.DataFrame({"subject_id": ["P1"], "time": [30], "event": [1], "index_time": ["2020-02-01"]}).to_csv(
        tmp_path / "cohort.csv", sep=";", index=False)
    (tmp_path / "features.csv").write_bytes("subject_id;Größe\nP1;1,8\n".encode("cp1252"))
    cohort = load_cohort(tmp_path, for_training=False)
    events = cohort.events("P1")
    assert events["code"].tolist() == ["DIAG//Übelkeit", "LAB//Kreatinin//mg/dL"]
    assert events["numeric_value"].iloc[1] == 1.2 and cohort.features.loc["P1", "Größe"] == 1.8
    assert read_timeline(tmp_path / "timeline.csv", ["P1"])["code"].iloc[0] == "DIAG//Übelkeit"
    unicode_text = "subject_id\ttime\tcode\tnumeric_value\nP1\t2020-01-01\tDIAG//Übelkeit\t\n".encode("utf-16")
    assert read_timeline_bytes(unicode_text, "export.txt")["code"].tolist() == ["DIAG//Übelkeit"]
    assert read_features_bytes("subject_id\tage\nP1\t61.5\n".encode("utf-16"), "f.txt").loc["P1", "age"] == 61.5


def test_index_times_of_cohort_csv_as_written_in_europe(tmp_path: Path) -> None:
    """cohort.csv's index_time was read by pandas alone: 01.02.2020 became January 2, and 13.02.2020 no time at all
    (the subject then had no events: nothing may leak in after an unknown index). They are read as the timelines'
    times now: one day / month order per file, UTC offsets converted; an unreadable cell is an error naming it."""
    from core.cohort import load_cohort
    from core.errors import InputError

    events = "subject_id;time;code\nA;15.01.2020;DX//X\nA;05.02.2020;DX//LATE\nB;10.02.2020;DX//Y\n"
    (tmp_path / "timeline.csv").write_text(events)
    table = pd.DataFrame({"subject_id": ["A", "B", "C"], "time": [30, 40, 50], "event": [1, 0, 1],
                          "index_time": ["01.02.2020", "13.02.2020 08:00", ""]})
    table.to_csv(tmp_path / "cohort.csv", sep=";", index=False)
    cohort = load_cohort(tmp_path, for_training=False)
    assert [str(cohort.index_time(s)) for s in ("A", "B")] == ["2020-02-01 00:00:00", "2020-02-13 08:00:00"]
    assert cohort.index_time("C") is None
    assert cohort.events("A")["code"].tolist() == ["DX//X"] and cohort.events("B")["code"].tolist() == ["DX//Y"]
    table.assign(index_time=["2020-02-01T10:00:00+02:00", "2020-02-13", "soon"]).to_csv(tmp_path / "cohort.csv", index=False)
    with pytest.raises(InputError, match=r"index_time: got soon, is not a date/time \(1 such cells in cohort.csv\); "
                                         r"fix: write the index_time cells as ISO 8601"):
        load_cohort(tmp_path, for_training=False)
    table.assign(index_time=["2020-02-01T10:00:00+02:00", "2020-02-13", ""]).to_csv(tmp_path / "cohort.csv", index=False)
    assert str(load_cohort(tmp_path, for_training=False).index_time("A")) == "2020-02-01 08:00:00"
