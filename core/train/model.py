"""``train_model``: one strategy on one cohort, from the cohort folder to the model folder."""

from __future__ import annotations

import threading
import dataclasses
import time as _time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.cohort import Cohort, load_cohort
from core.errors import InputError
from core.cohort_notes import coverage_notes, split_event_notes
from core.inputs import ehr_arrays, image_embedding_arrays
from core.io.features import feature_notes
from core.models import FUSIONS, HEADS, default_image_kind
from core.models.config import CT_UNREAD, FORMAT, EHRConfig, ImageConfig, ModelConfig
from core.runtime import DistInfo, init_distributed, resolve_device, seed_everything
from core.study_profile import image_cohort_profile
from core.timeline_profile import PROFILE_KEY, reference_profile
from core.train.ehr import ehr_config, forest_member, linear_members
from core.train.fusion_stage import fit_member, split_metrics
from core.train.image_linear import image_linear_members
from core.train.image_stage import foundation_tokens, image_config, train_image_encoder
from core.train.settings import IMAGE_PRESETS, Progress, merge_settings, proportional_head


def train_model(cohort_dir: Path | str, fusion: str, out: Path | str | None, *, head: str = "discrete",
                epochs: int | None = None, seed: int = 0, device: str = "auto", image_encoder: Path | str | None = None,
                image_encoder_kind: str = "auto", ehr_encoder: str = "auto", progress: Progress | None = None,
                overrides: dict[str, Any] | None = None, ensemble: int | None = None, threads: int | None = None,
                between: Callable[[], None] | None = None) -> dict:
    """Train one fusion strategy on a cohort and write the model folder ``out``; return metrics.json's content.

    ``between`` (a background job's ``yield_turn``) is called between the ensemble's members and now and then in the
    lesion pretext: points where the job may let queued jobs run first (not in a distributed run).

    Threads: torch's CPU thread count is process-wide (every thread started later takes it), so it is only
    changed when this call runs on the main thread of its process (``python -m core train``, a heavy job's own
    process, ``core.job_process``): the image stage then uses ``threads`` (or the ``threads`` setting; None keeps
    torch's), the token-level fusion stage 1 thread, and the count is restored in ``finally``. Called from any
    other thread (a Streamlit request, a job-queue worker) it never calls ``torch.set_num_threads``.
    """
    if fusion not in FUSIONS:
        raise InputError("fusion", fusion, "unknown fusion strategy", f"use one of {', '.join(FUSIONS)}")
    if head not in HEADS:
        raise InputError("head", head, "unknown survival head", f"use one of {', '.join(HEADS)}")
    merge_settings(overrides, epochs, ensemble)  # bad settings are reported before the cohort is read
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    if dev.type == "cuda" and dist_info.active:
        dev = torch.device("cuda", dist_info.rank % torch.cuda.device_count())
    seed_everything(seed)
    t_start = _time.perf_counter()
    cohort = load_cohort(Path(cohort_dir), seed=seed)
    if image_encoder_kind == "auto" and cohort.has_studies and fusion != "ehr_only" and image_encoder is None:
        image_encoder_kind = default_image_kind()  # a new model on CT studies: the default encoder (the detector)
    preset = image_encoder_kind if image_encoder_kind in IMAGE_PRESETS else None  # the 2d encoder, other settings
    settings = merge_settings(overrides, epochs, ensemble, preset)
    icfg = image_config(cohort, "2d" if preset else image_encoder_kind, fusion, settings)
    ecfg = ehr_config(cohort, "none" if fusion == "image_only" else ehr_encoder, settings["max_codes"], settings["max_events"],
                      log_skewed=bool(settings["ehr_log_skewed"]))
    has_ehr = bool(ecfg["sequence"] or ecfg["tabular"] or ecfg["embedding_dim"])
    if fusion != "image_only" and not has_ehr:
        raise InputError("fusion", fusion, "needs EHR data but the cohort has none", "add timeline.parquet, features.csv or ehr_embeddings, or use image_only")
    if fusion != "ehr_only" and icfg["kind"] == "none":
        raise InputError("fusion", fusion, "needs images but the cohort has none", "add a study column or image_embeddings, or use ehr_only")
    if threads is not None:
        settings["threads"] = int(threads)
    own = threading.current_thread() is threading.main_thread()
    threads_before = torch.get_num_threads()
    try:
        return _train(cohort, icfg, ecfg, settings, fusion=fusion, head=head, seed=seed, dev=dev, dist_info=dist_info,
                      image_encoder=image_encoder, progress=progress, out=out, t_start=t_start, own_threads=own,
                      between=None if dist_info.active else between)
    finally:  # the thread count is the process's: restore it whatever happened
        if own and torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _train(cohort: Cohort, icfg: dict[str, Any], ecfg: dict[str, Any], settings: dict[str, Any], *, fusion: str,
           head: str, seed: int, dev: torch.device, dist_info: DistInfo, image_encoder: Path | str | None,
           progress: Progress | None, out: Path | str | None, t_start: float, own_threads: bool,
           between: Callable[[], None] | None = None) -> dict:
    from core.models.heads import make_edges
    from core.registry import save_model

    table = cohort.table
    ids = cohort.ids()
    if own_threads and dev.type == "cpu" and settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    if own_threads and dev.type == "cpu" and dist_info.active:
        torch.set_num_threads(1)

    tr = (table["split"] == "train").to_numpy()
    edges = make_edges(table["time"].to_numpy()[tr], table["event"].to_numpy()[tr], settings["n_intervals"])
    data: dict[str, torch.Tensor] = {k: torch.as_tensor(v) for k, v in ehr_arrays(cohort, ids, EHRConfig.from_dict(ecfg)).items()}
    data["time"] = torch.from_numpy(np.array(table["time"], dtype=np.float32))  # a copy: pandas copy-on-write hands out read-only views
    data["event"] = torch.from_numpy(np.array(table["event"], dtype=np.float32))
    enc_state: dict[str, torch.Tensor] | None = None
    enc_info: dict[str, Any] = {}
    reached = [0.0]  # how far the image stage took the bar: the ensemble's members share what is left of it

    def image_progress(f: float, m: str) -> None:
        reached[0] = max(reached[0], f)
        if progress is not None:
            progress(f, m)

    if icfg["kind"] in ("2d", "3d"):
        enc_state, img_data, enc_info = train_image_encoder(
            cohort, icfg, settings, seed=seed, device=dev, dist_info=dist_info,
            init_dir=Path(image_encoder) if image_encoder else None, progress=image_progress, between=between,
            own_threads=own_threads)
        data.update(img_data)
    elif icfg["kind"] == "foundation":  # frozen pretrained backbone: no stage A, tokens from the embedding cache
        img_data, enc_info = foundation_tokens(cohort, icfg, device=dev, progress=progress)
        data.update(img_data)
    elif icfg["kind"] == "embedding":
        data.update({k: torch.as_tensor(v) for k, v in image_embedding_arrays(cohort, ids).items()})
    else:
        data["image_present"] = torch.zeros(len(ids))

    if own_threads and dev.type == "cpu":
        # token-level models are tiny: one thread is as fast, and far faster when the cores are shared
        torch.set_num_threads(1)
    n_members = int(settings["ensemble"])
    image_cfg = ImageConfig.from_dict(icfg)
    # what the model can read: the acquisition profile of its own training studies (config.json, model card)
    profile = image_cohort_profile(cohort, cohort.ids("train"), image_cfg, seed=seed) if dist_info.main else None
    timelines = None
    if "codes" in data:  # and of its site's timelines: how many of their events have a code it was trained on
        timelines = reference_profile(data["codes"].numpy(), data["event_mask"].numpy(), tr,
                                      (table["split"] == "val").to_numpy(), n_codes=len(ecfg["sequence"]["codes"]))
    cfg = ModelConfig(
        format=FORMAT, fusion=fusion, head=head,
        proportional_head=proportional_head(settings["proportional_head"], fusion, icfg["kind"]),
        dim=int(settings["dim"]), dropout=float(settings["dropout"]), heads=int(settings["heads"]),
        edges=tuple(float(e) for e in edges), image=image_cfg, ehr=EHRConfig.from_dict(ecfg), seed=seed,
        image_anchor=bool(settings["image_anchor"]) and icfg["kind"] in ("2d", "3d", "foundation"),
        ehr_linear=bool(settings["ehr_linear"]) and bool(ecfg["tabular"]), ensemble=n_members,
        extra={**({"study_profile": profile} if profile else {}), **({PROFILE_KEY: timelines} if timelines else {})},
        image_linear=_image_linear_windows(settings, fusion, icfg, n_members))
    train_idx = np.flatnonzero(tr)
    val_idx = np.flatnonzero((table["split"] == "val").to_numpy())
    members, member_info = [], []
    for k in range(n_members):
        if k and between is not None:
            between()
        # after the image stage, which may take the bar close to it; without one the members have the whole bar
        start = min(max(0.7 if icfg["kind"] in ("2d", "3d", "foundation") else 0.05, reached[0]), 0.97)
        lo, hi = start + (0.97 - start) * k / n_members, start + (0.97 - start) * (k + 1) / n_members
        net_k, info_k = fit_member(cfg, data, table, train_idx, val_idx, enc_state, settings, fusion=fusion, head=head,
                                    seed=seed + k, device=dev, dist_info=dist_info, progress=progress, span=(lo, hi),
                                    label=f"{fusion}/{head}" + (f" {k + 1}/{n_members}" if n_members > 1 else ""))
        members.append(net_k)
        member_info.append(info_k)
    unread = _network_unread(member_info, fusion, train_events=int(table["event"].to_numpy()[train_idx].sum()),
                             n_train=len(train_idx))
    if unread and len(_zero_scale(member_info)) == len(member_info) and not cfg.image_linear:
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, CT_UNREAD: unread[0]})  # predictions warn (core.predict)
    linear: list[tuple[torch.nn.Module, dict[str, Any]]] = []
    if fusion == "ehr_only" and settings["ehr_only_linear_members"] and n_members > 1:  # a linear model beside each network
        linear = linear_members(members, data, train_idx, penalty=float(settings["ehr_only_linear_penalty"]),
                                penalty_grid=[float(p) for p in settings["ehr_only_linear_penalty_cv"]], seed=seed)
        members += [m for m, _ in linear]
        member_info += [dict(member_info[k], **info) for k, (_, info) in enumerate(linear)]
        if linear:
            n_members = len(members)
            cfg = dataclasses.replace(cfg, ensemble=n_members)
    if cfg.image_linear and (fusion == "image_only" or settings["fusion_linear_members"]):
        # on a detector: a linear model of the study's detection statistics (and EHR features) beside each network
        penalty = settings["image_only_linear_penalty" if fusion == "image_only" else "fusion_linear_penalty"]
        image_lin = image_linear_members(members, data, train_idx, penalty=float(penalty))
        members += [m for m, _ in image_lin]
        member_info += [dict(member_info[k], **info) for k, (_, info) in enumerate(image_lin)]
        n_members = len(members)
        cfg = dataclasses.replace(cfg, ensemble=n_members)
    forest_state: dict[str, torch.Tensor] | None = None
    forest_info: dict[str, Any] | None = None
    # and a random survival forest (core.models.forest) where the tabular features are all the EHR the model reads:
    # the forest sees nothing else (on the demo, timeline + features, it cost 0.006 C: docs/BENCHMARKS.md)
    if linear and float(settings["ehr_only_forest_weight"]) > 0 and not ecfg["sequence"] and not ecfg["embedding_dim"]:
        forest_state, forest_info = forest_member(
            data, train_idx, edges, seed=seed, trees=int(settings["ehr_only_forest_trees"]),
            min_leaf=int(settings["ehr_only_forest_min_leaf"]), weight=float(settings["ehr_only_forest_weight"]))
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "forest": forest_info["config"]})
    if n_members == 1:
        net: torch.nn.Module = members[0]
    else:
        from core.models.net import EnsembleNet

        net = EnsembleNet(cfg, n_members)
        for k, m in enumerate(members):
            net.members[k].load_state_dict(m.state_dict())
        if forest_state is not None:
            net.forest.load_state_dict(forest_state)  # type: ignore[union-attr]
        net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    metrics = split_metrics(net, data, cohort, edges)
    metrics.update({
        "fusion": fusion, "head": head, "seed": seed, "device": str(dev), "world_size": dist_info.world,
        "val_c_index_early_stopping": member_info[0]["val_c_index"], "epochs_run": member_info[0]["epochs_run"],
        "best_epoch": member_info[0]["best_epoch"], "steps": member_info[0]["steps"],
        "calibration": member_info[0]["calibration"], "ensemble": n_members,
        "linear_members": _linear_summary(member_info, n_members),
        "forest_member": None if forest_info is None else {**forest_info["config"], "seconds": forest_info["seconds"], "mb": forest_info["mb"]},
        "members": member_info if n_members > 1 else None,
        "image_encoder": {"kind": icfg["kind"], **enc_info, "warm_start": member_info[0]["warm_start"]},
        "train_seconds": round(_time.perf_counter() - t_start, 2),
        "n": {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
        "cohort_outcomes": {"digest": cohort.outcomes_digest(), "subjects": int(len(table))},  # its own cohort, told
        "data_notes": (feature_notes(cohort.features) if ecfg.get("tabular") and not cfg.ehr.summarises_timeline else [])
        + coverage_notes(cohort, timeline=bool(ecfg.get("sequence") or cfg.ehr.summarises_timeline),
                         features=bool(ecfg.get("tabular")) and not cfg.ehr.summarises_timeline,
                         studies=bool(cfg.image.voxels)) + unread + split_event_notes(table),
        "modalities": {"image": icfg["kind"], "ehr": [k for k in ("sequence", "tabular") if ecfg.get(k)] + (["embedding"] if ecfg.get("embedding_dim") else [])},
        "uncertainty": (f"ensemble of {n_members} seeds (range of the members' curves, widened to contain the mean)"
                        if n_members > 1 else "MC dropout (30 samples, 5th-95th percentile, widened to contain the point estimate)"),
    })
    if out is not None and dist_info.main:
        save_model(Path(out), net, cfg, metrics, cohort)
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()
    if progress is not None:
        progress(1.0, "done")
    return metrics


def _image_linear_windows(settings: dict[str, Any], fusion: str, icfg: dict[str, Any], n_members: int) -> tuple[int, ...]:
    """Slice windows of the study statistics (``core.models.pooling.StudyStats``) of a detector encoder (``pool``
    "detect"): image_only's linear members in an ensemble (``image_only_linear_members``); in the image + EHR
    strategies, the networks' own linear term (``fusion_study_stats``, also for one network) or linear members
    beside them in an ensemble (``fusion_linear_members``); () otherwise (ehr_only, other encoders)."""
    if fusion == "ehr_only" or not (icfg["kind"] == "2d" and icfg.get("pool") == "detect"):
        return ()
    if fusion == "image_only":
        on = bool(settings["image_only_linear_members"]) and n_members > 1
    else:
        on = bool(settings["fusion_study_stats"]) or (bool(settings["fusion_linear_members"]) and n_members > 1)
    return tuple(int(w) for w in settings["image_only_linear_windows"]) if on else ()  # checked by merge_settings


def _network_unread(member_info: list[dict[str, Any]], fusion: str, *, n_train: int, train_events: int) -> list[str]:
    """A data note when the linear EHR term fitted after an image + EHR network gave the network weight 0
    (``solve_wide``'s scale, kept >= 0): that network's risk is then a linear model of the tabular features alone, no
    gradient reaches the CT and its saliency maps are empty. Seen on a 24-subject cohort with features hidden in
    training (``feature_dropout``): the network learnt too little for the fit to keep any of it. Empty otherwise."""
    zero = _zero_scale(member_info)
    if fusion in ("image_only", "ehr_only") or not zero:
        return []
    fix = "train on more subjects, or keep the features in every batch (--feature-dropout 0)"
    if len(zero) < len(member_info):
        return [f"{len(zero)} of the {len(member_info)} networks are not used: the linear term of the tabular features, "
                f"fitted after training, gave them weight 0 ({n_train} train subjects, {train_events} events), so "
                "their risk comes from the features alone and only the other networks read the CT; " + fix]
    of = "its network" if len(member_info) == 1 else f"all {len(member_info)} of its networks"
    return [f"the network is not used: the linear term of the tabular features, fitted after training, gave {of} "
            f"weight 0 ({n_train} train subjects, {train_events} events), so the risk comes from the features alone, "
            f"the CT is not read and its saliency maps are empty; {fix}"]


def _zero_scale(member_info: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The members whose network the linear EHR term kept at weight 0 (``solve_wide``'s scale)."""
    return [i for i in member_info if (i.get("steps") or {}).get("ehr_linear", {}).get("kept")
            and abs(float(i["steps"]["ehr_linear"]["scale"])) < 1e-9]


def _linear_summary(member_info: list[dict[str, Any]], n_members: int) -> dict[str, Any] | None:
    """metrics.json's ``linear_members``: how many, the (first member's) penalty; with cross-validation, every one."""
    linear = [i for i in member_info if i.get("linear")]
    if not linear:
        return None
    out: dict[str, Any] = {"n": n_members // 2, "penalty": linear[0]["penalty"]}
    if any("cv" in i for i in linear):
        out["penalties_cv"] = [i["penalty"] for i in linear]
    return out
