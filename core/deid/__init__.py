"""PHI detection and de-identification of DICOM (PS3.15 Annex E basic profile).

``find_phi`` / ``phi_keywords`` say what still identifies the patient;
``deidentify_study`` / ``deidentify_bytes`` write a cleaned copy.
"""

from __future__ import annotations

from core.deid.clean import StudyCleaner
from core.deid.detect import PhiFinding, find_phi, phi_keywords
from core.deid.study import DeidReport, deidentify_bytes, deidentify_study

__all__ = ["DeidReport", "PhiFinding", "StudyCleaner", "deidentify_bytes", "deidentify_study", "find_phi", "phi_keywords"]
