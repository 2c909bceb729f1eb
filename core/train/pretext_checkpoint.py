"""The lesion pretext's progress kept on disk, so that a training stopped part-way starts again from its last kept
step, not from its first.

The pretext (``core.train.pretext_lesions.pretrain_detector``) is the longest part of training a whole-CT model on
the CPU: thousands of steps, 6-20 minutes on 2 cores. A server restart, a crash or a cancel during it used to lose
them all. Every ``BREAK_STEPS`` steps, and at its end, the run's whole state is written to one safetensors file (the
encoder's weights, the optimiser's moments; in its metadata, as JSON: the step, the losses so far, the learning-rate
schedule, the optimiser's settings, and the random generators' states before the next batch), through a partial
file and a rename. Training the same encoder again on the same cohort (the same file name: the encoder cache's key,
``core.train.image_stage``) resumes from it, and on the same CPU threads the weights it ends with are the same as an
uninterrupted run's (the next batches are drawn from the same generator state; tests/test_pretext_checkpoint.py
checks it bit for bit; on a GPU, whose random state is not kept, they may differ as two runs there do). Nothing is unpickled; a file that does not fit the run (another encoder, another number of steps, a broken
file) is set aside with a warning and the pretext starts from its first step.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.disk_cache import save_tensors

FORMAT = "pretext-checkpoint/1"
_UNWRITABLE: set[Path] = set()  # where a write failed: not tried again by this process


@dataclass
class Resumed:
    """Where a resumed pretext stands: the next step, the losses so far, the seconds already spent."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _flat_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, state in sd["state"].items() for k, v in state.items()}
    return tensors, sd["param_groups"]


def save(path: Path, enc: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, *, step: int, steps: int,
         losses: list[float], rng_state: dict[str, Any], seconds: float) -> None:
    """Write the pretext's state after ``step`` of ``steps`` steps (``rng_state``: the batch generator's state before
    the batch of ``step``). A folder that cannot be written to is said once on stderr; the training goes on."""
    if path in _UNWRITABLE:
        return
    tensors = {f"enc.{k}": v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
    opt_tensors, groups = _flat_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {"format": FORMAT, "step": step, "steps": steps, "losses": losses, "rng": rng_state, "seconds": seconds,
            "param_groups": groups, "sched": sched.state_dict()}
    if not save_tensors(
            path, tensors, {"state": json.dumps(meta)},
            what="the lesion pretext's progress (a training stopped part-way starts it again from its first step)"):
        _UNWRITABLE.add(path)  # said once


def resume(path: Path, enc: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, rng: np.random.Generator, *,
           steps: int) -> Resumed:
    """Load the state kept at ``path`` into the run (``enc``, ``opt``, ``sched``, the batch generator ``rng`` and
    torch's own generator) and say where it stands; a fresh :class:`Resumed` (step 0) when there is none or it does
    not fit this run (then it is renamed ``*.unfit`` and said on stderr)."""
    if not path.is_file():
        return Resumed()
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["state"])
        if meta.get("format") != FORMAT or int(meta["steps"]) != steps or not 0 < int(meta["step"]) <= steps:
            raise ValueError(f"kept for {meta.get('steps')} steps in {meta.get('format')}, this run has {steps}")
        tensors = load_file(str(path))
        enc_state = {k[4:]: v for k, v in tensors.items() if k.startswith("enc.")}
        own = enc.state_dict()
        if {k: tuple(v.shape) for k, v in enc_state.items()} != {k: tuple(v.shape) for k, v in own.items()}:
            raise ValueError("its encoder's weights are not this encoder's")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        params = [q for g in opt.param_groups for q in g["params"]]
        if ([g["params"] for g in meta["param_groups"]] != [g["params"] for g in opt.state_dict()["param_groups"]]
                or any(i >= len(params) or v["exp_avg"].shape != params[i].shape for i, v in state.items())):
            raise ValueError("its optimiser's state is not this optimiser's")
        enc.load_state_dict(enc_state, strict=True)  # checked above: nothing below fails half-way
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        sched.load_state_dict(meta["sched"])
        rng.bit_generator.state = meta["rng"]
        torch.set_rng_state(tensors["torch_rng"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError, SafetensorError) as err:
        path.replace(path.with_name(path.name + ".unfit"))
        print(f"warning: the lesion pretext's kept progress does not fit this run ({err}): it starts from its first "
              "step", file=sys.stderr)
        return Resumed()
    return Resumed(step=int(meta["step"]), losses=[float(v) for v in meta["losses"]], seconds=float(meta["seconds"]))


def discard(path: Path) -> None:
    """Remove the kept state (the pretext's result is in the encoder cache now), and an unfit one beside it."""
    for p in (path, path.with_name(path.name + ".unfit")):
        p.unlink(missing_ok=True)
