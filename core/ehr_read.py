"""What a model can read of a case's EHR: timeline codes and values, and features.csv columns.

The EHR counterpart of ``core.predict.image_read``. A timeline from another site
can use other codes (read as one "unknown" code: ``core.timeline_profile``) or
another unit under the model's own code (values clipped at 5 training SDs); a
features.csv can name the model's columns otherwise or miss a subject's row (read
as missing). Each gives a warning per case (``predict --json``, the app, the
report, ``export-dicom``) and a count per split (``evaluate``). Nothing here
loads a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.cohort import Cohort
from core.feature_profile import training_text
from core.io.columns import column_key
from core.io.features import filled_from_timeline, with_categories
from core.timeline_profile import (UNIT_RATIO, VALUE_SD, far_from_training, model_timeline_profile, timeline_warning,
                                   unit_suspects, value_warning, warn_below)

if TYPE_CHECKING:
    from core.registry import LoadedModel


def _subject_timeline(cohort: Cohort, subject_id: str) -> tuple[pd.DataFrame | None, pd.Timestamp | None]:
    """A subject's timeline rows (static codes included) and index time, for ``filled_from_timeline``."""
    return cohort.timeline_rows(subject_id), cohort.index_time(subject_id)


def timeline_read(model: LoadedModel, events: pd.DataFrame | None) -> list[str]:
    """What the model cannot read in the events it reads of a case (``CaseInputs.events``): codes it was not trained
    on, far more often than in its training timelines (``core.timeline_profile.timeline_warning``), and values of
    its codes far from their training values (``value_warning``: another unit?)."""
    sequence = model.config.ehr.sequence
    if not sequence or events is None or not len(events):
        return []
    codes = events["code"].astype(str).tolist()
    values = pd.to_numeric(events["numeric_value"], errors="coerce").tolist() if "numeric_value" in events else []
    found = (timeline_warning(model_timeline_profile(model.config), sequence.get("codes", []), codes),
             value_warning(sequence, codes, values) if values else None)
    return [w for w in found if w]


def feature_read(model: LoadedModel, cohort: Cohort, subject_id: str) -> list[str]:
    """Warnings when the model reads tabular features (features.csv) that this cohort does not give it: no
    features.csv, columns of the model that features.csv lacks (read as missing for every subject), or no row for
    this subject; and values of the subject's row far from training (:func:`feature_value_warning`)."""
    names = model.config.ehr.curated_features
    if not names:
        return []
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    sid = str(subject_id)
    features = None if cohort.features is None else with_categories(cohort.features, cohort.feature_text, names)
    row = pd.DataFrame(index=[sid], dtype=float) if features is None else features.reindex([sid])
    _, filled = filled_from_timeline(row, names, partial(_subject_timeline, cohort))
    from_timeline = filled.get(sid, [])  # blank age and sex, as core.inputs reads them
    rest = [n for n in names if n not in from_timeline]
    other = (f"{' and '.join(from_timeline)} {'are' if len(from_timeline) > 1 else 'is'} read from the subject's "
             f"timeline (MEDS_BIRTH, GENDER); the model's other {len(rest)} curated features "
             f"({', '.join(rest[:3])}{', ...' if len(rest) > 3 else ''}) are read as the training average")
    if features is None:
        if from_timeline:
            return [f"This cohort has no features.csv: {other}."]
        rows, _ = _subject_timeline(cohort, sid)
        if not model.config.ehr.sequence:
            rest_of_ehr = "so its EHR side reads nothing of this patient"
        elif rows is not None and len(rows):
            rest_of_ehr = "so its EHR side reads the timeline alone"
        else:
            rest_of_ehr = "and this subject has no timeline either: its EHR side reads nothing of this patient"
        return [f"This cohort has no features.csv: the model's {len(names)} curated features ({shown}) are read as "
                f"the training average, {rest_of_ehr}."]
    words = cohort.feature_text if cohort.feature_text is not None else pd.DataFrame()
    # a number column with no number in the whole file (one patient, age '>89') was read as text: not absent
    as_text = [c for c in names if c not in features.columns and c in words.columns]
    absent = [c for c in names if c not in features.columns and c not in as_text]
    renames = {col: name for col, name in renamed_columns(names, features.columns).items() if name in absent}
    fix = ("Name the columns as the model card lists them" + (
        f" (features.csv has {', '.join(f'{c} for {n}' for c, n in list(renames.items())[:5])}"
        f"{', ...' if len(renames) > 5 else ''})" if renames else "") + ".")
    if len(absent) == len(names):
        return [f"features.csv has none of the model's {len(names)} feature columns (e.g. {', '.join(names[:3])}): "
                f"every feature is read as missing. {fix}"]
    if str(subject_id) not in features.index:
        return [f"features.csv has no row for subject {subject_id}: " + (f"{other}." if from_timeline else
                f"the model's {len(names)} features are read as missing (the training mean).")]
    timeline_too = [c for c in absent if c in from_timeline]
    out = [f"features.csv lacks {len(absent)} of the model's {len(names)} feature columns ("
           f"{', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): they are read as missing for every "
           "subject" + (f" ({' and '.join(timeline_too)} from the subject's timeline)" if timeline_too else "")
           + f". {fix}"] if absent else []
    cells = dict((cohort.features.attrs.get("unreadable_cells") or {}).get(str(subject_id), {}))
    cells.update({c: str(words.at[str(subject_id), c]).strip() for c in as_text
                  if str(subject_id) in words.index and pd.notna(words.at[str(subject_id), c])})
    text = {c: v for c, v in cells.items() if c in names}  # "<50" in last_bnp: read as missing
    if text:
        out.append(f"features.csv's row for subject {subject_id} has no number in {', '.join(text)} ("
                   f"{', '.join(repr(v) for v in text.values())}): read as missing (the training mean). Write a value "
                   "reported beyond a limit as a number (the limit).")
    far = feature_value_warning(model.config.ehr.tabular or {}, features.loc[str(subject_id)].to_dict())
    return out + ([far] if far else [])


def renamed_columns(names: Sequence[str], columns: Sequence[object]) -> dict[str, str]:
    """{column: model name} for the columns that name a model feature otherwise only in case, spaces or punctuation
    ("Age" for age, "Last Creatinine" for last_creatinine); a name the columns already hold, or that two columns
    could be, is left out.

    >>> renamed_columns(["age", "last_creatinine", "sex_female"], ["Age", "Last Creatinine", "sex_female", "MRN"])
    {'Age': 'age', 'Last Creatinine': 'last_creatinine'}
    """
    present = {str(c) for c in columns}
    by_key: dict[str, list[str]] = {}
    for col in present - set(names):
        by_key.setdefault(column_key(col), []).append(col)
    out = {}
    for name in names:
        found = by_key.get(column_key(name), [])
        if name not in present and len(found) == 1:
            out[found[0]] = name
    return dict(sorted(out.items(), key=lambda kv: list(names).index(kv[1])))


def case_feature_read(model: LoadedModel, values: Mapping[str, float]) -> list[str]:
    """What the model cannot read in an uploaded case's clinical values (``core.app.cases``): the curated features
    it reads that the case does not give (read as the training mean; fewer than half given: what that does to the
    risk and its band), and values far from training. Empty when the
    model reads no curated features or the case gives none (the missing-modality notice says so)."""
    names = model.config.ehr.curated_features
    given = {k: v for k, v in values.items() if k in names and np.isfinite(v)}
    if not names or not given:
        return []
    absent = [c for c in names if c not in given]
    other = f"the other {len(absent)}" if len(absent) > 1 else "the other one"
    few = (" With most of its values at the training average, this risk is close to that of an average training "
           "patient with the values given; its band and conformal bound come from patients who had every value and do "
           "not widen for the missing ones.") if len(given) < len(names) / 2 else ""
    out = [f"This case gives {len(given)} of the model's {len(names)} curated features; {other} ("
           f"{', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}) {'are' if len(absent) > 1 else 'is'} read as "
           "the training average." + few] if absent else []
    far = feature_value_warning(model.config.ehr.tabular or {}, given)
    return out + ([far] if far else [])


def far_columns(tabular: Mapping[str, Any], row: Mapping[str, object]) -> list[str]:
    """The columns of ``row`` the model reads whose value lies more than ``VALUE_SD`` training SDs and a factor
    ``UNIT_RATIO`` from the training mean (``core.timeline_profile.far_from_training``)."""
    columns, mean, std = list(tabular.get("columns", [])), tabular.get("mean", []), tabular.get("std", [])
    logged = set(tabular.get("log", []))
    out = []
    for name, value in row.items():
        if name not in columns or not isinstance(value, (int, float)) or not np.isfinite(value):
            continue
        i = columns.index(name)
        if far_from_training(float(value), float(mean[i]), float(std[i]), name in logged):
            out.append(str(name))
    return out


def feature_value_warning(tabular: Mapping[str, Any], row: Mapping[str, object]) -> str | None:
    """A warning naming the features whose value lies more than ``VALUE_SD`` training SDs and a factor ``UNIT_RATIO``
    from the training mean (a typing slip or another unit: age in months, creatinine in umol/L); the network reads
    them clipped at 6 SDs. ``tabular``: the model's feature scaler as config.json keeps it.

    >>> scaler = {"columns": ["age", "last_creatinine"], "mean": [62.0, 1.1], "std": [11.0, 0.5]}
    >>> feature_value_warning(scaler, {"age": 64.0, "last_creatinine": 97.0})[:85]
    'Clinical values unlike the training values: last_creatinine 97 (training 1.1 ± 0.5). '
    >>> feature_value_warning(scaler, {"age": 91.0, "last_creatinine": 2.6}) is None  # old and sick, same units
    True
    """
    far = [f"{name} {float(row[name]):.4g} (training {training_text(tabular, name)})" for name in far_columns(tabular, row)]
    if not far:
        return None
    return (f"Clinical values unlike the training values: {'; '.join(far[:4])}"
            + (f"; and {len(far) - 4} more" if len(far) > 4 else "")
            + f". Each lies more than {VALUE_SD:.0f} training SDs (and a factor {UNIT_RATIO:.0f}) from the mean and is "
            "read as if at 6 SDs: a typing slip, or another unit than at training? Check them before relying on the EHR "
            "part of this prediction.")


def upload_timeline_read(model: LoadedModel, events: pd.DataFrame, index_time: pd.Timestamp) -> list[str]:
    """:func:`timeline_read` of a timeline before it is saved as a case: on the events the model would read (at or
    before ``index_time``, never an outcome, the last ``max_events``)."""
    from core.cohort import UPLOAD_SUBJECT, uploaded_case_cohort

    sequence = model.config.ehr.sequence
    if not sequence or events is None or events.empty:
        return []
    cohort = uploaded_case_cohort(Path("."), volume=None, events=events, index_time=index_time)
    return timeline_read(model, _events_read(cohort, UPLOAD_SUBJECT, sequence))


def _events_read(cohort: Cohort, subject_id: str, sequence: Mapping[str, Any]) -> pd.DataFrame:
    """The events a sequence model reads of a subject (``EventVocabulary.encode`` keeps the same ones): at or before
    the index, never an outcome (``Cohort.events``), the last ``max_events``."""
    return cohort.events(subject_id).tail(int(sequence.get("max_events", 64)))


def split_timeline_reads(model: LoadedModel, cohort: Cohort, ids: Sequence[str]) -> dict[str, Any] | None:
    """How the timelines of ``ids`` fare under :func:`timeline_read`: ``timelines`` (with events), ``warned`` (codes
    the model was not trained on; only with a timeline profile, else None), ``median_known_share`` (of the events
    the model reads, the share with a code it was trained on) and ``unit_suspects`` (codes whose values over the
    whole split lie, at their median, far from training: another unit at this site?). None when the model reads no
    events."""
    sequence = model.config.ehr.sequence
    if not sequence:
        return None
    profile = model_timeline_profile(model.config)
    vocabulary = set(sequence.get("codes", []))
    shares, codes, values = [], [], []
    for sid in ids:
        read = _events_read(cohort, sid, sequence)
        if len(read):
            shares.append(float(read["code"].astype(str).isin(vocabulary).mean()))
            codes += read["code"].astype(str).tolist()
            values += pd.to_numeric(read["numeric_value"], errors="coerce").tolist()
    limit = warn_below(profile) if profile is not None else None
    return {"timelines": len(shares), "warned": None if limit is None else int(sum(x < limit for x in shares)),
            "median_known_share": round(float(np.median(shares)), 4) if shares else None,
            "unit_suspects": unit_suspects(sequence, codes, values, every=False)}


def split_feature_reads(model: LoadedModel, cohort: Cohort, ids: Sequence[str]) -> dict[str, Any] | None:
    """What the model's tabular features find in this cohort: ``columns`` (the model's), ``absent`` (those
    features.csv lacks), ``without_row`` (subjects of ``ids`` with no features.csv row), ``far_values`` ({column:
    subjects whose value lies far from training, :func:`far_columns`}), ``unreadable`` ({column: subjects whose cell
    is no number, such as "<50"}), ``from_timeline`` (subjects whose blank age or sex their timeline gives:
    ``core.io.features.filled_from_timeline``). None when the model reads no features."""
    names = model.config.ehr.curated_features
    if not names:
        return None
    frame = None if cohort.features is None else with_categories(cohort.features, cohort.feature_text, names)
    absent = list(names) if frame is None else [c for c in names if c not in frame.columns]
    without = len(ids) if frame is None else sum(str(s) not in frame.index for s in ids)
    far: dict[str, int] = {}
    rows = [] if frame is None else frame.reindex([str(s) for s in ids if str(s) in frame.index])
    for _, row in (rows.iterrows() if len(rows) else ()):
        for name in far_columns(model.config.ehr.tabular or {}, row.to_dict()):
            far[name] = far.get(name, 0) + 1
    cells = {} if cohort.features is None else cohort.features.attrs.get("unreadable_cells") or {}
    unreadable: dict[str, int] = {}
    for sid in ids:  # "<50", "n.d." in a column the model reads: read as missing
        for name in cells.get(str(sid), {}):
            if name in names:
                unreadable[name] = unreadable.get(name, 0) + 1
    known = frame.reindex([str(s) for s in ids]) if frame is not None else pd.DataFrame(index=[str(s) for s in ids])
    _, filled = filled_from_timeline(known, names, partial(_subject_timeline, cohort))
    return {"columns": len(names), "absent": absent, "without_row": int(without), "far_values": far,
            "unreadable": unreadable, "from_timeline": len(filled)}


def split_feature_reads_text(summary: Mapping[str, Any] | None) -> str | None:
    """One line on a :func:`split_feature_reads` summary, or None when every column and row is there and no value is
    far from training."""
    far = summary.get("far_values") or {} if summary else {}
    unreadable = summary.get("unreadable") or {} if summary else {}
    if not summary or not (summary["absent"] or summary["without_row"] or far or unreadable):
        return None
    parts = []
    if summary["absent"]:
        shown = ", ".join(summary["absent"][:5]) + (", ..." if len(summary["absent"]) > 5 else "")
        parts.append(f"features.csv lacks {len(summary['absent'])} of the model's {summary['columns']} feature columns "
                     f"({shown})")
    if summary["without_row"]:
        n = int(summary["without_row"])
        parts.append(f"{n} subject{'s have' if n != 1 else ' has'} no features.csv row")
    if unreadable:
        n = sum(unreadable.values())
        parts.append(f"{n} value{'s are' if n != 1 else ' is'} no number ("
                     + ", ".join(f"{c} {k}" for c, k in sorted(unreadable.items(), key=lambda kv: -kv[1])[:3]) + ")")
    missing = "; ".join(parts) + ": read as missing" if parts else ""
    if summary.get("from_timeline") and (summary["absent"] or summary["without_row"]):
        n = int(summary["from_timeline"])
        missing += f" (age or sex of {n} subject{'s' if n != 1 else ''} read from the timeline)"
    worst = sorted(far.items(), key=lambda kv: -kv[1])[:3]
    unlike = ("; ".join(f"{name}: {n} subject{'s' if n != 1 else ''}" for name, n in worst)
              + f"{'; ...' if len(far) > 3 else ''} with a value more than {VALUE_SD:.0f} training SDs and a factor "
              f"{UNIT_RATIO:.0f} from the training mean (another unit?)") if far else ""
    return "; ".join(t for t in (missing, unlike) if t)


def split_timeline_reads_text(summary: Mapping[str, Any] | None) -> str | None:
    """One line on a :func:`split_timeline_reads` summary, or None when no timeline is warned about."""
    if not summary or not (summary.get("warned") or summary.get("unit_suspects")):
        return None
    parts = []
    if summary.get("warned"):
        parts.append(f"{summary['warned']} of {summary['timelines']} timelines have far fewer events with a code the "
                     f"model was trained on than its training timelines (median {summary['median_known_share']:.0%} "
                     "of the events read); other codes are read as one 'unknown' code: map the site's codes to the "
                     "model's")
    for suspect in (summary.get("unit_suspects") or [])[:3]:
        parts.append(f"{suspect['code']}: median {suspect['median']:.3g} over {suspect['n_values']} values, training "
                     f"{suspect['training']} (more than {VALUE_SD:.0f} SDs and a factor {UNIT_RATIO:.0f} away: another unit?)")
    return "; ".join(parts)
