"""A cohort's features.csv: numbers, and categories written as text.

Hospital exports write a category as text (sex F / M, smoker yes / no, stage II / III). A text column of features.csv
with at most ``MAX_LEVELS`` distinct values is read as one 1 / 0 column per value, named ``<column>_<value>``: the
value lower-cased without spaces or punctuation, a sex letter or yes / no word written out (F and female are one
level, ``sex_female``; :func:`canon`). A blank cell is missing in every one of them. A text column with more values
(a comment, a name) is refused: it is no category.

A model column ``<column>_<value>`` is read from the text itself (:func:`category_indicators`), so a cohort to score
whose features.csv holds only some of the values (one patient, sex F) still gives the model's other columns their 0
(``sex_male``), not a missing value; and a table that already holds the 1 / 0 columns is read as it is.

>>> table, text = read_features_frame(pd.DataFrame({"subject_id": ["P1", "P2"], "age": [61.5, 70], "sex": ["F", "M"]}))
>>> table.loc["P1"].to_dict(), list(text.columns)
({'age': 61.5, 'sex_female': 1.0, 'sex_male': 0.0}, ['sex'])
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.io.columns import FEATURE_ALIASES, SUBJECT_ALIASES, column_key, rename_aliases
from core.io.delimited import read_csv_any

MAX_LEVELS = 20  # distinct values of a text column read as a category
FEATURE_FILES = ("features.csv", "features.xlsx")  # a cohort folder's features table, the first one present
MAX_WORKBOOK_BYTES = 50 << 20
# a category written as a letter or a word -> the level a model column names ("sex_female"); groups of levels that
# exclude each other, so a value of one reads 0 in an indicator of another
LEVEL_WORDS = {"f": "female", "w": "female", "woman": "female", "m": "male", "man": "male", "y": "yes", "true": "yes",
               "n": "no", "false": "no"}
LEVEL_GROUPS = ({"female", "male"}, {"yes", "no"})


def canon(text: object, column: object = None) -> str:
    """A category level as a model column names it: :func:`column_key`, a sex letter or yes / no word written out,
    and without the ``column``'s own name in front ("Stage II" in a stage column is "ii", as "II" is).

    >>> canon("F"), canon("Stage II", "stage"), canon("II", "Stage"), canon("Grade 2", "grade"), canon("smoker", "smoker")
    ('female', 'ii', 'ii', '2', 'smoker')
    """
    key = column_key(text)
    base = column_key(column) if column is not None else ""
    if base and key.startswith(base) and len(key) > len(base):
        key = key[len(base):]
    return LEVEL_WORDS.get(key, key)


def name_list(values: Sequence[object], k: int = 3) -> str:
    """The first ``k`` of ``values`` for a message, and ", ..." when there are more."""
    return ", ".join(map(str, list(values)[:k])) + (", ..." if len(values) > k else "")


def read_features_file(path: Path) -> pd.DataFrame:
    """A cohort's features table as written: features.csv (``core.io.delimited``) or the first sheet with a
    subject_id header of features.xlsx (``core.io.workbook``, checked as an upload is)."""
    if path.suffix.lower() != ".xlsx":
        return read_csv_any(path, text_names=SUBJECT_ALIASES)  # 007 stays 007, as in the timeline
    if path.stat().st_size > MAX_WORKBOOK_BYTES:
        raise InputError(path.name, str(path), f"is {path.stat().st_size} bytes (limit {MAX_WORKBOOK_BYTES})",
                         "save the sheet as features.csv")
    return read_features_member(path.read_bytes(), path.name)


def read_features_member(data: bytes, name: str) -> pd.DataFrame:
    """:func:`read_features_file` for a table held in memory (a cohort zip not yet unpacked); ``name`` (features.csv
    or features.xlsx) picks the reader."""
    if not name.lower().endswith(".xlsx"):
        return read_csv_any(io.BytesIO(data), text_names=SUBJECT_ALIASES)
    from core.io.workbook import read_workbook

    if len(data) > MAX_WORKBOOK_BYTES:
        raise InputError(name, name, f"is {len(data)} bytes (limit {MAX_WORKBOOK_BYTES})", "save the sheet as features.csv")
    return read_workbook(data, name, name)


def features_table(df: pd.DataFrame, source: str = "features.csv") -> pd.DataFrame:
    """A features table (``subject_id`` + numeric columns) indexed by subject id, as floats (inf read as missing).

    >>> features_table(pd.DataFrame({"subject_id": [" P1"], "age": ["61.5"], "bnp": [None]})).loc["P1"].tolist()
    [61.5, nan]
    """
    df = rename_aliases(df, FEATURE_ALIASES, source)
    if "subject_id" not in df.columns:
        raise InputError(source, ", ".join(map(str, df.columns[:6])), "no subject_id column", "add a subject_id column")
    df = df.copy()
    df["subject_id"] = df["subject_id"].astype(str).str.strip()
    df = df.set_index("subject_id")
    numeric = df.apply(pd.to_numeric, errors="coerce")
    non_numeric = text_columns(df, numeric)
    if non_numeric:
        raise InputError(source, name_list(non_numeric), "non-numeric column(s)",
                         "one-hot encode categorical columns or drop them")
    table = numeric.astype(float).replace([np.inf, -np.inf], np.nan)
    # cells of a number column that are no number (<0.5, n.d.): read as missing, and said so
    cells: dict[str, dict[str, str]] = {}  # subject -> {column: the text}, for a per-subject warning
    candidates = df.notna() & numeric.isna()
    for c in candidates.columns[candidates.any().to_numpy()]:
        for sid, v in df.loc[candidates[c], c].items():
            if str(v).strip():
                cells.setdefault(str(sid), {})[str(c)] = str(v).strip()
    counts: dict[str, int] = {}
    for row in cells.values():
        for c in row:
            counts[c] = counts.get(c, 0) + 1
    table.attrs["unreadable"], table.attrs["unreadable_cells"] = counts, cells
    table.attrs["unreadable_examples"] = list(dict.fromkeys(v for row in cells.values() for v in row.values()))[:3]
    return table


def unreadable_note(table: pd.DataFrame | None, source: str = "features.csv") -> str | None:
    """One line on the cells of ``table``'s number columns that were no number (:func:`features_table`), or None.

    >>> unreadable_note(features_table(pd.DataFrame({"subject_id": [1, 2], "bnp": ["<50", "310"]})))
    "features.csv: 1 value is not a number and is read as missing (bnp 1; e.g. '<50'): write a value reported beyond a limit as a number (the limit), or leave the cell blank"
    """
    counts = {} if table is None else table.attrs.get("unreadable") or {}
    if not counts:
        return None
    n = sum(counts.values())
    shown = ", ".join(f"{c} {k}" for c, k in sorted(counts.items(), key=lambda kv: -kv[1])[:4])
    examples = ", ".join(repr(v) for v in table.attrs.get("unreadable_examples", []))
    return (f"{source}: {n} value{'s are' if n > 1 else ' is'} not {'numbers' if n > 1 else 'a number'} and "
            f"{'are' if n > 1 else 'is'} read as missing ({shown}{', ...' if len(counts) > 4 else ''}"
            + (f"; e.g. {examples}" if examples else "") + "): write a value reported beyond a limit as a number (the "
            "limit), or leave the cell blank")


def text_columns(frame: pd.DataFrame, numeric: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` with text and not one number (``numeric``: the frame through ``pd.to_numeric``)."""
    return [c for c in frame.columns if numeric[c].isna().all() and frame[c].notna().any()]


def read_features_frame(df: pd.DataFrame, source: str = "features.csv") -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """features.csv read as a cohort reads it: the table of :func:`features_table` with each text category as its
    1 / 0 columns, and the text columns themselves (indexed by subject id; None when there are none) for the model
    columns of values this file does not hold (:func:`with_categories`)."""
    df = rename_aliases(df, FEATURE_ALIASES, source)
    if "subject_id" not in df.columns:
        raise InputError(source, ", ".join(map(str, df.columns[:6])), "no subject_id column", "add a subject_id column")
    ids = df["subject_id"].astype(str).str.strip()
    values = df.drop(columns=["subject_id"]).apply(pd.to_numeric, errors="coerce")
    text = text_columns(df.drop(columns=["subject_id"]), values)
    if not text:
        return features_table(df, source), None
    words = df[text].set_axis(pd.Index(ids, name="subject_id"))
    many = {c: n for c in text if (n := words[c].dropna().map(lambda v, c=c: canon(v, c)).nunique()) > MAX_LEVELS}
    if many:
        raise InputError(f"{source} column", name_list(list(many)), f"has {max(many.values())} distinct text values, "
                         f"not a category (at most {MAX_LEVELS})", "drop the column, or write its values as numbers")
    names = [f"{c}_{level}" for c in text
             for level in sorted(set(words[c].dropna().map(lambda v, c=c: canon(v, c))) - {""})]
    clash = [n for n in names if n in df.columns]
    if clash:
        raise InputError(f"{source} column", name_list(clash), "is both a column and a text column's category",
                         "drop one of them")
    table = features_table(df.drop(columns=text), source)
    indicators, _ = category_indicators(words, text, names)
    out = pd.concat([table, indicators.set_axis(table.index)], axis=1)
    out.attrs = dict(table.attrs, categories={c: [n for n in names if n.startswith(f"{c}_")] for c in text})
    return out, words


def category_indicators(frame: pd.DataFrame, text_columns: Sequence[object],
                        names: Sequence[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The 1 / 0 columns of ``names`` that a table holds as text ("sex" F / M for sex_female; "smoker" yes / no for
    smoker_yes), and {model column: text column}. A model column ``<base>_<level>`` is read from the text column named
    ``base`` (in case, spaces or punctuation only otherwise): a cell naming ``level`` (or its letter: F, M, W, Y, N;
    true / false) reads 1, one naming another level of the same kind (a level of another model column of that base,
    male beside female, no beside yes) reads 0, and anything else (blank, "unknown", "U") is missing. A name the table
    already holds is left alone.

    >>> t = pd.DataFrame({"sex": ["F", "m", "U", None], "Smoker": ["yes", "No", "", "y"]})
    >>> out, used = category_indicators(t, ["sex", "Smoker"], ["age", "sex_female", "smoker_yes"])
    >>> used, out["sex_female"].tolist(), out["smoker_yes"].tolist()
    ({'sex_female': 'sex', 'smoker_yes': 'Smoker'}, [1.0, 0.0, nan, nan], [1.0, 0.0, nan, 1.0])
    """
    by_key = {column_key(c): c for c in text_columns}
    bases: dict[object, list[tuple[str, str]]] = {}  # text column -> [(model column, level)]
    for name in names:
        if name in frame.columns:
            continue
        for cut in [i for i, ch in enumerate(name) if ch == "_"]:
            col = by_key.get(column_key(name[:cut]))
            if col is not None and canon(name[cut + 1:]):
                bases.setdefault(col, []).append((name, canon(name[cut + 1:])))
                break
    out, used = {}, {}
    for col, targets in bases.items():
        levels = frame[col].map(lambda v, col=col: "" if pd.isna(v) else canon(v, col))
        # as written too: a model from before the column's name was cut from its levels has stage_stageii
        written = frame[col].map(lambda v: "" if pd.isna(v) else canon(v))
        known = {level for _, level in targets}
        for _, level in targets:
            known |= next((g for g in LEVEL_GROUPS if level in g), set())
        for name, level in targets:
            hit = (levels == level) | (written == level)
            other = (levels.isin(known - {level}) | written.isin(known - {level})) & ~hit
            indicator = np.where(hit, 1.0, np.where(other, 0.0, np.nan))
            if np.isfinite(indicator).any():
                out[name], used[name] = indicator, str(col)
    return pd.DataFrame(out, index=frame.index), used


def with_categories(frame: pd.DataFrame, text: pd.DataFrame | None, names: Sequence[str]) -> pd.DataFrame:
    """``frame`` (features rows by subject id) with the columns of ``names`` it lacks read from the text columns
    ``text`` (same index) where they name a category (:func:`category_indicators`)."""
    absent = [n for n in names if n not in frame.columns]
    if text is None or not absent:
        return frame
    # every model column of a text column is passed, so the levels this file holds (stage_iii) read 0 in the others
    derived, _ = category_indicators(text.reindex(frame.index), list(text.columns), list(names))
    derived = derived[[n for n in derived.columns if n in absent]]
    return pd.concat([frame, derived], axis=1) if len(derived.columns) else frame


def feature_notes(table: pd.DataFrame | None, source: str = "features.csv") -> list[str]:
    """What a model's card and ``train`` say about how features.csv was read: its text categories' 1 / 0 columns
    (:func:`read_features_frame`) and cells that were no number (:func:`unreadable_note`)."""
    categories = {} if table is None else table.attrs.get("categories") or {}
    out = [f"{source}: text categories read as 1 / 0 columns: " + "; ".join(
        f"{c} ({', '.join(names)})" for c, names in categories.items())] if categories else []
    note = unreadable_note(table, source)
    return out + ([note] if note else [])


BIRTH_CODE = "MEDS_BIRTH"
SEX_PREFIXES = ("GENDER//", "SEX//")  # MEDS ETLs write the recorded sex as GENDER//F, GENDER//M
AGE_KEYS = ("age", "ageyears")


def timeline_demographics(events: pd.DataFrame, index_time: pd.Timestamp | None,
                          names: Sequence[str]) -> dict[str, float]:
    """The columns of ``names`` that a MEDS timeline gives by convention: age in years at ``index_time`` from
    ``MEDS_BIRTH`` (a column named age or age_years), and sex as the 1 / 0 columns of a sex or gender text
    (sex_female from ``GENDER//F``; :func:`category_indicators`), the last such code at or before the index time or
    without a time (a static code, as MEDS writes it).

    >>> ev = pd.DataFrame({"time": pd.to_datetime(["1950-07-01", "2020-01-01", "2020-01-02"]),
    ...                    "code": ["MEDS_BIRTH", "GENDER//F", "LAB//X"]})
    >>> timeline_demographics(ev, pd.Timestamp("2020-07-01"), ["age", "sex_female", "last_bnp"])
    {'age': 70.0, 'sex_female': 1.0}
    """
    if events is None or events.empty:
        return {}
    codes = events["code"].astype(str)
    times = pd.to_datetime(events["time"])
    # a static code (MEDS writes GENDER with no time) holds at any time
    before = (times <= index_time) | times.isna() if index_time is not None else pd.Series(True, index=events.index)
    out: dict[str, float] = {}
    age = next((n for n in names if column_key(n) in AGE_KEYS), None)
    births = times[codes == BIRTH_CODE].dropna()
    if age is not None and index_time is not None and len(births) and births.min() <= pd.Timestamp(index_time):
        # a birth after the index date is no age: the timeline's dates and the index date do not overlap (a study
        # date shifted by de-identification beside an unshifted timeline); the age is then left missing
        out[age] = round((pd.Timestamp(index_time) - births.min()).total_seconds() / (86400.0 * 365.25), 2)
    sex = events[codes.str.upper().str.startswith(SEX_PREFIXES) & before.to_numpy()]
    if len(sex):
        level = str(sex.sort_values("time", kind="stable")["code"].iloc[-1]).split("//", 1)[1]
        words = pd.DataFrame({"sex": [level], "gender": [level]})
        found, _ = category_indicators(words, ["sex", "gender"], [n for n in names if n not in out])
        out.update({n: float(v) for n, v in found.iloc[0].items() if pd.notna(v)})
    return out


def timeline_columns(names: Sequence[str]) -> list[str]:
    """The columns of ``names`` that :func:`timeline_demographics` can answer (age, sex or gender indicators).

    >>> timeline_columns(["age", "sex_female", "Gender M", "last_bnp"])
    ['age', 'sex_female', 'Gender M']
    """
    return [n for n in names if column_key(n) in AGE_KEYS or column_key(n).startswith(("sex", "gender"))]


def filled_from_timeline(frame: pd.DataFrame, names: Sequence[str],
                         timeline: Callable[[str], tuple[pd.DataFrame | None, pd.Timestamp | None]]
                         ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """``frame`` (features by subject id, every subject to read in its index) with the blank age and sex cells of
    the model columns ``names`` read from the subject's MEDS timeline (:func:`timeline_demographics`), and {subject:
    the columns filled}. ``timeline(subject)`` gives the subject's timeline rows and index time. A subject without
    a features row, or a cohort without features.csv, so gets its age and sex as the Upload page fills them; every
    other column stays as it was.

    >>> ev = pd.DataFrame({"time": pd.to_datetime(["1950-07-01", None]), "code": ["MEDS_BIRTH", "GENDER//M"]})
    >>> out, filled = filled_from_timeline(pd.DataFrame({"age": [55.0, None]}, index=["a", "b"]),
    ...                                    ["age", "sex_female"], lambda s: (ev, pd.Timestamp("2020-07-01")))
    >>> out["age"].tolist(), out["sex_female"].tolist(), filled
    ([55.0, 70.0], [0.0, 0.0], {'a': ['sex_female'], 'b': ['age', 'sex_female']})
    """
    columns = timeline_columns(names)
    if not columns:
        return frame, {}
    out = frame.reindex(columns=list(frame.columns) + [c for c in columns if c not in frame.columns])
    blank = out[columns].apply(pd.to_numeric, errors="coerce").isna()
    filled: dict[str, list[str]] = {}
    for sid in out.index[blank.any(axis=1).to_numpy()]:
        events, index_time = timeline(str(sid))
        wanted = [c for c in columns if blank.at[sid, c]]
        found = timeline_demographics(events, index_time, wanted) if events is not None else {}
        for col, value in found.items():
            out.at[sid, col] = value
        if found:
            filled[str(sid)] = [c for c in wanted if c in found]
    return out, filled
