"""EHR preprocessing fitted on the train split: event vocabulary, feature scaler, embedding width."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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


def linear_members(members: list[torch.nn.Module], data: dict[str, torch.Tensor], train_idx: np.ndarray, *,
                   penalty: float) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """ehr_only on tabular features: a penalised linear model beside each trained network, as ensemble members.

    For each member: the network drops the linear EHR term fitted on top of it (on real tables that term,
    fitted on the split the network had already fitted, pulled ehr_only down: docs/BENCHMARKS.md, SurvSet),
    and a copy of it whose network weights to the head are 0 (per-interval baseline kept) gets that term
    fitted alone by ridge-penalised maximum likelihood on the train split (``SurvivalHead.fit_wide``,
    ``penalty`` on the mean NLL, features standardised): a discrete-time Cox-like model of the scaled
    features and missing indicators. The ensemble's curve is the mean of the networks' and the linear
    models' curves (a linear and a non-linear model averaged), its band their range. Members are changed
    in place; the copies have the same architecture, so the model saves and loads as any ensemble. Only
    full (per-interval) discrete and piecewise-exponential heads with a linear EHR term; [] otherwise.
    """
    import copy

    from core.train.loop import _index, predict_batches

    out: list[tuple[torch.nn.Module, dict[str, Any]]] = []
    train = _index(data, train_idx)
    for net in members:
        head = getattr(net, "head", None)
        if head is None or head.wide is None or head.proportional or head.kind not in ("discrete", "pwe"):
            return []
        with torch.no_grad():
            head.wide.weight.zero_()
        lin = copy.deepcopy(net)
        with torch.no_grad():
            lin.head.linear.weight.zero_()
        raw = predict_batches(lin, train, torch.device("cpu"))["raw"]
        fit = lin.head.fit_wide(torch.as_tensor(raw), lin._wide_input(train), data["time"][train_idx],
                                data["event"][train_idx], penalty=penalty)
        lin.eval()
        out.append((lin, {"linear": True, "penalty": penalty, "nll": fit["nll_after"], "kept": fit["kept"]}))
    return out
