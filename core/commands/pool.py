"""``python -m core pool SITE.json SITE.json [...] [--labels A,B,...] [--horizon 365] [--csv OUT.csv] [--json]``."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

HELP = ("pool one model's C-index and observed / expected risk over several sites' evaluations (random effects, "
        "with a new site's interval)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="SITE.json",
                        help="one model's evaluation at each site: what `evaluate --split all --json` printed, "
                        "saved to a file, one file per site (the same patients twice would count twice)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated site names in the order of the files (default: the files' names)")
    parser.add_argument("--horizon", type=float, default=365.0,
                        help="days at which the observed / expected risk is pooled (default 365; the evaluations' "
                        "horizons, 30, 365 and 1825 by default)")
    parser.add_argument("--csv", type=Path, default=None, metavar="CSV",
                        help="also write each site's C-index, interval and weight, and the pooled row")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _site(path: Path) -> dict:
    """One site's evaluation read from ``path`` (``evaluate --json``'s object); an ``InputError`` names the file."""
    from core.errors import InputError

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("SITE.json", str(path), "does not exist", "pass the files `evaluate --json` wrote") from None
    except (UnicodeDecodeError, ValueError):
        raise InputError("SITE.json", path.name, "is not a JSON file",
                         "save what `python -m core evaluate --split all --json` printed, one file per site") from None
    ci = raw.get("c_index_ci") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("c_index") is None or not isinstance(ci, list) or None in ci:
        raise InputError("SITE.json", path.name, "holds no C-index with its interval (c_index, c_index_ci)",
                         "pass an evaluation printed by `evaluate --json` whose cohort had comparable pairs")
    return raw


def _one_model(paths: list[Path], sites: list[dict], horizon: float) -> None:
    """Refuse (``InputError``) what cannot be pooled as one model's validations at several sites: evaluations of
    different models (other weights, recorded as ``model_fingerprint``, or another ``fusion``), of a model's own
    training or validation patients (``split`` train or val), the same evaluation twice, or a horizon no file holds."""
    from core.errors import InputError
    from core.horizons import at_horizon

    def differ(key: str) -> tuple[str, str] | None:
        seen = {}
        for path, site in zip(paths, sites):
            if site.get(key) not in (None, 0.0, ""):
                seen.setdefault(site[key], path.name)
        return tuple(seen.values())[:2] if len(seen) > 1 else None  # type: ignore[return-value]

    for key, what in (("fusion", "strategies"), ("model_fingerprint", "weights")):
        if (pair := differ(key)) is not None:
            raise InputError("SITE.json", ", ".join(pair), f"are evaluations of different models (other {what})",
                             "pool one model's evaluations: run `evaluate --split all` with the same model folder at "
                             "each site")
    for path, site in zip(paths, sites):
        if site.get("split") in ("train", "val"):
            raise InputError("SITE.json", path.name, f"evaluates the model's own {site['split']} split (patients it "
                             "was fitted or stopped on)", "pool evaluations on patients the model never saw: "
                             "`evaluate --split all` on each site's cohort (or --split test at the training site)")
    key = [(s.get("n"), s.get("events"), s.get("c_index"), tuple(s.get("c_index_ci") or ())) for s in sites]
    for i, k in enumerate(key):
        if k in key[:i]:
            raise InputError("SITE.json", f"{paths[key.index(k)].name}, {paths[i].name}", "hold the same evaluation "
                             "(the same patients, C-index and interval)", "pass each site's evaluation once")
    if not horizon > 0:
        raise InputError("--horizon", horizon, "is not a positive number of days", "pass days after the index date, "
                         "e.g. --horizon 365")
    if sites and all(s.get("calibration") and at_horizon(s["calibration"], horizon) is None for s in sites):
        held = sorted({float(h) for s in sites for h in s["calibration"]})
        raise InputError("--horizon", horizon, f"is not a horizon of these evaluations (they hold "
                         f"{', '.join(f'{h:g}' for h in held)} days)", "pass one of those, or evaluate again with "
                         "--horizons including it")


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from core.evaluate.pooled import pooled_c_index, pooled_oe, site_rows
    from core.horizons import horizon_label

    sites = [_site(Path(p)) for p in args.results]
    _one_model([Path(p) for p in args.results], sites, args.horizon)
    labels = [p.stem for p in args.results] if args.labels is None else [x.strip() for x in args.labels.split(",")]
    if len(labels) != len(sites):
        raise InputError("--labels", args.labels, f"names {len(labels)} sites for {len(sites)} files",
                         "give one name per file, comma-separated, in the files' order")
    rows, _ = site_rows(list(zip(labels, sites)), args.horizon)  # _site refused a file without a C-index interval
    pooled = pooled_c_index([r["c_index"] for r in rows], [r["c_low"] for r in rows], [r["c_high"] for r in rows])
    with_oe = [r for r in rows if r["oe"] is not None]
    oe = pooled_oe([r["oe"] for r in with_oe], [r["oe_low"] for r in with_oe], [r["oe_high"] for r in with_oe]) \
        if len(with_oe) >= 2 else None
    for r, w in zip(rows, pooled["weights"]):
        r["weight"] = w
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([*rows, {"site": "pooled (random effects)", "patients": sum(r["patients"] or 0 for r in rows),
                                      "events": sum(r["events"] or 0 for r in rows), "c_index": pooled["c"],
                                      "c_low": pooled["ci"][0], "c_high": pooled["ci"][1], "weight": 1.0,
                                      **({"oe": oe["oe"], "oe_low": oe["ci"][0], "oe_high": oe["ci"][1]} if oe else {})}])
    if args.json:
        print(json.dumps({**pooled, "horizon": args.horizon, "oe": oe, "sites": rows}, allow_nan=False))
        return 0
    when = horizon_label(args.horizon)
    for r in rows:
        cal = f", O:E at {when} {r['oe']:.2f} ({r['oe_low']:.2f}-{r['oe_high']:.2f})" if r["oe"] is not None else ""
        print(f"{r['site']:24s} C {r['c_index']:.3f} (95% CI {r['c_low']:.3f}-{r['c_high']:.3f}), n={r['patients']}, "
              f"weight {100 * r['weight']:.0f} %{cal}")
    _print_pooled("C", pooled["c"], pooled, "")
    if oe is None:
        print(f"O:E at {when}             known at {len(with_oe)} of {len(rows)} sites: 2 needed to pool")
    else:
        _print_pooled(f"O:E at {when}", oe["oe"], oe, " (above 1 the model under-predicts)")
    return 0


def _print_pooled(name: str, value: float, pooled: dict, note: str) -> None:
    print(f"pooled {name:17s} {value:.3f} (95% CI {pooled['ci'][0]:.3f}-{pooled['ci'][1]:.3f}) over {pooled['k']} "
          f"sites{note}")
    pi = pooled["prediction"]
    print("  at a new site          " + (f"{pi[0]:.3f}-{pi[1]:.3f} (95% prediction interval)" if pi else
                                          "needs 3 sites for a prediction interval"))
    print(f"  between sites          I2 {100 * pooled['i2']:.0f} %, tau2 {pooled['tau2']:.4f}, Cochran's Q "
          f"{pooled['q']:.2f} (p {pooled['q_p']:.3f})")
