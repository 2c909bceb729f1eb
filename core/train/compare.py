"""Train every fusion strategy on one cohort and tabulate test metrics with 95 % intervals.

The literature's point is that the best fusion depends on the task; this is the
per-task view. All strategies share one trained image encoder and its cached
tokens (``core.train``), so the comparison costs one encoder training plus seven
small fusion trainings. Writes ``comparison.csv`` and ``comparison.md`` (and one
model folder per strategy) under ``out``; a paired bootstrap
(``core.evaluate.paired_bootstrap``) compares the best strategy with the best
unimodal baseline on the same test subjects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from core.models import FUSIONS
from core.train.model import train_model
from core.train.settings import Progress


def _fmt(v: Any, ci: Any = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def compare_strategies(cohort_dir: Path | str, out: Path | str, *, fusions: Sequence[str] = FUSIONS, head: str = "discrete",
                       seed: int = 0, device: str = "auto", epochs: int | None = None, image_encoder: Path | None = None,
                       progress: Progress | None = None, overrides: dict[str, Any] | None = None,
                       ehr_encoder: str = "auto", ensemble: int | None = None,
                       image_encoder_kind: str = "auto") -> pd.DataFrame:
    out = Path(out)
    bad = [f for f in fusions if f not in FUSIONS]
    if bad:
        raise InputError("fusions", ", ".join(bad), "unknown fusion strategy", f"use names from {', '.join(FUSIONS)}")
    rows = []
    for i, fusion in enumerate(fusions):
        def sub(frac: float, label: str, i: int = i) -> None:
            if progress is not None:
                progress((i + frac) / len(fusions), f"{fusion}: {label}")

        m = train_model(cohort_dir, fusion, out / fusion, head=head, seed=seed, device=device, epochs=epochs,
                        image_encoder=image_encoder, image_encoder_kind=image_encoder_kind, ehr_encoder=ehr_encoder,
                        progress=sub, overrides=overrides, ensemble=ensemble)
        t = m.get("test", {})
        rows.append({"fusion": fusion, "head": head, "c_index": t.get("c_index"),
                     "c_index_lo": (t.get("c_index_ci") or [None, None])[0], "c_index_hi": (t.get("c_index_ci") or [None, None])[1],
                     "uno_c": t.get("uno_c"), "ibs": t.get("ibs"), "val_c_index": m.get("val_c_index"),
                     "oracle_c_index": t.get("oracle_c_index"), "train_seconds": m.get("train_seconds"),
                     "n_test": t.get("n"), "events_test": t.get("events")})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(comparison_markdown(table, Path(cohort_dir), out))
    return table


def comparison_markdown(table: pd.DataFrame, cohort_dir: Path, out: Path) -> str:
    lines = [f"# Fusion strategies on `{cohort_dir.name}` (test split)", "",
             "| strategy | Harrell C (95% CI) | Uno C | IBS | val C | train s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        ci = None if r.c_index_lo is None or pd.isna(r.c_index_lo) else (r.c_index_lo, r.c_index_hi)
        lines.append(f"| {r.fusion} | {_fmt(r.c_index, ci)} | {_fmt(r.uno_c)} | {_fmt(r.ibs)} | {_fmt(r.val_c_index)} | {r.train_seconds:.0f} |")
    uni = table[table["fusion"].isin(["image_only", "ehr_only"])]
    fus = table[~table["fusion"].isin(["image_only", "ehr_only"])]
    lines.append("")
    if len(uni) and len(fus):
        bu, bf = uni.loc[uni["c_index"].idxmax()], fus.loc[fus["c_index"].idxmax()]
        lines.append(f"Best unimodal: {bu['fusion']} (C {bu['c_index']:.3f}); best fusion: {bf['fusion']} "
                     f"(C {bf['c_index']:.3f}, {bf['c_index'] - bu['c_index']:+.3f}).")
        paired = _paired(out / str(bf["fusion"]), out / str(bu["fusion"]), cohort_dir)
        if paired is not None:
            from core.evaluate import tie_note

            ci = f"95% CI {paired['ci'][0]:+.3f} to {paired['ci'][1]:+.3f}, " if paired["ci"] else ""
            tie = tie_note(paired["tied"])
            lines.append(f"Paired bootstrap on the same test subjects: delta C {paired['delta_c']:+.3f} "
                         f"({ci}p = {paired['p_value']:.3f}){'; ' + tie if tie else ''}.")
    if table["oracle_c_index"].notna().any():
        lines.append(f"Oracle C-index of the ground-truth risk on the same subjects: {table['oracle_c_index'].dropna().iloc[0]:.3f}.")
    lines += ["", "Research use only; not a medical device.", ""]
    return "\n".join(lines)


def _paired(model_a: Path, model_b: Path, cohort_dir: Path) -> dict | None:
    """Model a against model b on the test split (``core.evaluation.paired_c``, the risk the C-index ranks)."""
    from core.cohort import load_cohort
    from core.evaluate import risk_from_survival
    from core.evaluation import paired_c
    from core.predict import predict_cohort
    from core.registry import load_model

    cohort = load_cohort(cohort_dir)
    ids = cohort.ids("test")
    risks = []
    for folder in (model_a, model_b):
        times, surv = predict_cohort(load_model(folder), cohort, ids)
        risks.append(dict(zip(ids, risk_from_survival(np.asarray(times, dtype=float), np.asarray(surv)).tolist())))
    return paired_c(risks[0], risks[1], cohort_dir, n_boot=500)
