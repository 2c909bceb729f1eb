"""The seven fusion strategies behind one interface.

Every strategy takes two token sets -- image tokens ``[B, S, d]`` (per slice or
per 3D patch) with mask ``[B, S]`` and EHR tokens ``[B, E, d]`` (per event or
feature) with mask ``[B, E]`` -- and returns a ``FusionOut``: the fused vector
for the survival head, weights over image tokens and over EHR tokens (each sums
to 1 over the present tokens; all zeros when the modality is missing) and the
raw attention maps for display. A modality is missing for a subject when its
mask row is all zero.

* ``image_only`` / ``ehr_only``: gated attention pooling of one token set.
* ``concat`` (late fusion): both pooled vectors, zeroed when missing, plus the
  two presence flags, through an MLP.
* ``contrastive``: CLIP-style. Projections ``z_img``, ``z_ehr`` (L2-normalised)
  of the pooled vectors are first aligned with a symmetric InfoNCE loss
  (``info_nce``; the trainer's step one), then the head is trained on
  ``[z_img, z_ehr]`` (step two). A missing modality is replaced by the other's
  aligned projection.
* ``cross_attention``: bidirectional multi-head cross-attention,
  ``A_ehr<-img`` (EHR tokens query image tokens) and ``A_img<-ehr``;
  fused = concat(h_ehr, pool(A_ehr<-img), h_img, pool(A_img<-ehr)). Image-token
  weights are the ``ehr<-img`` map averaged over heads and weighted by the
  pooling weights of the EHR queries; event weights likewise.
* ``coattention_image``: image-guided co-attention (MCAT style): every image
  token queries the EHR tokens; the co-attended tokens are pooled and
  concatenated with the pooled image. ``coattention_ehr`` is the mirror image.
  When the guiding modality is missing the pooled other modality is used.

Image-anchored residual form (``make_fusion(..., anchor=True)``, used by models
trained since the lung-mask change): a multimodal strategy's fused vector is
``h = h_image_only + g * h_strategy``, where ``h_image_only`` is an image-only
branch (gated attention pooling + MLP) warm-started from the image stage and
``g`` is a learned scalar gate starting at 0. Training therefore starts from
the image-only model and the strategy learns what the EHR (and the cross-modal
interaction) adds; without it the EHR path, which is learned in a few steps,
swamped the slower image path and every fusion scored below image_only.

Attention over a single vector is degenerate (softmax over one key is 1): all
cross-modal attention here runs over token sets, with a learned ``null`` key so
that a subject with a missing modality still has a key to attend to (its weight
is dropped from the displayed weights).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.models.pooling import AttentionPool, masked_softmax


@dataclass
class FusionOut:
    h: torch.Tensor
    image_weights: torch.Tensor | None
    ehr_weights: torch.Tensor | None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    z_image: torch.Tensor | None = None
    z_ehr: torch.Tensor | None = None


def _mlp(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, d_out), nn.GELU(), nn.Dropout(dropout))


def _present(mask: torch.Tensor) -> torch.Tensor:
    return (mask.sum(-1) > 0).to(mask.dtype)


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between paired, L2-normalised rows (CLIP loss)."""
    logits = z_a @ z_b.t() / temperature
    target = torch.arange(z_a.shape[0], device=z_a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class CrossAttend(nn.Module):
    """Multi-head attention of queries over a key set with a learned null key; returns outputs and per-head maps."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nq, d = query.shape
        keys = torch.cat([self.null.expand(b, 1, d), keys], dim=1)
        mask = torch.cat([torch.ones(b, 1, dtype=key_mask.dtype, device=key_mask.device), key_mask], dim=1)
        h = self.heads
        q = self.q(query).reshape(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(keys).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5
        attn = masked_softmax(scores, mask[:, None, None, :].expand_as(scores))
        ctx = (self.drop(attn) @ v).transpose(1, 2).reshape(b, nq, d)
        return self.norm(query + self.out(ctx)), attn  # attn: [B, heads, nq, 1 + nk]


def _key_weights(attn: torch.Tensor, query_weights: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Weights over the real keys: attention averaged over heads, weighted by query importance, null dropped."""
    w = torch.einsum("bhqk,bq->bk", attn, query_weights)[:, 1:] / attn.shape[1]
    w = w * key_mask
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


class Fusion(nn.Module, ABC):
    """Base class: ``forward(img, img_mask, ehr, ehr_mask) -> FusionOut``; ``out_dim`` for the head."""

    out_dim: int
    uses_image: bool = True
    uses_ehr: bool = True

    @abstractmethod
    def forward(self, img: torch.Tensor, img_mask: torch.Tensor, ehr: torch.Tensor, ehr_mask: torch.Tensor) -> FusionOut:
        """Fuse the two token sets (each strategy defines this)."""

    def image_pool(self) -> AttentionPool | None:
        """The pooling that summarises the image tokens on their own (warm-started from the image stage)."""
        for name in ("pool_img", "pool"):
            mod = getattr(self, name, None)
            if isinstance(mod, AttentionPool) and self.uses_image:
                return mod
        return None


class _SingleModality(Fusion):
    """Attention pooling over one modality's tokens, then an MLP; the other modality is ignored."""

    side = "image"

    def __init__(self, dim: int, dropout: float = 0.1, heads: int = 2) -> None:
        super().__init__()
        self.pool = AttentionPool(dim)
        self.mlp = _mlp(dim, dim, dropout)
        self.out_dim = dim

    def forward(self, img, img_mask, ehr, ehr_mask):  # type: ignore[override]
        if self.side == "image":
            h, w = self.pool(img, img_mask)
            return FusionOut(self.mlp(h), w, None)
        h, w = self.pool(ehr, ehr_mask)
        return FusionOut(self.mlp(h), None, w)


class ImageOnly(_SingleModality):
    side = "image"
    uses_ehr = False


class EHROnly(_SingleModality):
    side = "ehr"
    uses_image = False


class Concat(Fusion):
    def __init__(self, dim: int, dropout: float = 0.1, heads: int = 2) -> None:
        super().__init__()
        self.pool_img = AttentionPool(dim)
        self.pool_ehr = AttentionPool(dim)
        self.mlp = _mlp(2 * dim + 2, dim, dropout)
        self.out_dim = dim

    def forward(self, img, img_mask, ehr, ehr_mask):  # type: ignore[override]
        hi, wi = self.pool_img(img, img_mask)
        he, we = self.pool_ehr(ehr, ehr_mask)
        pi, pe = _present(img_mask), _present(ehr_mask)
        return FusionOut(self.mlp(torch.cat([hi, he, pi[:, None], pe[:, None]], dim=-1)), wi, we)


class Contrastive(Fusion):
    def __init__(self, dim: int, dropout: float = 0.1, heads: int = 2, proj_dim: int | None = None) -> None:
        super().__init__()
        proj_dim = proj_dim or dim
        self.pool_img = AttentionPool(dim)
        self.pool_ehr = AttentionPool(dim)
        self.proj_img = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        self.proj_ehr = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        self.mlp = _mlp(2 * proj_dim, dim, dropout)
        self.out_dim = dim

    def forward(self, img, img_mask, ehr, ehr_mask):  # type: ignore[override]
        hi, wi = self.pool_img(img, img_mask)
        he, we = self.pool_ehr(ehr, ehr_mask)
        zi = F.normalize(self.proj_img(hi), dim=-1)
        ze = F.normalize(self.proj_ehr(he), dim=-1)
        pi, pe = _present(img_mask)[:, None], _present(ehr_mask)[:, None]
        zi_f = pi * zi + (1 - pi) * ze  # a missing modality borrows the other's aligned projection
        ze_f = pe * ze + (1 - pe) * zi
        return FusionOut(self.mlp(torch.cat([zi_f, ze_f], dim=-1)), wi, we, z_image=zi, z_ehr=ze)


class CrossAttention(Fusion):
    def __init__(self, dim: int, dropout: float = 0.1, heads: int = 2) -> None:
        super().__init__()
        self.ehr_from_img = CrossAttend(dim, heads, dropout)
        self.img_from_ehr = CrossAttend(dim, heads, dropout)
        self.pool_img = AttentionPool(dim)
        self.pool_ehr = AttentionPool(dim)
        self.pool_ei = AttentionPool(dim)
        self.pool_ie = AttentionPool(dim)
        self.mlp = _mlp(4 * dim, dim, dropout)
        self.out_dim = dim

    def forward(self, img, img_mask, ehr, ehr_mask):  # type: ignore[override]
        a_ei, m_ei = self.ehr_from_img(ehr, img, img_mask)  # EHR queries, image keys
        a_ie, m_ie = self.img_from_ehr(img, ehr, ehr_mask)  # image queries, EHR keys
        h_img, w_img = self.pool_img(img, img_mask)
        h_ehr, w_ehr = self.pool_ehr(ehr, ehr_mask)
        p_ei, q_e = self.pool_ei(a_ei, ehr_mask)
        p_ie, q_i = self.pool_ie(a_ie, img_mask)
        fused = torch.cat([h_ehr, p_ei, h_img, p_ie], dim=-1)
        has_i, has_e = _present(img_mask)[:, None], _present(ehr_mask)[:, None]
        # weights from the cross-attention maps; the own pooling weights when the other side has no queries
        wi = has_e * _key_weights(m_ei, q_e, img_mask) + (1 - has_e) * w_img
        we = has_i * _key_weights(m_ie, q_i, ehr_mask) + (1 - has_i) * w_ehr
        return FusionOut(self.mlp(fused), wi, we, {"ehr<-img": m_ei[..., 1:], "img<-ehr": m_ie[..., 1:]})


class CoAttention(Fusion):
    """Co-attention guided by one modality (``guide`` = "image" or "ehr")."""

    def __init__(self, dim: int, dropout: float = 0.1, heads: int = 2, guide: str = "image") -> None:
        super().__init__()
        self.guide = guide
        self.coattn = CrossAttend(dim, heads, dropout)
        # the pooling of the image tokens alone: pool_guide (image-guided) or pool_other (EHR-guided)
        self.pool_co = AttentionPool(dim)
        self.pool_guide = AttentionPool(dim)
        self.pool_other = AttentionPool(dim)
        self.mlp = _mlp(3 * dim, dim, dropout)
        self.out_dim = dim

    def image_pool(self) -> AttentionPool | None:
        return self.pool_guide if self.guide == "image" else self.pool_other

    def forward(self, img, img_mask, ehr, ehr_mask):  # type: ignore[override]
        if self.guide == "image":
            g, gm, o, om = img, img_mask, ehr, ehr_mask
        else:
            g, gm, o, om = ehr, ehr_mask, img, img_mask
        co, m = self.coattn(g, o, om)  # guide tokens query the other modality
        h_co, w_g = self.pool_co(co, gm)
        h_g, _ = self.pool_guide(g, gm)
        h_o, w_o_pool = self.pool_other(o, om)
        miss_g = 1 - _present(gm)[:, None]  # guide missing: fall back on the pooled other modality
        fused = torch.cat([h_co, h_g, miss_g * h_o], dim=-1)
        w_o = _key_weights(m, w_g, om)
        has_g = _present(gm)[:, None]
        w_o = has_g * w_o + (1 - has_g) * w_o_pool
        key = "img<-ehr" if self.guide == "image" else "ehr<-img"
        if self.guide == "image":
            return FusionOut(self.mlp(fused), w_g, w_o, {key: m[..., 1:]})
        return FusionOut(self.mlp(fused), w_o, w_g, {key: m[..., 1:]})


class ImageAnchored(Fusion):
    """``h = image_only(img).h + gate * inner(img, ehr).h`` (gate starts at 0); weights and maps from ``inner``."""

    def __init__(self, inner: Fusion, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.inner = inner
        self.anchor = ImageOnly(dim, dropout)
        self.gate = nn.Parameter(torch.zeros(1))
        self.out_dim = inner.out_dim
        self.uses_image, self.uses_ehr = inner.uses_image, inner.uses_ehr

    def image_pool(self) -> AttentionPool | None:
        return self.anchor.pool

    def forward(self, img, img_mask, ehr, ehr_mask):  # type: ignore[override]
        a = self.anchor(img, img_mask, ehr, ehr_mask)
        o = self.inner(img, img_mask, ehr, ehr_mask)
        return FusionOut(a.h + self.gate * o.h, o.image_weights, o.ehr_weights, o.attention, o.z_image, o.z_ehr)


def make_fusion(name: str, dim: int, dropout: float = 0.1, heads: int = 2, anchor: bool = False) -> Fusion:
    from core.errors import InputError
    from core.models import FUSIONS

    table = {
        "image_only": lambda: ImageOnly(dim, dropout, heads),
        "ehr_only": lambda: EHROnly(dim, dropout, heads),
        "concat": lambda: Concat(dim, dropout, heads),
        "contrastive": lambda: Contrastive(dim, dropout, heads),
        "cross_attention": lambda: CrossAttention(dim, dropout, heads),
        "coattention_image": lambda: CoAttention(dim, dropout, heads, guide="image"),
        "coattention_ehr": lambda: CoAttention(dim, dropout, heads, guide="ehr"),
    }
    if name not in table:
        raise InputError("fusion", name, "unknown fusion strategy", f"use one of {', '.join(FUSIONS)}")
    fusion = table[name]()
    if anchor and name not in ("image_only", "ehr_only"):
        return ImageAnchored(fusion, dim, dropout)
    return fusion
