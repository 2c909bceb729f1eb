"""EHR preprocessing fitted on the train split: event vocabulary, feature scaler, embedding width."""

from __future__ import annotations

from typing import Any

from core.cohort import Cohort
from core.errors import InputError
from core.models import EHR_ENCODERS


def ehr_config(cohort: Cohort, ehr_encoder: str, max_codes: int, max_events: int) -> dict[str, Any]:
    """Fit the EHR preprocessing on the train split; returns the ``ehr`` part of config.json."""
    from core.models.ehr_sequence import EventVocabulary
    from core.models.ehr_tabular import TabularScaler

    if ehr_encoder not in EHR_ENCODERS:
        raise InputError("ehr_encoder", ehr_encoder, "unknown EHR encoder", f"use one of {', '.join(EHR_ENCODERS)}")
    train_ids = cohort.ids("train")
    use = {"sequence": cohort.timeline is not None, "tabular": cohort.features is not None,
           "embedding": cohort.ehr_embeddings is not None}
    if ehr_encoder not in ("auto", "none"):
        if not use[ehr_encoder]:
            need = {"sequence": "timeline.parquet or timeline.csv", "tabular": "features.csv",
                    "embedding": "ehr_embeddings.npy or .parquet"}[ehr_encoder]
            raise InputError("ehr_encoder", ehr_encoder, "the cohort has no such EHR data", f"add {need} to the cohort or use --ehr-encoder auto")
        use = {k: k == ehr_encoder for k in use}
    if ehr_encoder == "none":
        use = {k: False for k in use}
    cfg: dict[str, Any] = {"sequence": None, "tabular": None, "embedding_dim": None, "layers": 1}
    if use["sequence"]:
        vocab = EventVocabulary.fit([cohort.events(s) for s in train_ids], max_codes=max_codes, max_events=max_events)
        cfg["sequence"] = vocab.to_json()
    if use["tabular"]:
        assert cohort.features is not None
        scaler = TabularScaler.fit(cohort.features.reindex(train_ids))
        cfg["tabular"] = scaler.to_json()
    if use["embedding"]:
        assert cohort.ehr_embeddings is not None
        cfg["embedding_dim"] = int(cohort.ehr_embeddings.shape[1])
    return cfg
