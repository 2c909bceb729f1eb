"""The frozen foundation backbone with its real astra weights on a CUDA GPU: numbers and cost.

1. The pooled 2048-d vector of the fixed phantom of ``tests/test_foundation.py`` on the GPU (fp32, and bf16
   autocast as ``embed_study`` runs it) against the reference numbers recorded from the joined weight file on
   the CPU: the largest difference of the first eight values, the mean, the std and the norm.
2. ``embed_study`` (hash, resample, forward, safetensors write) of a real CT at three working grids:
   the first call (weights read, kernels chosen) and the median of five more, each into an empty cache.

The weights must already be in ``$CTEHR_CACHE_DIR/foundation`` (the safetensors copy and its sidecar that
``core.models.foundation_weights.ensure_weights`` writes) or installed as the shard packages.

    python bench/gpu/foundation_real_weights.py [CT.nii.gz]     (repository root, a machine with CUDA)

Writes fm_real_gpu.json to $OUT when set, else to the working folder, and prints every number.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

import numpy as np
import torch

from core.io.nifti import load_nifti
from core.models import foundation_cache as fc
from core.models import foundation_weights as fw
from core.models.i3resnet import FoundationEncoder3D
from tests.test_foundation import GRID, REF_FIRST8, REF_MEAN, REF_NORM, REF_STD, _phantom

GRIDS = ((80, 112, 112), (96, 160, 160), (160, 224, 224))


def pooled_check(device: torch.device, bf16: bool) -> dict[str, float]:
    """Differences of the phantom's pooled vector from the CPU reference numbers."""
    enc = FoundationEncoder3D(grid=GRID).to(device).eval()
    x = torch.from_numpy(_phantom())[None].to(device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = enc.encode(x)
    p = out.pooled[0].double().cpu()
    return {"first8_max_abs_diff": float(np.abs(p[:8].numpy() - np.asarray(REF_FIRST8)).max()),
            "mean_diff": abs(p.mean().item() - REF_MEAN), "std_diff": abs(p.std().item() - REF_STD),
            "norm_diff": abs(p.norm().item() - REF_NORM)}


def main() -> int:
    dev = torch.device("cuda")
    ct = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/ct/example_ct_sm.nii.gz")
    out: dict[str, object] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "weights": str(fw.ensure_weights())}
    t0 = time.perf_counter()
    fc.shared_backbone(dev)
    torch.cuda.synchronize()
    out["backbone_load_s"] = time.perf_counter() - t0
    out["pooled_vs_reference_fp32"] = pooled_check(dev, bf16=False)
    out["pooled_vs_reference_bf16"] = pooled_check(dev, bf16=True)
    print(json.dumps(out, indent=1), flush=True)
    vol = load_nifti(ct)
    out["study"] = {"path": ct.name, "shape": list(vol.hu.shape), "spacing_mm": list(vol.spacing_mm)}
    for grid in GRIDS:
        times = []
        for _ in range(6):
            with tempfile.TemporaryDirectory() as d:
                torch.cuda.synchronize()
                started = time.perf_counter()
                tokens = fc.embed_study(vol.hu, vol.spacing_mm, device=dev, resolution=grid, cache_dir=Path(d))
                torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        out[f"embed_study_{grid[0]}x{grid[1]}x{grid[2]}"] = {
            "first_s": times[0], "median_s": float(np.median(times[1:])), "tokens": list(tokens.shape),
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9}
        print(grid, out[f"embed_study_{grid[0]}x{grid[1]}x{grid[2]}"], flush=True)
    target = Path(os.environ.get("OUT", ".")) / "fm_real_gpu.json"
    target.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
