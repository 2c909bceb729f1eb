"""``python -m core sanity --model M --cohort DIR [--method saliency] [--max-cases N] [--json] [--out DIR]``.

Cascading model-parameter randomization and the pointing game (see core.sanity).
``--out DIR`` writes ``randomization.csv``, ``pointing.csv`` and
``randomization.html``; when ``--out`` is the model folder, or with
``--update-card``, the numbers go into the model's MODEL_CARD.md ("Sanity checks").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "sanity checks of explanations (randomization test, pointing game)"
from core.explain import METHODS, check_method


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder with lesion columns (demo)")
    parser.add_argument("--method", default="saliency", help=f"one of {', '.join(METHODS)}")
    parser.add_argument("--horizon", type=float, default=None, help="target horizon in days")
    parser.add_argument("--max-cases", type=int, default=5, help="lesion cases for the pointing game")
    parser.add_argument("--randomization-cases", type=int, default=2, help="cases for the randomization test")
    parser.add_argument("--tolerance-mm", type=float, default=10.0, help="pointing-game tolerance beyond the radius")
    parser.add_argument("--out", type=Path, default=None, help="folder for the tables and figure")
    parser.add_argument("--update-card", action="store_true",
                        help="write this method's results into the model's MODEL_CARD.md (its earlier block replaced, "
                             "other methods' kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from core.errors import InputError

    check_method(args.method, "--method")
    if args.max_cases < 1 or args.randomization_cases < 1:
        raise InputError("max-cases", min(args.max_cases, args.randomization_cases), "must be >= 1", "use e.g. 5")
    import pandas as pd

    from core.cohort import load_cohort
    from core.registry import load_model
    from core.sanity import (
        append_to_model_card,
        cascading_randomization,
        model_card_section,
        pointing_game,
        randomization_note,
    )

    model = load_model(args.model)
    cohort = load_cohort(args.cohort)
    ids = [sid for sid in cohort.ids("test") if cohort.load_volume(sid) is not None][: args.randomization_cases]
    if not ids:
        raise InputError("cohort", str(args.cohort), "has no test case with a CT", "use a cohort with studies")
    print(f"randomization test on {len(ids)} case(s)...", file=sys.stderr)
    table, fig = cascading_randomization(model, [model.case_inputs(cohort, s) for s in ids], args.method, args.horizon)
    print("pointing game...", file=sys.stderr)
    pointing = pointing_game(model, cohort, args.method, args.horizon, max_cases=args.max_cases,
                             tolerance_mm=args.tolerance_mm)
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "randomization.csv", index=False)
        pd.DataFrame(pointing["cases"]).to_csv(out / "pointing.csv", index=False)
        fig.write_html(out / "randomization.html", include_plotlyjs="cdn")
    card = args.update_card or (args.out is not None and Path(args.out).resolve() == Path(args.model).resolve())
    if card:
        source = f"cohort {Path(args.cohort).resolve().name}, test split, {len(ids)} randomization case(s)"
        append_to_model_card(args.model, model_card_section(table, pointing, args.method, randomization_note(model),
                                                            source))
    result = {"method": args.method, "randomization": table.to_dict(orient="records"),
              "final_spearman": float(table["spearman"].iloc[-1]), "pointing_rate": pointing["rate"],
              "pointing_hits": pointing["hits"], "pointing_n": pointing["n"], "tolerance_mm": pointing["tolerance_mm"],
              "model_card_updated": bool(card), "note": randomization_note(model)}
    if args.json:
        print(json.dumps(result))
    else:
        for r in table.itertuples():
            print(f"step {r.step:2d} {r.layer:32s} spearman {r.spearman:+.3f}")
        print(f"pointing game: {pointing['hits']}/{pointing['n']} hits (rate {pointing['rate']:.2f}, "
              f"tolerance {pointing['tolerance_mm']:g} mm)")
        if result["note"]:
            print(f"note: {result['note']}")
    return 0
