"""``SurvivalNet``: image encoder + EHR encoders + fusion + survival head, built from a JSON config.

Batch dictionary (all tensors, batch first):

* image, one of: ``image``, the encoder's prepared input (``[B, S, size, size]``
  slices or a ``[B, *grid]`` volume from ``core.preprocess.transforms``, or the
  foundation backbone's ``[B, 1, Z, X, Y]`` from ``core.models.foundation_cache``; encoded
  here, differentiable), ``image_tokens`` ``[B, S, D]`` + ``image_token_mask``
  ``[B, S]`` (encoder tokens, see ``with_image_tokens``), or ``image_embedding``
  ``[B, K * D]`` (precomputed); ``image_present`` ``[B]``; ``n_slices`` (the
  study's slice count, to map 3D patch weights onto slices).
* EHR, any of: ``codes``, ``values``, ``value_missing``, ``dt_days``, ``event_mask``
  ``[B, E]`` (sequence encoder); ``features``, ``feature_missing`` ``[B, F]`` and
  ``features_present`` ``[B]`` (tabular); ``ehr_embedding`` ``[B, D]`` and
  ``ehr_embedding_present`` ``[B]``.

Linear EHR term (``ModelConfig.ehr_linear``): when
the model uses tabular features, the head also gets ``[features,
feature_missing]`` (where ``features_present`` is 0, as for an uploaded case,
the training mean ``wide_mean`` instead) and adds a linear term of them to the linear predictor (wide and deep;
fitted after the network, ``SurvivalHead.fit_wide``). The demo measured why: a
Cox model on the image-only model's risk plus features.csv ranked far better
than every fusion, whose deep EHR path, learned from a few hundred subjects,
read the features poorly (see docs/BENCHMARKS.md). With ``ModelConfig.image_linear`` (a detector encoder) the
head's linear term reads the study's detection statistics (``StudyStats``) first, then those features. An image + EHR
network fits both (``fusion_study_stats``); otherwise its weights on the statistics stay 0 and only the linear ensemble
members of ``core.train.image_linear`` read them.

EHR tokens are ordered ``[events (E), features (F + 1), embedding (1)]`` with a
learned type embedding each; ``event_weights`` are the fusion's EHR-token
weights restricted to the E event tokens and renormalised.

``forward`` returns a dict (DistributedDataParallel-friendly):
``raw`` (head output), ``survival`` ``[B, T]``, ``risk`` ``[B]``,
``slice_weights`` / ``event_weights`` (or None), ``attention``, ``z_image`` /
``z_ehr`` (contrastive only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from core.models.config import ImageConfig, ModelConfig
from core.models.types import NetBatch
from core.models.ehr_sequence import SequenceEncoder
from core.models.ehr_tabular import FeatureTokenizer
from core.models.forest import SurvivalForest
from core.models.fusion import make_fusion
from core.models.heads import make_head
from core.models.image2d import DETECT_CHANNELS, SliceEncoder2D
from core.models.pooling import SliceScales, StudyStats
from core.models.recalibration import SiteRecalibration


def build_image_encoder(icfg: ImageConfig) -> nn.Module | None:
    """The voxel encoder of an image config (None for embeddings or no image); its input comes from
    ``ImageConfig.transforms`` (``core.preprocess.transforms``) of the same config."""
    if icfg.kind == "2d":
        return SliceEncoder2D.from_config(icfg)
    if icfg.kind == "3d":
        from core.models.image3d import VolumeEncoder3D

        assert icfg.grid is not None
        return VolumeEncoder3D(icfg.out_dim, icfg.grid, icfg.channels)
    if icfg.kind == "foundation":
        # the frozen pretrained backbone, shared by every model of the process and never saved with one
        from core.models.foundation_cache import FoundationTokens

        assert icfg.grid is not None
        return FoundationTokens(icfg.grid, icfg.weights or "astra", icfg.weights_sha256)
    return None


def with_image_tokens(batch: NetBatch, tokens: torch.Tensor, n_slices: int) -> NetBatch:
    """``batch`` with the image replaced by its encoder tokens (all valid) and the study's slice count.

    Every caller that encodes a case once and then runs the fusion several times (ensemble members,
    MC dropout, attributions) goes through here.
    """
    out: NetBatch = {k: v for k, v in batch.items() if k != "image"}  # type: ignore[assignment]
    out.update(image_tokens=tokens, image_token_mask=torch.ones(tokens.shape[:2], device=tokens.device),
               n_slices=torch.tensor(int(n_slices)))
    return out


def _renorm(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


class SurvivalNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # a site's recalibration of the final curve (core.models.recalibration; an ensemble applies it to its mean)
        self.recalibration = SiteRecalibration.from_config(cfg.extra.get("recalibration"), len(cfg.edges))
        dim, dropout, icfg, ecfg = cfg.dim, cfg.dropout, cfg.image, cfg.ehr
        self.image_kind = icfg.kind
        self.image_encoder = build_image_encoder(icfg)
        self.slice_pos: nn.Module | None = None
        self.slice_scales: SliceScales | None = None
        if icfg.voxels:
            self.image_proj: nn.Module | None = nn.Sequential(nn.Linear(icfg.out_dim, dim), nn.LayerNorm(dim))
            self.slice_pos = nn.Linear(8, dim) if icfg.kind == "2d" else None
            # slice context along the scan axis (ImageConfig.z_scales; absent in older folders)
            self.slice_scales = SliceScales(icfg.out_dim, icfg.z_scales) if icfg.kind == "2d" and icfg.z_scales else None
        elif icfg.kind == "embedding":
            assert icfg.emb_dim is not None
            self.image_proj = nn.Sequential(nn.Linear(icfg.emb_dim, dim), nn.LayerNorm(dim))
        else:
            self.image_proj = None
        self.seq = SequenceEncoder(len(ecfg.sequence["codes"]) + 2, dim, ecfg.layers, cfg.heads, dropout) if ecfg.sequence else None
        self.tab = FeatureTokenizer(len(ecfg.feature_names), dim, dropout) if ecfg.tabular else None
        self.ehr_emb_proj = nn.Sequential(nn.Linear(ecfg.embedding_dim, dim), nn.LayerNorm(dim)) if ecfg.embedding_dim else None
        self.type_emb = nn.Embedding(3, dim)
        self.fusion = make_fusion(cfg.fusion, dim, dropout, cfg.heads, anchor=cfg.image_anchor)
        # the linear EHR term's input: [features, missing indicators]
        self.ehr_wide_dim = 2 * len(ecfg.feature_names) if cfg.ehr_linear and ecfg.tabular and self.fusion.uses_ehr else 0
        # on a detector encoder, the head's linear term also reads study-level detection statistics, first
        # (ModelConfig.image_linear; fitted in image + EHR networks, core.train.fusion_stage, and in the linear
        # members of core.train.image_linear)
        self.study_stats: StudyStats | None = None
        if cfg.image_linear and self.fusion.uses_image and icfg.kind == "2d" and icfg.pool == "detect":
            proj = getattr(self.image_encoder, "proj", None)
            assert isinstance(proj, nn.Linear)
            direct = DETECT_CHANNELS * len(icfg.detect_z)  # the detector's own slice-window statistics, last
            self.study_stats = StudyStats(proj.in_features, cfg.image_linear, direct)
        self.wide_dim = self.ehr_wide_dim + (self.study_stats.dim if self.study_stats is not None else 0)
        self.head = make_head(cfg.head, self.fusion.out_dim, np.asarray(cfg.edges, float),
                              proportional=cfg.proportional_head, wide_dim=self.wide_dim)
        if self.ehr_wide_dim:
            # the linear EHR term's input for a subject without tabular features (an uploaded case): the mean
            # over the training subjects with features (``set_wide_mean``); 0 in model folders saved before it
            self.register_buffer("wide_mean", torch.zeros(self.ehr_wide_dim))
        self.dim = dim

    @property
    def has_image(self) -> bool:
        return self.image_proj is not None and self.fusion.uses_image

    @property
    def has_ehr(self) -> bool:
        return (self.seq is not None or self.tab is not None or self.ehr_emb_proj is not None) and self.fusion.uses_ehr

    def encode_image(self, prepared: torch.Tensor) -> torch.Tensor:
        """Raw encoder tokens ``[B, S or P, D]`` from the prepared image (what the training cache stores)."""
        assert self.image_encoder is not None
        return self.image_encoder(prepared)

    def _image_tokens(self, batch: dict[str, torch.Tensor], b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """Projected image tokens ``[B, S, dim]``, their mask (0 without an image) and the study's slice count."""
        return self._project_image(self._raw_image_tokens(batch), b, device)

    def _raw_image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int | None] | None:
        """The encoder's tokens ``[B, S, D]`` (encoded here from ``image``, or given), their mask and slice count."""
        if not self.has_image:
            return None
        n_slices: int | None = None
        if "image_tokens" in batch:
            tok, mask = batch["image_tokens"].float(), batch["image_token_mask"].float()
            n_slices = int(batch["n_slices"]) if "n_slices" in batch else None
        elif "image" in batch and batch["image"] is not None:
            tok = self.encode_image(batch["image"])
            mask = torch.ones(tok.shape[:2], device=tok.device)
            n_slices = int(batch["n_slices"]) if "n_slices" in batch else int(batch["image"].shape[1])
        elif "image_embedding" in batch:
            d = int(self.cfg.image.emb_dim or 0)
            emb = batch["image_embedding"]
            tok = emb.float().reshape(emb.shape[0], -1, d)
            mask = torch.ones(tok.shape[:2], device=tok.device)
        else:
            return None
        return tok, mask * batch["image_present"].float()[:, None], n_slices

    def _project_image(self, raw: tuple[torch.Tensor, torch.Tensor, int | None] | None, b: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        if raw is None:
            return torch.zeros(b, 1, self.dim, device=device), torch.zeros(b, 1, device=device), None
        tok, mask, n_slices = raw
        if self.slice_scales is not None:
            tok = self.slice_scales(tok, mask)
        img = self.image_proj(tok)
        if self.slice_pos is not None:  # where the slice lies (inferior -> superior) in the scanned range
            n_real = mask.sum(-1, keepdim=True).clamp_min(1.0)
            z = (torch.arange(tok.shape[1], device=device, dtype=img.dtype)[None, :] + 0.5) / n_real
            ang = z.unsqueeze(-1) * torch.tensor([1.0, 2.0, 4.0, 8.0], device=device, dtype=img.dtype) * torch.pi
            img = img + self.slice_pos(torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1))
        return img, mask, n_slices

    def _ehr_tokens(self, batch: dict[str, torch.Tensor], b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        toks, masks = [], []
        n_events = 0
        if self.has_ehr and self.seq is not None and "codes" in batch:
            toks.append(self.seq(batch) + self.type_emb.weight[0])
            masks.append(batch["event_mask"].float())
            n_events = int(batch["codes"].shape[1])
        if self.has_ehr and self.tab is not None and "features" in batch:
            t = self.tab(batch["features"].float(), batch["feature_missing"].float()) + self.type_emb.weight[1]
            toks.append(t)
            masks.append(batch["features_present"].float()[:, None].expand(b, t.shape[1]))
        if self.has_ehr and self.ehr_emb_proj is not None and "ehr_embedding" in batch:
            toks.append(self.ehr_emb_proj(batch["ehr_embedding"].float()).unsqueeze(1) + self.type_emb.weight[2])
            masks.append(batch["ehr_embedding_present"].float()[:, None])
        if not toks:
            return torch.zeros(b, 1, self.dim, device=device), torch.zeros(b, 1, device=device), 0
        return torch.cat(toks, dim=1), torch.cat(masks, dim=1), n_events

    def _wide_input(self, batch: dict[str, torch.Tensor], b: int | None = None) -> torch.Tensor | None:
        """``[B, wide_dim]`` input of the head's linear term: the study statistics (``_image_wide``, with
        ``ModelConfig.image_linear``), then the scaled EHR features and their missing indicators.

        A subject without features (``features_present`` 0, or no ``features`` in the batch at all,
        as for an uploaded case; ``b`` is then the batch size) gets ``wide_mean``, the training mean,
        so its term is the average term of the training subjects rather than 0.
        """
        return self._wide(batch, self._raw_image_tokens(batch) if self.study_stats is not None else None, b)

    def _wide(self, batch: dict[str, torch.Tensor], raw_image: tuple[torch.Tensor, torch.Tensor, int | None] | None,
              b: int | None) -> torch.Tensor | None:
        if not self.wide_dim:
            return None
        parts: list[torch.Tensor] = []
        if self.study_stats is not None:
            if b is None:
                b = len(batch["image_present"]) if "image_present" in batch else None
            if b is None:
                return None
            parts.append(self._image_wide(raw_image, b))
        if self.ehr_wide_dim:
            ehr = self._ehr_wide(batch, b)
            if ehr is None:
                return None
            parts.append(ehr.to(parts[0].device) if parts else ehr)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _ehr_wide(self, batch: dict[str, torch.Tensor], b: int | None) -> torch.Tensor | None:
        mean = self.wide_mean.float()
        if "features" not in batch:
            return None if b is None else mean.expand(b, -1)
        present = batch["features_present"].float()[:, None]
        x = self._features_and_missing(batch)
        return x * present + mean.to(x.device) * (1.0 - present)

    def _image_wide(self, raw: tuple[torch.Tensor, torch.Tensor, int | None] | None, b: int) -> torch.Tensor:
        """``[B, k]`` standardised study statistics (``StudyStats``) of the encoder tokens; 0 without an image."""
        assert self.study_stats is not None
        if raw is None:
            return torch.zeros(b, self.study_stats.dim, device=self.study_stats.mean.device)
        tok, mask, _ = raw
        return self.study_stats(tok, mask, self.image_encoder.proj)  # type: ignore[union-attr, arg-type]

    @torch.no_grad()
    def set_study_scale(self, batch: dict[str, torch.Tensor]) -> int:
        """Standardise the linear image term's statistics over the batch's studies; returns their number."""
        raw = self._raw_image_tokens(batch) if self.study_stats is not None else None
        if raw is None:
            return 0
        return self.study_stats.set_scale(raw[0], raw[1], self.image_encoder.proj)  # type: ignore[union-attr, arg-type]

    @staticmethod
    def _features_and_missing(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([batch["features"].float(), batch["feature_missing"].float()], dim=-1)

    @torch.no_grad()
    def set_wide_mean(self, batch: dict[str, torch.Tensor]) -> int:
        """Set ``wide_mean`` to the mean wide input over the batch's subjects with features; returns their number."""
        if not self.ehr_wide_dim or "features" not in batch:
            return 0
        keep = batch["features_present"].float() > 0
        if not bool(keep.any()):
            return 0
        x = self._features_and_missing(batch)[keep]
        self.wide_mean.copy_(x.mean(dim=0).to(self.wide_mean))
        return int(keep.sum())

    def forward(self, batch: NetBatch) -> dict[str, Any]:
        ref = batch.get("image_present")
        if ref is None:
            ref = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        b, device = ref.shape[0], ref.device
        raw_image = self._raw_image_tokens(batch)
        img, img_mask, n_slices = self._project_image(raw_image, b, device)
        ehr, ehr_mask, n_events = self._ehr_tokens(batch, b, device)
        fo = self.fusion(img, img_mask, ehr, ehr_mask)
        wide = self._wide(batch, raw_image, b)
        raw = self.head(fo.h, wide)
        surv = self.head.survival(raw)
        risk = self.head.risk(raw, surv)  # the ranking score: a site's recalibration keeps the order at each time
        if self.recalibration is not None:
            surv = self.recalibration(surv)
        slice_w = fo.image_weights
        if slice_w is not None and self.image_kind in ("3d", "foundation") and n_slices is not None:
            enc = self.image_encoder
            slice_w = _renorm(slice_w @ enc.patch_slices(n_slices).to(slice_w))  # type: ignore[union-attr]
        event_w = _renorm(fo.ehr_weights[:, :n_events]) if fo.ehr_weights is not None and n_events else None
        return {"raw": raw, "survival": surv, "risk": risk, "slice_weights": slice_w, "event_weights": event_w,
                "attention": fo.attention, "z_image": fo.z_image, "z_ehr": fo.z_ehr,
                "image_present": (img_mask.sum(-1) > 0).float(), "ehr_present": (ehr_mask.sum(-1) > 0).float()}


class EnsembleNet(nn.Module):
    """``k`` ``SurvivalNet`` members trained from different seeds on one frozen, shared image encoder.

    ``forward`` takes the same batch and returns the same keys as ``SurvivalNet``:
    survival, risk, raw, slice/event weights and attention maps are the means over
    the members (S(t) of the ensemble is the mean of the members' curves), plus
    ``member_survival`` ``[k, B, T]`` for the uncertainty band. Images are encoded
    once (the encoder is shared) and the tokens go to every member, so gradients
    still reach the voxels.

    >>> cfg = ModelConfig.from_dict({"fusion": "image_only", "head": "discrete", "dim": 8, "edges": [0, 1, 2],
    ...        "image": {"kind": "2d", "out_dim": 8, "size": 16, "channels": [4], "hu_window": [-1000, 1000]},
    ...        "ehr": {"sequence": None, "tabular": None, "embedding_dim": None}})
    >>> ens = EnsembleNet(cfg, 3).eval()
    >>> out = ens({"image": torch.zeros(2, 4, 16, 16), "image_present": torch.ones(2)})
    >>> tuple(out["survival"].shape), tuple(out["member_survival"].shape)
    ((2, 3), (3, 2, 3))
    >>> ens.members[2].image_encoder is ens.members[0].image_encoder
    True
    """

    def __init__(self, cfg: ModelConfig, k: int) -> None:
        super().__init__()
        if int(k) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {k}")
        self.cfg = cfg
        self.recalibration = SiteRecalibration.from_config(cfg.extra.get("recalibration"), len(cfg.edges))
        member_cfg = dataclasses.replace(cfg, extra={k: v for k, v in cfg.extra.items() if k != "recalibration"})
        members = [SurvivalNet(member_cfg) for _ in range(int(k))]
        for m in members[1:]:
            m.image_encoder = members[0].image_encoder
        self.members = nn.ModuleList(members)
        # ehr_only on tabular features: an exported random survival forest blended in on the curve scale
        # (core.models.forest; config.json "forest": its array sizes and weight)
        forest = cfg.extra.get("forest")
        self.forest = SurvivalForest.from_config(forest) if forest else None
        self.forest_weight = float(forest["weight"]) if forest else 0.0

    @property
    def first(self) -> SurvivalNet:
        return self.members[0]  # type: ignore[return-value]

    @property
    def image_encoder(self) -> nn.Module | None:
        return self.first.image_encoder

    @property
    def image_kind(self) -> str:
        return self.first.image_kind

    @property
    def has_image(self) -> bool:
        return self.first.has_image

    @property
    def has_ehr(self) -> bool:
        return self.first.has_ehr

    def encode_image(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.first.encode_image(prepared)

    def feature_only_members(self) -> list[bool]:
        """Which members read the tabular features alone: ehr_only's linear members (``core.train.ehr.linear_members``:
        a network copy whose weights to the head are 0, its linear EHR term fitted alone), not the linear members of
        a detector's study statistics (``study_stats``), which read the CT."""
        out = []
        for m in self.members:
            head = m.head  # type: ignore[union-attr]
            out.append(bool(m.ehr_wide_dim) and m.study_stats is None and head.wide is not None  # type: ignore[union-attr]
                       and not bool(head.linear.weight.detach().any()))
        return out

    def _member_weights(self, batch: NetBatch, like: torch.Tensor) -> torch.Tensor:
        """``[k, B]`` weights of the members in the mean curve: equal, except that a member reading the features alone
        is left out for a subject without features (it would give the training mean's curve, and halve the spread of
        the networks that read the subject's timeline: docs/BENCHMARKS.md, session 42)."""
        k, b = len(self.members), like.shape[0]
        weight = torch.ones(k, b, device=like.device)
        only = torch.tensor(self.feature_only_members(), device=like.device)
        if bool(only.any()) and not bool(only.all()):
            absent = (torch.ones(b, dtype=torch.bool, device=like.device) if "features" not in batch
                      else batch["features_present"].to(like.device).float() <= 0)
            weight[only[:, None] & absent[None, :]] = 0.0
        return weight / weight.sum(0, keepdim=True)

    def forward(self, batch: NetBatch) -> dict[str, Any]:
        if "image" in batch and batch["image"] is not None and self.image_encoder is not None and self.has_image:
            image = batch["image"]
            n = int(batch["n_slices"]) if "n_slices" in batch else int(image.shape[1])
            batch = with_image_tokens(batch, self.encode_image(image), n)
        outs = [m(batch) for m in self.members]
        weight = self._member_weights(batch, outs[0]["survival"])  # [k, B], each column sums to 1

        def mean(key: str) -> torch.Tensor | None:
            vals = [o[key] for o in outs]
            if vals[0] is None:
                return None
            stacked = torch.stack(vals)
            w = weight.to(stacked).reshape(weight.shape + (1,) * (stacked.dim() - 2))
            return (stacked * w).sum(0)

        attention = {k: torch.stack([o["attention"][k] for o in outs]).mean(0) for k in outs[0]["attention"]}
        surv, risk, member_survival = mean("survival"), mean("risk"), torch.stack([o["survival"] for o in outs])
        # a member left out for a subject is shown at the mean curve in the band (inside the others' range)
        member_survival = torch.where(weight[:, :, None].to(surv.device) > 0, member_survival, surv[None])
        if self.forest is not None and "features" in batch:  # subjects without features keep the members' curve
            sf = self.forest(SurvivalNet._features_and_missing(batch)).to(surv)
            w = self.forest_weight * (batch["features_present"].float() > 0).to(surv)[:, None]
            forest_surv = torch.where(w > 0, sf, surv)
            surv = (1 - w) * surv + w * sf
            risk = (1 - w[:, 0]) * risk + w[:, 0] * self.first.head.risk(sf, sf)  # the heads' risk is linear in S
            member_survival = torch.cat([member_survival, forest_surv[None]])
        if self.recalibration is not None:  # on the mean curve and on each curve of the band
            surv, member_survival = self.recalibration(surv), self.recalibration(member_survival)
        return {"raw": mean("raw"), "survival": surv, "risk": risk,
                "slice_weights": mean("slice_weights"), "event_weights": mean("event_weights"), "attention": attention,
                "z_image": outs[0]["z_image"], "z_ehr": outs[0]["z_ehr"],
                "image_present": outs[0]["image_present"], "ehr_present": outs[0]["ehr_present"],
                "member_survival": member_survival}


def build_net(cfg: ModelConfig) -> nn.Module:
    """``SurvivalNet`` or, where ``cfg.ensemble > 1``, ``EnsembleNet`` (what a model folder holds)."""
    return EnsembleNet(cfg, cfg.ensemble) if cfg.ensemble > 1 else SurvivalNet(cfg)
