"""Cohort & models > Validate: the user's earlier external validations (``core.app.validations``), picked from a list
and shown again as when they ended, or removed; a validation's report (PDF), made when its button is clicked."""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd
import streamlit as st

from core import figures as F
from core.app import validations, workspace
from core.evaluate.pooled import pooled_c_index, pooled_oe, site_rows
from core.horizons import DEFAULT_HORIZON, HORIZONS, horizon_label
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
    st.caption(f"{k.validated} validated on {k.where} on {k.at}" + (f", beside {', '.join(k.others)}" if k.others else "")
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


def pooled_view() -> None:
    """A model's kept validations on several sites pooled (``core.evaluate.pooled``): shown on a toggle where the user
    kept validations of one model (one version of its weights) on at least two sites; by default the newest
    validation of each site (``Kept.site``: the name typed, or the upload's file name), chosen in a list; the pooled
    C-index and, at a horizon, the pooled observed / expected risk, each with its interval, the prediction interval
    for a new site and I^2, forest plots, and the table as CSV."""
    user_dir = workspace.user_root(_jobs.owner())
    by_model = validations.by_model(validations.listing(user_dir))
    models = [m for m, ks in by_model.items() if len({k.site for k in ks}) >= 2]
    if not models or not st.toggle("Pool a model's validations across sites", key="pool_on",
                                   help="A random-effects meta-analysis of one model validated on several sites' "
                                        "cohorts: how well it ranks patients and how its risks compare with what was "
                                        "observed, on average, and what to expect at a new site"):
        return
    model = st.selectbox("Model", models, key="pool_model") if len(models) > 1 else models[0]
    ks = {k.id: k for k in by_model[model]}
    labels = {i: f"{k.where} · {k.at} · C {k.c_index:.3f} · {k.patients} patients" for i, k in ks.items()}
    newest = list({k.site: i for i, k in reversed(ks.items())}.values())  # each site's newest, listed order
    chosen = st.multiselect(f"Validations of {model} to pool (one per site: the same patients twice would count "
                            "twice)", list(labels), default=[i for i in ks if i in newest], format_func=labels.__getitem__,
                            key=f"pool_ids_{model}")
    results = [(f"{ks[i].site} ({ks[i].at})", (validations.load(user_dir, i) or {}).get(ks[i].validated) or {})
               for i in chosen]
    rows, left_out = site_rows(results)
    if left_out:
        st.caption("Left out (no C-index interval kept): " + chrome.md("; ".join(left_out)))
    if len(rows) < 2:
        st.info("Choose the validations of at least two sites.", icon=":material/info:")
        return
    with chrome.core_errors(stop=False):
        _pooled_section(rows, model, "c", DEFAULT_HORIZON)
    horizon = st.selectbox("Observed / expected risk at", HORIZONS, index=HORIZONS.index(DEFAULT_HORIZON),
                           format_func=horizon_label, key="pool_horizon", width=220)
    rows, _ = site_rows(results, horizon)
    oe_rows = [r for r in rows if r["oe"] is not None]
    if len(oe_rows) < 2:
        st.caption(f"Observed / expected risk at {horizon_label(horizon)}: known at {len(oe_rows)} of these sites "
                   "(validations kept before it was computed, or follow-up shorter than the horizon), 2 needed.")
    else:
        with chrome.core_errors(stop=False):
            _pooled_section(oe_rows, model, "oe", horizon)
    stem = f"pooled_{re.sub(r'[^A-Za-z0-9_-]+', '_', model).strip('_')[:80]}"
    c1, c2 = st.columns(2)
    c1.download_button("Download the pooled table (CSV)", pd.DataFrame(rows).to_csv(index=False).encode(),
                       f"{stem}.csv", mime="text/csv", key="pool_csv",
                       help="Each site's C-index and observed / expected risk with their intervals")
    user = session.user_id()

    def made() -> bytes:  # on the click, in Streamlit's own thread (no rerun): audited where it is made
        import time

        from core.app import audit as audit_log
        from core.validation_report import pooled_report_pdf

        audit_log.record(user, "export", "pooled_report", sites=len(rows))
        return pooled_report_pdf(rows, model, horizon=horizon, when=time.strftime("%Y-%m-%d %H:%M"))

    c2.download_button("Pooled report (PDF)", made, f"{stem}.pdf", mime="application/pdf", key="pool_report",
                       icon=":material/picture_as_pdf:", on_click="ignore",
                       help="The sites, the pooled numbers and the forest plots on a page, for a committee: no "
                            "patient identifier in it")


def _pooled_section(rows: list[dict], model: str, what: str, horizon: int) -> None:
    """The pooled C-index (``what`` "c") or observed / expected risk at ``horizon`` (``"oe"``) of ``rows``
    (``core.evaluate.pooled.site_rows``): three numbers, the forest plot and what it shows."""
    c = what == "c"
    key, low, high = ("c_index", "c_low", "c_high") if c else ("oe", "oe_low", "oe_high")
    pooled = (pooled_c_index if c else pooled_oe)([r[key] for r in rows], [r[low] for r in rows], [r[high] for r in rows])
    name = "C-index" if c else f"O:E at {horizon_label(horizon)}"
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Pooled {name}", f"{pooled[what]:.3f}" if c else f"{pooled[what]:.2f}",
              help="Random effects (DerSimonian-Laird) on the " + ("logit" if c else "log") + " scale"
              + ("" if c else ": observed risk (Kaplan-Meier) over the mean predicted risk; above 1 the model "
                 "under-predicts, below 1 it over-predicts"))
    digits = 3 if c else 2
    c1.caption(f"95 % interval {pooled['ci'][0]:.{digits}f}-{pooled['ci'][1]:.{digits}f}, {pooled['k']} sites")
    pi = pooled["prediction"]
    c2.metric(f"A new site's {'C-index' if c else 'O:E'}", f"{pi[0]:.2f}-{pi[1]:.2f}" if pi else "3 sites needed",
              help=f"The 95 % prediction interval: where the {name} of the model at another site is expected to "
                   "lie, the spread between sites included")
    c3.metric("Between sites (I²)", f"{100 * pooled['i2']:.0f} %",
              help=f"The share of the spread of the sites' {name} that is between sites rather than chance")
    c3.caption(f"Cochran's Q {pooled['q']:.2f}, p {pooled['q_p']:.3f}")
    st.plotly_chart(F.pooled_figure([(r["site"], r[key], r[low], r[high]) for r in rows], pooled,
                                    f"{model}: {name} on {pooled['k']} sites", value=what,
                                    axis="Harrell's C-index (higher is better)" if c else
                                    f"observed / expected risk at {horizon_label(horizon)} (1: calibrated)",
                                    reference=(0.5, "chance") if c else (1.0, "calibrated")),
                    width="stretch", key=f"pool_figure_{what}", config=chrome.PLOTLY_CONFIG)
    st.caption("Squares: each site's value with its 95 % interval; diamond: the pooled value with its 95 % interval; "
               "dashed: where a new site's value is expected to lie (95 %; a t quantile with sites - 2 degrees of "
               "freedom, so wide with few sites). Each site's standard error is read from its interval on the "
               + ("logit" if c else "log") + " scale (Debray et al., BMJ 2017)." +
               ("" if c else " Calibration in the large only: how the average risk compares, not whether the "
                             "patients at higher predicted risk are the ones with the events."))
