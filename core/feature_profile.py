"""What a model reads of a features table: its curated columns and how it saw them in training.

A model trained with a cohort's features.csv reads those columns by name (an uploaded case's clinical values
too); its feature scaler (config.json ``ehr.tabular``: ``columns``, ``mean``, ``std``, ``log``) is all that is
kept of the training values. :func:`training_text` writes one column's training values for the Upload table and
the warnings (``core.ehr_read``); :func:`card_lines` lists every column in the model card, so that a site can
name its columns as the model reads them. No torch here: the Upload page imports it.

>>> scaler = {"columns": ["age", "bnp"], "mean": [62.0, 5.74], "std": [11.0, 1.2], "log": ["bnp"]}
>>> print(card_lines(scaler, ["age", "bnp"])[2])
- 2 columns of features.csv, or of an uploaded case's clinical values, by these names (training mean ± SD): `age` 62 ± 11; `bnp` typically 310 (read on a log scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SECTION = "## Curated features this model reads"


def training_text(tabular: Mapping[str, Any], name: str) -> str:
    """How a model saw feature ``name`` in training: "62 ± 11" (mean ± SD), "typically 310" for a column it reads
    on a log scale; "" for a column it does not read.

    >>> training_text({"columns": ["age", "bnp"], "mean": [62.0, 5.74], "std": [11.0, 1.2], "log": ["bnp"]}, "bnp")
    'typically 310'
    """
    columns = list(tabular.get("columns", []))
    if name not in columns:
        return ""
    i = columns.index(name)
    mean, std = float(tabular["mean"][i]), float(tabular["std"][i])
    return f"typically {float(np.expm1(mean)):.3g}" if name in set(tabular.get("log", [])) else f"{mean:.3g} ± {std:.3g}"


def card_lines(tabular: Mapping[str, Any] | None, names: Sequence[str]) -> list[str]:
    """The model card's section on its curated features ([] for a model that reads none)."""
    if not tabular or not names:
        return []
    logged = set(tabular.get("log", []))
    listed = "; ".join(f"`{n}` {training_text(tabular, n)}" + (" (read on a log scale)" if n in logged else "")
                       for n in names)
    return [SECTION, "",
            f"- {len(names)} columns of features.csv, or of an uploaded case's clinical values, by these names (training "
            f"mean ± SD): {listed}.",
            "- A column a case or cohort lacks is read as missing (the training mean, with a missing indicator); a value "
            "more than 5 training SDs and a factor 3 from the mean gets a warning (`core.ehr_read`).", ""]
