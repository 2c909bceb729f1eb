"""Apply the PS3.15 basic profile to one dataset, consistently across a study.

A ``StudyCleaner`` is set up once per study: it holds the UID map (same input
UID -> same new UID in every instance and sequence), the date offset (one per
study) and the patient pseudonyms. ``clean(ds)`` changes ``ds`` in place and
counts what it changed; it never touches pixel data.
"""

from __future__ import annotations

import random
import re
import secrets
from collections import Counter
from datetime import date, timedelta

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

from core.errors import InputError
from core.io.contrast import agent_status
from core.phi.detect import (
    PIXEL_TAGS,
    element_values,
    is_empty_value,
    name_parts,
    name_pattern,
    person_names,
)
from core.phi.profile import (
    METHOD_CODES,
    TABLE_EDITION,
    Rule,
    is_definitional_uid,
    rule_for,
)

DATE_MODES = ("shift", "remove", "keep")
SHIFT_RANGE_DAYS = (365, 3650)  # a random study offset moves dates back 1 to 10 years
MAX_SHIFT_DAYS = 36500
DEID_METHOD = {  # LO: at most 64 characters
    "shift": f"PS3.15 {TABLE_EDITION} E.1-1 basic profile; dates shifted (113107)",
    "keep": f"PS3.15 {TABLE_EDITION} E.1-1 basic profile; full dates kept (113106)",
    "remove": f"PS3.15 {TABLE_EDITION} E.1-1 basic profile; dates removed",
}
# Text VRs whose kept values are removed when they contain a person's name (code meanings, labels, ...)
NAME_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"
STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# File meta elements that could name the sending site or carry private data.
META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


def check_dates(dates: str, shift_days: int | None) -> None:
    """Validate the date options in one place."""
    if dates not in DATE_MODES:
        raise InputError("dates", dates, f"is not one of {', '.join(DATE_MODES)}", "use --dates shift, remove or keep")
    if shift_days is not None:
        if isinstance(shift_days, bool) or not isinstance(shift_days, int):
            raise InputError("shift_days", shift_days, "is not a whole number of days", "give an integer such as -400")
        if dates != "shift":
            raise InputError("shift_days", shift_days, f"only applies with dates='shift' (got dates={dates!r})", "drop --shift-days or use --dates shift")
        if shift_days == 0 or abs(shift_days) > MAX_SHIFT_DAYS:
            raise InputError("shift_days", shift_days, f"must be non-zero and within +-{MAX_SHIFT_DAYS}", "give an offset such as -400")


def shift_da(text: str, days: int) -> str | None:
    """Shift one DA value ("YYYYMMDD", or a range "A-B") by ``days``; None when it is not a full date."""
    text = text.strip()
    if "-" in text:
        parts = text.split("-")
        if len(parts) != 2:
            return None
        shifted = [shift_da(p, days) if p else "" for p in parts]
        return None if any(s is None for s in shifted) else f"{shifted[0]}-{shifted[1]}"
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        value = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{value.year:04d}{value.month:02d}{value.day:02d}" if 1 <= value.year <= 9999 else None


def shift_dt(text: str, days: int) -> str | None:
    """Shift the date part of one DT value; the time part and offset are kept."""
    text = text.strip()
    if "-" in text[1:8] or len(text) < 8:  # ranges and partial dates (YYYY, YYYYMM) cannot be shifted exactly
        return None
    head = shift_da(text[:8], days)
    return None if head is None else head + text[8:]


def _set_values(elem: DataElement, values: list[str]) -> None:
    elem.value = values[0] if len(values) == 1 else values


def leaf_elements(ds: Dataset) -> list[tuple[Dataset, BaseTag, DataElement]]:
    """Every non-pixel, non-sequence element of ``ds`` and of its sequences' items, with the dataset that holds it
    (so a caller can delete it); listed before any change, so deleting while iterating is safe."""
    out: list[tuple[Dataset, BaseTag, DataElement]] = []
    for tag in list(ds.keys()):
        if tag in PIXEL_TAGS:
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                out.extend(leaf_elements(item))
        else:
            out.append((ds, tag, elem))
    return out


class StudyCleaner:
    """De-identify the datasets of one study with one UID map, date offset and pseudonym set.

    ``seed`` makes the UID salt, the random offset and random pseudonyms
    reproducible (for tests); without it they come from ``secrets``.
    """

    def __init__(
        self,
        *,
        dates: str = "shift",
        shift_days: int | None = None,
        seed: int | None = None,
        pseudonym: str | None = None,
        pixels_checked: bool = False,
    ) -> None:
        check_dates(dates, shift_days)
        # the user looked at every image and found no identifying text burned in: the Clean Pixel Data Option
        # (113101) is declared, which the PHI gate honours; nothing here reads or changes a pixel
        self.pixels_checked = bool(pixels_checked)
        if pseudonym is not None and (not pseudonym.strip() or len(pseudonym) > 64 or "\\" in pseudonym):
            raise InputError("pseudonym", pseudonym, "must be 1-64 characters without a backslash", "give a study code such as SUBJ-0001")
        self.dates = dates
        self._rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self._salt = f"seed:{seed}" if seed is not None else secrets.token_hex(16)
        if dates == "shift":
            self.shift_days = shift_days if shift_days is not None else -self._rng.randint(*SHIFT_RANGE_DAYS)
        else:
            self.shift_days = 0
        self._pseudonym = pseudonym.strip() if pseudonym else None
        self._uid_map: dict[str, str] = {}
        self.pseudonyms: dict[tuple[str, str], str] = {}
        self.changes: Counter[tuple[str, str]] = Counter()

    # --- consistent replacements -------------------------------------------------
    def new_uid(self, old: str) -> str:
        """The replacement of ``old``; the same for every occurrence in the study."""
        old = old.strip().rstrip("\x00")
        if old not in self._uid_map:
            self._uid_map[old] = generate_uid(entropy_srcs=[self._salt, old])
        return self._uid_map[old]

    def pseudonym_for(self, ds: Dataset) -> str:
        """One pseudonym per patient of the study, keyed on PatientID first.

        Series of one patient whose names are spelled differently ("DOE^JOHN",
        "Doe^John^", "JOHN DOE") share the pseudonym of their PatientID; a
        dataset without PatientID is matched by its name parts (any order,
        any case); one without either gets the study's first pseudonym.
        """
        pid = str(ds.get("PatientID", "") or "").strip().upper()
        name = " ".join(sorted(name_parts([ds.get("PatientName", "") or ""])))
        id_key, name_key = ("id", pid), ("name", name)
        value = None
        if pid and id_key in self.pseudonyms:
            value = self.pseudonyms[id_key]
        elif name and name_key in self.pseudonyms and (not pid or not self._ids_of(self.pseudonyms[name_key])):
            value = self.pseudonyms[name_key]  # same name, and that patient had no PatientID
        elif not pid and not name and self.pseudonyms:
            value = next(iter(self.pseudonyms.values()))
        if value is None:
            n = len(set(self.pseudonyms.values()))
            if self._pseudonym:
                value = self._pseudonym if n == 0 else f"{self._pseudonym}-{n + 1}"
            else:
                value = f"ANON-{self._rng.getrandbits(40):010X}"
        if pid:
            self.pseudonyms.setdefault(id_key, value)
        if name:
            self.pseudonyms.setdefault(name_key, value)
        if not pid and not name:
            self.pseudonyms.setdefault(("none", ""), value)
        return value

    def _ids_of(self, value: str) -> list[str]:
        return [key[1] for key, v in self.pseudonyms.items() if key[0] == "id" and v == value]

    def pseudonym_values(self) -> list[str]:
        """The pseudonyms given, each once, in the order they were made."""
        return list(dict.fromkeys(self.pseudonyms.values()))

    # --- one dataset ---------------------------------------------------------------
    def clean(self, ds: Dataset, *, study_names: set[str] | frozenset[str] = frozenset()) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it.

        ``study_names``: name parts of the people named anywhere in the study
        (other instances may spell a name that this one only has in free text).
        """
        pseudonym = self.pseudonym_for(ds)
        names = name_pattern(person_names(ds) | set(study_names))  # before cleaning: the names of the people in the study
        self._ensure_sop_uids(ds)
        self._clean_items(ds, pseudonym)
        if names is not None:
            self._remove_names_in_text(ds, names)
        self._mark(ds)
        self._clean_meta(ds)
        return ds

    def _ensure_sop_uids(self, ds: Dataset) -> None:
        """Fill SOPInstanceUID / SOPClassUID that are missing or empty (real exports have them empty).

        The instance UID comes from the file meta's MediaStorageSOPInstanceUID
        (replaced like every UID) or is new; the class from the file meta, else
        from the modality (CT, MR, PET image storage) or Secondary Capture.
        """
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPInstanceUID", "") or "").strip("\x00 "):
            stored = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip("\x00 ") if meta is not None else ""
            ds.SOPInstanceUID = stored or generate_uid(entropy_srcs=[self._salt, "instance", str(len(self._uid_map)), secrets.token_hex(8)])
            self._record("SOPInstanceUID", "U")
        if not str(ds.get("SOPClassUID", "") or "").strip("\x00 "):
            stored = str(meta.get("MediaStorageSOPClassUID", "") or "").strip("\x00 ") if meta is not None else ""
            modality = str(ds.get("Modality", "") or "").strip().upper()
            ds.SOPClassUID = stored or SOP_CLASS_BY_MODALITY.get(modality, SECONDARY_CAPTURE_CLASS)
            self._record("SOPClassUID", "D")

    def _remove_names_in_text(self, ds: Dataset, pattern: re.Pattern[str]) -> None:
        """Remove kept text elements (CodeMeaning, labels, ...) that contain a person's name, in any case."""
        for owner, tag, elem in leaf_elements(ds):
            if elem.VR in NAME_TEXT_VRS and any(pattern.search(str(v)) for v in element_values(elem) if v is not None):
                del owner[tag]
                self._record(elem.keyword or "TextWithName", "X")

    def _record(self, keyword: str, action: str) -> None:
        self.changes[(keyword, action)] += 1

    def _clean_items(self, ds: Dataset, pseudonym: str) -> None:
        for tag in list(ds.keys()):
            if tag in PIXEL_TAGS:
                continue
            elem = ds[tag]
            keyword = elem.keyword or ""
            rule = rule_for(elem.tag, elem.VR, keyword)
            if rule is not None and rule.kind == "private":
                del ds[tag]
                self._record("PrivateTags", "X")
                continue
            if elem.VR == "SQ":
                action = rule.action if rule is not None else "K"
                if action in ("X", "D"):
                    del ds[tag]
                    self._record(rule.keyword if rule else keyword, "X")
                elif action == "Z":
                    if len(elem.value):
                        elem.value = Sequence([])
                        self._record(rule.keyword if rule else keyword, "Z")
                else:
                    for item in elem.value:
                        self._clean_items(item, pseudonym)
                continue
            if rule is None:
                continue
            if rule.kind == "date" and self.dates != "remove":
                self._keep_or_shift(ds, elem, rule)
                continue
            self._apply(ds, elem, rule, pseudonym)

    def _apply(self, ds: Dataset, elem: DataElement, rule: Rule, pseudonym: str) -> None:
        empty = is_empty_value(elem)
        if rule.action == "X":
            del ds[elem.tag]
            if not empty:
                self._record(rule.keyword, "X")
        elif rule.action == "Z":
            if not empty:
                elem.value = b"" if elem.VR in BYTES_VRS else ("" if elem.VR in STRING_VRS else None)
                self._record(rule.keyword, "Z")
        elif rule.action == "D":
            if rule.keyword == "ContrastBolusAgent":  # keep the record (core.io.contrast), not the agent's free text
                if empty:
                    return
                elem.value = "NONE" if agent_status(str(elem.value)) == "no" else "APPLIED"
            else:
                elem.value = pseudonym if rule.keyword in ("PatientName", "PatientID") else "ANONYMOUS"
            self._record(rule.keyword, "D")
        elif rule.action == "U" and not empty:
            values = [str(v) for v in element_values(elem) if v is not None]
            if all(is_definitional_uid(rule.keyword, v) for v in values):
                return
            _set_values(elem, [v if is_definitional_uid(rule.keyword, v) else self.new_uid(v) for v in values])
            self._record(rule.keyword, "U")

    def _keep_or_shift(self, ds: Dataset, elem: DataElement, rule: Rule) -> None:
        """dates='keep' keeps every date and time; 'shift' moves DA/DT by the study offset."""
        if self.dates == "keep" or elem.VR not in ("DA", "DT") or is_empty_value(elem):
            return
        shift = shift_da if elem.VR == "DA" else shift_dt
        shifted = [shift(str(v), self.shift_days) for v in element_values(elem) if v is not None and str(v).strip()]
        if any(s is None for s in shifted):  # not a full date: cannot be shifted, so it goes
            self._apply(ds, elem, rule if rule.action in ("X", "Z") else Rule(rule.keyword, rule.standard, "Z", rule.kind), "")
            return
        _set_values(elem, [s for s in shifted if s is not None])
        self._record(rule.keyword, "shift")

    def _mark(self, ds: Dataset) -> None:
        """PatientIdentityRemoved, DeidentificationMethod(+CodeSequence), LongitudinalTemporalInformationModified."""
        codes = ["113100", "113101" if self.pixels_checked else "", {"shift": "113107", "keep": "113106"}.get(self.dates, "")]
        codes = [c for c in codes if c]
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEID_METHOD[self.dates]  # LO: at most 64 characters
        items = []
        for code in codes:
            item = Dataset()
            item.CodeValue = code
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = METHOD_CODES[code]
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = {"shift": "MODIFIED", "keep": "UNMODIFIED", "remove": "REMOVED"}[self.dates]

    def _clean_meta(self, ds: Dataset) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            meta = FileMetaDataset()
            ds.file_meta = meta
        for tag in META_REMOVE:
            if tag in meta:
                del meta[tag]
                self._record("FileMetaInformation", "X")
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.new_uid(str(meta.MediaStorageSOPInstanceUID))
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
