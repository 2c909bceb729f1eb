"""The detector pretext's loss (``core.train.pretext_lesions``): per-position BCE of the lesion logits against the
synthetic lesions' labels, with two opt-in parts measured on real anatomy (docs/BENCHMARKS.md): leaving the most
confident unlabelled positions out (``ignore_top``), and a ranking term that asks each lesion to outrank every
unlabelled position of the batch (``rank_weight``). :func:`loss_settings` reads their ``image`` settings.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import InputError

POS_WEIGHT = 10.0  # the BCE weight of labelled positions (the default)


def loss_settings(s: dict[str, Any]) -> dict[str, float]:
    """``rank_weight`` and ``pos_weight`` of the pretext loss from the ``image`` settings, each only when it differs
    from its default, so that the cache keys of encoders trained before them stay valid.

    >>> loss_settings({}), loss_settings({"pretext_rank_weight": 0.05, "pretext_pos_weight": 3})
    ({}, {'rank_weight': 0.05, 'pos_weight': 3.0})
    """
    out: dict[str, float] = {}
    rank, pw = _number(s, "pretext_rank_weight", 0.0), _number(s, "pretext_pos_weight", POS_WEIGHT)
    if not 0.0 <= rank <= 10.0:
        raise InputError("image pretext_rank_weight", rank, "must be a weight in [0, 10]", "use 0 (off) or e.g. 0.05")
    if rank > 0:
        out["rank_weight"] = rank
    if not 0.0 < pw <= 100.0:
        raise InputError("image pretext_pos_weight", pw, "must be a weight in (0, 100]", "use the default 10 or e.g. 3")
    if pw != POS_WEIGHT:
        out["pos_weight"] = pw
    return out


def _number(s: dict[str, Any], key: str, default: float) -> float:
    """``s[key]`` as a float (``default`` when absent or None); anything else is a one-line error naming the setting."""
    v = s.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"image {key}", v, "must be a number", f"use e.g. {default:g}")
    return float(v)


def detection_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = POS_WEIGHT, ignore_top: float = 0.0,
                   rank_weight: float = 0.0) -> torch.Tensor:
    """BCE of lesion logits ``[N, K, h, w]`` against full-size labels ``[N, K, H, W]`` max-pooled to the logits' grid.

    ``ignore_top`` > 0 leaves out of the loss, per slice and channel, that fraction of the unlabelled positions with
    the highest logits (at least one): the cohort's own slices hold real lesions that the pretext cannot label, and
    without this they are taught as background (positive-unlabelled data; session 13).

    >>> lg, tg = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    >>> lg[0, 0, 0, 0] = 8.0   # a confident 'false positive' (an unlabelled real lesion)
    >>> round(float(detection_loss(lg, tg)), 3), round(float(detection_loss(lg, tg, ignore_top=0.05)), 3)
    (1.15, 0.693)
    """
    tgt = F.adaptive_max_pool2d(target, logits.shape[-2:])
    pw = torch.tensor(pos_weight, device=logits.device)
    if ignore_top <= 0:
        loss = F.binary_cross_entropy_with_logits(logits, tgt, pos_weight=pw)
    else:
        per = F.binary_cross_entropy_with_logits(logits, tgt, pos_weight=pw, reduction="none").flatten(2)
        neg_logits = logits.detach().flatten(2).masked_fill(tgt.flatten(2) > 0, -math.inf)
        k = max(1, int(round(ignore_top * neg_logits.shape[-1])))
        keep = torch.ones_like(per).scatter_(2, neg_logits.topk(k, dim=2).indices, 0.0)
        keep = torch.where(tgt.flatten(2) > 0, torch.ones_like(keep), keep)
        loss = (per * keep).sum() / keep.sum()
    if rank_weight > 0:
        loss = loss + rank_weight * ranking_loss(logits, tgt)
    return loss


def ranking_loss(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Per slice and channel with a labelled position: minus the log of the softmax share of that slice's labelled
    positions among them and *every unlabelled position of the batch* (all slices), averaged. It asks each lesion to
    outrank the strongest background anywhere in the batch, as a study's argmax must (the pointing game), where the
    per-position BCE lets a few confident false detections cost almost nothing. ``tgt`` is on the logits' grid.

    >>> lg, tg = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    >>> tg[0, 0, 0, 0] = 1.0
    >>> round(float(ranking_loss(lg, tg)), 3)        # 1 lesion among 7 background positions, all logits equal
    2.079
    >>> lg[1, 0, 1, 1] = 5.0                           # a confident false detection on the other slice
    >>> round(float(ranking_loss(lg, tg)), 3)
    5.046
    """
    n, k = logits.shape[:2]
    lg = logits.float().flatten(2)                     # [N, K, P]
    pos = tgt.flatten(2) > 0
    neg_lse = lg.masked_fill(pos, -math.inf).transpose(0, 1).reshape(k, -1).logsumexp(dim=1)  # [K] over the batch
    pos_lse = lg.masked_fill(~pos, -math.inf).logsumexp(dim=2)  # [N, K]
    has = pos.any(dim=2)
    if not bool(has.any()):
        return logits.sum() * 0.0
    both = torch.logaddexp(pos_lse, neg_lse[None, :].expand(n, k))
    return (both - pos_lse)[has].mean()
