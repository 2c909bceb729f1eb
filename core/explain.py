"""Captum attributions of a survival model's risk at a horizon, on the CT voxel grid and on timeline events.

The explained quantity (the *target*) is the predicted risk at a horizon t*,
``1 - S(t*)``, with S read on the model's time grid (``LoadedModel.times``) as
the step function ``core.horizons`` defines, exactly the risk ``core.predict``
reports. Image maps are aligned voxel for voxel with ``inputs.image[0]`` (the
loaded ``Volume.hu``): the model's transforms (``core.preprocess.transforms``)
window and resize with differentiable operations before the encoder, so
gradients land on the original voxels. Constants of those transforms (the
optional lung mask and body box) are computed once from the case's own CT and
held fixed, so methods that perturb the CT (integrated gradients, occlusion,
SmoothGrad) measure the network on that case's mask and box.

Methods (all Captum): ``saliency`` (|gradient|), ``integrated_gradients``
(air -1000 HU or Gaussian-blurred baseline), ``gradcam`` (LayerGradCam on the
encoder's last convolution, upsampled to the voxel grid), ``occlusion`` (3D
windows of air), ``smoothgrad`` (Saliency averaged over noisy copies, seeded noise in HU) and,
for a lesion-detector encoder only (``pool="detect"``), ``detector_ig``:
integrated gradients of the risk over the detector's lesion-logit map (the one
thing the survival stage reads of a slice), from a baseline map in which every
detection is lowered to the detector's decision threshold (logit 0, lesion
probability 0.5), summed over the detector's channels and upsampled to the
voxel grid. By completeness the map sums to the risk change between "nothing
detected" and this CT's detections, and it is non-zero only at positions the
detector calls a lesion, so it shows which detected spots raised or lowered the
risk and by how much. The voxel-gradient methods peak where the risk is most
sensitive to a voxel, which on a detector model is often normal anatomy
(docs/BENCHMARKS.md, "Attributions through the detector"). Its map is zero on
a CT with no detection above the threshold.

Per-slice lazy mode (``slice_index`` given, 2D per-slice encoder): the tokens
of every other slice are computed once without gradient and only the chosen
slice is the attributed input; the wrapper forward encodes that slice and
inserts its token among the fixed ones, so the cost is about one slice and the
map is zero on every other slice. A 2D encoder's transforms and network treat
each slice independently, so this is the same function of that slice as the
whole-volume forward.

Timeline attributions (``event_attributions``): LayerIntegratedGradients on
the three parts of each event token (code, value and time embeddings) from a
padding-event baseline, summed per event, next to the fusion's attention
weight of each event.

Concurrent sessions share one loaded network (``core.registry.LoadedModel``,
frozen at load). Every attribution runs on a per-call replica of its module
tree (``LoadedModel.replica``: the same weight tensors, its own hook
dictionaries and mode flags), so the forward hooks of LayerGradCam and
LayerIntegratedGradients fire only for this call's forward passes (Captum
removes them in its own ``finally``; they would go with the replica anyway),
and the shared network, its parameters' ``.grad`` and its hooks stay as loaded.
Why a replica and not a lock around the hooked section: a lock would also have
to stop every prediction of every session (a forward pass through a hooked
module fires the hooks), for as long as the attribution runs (seconds through
the foundation backbone); a replica costs a few milliseconds (a few hundred
module objects, no tensor; the foundation model's 117 M-parameter backbone is
held outside the module tree and is not replicated at all). Numbers:
``bench/bench_replica.py`` in docs/BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from core.errors import InputError
from core.horizons import DEFAULT_HORIZON, grid_index

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch

    from core.models.types import CaseInputs
    from core.preprocess.transforms import CaseConstants
    from core.registry import LoadedModel

METHODS: tuple[str, ...] = ("saliency", "integrated_gradients", "gradcam", "occlusion", "smoothgrad", "detector_ig")
DETECTOR_METHODS: tuple[str, ...] = ("detector_ig",)  # only for an image encoder with a lesion detector
# what people read for each method (the app's picker, figure titles, the case report); files and JSON keep the keys
METHOD_LABELS: dict[str, str] = {
    "saliency": "Saliency (gradient)",
    "integrated_gradients": "Integrated gradients",
    "gradcam": "Grad-CAM",
    "occlusion": "Occlusion",
    "smoothgrad": "SmoothGrad",
    "detector_ig": "Detector evidence (IG)",
}
DETECTION_LOGIT = 0.0  # detector_ig's baseline: every lesion logit above this (probability 0.5) lowered to it
BASELINES: tuple[str, ...] = ("air", "blur")
AIR_HU = -1000.0
SMOOTHGRAD_SAMPLES = 10
SMOOTHGRAD_STDEV_HU = 50.0
SMOOTHGRAD_SEED = 0  # the noise of SmoothGrad's copies: one fixed draw, so a map can be computed again
BLUR_SIGMA_VOXELS = (1.0, 4.0, 4.0)  # blurred IG baseline: (across slices, rows, cols); in-plane only for one slice
TOP_K = 5
# copies of the CT per forward pass of IG, SmoothGrad and occlusion: at most this many voxels in all (one
# 512 x 512 x 150 CT at 8 copies held 12 GB for occlusion and 5.8 GB for IG; one copy at a time 2.6-2.7 GB)
BATCH_VOXELS = 1 << 22


def batch_for(voxels: int, requested: int) -> int:
    """The copies per forward pass: ``requested``, fewer for a large study (never under 1; the result is the same)."""
    return max(1, min(int(requested), BATCH_VOXELS // max(1, int(voxels))))


def check_method(method: str, field: str = "method") -> str:
    """``method`` when it is an attribution method, else a one-line ``InputError`` naming ``field``."""
    if method not in METHODS:
        raise InputError(field, method, "is not an attribution method", f"use one of {', '.join(METHODS)}")
    return method


def _detector(model: LoadedModel) -> Any:
    """The model's image encoder when it has a lesion detector (``pool="detect"``), else None."""
    enc = getattr(model.net, "image_encoder", None)
    return enc if getattr(enc, "detector", None) is not None else None


def has_detector(model: Any) -> bool:
    """Whether the model's image encoder is a lesion detector (``pool="detect"``), read from its config only, so a
    model known by its folder (the app's lazy model) is not loaded to answer."""
    return getattr(getattr(getattr(model, "config", None), "image", None), "pool", None) == "detect"


def methods_for(model: Any) -> tuple[str, ...]:
    """The attribution methods that apply to ``model``, the preferred one first: ``detector_ig`` leads for a
    lesion-detector encoder (its peaks are the detections the model used) and is left out for any other."""
    rest = tuple(m for m in METHODS if m not in DETECTOR_METHODS)
    return DETECTOR_METHODS + rest if has_detector(model) else rest


@dataclass
class Attribution:
    """An attribution map on the voxel grid plus the ranked slices and events."""

    map: np.ndarray  # float32 [S, R, C], aligned with inputs.image[0]
    method: str
    target: str  # e.g. "risk 1 - S(t) at 365 d"
    horizon_days: float
    top_slices: list[tuple[int, float]] = field(default_factory=list)  # (slice index, share of |map|)
    top_events: list[tuple[int, str, str, float]] = field(default_factory=list)  # (row, code, time, score)
    slice_index: int | None = None  # set in per-slice mode: the map is zero elsewhere

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "target": self.target, "horizon_days": self.horizon_days,
            "slice_index": self.slice_index, "shape": list(self.map.shape),
            "top_slices": [[int(i), round(float(s), 6)] for i, s in self.top_slices],
            "top_events": [[int(r), c, t, round(float(s), 6)] for r, c, t, s in self.top_events],
        }


# ----------------------------------------------------------------------------- target


def default_horizon(model: LoadedModel) -> float:
    """365 days, or the median of the model's time grid (training event-time quantiles) when 365 is past the grid."""
    times = np.asarray(model.times, dtype=float)
    if times.size and DEFAULT_HORIZON <= times[-1]:
        return float(DEFAULT_HORIZON)
    return float(np.median(times[1:])) if times.size > 1 else float(DEFAULT_HORIZON)


def _check_horizon(model: LoadedModel, horizon_days: float | None) -> float:
    if horizon_days is None:
        return default_horizon(model)
    h = float(horizon_days)
    if not np.isfinite(h) or h <= 0:
        raise InputError("horizon_days", horizon_days, "must be a positive number of days", "pass e.g. 365")
    return h


def target_text(model: LoadedModel, horizon_days: float) -> str:
    times = np.asarray(model.times, dtype=float)
    text = f"risk 1 - S(t) at {horizon_days:g} d"
    if times.size and horizon_days > times[-1]:
        text += f" (past the time grid; S read at its last time, {times[-1]:.0f} d)"
    return text


def risk_at(survival: torch.Tensor, times: np.ndarray, horizon_days: float) -> torch.Tensor:
    """``[B]`` risk 1 - S(t*) from ``[B, T]`` survival (differentiable), S read as ``core.horizons`` reads it."""
    return 1.0 - survival[:, max(grid_index(times, horizon_days), 0)]


# ----------------------------------------------------------------------------- batches


def _expand(batch: dict[str, Any], b: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if hasattr(v, "dim") and v.dim() > 0 and v.shape[0] == 1 and b != 1:
            out[k] = v.expand(b, *v.shape[1:])
        else:
            out[k] = v
    return out


def _uses_image(model: LoadedModel, inputs: CaseInputs) -> bool:
    net = model.net
    return (inputs.image is not None and net.image_encoder is not None and bool(getattr(net, "has_image", True))
            and float(inputs.image_mask.sum()) > 0)


def _is_per_slice(model: LoadedModel, inputs: CaseInputs) -> bool:
    chain = model.transforms
    return chain is not None and chain.per_slice_for(inputs.slice_mm)


# ----------------------------------------------------------------------------- image attributions


def attribute(model: LoadedModel, inputs: CaseInputs, method: str, horizon_days: float | None = None,
              slice_index: int | None = None, baseline: str = "air", n_steps: int = 32,
              internal_batch_size: int = 8, *, with_events: bool = True,
              context: tuple[CaseConstants | None, torch.Tensor] | None = None) -> Attribution:
    """Attribute the risk at ``horizon_days`` to the CT voxels of ``inputs`` with ``method``.

    ``slice_index`` selects per-slice lazy mode for 2D per-slice encoders (other
    encoders attribute the whole volume and ignore it). ``context``: the case's
    masks and every slice's tokens (``model.image_masks``, ``model.encode_image``),
    computed once by a caller that attributes one case slice by slice.
    """
    import torch

    check_method(method)
    if baseline not in BASELINES:
        raise InputError("baseline", baseline, "is not a baseline", f"use one of {', '.join(BASELINES)}")
    if int(n_steps) < 2:
        raise InputError("n_steps", n_steps, "must be >= 2", "use e.g. 32")
    if int(internal_batch_size) < 1:
        raise InputError("internal_batch_size", internal_batch_size, "must be >= 1", "use e.g. 8")
    if not _uses_image(model, inputs):
        raise InputError("image", "not used", f"the {model.fusion} model uses no CT for this case",
                         "pick a case with a CT and a model that uses the image (not ehr_only)")
    if method in DETECTOR_METHODS and method not in methods_for(model):  # the same rule as the app's picker
        raise InputError("method", method, f"needs a lesion-detector image encoder; this {model.fusion} model's "
                         f"{model.config.image.kind} encoder has none", f"use one of {', '.join(methods_for(model))}")
    horizon = _check_horizon(model, horizon_days)
    image = inputs.image.detach().float()  # type: ignore[union-attr]
    s, r, c = (int(v) for v in image.shape[1:])
    per_slice = slice_index is not None and _is_per_slice(model, inputs)
    if slice_index is not None and not 0 <= int(slice_index) < s:
        raise InputError("slice_index", slice_index, f"is outside 0..{s - 1}", "pick a slice inside the volume")
    from core.models.net import with_image_tokens
    from core.models.replica import drop_hooks

    model = model.replica()  # this call's own module tree (shared weights): Captum's hooks never reach the shared net
    net = model.net
    times = np.asarray(model.times, dtype=float)
    base_batch = model.encoded_batch(replace(inputs, image=None))
    masks = model.image_masks(image, inputs.slice_mm) if context is None else context[0]  # the case's own, fixed

    lazy: tuple[int, torch.Tensor] | None = None  # per-slice mode: (the slice, every slice's fixed tokens)
    if per_slice:
        k = int(slice_index)  # type: ignore[arg-type]
        with torch.no_grad():  # every slice's tokens [1, S, D]
            fixed = model.encode_image(image, masks).detach() if context is None else context[1]
        x = image[:, k:k + 1].clone()  # [1, 1, R, C]
        slice_masks = None if masks is None else masks.slices(k, k + 1)
        lazy = (k, fixed)

        def forward(xs: torch.Tensor) -> torch.Tensor:
            b = xs.shape[0]
            tok = model.encode_image(xs, slice_masks)  # [b, 1, D]
            f = fixed.expand(b, *fixed.shape[1:])
            tokens = torch.cat([f[:, :k], tok, f[:, k + 1:]], dim=1)
            return risk_at(net(with_image_tokens(_expand(base_batch, b), tokens, s))["survival"], times, horizon)
    else:
        x = image.clone()
        slice_masks = masks

        def forward(xs: torch.Tensor) -> torch.Tensor:
            batch = with_image_tokens(_expand(base_batch, xs.shape[0]), model.encode_image(xs, masks), s)
            return risk_at(net(batch)["survival"], times, horizon)

    try:
        if method == "detector_ig":
            attr = _detector_ig(model, base_batch, x, slice_masks, lazy, times, horizon, n_steps=int(n_steps),
                                internal_batch_size=int(internal_batch_size))
        else:
            attr = _run_method(method, forward, x, model, slice_masks, baseline=baseline, n_steps=int(n_steps),
                               internal_batch_size=int(internal_batch_size))
    finally:  # Captum removes its hooks itself; whatever an error left behind goes with this call's replica
        drop_hooks(net)
    attr = np.nan_to_num(attr, nan=0.0, posinf=0.0, neginf=0.0)  # the attributed slice(s) only, not the whole map
    full = np.zeros((s, r, c), dtype=np.float32)  # in per-slice mode the other slices stay zero, never touched
    full[int(slice_index) if per_slice else slice(None)] = attr[0] if per_slice else attr  # type: ignore[arg-type]
    per = np.zeros(s) if per_slice else np.abs(attr).sum(axis=(1, 2))
    if per_slice:
        per[int(slice_index)] = float(np.abs(attr[0]).sum())  # type: ignore[arg-type]
    top_slices = rank_slices(per)
    top_events: list[tuple[int, str, str, float]] = []
    if with_events:
        table = event_attributions(model, inputs, horizon, n_steps=min(int(n_steps), 32))
        top_events = top_event_rows(table)
    return Attribution(map=full, method=method, target=target_text(model, horizon), horizon_days=horizon,
                       top_slices=top_slices, top_events=top_events, slice_index=int(slice_index) if per_slice else None)


def _baseline_tensor(x: torch.Tensor, baseline: str) -> torch.Tensor:
    import torch

    if baseline == "air":
        return torch.full_like(x, AIR_HU)
    from scipy import ndimage

    arr = x.detach().cpu().numpy()
    # x is [1, S, R, C] or [1, 1, R, C]: blur in-plane strongly, across slices lightly
    sigma = (0.0, BLUR_SIGMA_VOXELS[0] if arr.shape[1] > 1 else 0.0, BLUR_SIGMA_VOXELS[1], BLUR_SIGMA_VOXELS[2])
    return torch.from_numpy(ndimage.gaussian_filter(arr, sigma=sigma).astype(np.float32)).to(x.device)


def occlusion_window(shape: tuple[int, ...]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(window, strides)`` for an input ``[S, R, C]``: ~12 x 12 in-plane patches, 1 slice deep per slice,
    4 x 4 x 4 blocks across a volume (64 forward passes).

    >>> occlusion_window((1, 96, 96))
    ((1, 8, 8), (1, 8, 8))
    >>> occlusion_window((32, 96, 96))
    ((8, 24, 24), (8, 24, 24))
    """
    s, r, c = shape
    if s == 1:
        wr, wc = max(4, r // 12), max(4, c // 12)
        return (1, wr, wc), (1, wr, wc)
    ws = max(1, int(np.ceil(s / 4)))
    wr, wc = max(4, r // 4), max(4, c // 4)
    return (ws, wr, wc), (ws, wr, wc)


def _detector_ig(model: LoadedModel, base_batch: dict[str, Any], x: torch.Tensor, masks: CaseConstants | None,
                 lazy: tuple[int, torch.Tensor] | None, times: np.ndarray, horizon: float, *, n_steps: int,
                 internal_batch_size: int) -> np.ndarray:
    """``detector_ig`` of the CT ``x`` ``[1, S', R, C]`` (the whole volume, or one slice when ``lazy`` =
    ``(slice index, the other slices' fixed tokens [1, S, D])``): Captum's IntegratedGradients of the risk over the
    detector's lesion logits ``[1, S', K, h, w]`` from the same logits lowered to ``DETECTION_LOGIT``, summed over
    the K channels and upsampled (bilinear, as the slices were resized) to ``[S', R, C]``."""
    import torch
    from captum.attr import IntegratedGradients

    from core.models.net import with_image_tokens

    enc = _detector(model)
    chain = model.transforms
    assert enc is not None and chain is not None
    with torch.no_grad():
        prepared = chain(x, masks)  # [1, S', size, size]
        n, size = int(prepared.shape[1]), int(prepared.shape[-1])
        logits = enc.detect_logits(prepared.reshape(n, 1, size, size))[None]  # [1, S', K, h, w]
    s_total = n if lazy is None else int(lazy[1].shape[1])

    def forward(z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        tok = enc.detection_tokens(z.reshape(b * n, *z.shape[2:]), prepared.expand(b, *prepared.shape[1:]))
        if lazy is not None:
            k, fixed = lazy
            f = fixed.expand(b, *fixed.shape[1:])
            tok = torch.cat([f[:, :k], tok, f[:, k + 1:]], dim=1)
        return risk_at(model.net(with_image_tokens(_expand(base_batch, b), tok, s_total))["survival"], times, horizon)

    baseline = torch.clamp(logits, max=DETECTION_LOGIT)
    det = IntegratedGradients(forward).attribute(logits, baselines=baseline, n_steps=n_steps,
                                                 internal_batch_size=internal_batch_size, method="gausslegendre")
    out = chain.to_study_slices(chain.study_grid(det[0].float().sum(dim=1), tuple(int(v) for v in x.shape[2:]), masks), int(x.shape[1]), masks)  # type: ignore[arg-type]
    return out.detach().cpu().numpy().astype(np.float32)


def _run_method(method: str, forward: Callable[[Any], Any], x: torch.Tensor, model: LoadedModel,
                masks: CaseConstants | None, *, baseline: str,
                n_steps: int, internal_batch_size: int) -> np.ndarray:
    """Captum attribution of ``forward`` at ``x`` ``[1, S', R, C]``; returns ``[S', R, C]`` float32."""
    import torch
    from captum.attr import IntegratedGradients, LayerGradCam, Occlusion, Saliency

    x = x.detach().requires_grad_(True)
    internal_batch_size = batch_for(x.numel(), internal_batch_size)  # the memory of a full-size CT stays bounded
    if method == "saliency":
        out = Saliency(forward).attribute(x, abs=True)
    elif method == "integrated_gradients":
        ig = IntegratedGradients(forward)
        out = ig.attribute(x, baselines=_baseline_tensor(x, baseline), n_steps=n_steps,
                           internal_batch_size=internal_batch_size, method="gausslegendre")
    elif method == "smoothgrad":  # NoiseTunnel's SmoothGrad (the mean |gradient| over noisy copies), but its noise
        # drawn from a seeded generator: the same map on every run, and no draw from torch's process-wide RNG
        gen, out, n = torch.Generator(device=x.device).manual_seed(SMOOTHGRAD_SEED), 0.0, SMOOTHGRAD_SAMPLES
        for k in [min(internal_batch_size, n - i) for i in range(0, n, internal_batch_size)]:
            noise = torch.stack([torch.randn(x.shape[1:], generator=gen, device=x.device, dtype=x.dtype)  # copy by
                                 for _ in range(k)]) * SMOOTHGRAD_STDEV_HU  # copy: the same noise at any batch size
            grads = Saliency(forward).attribute((x.detach() + noise).requires_grad_(True), abs=True)
            out = out + grads.sum(0, keepdim=True) / n
    elif method == "occlusion":
        window, strides = occlusion_window(tuple(x.shape[1:]))
        with torch.no_grad():
            out = Occlusion(forward).attribute(x, sliding_window_shapes=window, strides=strides, baselines=AIR_HU,
                                               perturbations_per_eval=internal_batch_size)
    elif method == "gradcam":
        layer = model.net.image_encoder.gradcam_layer
        cam = LayerGradCam(forward, layer).attribute(x, relu_attributions=True)
        shape = tuple(int(v) for v in x.shape[1:])
        chain = model.transforms
        if cam.dim() not in (4, 5) or chain is None:
            raise InputError("gradcam_layer", f"{cam.dim()}D output", "is not a convolution map",
                             "use saliency or integrated_gradients for this encoder")
        if cam.dim() == 5:  # 3D encoder: [1, 1, d, h, w]
            out = chain.study_grid(cam, shape, masks)  # type: ignore[union-attr]
        else:  # 2D encoder: one map per slice [S', 1, h, w]
            out = chain.to_study_slices(chain.study_grid(cam[:, 0], shape[1:], masks), shape[0], masks)[None]  # type: ignore[union-attr]
    else:  # pragma: no cover - validated by attribute()
        raise InputError("method", method, "is not an attribution method", f"use one of {', '.join(METHODS)}")
    return out.detach().float().cpu().numpy()[0].astype(np.float32)


# ----------------------------------------------------------------------------- timeline attributions


def _event_time_text(days_before: Any) -> str:
    """Relative time (never a date): ``"day -12"`` for 12 days before the index date."""
    d = float(days_before)
    return "static" if not np.isfinite(d) else f"day -{d:.0f}" if d >= 0.5 else "day 0"


def event_attributions(model: LoadedModel, inputs: CaseInputs, horizon_days: float | None = None,
                       n_steps: int = 32) -> pd.DataFrame:
    """One row per event token (the rows of ``inputs.events``): code, time, numeric_value,
    ``days_before_index``, ``score`` (integrated gradients of the risk at the horizon over the event's code, value and time
    embeddings, from a padding-event baseline; signed, positive raises the risk) and ``attention``
    (the fusion's weight of the event, ModelOutput.event_weights; NaN when the fusion has none).
    """
    import torch
    from captum.attr import LayerIntegratedGradients

    from core.models.replica import drop_hooks

    cols = ["code", "time", "numeric_value", "days_before_index", "score", "attention"]
    events = inputs.events if inputs.events is not None else pd.DataFrame()
    net = model.net
    seqs = [getattr(m, "seq", None) for m in getattr(net, "members", [net])]
    seq = seqs[0]
    ehr = inputs.ehr
    n = int(ehr["codes"].shape[1]) if "codes" in ehr else 0
    if n == 0 or seq is None or not bool(getattr(net, "has_ehr", True)) or len(events) == 0:
        return pd.DataFrame(columns=cols)
    horizon = _check_horizon(model, horizon_days)
    times = np.asarray(model.times, dtype=float)
    model = model.replica()  # the hooks of LayerIntegratedGradients go on this call's replica only
    net = model.net
    seqs = [getattr(m, "seq", None) for m in getattr(net, "members", [net])]
    with torch.no_grad():
        base = model.encoded_batch(inputs)  # the CT encoded once; only the events vary below
        out = net(base)
    weights = out["event_weights"]
    attention = (weights[0].float().cpu().numpy() if weights is not None else np.full(n, np.nan))[:n]
    codes = ehr["codes"]
    values = ehr["values"].float()
    missing = ehr["value_missing"].float()
    dt = ehr["dt_days"].float()

    def forward(c: torch.Tensor, v: torch.Tensor, m: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        batch = _expand(base, c.shape[0])
        batch.update({"codes": c, "values": v, "value_missing": m, "dt_days": d})
        return risk_at(net(batch)["survival"], times, horizon)

    layers = [layer for s in seqs for layer in (s.code, s.value, s.time)]
    lig = LayerIntegratedGradients(forward, layers[0])
    # the three embeddings are parallel inputs of the token, not chained: the list is set after __init__, whose
    # only use of it is the "Multiple layers provided" warning (no process-wide warning filter to change)
    lig.layer = layers
    baselines = (torch.zeros_like(codes), torch.zeros_like(values), torch.ones_like(missing), torch.zeros_like(dt))
    try:
        parts = lig.attribute((codes, values, missing, dt), baselines=baselines, n_steps=int(n_steps),
                              internal_batch_size=int(n_steps))
    finally:
        drop_hooks(net)
    score = sum(p.detach().float().sum(dim=-1)[0] for p in parts).cpu().numpy()[:n]
    ev = events.reset_index(drop=True).iloc[:n]
    return pd.DataFrame({
        "code": ev["code"].astype(str).to_numpy(),
        "time": ev["time"].to_numpy() if "time" in ev else np.full(n, pd.NaT),
        "numeric_value": pd.to_numeric(ev.get("numeric_value", pd.Series(np.nan, index=ev.index)), errors="coerce").to_numpy(),
        "days_before_index": dt[0, :n].detach().cpu().numpy().astype(float),
        "score": score.astype(float),
        "attention": attention.astype(float),
    })


def rank_slices(per_slice: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
    """The ``k`` slices with the largest sum of |map| (``per_slice``), with their share of the whole; none at zero."""
    per = np.asarray(per_slice, dtype=float)  # (a slice above zero: the total is too)
    return [(int(i), float(per[i] / per.sum())) for i in np.argsort(-per, kind="stable")[:k] if per[i] > 0]


def top_event_rows(table: pd.DataFrame, k: int = TOP_K) -> list[tuple[int, str, str, float]]:
    """The ``k`` events with the largest |score| as ``(row, code, time, score)``; time relative to the index date."""
    if table is None or len(table) == 0:
        return []
    order = np.argsort(-np.abs(table["score"].to_numpy(dtype=float)), kind="stable")[:k]
    return [(int(i), str(table["code"].iloc[i]), _event_time_text(table["days_before_index"].iloc[i]), float(table["score"].iloc[i]))
            for i in order]
