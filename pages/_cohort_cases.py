"""Patients of the user's own cohorts in Case review (``core.app.user_cohorts``): the picker's entries and the cohort.

A case of this kind is ``(source, subject id)`` with ``source = "cohort:<folder name>"``: the subject id is the
cohort's own, so everything that reads a demo case (the cohort's rows, its study, its timeline) reads it the same
way, from a cohort of that one patient. What differs is privacy: the cohort is the user's, so it is resolved
through this user's list on every use, and its decoded studies, predictions and maps stay in the user's folder
(``pages/_model_views``, ``pages/_viewer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.app import user_cohorts
from core.app import workspace as workspaces
from pages import _state as K
from pages._memo import memo
from pages._session import user_id

PREFIX = "cohort:"
MAX_LISTED = 1000  # patients of one cohort in the picker: test first, then val, then train
SPLIT_ORDER = ("test", "val", "train")


def source_of(name: str) -> str:
    """The case source of the user's cohort folder ``name``."""
    return PREFIX + name


def is_cohort(source: str) -> bool:
    return str(source).startswith(PREFIX)


def audited_patient(source: str, subject_id: str) -> str | None:
    """The subject id the audit log names (as its keyed pseudonym, ``pages._session.audit(patient=)``) for a patient
    of the user's cohorts; None for a demo patient or a saved case (named by its case number)."""
    return str(subject_id) if is_cohort(source) else None


def _dirs() -> tuple[Path, Path]:
    user = user_id()
    return workspaces.user_root(user) / "cohorts", workspaces.user_models_dir(user)


def mine() -> list[user_cohorts.UserCohort]:
    """This user's cohorts whose patients can be reviewed, newest first (read from disk on every page run)."""
    return user_cohorts.reviewable(*_dirs())


def _stamp(path: Path) -> float:
    csv = path / "cohort.csv"
    return csv.stat().st_mtime if csv.exists() else 0.0


def read_table(root: str | Path) -> Any:
    """A cohort folder's cohort.csv, read and checked as ``load_cohort`` reads it (column aliases, the seeded split of
    a table without one), so an id, its split and its outcome are the model's."""
    from core.cohort import validate_outcomes
    from core.io.columns import TEXT_COLUMNS
    from core.io.delimited import read_csv_any

    return validate_outcomes(read_csv_any(Path(root) / "cohort.csv", text_names=TEXT_COLUMNS), for_training=False)


@st.cache_data(show_spinner=False, max_entries=32)
def _ids(root: str, stamp: float) -> list[tuple[str, str]]:
    """(subject id, split) of a cohort's rows (:func:`read_table`), test first."""
    table = read_table(root)
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    table = table.assign(_o=table["split"].map(order).fillna(len(order))).sort_values("_o", kind="stable")
    return [(str(s), str(p)) for s, p in zip(table["subject_id"], table["split"])]


def _patients(path: Path) -> list[tuple[str, str]]:
    """:func:`_ids` of the cohort folder ``path``; none when it was deleted meanwhile (another tab)."""
    try:
        return _ids(str(path), _stamp(path))
    except (OSError, ValueError):  # deleted meanwhile (another tab); a table load_cohort refuses too (InputError)
        return []


def picker_entries(current: Any = None) -> dict[tuple[str, str], str]:
    """{(source, subject id): label} of the patients of this user's cohorts, for Case review's picker: the first
    :data:`MAX_LISTED` of each cohort, and ``current`` (the case under review) where it is a patient past them, found
    with :func:`find_box`."""
    out: dict[tuple[str, str], str] = {}
    listed = mine()
    twice = {c.label for c in listed if sum(o.label == c.label for o in listed) > 1}  # two builds in one minute
    for cohort in listed:
        name = cohort.label + (f" ({cohort.name.rsplit('-', 1)[-1]})" if cohort.label in twice else "")
        source, patients = source_of(cohort.name), _patients(cohort.path)
        shown = patients[:MAX_LISTED] + [p for p in patients[MAX_LISTED:] if current == (source, p[0])]
        for sid, split in shown:
            out[(source, sid)] = f"Your {name}: {sid}" + (f" ({split})" if split else "")
    return out


def unlisted() -> int:
    """How many patients of this user's cohorts the picker leaves out (past :data:`MAX_LISTED` in a cohort)."""
    return sum(max(len(_patients(c.path)) - MAX_LISTED, 0) for c in mine())


def find(subject_id: str) -> tuple[str, str] | None:
    """The case of the patient ``subject_id`` in this user's cohorts, the newest cohort first: as the cohort writes it
    (spaces around it ignored), else the one id that differs from it in capitals only ("ab12" for "AB12"; none where
    two do); None when none holds it."""
    wanted = str(subject_id).strip()
    folded: list[tuple[str, str]] = []
    for cohort in mine():
        for sid, _ in _patients(cohort.path):
            if sid == wanted:
                return source_of(cohort.name), wanted
            if sid.casefold() == wanted.casefold():
                folded.append((source_of(cohort.name), sid))
    return folded[0] if len(folded) == 1 else None


def containing(text: str, limit: int = 10) -> tuple[list[tuple[str, str]], int]:
    """The cases of the patients of this user's cohorts whose id contains ``text`` (capitals ignored): the first
    ``limit`` of them (ids that start with it first, then the shorter, then in order of the id; the newest cohort
    first for one id) and how many there are in all. Offered to pick from, never opened by themselves: a part of an
    id is not the patient."""
    wanted = str(text).strip().casefold()
    hits = [(source_of(c.name), sid) for c in mine() for sid, _ in _patients(c.path) if wanted and wanted in sid.casefold()]
    hits.sort(key=lambda hit: (not hit[1].casefold().startswith(wanted), len(hit[1]), hit[1].casefold()))  # stable
    return hits[:limit], len(hits)


FIND = "_find_patient"  # the text input of find_box
MISSED = "_find_patient_missed"  # the id it found in none of the user's cohorts
ALSO = "_find_patient_also"  # (id, how many other cohorts of the user hold it) of the patient it opened


def _open_found() -> None:
    """find_box's callback (before the page runs, so the picker is drawn on the found case)."""
    wanted = str(st.session_state.get(FIND) or "").strip()
    found = find(wanted) if wanted else None
    st.session_state.pop(MISSED, None)
    st.session_state.pop(ALSO, None)
    if found is None:
        if wanted:
            st.session_state[MISSED] = wanted
        return
    others = sum(any(sid == found[1] for sid, _ in _patients(c.path)) for c in mine()) - 1
    if others:  # the same id in several cohorts (cohorts built from one MEDS file): the newest opened, said so
        st.session_state[ALSO] = (found[1], others)
    set_case(found)
    st.session_state[FIND] = ""


def _open_hit(case: tuple[str, str]) -> None:
    """A button of find_box's list of ids containing the typed text: that patient opens."""
    st.session_state.pop(MISSED, None)
    st.session_state.pop(ALSO, None)
    set_case(case)
    st.session_state[FIND] = ""


def find_box(where: Any) -> None:
    """In ``where``: where a cohort of the user has more patients than the picker lists, a box that opens any of
    them by id (the picker then lists it too); its one-line error names an id that no cohort of theirs holds."""
    hidden = unlisted()
    if not hidden:
        return
    where.text_input("Open a patient of your cohorts by id", key=FIND, on_change=_open_found,
                     placeholder="subject id, as in cohort.csv",
                     help=f"The Case list holds the first {MAX_LISTED:,} patients of each of your cohorts (test split "
                          f"first); {hidden:,} more are opened here by their id. Part of an id lists the ids that "
                          "contain it, to open one.")
    from pages._chrome import md  # typed text shown as text (the page's markdown would build links from it)

    missed = st.session_state.get(MISSED)
    if missed:
        from core.errors import InputError  # its one line shortens a long value

        hits, n = containing(missed)
        if not hits:
            where.error(md(str(InputError("patient id", missed, "is in none of your cohorts",
                                          "type the subject id as cohort.csv writes it"))), icon=":material/person_off:")
        else:  # a part of an id: the patients whose id contains it, to pick from (none is opened by itself)
            where.warning(md(f"No patient of your cohorts has the id {missed[:60]} exactly; {n:,} ids contain it"
                             + (f" (the first {len(hits)} below)" if n > len(hits) else "") + ": open one."),
                          icon=":material/person_search:")
            several = len({source for source, _ in hits}) > 1
            row = where.container(horizontal=True)
            for i, (source, sid) in enumerate(hits):
                row.button(md(sid + (f" ({label(source)})" if several else "")), key=f"{FIND}_hit_{i}",
                           on_click=_open_hit, args=((source, sid),))
    also = st.session_state.get(ALSO)
    if also and st.session_state.get(K.CASE, (None, None))[1] == also[0]:
        where.caption(md(f"{also[0]} is a patient of {also[1] + 1} of your cohorts: the newest is open; the Case list "
                         "names it in the others."))


def folder(source: str) -> Path:
    """The folder of the user's cohort named by ``source`` (an ``InputError`` when it is not one of theirs)."""
    return user_cohorts.resolve(*_dirs(), str(source)[len(PREFIX):])


def cohort(source: str, subject_id: str) -> Any:
    """The patient ``subject_id`` of the user's cohort ``source`` as a cohort of that one patient (its rows of every
    table, its timeline events only: a cohort of millions of events is never held whole), kept in the session's memo
    like any patient data. The folder is checked against this user's list at every use (a few milliseconds)."""
    from core.cohort import load_cohort

    path = folder(source)
    return memo(("user-cohort", source, subject_id, _stamp(path)),
                lambda: load_cohort(path, for_training=False, subjects=[subject_id]))


def label(source: str) -> str:
    """How a page names the cohort: "your MEDS cohort built 28 Nov 18:30"."""
    return label_of(Path(str(source)[len(PREFIX):]))


def label_of(cohort_dir: Path) -> str:
    """The same, of the cohort's folder."""
    return f"your {user_cohorts.describe(Path(cohort_dir).name)}"


def holds(source: str, subject_id: str) -> bool:
    """Whether ``subject_id`` is still a patient of the user's cohort ``source`` (not deleted meanwhile)."""
    try:
        path = folder(source)
    except ValueError:
        return False
    return any(sid == subject_id for sid, _ in _patients(path))


def of_folder(cohort_dir: Path) -> user_cohorts.UserCohort | None:
    """This user's reviewable cohort whose folder is ``cohort_dir``, else None (the demo, another folder)."""
    return next((c for c in mine() if c.path.resolve() == Path(cohort_dir).resolve()), None)


def columns(cohort_dir: Path) -> list[str]:
    """The columns a patient of the user's cohort ``cohort_dir`` can be grouped by (``Cohort.column_names``, read from
    a cohort of its first patient: the tables' columns without their rows); none for another folder."""
    found = of_folder(cohort_dir)
    patients = _patients(found.path) if found is not None else []
    return cohort(source_of(found.name), patients[0][0]).column_names() if found is not None and patients else []


def set_case(case: tuple[str, str]) -> None:
    """Make ``case`` the one under review: Case review's picker value and the one its pages keep (a callback's, or
    before a page switch)."""
    st.session_state[K.CASE] = case
    st.session_state[K.SAVED_VIEWER] = {**st.session_state.get(K.SAVED_VIEWER, {}), K.CASE: case}


def open_in_review(case: tuple[str, str]) -> None:
    """:func:`set_case`, then go to Case review (the picker lists it: :func:`picker_entries`)."""
    set_case(case)
    st.switch_page("pages/case_review.py")


def review_button(cohort_dir: Path) -> None:
    """For a model trained on one of the user's cohorts (Cohort & models): a button that opens the cohort's first
    test patient in Case review, where the picker lists the others; nothing for another cohort (the demo)."""
    found = of_folder(cohort_dir)
    if found is None:
        return
    tests = [sid for sid, split in _patients(found.path) if split == "test"]
    if tests and st.button(f"Review its test patients in Case review ({len(tests)})", icon=":material/person_search:",
                           key=f"review_cohort_{found.name}",
                           help="Opens the first patient of the test split this model was evaluated on; the Case "
                                "picker lists the others (\"Your ...: <id> (test)\")."):
        open_in_review((source_of(found.name), tests[0]))
