"""``python -m core pool SITE.json SITE.json [...] [--labels A,B,...] [--csv OUT.csv] [--json]``."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

HELP = "pool one model's C-index over several sites' evaluations (random effects, with a new site's interval)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="SITE.json",
                        help="one model's evaluation at each site: what `evaluate --split all --json` printed, "
                        "saved to a file, one file per site (the same patients twice would count twice)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated site names in the order of the files (default: the files' names)")
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


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from core.evaluate.pooled import pooled_c_index

    sites = [_site(Path(p)) for p in args.results]
    labels = [p.stem for p in args.results] if args.labels is None else [x.strip() for x in args.labels.split(",")]
    if len(labels) != len(sites):
        raise InputError("--labels", args.labels, f"names {len(labels)} sites for {len(sites)} files",
                         "give one name per file, comma-separated, in the files' order")
    pooled = pooled_c_index([s["c_index"] for s in sites], [s["c_index_ci"][0] for s in sites],
                            [s["c_index_ci"][1] for s in sites])
    rows = [{"site": lab, "patients": s.get("n"), "events": s.get("events"), "c_index": s["c_index"],
             "c_low": s["c_index_ci"][0], "c_high": s["c_index_ci"][1], "weight": w}
            for lab, s, w in zip(labels, sites, pooled["weights"])]
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([*rows, {"site": "pooled (random effects)", "patients": sum(r["patients"] or 0 for r in rows),
                                      "events": sum(r["events"] or 0 for r in rows), "c_index": pooled["c"],
                                      "c_low": pooled["ci"][0], "c_high": pooled["ci"][1], "weight": 1.0}])
    if args.json:
        print(json.dumps({**pooled, "sites": rows}, allow_nan=False))
        return 0
    for r in rows:
        print(f"{r['site']:24s} C {r['c_index']:.3f} (95% CI {r['c_low']:.3f}-{r['c_high']:.3f}), n={r['patients']}, "
              f"weight {100 * r['weight']:.0f} %")
    print(f"{'pooled (random effects)':24s} C {pooled['c']:.3f} (95% CI {pooled['ci'][0]:.3f}-{pooled['ci'][1]:.3f}) "
          f"over {pooled['k']} sites")
    pi = pooled["prediction"]
    print("a new site               " + (f"C {pi[0]:.3f}-{pi[1]:.3f} (95% prediction interval)" if pi else
                                         "needs 3 sites for a prediction interval"))
    print(f"between sites            I2 {100 * pooled['i2']:.0f} %, tau2 {pooled['tau2']:.4f} (logit scale), "
          f"Cochran's Q {pooled['q']:.2f} (p {pooled['q_p']:.3f})")
    return 0
