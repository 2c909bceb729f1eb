"""A copy of a model recalibrated to a site: ``python -m core recalibrate --model M --cohort DIR --out M2``.

The model's curves for the site's patients (every subject of the cohort by default: a cohort the model never saw)
give the update of ``core.evaluate.recalibration`` (``log H' = a + c m(t) + b (log H - m(t))``: level, spread
between patients, course over time). The copy holds the same weights; its config.json gains ``recalibration``
({"offset" on the model's grid, "b", this fit's "a", "b", "c", the site cohort, n, events, when}), which the network
applies to its final curve (``core.models.recalibration``); its metrics.json gains the report (before / after,
cross-fitted) and its model card a section saying what changed and what did not (the order of patients at
each time; the C-index can move a little). A model
recalibrated before is recalibrated again on top (the two fits composed). Caches of the original (reference
curves, predictions) are not copied.
"""

from __future__ import annotations

import json
import shutil
import time as clock
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.horizons import HORIZONS

CARD_HEADING = "## Recalibration to a site"
CACHES = ("*.npz", "reference_curves.json", "demo_test_metrics.json", "test_metrics.json", "trained_in_app.json",
          "*.partial")


def card_section(entry: dict, report: dict) -> str:
    """The model card's section on a recalibration (``entry``: config.json's, ``report``: the fit's)."""
    def ci(key: str) -> str:
        v = report.get(f"{key}_ci")
        return f" (95% CI {v[0]:.2f} to {v[1]:.2f})" if v else ""

    composed = (f" Composed with the earlier recalibration, the copy applies log H' = offset(t) + {entry['b']:.3f} "
                "log H." if entry.get("composed") else "")
    lines = [CARD_HEADING, "",
             f"- Recalibrated on `{entry['cohort']}` ({entry['n']} subjects, {entry['events']} events, "
             f"{entry['split']}) on {entry['fitted']}: its absolute risks are this site's.",
             "- Every curve's cumulative hazard H became H' with "
             "log H'(t) = a + c m(t) + b (log H(t) - m(t)), m(t) the mean log H of the site's patients at time t: "
             f"a = {report['a']:.3f}{ci('a')} (level), b = {report['b']:.3f}{ci('b')} (spread between patients), "
             f"c = {report['c']:.3f}{ci('c')} (course over time)." + composed,
             "- The weights are the original model's; the order of patients at each time is kept, so the ranking "
             "at any one time is the original's; the C-index, which ranks by the whole curve (restricted mean), can "
             "move a little. The metrics above are the original model's on its own test split.",
             f"- On the site's patients ({report['folds']}-fold cross-fitted: each fold recalibrated by a fit on the "
             "others):"]
    for h, before in report["before"]["calibration"].items():
        after = report["after"]["calibration"][h]
        observed = before["observed"]
        lines.append(f"  - risk at {float(h):g} days: mean predicted {before['predicted']:.3f} before, "
                     f"{after['predicted']:.3f} after; observed (Kaplan-Meier) "
                     + ("not estimable (follow-up ends before)" if observed is None else f"{observed:.3f}"))
    ibs = [report[k]["ibs"] for k in ("before", "after")]
    if all(v is not None for v in ibs):
        lines.append(f"  - integrated Brier score {ibs[0]:.3f} before, {ibs[1]:.3f} after (lower is better)")
    if report.get("note"):
        lines.append(f"- Note: {report['note']}.")
    lines.append("- Recalibrate again when the site's case mix or treatment changes. At any other site this "
                 "copy's absolute risks are no better than the original's.")
    return "\n".join(lines) + "\n"


def recalibrate_model(model_dir: Path | str, cohort_dir: Path | str, out: Path | str, *, split: str = "all",
                      horizons: Sequence[float] = HORIZONS, device: str = "cpu", label: str | None = None,
                      progress: Callable[[float, str], None] | None = None) -> dict:
    """Fit a recalibration of ``model_dir`` on ``split`` of ``cohort_dir`` and write the recalibrated copy to
    ``out`` (written whole or not at all); returns the report (``core.evaluate.recalibration.recalibration_report``
    with ``out`` and the ``entry`` kept in config.json)."""
    from core.cohort import load_cohort
    from core.evaluate.recalibration import compose, recalibration_report
    from core.evaluation import ALL_SPLITS
    from core.predict import predict_cohort
    from core.registry import load_model

    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise InputError("--out", str(out), "is the model folder itself", "write the recalibrated copy to a new folder")
    if out.exists() and any(out.iterdir()):
        raise InputError("--out", str(out), "exists and is not empty", "pass a new folder for the recalibrated copy")
    cohort = load_cohort(Path(cohort_dir), for_training=False)
    ids = cohort.ids(None if split == ALL_SPLITS else split)
    rows = cohort.table.set_index("subject_id").loc[ids] if ids else None
    if rows is None or rows["time"].isna().any():
        raise InputError("cohort", str(cohort_dir), "gives no outcomes to recalibrate on" + ("" if split == ALL_SPLITS else f" in its {split} split"),
                         "add time and event to cohort.csv: a recalibration is fitted on the site's outcomes")
    model = load_model(model_dir, device=device)
    unread: list[str] = []
    times, surv = predict_cohort(model, cohort, ids, progress=(lambda f, m: progress(0.9 * f, m)) if progress else None,
                                 unread=unread)
    if progress:
        progress(0.9, "fitting the recalibration")
    report = recalibration_report(np.asarray(times), np.asarray(surv), rows["time"].to_numpy(float),
                                  rows["event"].to_numpy(float), horizons)
    previous = model.config.extra.get("recalibration")
    offset, b = compose(previous, report)
    entry = {"offset": [float(v) for v in offset], "b": b, "fit": {k: report[k] for k in ("a", "b", "c")},
             "cohort": label or Path(cohort_dir).name, "split": "every subject" if split == ALL_SPLITS
             else f"its {split} split", "n": report["n"], "events": report["events"],
             "fitted": clock.strftime("%Y-%m-%d"), "composed": bool(previous)}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(model_dir, partial, ignore=shutil.ignore_patterns(*CACHES))
        config = json.loads((partial / "config.json").read_text())
        config["recalibration"] = entry
        (partial / "config.json").write_text(json.dumps(config, indent=1))
        metrics_path = partial / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        metrics["recalibration"] = {**report, "entry": entry, "unread": len(unread)}
        metrics_path.write_text(json.dumps(metrics, indent=1, allow_nan=False, default=float))
        card = (partial / "MODEL_CARD.md").read_text() if (partial / "MODEL_CARD.md").exists() else ""
        card = card.split(f"\n{CARD_HEADING}")[0].rstrip("\n")
        (partial / "MODEL_CARD.md").write_text(card + "\n\n" + card_section(entry, report))
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if progress:
        progress(1.0, "done")
    return {**report, "out": str(out), "entry": entry, "unread": len(unread)}
