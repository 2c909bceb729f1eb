"""One network shared by every session, read-only; per-call replicas for everything that would change it.

A loaded network is cached once per model folder and used by every session
at the same time (Streamlit threads). So it is :func:`freeze`-d once at load
(eval mode, ``requires_grad`` off on every parameter: no ``.grad`` can
accumulate, gradients still reach an input that asks for them) and never
changed again. Work that has to change modules (forward hooks of Captum's
layer methods, dropout switched on for MC dropout) runs on a :func:`net_replica`:
a copy of the module *tree* only. Every parameter and buffer tensor is the
shared one (nothing is copied, so a replica costs microseconds per module, not
memory); each module of the replica has its own ``training`` flag and its own,
empty hook dictionaries. Hooks registered on a replica fire only for forward
passes through that replica, and the replica is dropped with the call.

Objects a module holds outside its registered children (the frozen foundation
backbone of ``FoundationTokens``) stay shared; nothing registers hooks on them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)
#: every hook dictionary of a module (_forward_hooks, _forward_pre_hooks, _backward_hooks, state-dict hooks, ...)
_HOOK_DICTS: tuple[str, ...] = tuple(k for k, v in nn.Module().__dict__.items() if "hooks" in k and isinstance(v, dict))


def freeze(net: M) -> M:
    """``net`` in eval mode with ``requires_grad`` off on every parameter (in place); returns ``net``."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def net_replica(net: M) -> M:
    """A copy of ``net``'s module tree sharing every parameter and buffer tensor, with fresh hook dictionaries.

    Submodules reachable twice stay one module in the replica (the sharing inside
    the tree is kept). ``training`` flags start as the original's.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).eval()
    >>> rep = net_replica(net).train()
    >>> rep[0].weight is net[0].weight, net.training, rep.training
    (True, False, True)
    """
    memo: dict[int, nn.Module] = {}

    def copy(m: nn.Module) -> nn.Module:
        done = memo.get(id(m))
        if done is not None:
            return done
        r = object.__new__(type(m))
        state = m.__dict__.copy()
        for key in _HOOK_DICTS:
            state[key] = OrderedDict()
        state["_parameters"] = dict(m._parameters)
        state["_buffers"] = dict(m._buffers)
        state["_non_persistent_buffers_set"] = set(m._non_persistent_buffers_set)
        memo[id(m)] = r
        state["_modules"] = {k: (None if v is None else copy(v)) for k, v in m._modules.items()}
        r.__dict__.update(state)
        return r

    return copy(net)  # type: ignore[return-value]


def drop_hooks(net: nn.Module) -> None:
    """Remove every hook registered on ``net``'s modules (a replica's, in the ``finally`` of the call that made it)."""
    for m in net.modules():
        for key in _HOOK_DICTS:
            getattr(m, key).clear()


class SeededDropout(nn.Module):
    """Dropout (always on) drawing its masks from ``generator``: the same masks as ``nn.Dropout`` under
    ``torch.manual_seed`` of that seed, without touching the process-wide random state."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p = float(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0.0:
            return x
        if self.p >= 1.0:
            return torch.zeros_like(x)
        keep = 1.0 - self.p
        return x * torch.empty_like(x).bernoulli_(keep, generator=self.generator).div_(keep)


def mc_dropout_replica(net: M, seed: int = 0) -> M:
    """A replica of ``net`` (eval mode) whose ``nn.Dropout`` layers are on, seeded with ``seed`` by their own
    generator: repeatable MC dropout that leaves ``net`` and the global random state alone."""
    rep = net_replica(net)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    for parent in list(rep.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, nn.Dropout):
                parent._modules[name] = SeededDropout(child.p, generator)
    return rep
