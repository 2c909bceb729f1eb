"""Train each named strategy briefly on CUDA (3 epochs, 2 ensemble members) and print its time and test C.

    python bench/gpu/train_cuda_smoke.py COHORT_DIR image_only ehr_only coattention_image contrastive
"""
import sys, os, traceback, time
sys.path.insert(0, os.getcwd())
from core.train import train_model
for fusion in sys.argv[2:]:
    t0 = time.time()
    try:
        m = train_model(sys.argv[1], fusion, f"/tmp/dbg_{fusion}", epochs=3, device="cuda", ensemble=2)
        print(fusion, "OK", round(time.time() - t0, 1), "s", m.get("test", {}).get("c_index"), flush=True)
    except Exception:  # noqa: BLE001 - report each strategy's failure with its traceback and go on
        print(fusion, "FAILED after", round(time.time() - t0, 1), "s", flush=True)
        traceback.print_exc()
