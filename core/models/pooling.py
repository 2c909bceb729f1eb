"""Masked softmax and gated attention pooling over token sets.

A subject with no tokens (a missing modality) gets all-zero weights and a zero
vector, never NaN: weights are renormalised over the present tokens only.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import InputError


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over entries where ``mask`` is true; rows without any true entry give zeros."""
    mask = mask.to(torch.bool)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim) * mask.to(scores.dtype)
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(1e-12)


class AttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018): ``w = softmax(a^T (tanh(Vh) * sigmoid(Uh)))``.

    >>> pool = AttentionPool(8)
    >>> h, w = pool(torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]))
    >>> [round(float(x), 4) for x in w.detach().sum(-1)]
    [1.0, 0.0]
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.a = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.a(torch.tanh(self.v(tokens)) * torch.sigmoid(self.u(tokens))).squeeze(-1)
        weights = masked_softmax(scores, mask)
        return torch.einsum("bs,bsd->bd", weights, tokens), weights


def _slice_windows(field: str, values: object) -> list[int]:
    """A setting's slice windows as a list of odd slice counts >= 3 (an ``InputError`` naming ``field`` and the fix
    otherwise: not a list of whole numbers, an even count, or fewer than 3 slices)."""
    fix = "use e.g. [3, 9] or leave it empty"
    if not isinstance(values, (list, tuple)) or not all(isinstance(w, (int, float)) and float(w).is_integer() for w in values):
        raise InputError(field, values, "must be a list of whole slice counts", fix)
    windows = [int(w) for w in values]
    if any(w < 3 or w % 2 == 0 for w in windows):
        raise InputError(field, windows, "slice windows must be odd and >= 3 slices", fix)
    return windows


def check_z_scales(values: list[int] | tuple[int, ...]) -> list[int]:
    """The ``image.z_scales`` setting as a list of odd slice counts >= 3 (an ``InputError`` naming the fix otherwise)."""
    return _slice_windows("image z_scales", values)


def check_detect_z_setting(values: list[int] | tuple[int, ...], pool: str | None) -> list[int]:
    """The ``image.detect_z`` setting (a detector's same-position slice windows) as a list of odd slice counts >= 3,
    for a detector encoder only (an ``InputError`` naming the fix otherwise).

    >>> check_detect_z_setting([3, 9], "detect")
    [3, 9]
    """
    windows = _slice_windows("image detect_z", values)
    if pool != "detect":
        raise InputError("image detect_z", windows, f"needs the lesion detector (image pool 'detect'), not {pool or 'meanmax'!r}",
                         "use --image-encoder-kind detector or leave detect_z empty")
    return windows


def window_mean(tokens: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, S, D]`` tokens -> the mean of each token's present neighbours within ``width`` (odd) positions centred
    on it (fewer at the ends; tokens outside ``mask`` count for nothing), ``[B, S, D]``.

    >>> t = torch.tensor([[[1.0], [2.0], [3.0], [9.0]]])
    >>> [round(v, 4) for v in window_mean(t, torch.tensor([[1, 1, 1, 0]]), 3)[0, :, 0].tolist()]
    [1.5, 2.0, 2.5, 3.0]
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"window width {width} must be odd and >= 1")
    if width == 1:
        return tokens
    m = mask.to(tokens.dtype)[..., None]
    pool = torch.nn.functional.avg_pool1d
    num = pool((tokens * m).transpose(1, 2), width, stride=1, padding=width // 2, count_include_pad=True)
    den = pool(m.transpose(1, 2), width, stride=1, padding=width // 2, count_include_pad=True)
    return (num / den.clamp_min(1e-6)).transpose(1, 2)


class SliceScales(nn.Module):
    """Slice context along the scan axis: each slice token plus a learnt linear map of the mean of its neighbours'
    tokens over windows of ``scales`` slices (odd widths), before the token projection.

    A lesion spans several neighbouring slices; a false detection on one slice (noise, an edge) usually does not, so
    the mean over a few slices separates them better than any single slice (docs/BENCHMARKS.md, "Slice context").
    The maps start at zero: an untrained module leaves the tokens as they are. Works on the whole study's token
    sequence (cached tokens, and explanations that replace one slice's token among fixed others).

    >>> sc = SliceScales(4, (3, 9))
    >>> t = torch.randn(2, 6, 4)
    >>> bool(torch.equal(sc(t, torch.ones(2, 6)), t)), len(sc.mix)
    (True, 2)
    """

    def __init__(self, dim: int, scales: tuple[int, ...]) -> None:
        super().__init__()
        self.scales = tuple(int(w) for w in scales)
        if not self.scales or any(w < 3 or w % 2 == 0 for w in self.scales):
            raise ValueError(f"slice scales {self.scales} must be odd widths >= 3")
        self.mix = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in self.scales)
        for lin in self.mix:
            nn.init.zeros_(lin.weight)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = tokens
        for width, lin in zip(self.scales, self.mix):
            out = out + lin(window_mean(tokens, mask, width))
        return out


class StudyStats(nn.Module):
    """Study-level detection statistics of a detector encoder, standardised: the input of a linear image term.

    A detector encoder (``SliceEncoder2D`` with ``pool="detect"``) projects a few per-slice detection statistics
    (per channel: the maximum logit and the soft area) to its slice tokens with a frozen affine map ``proj``. This
    module inverts that map (the pseudo-inverse of its weight), takes the mean of each statistic over ``windows``
    neighbouring slices (mask-aware, :func:`window_mean`) and its maximum over the study's slices: ``n_stats x
    len(windows)`` numbers per study, standardised with the ``mean`` / ``sd`` buffers (``set_scale``, the training
    subjects). The last ``direct`` statistics already average neighbouring slices themselves (a detector's
    ``detect_z`` ones): they get their maximum over the study only, after the others. A study without slices
    (``present`` 0) gets 0, the training mean. The survival head fits a ridge
    Cox-like term of them (``core.train.image_linear``): a lesion spans neighbouring slices, and on real-anatomy
    cohorts a linear model of these maxima ranked as well as the attention-pooled networks on val + test and
    steadier across seeds (docs/BENCHMARKS.md, "A linear image member").

    >>> proj = nn.Linear(2, 6)
    >>> st = StudyStats(2, (1, 3))
    >>> s = torch.tensor([[[0.0, 1.0], [4.0, 0.0], [0.0, 0.0]]])
    >>> raw = st.raw(proj(s).detach(), torch.ones(1, 3), proj)
    >>> [round(v, 3) for v in raw[0].tolist()]
    [4.0, 1.0, 2.0, 0.5]
    >>> st = StudyStats(2, (3,), direct=1)
    >>> st.dim, [round(v, 3) for v in st.raw(proj(s).detach(), torch.ones(1, 3), proj)[0].tolist()]
    (2, [2.0, 1.0])
    """

    def __init__(self, n_stats: int, windows: tuple[int, ...], direct: int = 0) -> None:
        super().__init__()
        self.windows = tuple(int(w) for w in windows)
        if not self.windows or any(w < 1 or w % 2 == 0 for w in self.windows):
            raise ValueError(f"study statistic windows {self.windows} must be odd widths >= 1")
        self.n_stats = int(n_stats)
        self.direct = int(direct)
        if not 0 <= self.direct < self.n_stats:
            raise ValueError(f"direct statistics {self.direct} must be fewer than the {self.n_stats} statistics")
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("sd", torch.ones(self.dim))

    @property
    def dim(self) -> int:
        return (self.n_stats - self.direct) * len(self.windows) + self.direct

    def raw(self, tokens: torch.Tensor, mask: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """``[B, dim]`` unstandardised statistics (a study without slices: 0)."""
        inv = torch.linalg.pinv(proj.weight.float())  # [n_stats, D]: the frozen projection's left inverse
        stats = (tokens.float() - proj.bias.float()) @ inv.T
        m = mask > 0
        low = torch.finfo(stats.dtype).min
        plain = stats[..., :self.n_stats - self.direct]
        out = [window_mean(plain, mask, w).masked_fill(~m[..., None], low).max(dim=1).values for w in self.windows]
        if self.direct:
            out.append(stats[..., self.n_stats - self.direct:].masked_fill(~m[..., None], low).max(dim=1).values)
        return torch.where(m.any(dim=1, keepdim=True), torch.cat(out, dim=-1), torch.zeros(()))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        z = (self.raw(tokens, mask, proj) - self.mean) / self.sd.clamp_min(1e-6)
        return z * (mask > 0).any(dim=1, keepdim=True).to(z)

    @torch.no_grad()
    def set_scale(self, tokens: torch.Tensor, mask: torch.Tensor, proj: nn.Linear) -> int:
        """Set ``mean`` / ``sd`` from the studies with slices among ``tokens``; returns their number."""
        keep = (mask > 0).any(dim=1)
        if int(keep.sum()) < 2:
            return int(keep.sum())
        x = self.raw(tokens[keep], mask[keep], proj)
        self.mean.copy_(x.mean(dim=0))
        self.sd.copy_(x.std(dim=0).clamp_min(1e-6))
        return int(keep.sum())
