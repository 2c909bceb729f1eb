"""What ``deid`` changed in a study (``DeidReport``): counts and keywords, never an original value or the date offset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.phi.profile import PROFILE_NAME, TABLE_EDITION

PIXEL_RISK_TEXT: dict[str, str] = {
    "BurnedInAnnotation": "have BurnedInAnnotation YES or missing: check the pixels for burned-in text",
    "SOPClassUID": "are secondary captures (SOP class 1.2.840.10008.5.1.4.1.1.7*): screenshots often show identifying text",
    "ImageType": "have ImageType DERIVED\\SECONDARY: check the pixels for burned-in text",
    "Modality": "have Modality OT/SC (other / secondary capture): check the pixels for burned-in text",
}


#: what ``deid`` applies to a NIfTI volume, in the report's ``profile`` where every instance was one
NIFTI_PROFILE = ("NIfTI header: free-text fields (descrip, aux_file, intent_name, db_name, data_type) emptied, "
                 "extensions dropped")


@dataclass
class DeidReport:
    """What de-identification changed. Holds no original value and no date offset."""

    dates: str  # shift, remove or keep
    profile: str = PROFILE_NAME  # the PS3.15 table applied, with its edition and source
    edition: str = TABLE_EDITION
    n_instances: int = 0
    n_series: int = 0
    files_written: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> number of input files
    pseudonyms: list[str] = field(default_factory=list)  # new PatientName/PatientID values
    action_counts: dict[str, int] = field(default_factory=dict)  # X, Z, D, U, shift -> element changes
    changes: list[tuple[str, str]] = field(default_factory=list)  # sorted unique (keyword, action)
    pixel_risk: list[str] = field(default_factory=list)  # warnings: burned-in text may remain
    leaks_removed: int = 0  # elements removed by the verification pass (identifying text outside the profile)
    residual: list[str] = field(default_factory=list)  # warnings: identifying text still in the bytes
    n_nifti: int = 0  # NIfTI volumes among the instances (their header's free-text fields emptied; no dates in one)
    pixels_checked: bool = False  # the user declared the pixels free of identifying text (113101 written)

    @property
    def nifti_only(self) -> bool:
        """Every instance was a NIfTI volume: the DICOM profile and the date option did not apply to any."""
        return 0 < self.n_nifti == self.n_instances

    def to_dict(self) -> dict[str, object]:
        """The report as JSON; for NIfTI volumes only, ``profile`` and ``edition`` name what was applied to them and
        ``dates`` is null (a NIfTI header holds no date).

        >>> DeidReport(dates="shift", n_instances=1, n_nifti=1).to_dict()["dates"] is None
        True
        """
        out = asdict(self)
        out["changes"] = [list(c) for c in self.changes]
        if self.nifti_only:
            out.update(profile=NIFTI_PROFILE, edition=None, dates=None)
        return out

    def summary(self) -> str:
        """One line about what changed (counts only, never a value): for the upload page and logs."""
        changed = sum(self.action_counts.values())
        if self.nifti_only:
            return f"{self.n_nifti} NIfTI volume(s); {NIFTI_PROFILE}; {len(self.residual)} residual warning(s)."
        return (f"{self.n_instances} instance(s) in {self.n_series} series; {changed} element changes "
                f"({self.profile}); dates {self.dates}; {len(self.residual)} residual warning(s).")

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"de-identified {self.n_instances} instance(s) in {self.n_series} series -> {len(self.files_written)} file(s)"]
        if len(self.files_written) > 1:
            out[0] += f" ({self.files_written[0]} .. {self.files_written[-1]})"
        elif self.files_written:
            out[0] += f" ({self.files_written[0]})"
        if not self.nifti_only:
            out.append(f"profile: {self.profile}")
            out.append({"shift": "dates: shifted by one random offset for the whole study (offset not shown)", "remove": "dates: removed", "keep": "dates: kept unchanged"}[self.dates])
        if self.n_nifti:
            out.append(f"NIfTI: {self.n_nifti} volume(s): the header's free-text fields emptied (a NIfTI header holds "
                       "no names, ids or dates otherwise; the DICOM profile does not apply)")
        if self.pseudonyms:
            out.append(f"patient pseudonym(s): {', '.join(self.pseudonyms)}")
        labels = {"X": "removed", "Z": "emptied", "D": "replaced by a dummy", "U": "UIDs replaced", "shift": "dates shifted"}
        by_action: dict[str, list[str]] = {}
        for keyword, action in self.changes:
            by_action.setdefault(action, []).append(keyword)
        for action in ("D", "X", "Z", "U", "shift"):
            if action in by_action:
                out.append(f"{labels[action]} ({action}, {self.action_counts.get(action, 0)} elements): {', '.join(by_action[action])}")
        if self.leaks_removed:
            out.append(f"verification removed {self.leaks_removed} more element(s) that repeated identifying text")
        for reason, count in sorted(self.skipped.items()):
            out.append(f"skipped {count} input file(s): {reason}")
        if self.pixels_checked and self.n_nifti < self.n_instances:
            out.append("pixels: declared checked by you, no identifying text burned in (Clean Pixel Data Option, "
                       "113101, written: the PHI gate lets these signs pass)")
            out += [f"declared checked: {w.rsplit(': ', 1)[0]}" for w in self.pixel_risk]
        else:
            out += [f"warning: pixel risk: {w}" for w in self.pixel_risk]
        out += [f"warning: {w}" for w in self.residual]
        return out
