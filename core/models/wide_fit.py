"""The linear EHR term of a survival head, fitted after the network ("wide and deep", Cheng et al. 2016).

A head built with ``wide_dim > 0`` also takes a vector ``x`` of scaled tabular
features and missing indicators and adds ``v . x`` to every interval's raw
output (to ``eta`` for Cox), so the linear predictor is ``w . h + v . x``.
``v`` is not learned by gradient descent with the network (on the demo that
drowned the slowly learned image signal, whose linear predictor leaves the
image stage with a spread of 1e-4): after the network is trained,
``SurvivalHead.fit_wide`` fits ``v`` jointly with a scale and shift of the
network's own linear predictor by penalised maximum likelihood on the training
split (a convex problem, solved by L-BFGS here in ``solve_wide``), like a Cox
model on [network risk, features]. ``cv_penalty`` chooses the ridge penalty by
cross-validation on the same rows. The calibration scale on validation then
multiplies ``v`` as well. See ``core.models.heads`` and ``core.models.net``.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn


class SurvivalHead(Protocol):
    """What these fits need of a ``core.models.heads.SurvivalHead`` (named here so this module does not import it)."""

    kind: str
    proportional: bool
    wide: nn.Linear | None

    def _eta(self, raw: torch.Tensor) -> torch.Tensor: ...

    def nll(self, raw: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor: ...


def solve_wide(head: SurvivalHead, raw: torch.Tensor, wide: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                penalty: float) -> dict:
    """``SurvivalHead.fit_wide``'s convex fit without touching the head: scale, shift, ``v`` (a tensor), NLLs, kept."""
    raw = raw.detach().float().cpu()
    x = wide.detach().float().cpu()
    time, event = time.detach().float().cpu(), event.detach().float().cpu()
    prop, cox = head.proportional, head.kind == "cox"
    with torch.no_grad():
        eta = head._eta(raw).detach() if prop else torch.zeros(raw.shape[0])
    mean, sd = float(eta.mean()), float(eta.std()) if raw.shape[0] > 1 else 0.0
    if not np.isfinite(sd) or sd < 1e-12:
        sd = 1.0
    z = (eta - mean) / sd
    # what stays fixed: b for proportional heads (0 for Cox), the whole raw output for full heads
    fixed = (raw - (eta[:, None] if raw.ndim == 2 else eta)) if prop else raw
    a = torch.tensor([sd], requires_grad=prop)
    c = torch.tensor([mean if prop else 0.0], requires_grad=not cox)
    v = torch.zeros(x.shape[1], requires_grad=True)

    def objective() -> torch.Tensor:
        lin = x @ v
        if prop:
            lin = lin + a * z
        if not cox:
            lin = lin + c
        new = fixed + (lin[:, None] if raw.ndim == 2 else lin)
        return head.nll(new, time, event) + 0.5 * penalty * (v * v).sum()

    with torch.no_grad():
        before = float(objective())
    params = [p for p in (a, c, v) if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        if prop and float(a.detach()) < 0:  # never reverse the network's ranking: a >= 0 (refit with a = 0)
            with torch.no_grad():
                a.zero_()
            a.requires_grad_(False)
            opt = torch.optim.LBFGS([p for p in (c, v) if p.requires_grad], lr=1.0, max_iter=200,
                                    tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")
            opt.step(closure)
    with torch.no_grad():
        after = float(objective())
    a_fit, c_fit = float(a.detach()), float(c.detach())
    if not (np.isfinite(after) and after < before):
        return {"nll_before": before, "nll_after": before, "scale": 1.0, "shift": 0.0, "kept": False,
                "v": torch.zeros(x.shape[1])}
    scale, shift = (a_fit / sd if prop else 1.0), c_fit - (a_fit / sd * mean if prop else 0.0)
    return {"nll_before": before, "nll_after": after, "scale": scale, "shift": 0.0 if cox else shift, "kept": True,
            "v": v.detach().clone()}


def with_wide(head: SurvivalHead, raw: torch.Tensor, wide: torch.Tensor, sol: dict) -> torch.Tensor:
    """The raw output after a ``solve_wide`` fit, without folding it into the head (held-out rows)."""
    raw = raw.detach().float().cpu()
    lin = wide.detach().float().cpu() @ sol["v"]
    if head.proportional:
        eta = head._eta(raw).detach()
        new_eta = sol["scale"] * eta + sol["shift"] + lin
        delta = new_eta - eta
    else:
        delta = sol["shift"] + lin
    return raw + (delta[:, None] if raw.ndim == 2 else delta)


def cv_penalty(head: SurvivalHead, raw: torch.Tensor, wide: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
               penalties: list[float], folds: int = 5, seed: int = 0) -> dict:
    """Choose ``SurvivalHead.fit_wide``'s ridge penalty by ``folds``-fold cross-validation on the rows given.

    Each penalty is fitted on all folds but one and scored by the head's NLL on the fold left out
    (summed over folds, each fold's mean NLL weighted by its size); the penalty with the lowest
    held-out NLL wins. Folds are drawn once, stratified by ``event``, so every penalty sees the
    same ones. Returns ``{"penalty": best, "cv_nll": {penalty: held-out NLL}, "folds": k}``; with
    fewer than two events per fold the largest penalty is returned unscored. The head is not changed.

    >>> from core.models.heads import DiscreteHazardHead
    >>> g = torch.Generator().manual_seed(0)
    >>> head = DiscreteHazardHead(2, np.array([0.0, 1.0, 2.0]), proportional=True, wide_dim=3)
    >>> x = torch.randn(200, 3, generator=g)
    >>> t = torch.exp(-x[:, 0] + 0.3 * torch.randn(200, generator=g)).clamp(0.05, 1.99)
    >>> cv = cv_penalty(head, head(torch.zeros(200, 2), x), x, t, torch.ones(200), [0.01, 100.0])
    >>> cv["penalty"]  # the features carry the risk: the small penalty predicts the held-out folds better
    0.01
    """
    if head.wide is None:
        raise ValueError("this head has no linear EHR term (wide_dim = 0)")
    grid = sorted(float(p) for p in penalties)
    if not grid or any(not np.isfinite(p) or p < 0 for p in grid):
        raise ValueError(f"penalties {penalties!r} must be a non-empty list of finite numbers >= 0")
    raw, x = raw.detach().float().cpu(), wide.detach().float().cpu()
    time, event = time.detach().float().cpu(), event.detach().float().cpu()
    ev = event.numpy() > 0
    k = int(min(folds, ev.sum() // 2, (~ev).sum() + ev.sum()))
    if len(grid) == 1 or k < 2:
        return {"penalty": grid[-1], "cv_nll": {}, "folds": 0}
    rng = np.random.default_rng(seed)
    fold = np.empty(len(ev), int)
    for group in (np.flatnonzero(ev), np.flatnonzero(~ev)):  # stratified: events spread over the folds
        fold[rng.permutation(group)] = np.arange(len(group)) % k
    scores = {p: 0.0 for p in grid}
    for f in range(k):
        tr, te = torch.as_tensor(fold != f), torch.as_tensor(fold == f)
        for p in grid:
            sol = solve_wide(head, raw[tr], x[tr], time[tr], event[tr], p)
            held = with_wide(head, raw[te], x[te], sol)
            scores[p] += float(head.nll(held, time[te], event[te])) * int(te.sum()) / len(ev)
    best = min(grid, key=lambda p: (scores[p], -p))  # ties: the larger penalty
    return {"penalty": best, "cv_nll": {str(p): round(s, 6) for p, s in scores.items()}, "folds": k}
