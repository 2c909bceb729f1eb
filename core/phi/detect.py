"""Find what in a DICOM dataset still identifies the patient (PS3.15 Annex E).

>>> from pydicom.dataset import Dataset
>>> ds = Dataset()
>>> ds.PatientName = "DOE^JANE"
>>> ds.StudyDate = "20240101"
>>> ds.Manufacturer = "ACME"
>>> [(f.keyword, f.kind) for f in find_phi(ds)]
[('StudyDate', 'date'), ('PatientName', 'identifier')]
>>> phi_keywords(ds)
['PatientName']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from core.phi.profile import (
    DEVICE_IDENTITY,
    PATIENT_CHARACTERISTICS,
    Rule,
    is_definitional_uid,
    is_overlay_content,
    rule_for,
)

# Finding classes that make a study "still carry identifying values" (the phi list).
IDENTIFYING_KINDS = frozenset({"identifier", "free_text", "private", "overlay"})
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # PixelData, FloatPixelData, DoubleFloatPixelData
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SECONDARY_MODALITIES = frozenset({"OT", "SC"})
# ImageType values (3rd value on) of screenshots and screen captures
SCREENSHOT_IMAGE_TYPES = frozenset({"SCREEN SAVE", "SCREENSHOT", "SCREEN CAPTURE", "CAPTURE", "VIDEO", "REPORT", "SUMMARY"})
# Text VRs whose kept values are searched for the names of the people in the dataset
TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"})
# the dummies core.deid.clean writes (PS3.15 action D): an original value equal to one is not a leak when it is
# written back (a scanner's ContrastBolusAgent "NONE" is the record de-identification keeps, not identifying text)
CLEANER_DUMMIES = frozenset({"ANONYMOUS", "NONE", "APPLIED"})
# Name parts that are placeholders, not names (never searched for)
PLACEHOLDER_NAMES = frozenset({"ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED", "UNKNOWN", "PATIENT", "NONE", "NAME", "REMOVED", "DEIDENTIFIED", "MR", "MRS", "MS", "DR"})
NAME_PART_MIN = 2
PSEUDONYM_KEYWORDS = frozenset({"PatientName", "PatientID"})  # de-identification writes the pseudonym here


@dataclass(frozen=True)
class PhiFinding:
    """One attribute that still carries (possibly) identifying content."""

    keyword: str  # attribute keyword ("PrivateTags" for private elements)
    tag: str  # "(gggg,eeee)"
    path: str  # e.g. "RequestAttributesSequence[0].RequestingPhysician"
    kind: str  # identifier, date, private, free_text, overlay, pixel_risk, uid
    action: str = ""  # what the basic profile does with it: X, Z, D, U, K ("" for pixel_risk)


def element_values(elem: DataElement) -> list[object]:
    """The values of a (possibly multi-valued) non-sequence element as a list."""
    value = elem.value
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


def is_empty_value(elem: DataElement) -> bool:
    """True when an element carries nothing (empty, blanks, or an empty person name)."""
    value = elem.value
    if value is None:
        return True
    if elem.VR == "SQ":
        return len(value) == 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) == 0 or not bytes(value).strip(b"\x00 ")
    for item in element_values(elem):
        if item is None:
            continue
        text = str(item)
        if elem.VR == "PN":
            text = text.replace("^", "").replace("=", "")
        if text.strip():
            return False
    return True


def declared_options(ds: Dataset) -> frozenset[str]:
    """Codes of the de-identification the dataset declares (empty when none).

    ``PatientIdentityRemoved`` YES implies the basic profile (113100); options
    come from ``DeidentificationMethodCodeSequence``.
    """
    if str(ds.get("PatientIdentityRemoved", "") or "").strip().upper() != "YES":
        return frozenset()
    codes = {"113100"}
    for item in ds.get("DeidentificationMethodCodeSequence", None) or []:
        value = str(item.get("CodeValue", "") or "").strip()
        if value:
            codes.add(value)
    return frozenset(codes)


def _excused(rule: Rule, options: frozenset[str]) -> bool:
    """A value that a declared de-identification legitimately leaves in place.

    U replaces UIDs and D allows a dummy value, so after a declared basic
    profile those values may remain (the caller still flags a dummy that reads
    like a person's name); PatientName and PatientID hold the pseudonym; Z
    attributes must be empty and X attributes gone.
    """
    if not options:
        return False
    if rule.keyword in PATIENT_CHARACTERISTICS and "113108" in options:
        return True
    if rule.keyword in DEVICE_IDENTITY and "113109" in options:
        return True
    if rule.kind == "date":
        return bool(options & {"113106", "113107"}) or rule.action in ("Z", "D")
    if rule.kind == "uid":
        return True
    if rule.kind == "free_text" and "113105" in options:
        return True
    if rule.kind == "private" and "113111" in options:
        return True
    if rule.kind == "overlay" and "113103" in options:
        return True
    if rule.action == "U" or rule.keyword in PSEUDONYM_KEYWORDS:
        return True
    return "D" in rule.standard.split("/")


_NAME_TOKEN = re.compile(r"^[A-Za-z][A-Za-z'\-]+$")


def looks_like_person_name(value: object) -> bool:
    """True for a value such as "DOE^JOHN" or "John Doe": two or more alphabetic name parts.

    Pseudonyms written by de-identification ("ANON-3F2A9C01D4", "SUBJ-0001")
    and placeholders ("ANONYMOUS") are not person names.
    """
    parts = [p for p in re.split(r"[\^=\s]+", str(value or "").strip()) if p]
    names = [p for p in parts if _NAME_TOKEN.match(p) and p.upper() not in PLACEHOLDER_NAMES]
    return len(names) >= 2


def _walk(ds: Dataset, prefix: str, options: frozenset[str]) -> Iterator[PhiFinding]:
    for elem in ds:
        tag = elem.tag
        if tag in PIXEL_TAGS:
            continue
        keyword = elem.keyword or ""
        rule = rule_for(tag, elem.VR, keyword)
        name = keyword or tag_text(tag)
        path = f"{prefix}{name}"
        if rule is not None and rule.kind == "private":
            if not is_empty_value(elem) and not _excused(rule, options):
                yield PhiFinding("PrivateTags", tag_text(tag), path, "private", "X")
            continue  # private sequences are removed whole: no need to look inside
        if elem.VR == "SQ":
            if rule is not None and rule.action != "K" and not is_empty_value(elem) and not _excused(rule, options):
                yield PhiFinding(rule.keyword, tag_text(tag), path, rule.kind, rule.action)
            for index, item in enumerate(elem.value):
                yield from _walk(item, f"{path}[{index}].", options)
            continue
        if rule is None or is_empty_value(elem):
            continue
        if rule.kind == "overlay" and not is_overlay_content(tag):
            continue  # overlay geometry (rows, origin, bits) identifies nobody
        if rule.kind == "uid" and rule.action == "U":
            if all(is_definitional_uid(keyword, str(v)) for v in element_values(elem) if v):
                continue
        if _excused(rule, options) and not any(looks_like_person_name(v) for v in _text_values(elem)):
            continue  # a declared de-identification may leave pseudonyms and dummies, not a person's name
        yield PhiFinding(rule.keyword, tag_text(tag), path, rule.kind, rule.action)


def _pixel_risks(ds: Dataset, options: frozenset[str]) -> Iterator[PhiFinding]:
    """Burned-in text risk: BurnedInAnnotation YES or missing, secondary captures."""
    if "113101" in options:  # Clean Pixel Data Option declared
        return
    is_image = any(t in ds for t in PIXEL_TAGS) or ("Rows" in ds and "Columns" in ds)
    if not is_image:
        return
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned != "NO":
        yield PhiFinding("BurnedInAnnotation", "(0028,0301)", "BurnedInAnnotation", "pixel_risk")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        yield PhiFinding("SOPClassUID", "(0008,0016)", "SOPClassUID", "pixel_risk")
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType", None) or [])]
    if "DERIVED" in image_type and "SECONDARY" in image_type:
        yield PhiFinding("ImageType", "(0008,0008)", "ImageType", "pixel_risk")
    if str(ds.get("Modality", "") or "").strip().upper() in SECONDARY_MODALITIES:
        yield PhiFinding("Modality", "(0008,0060)", "Modality", "pixel_risk")


def name_parts(values: Iterable[object]) -> set[str]:
    """The components of person names, upper case ("DOE^JANE^Q" -> {"DOE", "JANE"}).

    Components are split at ``^``, ``=``, blanks, commas and dots; parts
    shorter than ``NAME_PART_MIN`` letters and placeholders (ANONYMOUS ...)
    are left out.
    """
    parts: set[str] = set()
    for value in values:
        if value is None:
            continue
        for part in re.split(r"[\^=\s,.;]+", str(value)):
            part = part.strip("\x00 '\"()").upper()
            if len(part) >= NAME_PART_MIN and any(ch.isalpha() for ch in part) and part not in PLACEHOLDER_NAMES:
                parts.add(part)
    return parts


def person_names(ds: Dataset, *, name_like_only: bool = False) -> set[str]:
    """Name parts of every person name (VR PN) in ``ds``, sequences included.

    With ``name_like_only`` (a dataset that declares its de-identification)
    pseudonyms such as "ANON-3F2A9C01D4" are left out: only values that read
    like a person's name count.
    """
    values: list[object] = []

    def walk(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for child in elem.value:
                    walk(child)
            elif elem.VR == "PN" and not elem.tag.is_private:
                values.extend(v for v in element_values(elem) if not name_like_only or looks_like_person_name(v))

    walk(ds)
    return name_parts(values)


def name_pattern(parts: Iterable[str]) -> re.Pattern[str] | None:
    """A case-insensitive whole-word pattern for any of ``parts`` (None when there are none)."""
    ordered = sorted({p for p in parts if p}, key=lambda p: (-len(p), p))
    if not ordered:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(p) for p in ordered) + r")(?![A-Za-z0-9])", re.IGNORECASE)


def _names_in_text(ds: Dataset, pattern: re.Pattern[str], prefix: str = "") -> Iterator[PhiFinding]:
    """Kept text elements (code meanings, labels, ...) that contain a person's name."""
    for elem in ds:
        tag = elem.tag
        if tag in PIXEL_TAGS or tag.is_private:
            continue
        keyword = elem.keyword or ""
        rule = rule_for(tag, elem.VR, keyword)
        name = keyword or tag_text(tag)
        path = f"{prefix}{name}"
        if elem.VR == "SQ":
            if rule is None or rule.action == "K":
                for index, item in enumerate(elem.value):
                    yield from _names_in_text(item, pattern, f"{path}[{index}].")
            continue
        if (rule is not None and rule.action != "K") or elem.VR not in TEXT_VRS or keyword == "DeidentificationMethod":
            continue
        if any(pattern.search(str(v)) for v in element_values(elem) if v is not None):
            yield PhiFinding(keyword or tag_text(tag), tag_text(tag), path, "identifier", "X")


def burned_in_reasons(ds: Dataset) -> list[str]:
    """Why the pixels of ``ds`` may show burned-in text (empty when there is no such sign).

    BurnedInAnnotation YES, a secondary capture SOP class (screenshots,
    scanned documents), ImageType SECONDARY with DERIVED or a screen-capture
    value, or Modality SC. Nothing when the Clean Pixel Data Option (113101)
    is declared. A missing BurnedInAnnotation alone is not a reason: most CT
    scanners never write it.
    """
    if "113101" in declared_options(ds):
        return []
    reasons: list[str] = []
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        reasons.append("BurnedInAnnotation YES")
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or "").strip("\x00 ")
    if not sop_class and meta is not None:
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip("\x00 ")
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        reasons.append(f"secondary capture SOP class {sop_class}")
    image_type = [str(v).strip().upper() for v in element_values(ds["ImageType"])] if "ImageType" in ds and ds["ImageType"].value else []
    if ("SECONDARY" in image_type and "DERIVED" in image_type) or SCREENSHOT_IMAGE_TYPES & set(image_type[2:]):
        reasons.append("ImageType " + "\\".join(image_type))
    if str(ds.get("Modality", "") or "").strip().upper() == "SC":
        reasons.append("Modality SC (secondary capture)")
    return reasons


def find_phi(ds: Dataset) -> list[PhiFinding]:
    """Every attribute of ``ds`` (sequences included) that still carries identifying content.

    Follows PS3.15 Annex E (``core.phi.profile``); empty values are not PHI;
    dates and times are reported as kind "date"; instance UIDs as "uid";
    private elements as "private" (keyword "PrivateTags"); overlays and curves
    as "overlay"; burned-in text risk as "pixel_risk". A dataset that declares
    its de-identification (PatientIdentityRemoved YES, method codes) is judged
    against what the declared profile and options allow to remain.
    """
    options = declared_options(ds)
    findings = [*_walk(ds, "", options), *_pixel_risks(ds, options)]
    # names typed into kept text (code meanings, labels): the names of the people in this dataset
    pattern = name_pattern(person_names(ds, name_like_only=bool(options)))
    if pattern is not None:
        seen = {f.path for f in findings}
        findings += [f for f in _names_in_text(ds, pattern) if f.path not in seen]
    return findings


def phi_keywords(ds: Dataset) -> list[str]:
    """Sorted keywords of attributes that still carry identifying values.

    Dates, UIDs and pixel risk are not in this list (see :func:`find_phi`);
    private elements appear once as "PrivateTags"; keywords found inside
    sequences appear under their own keyword.
    """
    return sorted({f.keyword for f in find_phi(ds) if f.kind in IDENTIFYING_KINDS})


def _text_values(elem: DataElement) -> list[str]:
    value = elem.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [bytes(value).decode("latin-1").strip("\x00 ")]
    out = [str(v).strip("\x00 ") for v in element_values(elem) if v is not None]
    if elem.VR == "PN":  # the components too: "DOE^JANE" may reappear as "DOE"
        out += [part for v in out for part in v.replace("=", "^").split("^")]
    return out


def identifying_values(ds: Dataset, min_length: int = 4) -> set[str]:
    """The original strings a cleaned copy must not contain (for verification).

    Values of identifying attributes (identifier, free_text, private, overlay)
    and instance UIDs, anywhere in the dataset, at least ``min_length``
    characters long (shorter ones would match by chance), except the dummies
    the cleaner itself writes (``CLEANER_DUMMIES``).
    """
    found: set[str] = set()

    def walk(item: Dataset) -> None:
        for elem in item:
            if elem.tag in PIXEL_TAGS:
                continue
            keyword = elem.keyword or ""
            rule = rule_for(elem.tag, elem.VR, keyword)
            if elem.VR == "SQ":
                for child in elem.value:
                    walk(child)
                continue
            if rule is None or rule.kind not in IDENTIFYING_KINDS | {"uid"} or is_empty_value(elem):
                continue
            for text in _text_values(elem):
                if rule.kind == "uid" and (len(text) < 8 or is_definitional_uid(keyword, text)):
                    continue
                if text.strip().upper() in CLEANER_DUMMIES:  # the cleaner's own dummy, not an identifying string
                    continue
                if len(text) >= min_length:
                    found.add(text)

    walk(ds)
    return found
