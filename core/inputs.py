"""Model inputs of cohort subjects: EHR and precomputed-embedding arrays, shared by training and inference.

``ehr_arrays`` turns a cohort's timelines, features (features.csv, or the
timeline's summary: ``core.models.ehr_summary``) and EHR embeddings into the
network's batch arrays with the preprocessing a model folder records (event
vocabulary, feature scaler); ``image_embedding_arrays`` does the same for
precomputed image embeddings. A subject without features (no features.csv row,
or no value in any of the model's columns: an uploaded case's clinical values
for another model) gets ``features_present`` 0 (and the model's training mean in
its linear EHR term). Blank age and sex cells (and those of a subject without a row) are read from the subject's
MEDS timeline (``MEDS_BIRTH``, ``GENDER//F``) where it has them, in training as in prediction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.cohort import UPLOAD_SUBJECT, Cohort
from core.models.config import EHRConfig


def ehr_arrays(cohort: Cohort, ids: list[str], ecfg: EHRConfig) -> dict[str, np.ndarray]:
    """EHR inputs of ``ids`` as stacked numpy arrays (see ``core.models.net`` for the keys)."""
    from core.io.features import filled_from_timeline, with_categories
    from core.models.ehr_sequence import UNK, EventVocabulary
    from core.models.ehr_tabular import TabularScaler

    out: dict[str, np.ndarray] = {}
    if ecfg.sequence:
        vocab = EventVocabulary.from_json(ecfg.sequence)
        rows = [vocab.encode(cohort.events(s), cohort.index_time(s))[0] for s in ids]
        for key in rows[0] if rows else []:
            out[key] = np.stack([r[key] for r in rows])
        if rows:
            # a timeline with not one code the model knows (another site's coding) is not read: a run of "unknown"
            # tokens carries nothing it learned (``core.ehr_read.timeline_read`` says why; in training as in prediction)
            unread = (out["event_mask"] > 0).any(axis=1) & ~((out["codes"] > UNK) & (out["event_mask"] > 0)).any(axis=1)
            out["event_mask"][unread] = 0.0
    if ecfg.tabular:
        scaler = TabularScaler.from_json(ecfg.tabular)
        if ecfg.summarises_timeline:  # the timeline's summary, computed here for every subject with events
            from core.models.ehr_summary import summary_frame

            frame = summary_frame(cohort, ids, ecfg.tabular["summary"])
            known = frame.index[frame["events_log"].notna()]
        else:  # a subject without a features row, or without a value in any of the model's columns: features_present 0
            frame = (with_categories(cohort.features.reindex(ids), cohort.feature_text, scaler.columns)
                     if cohort.features is not None else pd.DataFrame(index=ids, columns=ecfg.feature_names, dtype=float))
            frame, _ = filled_from_timeline(frame, scaler.columns, lambda s: subject_timeline(cohort, s))
            known = frame.index[frame.reindex(columns=scaler.columns).notna().any(axis=1)]
        x, miss = scaler.transform(frame)
        out["features"], out["feature_missing"] = x, miss
        out["features_present"] = np.asarray([s in known for s in ids], np.float32)
    if ecfg.embedding_dim:
        emb = (cohort.ehr_embeddings.reindex(ids) if cohort.ehr_embeddings is not None
               else pd.DataFrame(np.nan, index=ids, columns=range(ecfg.embedding_dim)))
        present = emb.notna().all(axis=1).to_numpy()
        out["ehr_embedding"] = np.nan_to_num(emb.to_numpy(np.float32))
        out["ehr_embedding_present"] = present.astype(np.float32)
    return out


def subject_timeline(cohort: Cohort, subject_id: str) -> tuple[pd.DataFrame | None, pd.Timestamp | None]:
    """A subject's timeline rows (static codes included) and index time, as
    ``core.io.features.filled_from_timeline`` reads them; none for an uploaded case, whose clinical values are those
    entered on Upload (where this timeline prefilled age and sex, and the user may have changed or cleared them)."""
    if str(subject_id) == UPLOAD_SUBJECT:
        return None, None
    return cohort.timeline_rows(subject_id), cohort.index_time(subject_id)


def image_embedding_arrays(cohort: Cohort, ids: list[str]) -> dict[str, np.ndarray]:
    assert cohort.image_embeddings is not None
    emb = cohort.image_embeddings.reindex(ids)
    present = emb.notna().all(axis=1).to_numpy()
    return {"image_embedding": np.nan_to_num(emb.to_numpy(np.float32)), "image_present": present.astype(np.float32)}
