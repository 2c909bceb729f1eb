"""The embedded demo cohort: CT phantoms, MEDS timelines and outcomes from a known hazard.

>>> from core.demo import DEFAULT_N
>>> DEFAULT_N >= 600
True
"""

from __future__ import annotations

from core.demo.cohort import DEFAULT_N, c_index_summary, write_demo_cohort
from core.demo.latents import sample_latents

__all__ = ["DEFAULT_N", "c_index_summary", "sample_latents", "write_demo_cohort"]
