"""DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile, as data.

The attributes and their Basic Profile actions come from Table E.1-1 of the
standard, generated from a machine-readable copy of the table (not typed by
hand): ``assets/deid/annex_e_<edition>.json``, written by
``scripts/build_annex_e_table.py`` (its edition, source package and SHA-256
are in the file and in every ``DeidReport``). ``ANNEX_E`` lists, per attribute,
the action the standard gives and the action this project applies when it has
to pick one of a composite action:

- ``X`` remove, ``Z`` replace with an empty value, ``D`` replace with a dummy
  value, ``U`` replace a UID (consistently within the study), ``K`` keep.
- Composite actions of the standard (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``) depend
  on the attribute's type in the IOD; we resolve them to ``Z`` (empty, valid
  for type 2 and 3) or ``X`` as shown in the ``action`` column; ``D`` becomes
  ``X`` (no invented values) except for PatientName/PatientID (the pseudonym)
  and UIDs (``U``).
- ``X/Z/U*`` (reference sequences) keeps the sequence and replaces the UIDs
  inside it, so references between the cleaned instances stay valid: ``K``.

``core.phi.project_rules`` holds the project's resolution for attributes where it
differs from the rule above, and a few attributes the project removes beyond
the table (marked ``"(project)"`` as their standard action).

``kind`` is the class a finding of that attribute gets in detection:
identifier, date, free_text, uid (plus private, overlay, pixel_risk that are
decided by tag or by content, not by this table).

Rules by value representation and tag (``rule_for``) complete the table:
every person name (VR PN), every date/time (DA, DT, TM), every instance UID
(UI that is not a class, transfer syntax or other definitional UID), private
tags, overlays (60xx) and curves (50xx).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_has_tag, dictionary_keyword
from pydicom.tag import BaseTag

from core.phi.project_rules import PROJECT_CHOICES as _PROJECT_CHOICES

TABLE_EDITION = "2026c"
TABLE_PATH = Path(__file__).resolve().parents[2] / "assets" / "deid" / f"annex_e_{TABLE_EDITION}.json"


def _load_table(path: Path = TABLE_PATH) -> dict[str, object]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RuntimeError(f"PS3.15 table {path} cannot be read ({err}); regenerate it with scripts/build_annex_e_table.py") from None
    if table.get("edition") != TABLE_EDITION or not table.get("rows"):
        raise RuntimeError(f"PS3.15 table {path} is not edition {TABLE_EDITION}; regenerate it with scripts/build_annex_e_table.py")
    return table


TABLE = _load_table()
_SOURCE = TABLE["source"]  # type: ignore[index]
PROFILE_NAME = (
    f"DICOM PS3.15 {TABLE_EDITION} Table E.1-1 basic profile "
    f"({TABLE['n_rows']} attributes; generated from {_SOURCE['package']} {_SOURCE['version']})"  # type: ignore[index]
)

_FREE_TEXT_NAME = re.compile(r"Description|Comment|Text|Label|Reason|Note|Remark|Impression|Annotation|Findings|Interpretation|History|Document", re.I)


def _camel(name: str) -> str:
    """A keyword for an attribute newer than pydicom's dictionary ("Principal Diagnosis Code Sequence" -> ...)."""
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", name) if w)


def _default_resolution(standard: str, vr: str, name: str, keyword: str) -> tuple[str, str]:
    """(applied action, kind) for a generated row the project has no own choice for."""
    if vr in ("DA", "DT", "TM"):
        kind = "date"
    elif vr == "UI" or standard in ("U", "X/Z/U*"):
        kind = "uid"
    elif vr in ("LT", "ST", "UT") or _FREE_TEXT_NAME.search(name or keyword):
        kind = "free_text"
    else:
        kind = "identifier"
    if standard == "X/Z/U*":
        return "K", kind
    if standard == "U" or (vr == "UI" and "D" in standard.split("/")):
        return "U", "uid"
    if standard in ("Z", "Z/D"):
        return "Z", kind
    return "X", kind


def _build_annex_e() -> tuple[tuple[tuple[str, str, str, str], ...], dict[int, str]]:
    choices = {kw: (applied, kind) for kw, _old, applied, kind in _PROJECT_CHOICES}
    rows: list[tuple[str, str, str, str]] = []
    by_tag: dict[int, str] = {}
    for row in TABLE["rows"]:  # type: ignore[union-attr]
        keyword = row["keyword"] or _camel(row["name"]) or f"Tag{row['tag']}"
        standard = row["action"]
        applied, kind = choices.get(keyword) or _default_resolution(standard, row.get("vr", ""), row["name"], keyword)
        rows.append((keyword, standard, applied, kind))
        by_tag[int(row["tag"], 16)] = keyword
    known = {r[0] for r in rows}
    rows += [(kw, "(project)", applied, kind) for kw, _old, applied, kind in _PROJECT_CHOICES if kw not in known]
    return tuple(rows), by_tag


# (keyword, standard action as Table E.1-1 gives it, applied action, kind)
ANNEX_E, TAG_KEYWORDS = _build_annex_e()


@dataclass(frozen=True)
class Rule:
    """What the profile does with one attribute."""

    keyword: str
    standard: str  # the action as PS3.15 table E.1-1 gives it
    action: str  # the action applied here: X, Z, D, U or K
    kind: str  # finding class


RULES: dict[str, Rule] = {kw: Rule(kw, std, act, kind) for kw, std, act, kind in ANNEX_E}
RULES_BY_TAG: dict[int, Rule] = {tag: RULES[kw] for tag, kw in TAG_KEYWORDS.items()}

# UI attributes that name a definition (a class, a transfer syntax, a coding
# scheme), not an instance: never replaced.
DEFINITIONAL_UID_SUFFIXES = ("ClassUID", "SOPClassesInStudy", "SOPClassesInSeries", "SOPClassesSupported", "TransferSyntaxUID")
DEFINITIONAL_UID_KEYWORDS = frozenset(
    {
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
        "HomeCommunityID",
        "RepositoryUniqueID",
        "RetrieveLocationUID",
        "SelectorUIValue",
        "ImplementationClassUID",
    }
)
DICOM_ROOT = "1.2.840.10008."  # UIDs defined by the standard itself (classes, syntaxes, ...)

# Code sequence items written into DeidentificationMethodCodeSequence (CID 7050).
METHOD_CODES: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain UIDs Option",
}

# What a declared option lets an attribute keep (used to judge already
# de-identified data): option code -> kinds or keywords it retains.
PATIENT_CHARACTERISTICS = frozenset({"PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "SmokingStatus", "PregnancyStatus", "PatientSexNeutered"})
DEVICE_IDENTITY = frozenset({"StationName", "DeviceSerialNumber", "DeviceUID", "DetectorID", "GantryID", "GeneratorID", "CassetteID", "PlateID", "SourceSerialNumber"})


def is_overlay_or_curve(tag: BaseTag) -> bool:
    """Repeating groups 60xx (overlays) and 50xx (curves, retired)."""
    group = tag.group
    return group % 2 == 0 and (0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF)


# Elements of an overlay (60xx) or curve (50xx) group that hold content that
# can identify (the bitmap / curve data, comments, descriptions, labels); the
# rest is geometry. Detection reports these; de-identification drops the group.
OVERLAY_CONTENT_ELEMENTS = frozenset({0x3000, 0x4000, 0x0022, 0x1500, 0x2500})


def is_overlay_content(tag: BaseTag) -> bool:
    return is_overlay_or_curve(tag) and tag.element in OVERLAY_CONTENT_ELEMENTS


def is_definitional_uid(keyword: str, value: str) -> bool:
    """A class / syntax / coding-scheme UID, or one under the DICOM root: kept."""
    if value.startswith(DICOM_ROOT):
        return True
    return keyword in DEFINITIONAL_UID_KEYWORDS or keyword.endswith(DEFINITIONAL_UID_SUFFIXES)


def rule_for(tag: BaseTag, vr: str, keyword: str) -> Rule | None:
    """The rule for one element, or None when the profile keeps it as is.

    Order: the Annex E table by keyword, then rules by tag (private,
    overlays/curves, unknown public tags), then by value representation.
    """
    if not tag.is_private:
        by_tag = RULES_BY_TAG.get(int(tag))
        if by_tag is not None:
            return by_tag
    if keyword in RULES:
        return RULES[keyword]
    if tag.is_private:
        return Rule(keyword or "PrivateTags", "X", "X", "private")
    if is_overlay_or_curve(tag):
        return Rule(keyword or dictionary_keyword_safe(tag), "X", "X", "overlay")
    if tag.element == 0 and tag.group != 0x0002:
        return Rule(keyword or "GroupLength", "X", "X", "free_text")  # group lengths (retired): dropped
    if not keyword and not dictionary_has_tag(tag):
        return Rule("UnknownAttribute", "X", "X", "free_text")
    if vr == "PN":
        return Rule(keyword, "X", "X", "identifier")
    if vr in ("DA", "DT", "TM"):
        return Rule(keyword, "K", "Z", "date")
    if vr == "UI":
        return Rule(keyword, "U", "U", "uid")
    return None


def dictionary_keyword_safe(tag: BaseTag) -> str:
    try:
        return dictionary_keyword(tag) or f"Tag{tag.group:04X}{tag.element:04X}"
    except KeyError:
        return f"Tag{tag.group:04X}{tag.element:04X}"

