"""``python -m core site-model add MODEL --cohort DIR --label NAME | list | remove NAME [--data-dir DIR]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "add, list or remove the models every user of the app sees (trained on the command line, with their cohort)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("add", "list", "remove"),
                        help="add: copy a model folder in; list: the site models; remove: one of them")
    parser.add_argument("model", nargs="?", default=None,
                        help="add: the model folder (`train --out`); remove: the site model's label")
    parser.add_argument("--cohort", type=Path, default=None,
                        help="add: the cohort folder the model was trained on (stays where it is: the app evaluates "
                             "the model on its test split and draws the reference curves from it)")
    parser.add_argument("--label", default=None, help="add: the name users see (the app adds ' (site)')")
    parser.add_argument("--replace", action="store_true", help="add: put the model in the place of the one with "
                        "this label")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the app's data folder (default: $CTEHR_DATA_DIR, else ./data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from core.app.paths import data_dir
    from core.app.site_models import add_site_model, audit_name, list_site_models, remove_site_model
    from core.errors import InputError

    root = args.data_dir or data_dir()
    if args.action == "add":
        for field, value, fix in (("model", args.model, "name the model folder: site-model add MODEL --cohort DIR "
                                   "--label NAME"), ("--cohort", args.cohort, "pass the cohort folder it was trained on"),
                                  ("--label", args.label, "pass the name users should see, e.g. --label 'Lung CT 2025'")):
            if value is None:
                raise InputError(field, "absent", "is needed to add a site model", fix)
        target = add_site_model(Path(args.model), args.cohort, args.label, root, replace=args.replace)
        result: dict[str, object] = {"added": str(target), "label": " ".join(args.label.split())}
        text = f"added {result['label']!r} ({target}); the app lists it as '{result['label']} (site)' for every user"
    elif args.action == "remove":
        if args.model is None:
            raise InputError("label", "absent", "is needed to remove a site model", "site-model remove NAME")
        target = remove_site_model(args.model, root)
        result, text = {"removed": str(target)}, f"removed {args.model!r} ({target}); its cohort folder is kept"
    else:
        found = list_site_models(root)
        result = {"models": [{"label": k, "model": str(m), "cohort": str(c), "audit_name": audit_name(k)}
                             for k, (m, c) in found.items()]}
        text = "\n".join(f"{k}\t{m}\ttrained on {c}\taudit log: {audit_name(k)}" for k, (m, c) in found.items()) \
            or f"no site models in {root}"
    print(json.dumps(result) if args.json else text)
    return 0
