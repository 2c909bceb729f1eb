"""Survival heads: each maps the fused vector to S(t) on a fixed grid and has its own likelihood.

The grid ``edges`` (days, ``edges[0] = 0``) is built once from the training
split by ``make_edges``: quantiles of the event times, the last edge at the
largest training time. ``S`` is reported at every edge, so ``S(edges[0]) = 1``.

* ``DiscreteHazardHead`` -- discrete-time logistic hazard (Gensheimer & Narasimhan
  2019; pycox ``LogisticHazard``): ``h_j = sigmoid(logit_j)`` for interval
  ``(edges[j], edges[j+1]]``; an event in interval j contributes
  ``log h_j + sum_{k<j} log(1 - h_k)``, a censoring in interval j contributes
  ``sum_{k<j} log(1 - h_k)`` (a censored subject is credited with surviving the
  intervals it fully passed).
* ``PiecewiseExponentialHead`` -- constant hazard ``lambda_j = exp(eta_j)`` per day
  within each interval; exact log-likelihood ``event * log lambda_{j(t)} - Lambda(t)``
  with the exposure of every interval.
* ``CoxHead`` -- log-risk ``eta``; Breslow partial likelihood (ties by Breslow)
  within each batch; after training ``fit_baseline`` stores the Breslow
  cumulative baseline hazard on the grid, ``S(t) = exp(-H0(t) exp(eta))``.

``risk`` is ``eta`` for Cox and ``1 - RMST(edges[-1]) / edges[-1]`` for the
others (a restricted-mean summary of the whole curve, in [0, 1]).

Proportional form (``proportional=True``, what ``train`` builds): the discrete
and piecewise-exponential heads share one linear predictor across intervals,
``raw_j = b_j + w . h`` (proportional odds / proportional hazards, the Cox
assumption on a grid); ``b`` starts at the life-table baseline. The full form
(one weight vector per interval) is kept for the multi-task pretraining head
and for models saved before the proportional form existed.

Scale calibration (``calibrate``): early stopping on the validation C-index
picks an early epoch, whose ranking is good but whose linear predictor has
hardly left zero, so every patient's curve is the population's. After early
stopping, ``calibrate`` fits one scale ``a >= 0`` and one shift ``c`` of the
linear predictor on the validation split by maximum likelihood (the head's own
NLL; Cox: partial likelihood, scale only) and folds them into the weights
(``w <- a w``, ``b <- b + c``). The ranking, hence every C-index and the
direction of every attribution, is unchanged; the spread of the curves and
the Brier score follow the model's real discrimination. Only proportional
heads can be calibrated this way.

Linear EHR term (``wide_dim > 0``, "wide and deep"): the head also adds ``v . x`` of scaled tabular
features ``x`` to its linear predictor; ``v`` is fitted after the network by ``fit_wide``, a penalised
convex fit on the training split whose penalty ``cv_wide_penalty`` picks by cross-validation (both in
``core.models.wide_fit``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.models.wide_fit import cv_penalty, solve_wide


def make_edges(time: np.ndarray, event: np.ndarray, n_intervals: int = 20,
               extra: tuple[float, ...] = (30.0, 365.0, 1825.0)) -> np.ndarray:
    """Grid ``[0, q_1, ..., max time]`` from event-time quantiles of the training split, plus the
    clinical horizons ``extra`` that fall inside the follow-up (so S is exact there).

    >>> make_edges(np.array([1.0, 2, 3, 4, 10]), np.array([1, 1, 1, 1, 0]), 2, extra=(5.0, 99.0)).tolist()
    [0.0, 2.5, 5.0, 10.0]
    """
    ev_times = np.asarray(time, float)[np.asarray(event) == 1]
    qs = np.quantile(ev_times, np.linspace(0, 1, n_intervals + 1)[1:-1]) if len(ev_times) else np.array([])
    last = float(np.max(time))
    inside = [float(e) for e in extra if 0 < e < last]
    edges = np.unique(np.concatenate([[0.0], qs[qs > 0], inside, [last]]))
    if len(edges) < 2:
        edges = np.array([0.0, max(last, 1.0)])
    return edges.astype(np.float64)


def interval_index(time: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Index j of the interval ``(edges[j], edges[j+1]]`` holding each time (clipped to the grid)."""
    idx = torch.searchsorted(edges.contiguous(), time.contiguous(), right=False) - 1
    return idx.clamp(0, len(edges) - 2)


class SurvivalHead(nn.Module, ABC):
    kind: str = ""
    proportional: bool = False

    def __init__(self, in_dim: int, edges: np.ndarray, wide_dim: int = 0) -> None:
        super().__init__()
        self.register_buffer("edges", torch.as_tensor(np.asarray(edges), dtype=torch.float32))
        self.n = len(edges) - 1
        self.wide: nn.Linear | None = None
        if wide_dim:
            self.wide = nn.Linear(int(wide_dim), 1, bias=False)
            nn.init.zeros_(self.wide.weight)

    def wide_term(self, wide: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, 1]`` linear EHR term ``v . x`` (None without a wide part or without its input)."""
        if self.wide is None or wide is None:
            return None
        return self.wide(wide.to(self.wide.weight.dtype))

    @abstractmethod
    def survival(self, raw: torch.Tensor) -> torch.Tensor:
        """S(t) on the grid ``edges`` from the head's raw output (each head defines this)."""

    def interval_rates(self, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Life-table events ``d_j``, at-risk ``n_j`` and exposure (days) per interval on training data."""
        e = self.edges.cpu().numpy().astype(float)
        time, event = np.asarray(time, float), np.asarray(event, float)
        j = np.clip(np.searchsorted(e, time, side="left") - 1, 0, len(e) - 2)
        d = np.bincount(j, weights=event, minlength=len(e) - 1)
        at_risk = np.array([(j >= k).sum() for k in range(len(e) - 1)], float)
        exposure = np.clip(np.minimum(time[:, None], e[None, 1:]) - e[None, :-1], 0, None).sum(0)
        return d, np.maximum(at_risk, 1.0), np.maximum(exposure, 1e-6)

    def init_baseline(self, time: np.ndarray, event: np.ndarray) -> None:
        """Start from the population's life-table hazard (calibrated curves from the first epoch)."""

    @abstractmethod
    def nll(self, raw: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of right-censored times (each head defines this)."""

    def risk(self, raw: torch.Tensor, surv: torch.Tensor) -> torch.Tensor:
        widths = self.edges[1:] - self.edges[:-1]
        rmst = (0.5 * (surv[:, 1:] + surv[:, :-1]) * widths).sum(-1)
        return 1 - rmst / self.edges[-1]

    @torch.no_grad()
    def _apply_calibration(self, scale: float, shift: float) -> None:
        """Fold ``raw <- b + shift + scale * eta`` into the parameters (proportional heads: ``linear`` + ``baseline``)."""
        if not self.proportional:
            raise ValueError(f"head {self.kind!r} in its full (per-interval) form has no single linear predictor to calibrate")
        self.linear.weight.mul_(scale)  # type: ignore[operator]
        if self.wide is not None:
            self.wide.weight.mul_(scale)
        self.baseline.add_(shift)  # type: ignore[operator]

    def _eta(self, raw: torch.Tensor) -> torch.Tensor:
        """The linear predictor of a proportional head's raw output (``raw - b``)."""
        return raw[:, 0] - self.baseline[0]  # type: ignore[index]

    def fit_wide(self, raw: torch.Tensor, wide: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                 penalty: float = 0.01) -> dict[str, float]:
        """Fit the linear EHR term ``v`` (and a scale and shift of the network's linear predictor) on training data.

        Minimises ``nll(raw') + penalty / 2 * |v|^2`` over ``raw' = b + c + a * eta + v . x``
        (proportional heads), ``raw' = raw + c + v . x`` (full per-interval heads) or
        ``eta' = a * eta + v . x`` (Cox, where a shift cancels), with ``a >= 0``. Convex in
        ``(a, c, v)``; L-BFGS (with ``eta`` standardised) from the network as it is (``a = 1, c = 0,
        v = 0``), and the fit is kept only if the penalised NLL went down. Folds the result into
        the head; a linear term the head already had is part of ``eta`` (and of ``raw``), so it is
        scaled with it and ``v`` is added to it.

        >>> head = DiscreteHazardHead(2, np.array([0.0, 1.0, 2.0]), proportional=True, wide_dim=1)
        >>> x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
        >>> out = head.fit_wide(head(torch.zeros(4, 2), x), x, torch.tensor([0.5, 2.0, 0.7, 1.8]), torch.tensor([1.0, 0.0, 1.0, 1.0]))
        >>> out["nll_after"] < out["nll_before"], float(head.wide.weight.detach()[0, 0]) > 0
        (True, True)
        """
        if self.wide is None:
            raise ValueError("this head has no linear EHR term (wide_dim = 0)")
        sol = solve_wide(self, raw, wide, time, event, penalty)
        info = {k: sol[k] for k in ("nll_before", "nll_after", "scale", "shift", "kept")}
        if not sol["kept"]:
            return info
        with torch.no_grad():
            # eta' = scale * eta + shift + v . x: eta holds any linear term the head had already, so the scale
            # applies to it (``_apply_calibration`` scales ``wide`` too) and v adds to it
            if self.proportional:
                self._apply_calibration(sol["scale"], sol["shift"])
            else:
                self.linear.bias.add_(sol["shift"])  # type: ignore[operator]
            self.wide.weight.add_(sol["v"][None, :])
        return info

    def cv_wide_penalty(self, raw: torch.Tensor, wide: torch.Tensor, time: torch.Tensor, event: torch.Tensor,
                        penalties: list[float], folds: int = 5, seed: int = 0) -> dict:
        """Choose ``fit_wide``'s ridge penalty by ``folds``-fold cross-validation on these rows (``core.models.wide_fit.cv_penalty``).

        Returns ``{"penalty": best, "cv_nll": {penalty: held-out NLL}, "folds": k}``; the head is not changed.
        """
        return cv_penalty(self, raw, wide, time, event, penalties, folds=folds, seed=seed)

    @torch.no_grad()
    def calibrate(self, raw: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> dict[str, float]:
        """Fit ``a >= 0`` and ``c`` of ``raw' = b + c + a * eta`` on held-out data by maximum likelihood; fold them in.

        Returns the fitted ``scale``, ``shift`` and the NLL before and after. The
        scale is searched on a log grid (1e-2 .. 1e6) and refined by golden section
        on log scale, the shift by Newton steps; the NLL never increases (the grid
        contains ``a = 1, c = 0``).
        """
        if not self.proportional:
            self._apply_calibration(1.0, 0.0)  # raises: nothing to calibrate
        raw = raw.detach().float().cpu()
        time, event = time.detach().float().cpu(), event.detach().float().cpu()
        eta = self._eta(raw)

        def nll_at(log_a: float) -> tuple[float, float]:
            a = float(np.exp(log_a))
            if self.kind == "cox":  # a shift cancels in the partial likelihood
                return float(self.nll(a * eta, time, event)), 0.0
            base = raw - eta[:, None] + a * eta[:, None]  # b + a * eta, [B, n]
            c = torch.zeros(1, requires_grad=True)
            for _ in range(25):  # Newton on the shift (convex in c for both heads)
                with torch.enable_grad():
                    loss = self.nll(base + c, time, event)
                    (g,) = torch.autograd.grad(loss, c, create_graph=True)
                    (hess,) = torch.autograd.grad(g, c)
                step = (g / hess.clamp_min(1e-8)).detach().clamp(-5, 5)
                c = (c - step).detach().requires_grad_(True)
                if float(step.abs()) < 1e-6:
                    break
            return float(self.nll(base + c, time, event)), float(c)

        before = float(self.nll(raw, time, event))
        grid = np.unique(np.concatenate([[0.0], np.arange(np.log(1e-2), np.log(1e6), 0.5)]))
        vals = [nll_at(g)[0] for g in grid]
        k = int(np.nanargmin(vals))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        gr = (np.sqrt(5) - 1) / 2
        x1, x2 = hi - gr * (hi - lo), lo + gr * (hi - lo)
        f1, f2 = nll_at(x1)[0], nll_at(x2)[0]
        for _ in range(25):
            if f1 < f2:
                hi, x2, f2 = x2, x1, f1
                x1 = hi - gr * (hi - lo)
                f1 = nll_at(x1)[0]
            else:
                lo, x1, f1 = x1, x2, f2
                x2 = lo + gr * (hi - lo)
                f2 = nll_at(x2)[0]
        cands = [(vals[k], grid[k]), (f1, x1), (f2, x2)]
        best_log_a = min(cands)[1]
        after, shift = nll_at(best_log_a)
        if not after <= before:
            best_log_a, after, shift = 0.0, before, 0.0
        scale = float(np.exp(best_log_a))
        self._apply_calibration(scale, shift)
        return {"scale": scale, "shift": shift, "nll_before": before, "nll_after": after}


class DiscreteHazardHead(SurvivalHead):
    kind = "discrete"

    def __init__(self, in_dim: int, edges: np.ndarray, proportional: bool = False, wide_dim: int = 0) -> None:
        super().__init__(in_dim, edges, wide_dim)
        self.proportional = bool(proportional)
        if self.proportional:
            self.linear = nn.Linear(in_dim, 1, bias=False)
            self.baseline = nn.Parameter(torch.zeros(self.n))
        else:
            self.linear = nn.Linear(in_dim, self.n)

    def forward(self, h: torch.Tensor, wide: torch.Tensor | None = None) -> torch.Tensor:
        raw = self.baseline + self.linear(h) if self.proportional else self.linear(h)
        extra = self.wide_term(wide)
        return raw if extra is None else raw + extra

    @torch.no_grad()
    def init_baseline(self, time: np.ndarray, event: np.ndarray) -> None:
        d, n, _ = self.interval_rates(time, event)
        p = np.clip(d / n, 1e-4, 1 - 1e-4)
        target = self.baseline if self.proportional else self.linear.bias
        target.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=torch.float32))

    def survival(self, raw: torch.Tensor) -> torch.Tensor:
        log_s = torch.cumsum(F.logsigmoid(-raw.float()), dim=-1)
        return torch.cat([torch.ones_like(log_s[:, :1]), torch.exp(log_s)], dim=-1)

    def nll(self, raw: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        raw = raw.float()
        j = interval_index(time, self.edges)
        before = (torch.arange(self.n, device=raw.device)[None, :] < j[:, None]).float()
        surv_part = (F.logsigmoid(-raw) * before).sum(-1)
        ev_part = F.logsigmoid(raw.gather(1, j[:, None]).squeeze(1))
        return -(surv_part + event * ev_part).mean()


class PiecewiseExponentialHead(SurvivalHead):
    kind = "pwe"

    def __init__(self, in_dim: int, edges: np.ndarray, n_outputs: int = 1, proportional: bool = False, wide_dim: int = 0) -> None:
        super().__init__(in_dim, edges, wide_dim)
        if (proportional or wide_dim) and n_outputs != 1:
            raise ValueError("the proportional piecewise-exponential head, and one with a linear EHR term, have one output")
        self.n_outputs = n_outputs
        self.proportional = bool(proportional)
        widths = np.diff(np.asarray(edges, float))
        start = float(-np.log(max(float(np.sum(widths)), 1.0)))  # about one event per follow-up span
        if self.proportional:
            self.linear = nn.Linear(in_dim, 1, bias=False)
            self.baseline = nn.Parameter(torch.full((self.n,), start))
        else:
            self.linear = nn.Linear(in_dim, self.n * n_outputs)
            with torch.no_grad():
                self.linear.bias.fill_(start)

    def forward(self, h: torch.Tensor, wide: torch.Tensor | None = None) -> torch.Tensor:
        raw = self.baseline + self.linear(h) if self.proportional else self.linear(h)
        if self.n_outputs != 1:
            return raw.reshape(h.shape[0], self.n_outputs, self.n)
        extra = self.wide_term(wide)
        return raw if extra is None else raw + extra

    @torch.no_grad()
    def init_baseline(self, time: np.ndarray, event: np.ndarray) -> None:
        d, _, exposure = self.interval_rates(time, event)
        rate = np.log(np.clip(d, 0.5, None) / exposure)
        if self.proportional:
            self.baseline.copy_(torch.as_tensor(rate, dtype=torch.float32))
        else:
            self.linear.bias.copy_(torch.as_tensor(np.tile(rate, self.n_outputs), dtype=torch.float32))

    def cumulative_hazard(self, raw: torch.Tensor) -> torch.Tensor:
        widths = self.edges[1:] - self.edges[:-1]
        cum = torch.cumsum(torch.exp(raw.float().clamp(max=20)) * widths, dim=-1)
        return torch.cat([torch.zeros_like(cum[..., :1]), cum], dim=-1)

    def survival(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.cumulative_hazard(raw))

    def nll(self, raw: torch.Tensor, time: torch.Tensor, event: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Works for ``[B, n]`` or multi-task ``[B, K, n]`` raw outputs (time/event ``[B]`` or ``[B, K]``)."""
        raw = raw.float()
        lo, hi = self.edges[:-1], self.edges[1:]
        t = time.unsqueeze(-1)
        exposure = (torch.minimum(t, hi) - lo).clamp_min(0)
        j = interval_index(time.reshape(-1), self.edges).reshape(time.shape)
        log_rate = raw.gather(-1, j.unsqueeze(-1)).squeeze(-1)
        ll = event * log_rate - (torch.exp(raw.clamp(max=20)) * exposure).sum(-1)
        if weight is not None:
            return -(ll * weight).sum() / weight.sum().clamp_min(1.0)
        return -ll.mean()


class CoxHead(SurvivalHead):
    kind = "cox"
    proportional = True

    def __init__(self, in_dim: int, edges: np.ndarray, proportional: bool = True, wide_dim: int = 0) -> None:
        super().__init__(in_dim, edges, wide_dim)
        self.linear = nn.Linear(in_dim, 1)
        self.register_buffer("baseline_cumhaz", torch.zeros(len(edges)))

    def forward(self, h: torch.Tensor, wide: torch.Tensor | None = None) -> torch.Tensor:
        eta = self.linear(h)
        extra = self.wide_term(wide)
        return (eta if extra is None else eta + extra).squeeze(-1)

    def survival(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.baseline_cumhaz[None, :] * torch.exp(raw.float().clamp(-20, 20))[:, None])

    def risk(self, raw: torch.Tensor, surv: torch.Tensor) -> torch.Tensor:
        return raw.float()

    def _eta(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float()

    @torch.no_grad()
    def _apply_calibration(self, scale: float, shift: float) -> None:
        """Scale only (a shift cancels in the partial likelihood; ``fit_baseline`` comes after)."""
        self.linear.weight.mul_(scale)
        self.linear.bias.mul_(scale)
        if self.wide is not None:
            self.wide.weight.mul_(scale)

    def nll(self, raw: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Negative Breslow partial log-likelihood, averaged over events."""
        order = torch.argsort(time, descending=True)
        eta, ev = raw.float()[order], event[order]
        log_risk_set = torch.logcumsumexp(eta, dim=0)
        # ties: every tied subject's risk set includes all subjects with the same time (Breslow)
        t_sorted = time[order]
        last_of_tie = torch.searchsorted(-t_sorted.contiguous(), -t_sorted.contiguous(), right=True) - 1
        log_risk_set = log_risk_set[last_of_tie]
        return -((eta - log_risk_set) * ev).sum() / ev.sum().clamp_min(1.0)

    @torch.no_grad()
    def fit_baseline(self, eta: np.ndarray, time: np.ndarray, event: np.ndarray) -> None:
        """Breslow estimator ``H0(t) = sum_{t_i <= t, event} 1 / sum_{t_j >= t_i} exp(eta_j)`` on the grid."""
        eta = np.asarray(eta, float)
        time = np.asarray(time, float)
        event = np.asarray(event, float)
        risk = np.exp(np.clip(eta, -20, 20))
        ev_times = np.unique(time[event == 1])
        increments = np.array([event[time == t].sum() / risk[time >= t].sum() for t in ev_times])
        cum = np.cumsum(increments)
        edges = self.edges.cpu().numpy()
        pos = np.searchsorted(ev_times, edges, side="right") - 1
        h0 = np.where(pos >= 0, cum[np.clip(pos, 0, None)] if len(cum) else 0.0, 0.0)
        self.baseline_cumhaz.copy_(torch.as_tensor(h0, dtype=torch.float32))


def make_head(kind: str, in_dim: int, edges: np.ndarray, proportional: bool = False, wide_dim: int = 0) -> SurvivalHead:
    from core.errors import InputError

    if kind == "discrete":
        return DiscreteHazardHead(in_dim, edges, proportional=proportional, wide_dim=wide_dim)
    if kind == "pwe":
        return PiecewiseExponentialHead(in_dim, edges, proportional=proportional, wide_dim=wide_dim)
    if kind == "cox":
        return CoxHead(in_dim, edges, wide_dim=wide_dim)
    raise InputError("head", kind, "unknown survival head", "use discrete, pwe or cox")
