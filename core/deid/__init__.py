"""PHI detection and de-identification of DICOM (PS3.15 Annex E basic profile).

``find_phi`` / ``phi_keywords`` say what still identifies the patient and
``burned_in_reasons`` why pixels may show text; ``deidentify_study`` /
``deidentify_bytes`` write a cleaned copy (DICOM by the generated PS3.15 table,
NIfTI by clearing header text); ``gate_cohort`` checks every study of a
training cohort; ``redact_codes`` hides MEDS code text outside a vocabulary.
"""

from __future__ import annotations

from core.deid.clean import StudyCleaner
from core.deid.cohort_gate import (
    CohortGateReport,
    CohortRowFinding,
    gate_cohort,
    gate_study,
)
from core.deid.nifti import deidentify_nifti_bytes
from core.deid.study import DeidReport, deidentify_bytes, deidentify_study
from core.deid.text import REDACTED, redact_codes
from core.phi.detect import PhiFinding, burned_in_reasons, find_phi, phi_keywords

__all__ = [
    "REDACTED",
    "CohortGateReport",
    "CohortRowFinding",
    "DeidReport",
    "PhiFinding",
    "StudyCleaner",
    "burned_in_reasons",
    "deidentify_bytes",
    "deidentify_nifti_bytes",
    "deidentify_study",
    "find_phi",
    "gate_cohort",
    "gate_study",
    "phi_keywords",
    "redact_codes",
]
