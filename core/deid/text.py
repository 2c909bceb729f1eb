"""Redact MEDS code text that is not in a known code vocabulary (for exports).

MEDS ``code`` strings are usually vocabulary codes (``ICD10CM//I10``,
``LAB//50912//mg/dL``, ``MEDS_DEATH``), but a site's conversion can put free
text in them (``NOTE//seen by Dr Smith``, ``COMMENT//John Doe called``). An
export (case report, figure, table) may only show codes the model knows: those
in ``vocabulary``. Any other code becomes ``"[redacted]"``, keeping its
vocabulary prefix (the part before the first ``//``) when that prefix is one
the vocabulary itself uses, so a reader still sees the kind of event.

>>> redact_codes(["ICD10CM//I10", "NOTE//John Doe called", "ICD10CM//Z99.9", None], {"ICD10CM//I10", "NOTE//FOLLOW_UP"})
['ICD10CM//I10', 'NOTE//[redacted]', 'ICD10CM//[redacted]', '']
"""

from __future__ import annotations

import math
import re
from typing import Collection, Iterable

REDACTED = "[redacted]"
SEPARATOR = "//"
_SAFE_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,31}$")


def vocabulary_prefixes(vocabulary: Iterable[str]) -> frozenset[str]:
    """The prefixes (before the first ``//``) that the vocabulary's codes use and that look like vocabulary names."""
    out: set[str] = set()
    for code in vocabulary:
        if isinstance(code, str) and SEPARATOR in code:
            prefix = code.split(SEPARATOR, 1)[0]
            if _SAFE_PREFIX.match(prefix):
                out.add(prefix)
    return frozenset(out)


def redact_code(code: object, vocabulary: Collection[str], prefixes: Collection[str] | None = None) -> str:
    """One code: itself when it is in ``vocabulary``, else ``[redacted]`` (with its known prefix); ``""`` for a missing code."""
    if code is None or (isinstance(code, float) and math.isnan(code)):
        return ""
    text = str(code)
    if text in vocabulary:
        return text
    known = vocabulary_prefixes(vocabulary) if prefixes is None else prefixes
    if SEPARATOR in text:
        prefix = text.split(SEPARATOR, 1)[0]
        if prefix in known:
            return f"{prefix}{SEPARATOR}{REDACTED}"
    return REDACTED


def redact_codes(codes: Iterable[object], vocabulary: Collection[str]) -> list[str]:
    """``codes`` with every code outside ``vocabulary`` redacted (same length and order).

    ``vocabulary`` is the model's code vocabulary (a set is fastest). Codes in
    it are returned unchanged; others become ``"PREFIX//[redacted]"`` when
    PREFIX is used by the vocabulary's own codes, else ``"[redacted]"``;
    missing codes (None, NaN) become ``""``.
    """
    vocab = vocabulary if isinstance(vocabulary, (set, frozenset, dict)) else set(vocabulary)
    prefixes = vocabulary_prefixes(vocab)
    return [redact_code(code, vocab, prefixes) for code in codes]
