"""CT studies added to a cohort folder by their subjects' ids: a cohort built from MEDS events gets its CT.

A hospital exports its CTs one study per patient, named by the patient's research id: ``<id>.nii.gz``, ``<id>.nii``,
``<id>.zip`` (a zipped DICOM series), ``<id>.dcm`` (one multi-frame file) or a folder ``<id>/`` of DICOM files.
:func:`attach_studies` copies each study whose name is a subject id of the cohort into ``<cohort>/studies/`` and
writes the ``study`` column of cohort.csv (relative to the folder, as the cohort format asks); a subject without a
study keeps an empty cell, read as a missing modality. Nothing of the studies is decoded here: training reads every
study first and names each one it cannot read.

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
          "folder <id>/ of DICOM files")


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


def _entries(studies_dir: Path) -> dict[str, Path]:
    """Subject id -> its study in ``studies_dir`` (one level: a folder of one study per subject)."""
    if not studies_dir.is_dir():
        raise InputError("--studies", str(studies_dir), "is not a folder", f"pass the folder of the studies; {NAMING}")
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
                   progress: Callable[[float, str], None] | None = None) -> dict[str, object]:
    """Copy the studies of ``studies_dir`` named by a subject id of ``cohort_dir``'s cohort.csv into
    ``cohort_dir/studies`` and write cohort.csv's ``study`` column (when none matches and ``studies_dir`` holds one
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
    if not matched and len(entries) == 1 and len(inner) == 1:  # a zipped folder of the studies: look inside it
        entries = _entries(inner[0])
        matched = [sid for sid in ids if sid in entries]
    if not matched:
        seen = ", ".join(list(entries)[:3]) or "no study file or folder"
        raise InputError("--studies", str(studies_dir.name), f"holds no study named by a subject id of the cohort "
                         f"(names seen: {seen}; subject ids such as {', '.join(ids.head(3))})", NAMING)
    target = cohort_dir / FOLDER
    target.mkdir(mode=0o700, exist_ok=False)
    report = progress or (lambda fraction, label: None)
    for i, sid in enumerate(matched):
        report(i / len(matched), f"copying study {i + 1} of {len(matched)}")
        src = entries[sid]
        if src.is_dir():
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
