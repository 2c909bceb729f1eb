"""Cohort & models > Validate: the user's earlier external validations (``core.app.validations``), picked from a list
and shown again as when they ended, or removed; a validation's report (PDF), made when its button is clicked."""

from __future__ import annotations

import re
from collections.abc import Callable

import streamlit as st

from core.app import validations, workspace
from pages import _chrome as chrome
from pages import _jobs
from pages import _session as session


def pick() -> tuple[dict[str, dict], str] | None:
    """A picker of the user's kept validations (nothing drawn when there are none); returns the chosen one's result
    and the name of the model it validated, or None (none chosen, or it cannot be read: said on the page)."""
    user_dir = workspace.user_root(_jobs.owner())
    kept = {k.id: k for k in validations.listing(user_dir)}
    if not kept:
        return None
    labels = {i: k.label() for i, k in kept.items()}
    st.markdown("**Earlier validations**")
    c1, c2 = st.columns([5, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("Kept in your folder, newest first (they stay after you close the page)", list(labels),
                          index=None, placeholder=f"Choose one of {len(kept)}", format_func=labels.__getitem__,
                          key="kept_validation")
    if chosen is None or chosen not in kept:
        return None
    if c2.button("Remove", key="kept_validation_remove", help="Remove this validation from your folder"):
        validations.remove(user_dir, chosen)
        st.rerun()
    found = validations.load(user_dir, chosen)
    if found is None or kept[chosen].validated not in found:
        st.warning(f"The validation of {chrome.md(kept[chosen].label())} cannot be read (a damaged file): remove it.",
                   icon=":material/warning:")
        return None
    k = kept[chosen]
    st.caption(f"{k.validated} validated on {k.upload} on {k.at}" + (f", beside {', '.join(k.others)}" if k.others else "")
               + (f", per group of {k.subgroup}" if k.subgroup else "") + ".")
    return found, k.validated


def warn_not_kept(metrics: dict) -> None:
    """Say so when the validation just shown could not be kept in the user's folder (``not_kept``: why)."""
    if metrics.get("not_kept"):
        st.warning(f"This validation could not be kept in your folder ({chrome.md(metrics['not_kept'])}): download "
                   "its tables now, or free space and validate again.", icon=":material/warning:")


def report_button(results: dict[str, dict], validated: str, key: str, *, cohort: str | None = None,
                  split: str = "all", risk_groups: Callable[[], dict] | None = None) -> None:
    """A button that downloads the report (PDF, aggregate results only) of a validation (``split`` "all"), or of the
    model ``validated`` on its ``cohort``'s test split, made when it is clicked. The click does not rerun the page
    (a rerun would replace the file the browser is fetching); the download is audited where the file is made, in
    Streamlit's own thread, and an audit log that cannot be written stops it. ``risk_groups``: the Kaplan-Meier
    curves by predicted risk group when the evaluation holds none (a test split's come from the reference curves)."""
    import time

    from core.app import audit as audit_log
    from core.validation_report import validation_report_pdf

    m = results.get(validated) or {}
    if risk_groups is not None and not m.get("risk_groups"):
        m = {**m, "risk_groups": {k: v for k, v in risk_groups().items() if k in ("groups", "logrank_p", "at_risk_days")}}
        results = {**results, validated: m}
    on = m.get("validated_on") or {}
    cohort = cohort or str(on.get("cohort") or "the uploaded cohort")
    when = str(on.get("at") or "") or time.strftime("%Y-%m-%d %H:%M")
    every = split == "all"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{validated}_on_{cohort.removesuffix('.zip')}" if every else validated)
    user, fusion = session.user_id(), str(m.get("fusion") or "model")

    def made() -> bytes:
        audit_log.record(user, "export", "validation_report" if every else "model_report", fusion=fusion,
                         models=len(results))
        return validation_report_pdf(results, validated, cohort=cohort, when=when, split=split)

    st.download_button("Validation report (PDF)" if every else "Model report (PDF)", made,
                       file_name=f"{'validation' if every else 'model'}_report_{stem.strip('_')[:100]}.pdf",
                       mime="application/pdf", key=f"{key}_report", icon=":material/picture_as_pdf:", on_click="ignore",
                       help="The metrics, risk groups, calibration" + (", other models, subgroups and recalibration"
                                                                       if every else "") +
                            " on a page or two, for a committee: no patient identifier in it")
