"""Shared fixtures: real reference data from ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
REAL_CT = SHARED_DATA / "ct" / "example_ct_sm.nii.gz"
REAL_MEDS = SHARED_DATA / "meds" / "mimic_iv_demo_meds_events.parquet"

# Keep each test process on one thread: CI has 2 cores and may run 2 workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# New models on CT default to the whole-CT lesion detector, whose pretext costs ~10 CPU minutes per image model: the
# suite trains its many small image models with the fast lung-focused encoder instead (the site setting a deployment
# can use too; core.models.default_image_kind). The detector, and "auto" resolving to it without this
# setting, have their own tests (tests/test_detector_kind.py), which remove it.
os.environ.setdefault("CTEHR_IMAGE_KIND_DEFAULT", "2d")


@pytest.fixture(scope="session")
def real_ct() -> Path:
    if not REAL_CT.exists():
        pytest.skip(f"real CT not found at {REAL_CT} (../shared/data is absent outside CI)")
    return REAL_CT


@pytest.fixture(scope="session")
def real_meds() -> Path:
    if not REAL_MEDS.exists():
        pytest.skip(f"real MEDS file not found at {REAL_MEDS} (../shared/data is absent outside CI)")
    return REAL_MEDS
