"""CT studies added to a cohort folder by their subjects' ids: a cohort built from MEDS events gets its CT.

A hospital exports its CTs one study per patient, named by the patient's research id: ``<id>.nii.gz``, ``<id>.nii``,
``<id>.zip`` (a zipped DICOM series), ``<id>.dcm`` (one multi-frame file) or a folder ``<id>/`` of DICOM files.
:func:`attach_studies` copies each study whose name is a subject id of the cohort into ``<cohort>/studies/`` and
writes the ``study`` column of cohort.csv (relative to the folder, as the cohort format asks); a subject without a
study keeps an empty cell, read as a missing modality. Nothing of the studies is decoded here: training reads every
study first and names each one it cannot read.

Studies exported under other names (accession numbers, a PACS's own ids) come with a linkage table instead:
``studies.csv`` in the same folder, two columns ``subject_id,study``, each row naming the file or folder of that
subject's study in the folder (:func:`linked_entries`). With the table, the file names no longer matter; without it,
a name is matched to a subject id exactly (``P007`` is not ``7``).

>>> study_id(Path("10000032.nii.gz")), study_id(Path("P7.zip")), study_id(Path("P7")), study_id(Path("notes.txt"))
('10000032', 'P7', 'P7', None)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from core.errors import InputError

SUFFIXES = (".nii.gz", ".nii", ".zip", ".dcm")  # the study files named by a subject id (longest suffix first)
FOLDER = "studies"
NAMING = ("name each study by its subject's id: <id>.nii.gz, <id>.nii, <id>.zip (a DICOM series), <id>.dcm or a "
          "folder <id>/ of DICOM files; or add studies.csv with columns subject_id,study naming each subject's file")
LINKS = "studies.csv"  # the optional linkage table: subject_id,study (a file or folder name in the studies folder)


def study_id(entry: Path) -> str | None:
    """The subject id that a study file or folder names, or None for anything else (hidden files, notes)."""
    name = Path(entry).name
    if name.startswith(".") or name.startswith("__"):
        return None
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name if "." not in name or Path(entry).is_dir() else None


def linked_entries(studies_dir: Path) -> dict[str, Path]:
    """Subject id -> its study in ``studies_dir``, read from the folder's linkage table ``studies.csv``. Refused
    (``InputError`` naming the row): a table without the two columns, a study that is not a plain file or folder
    directly in ``studies_dir`` (no paths, no links), a subject named twice, a study named for two subjects."""
    where = f"{LINKS} of {studies_dir.name}"
    try:
        table = pd.read_csv(studies_dir / LINKS, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(where, LINKS, f"cannot be read as CSV ({str(err).splitlines()[0][:120]})",
                         "write it as CSV with a header row: subject_id,study") from None
    missing = [c for c in ("subject_id", "study") if c not in table.columns]
    if missing:
        raise InputError(where, ", ".join(table.columns[:5]) or "no columns", f"has no column {', '.join(missing)}",
                         "write two columns, subject_id,study: the subject's id and its study's file or folder name")
    found: dict[str, Path] = {}
    taken: dict[str, str] = {}
    for row, (sid, name) in enumerate(zip(table["subject_id"].str.strip(), table["study"].str.strip()), start=2):
        if not sid or not name:
            continue  # a subject without a study: read from its EHR only
        entry = studies_dir / name
        if Path(name).name != name or name in (".", "..") or entry.is_symlink() \
                or not (entry.is_file() or entry.is_dir()):
            raise InputError(f"{where}, row {row}", name[:80], "is not a file or folder directly in the studies folder",
                             "name the study's file or folder as it lies beside studies.csv (no paths, no links)")
        if sid in found:
            raise InputError(f"{where}, row {row}", sid, "names a second study of this subject",
                             "keep one study per subject (one row each)")
        if name in taken:
            raise InputError(f"{where}, row {row}", name, f"is already the study of subject {taken[name]}",
                             "give each subject its own study")
        found[sid], taken[name] = entry, sid
    return found


def _linked(studies_dir: Path) -> bool:
    return (studies_dir / LINKS).is_file() and not (studies_dir / LINKS).is_symlink()


def _entries(studies_dir: Path) -> dict[str, Path]:
    """Subject id -> its study in ``studies_dir`` (one level: a folder of one study per subject), by the linkage table
    when the folder has one, else by the names."""
    if not studies_dir.is_dir():
        raise InputError("--studies", str(studies_dir), "is not a folder", f"pass the folder of the studies; {NAMING}")
    if _linked(studies_dir):
        return linked_entries(studies_dir)
    found: dict[str, Path] = {}
    for entry in sorted(studies_dir.iterdir()):
        if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
            continue  # a link could point anywhere on the server
        sid = study_id(entry)
        if sid is None:
            continue
        if sid in found:
            raise InputError("--studies", f"{found[sid].name} and {entry.name}", f"are two studies of subject {sid}",
                             "keep one study per subject (or add the other as its own cohort)")
        found[sid] = entry
    return found


def attach_studies(cohort_dir: Path, studies_dir: Path,
                   progress: Callable[[float, str], None] | None = None, *, move: bool = False) -> dict[str, object]:
    """Copy the studies of ``studies_dir`` named by a subject id of ``cohort_dir``'s cohort.csv (or linked to one by
    the folder's ``studies.csv``) into
    ``cohort_dir/studies`` (``move``: moved instead, for a folder that is the caller's to give away, such as an
    unpacked upload: no second copy on disk, no time copying) and write cohort.csv's ``study`` column (when none matches and ``studies_dir`` holds one
    folder only, that folder's studies: a zipped folder of studies unpacks so). Returns ``{"studies": matched,
    "without_study": subjects left without one, "unused": names of studies that match no subject}``; refused
    (``InputError``) when no study matches, when cohort.csv already names studies, and for two studies of one
    subject."""
    cohort_dir, studies_dir = Path(cohort_dir), Path(studies_dir)
    table = pd.read_csv(cohort_dir / "cohort.csv", dtype=str, keep_default_na=False)  # written back cell for cell
    if "study" in table.columns:
        raise InputError("cohort.csv", "study", "already names a study per subject", "build the cohort anew to add studies")
    entries = _entries(studies_dir)
    ids = table["subject_id"]
    matched = [sid for sid in ids if sid in entries]
    inner = [p for p in studies_dir.iterdir() if p.is_dir() and not p.is_symlink() and study_id(p) is not None]
    if not matched and not _linked(studies_dir) and len(entries) == 1 and len(inner) == 1:  # a zipped folder of the studies: look inside it
        studies_dir = inner[0]
        entries = _entries(studies_dir)
        matched = [sid for sid in ids if sid in entries]
    if not matched:
        seen = ", ".join(list(entries)[:3]) or "no study file or folder"
        what = (f"has a {LINKS} that names no subject id of the cohort (ids there: {seen}" if _linked(studies_dir)
                else f"holds no study named by a subject id of the cohort (names seen: {seen}")
        raise InputError("--studies", str(studies_dir.name), f"{what}; subject ids such as {', '.join(ids.head(3))})",
                         NAMING)
    target = cohort_dir / FOLDER
    target.mkdir(mode=0o700, exist_ok=False)
    report = progress or (lambda fraction, label: None)
    for i, sid in enumerate(matched):
        report(i / len(matched), f"{'moving' if move else 'copying'} study {i + 1} of {len(matched)}")
        src = entries[sid]
        if move and not src.is_symlink() and not (src.is_dir() and any(p.is_symlink() for p in src.rglob("*"))):
            shutil.move(src, target / src.name)
        elif src.is_dir():
            shutil.copytree(src, target / src.name,  # a link inside could point anywhere on the server: left out
                            ignore=lambda folder, names: [n for n in names if (Path(folder) / n).is_symlink()])
        else:
            shutil.copy2(src, target / src.name)
    table["study"] = [f"{FOLDER}/{entries[sid].name}" if sid in entries else "" for sid in ids]
    tmp = cohort_dir / ".cohort.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(cohort_dir / "cohort.csv")
    report(1.0, "studies added")
    unused = sorted(sid for sid in entries if sid not in set(ids))
    return {"studies": len(matched), "without_study": int(len(ids) - len(matched)),
            "unused": [entries[sid].name for sid in unused]}
