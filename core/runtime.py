"""Where and how models run: device choice, seeding, the torchrun process group, device names for display.

Shared by training and inference; imports nothing else from the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError


def resolve_device(device: str) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise InputError("device", device, "unknown device", "use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device", device, "CUDA is not available on this machine", "use --device cpu or auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class DistInfo:
    world: int = 1
    rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_world_size(), dist.get_rank())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def fast_cpu_bf16() -> bool:
    """Whether this CPU has AMX or AVX-512 BF16 instructions, where bfloat16 convolutions run about twice as fast as
    float32 (elsewhere torch emulates bfloat16 on the CPU, slower than float32)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPU-feature probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@contextmanager
def one_thread_fewer(when: bool = True) -> Iterator[None]:
    """Run the block with one CPU thread fewer than torch's count (at least 1), then restore it: for a caller that owns
    the process's thread count and has a worker thread of its own to feed."""
    threads = torch.get_num_threads()
    if when and threads > 1:
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def device_label() -> str:
    """The device models run on, for display: the CUDA GPU's name, or ``CPU (N threads)``."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def device_name() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"`` (what ``--device auto`` picks)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
