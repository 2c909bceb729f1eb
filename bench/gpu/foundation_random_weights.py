"""The frozen foundation backbone's cost on a CUDA GPU, without its weights (random init: the same FLOPs).

For a GPU machine the 225 MB weights package cannot reach: times ``embed_study`` (hash, resample, forward,
safetensors write), the bare forward in bf16 autocast and fp32, and forward + backward to the voxels, at three
working grids, then the one-time embedding of 400 synthetic 100 x 256 x 256 studies. Writes $OUT/fm_gpu.json.

    python bench/gpu/foundation_random_weights.py      (from the repository root, on a machine with CUDA)
"""
import sys, time, json, os
sys.path.insert(0, os.getcwd())
import numpy as np, torch
from core.models import foundation_cache as fc
from core.models.i3resnet import I3ResNet
dev = torch.device("cuda")
bb = I3ResNet().to(dev).eval()
for p in bb.parameters():
    p.requires_grad_(False)
fc.shared_backbone = lambda device="cpu", weights="astra": bb  # random init, identical architecture
out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
import tempfile, pathlib
def phantom(shape, seed):
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32); s, r, c = shape
    hu[:, r//8:7*r//8, c//10:9*c//10] = 40.0
    return hu + rng.normal(0, 15, shape).astype(np.float32)
for grid in [(80, 112, 112), (96, 160, 160), (160, 224, 224)]:
    hu = phantom((100, 256, 256), 0)
    times = []
    for i in range(6):
        d = pathlib.Path(tempfile.mkdtemp())
        torch.cuda.synchronize(); t0 = time.perf_counter()
        fc.embed_study(hu, (3.0, 1.4, 1.4), device=dev, resolution=grid, cache_dir=d)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    # pure forward, bf16 autocast vs fp32
    x = torch.randn(1, 1, grid[0], grid[2], grid[1], device=dev)
    res = {}
    for name, ac in [("bf16", True), ("fp32", False)]:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=ac):
            for _ in range(2): bb(x)
            torch.cuda.synchronize(); t0 = time.perf_counter()
            for _ in range(5): bb(x)
            torch.cuda.synchronize(); res[name] = (time.perf_counter() - t0) / 5
    # forward + backward to voxels (saliency through the backbone)
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for k in range(3):
            torch.cuda.synchronize(); t0 = time.perf_counter()
            y = bb(xg); yy = y[0] if isinstance(y, (tuple, list)) else y
            yy.float().mean().backward(); torch.cuda.synchronize(); tg = time.perf_counter() - t0
    out[f"{grid}"] = {"embed_study_first_s": times[0], "embed_study_median_s": float(np.median(times[1:])),
                      "forward_bf16_s": res["bf16"], "forward_fp32_s": res["fp32"], "fwd_bwd_bf16_s": tg,
                      "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9}
    print(grid, out[f"{grid}"], flush=True)
# one-time embedding of a 400-study cohort of 100 x 256 x 256 at the default grid
grid = tuple(fc.DEFAULT_GRID)
t0 = time.perf_counter(); d = pathlib.Path(tempfile.mkdtemp())
for i in range(400):
    hu = phantom((100, 256, 256), i)
    try:
        fc.embed_study(hu, (3.0, 1.4, 1.4), device=dev, resolution=grid, cache_dir=d)
    except TypeError:
        fc.embed_study(hu, (3.0, 1.4, 1.4), device=dev, resolution=grid)
out["cohort400_default_grid"] = {"grid": grid, "total_s": time.perf_counter() - t0}
print(out["cohort400_default_grid"], flush=True)
json.dump(out, open(os.environ.get("OUT", "/tmp") + "/fm_gpu.json", "w"), indent=1)
