"""``python -m core evaluate --model MODEL --cohort DIR [--split test] [--patients CSV] [--report PDF] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

HELP = "evaluate a model on a cohort's test split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (config.json, *.safetensors)")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder (cohort.csv, ...)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                        help="split to evaluate (default test); all: every subject, for an external validation on a "
                        "cohort the model never saw (its own censoring gives the IPCW weights)")
    parser.add_argument("--horizons", default="30,365,1825", help="comma-separated horizons in days")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="miscoverage of the lower bounds on the event time (0.1: 90%% bounds)")
    parser.add_argument("--subgroup", default=None, metavar="COLUMN",
                        help="a column of cohort.csv or features.csv: C-index and calibration per group")
    parser.add_argument("--no-band", action="store_true",
                        help="skip the per-case band (predict_case) in the coverage report (faster)")
    parser.add_argument("--patients", type=Path, default=None, metavar="CSV",
                        help="also write every evaluated patient's risk rank and the share of its comparable pairs "
                        "the model orders right (Harrell's C patient by patient), worst-ordered first")
    parser.add_argument("--report", type=Path, default=None, metavar="PDF",
                        help="also write the evaluation's report (metrics, risk groups, calibration, subgroups; no "
                        "patient identifier) as a PDF, as the app's Validate tab does")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _fmt(v: object) -> str:
    return "null" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci(v: list[float] | None) -> str:
    return "" if not v else f" (95% CI {v[0]:.3f}-{v[1]:.3f})"


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from core.evaluation import evaluate_model
    from core.ehr_read import split_feature_reads_text, split_timeline_reads_text
    from core.predict import split_image_reads_text

    try:
        horizons = tuple(float(h) for h in str(args.horizons).split(",") if h.strip())
    except ValueError:
        raise InputError("--horizons", args.horizons, "must be numbers of days", "use e.g. 30,365,1825") from None
    if args.report is not None and Path(args.report).suffix.lower() != ".pdf":  # said before the evaluation's minutes
        raise InputError("--report", Path(args.report).name, "is not a .pdf file", "end the report's name in .pdf")
    res = evaluate_model(args.model, args.cohort, split=args.split, horizons=horizons, n_boot=args.n_boot,
                         seed=args.seed, device=args.device, alpha=args.alpha, subgroup=args.subgroup,
                         band=not args.no_band, keep_risk=args.patients is not None)
    if args.report is not None:
        _write_report(res, args)
    worst = _write_patients(res, args.patients) if args.patients is not None else None
    if args.json:
        print(json.dumps(res, allow_nan=False))
        return 0
    out = sys.stdout
    print(f"{'every subject' if args.split == 'all' else args.split + ' split'}: n={res['n']}, events={res['events']}",
          file=out)
    print(f"Harrell C   {_fmt(res['c_index'])}{_ci(res['c_index_ci'])}", file=out)
    print(f"Uno C       {_fmt(res['uno_c'])}{_ci(res.get('uno_c_ci'))} (tau={res['uno_tau']:.0f} d)", file=out)
    span = res.get("ibs_range")
    print(f"IBS         {_fmt(res['ibs'])}{_ci(res.get('ibs_ci'))}"
          + (f" (days {span[0]:.0f}-{span[1]:.0f})" if span else ""), file=out)
    for h, v in res["td_auc"].items():
        cal = res["calibration"].get(h)
        ici = "" if not cal else f", calibration ICI {cal['ici']:.3f}" + (
            f" (of the {cal['n_observed']} of {res['n']} subjects whose groups' follow-up reaches {h} d)"
            if cal.get("n_observed", res["n"]) < res["n"] else "")
        label = f"AUC({h} d)"
        value = _fmt(v) if v is not None else f"n/a (needs an event by {h} d and a subject followed past it)"
        print(f"{label:12s}{value}{ici}", file=out)
    if res.get("unread"):
        print(f"unread      the model read nothing of {res['unread']} of {res['n']} subjects (no study, timeline or "
              "features it can read): their curves are the training average", file=out)
    if "oracle_c_index" in res:
        print(f"oracle C    {_fmt(res['oracle_c_index'])} (from true_risk)", file=out)
    profile_line = split_image_reads_text(res.get("ct_profile"))
    if profile_line:
        print(f"CT profile  {profile_line}", file=out)
    codes_line = split_timeline_reads_text(res.get("timeline_codes"))
    if codes_line:
        print(f"timelines   {codes_line}", file=out)
    features_line = split_feature_reads_text(res.get("features"))
    if features_line:
        print(f"features    {features_line}", file=out)
    for note in res.get("notes", []):
        print(f"note        {note}", file=out)
    if worst is not None:
        print(f"patients    every patient's rank and pairs in {args.patients}; ordered worst (share of pairs "
              f"ordered right): {worst}", file=out)
    _print_extras(res, out)
    return 0


def _write_report(res: dict, args: argparse.Namespace) -> None:
    """:func:`core.validation_report.validation_report_pdf` of this evaluation, named after the model and cohort
    folders, written to ``args.report``."""
    import time

    from core.validation_report import validation_report_pdf

    target = Path(args.report)
    name = Path(args.model).resolve().name
    pdf = validation_report_pdf({name: res}, name, cohort=Path(args.cohort).resolve().name,
                                when=time.strftime("%Y-%m-%d %H:%M"), split=args.split)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pdf)


def _write_patients(res: dict, path: Path) -> str:
    """Write :func:`core.evaluate.patient_pairs.patient_table` of the evaluation's ``subject_risk`` to ``path`` as
    CSV (its ``subject_risk`` is then dropped from ``res``); the three worst-ordered patients in at least 5 pairs, as
    text."""
    from core.evaluate.patient_pairs import patient_table

    kept = res.pop("subject_risk")
    table = patient_table(kept["ids"], kept["time"], kept["event"], kept["risk"])
    path.parent.mkdir(parents=True, exist_ok=True)
    table.drop(columns=["n"]).to_csv(path, index=False)
    shown = table[table["comparable"] >= 5].head(3)
    return ", ".join(f"{i} ({s:.0%} of {c})" for i, s, c in zip(shown["subject_id"], shown["share"],
                                                              shown["comparable"])) or "none in 5 pairs or more"


def _print_extras(res: dict, out: TextIO) -> None:
    cov, conf = res["coverage"], res.get("conformal") or {}
    level = 1 - cov["alpha"]
    band_name = cov["band"] or "not computed (--no-band)"
    print(f"coverage of the {level:.0%} lower bound on T (IPCW; band = {band_name}):", file=out)
    print("  horizon   band   curve  conformal  P(event by t)", file=out)
    for h, row in cov["horizons"].items():
        if row is None:
            continue
        c = (conf.get("horizons") or {}).get(h)
        cval = _fmt(c["coverage"]) if c else "n/a"
        band = _fmt(row["band"]["coverage"]) if cov["band"] else "n/a"
        print(f"  {h!s:>7s}  {band:>5s}  {_fmt(row['curve']['coverage']):>5s}  {cval:>9s}  "
              f"{_fmt(row['curve']['event_prob'])}", file=out)
    for h, d in res["decision_curve"]["horizons"].items():
        if d is None:
            continue
        best = [(p, nb) for p, nb, a in zip(d["thresholds"], d["net_benefit"], d["treat_all"])
                if nb is not None and a is not None and nb > max(a, 0.0)]
        span = f"{best[0][0]:.2f}-{best[-1][0]:.2f}" if best else "none"
        print(f"decision curve {h} d: net benefit above treat-all and treat-none between thresholds {span}",
              file=out)
    sub = res.get("subgroups")
    if sub:
        print(f"subgroups by {sub['column']} ({sub['kind']}):", file=out)
        for g in sub["groups"]:
            print(f"  {g['label']:>20s}  n={g['n']:<5d} events={g['events']:<5d} C {_fmt(g['c_index'])}"
                  f"{_ci(g['c_index_ci'])}" + (f"  ({g['note']})" if g.get("note") else ""), file=out)
