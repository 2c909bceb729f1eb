"""On a detector encoder: a linear model of the study's detection statistics (and, in the image + EHR strategies, of
the tabular features) beside each network."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from core.train.loop import _index, predict_batches


def image_linear_members(members: list[torch.nn.Module], data: dict[str, torch.Tensor], train_idx: np.ndarray, *,
                         penalty: float) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """A ridge-penalised linear model of the study-level detection statistics beside each trained network.

    In the image + EHR strategies the same model also reads the network's linear EHR term's input (the scaled tabular
    features and their missing indicators, ``SurvivalNet._wide_input``): one linear model of both modalities, fitted
    from a zero term (the copy drops the network's own linear term, ``core.train.fusion_stage``).

    The networks read the detector's per-slice statistics through slice context and attention pooling; trained from
    a few hundred subject-level labels they rank test subjects differently from seed to seed (one frozen detector,
    8 seeds: test C 0.58-0.76 on a 40-subject split; docs/BENCHMARKS.md, "A linear image member"). For each network,
    a copy whose network weights to the head are 0 (its baseline and bias kept) gets the head's linear term fitted
    alone on the train split (``SurvivalHead.fit_wide``, ``penalty`` on the mean NLL) over the standardised study
    statistics (``core.models.pooling.StudyStats``: each detection statistic's mean over neighbouring slices, its
    maximum over the study). The ensemble's curve is the mean of the networks' and the linear models' curves, its
    band their range. The copies have the same architecture, so the model saves and loads as any ensemble. Every
    member must have ``study_stats`` (``ModelConfig.image_linear``); its scale is set here, on the train split.
    """
    out: list[tuple[torch.nn.Module, dict[str, Any]]] = []
    train = _index(data, train_idx)
    for net in members:
        if getattr(net, "study_stats", None) is None or net.head.wide is None:  # type: ignore[union-attr]
            return []
        n = net.set_study_scale(train)  # type: ignore[operator]
        lin = copy.deepcopy(net)
        with torch.no_grad():  # no network, no network's linear EHR term: the statistics (and features) alone
            lin.head.linear.weight.zero_()  # type: ignore[union-attr]
            lin.head.wide.weight.zero_()  # type: ignore[union-attr]
        raw = predict_batches(lin, train, torch.device("cpu"))["raw"]
        fit = lin.head.fit_wide(torch.as_tensor(raw), lin._wide_input(train), data["time"][train_idx],  # type: ignore[union-attr, operator]
                                data["event"][train_idx], penalty=penalty)
        lin.eval()
        out.append((lin, {"linear": True, "penalty": penalty, "nll": fit["nll_after"], "kept": fit["kept"],
                          "studies": n, "weights": [round(float(v), 4) for v in lin.head.wide.weight.detach()[0]]}))  # type: ignore[union-attr, index]
    return out
