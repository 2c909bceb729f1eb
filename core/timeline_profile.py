"""What a model can read of a timeline: the share of events whose codes it was trained on.

A sequence model reads a MEDS event through its code's embedding; a code that is
not in its vocabulary (``core.models.ehr_sequence``) is read as one shared
"unknown" code. Codes differ between sites (``LAB//50912//mg/dL`` at one,
``LOINC//2160-0`` at another), so a timeline from another site can be read as a
run of unknown events and still give a confident risk. This module keeps, per
model, how well timelines of its own site were covered and warns when a case's
timeline is covered far less.

``build_timeline_profile`` measures each subject's known share (among the events
the model reads: at or before the index time, the last ``max_events``) from the
encoded arrays of the validation split: held-out patients of the training site,
read with the vocabulary of the train split (the train split's own timelines are
covered by construction: a vocabulary of all their codes reads them at 100 %).
Without ``MIN_SUBJECTS`` validation timelines, the train split's are used.
config.json keeps it as ``timeline_profile``. ``timeline_warning`` warns when a
case's known share lies below that 5th percentile minus ``MARGIN``. The warning names
the model's own codes (its vocabulary, frequent first) and counts the case's
unknown events by prefix only where the vocabulary uses that prefix: a site's
code text can carry free text (``core.deid.text``), so it is never echoed.

>>> import numpy as np
>>> codes = np.array([[2, 3, 0], [2, 1, 0], [4, 5, 6]]); mask = (codes > 0).astype(float)
>>> p = build_timeline_profile(codes, mask, n_codes=5)
>>> p["n_subjects"], p["known_share"]["min"], p["known_share"]["median"], p["split"]
(3, 0.5, 1.0, 'training')
>>> round(warn_below(p), 3)
0.4
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PROFILE_KEY = "timeline_profile"
VERSION = 1
MARGIN = 0.15  # below the reference subjects' 5th percentile of the known share by more than this: a warning
MIN_SUBJECTS = 10  # validation timelines needed to take the profile from them
UNKNOWN_INDEX = 1  # core.models.ehr_sequence.UNK (0 is padding)
_SEPARATOR = "//"


def known_shares(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per subject, the share of the events read (``mask``) whose code index is a vocabulary code (not UNK);
    NaN for a subject without events. ``codes`` / ``mask``: ``[N, max_events]`` as ``EventVocabulary.encode``."""
    read = np.asarray(mask) > 0
    n = read.sum(axis=1)
    known = (read & (np.asarray(codes) > UNKNOWN_INDEX)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, known / np.maximum(n, 1), np.nan)


def build_timeline_profile(codes: np.ndarray, mask: np.ndarray, *, n_codes: int,
                           split: str = "training") -> dict[str, Any] | None:
    """The known shares (``known_shares``) of the subjects of ``codes`` / ``mask`` summarised (``split`` names them:
    "validation" or "training"); None when no subject has an event."""
    shares = known_shares(codes, mask)
    shares = shares[np.isfinite(shares)]
    if not len(shares):
        return None
    return {"version": VERSION, "n_subjects": int(len(shares)), "split": split, "n_codes": int(n_codes), "margin": MARGIN,
            "known_share": {"min": round(float(shares.min()), 4), "p05": round(float(np.percentile(shares, 5)), 4),
                            "median": round(float(np.median(shares)), 4)}}


def reference_profile(codes: np.ndarray, mask: np.ndarray, train: np.ndarray, val: np.ndarray, *,
                      n_codes: int) -> dict[str, Any] | None:
    """:func:`build_timeline_profile` of the validation rows (``val``, a boolean row mask) when at least
    ``MIN_SUBJECTS`` of them have events, else of the train rows."""
    held_out = int((np.asarray(mask)[val].sum(axis=1) > 0).sum())
    if held_out >= MIN_SUBJECTS:
        return build_timeline_profile(codes[val], mask[val], n_codes=n_codes, split="validation")
    return build_timeline_profile(codes[train], mask[train], n_codes=n_codes)


def model_timeline_profile(config: Mapping[str, Any] | Any) -> dict[str, Any] | None:
    """The ``timeline_profile`` of a config.json dict or a ``ModelConfig`` (its ``extra``); None when absent."""
    extra = config.get(PROFILE_KEY) if isinstance(config, Mapping) else getattr(config, "extra", {}).get(PROFILE_KEY)
    return extra if isinstance(extra, dict) and isinstance(extra.get("known_share"), dict) else None


def warn_below(profile: Mapping[str, Any]) -> float:
    """The known share below which a case's timeline gets a warning."""
    share = profile["known_share"]
    return max(0.0, float(share["p05"]) - float(profile.get("margin", MARGIN)))


def _prefix(code: str) -> str:
    return code.split(_SEPARATOR, 1)[0] if _SEPARATOR in code else code


def timeline_warning(profile: Mapping[str, Any] | None, vocabulary: Sequence[str], codes: Sequence[str]) -> str | None:
    """A warning when the events a model reads of a case (``codes``, the kept events' codes) are covered by its
    vocabulary far less than its site's timelines were (``profile``), or not at all (then the model does not read
    them: ``core.inputs.ehr_arrays``); None without events or within range.

    >>> p = {"n_subjects": 40, "known_share": {"min": 0.9, "p05": 0.95, "median": 1.0}, "margin": 0.15}
    >>> text = timeline_warning(p, ["LAB//creatinine//mg/dL", "DX//I10"], ["LAB//50912//mg/dL", "NOTE//x", "DX//I10"])
    >>> text[:79], "NOTE" in text, "(1 LAB; 1 of kinds the model has no code of)" in text
    ('Timeline unlike the training timelines: 1 of the 3 events this model reads have', False, True)
    >>> timeline_warning(p, ["DX//I10"], ["DX//I10"]) is None, timeline_warning(None, ["DX//I10"], ["X", "DX//I10"]) is None
    (True, True)
    >>> "the model does not read this timeline" in timeline_warning(None, ["DX//I10"], ["X"])  # no code known: said
    True
    """
    if not len(codes):
        return None
    known_set = set(vocabulary)
    known = sum(1 for c in codes if str(c) in known_set)
    share = known / len(codes)
    if known and (not profile or share >= warn_below(profile)):
        return None  # (without a profile: only a timeline of which the model knows no code, which it does not read)
    prefixes = {_prefix(c) for c in vocabulary}
    unknown = Counter(_prefix(str(c)) for c in codes if str(c) not in known_set)
    kinds = [f"{n} {p}" for p, n in unknown.most_common() if p in prefixes]
    other = sum(n for p, n in unknown.items() if p not in prefixes)
    more = len(kinds) - 3
    parts = kinds[:3] + ([f"{more} more kind{'s' if more > 1 else ''}"] if more > 0 else []) \
        + ([f"{other} of kinds the model has no code of"] if other else [])
    examples = ", ".join(list(vocabulary)[:3])
    reference = "" if not profile else (
        f"; at least {float(profile['known_share']['p05']):.0%} in 95 % of {profile.get('n_subjects', '?')} "
        f"{profile.get('split', 'training')} timelines of its training site")
    consequence = ("are read as one 'unknown' code: do not rely on the EHR part of this prediction" if known else
                   "would be read as one 'unknown' code: with no code it knows, the model does not read this timeline's events")
    return (f"Timeline unlike the training timelines: {known} of the {len(codes)} events this model reads have a code it "
            f"was trained on ({share:.0%}{reference}). The others ({'; '.join(parts)}) {consequence}. Codes differ "
            f"between sites: write them as the model's {len(vocabulary)} codes (e.g. {examples}).")


VALUE_SD = 5.0  # a value further than this many training SDs from its code's training mean ...
UNIT_RATIO = 3.0  # ... and (positive values) at least this factor from the typical training value: another unit?
MIN_VALUES = 3  # values of a code a case needs before its unit is questioned (one extreme value is a sick patient)


def far_from_training(value: float, mean: float, std: float, logged: bool) -> bool:
    """Whether one value lies more than ``VALUE_SD`` training SDs and (both positive) ``UNIT_RATIO`` from the mean."""
    scaled = float(np.log1p(max(value, 0.0))) if logged else value
    typical = float(np.expm1(mean)) if logged else mean
    # a unit is a factor (88 for creatinine, 18 for glucose, 10 for g/dL and g/L): a positive value within
    # UNIT_RATIO of the typical one is a sick patient, whatever its SDs (a code seen a few times has a tiny SD)
    factor = max(value / typical, typical / value) if value > 0 and typical > 0 else np.inf
    return abs(scaled - mean) > VALUE_SD * std and factor >= UNIT_RATIO


def unit_suspects(sequence: Mapping[str, Any], codes: Sequence[str], values: Sequence[float], *,
                  min_values: int = MIN_VALUES, every: bool = True) -> list[dict[str, Any]]:
    """The model's codes whose values here look like another unit than at training: at least ``min_values`` values,
    and every one of them (``every``; one case) or their median (a whole split, where a few sick patients do not move
    it) more than ``VALUE_SD`` training SDs and a factor ``UNIT_RATIO`` from the training mean. ``sequence``: the
    vocabulary's ``codes``, ``value_mean``, ``value_std`` and ``log``, as config.json keeps them."""
    index = {c: i for i, c in enumerate(sequence.get("codes", []))}
    mean, std = sequence.get("value_mean", []), sequence.get("value_std", [])
    logged = set(sequence.get("log", []))
    by_code: dict[str, list[float]] = {}
    for code, value in zip(codes, values):
        code = str(code)
        if code in index and value is not None and np.isfinite(value):
            by_code.setdefault(code, []).append(float(value))
    out = []
    for code, vals in by_code.items():
        i, log = index[code], code in logged
        if len(vals) < min_values:
            continue
        checked = vals if every else [float(np.median(vals))]
        if all(far_from_training(v, float(mean[i]), float(std[i]), log) for v in checked):
            out.append({"code": code, "n_values": len(vals), "median": round(float(np.median(vals)), 4),
                        "training": (f"typically {float(np.expm1(mean[i])):.3g}" if log
                                     else f"{float(mean[i]):.3g} +- {float(std[i]):.2g}")})
    return out


def value_warning(sequence: Mapping[str, Any], codes: Sequence[str], values: Sequence[float]) -> str | None:
    """A warning naming the model's codes whose values in one case look like another unit (:func:`unit_suspects`:
    creatinine in umol/L under a mg/dL code). The network clips such values at 5 SDs, so their size is lost.

    >>> seq = {"codes": ["LAB//creatinine//mg/dL", "DX//I10"], "value_mean": [1.1, 0.0], "value_std": [0.5, 1.0]}
    >>> value_warning(seq, ["LAB//creatinine//mg/dL"] * 3 + ["DX//I10"], [88.0, 97.0, 120.0, float("nan")])[:105]
    'Values unlike the training timelines: LAB//creatinine//mg/dL (3 values, median 97; training 1.1 +- 0.5). '
    >>> value_warning(seq, ["LAB//creatinine//mg/dL"] * 3, [1.4, 88.0, 97.0]) is None  # one value in mg/dL
    True
    >>> value_warning({"codes": ["X"], "value_mean": [1.1], "value_std": [0.05]}, ["X"] * 3, [2.0] * 3) is None  # x 1.8
    True
    """
    far = [f"{u['code']} ({u['n_values']} values, median {u['median']:.3g}; training {u['training']})"
           for u in unit_suspects(sequence, codes, values)]
    if not far:
        return None
    return (f"Values unlike the training timelines: {'; '.join(far[:3])}" + (f"; and {len(far) - 3} more codes" if len(far) > 3 else "")
            + f". Every value lies more than {VALUE_SD:.0f} training SDs (and a factor {UNIT_RATIO:.0f}) from the mean and is "
            f"read as if at {VALUE_SD:.0f} SDs: another unit or scale than at training? Convert them to the training unit "
            "before relying on the EHR part of this prediction.")


def card_lines(profile: Mapping[str, Any] | None, vocabulary: Sequence[str] = ()) -> list[str]:
    """The model card's section on the timeline codes a model reads (empty without a profile)."""
    if not profile:
        return []
    share = profile["known_share"]
    return ["## Timeline codes this model reads", "",
            f"- {profile.get('n_codes', len(vocabulary))} codes (e.g. {', '.join(list(vocabulary)[:3])}); any other "
            "code is read as one 'unknown' code.",
            f"- Share of the events read with a known code, over {profile['n_subjects']} {profile.get('split', 'training')} "
            "timelines (the vocabulary of the train split): median "
            f"{float(share['median']):.0%}, 5th percentile {float(share['p05']):.0%}, lowest {float(share['min']):.0%}. "
            f"A timeline below {warn_below(profile):.0%} (the 5th percentile less {float(profile.get('margin', MARGIN)):.0%}) "
            "gets a warning in `predict --json` and the app (`core.timeline_profile`).", ""]
