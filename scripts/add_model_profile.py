"""Add "what this model can read" (``core.study_profile``, ``core.timeline_profile``) to model folders trained
before it existed.

Reads each model's ``config.json``, measures the training studies of its cohort
(the train split; the same seeded sample ``train`` uses) and the share of its
training timelines' events with a known code, writes the profiles into
``config.json`` (keys ``study_profile`` and ``timeline_profile``; every other key
unchanged) and puts their sections into ``MODEL_CARD.md`` (replacing older ones,
before "## Limitations"). Weights and metrics are not touched. ``--only timeline``
(or ``study``) writes one of the two; ``--only features`` only the card's section on the curated features (read
from config.json, no cohort needed).

    python scripts/add_model_profile.py --cohort COHORT MODEL [MODEL ...] [--manifest MANIFEST] [--only timeline]

For the shipped demo models (``assets/demo_models``) the cohort is the default demo
cohort; ``--manifest assets/demo_models/MANIFEST.json`` checks that its cohort.csv
is the one they were trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.cohort import load_cohort  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.models.config import ModelConfig  # noqa: E402
from core.inputs import ehr_arrays  # noqa: E402
from core.study_profile import card_lines, image_cohort_profile  # noqa: E402
from core.timeline_profile import PROFILE_KEY, reference_profile  # noqa: E402
from core.timeline_profile import card_lines as timeline_card_lines  # noqa: E402
from core.feature_profile import SECTION as FEATURE_SECTION  # noqa: E402
from core.feature_profile import card_lines as feature_card_lines  # noqa: E402

SECTION = "## What this model can read"
TIMELINE_SECTION = "## Timeline codes this model reads"


def card_with_profile(card: str, lines: list[str], section: str = SECTION) -> str:
    """``card`` with its ``section`` replaced by ``lines`` (inserted before Limitations).

    >>> c = "# M\\n\\n## Metrics\\n- x\\n\\n## Limitations\\n- y\\n"
    >>> out = card_with_profile(c, ["## What this model can read", "", "- z", ""])
    >>> out.index("- z") < out.index("## Limitations"), card_with_profile(out, ["## What this model can read", "", "- w", ""]).count("What this")
    (True, 1)
    """
    body = re.sub(rf"{re.escape(section)}\n.*?(?=^## |\Z)", "", card, flags=re.S | re.M)
    if not lines:
        return body
    block = "\n".join(lines) + "\n"
    if "## Limitations" in body:
        return body.replace("## Limitations", block + "## Limitations", 1)
    return body.rstrip("\n") + "\n\n" + block


def add_profile(model_dir: Path, cohort_dir: Path | None, only: str | None = None) -> dict:
    """Write the profiles into one model folder; returns their sizes (None for a model that reads no CT voxels, or
    no timeline). ``only``: "study" or "timeline" to write one of the two, "features" for the card's section on the
    curated features alone (from config.json; no cohort needed)."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise InputError("model", str(model_dir), "has no config.json", "pass a model folder written by `python -m core train`")
    raw = json.loads(cfg_path.read_text())
    cfg = ModelConfig.from_dict(raw)
    card_path = model_dir / "MODEL_CARD.md"
    card = card_path.read_text() if card_path.exists() else None
    done: dict = {"model": model_dir.name}
    if only in (None, "features"):
        lines = feature_card_lines(cfg.ehr.tabular, cfg.ehr.curated_features)
        card = None if card is None else card_with_profile(card, lines, FEATURE_SECTION)
        done["features"] = len(cfg.ehr.curated_features)
        if only == "features":
            if card is not None:
                card_path.write_text(card)
            return done
    if cohort_dir is None:
        raise InputError("--cohort", "none", "is needed for the study and timeline profiles", "pass the training cohort")
    cohort = load_cohort(cohort_dir, seed=cfg.seed)
    if only in (None, "study"):
        profile = image_cohort_profile(cohort, cohort.ids("train"), cfg.image, seed=cfg.seed)
        if profile is None:
            raw.pop("study_profile", None)
        else:
            raw["study_profile"] = profile
        card = None if card is None else card_with_profile(card, card_lines(profile))
        done["studies"] = None if profile is None else profile["n_studies"]
    if only in (None, "timeline"):
        timelines = None
        if cfg.ehr.sequence:
            ids = cohort.ids()
            arrays = ehr_arrays(cohort, ids, cfg.ehr)
            split = cohort.table.set_index("subject_id").loc[ids, "split"].to_numpy()
            timelines = reference_profile(arrays["codes"], arrays["event_mask"], split == "train", split == "val",
                                          n_codes=len(cfg.ehr.sequence["codes"]))
        if timelines is None:
            raw.pop(PROFILE_KEY, None)
        else:
            raw[PROFILE_KEY] = timelines
        codes = cfg.ehr.sequence.get("codes", []) if cfg.ehr.sequence else []
        card = None if card is None else card_with_profile(card, timeline_card_lines(timelines, codes), TIMELINE_SECTION)
        done["timelines"] = None if timelines is None else timelines["n_subjects"]
    cfg_path.write_text(json.dumps(raw, indent=2) + "\n")
    if card is not None:
        card_path.write_text(card)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--cohort", type=Path, default=None,
                        help="the cohort folder the models were trained on (not needed for --only features)")
    parser.add_argument("--manifest", type=Path, default=None, help="MANIFEST.json whose cohort_sha256 the cohort must match")
    parser.add_argument("--only", choices=("study", "timeline", "features"), default=None,
                        help="write one of the two profiles, or the card's section on the curated features")
    args = parser.parse_args(argv)
    if args.manifest is not None and args.cohort is not None:
        want = json.loads(args.manifest.read_text()).get("cohort_sha256")
        got = hashlib.sha256((args.cohort / "cohort.csv").read_bytes()).hexdigest()
        if want != got:
            print(f"error: cohort: got cohort.csv SHA-256 {got[:16]}..., the manifest wants {str(want)[:16]}...; "
                  "fix: pass the cohort the models were trained on", file=sys.stderr)
            return 2
    for model in args.models:
        if (model / "config.json").exists():
            print(json.dumps(add_profile(model, args.cohort, args.only)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
