"""Where a lesion-pretext step of the default (detector) encoder spends its time on this machine.

The default encoder's stage A trains its trunk for 3000 steps to find synthetic lesions inserted into the
cohort's own slices. Each step makes a batch on the CPU (:func:`core.train.pretext_lesions._sample_slices` and
:func:`~core.train.pretext_lesions.insert_synthetic_lesions`, numpy) and then runs the network's forward,
backward and optimizer step on the training device. This script times the two parts apart and together on one
real cohort, so that the device's gain on the network step can be read against the CPU work it leaves::

    python bench/gpu/pretext_step_split.py --cohort COHORT [--device cuda] [--steps 60]

It prints a Markdown table (ms per step, medians over the timed steps after 5 warm-up steps): the two parts alone,
a step with the batch made in the loop, and a step as training runs it (the next batch made in a worker thread,
``core.train.prefetch``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.cohort import load_cohort  # noqa: E402
from core.models.config import ImageConfig  # noqa: E402
from core.models.net import build_image_encoder  # noqa: E402
from core.train.detection_loss import POS_WEIGHT, detection_loss  # noqa: E402
from core.train.image_stage import image_config, preprocessed_images  # noqa: E402
from core.train.prefetch import prefetched  # noqa: E402
from core.train.pretext_lesions import LesionPrior, _sample_slices, insert_synthetic_lesions  # noqa: E402
from core.train.settings import IMAGE_PRESETS, merge_settings, pretext_settings  # noqa: E402
from core.models import default_image_kind  # noqa: E402
from core.train.slice_spacing import working_slices  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", required=True, type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=60, help="timed steps of each kind (default 60)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cohort = load_cohort(args.cohort)
    kind = default_image_kind()  # as train_model resolves "auto" for a new model on CT studies
    preset = kind if kind in IMAGE_PRESETS else None
    settings = merge_settings(None, None, None, preset)
    icfg = image_config(cohort, "2d" if preset else kind, "image_only", settings)
    pretext = pretext_settings(settings["image"], icfg)
    if pretext is None:
        print(f"error: the default image encoder of this cohort ({icfg.get('kind')}) has no lesion pretext", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    pre = working_slices(preprocessed_images(cohort, icfg), icfg, cohort)
    prep_s = time.perf_counter() - t0
    x, mask = pre["image_preprocessed"], pre["image_token_mask"]
    train_idx = np.flatnonzero((cohort.table["split"] == "train").to_numpy() & (pre["image_present"].numpy() > 0))
    enc = build_image_encoder(ImageConfig.from_dict(icfg))
    assert enc is not None
    enc.to(device).train()
    opt = torch.optim.AdamW([p for n, p in enc.named_parameters() if not n.startswith("proj.")], lr=pretext["lr"])
    lo, hi = (float(v) for v in icfg["hu_window"])
    half, centre = (hi - lo) / 2, (hi + lo) / 2
    prior = LesionPrior.from_dict(pretext["prior"])
    rng = np.random.default_rng(0)
    batch = int(pretext["batch"])

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        return insert_synthetic_lesions(_sample_slices(x, mask, train_idx, batch, rng), rng, prior, half, centre)

    def net_step(xs: torch.Tensor, tgt: torch.Tensor) -> float:
        logits = enc.detect_logits(xs[:, None].to(device))  # type: ignore[operator]
        loss = detection_loss(logits, tgt.to(device), pos_weight=POS_WEIGHT)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
        out = []
        for i in range(n + 5):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if i >= 5:
                out.append((time.perf_counter() - t) * 1000)
        return out

    def ahead(n: int) -> list[float]:  # as pretrain_detector runs: the next batch made in a worker thread
        out, it = [], prefetched(make, n + 5)
        for i in range(n + 5):
            _sync(device)
            t = time.perf_counter()
            net_step(*next(it))
            _sync(device)
            if i >= 5:
                out.append((time.perf_counter() - t) * 1000)
        return out

    fixed = make()
    rows = [("batch making (CPU: sample + insert)", timed(make, args.steps)),
            (f"network step on {device} (fixed batch)", timed(lambda: net_step(*fixed), args.steps)),
            ("one whole step, the batch made in the loop (before session 53)", timed(lambda: net_step(*make()), args.steps)),
            ("one whole step, the next batch made ahead in a thread (training now)", ahead(args.steps))]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"cohort {args.cohort.name}: {len(train_idx)} train studies, slices {tuple(x.shape[1:])}, batch {batch}; "
          f"device {name}; torch {torch.__version__}, {torch.get_num_threads()} threads; prepared in {prep_s:.1f} s")
    print("| part | ms per step (median) | p90 | x 3000 steps, s |")
    print("| --- | --- | --- | --- |")
    for label, ms in rows:
        med = statistics.median(ms)
        print(f"| {label} | {med:.1f} | {float(np.percentile(ms, 90)):.1f} | {med * 3:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
