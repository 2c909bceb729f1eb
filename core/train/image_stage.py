"""Stage A: the image encoder, trained once per cohort with an image-only survival objective, then frozen.

The prepared images (``core.preprocess.transforms`` of every study) and the
encoder's tokens are cached under ``<cohort>/.cache/`` keyed by the cohort
fingerprint and every setting that changes them, so comparing strategies
encodes each CT once.

The frozen foundation backbone (kind ``foundation``) has no stage A:
``foundation_tokens`` reads every subject's patch tokens from the per-study
embedding cache (``core.models.foundation_cache``, keyed by the study's content),
running the backbone only for studies never encoded before.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time as _time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.cohort import Cohort, unreadable_studies
from core.disk_cache import save_tensors
from core.errors import InputError
from core.models import IMAGE_ENCODERS
from core.models.config import ImageConfig, ModelConfig
from core.runtime import DistInfo, fast_cpu_bf16
from core.models.pooling import check_detect_z_setting, check_z_scales
from core.train.detection_loss import POS_WEIGHT
from core.train.image_path import image_path_state
from core.train import pretext_checkpoint as kept_progress
from core.train.loop import concordance, fit
from core.train.settings import Progress, pretext_settings, pretext_train_subjects, proportional_head
from core.train.slice_spacing import check_slice_mm, working_slices


# the furthest the lesion pretext goes on the training's bar (most of a detector model's time: see pretext_end)
PRETEXT_END = 0.95


def pretext_end(steps: int, batch: int, n_slices: int, finetune_epochs: int = 0) -> float:
    """Where the lesion pretext ends on the training's bar (it starts at 0.1, after the CT reading): its share of the
    image stage's work, in slice passes. A pretext step is a forward and backward pass over ``batch`` slices (about 3
    forward passes each); after it, the frozen trunk reads each of the cohort's ``n_slices`` slices once and the
    survival layers train on what it read (about 2 passes a slice in all), or, with ``finetune_epochs``, the whole
    encoder trains on every slice that many epochs. Kept within 0.5-:data:`PRETEXT_END` (60 patients x 30 slices, one
    thread, session 55: the pretext 558 s, what followed 4 s).

    >>> pretext_end(3000, 32, 60 * 30), round(pretext_end(3000, 32, 400 * 100), 3), pretext_end(3000, 32, 400 * 100, 30)
    (0.95, 0.781, 0.5)
    """
    pretext = 3.0 * steps * batch
    after = 2.0 * n_slices + 3.0 * finetune_epochs * n_slices
    return min(max(0.1 + 0.87 * pretext / (pretext + after), 0.5), PRETEXT_END)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_config(cohort: Cohort, image_encoder_kind: str, fusion: str, settings: dict[str, Any]) -> dict[str, Any]:
    if image_encoder_kind not in IMAGE_ENCODERS + ("auto",):
        raise InputError("image_encoder_kind", image_encoder_kind, "unknown image encoder",
                         "use auto, 2d, detector, 3d, foundation, embedding or none")
    kind = image_encoder_kind
    if kind == "auto":
        kind = "2d" if cohort.has_studies else ("embedding" if cohort.image_embeddings is not None else "none")
    if fusion == "ehr_only":
        kind = "none"
    if kind in ("2d", "3d", "foundation") and not cohort.has_studies:
        raise InputError("image_encoder_kind", kind, "the cohort has no study column with CT paths", "add a study column or use embedding/none")
    if kind == "embedding" and cohort.image_embeddings is None:
        raise InputError("image_encoder_kind", kind, "the cohort has no image_embeddings file", "add image_embeddings.npy or .parquet")
    s = settings["image"]
    cfg: dict[str, Any] = {"kind": kind, "hu_window": list(s["hu_window"]), "out_dim": int(s["out_dim"])}
    if kind == "2d":
        cfg.update(size=int(s["size"]), channels=list(s["channels"]), lung_mask=bool(s["lung_mask"]))
        if cfg["lung_mask"] and float(s.get("lung_close", 0.0)) > 0:
            cfg["lung_close"] = float(s["lung_close"])
            if bool(s.get("lung_medial", False)):
                cfg["lung_medial"] = True
        cfg.update(encoder_2d_config(s, len(cfg["channels"])))
        if s.get("z_scales"):
            cfg["z_scales"] = check_z_scales(s["z_scales"])
        if s.get("detect_z"):
            cfg["detect_z"] = check_detect_z_setting(s["detect_z"], cfg.get("pool"))
        if s.get("slice_mm") is not None:
            cfg["slice_mm"] = check_slice_mm(s["slice_mm"])
    elif kind == "3d":
        cfg.update(grid=list(s["grid"]), channels=list(s["channels_3d"]))
    if kind in ("2d", "3d") and bool(s.get("body_crop", False)):
        cfg["body_crop"] = True
    if kind == "foundation":
        cfg.update(foundation_config(settings["foundation"]))
    elif kind == "embedding":
        assert cohort.image_embeddings is not None
        shape = cohort.image_embeddings.attrs.get("token_shape", (cohort.image_embeddings.shape[1],))
        cfg.update(emb_dim=int(shape[-1]), emb_tokens=int(np.prod(shape[:-1])) if len(shape) > 1 else 1)
    return cfg


def encoder_2d_config(s: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """The organ-agnostic keys of a 2d image config (windows, contrast, strides, pool) from the ``image`` settings
    (``last_stride``: the stride of the last of the ``n_layers`` convolutions, the others 2; ``strides``, when set,
    gives every layer's stride and overrides it).

    >>> encoder_2d_config({"windows": [[-160, 240]], "contrast": [9], "last_stride": 1, "pool": "attnmax"}, 2)
    {'windows': [[-160.0, 240.0]], 'contrast': [9], 'strides': [2, 1], 'pool': 'attnmax'}
    >>> encoder_2d_config({"strides": [2, 2, 1, 1], "last_stride": 2}, 4)
    {'strides': [2, 2, 1, 1]}
    >>> encoder_2d_config({}, 4)
    {}
    """
    from core.models.image2d import POOLS

    out: dict[str, Any] = {}
    windows = s.get("windows") or []
    for w in windows:
        if len(w) != 2 or not float(w[0]) < float(w[1]):
            raise InputError("image windows", w, "is not a (low, high) HU window with low < high", "use e.g. [[-160, 240], [-200, 1000]]")
    contrast = [int(k) for k in s.get("contrast") or []]
    if any(k < 3 or k % 2 == 0 for k in contrast):
        raise InputError("image contrast", contrast, "kernels must be odd and >= 3 pixels", "use e.g. [9]")
    if windows:
        out.update(windows=[[float(w[0]), float(w[1])] for w in windows], contrast=contrast)
    strides = [int(v) for v in s.get("strides") or []]
    if strides:  # one per trunk layer; overrides last_stride (e.g. [2, 2, 1, 1]: a 24 x 24 last map at size 96)
        if len(strides) != n_layers or any(v not in (1, 2) for v in strides):
            raise InputError("image strides", strides, f"needs one stride of 1 or 2 per trunk layer ({n_layers} layers)",
                             f"use e.g. {[2] * max(1, n_layers - 2) + [1] * min(2, n_layers - 1)} or leave it empty")
        out["strides"] = strides
        last = strides[-1]
    else:
        last = int(s.get("last_stride", 2))
    if last not in (1, 2):
        raise InputError("image last_stride", last, "must be 1 or 2", "use 1 (a finer last feature map) or 2")
    if last != 2 and not strides:
        out["strides"] = [2] * (n_layers - 1) + [last]
    pool = str(s.get("pool", "meanmax"))
    if pool not in POOLS:
        raise InputError("image pool", pool, "is not a spatial pooling", f"use one of {', '.join(POOLS)}")
    if pool != "meanmax":
        out["pool"] = pool
    return out


def foundation_config(f: dict[str, Any]) -> dict[str, Any]:
    """The image config of the frozen backbone from the ``foundation`` settings (weights checked installed)."""
    from core.models.foundation_weights import INSTALL_FIX, weights_available, weights_sha256

    weights = str(f.get("weights", "astra"))
    sha = weights_sha256(weights)  # unknown weight set -> InputError
    if not weights_available(weights):
        raise InputError("image_encoder_kind", "foundation", f"the {weights!r} weights are not installed", INSTALL_FIX)
    grid = [int(g) for g in f["grid"]]
    if len(grid) != 3 or min(grid) < 16:
        raise InputError("foundation grid", grid, "must be 3 sizes (slices, rows, cols), each >= 16",
                         "use e.g. [80, 112, 112] (the default) or [32, 64, 64] for a quick run")
    return {"kind": "foundation", "hu_window": [float(v) for v in f["hu_window"]], "out_dim": 2048, "grid": grid,
            "weights": weights, "weights_sha256": sha}


def foundation_tokens(cohort: Cohort, icfg: dict[str, Any], *, device: torch.device,
                      progress: Progress | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Patch tokens of every subject from the embedding cache (the backbone runs only on studies not stored yet).

    Returns the token data (``image_tokens`` ``[N, P, 2048]``, mask, ``image_present``) and an info dict with
    the number of studies ``encoded`` (backbone runs) and read from the cache (``cached``) and the seconds.
    """
    from core.models.foundation_cache import TOKEN_DIM, study_tokens, tokens_cached
    from core.models.i3resnet import I3ResNet

    grid, window = icfg["grid"], icfg["hu_window"]
    ids = cohort.ids()
    z, x, y = I3ResNet.feature_grid((grid[0], grid[2], grid[1]))
    n_tok = z * x * y
    tokens = torch.zeros(len(ids), n_tok, TOKEN_DIM)
    present = torch.zeros(len(ids))
    t0 = _time.perf_counter()
    encoded = cached = 0
    encode_seconds = 0.0
    from tqdm import tqdm

    # the command line's bar (stderr, shown on a terminal only); ``progress`` feeds the app's
    bar = tqdm(total=len(ids), desc="foundation tokens", file=sys.stderr, leave=False, disable=None)
    try:
        for i, sid in enumerate(ids):
            vol = cohort.load_volume(sid)
            if vol is None:
                bar.update(1)
                continue
            hit = tokens_cached(vol.hu, grid, window)
            step = None if progress is None else _study_progress(progress, i, len(ids))
            t1 = _time.perf_counter()
            tokens[i] = study_tokens(vol.hu, grid, window, device=device, progress=step)
            if hit:
                cached += 1
            else:
                encoded += 1
                encode_seconds += _time.perf_counter() - t1
            present[i] = 1.0
            bar.set_postfix_str(f"{encoded} encoded, {cached} cached", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    if not bool(present.any()):
        raise InputError("study", "none loadable", "no subject has a CT", "check the study column of cohort.csv")
    info = {"encoded": encoded, "cached": cached, "seconds": round(_time.perf_counter() - t0, 2),
            "seconds_per_encoded_study": round(encode_seconds / encoded, 2) if encoded else None,
            "grid": list(grid), "weights": icfg["weights"], "weights_sha256": icfg["weights_sha256"],
            "device": str(device)}
    mask = present[:, None].expand(len(ids), n_tok).contiguous()
    return {"image_tokens": tokens, "image_token_mask": mask, "image_present": present}, info


def _study_progress(report: Progress, i: int, n: int) -> Progress:
    """The progress of study ``i`` of ``n`` as its share (of 0.7) of the whole bar, labelled with its number."""
    lo, hi = 0.7 * i / n, 0.7 * (i + 1) / n
    return lambda fraction, label: report(lo + (hi - lo) * fraction, f"foundation tokens {i + 1}/{n}: {label}")


def _cache_dir(cohort: Cohort) -> Path:
    return cohort.root / ".cache"


def _load_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def preprocessed_images(cohort: Cohort, icfg: dict[str, Any], progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """Windowed + resized CT of every subject (``encoder.preprocess``), float16, padded over slices; cached."""
    key = _digest("pre", cohort.fingerprint(), {k: icfg[k] for k in icfg if k in ("kind", "size", "grid", "hu_window", "lung_mask", "lung_close", "lung_medial", "body_crop")},
                  *(["slice spacings"] if icfg.get("slice_mm") is not None else []))  # caches before them lack them
    path = _cache_dir(cohort) / f"images_{key}.safetensors"
    hit = _load_cache(path)
    if hit is not None:
        return hit[0]
    chain = ImageConfig.from_dict({**icfg, "slice_mm": None}).transforms()  # each study's own slices; then to_working_slices
    assert chain is not None
    ids = cohort.ids()
    arrays: list[torch.Tensor | None] = []
    spacing = torch.zeros(len(ids))
    failed: list[tuple[str, InputError]] = []
    for i, sid in enumerate(ids):
        try:
            vol = cohort.load_volume(sid)
        except InputError as exc:  # every unreadable study is named at once, not one per run
            failed.append((sid, exc))
            vol = None
        if vol is None:
            arrays.append(None)
        else:
            with torch.no_grad():
                arrays.append(chain(torch.from_numpy(np.ascontiguousarray(vol.hu, dtype=np.float32))[None])[0].half())
            spacing[i] = float(vol.spacing_mm[0])
        if progress is not None and i % 20 == 0:
            progress(0.1 * i / len(ids), f"reading CT {i + 1}/{len(ids)}")
    if failed:
        raise unreadable_studies(failed, len(ids))
    shapes = [a.shape for a in arrays if a is not None]
    if not shapes:
        raise InputError("study", "none loadable", "no subject has a CT", "check the study column of cohort.csv")
    s_max = max(s[0] for s in shapes)
    rest = shapes[0][1:]
    x = torch.zeros((len(ids), s_max, *rest), dtype=torch.float16)
    mask = torch.zeros(len(ids), s_max)
    present = torch.zeros(len(ids))
    for i, a in enumerate(arrays):
        if a is not None:
            x[i, :a.shape[0]] = a
            mask[i, :a.shape[0]] = 1
            present[i] = 1
    out = {"image_preprocessed": x, "image_token_mask": mask, "image_present": present, "image_slice_mm": spacing}
    save_tensors(path, out, {"ids": json.dumps(ids)}, what="the CT cache")
    return out


def encoder_tokens(enc: torch.nn.Module, pre: dict[str, torch.Tensor], device: torch.device, chunk: int = 8) -> torch.Tensor:
    enc.eval().to(device)
    outs = []
    with torch.no_grad():
        for i in range(0, pre["image_preprocessed"].shape[0], chunk):
            x = pre["image_preprocessed"][i:i + chunk].float().to(device)
            outs.append(encode_prepared(enc, x, pre["image_token_mask"][i:i + chunk].to(device)).float().cpu())
    return torch.cat(outs)


def encode_prepared(enc: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder's tokens of prepared images ``x``; the slice ``mask`` of padded studies goes to an encoder that
    reads neighbouring slices (a detector with ``detect_z``), so that padding never reaches a real slice."""
    return enc(x, mask) if getattr(enc, "detect_z", ()) else enc(x)


def train_image_encoder(cohort: Cohort, icfg: dict[str, Any], settings: dict[str, Any], *, seed: int, device: torch.device,
                        dist_info: DistInfo, init_dir: Path | None, progress: Progress | None,
                        between: Callable[[], None] | None = None, own_threads: bool = False,
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Stage A: train (or load from cache) the image encoder; return (encoder state, token data, info).

    ``between``: called now and then in the lesion pretext (not in a distributed run), where a background job may
    let queued jobs run first. ``own_threads``: the caller owns the process's thread count (the pretext may change it
    while it runs)."""
    from core.models.net import SurvivalNet

    s = settings["image"]
    init_hash = None
    init_state: dict[str, torch.Tensor] | None = None
    if init_dir is not None:
        from core.registry import load_encoder

        init_state, init_cfg = load_encoder(init_dir)
        for k in ("kind", "size", "channels", "grid", "out_dim"):
            if k in init_cfg and k in icfg and init_cfg[k] != icfg[k]:
                raise InputError("image_encoder", str(init_dir), f"encoder {k}={init_cfg[k]} does not match {icfg[k]}",
                                 "pretrain with the same image settings or train without --image-encoder")
        for k, default in (("lung_mask", False), ("lung_close", 0.0), ("lung_medial", False), ("windows", None),
                           ("contrast", None), ("strides", None), ("pool", "meanmax"), ("body_crop", False),
                           ("detect_z", None)):
            if icfg.get("kind") == "2d" and init_cfg.get(k, default) != icfg.get(k, default):
                raise InputError("image_encoder", str(init_dir), f"encoder {k}={init_cfg.get(k, default)} does not match {icfg.get(k, default)}",
                                 "pretrain again with this version or train without --image-encoder")
        init_hash = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in init_state.values())).hexdigest()[:16]
    prop = proportional_head(settings["proportional_head"], "image_only", icfg["kind"])
    aug = (int(s.get("augment_shift", 0)), float(s.get("augment_offset", 0.0)))
    pretext = pretext_settings(s, icfg)
    if pretext and pretext.get("precision") == "auto":  # resolved here, so the key says what ran (float32: no entry, as
        # before). Not on a GPU: there the network is 5 of a step's 44 ms (docs/BENCHMARKS.md), bfloat16 would not help
        if device.type == "cpu" and fast_cpu_bf16():
            pretext["precision"] = "bf16"
        else:
            del pretext["precision"]
    # augmentation and the lesion pretext enter the key only when on, so encoders cached before them stay valid
    key = _digest("enc", cohort.fingerprint(), icfg, seed, {k: s[k] for k in ("epochs", "batch_size", "lr", "patience")},
                  settings["n_intervals"], init_hash, settings["dim"], prop, "image-path/4", *([aug] if any(aug) else []),
                  *([pretext] if pretext else []))
    path = _cache_dir(cohort) / f"encoder_{key}.safetensors"
    pretext_file = None if dist_info.active else _cache_dir(cohort) / f"pretext_{key}.safetensors"  # its progress
    hit = _load_cache(path)
    if hit is not None:
        if pretext_file is not None:
            kept_progress.discard(pretext_file)  # one left by a process stopped just after writing the cache
        tensors, meta = hit
        enc_state = {k: v for k, v in tensors.items() if k.startswith(("enc.", "path."))}
        data = {"image_tokens": tensors["tokens"], "image_token_mask": tensors["mask"], "image_present": tensors["present"]}
        info = json.loads(meta.get("info", "{}"))
        if icfg.get("slice_mm") == "auto":  # the spacing this encoder was trained at, resolved when it was cached
            icfg["slice_mm"] = info["slice_mm"]
        return enc_state, data, info
    t0 = _time.perf_counter()
    pre = working_slices(preprocessed_images(cohort, icfg, progress), icfg, cohort)
    table = cohort.table
    from core.models.heads import make_edges

    tr = (table["split"] == "train").to_numpy()
    edges = make_edges(table["time"].to_numpy()[tr], table["event"].to_numpy()[tr], settings["n_intervals"])
    cfg = {"fusion": "image_only", "head": "discrete", "dim": settings["dim"], "dropout": settings["dropout"],
           "heads": settings["heads"], "proportional_head": prop, "edges": edges.tolist(), "image": icfg,
           "ehr": {"sequence": None, "tabular": None, "embedding_dim": None}}
    torch.manual_seed(seed)
    net = SurvivalNet(ModelConfig.from_dict(cfg))
    net.head.init_baseline(table["time"].to_numpy()[tr], table["event"].to_numpy()[tr])
    if init_state is not None:
        net.image_encoder.load_state_dict(init_state)  # type: ignore[union-attr]
    data = dict(pre)
    data["time"] = torch.from_numpy(np.array(table["time"], dtype=np.float32))  # a copy: pandas copy-on-write hands out read-only views
    data["event"] = torch.from_numpy(np.array(table["event"], dtype=np.float32))
    present = pre["image_present"].numpy() > 0
    train_idx = np.flatnonzero(tr & present)
    val_idx = np.flatnonzero((table["split"] == "val").to_numpy() & present)

    pretext_info = None
    span = (0.1, 0.7)  # of the whole training's bar; the ensemble's members follow from where this stage ends
    if pretext:
        from core.train.pretext_lesions import LesionPrior, freeze_detector, pretrain_detector

        enc0 = net.image_encoder
        assert enc0 is not None
        end = pretext_end(pretext["steps"], pretext["batch"], int(pre["image_token_mask"].sum()),
                          int(s["epochs"]) if pretext["finetune"] else 0)
        pretext_idx = pretext_train_subjects(train_idx, data["time"].numpy(), data["event"].numpy(), pretext.get("subjects", "all"))
        pretext_info = pretrain_detector(
            enc0, pre["image_preprocessed"], pre["image_token_mask"], pretext_idx, val_idx, steps=pretext["steps"],
            batch=pretext["batch"], lr=pretext["lr"], prior=LesionPrior.from_dict(pretext["prior"]), seed=seed, device=device,
            window=(float(icfg["hu_window"][0]), float(icfg["hu_window"][1])), progress=progress, progress_span=(0.1, end),
            ignore_top=float(pretext.get("ignore_top", 0.0)), rank_weight=float(pretext.get("rank_weight", 0.0)),
            pos_weight=float(pretext.get("pos_weight", POS_WEIGHT)), between=None if dist_info.active else between,
            precision=pretext.get("precision", "fp32"), spare_thread=own_threads, checkpoint=pretext_file)
        pretext_info.update(subjects=pretext.get("subjects", "all"), n_subjects=int(len(pretext_idx)))
        if not pretext["finetune"]:
            pretext_info["trainable_in_encoder"] = freeze_detector(enc0)
            if enc0.soft_tissue is None:  # type: ignore[union-attr]
                # the frozen trunk's detection statistics, once per slice: stage A then trains only what sits on them
                data.pop("image_preprocessed")
                data["image_stats"] = _frozen_stats(enc0, pre, device)
        span = (end, end + (0.97 - end) / 3)  # then the ensemble's members, to 0.97 (core.train.model)

    def stage_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(_stage_a_batch(model, batch, aug))
        head = (model.module if hasattr(model, "module") else model).head
        return head.nll(out["raw"], batch["time"], batch["event"])

    def stage_score(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
        risks = []
        for i in range(0, batch["time"].shape[0], 32):
            sub = {k: v[i:i + 32] for k, v in batch.items()}
            risks.append(model(_stage_a_batch(model, sub))["risk"].float().cpu())
        return concordance(batch["time"].cpu().numpy(), batch["event"].cpu().numpy(), torch.cat(risks).numpy())

    res = fit(net, data, train_idx, val_idx, stage_loss, stage_score, epochs=int(s["epochs"]), lr=float(s["lr"]),
              weight_decay=settings["weight_decay"], batch_size=int(s["batch_size"]), patience=int(s["patience"]),
              seed=seed, device=device, dist_info=dist_info, label="image encoder", progress=progress,
              progress_span=span)
    enc = net.image_encoder
    assert enc is not None
    for p in enc.parameters():
        p.requires_grad_(True)
    if "image_stats" in data:  # frozen pretext trunk: project its statistics (the same as the encoder, one pass fewer)
        with torch.no_grad():
            w = enc.proj.weight  # type: ignore[union-attr]
            tokens = enc.proj(data["image_stats"].float().to(w.device)).float().cpu()  # type: ignore[operator]
    else:
        tokens = encoder_tokens(enc, pre, device)
    enc_state = {f"enc.{k}": v.detach().cpu() for k, v in enc.state_dict().items()}
    enc_state.update({f"path.{k}": v.detach().cpu() for k, v in image_path_state(net).items()})
    info = {"slice_mm": icfg.get("slice_mm"), "val_c_index": res.best_score, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
            "seconds": round(_time.perf_counter() - t0, 2), "init": str(init_dir) if init_dir else None}
    if pretext_info is not None:
        info["pretext"] = pretext_info
    token_mask = _token_mask(tokens, pre["image_token_mask"], pre["image_present"])
    out = {"image_tokens": tokens, "image_token_mask": token_mask, "image_present": pre["image_present"]}
    if dist_info.main:
        save = dict(enc_state)
        save.update(tokens=tokens, mask=token_mask, present=pre["image_present"])
        save_tensors(path, save, {"info": json.dumps(info), "ids": json.dumps(cohort.ids())}, what="the encoder cache")
    if pretext and pretext_file is not None:
        kept_progress.discard(pretext_file)  # the trained encoder is in the cache now
    return enc_state, out, info


def _frozen_stats(enc: torch.nn.Module, pre: dict[str, torch.Tensor], device: torch.device, chunk: int = 8) -> torch.Tensor:
    """Detection statistics ``[N, S, K]`` of a frozen ``pool="detect"`` encoder on every prepared study."""
    enc.eval().to(device)
    outs = []
    with torch.no_grad():
        for i in range(0, pre["image_preprocessed"].shape[0], chunk):
            outs.append(enc.slice_stats(pre["image_preprocessed"][i:i + chunk].float().to(device),  # type: ignore[operator]
                                        pre["image_token_mask"][i:i + chunk].to(device)).float().cpu())
    return torch.cat(outs)


def _stage_a_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                   augment: tuple[int, float] = (0, 0.0)) -> dict[str, torch.Tensor]:
    """Stage A feeds the cached prepared images through the encoder, then the rest of the net; ``augment``
    (max shift in pixels, intensity offset) applies :func:`core.preprocess.transforms.augment_slices` (loss only)."""
    net = model.module if hasattr(model, "module") else model
    b = dict(batch)
    if "image_stats" in b:  # frozen pretext trunk: its statistics were computed once (train_image_encoder)
        stats = b.pop("image_stats").float()
        b["image_tokens"] = net.image_encoder.proj(stats)  # type: ignore[union-attr]
        b["image_token_mask"] = _token_mask(b["image_tokens"], b["image_token_mask"], b["image_present"])
        return b
    x = b.pop("image_preprocessed").float()
    if (augment[0] > 0 or augment[1] > 0) and x.dim() == 4:
        from core.preprocess.transforms import augment_slices

        x = augment_slices(x, augment[0], augment[1])
    b["image_tokens"] = encode_prepared(net.image_encoder, x, b["image_token_mask"])  # type: ignore[arg-type]
    b["image_token_mask"] = _token_mask(b["image_tokens"], b["image_token_mask"], b["image_present"])
    return b


def _token_mask(tokens: torch.Tensor, mask: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The token mask of encoder tokens ``[N, T, D]``: the prepared images' slice mask when there is one token per
    slice (2d), else every token of a subject with a CT (3d patch tokens: the prepared mask counts grid slices,
    not tokens; issue 14: ``size of tensor a (32) must match ... (256)``).

    >>> _token_mask(torch.zeros(2, 3, 4), torch.ones(2, 3), torch.ones(2)).shape
    torch.Size([2, 3])
    >>> _token_mask(torch.zeros(2, 5, 4), torch.ones(2, 3), torch.tensor([1.0, 0.0])).sum(-1).tolist()
    [5.0, 0.0]
    """
    if tokens.shape[1] == mask.shape[1]:
        return mask
    return present.to(tokens.dtype)[:, None].expand(tokens.shape[0], tokens.shape[1]).contiguous()
