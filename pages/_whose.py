"""Whose a model is, as the pages and the audit log name it: the demo's, the site's (``core.app.site_models``: the
administrator's, for every user) or the user's own. Read from the session's lists, which
``pages._model_views.available_models`` writes at every run."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages import _state as K


def is_site(name: str) -> bool:
    """Whether the model ``name`` is a site model."""
    return name in st.session_state.get(K.SITE_MODELS, {})


def whose(name: str) -> str:
    """``"site"``, ``"yours"`` (trained here, or a copy of yours) or ``"demo"``."""
    return "site" if is_site(name) else "yours" if name in st.session_state.get(K.TRAINED_MODELS, {}) else "demo"


def site_cohorts() -> set[str]:
    """The cohort folders the site models were trained on (the site's: their patients are not listed to users)."""
    cohorts = st.session_state.get(K.TRAINED_COHORTS, {})
    return {str(cohorts[n]) for n in st.session_state.get(K.SITE_MODELS, {}) if n in cohorts}


def audit_details(name: str, fusion: str) -> dict[str, str]:
    """What the audit log records of the model in use (``core.app.audit`` takes labels the code chose, never a
    user's text): its strategy (``fusion``), :func:`whose` it is (``models``) and, for a site model, the name the log
    knows it by (``model``: ``core.app.site_models.audit_name``). A case opened under two models is then two records."""
    from core.app.site_models import SUFFIX, audit_name

    out = {"fusion": fusion, "models": whose(name)}
    if is_site(name):
        out["model"] = audit_name(name.removesuffix(SUFFIX))
    return out


def cohort_label(cohort_dir: str, n_models: int) -> str:
    """How Cohort & models names the cohort a model (``n_models`` models, 0: no count) was trained on: the demo, a
    site model's (by its folder's name), or one of the user's by when it was uploaded or built
    (``core.app.user_cohorts.describe``)."""
    from core.app.demo_install import demo_paths
    from core.app.user_cohorts import describe

    count = f" ({n_models} model{'' if n_models == 1 else 's'})" if n_models else ""
    if Path(cohort_dir) == Path(demo_paths().cohort):
        return f"the demo cohort{count}"
    if str(cohort_dir) in site_cohorts():
        return f"the site's cohort {Path(cohort_dir).name}{count}"
    return f"your {describe(Path(cohort_dir).name)}{count}"
