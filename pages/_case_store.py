"""Where what is derived from a case is kept (not a page): the server's shared caches for demo cases under demo
models, the user's own folder for everything else (a saved case, a patient of the user's cohorts, any case under a
model the user trained here), bounded and inside the user's quota.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core import predict as predictions
from core.app import paths
from core.app import workspace as workspaces
from core.io.study_cache import StudyCache
from pages import _cohort_cases
from pages import _state as K
from pages._session import user_id

DEMO = "demo"  # a case's source: a demo patient
UPLOADED = "uploaded"  # ... one of the user's saved cases ("cohort:<folder>": a patient of a user's cohort)


USER_STUDY_CACHE_MB = 512


def study_cache(source: str = DEMO) -> StudyCache:
    """Decoded studies (and the viewer's NIfTI of each): the demo's shared by every session of this server; those of
    the user's own cohorts in the user's folder (inside the quota, given way first: ``workspace.drop_caches``)."""
    if _cohort_cases.is_cohort(source):
        return StudyCache(user_cache(workspaces.STUDIES), max_bytes=USER_STUDY_CACHE_MB * 2**20)
    return StudyCache(paths.data_dir() / "cache" / "studies")


def data_cache_dir() -> Path:
    return paths.data_dir() / "cache" / "predictions"


USER_PREDICTION_CACHE_MB = 64


def kept_by_user(model: Any, source: str) -> bool:
    """Whether what is derived from the case under ``model`` (predictions, maps) belongs in the user's own folder: a
    saved case, a patient of one of the user's cohorts, or any case under a model the user trained here. Only demo
    cases under demo models go to the server's shared caches."""
    own_model = str(model.model_dir) in st.session_state.get(K.TRAINED_MODELS, {}).values()
    return source == UPLOADED or _cohort_cases.is_cohort(source) or own_model


def user_cache(kind: str) -> Path:
    """``<user>/cache/<kind>`` of this session's user (mode 0700, as the rest of the user's folder)."""
    return workspaces.private_dir(workspaces.private_dir(workspaces.user_root(user_id()) / "cache") / kind)


def prediction_cache(model: Any, source: str) -> predictions.PredictionCache:
    """Demo cases under demo models: the server's shared cache; else (:func:`kept_by_user`) the user's own folder
    (bounded, inside their quota)."""
    if kept_by_user(model, source):
        return predictions.PredictionCache(user_cache("predictions"), max_entries=500,
                                           max_bytes=USER_PREDICTION_CACHE_MB * 2**20)
    return predictions.PredictionCache(data_cache_dir())
