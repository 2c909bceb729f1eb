"""Benchmark on a real-anatomy cohort: image_only against the image-part oracle, best fusion against the full oracle.

Builds (or reuses) a cohort from the real abdominal CT with
:func:`core.demo.real_anatomy.write_real_anatomy_cohort` (a different pose,
crop and noise per subject, lesions in at least two organs, a known hazard
from lesion size plus tabular EHR), then for each image encoder and fusion
strategy runs the project's own command line in a subprocess::

    python -m core train --cohort C --fusion F --out M [--image-encoder-kind K]
    python -m core evaluate --model M --cohort C --json

and prints, per encoder, image_only's test C-index against the image-part
oracle (Harrell's C of ``risk_image`` on the test split) and the best fusion
against the full oracle (Harrell's C of ``true_risk``), with times.
``ehr_only`` does not read the image: it is trained once and shown for every
encoder as the EHR-side unimodal reference.

Usage::

    python bench/real_anatomy.py --oracle-only                          # build the cohort, oracle numbers only
    python bench/real_anatomy.py --encoders default --fusions image_only --n 200 --slices 30
    python bench/real_anatomy.py --encoders default,3d,foundation       # all seven strategies per encoder

``--encoders``: ``default`` runs ``train`` without ``--image-encoder-kind``
(the project's default encoder); any other name is passed as
``--image-encoder-kind NAME``. A run that fails is reported with its error
line and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FUSIONS = ("image_only", "ehr_only", "concat", "contrastive", "cross_attention", "coattention_image", "coattention_ehr")
IMAGE_FUSIONS = tuple(f for f in FUSIONS if f != "ehr_only")


def _split_list(text: str, field: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    from core.errors import InputError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(field, text, "names nothing", f"pass a comma-separated list, e.g. {field} {allowed[0] if allowed else 'default'}")
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise InputError(field, ",".join(bad), f"unknown (known: {', '.join(allowed)})", f"pass a subset of {','.join(allowed)}")
    return items


def build_cohort(args: argparse.Namespace) -> tuple[Path, float | None]:
    """The cohort folder (built unless it already holds a cohort and --rebuild is not given) and the build seconds."""
    from core.demo.real_anatomy import write_real_anatomy_cohort

    fov = f"_fov{args.fov:g}" if args.fov != 1.0 else ""
    cohort = args.cohort or args.work / f"cohort_n{args.n}_s{args.slices}_seed{args.seed}_{args.organs.replace(',', '-')}{fov}"
    if (cohort / "cohort.csv").is_file() and not args.rebuild:
        print(f"reusing {cohort} (pass --rebuild to write it again)", file=sys.stderr)
        return cohort, None
    from tqdm import tqdm

    bar = tqdm(total=100, desc="real-anatomy cohort", unit="%", file=sys.stderr)

    def progress(fraction: float, label: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(label)
        bar.refresh()

    started = time.perf_counter()
    write_real_anatomy_cohort(cohort, args.ct, n=args.n, seed=args.seed, organs=args.organs, slices=args.slices,
                              fov=args.fov, progress=progress)
    bar.close()
    return cohort, time.perf_counter() - started


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts) / 2**20


def oracles(cohort: Path) -> dict[str, float]:
    from core.demo.real_anatomy import oracle_summary

    table = pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})
    return oracle_summary(table, "test")


def learnable_ceiling(cohort: Path) -> dict[str, float | None]:
    """What a Cox model told the hazard's true form reaches from the cohort's own training split (test C).

    The oracles score the true risk itself; no model trained on a few hundred subjects reaches them. This fits
    lifelines' ``CoxPHFitter`` on the train split to (a) the EHR part's own terms from features.csv (age, the
    four conditions as present / absent, log BNP, log creatinine and albumin with the generator's values for a
    lab never measured: ``core.demo.latents.ehr_part``) and (b) those terms plus the true image part
    ``risk_image``, and scores both on the test split. (b) is the ceiling of a fusion whose image side is
    perfect and whose EHR side must still be learned from these subjects; (a) is ehr_only's.
    """
    import numpy as np
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    from core.demo import latents as L
    from core.evaluate.metrics import harrell_c

    table = pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})
    features = pd.read_csv(cohort / "features.csv", dtype={"subject_id": str})
    d = table.merge(features, on="subject_id", how="left", validate="one_to_one")
    x = pd.DataFrame({"age": d["age"]})
    for name in L.CONDITION_EFFECT:
        x[name] = (d[f"n_dx_{name}"].fillna(0) > 0).astype(float)
    x["log_bnp"] = np.log(d["last_bnp"].fillna(L.BNP_UNMEASURED))
    x["log_creatinine"] = np.log(d["last_creatinine"].fillna(L.CREATININE_UNMEASURED))
    x["albumin"] = d["last_albumin"].fillna(L.ALBUMIN_UNMEASURED)
    train, test = (d["split"] == "train").to_numpy(), (d["split"] == "test").to_numpy()

    def score(cols: pd.DataFrame) -> float | None:
        z = (cols - cols[train].mean()) / cols[train].std().replace(0, 1)
        try:
            fit = CoxPHFitter(penalizer=0.01).fit(z[train].assign(time=d["time"][train], event=d["event"][train]),
                                                  "time", "event")
        except ConvergenceError:  # a handful of training subjects: no ceiling to report
            return None
        risk = fit.predict_log_partial_hazard(z[test]).to_numpy()
        return harrell_c(d["time"].to_numpy()[test], d["event"].to_numpy()[test], risk)

    return {"ehr_form": score(x), "image_part_plus_ehr_form": score(x.assign(risk_image=d["risk_image"]))}


def _last_error(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def _run(cmd: list[str], timeout_s: float | None) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; a timeout comes back as exit status 124 with a message."""
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"error: timed out after {timeout_s:.0f} s (--timeout-s)")


def _train_cmd(cohort: Path, model: Path, fusion: str, kind: str | None, extra: list[str],
               overrides: dict | None) -> list[str]:
    """The real ``train`` command line, or, with settings ``overrides`` (which the command line does not take),
    the same ``core.train.train_model`` call in a fresh interpreter."""
    if overrides is None:
        cmd = [sys.executable, "-m", "core", "train", "--cohort", str(cohort), "--fusion", fusion, "--out", str(model), *extra]
        return cmd + (["--image-encoder-kind", kind] if kind is not None else [])
    opts = dict(zip(extra[::2], extra[1::2]))
    kwargs = {"epochs": int(opts["--epochs"]) if "--epochs" in opts else None,
              "ensemble": int(opts["--ensemble"]) if "--ensemble" in opts else None,
              "device": opts.get("--device", "auto"), "image_encoder_kind": kind or "auto", "overrides": overrides}
    code = ("import json, sys; from core.train import train_model; "
            "train_model(sys.argv[1], sys.argv[2], sys.argv[3], **json.loads(sys.argv[4]))")
    return [sys.executable, "-c", code, str(cohort), fusion, str(model), json.dumps(kwargs)]


def run_overrides(settings: str | None, image_settings: str | None) -> dict | None:
    """The settings overrides of the image encoder runs: ``--settings`` at the top level, ``--image-settings``
    merged into its ``image`` part; None when neither is given (the runs then use the train command)."""
    overrides: dict = json.loads(settings) if settings else {}
    if image_settings:
        overrides["image"] = {**overrides.get("image", {}), **json.loads(image_settings)}
    return overrides or None


def run_one(cohort: Path, model: Path, fusion: str, kind: str | None, extra: list[str],
            timeout_s: float | None = None, overrides: dict | None = None, label: str | None = None) -> dict:
    """Train and evaluate one model with the real command line; returns C-index, seconds or the error."""
    cmd = _train_cmd(cohort, model, fusion, kind, extra, overrides)
    started = time.perf_counter()
    proc = _run(cmd, timeout_s)
    train_s = time.perf_counter() - started
    row: dict = {"fusion": fusion, "encoder": label or kind or "default", "train_s": round(train_s, 1), "c_index": None,
                 "c_index_ci": None, "eval_s": None, "error": None}
    if proc.returncode != 0:
        row["error"] = f"train exit {proc.returncode}: {_last_error(proc.stderr or proc.stdout)}"
        return row
    started = time.perf_counter()
    proc = _run([sys.executable, "-m", "core", "evaluate", "--model", str(model), "--cohort", str(cohort), "--json"], timeout_s)
    row["eval_s"] = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        row["error"] = f"evaluate exit {proc.returncode}: {_last_error(proc.stderr or proc.stdout)}"
        return row
    res = json.loads(proc.stdout)
    row["c_index"] = res["c_index"]
    row["c_index_ci"] = res.get("c_index_ci")
    row["oracle_c_index"] = res.get("oracle_c_index")
    metrics = model / "metrics.json"
    if metrics.is_file():  # the image stage's own numbers (validation C, epochs)
        image_stage = json.loads(metrics.read_text()).get("image_encoder") or {}
        row["stage_a_val_c"] = image_stage.get("val_c_index")
        row["stage_a_s"] = image_stage.get("seconds")
    return row


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary_table(rows: list[dict], orc: dict[str, float], encoders: list[str]) -> str:
    """Markdown: per encoder, image_only vs the image-part oracle and the best fusion vs the full oracle."""
    ehr = next((r for r in rows if r["fusion"] == "ehr_only" and r["c_index"] is not None), None)
    out = [("| encoder | image_only C | image-part oracle | gap | ehr_only C | best fusion | C | full oracle | gap | "
            "fusion - best unimodal | image_only train s | all trains s |"),
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for enc in encoders:
        mine = [r for r in rows if r["encoder"] == enc and r["fusion"] != "ehr_only"]
        img = next((r for r in mine if r["fusion"] == "image_only"), None)
        fused = [r for r in mine if r["fusion"] not in ("image_only",) and r["c_index"] is not None]
        best = max(fused, key=lambda r: r["c_index"], default=None)
        img_c = img["c_index"] if img else None
        uni = [c for c in (img_c, ehr["c_index"] if ehr else None) if c is not None]
        margin = best["c_index"] - max(uni) if best and uni else None
        total = sum(r["train_s"] + (r["eval_s"] or 0.0) for r in mine)
        out.append(f"| {enc} | {_fmt(img_c)} | {orc['image_part']:.3f} | {_fmt(None if img_c is None else orc['image_part'] - img_c)} | "
                   f"{_fmt(ehr['c_index'] if ehr else None)} | {best['fusion'] if best else 'n/a'} | {_fmt(best['c_index'] if best else None)} | "
                   f"{orc['oracle']:.3f} | {_fmt(None if best is None else orc['oracle'] - best['c_index'])} | {_fmt(margin)} | "
                   f"{img['train_s'] if img else 'n/a'} | {total:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from core.demo.real_anatomy import (
        DEFAULT_CT,
        DEFAULT_N,
        DEFAULT_ORGANS,
        DEFAULT_SLICES,
        check_organs,
    )
    from core.errors import InputError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/real_anatomy"), help="folder for the cohort and the models")
    parser.add_argument("--cohort", type=Path, default=None, help="cohort folder (default: under --work, named by the parameters)")
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT, help="the real CT the subjects are rendered from")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"subjects (default {DEFAULT_N})")
    parser.add_argument("--slices", type=int, default=DEFAULT_SLICES, help=f"slices per study (default {DEFAULT_SLICES}; 30 keeps the source's ~3 mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fov", type=float, default=1.0,
                        help="field of view relative to the rendered one: > 1 pads every study with air around the body (default 1)")
    parser.add_argument("--organs", default=",".join(DEFAULT_ORGANS), help="lesion organs, comma-separated (liver, bone, lung, spleen, muscle)")
    parser.add_argument("--rebuild", action="store_true", help="write the cohort again even if the folder holds one")
    parser.add_argument("--oracle-only", action="store_true", help="build the cohort and print the oracle C-indices; train nothing")
    parser.add_argument("--encoders", default="default,3d,foundation", help="image encoders: default or an --image-encoder-kind name")
    parser.add_argument("--fusions", default=",".join(FUSIONS), help="fusion strategies (default all seven)")
    parser.add_argument("--epochs", type=int, default=None, help="passed to train --epochs")
    parser.add_argument("--ensemble", type=int, default=None, help="passed to train --ensemble")
    parser.add_argument("--device", default=None, help="passed to train --device (auto, cpu, cuda)")
    parser.add_argument("--image-settings", default=None,
                        help="JSON merged into the image settings of every image encoder run (e.g. '{\"lung_mask\": true}'); "
                             "such runs call core.train.train_model with overrides instead of the train command")
    parser.add_argument("--settings", default=None,
                        help="JSON merged into the top level of the training settings of every image encoder run "
                             "(e.g. '{\"foundation\": {\"grid\": [160, 224, 224]}}'); such runs call core.train.train_model")
    parser.add_argument("--label", default=None, help="name of the encoder in the tables (default: the --encoders name)")
    parser.add_argument("--timeout-s", type=float, default=None, help="stop a train or evaluate run after this many seconds (reported as an error)")
    parser.add_argument("--overlay", type=Path, default=None, help="also save a PNG of the organ masks on the base CT")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.organs = ",".join(check_organs(args.organs))
        encoders = _split_list(args.encoders, "--encoders")
        fusions = _split_list(args.fusions, "--fusions", FUSIONS)
        args.work.mkdir(parents=True, exist_ok=True)
        cohort, build_s = build_cohort(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.overlay is not None:
        from core.demo.real_anatomy import save_organ_overlay

        print(f"organ masks: {save_organ_overlay(args.ct, args.overlay)}")
    orc = oracles(cohort)
    table = pd.read_csv(cohort / "cohort.csv", dtype={"subject_id": str})
    test = table[table["split"] == "test"]
    size = folder_mb(cohort)
    built = "reused" if build_s is None else f"built in {build_s:.0f} s"
    print(f"cohort {cohort}: n = {len(table)}, {built}, {size:.0f} MB; test split n = {len(test)}, events = {int(test['event'].sum())}")
    print(f"oracle (test split): full (true_risk) {orc['oracle']:.3f}, image part (risk_image) {orc['image_part']:.3f}, "
          f"EHR part (risk_ehr) {orc['ehr_part']:.3f}")
    ceiling = learnable_ceiling(cohort)
    print(f"learnable from the train split (Cox told the true form; test C): EHR part {_fmt(ceiling['ehr_form'])}, "
          f"true image part + EHR part {_fmt(ceiling['image_part_plus_ehr_form'])}")
    result: dict = {"cohort": str(cohort), "n": len(table), "build_s": build_s, "size_mb": round(size, 1), "oracle_test": orc,
                    "learnable_test": ceiling, "runs": []}
    if not args.oracle_only:
        extra: list[str] = []
        for flag, value in (("--epochs", args.epochs), ("--ensemble", args.ensemble), ("--device", args.device)):
            if value is not None:
                extra += [flag, str(value)]
        models = args.work / "models" / cohort.name
        rows: list[dict] = []
        if "ehr_only" in fusions:
            row = run_one(cohort, models / "ehr_only", "ehr_only", None, extra, args.timeout_s)
            row["encoder"] = "(none)"
            rows.append(row)
            print(json.dumps(row), flush=True)
        overrides = run_overrides(args.settings, args.image_settings)
        for enc in encoders:
            kind = None if enc == "default" else enc
            label = args.label if args.label and len(encoders) == 1 else enc
            for fusion in (f for f in fusions if f != "ehr_only"):
                row = run_one(cohort, models / label / fusion, fusion, kind, extra, args.timeout_s, overrides, label)
                rows.append(row)
                print(json.dumps(row), flush=True)
        print()
        print("| encoder | fusion | test C (95% CI) | train s | evaluate s | error |\n| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            ci = "" if not r.get("c_index_ci") else f" ({r['c_index_ci'][0]:.3f}-{r['c_index_ci'][1]:.3f})"
            print(f"| {r['encoder']} | {r['fusion']} | {_fmt(r['c_index'])}{ci} | {r['train_s']} | {r['eval_s']} | {r['error'] or ''} |")
        print()
        print(summary_table(rows, orc, [args.label] if args.label and len(encoders) == 1 else encoders))
        result["runs"] = rows
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
