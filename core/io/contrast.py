"""Whether a CT was acquired with contrast, as its header (or the cohort table) records it.

Contrast changes what a CT shows: an enhanced aorta reads 150-400 HU instead of about 40, the liver and the
kidneys brighten, and a model trained on one kind of study reads the other as something it never saw. The
voxels alone do not tell reliably (enhanced vessels and trabecular bone share 150-300 HU without an organ
segmentation), so this module reads the record:

- DICOM: the Contrast/Bolus module, which the CT Image IOD includes when contrast media was used: a
  ``ContrastBolusAgent`` (text, 0018,0010) other than a "none" word, a ``ContrastBolusRoute``, a positive
  ``ContrastBolusVolume`` / ``ContrastBolusTotalDose`` / ``ContrastFlowRate``, a ``ContrastBolusIngredient``,
  a ``ContrastBolusAgentSequence`` item; an enhanced CT's ``ContrastBolusUsageSequence``
  (``ContrastBolusAgentAdministered`` YES or NO, at the top level or in its functional groups). An agent that
  reads "NONE", "NO CONTRAST" and the like, or a usage sequence that says NO, records a study without contrast.
  A header with none of these records nothing: de-identification and many scanners leave the module out of an
  unenhanced study and out of an enhanced one alike, so an absent module is not read as "no contrast".
- A cohort's ``cohort.csv`` may state it per study in a ``contrast`` column (``yes`` / ``no``, ``true`` /
  ``false``, ``1`` / ``0``, ``with`` / ``without``; empty for unknown): NIfTI files carry no such record. The
  column overrides the header.

The record is ``Volume.meta["contrast"]`` (``"yes"`` / ``"no"``, absent when unknown) with
``Volume.meta["contrast_source"]`` naming the element or column that said so; the free text of
``ContrastBolusAgent`` is never copied (it is identifying free text under DICOM PS3.15).

>>> from pydicom.dataset import Dataset
>>> ds = Dataset(); ds.ContrastBolusAgent = "OMNIPAQUE 350"
>>> dicom_contrast(ds)
('yes', 'ContrastBolusAgent')
>>> ds.ContrastBolusAgent = "No contrast"; dicom_contrast(ds)
('no', 'ContrastBolusAgent')
>>> dicom_contrast(Dataset())
('', '')
>>> table_contrast("Yes"), table_contrast(""), table_contrast(0)
('yes', '', 'no')
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from core.errors import InputError

#: ``Volume.meta`` keys of the record
META_KEY, SOURCE_KEY = "contrast", "contrast_source"
#: what the cohort table's column is called, and the source named for it
COLUMN = "contrast"
TABLE_SOURCE = "cohort.csv contrast"
#: the source named for a record the user stated on Upload (a saved case's ``contrast``)
STATED_SOURCE = "stated on Upload"
#: agent texts that record a study without contrast (upper case, whitespace collapsed)
NONE_AGENTS = frozenset({"NONE", "NO", "N", "NIL", "NON", "NULL", "0", "NATIVE", "PLAIN", "UNENHANCED",
                         "NON CONTRAST", "NON-CONTRAST", "NONCONTRAST", "NOT APPLIED", "NOT GIVEN", "WITHOUT"})
_NONE_PREFIXES = ("NO ", "WITHOUT ", "W/O", "NON CONTRAST", "NON-CONTRAST")
_YES_WORDS = frozenset({"YES", "Y", "TRUE", "1", "WITH", "CONTRAST", "ENHANCED", "C+"})
_NO_WORDS = frozenset({"NO", "N", "FALSE", "0", "WITHOUT", "NONE", "NON CONTRAST", "NON-CONTRAST", "UNENHANCED",
                       "C-"})
_POSITIVE = ("ContrastBolusVolume", "ContrastBolusTotalDose", "ContrastFlowRate",
             "ContrastBolusIngredientConcentration")
_TEXT = ("ContrastBolusRoute", "ContrastBolusIngredient")


def _values(value: Any) -> list[Any]:
    """The values of an element's value: several for a multi-valued one (pydicom's MultiValue, checked by name so
    that reading a cohort table does not import pydicom), else one."""
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _words(value: Any) -> str:
    if value is None:
        return ""
    return " ".join(" ".join(str(v) for v in _values(value)).upper().split())


def agent_status(text: str) -> str:
    """``"no"`` for an agent text that names no agent ("NONE", "NO IV CONTRAST", ...), ``"yes"`` for any other
    non-empty text, ``""`` for an empty one.

    >>> agent_status("Isovue 370"), agent_status("no iv contrast"), agent_status("NONIONIC"), agent_status(" ")
    ('yes', 'no', 'yes', '')
    """
    t = _words(text)
    if not t:
        return ""
    return "no" if t in NONE_AGENTS or t.startswith(_NONE_PREFIXES) else "yes"


def _positive(value: Any) -> bool:
    """A number (or any of several, as ContrastFlowRate holds one per injection) above 0."""
    for v in _values(value):
        try:
            if math.isfinite(float(v)) and float(v) > 0:
                return True
        except (TypeError, ValueError):
            continue
    return False


def _usage(ds: Any) -> str:
    """YES / NO of ``ContrastBolusAgentAdministered`` in a ``ContrastBolusUsageSequence`` of ``ds`` ("" if none)."""
    said = {_words(item.get("ContrastBolusAgentAdministered", "")) for item in ds.get("ContrastBolusUsageSequence", None) or []}
    return "yes" if "YES" in said else "no" if "NO" in said else ""


def dicom_contrast(ds: Any) -> tuple[str, str]:
    """``(status, source)`` of one DICOM dataset: ``("yes", element)``, ``("no", element)`` or ``("", "")``
    when its header records nothing about contrast (see the module docstring)."""
    usage = _usage(ds)
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if usage:
            break
        items = ds.get(group, None) or []
        usage = _usage(items[0]) if len(items) else ""
    if usage:
        return usage, "ContrastBolusUsageSequence"
    agent = agent_status(ds.get("ContrastBolusAgent", ""))
    if agent == "no":
        return "no", "ContrastBolusAgent"
    if agent == "yes":
        return "yes", "ContrastBolusAgent"
    if len(ds.get("ContrastBolusAgentSequence", None) or []):
        return "yes", "ContrastBolusAgentSequence"
    for keyword in _TEXT:
        if _words(ds.get(keyword, "")):
            return "yes", keyword
    for keyword in _POSITIVE:
        if _positive(ds.get(keyword, None)):
            return "yes", keyword
    return "", ""


def table_contrast(value: Any, subject: str = "", source: str = "cohort.csv") -> str:
    """A ``contrast`` cell of cohort.csv (or another ``source``) as ``"yes"``, ``"no"`` or ``""`` (empty or NaN:
    unknown).

    >>> table_contrast("maybe", "P1")
    Traceback (most recent call last):
    ...
    core.errors.InputError: contrast (subject 'P1'): got 'maybe', is not a contrast record; fix: write yes or no (or leave the cell empty when unknown) in cohort.csv
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        if math.isnan(float(value)):
            return ""
        if float(value) in (0.0, 1.0):
            return "yes" if float(value) else "no"
    t = _words(value)
    if not t or t == "NAN":
        return ""
    if t in _YES_WORDS:
        return "yes"
    if t in _NO_WORDS:
        return "no"
    where = f" (subject {subject!r})" if subject else ""
    raise InputError(f"contrast{where}", repr(value), "is not a contrast record",
                     f"write yes or no (or leave the cell empty when unknown) in {source}")


def with_record(meta: dict[str, str], status: str, source: str) -> dict[str, str]:
    """``meta`` with the record set (a copy; ``status`` "" leaves it as it is)."""
    if not status:
        return meta
    return {**meta, META_KEY: status, SOURCE_KEY: source}


def describe(meta: dict[str, str]) -> str:
    """"with contrast (ContrastBolusAgent)", "without contrast (cohort.csv contrast)" or "" for a ``Volume.meta``."""
    status = meta.get(META_KEY, "")
    if status not in ("yes", "no"):
        return ""
    return f"{'with' if status == 'yes' else 'without'} contrast ({meta.get(SOURCE_KEY) or 'recorded'})"
