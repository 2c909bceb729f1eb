"""Model folders: save and load, never unpickling anything.

A model folder holds::

    config.json        architecture, EHR preprocessing (vocabulary, scaler), time grid
    model.safetensors  every weight, the image encoder included (predict/explain run from voxels), except
                       the frozen foundation backbone (kind "foundation"): its 117 M parameters come from
                       the installed weights package, strictly loaded once per process and shared by every
                       model (``core.models.foundation_cache``); config.json records their SHA-256
    metrics.json       validation and test metrics (core.evaluate.survival_metrics)
    MODEL_CARD.md      data, strategy, head, metrics with 95 % CIs, intended use

An image-encoder folder (``pretrain`` output) holds ``config.json`` and
``encoder.safetensors``. Weights are read with ``safetensors`` only; a file that
is a pickle (``torch.save``) is refused with a one-line ``InputError``.

``LoadedModel`` is the model API of docs/CONTRACTS.md: ``case_inputs``,
``forward`` (differentiable w.r.t. ``inputs.image``) and ``predict_case``
(survival curve with an uncertainty band, widened where needed so that
``lower <= survival <= upper``). A model trained as an ensemble of seeds
(``config.ensemble = K > 1``, the default of ``train``) shows the mean of the
members' curves and, as the band, their range (lowest to highest member). A
single network (``--ensemble 1``, and models saved before ensembles existed) uses
MC dropout: 30 stochastic passes with dropout on, the 5th-95th percentile per
time point.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from core.cohort import Cohort
from core.errors import InputError
from core.horizons import HORIZONS, risk_at
from core.models.config import ModelConfig
from core.models.replica import freeze, mc_dropout_replica, net_replica
from core.models.types import CaseInputs, CasePrediction, ModelOutput, NetBatch

if TYPE_CHECKING:
    from core.preprocess.transforms import CaseConstants, ImageTransforms

WEIGHTS = "model.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"
MC_SAMPLES = 30


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a zip from torch.save, garbage) is an InputError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise InputError("model", str(path.parent), f"has no {path.name}", "point to a model folder written by `python -m core train`")
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    kind = None
    # safetensors: an 8-byte little-endian header length, then a JSON header ("{"). Its first byte can be
    # 0x80 (a header of 128 + 256 k bytes), so the pickle signature is checked only where that layout is absent.
    layout_ok = len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"
    if not layout_ok and head[:1] == b"\x80":
        kind = "a Python pickle"
    elif not layout_ok and head[:2] == b"PK":
        kind = "a torch.save zip archive (pickle)"
    if kind is not None:
        raise InputError(path.name, kind, "not a safetensors file; pickled checkpoints are never loaded",
                         "convert the weights with safetensors.torch.save_file in a trusted environment")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(path.name, str(err).split("\n")[0][:60], "not a safetensors file",
                         "re-train the model or re-export the weights with safetensors") from None


# ----------------------------------------------------------------------------- encoder folders

def save_encoder(out: Path, state: dict[str, torch.Tensor], image_cfg: dict[str, Any], info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / ENCODER_WEIGHTS))
    write_json(out / "config.json", {"format": "core.image_encoder/1", "image": image_cfg, "pretraining": info})


def load_encoder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise InputError("image_encoder", str(folder), "has no config.json", "pass a folder written by `python -m core pretrain`")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("format") != "core.image_encoder/1":
        raise InputError("image_encoder", str(folder), "is not an image-encoder folder", "pass a folder written by `python -m core pretrain`")
    return read_safetensors(folder / ENCODER_WEIGHTS), cfg["image"]


# ----------------------------------------------------------------------------- model folders

def model_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What model.safetensors holds: the network's state without any shared pretrained backbone tensors."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()
            if ".backbone." not in f".{k}" or "image_encoder." not in k}


def save_model(out: Path, net: torch.nn.Module, cfg: ModelConfig, metrics: dict[str, Any], cohort: Cohort) -> None:
    from safetensors.torch import save_file

    from core.model_card import model_card

    out.mkdir(parents=True, exist_ok=True)
    state = model_state(net)
    save_file(state, str(out / WEIGHTS), metadata={"format": cfg.format})
    write_json(out / "config.json", cfg.to_dict())
    write_json(out / "metrics.json", metrics)
    (out / "MODEL_CARD.md").write_text(model_card(cfg, metrics, cohort))


@dataclass
class LoadedModel:
    """A model folder in memory: typed config, network (frozen: eval mode, no parameter takes a gradient), metrics,
    card, device.

    One ``LoadedModel`` is shared by every session of the app, so nothing here changes ``net``: predictions run
    in inference mode, and hooks or mode changes go on a per-call :meth:`replica` (``core.models.replica``).

    Every way into the network goes through :meth:`encoded_batch`: the case's CT
    is prepared by the model's transforms and encoded once, then the fusion and
    head run on the tokens (ensemble members, MC dropout and attributions reuse them).
    """

    config: ModelConfig
    net: torch.nn.Module
    metrics: dict[str, Any]
    model_dir: Path
    card: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def times(self) -> np.ndarray:
        return np.asarray(self.config.edges, dtype=float)

    @property
    def fusion(self) -> str:
        return self.config.fusion

    @property
    def ensemble_size(self) -> int:
        return self.config.ensemble

    @property
    def uncertainty(self) -> str:
        """How the band is made, in words (figures, reports)."""
        k = self.ensemble_size
        if self.config.band_name == "MC dropout":
            return "MC dropout, 5th-95th percentile"
        members = getattr(self.net, "members", [])
        linear = sum(1 for m in members if not bool(m.head.linear.weight.detach().any()))  # linear members
        forest = " and a random survival forest" if getattr(self.net, "forest", None) is not None else ""
        if not linear:
            return f"range of an ensemble of {k} seeds" + forest
        return f"range of an ensemble of {k - linear} networks and {linear} linear models" + forest

    @property
    def transforms(self) -> ImageTransforms | None:
        """The image preprocessing chain of this model (None without a voxel encoder)."""
        return self.config.image.transforms()

    def case_inputs(self, cohort: Cohort, subject_id: str) -> CaseInputs:
        """Inputs for one subject of ``cohort`` (image on its Volume grid, pre-index events only)."""
        from core.inputs import ehr_arrays, image_embedding_arrays
        from core.models.ehr_sequence import EventVocabulary

        sid = str(subject_id)
        cohort.row(sid)  # unknown subject -> InputError
        ecfg = self.config.ehr
        ehr = {k: torch.as_tensor(v).to(self.device) for k, v in ehr_arrays(cohort, [sid], ecfg).items()}
        events = pd.DataFrame(columns=["subject_id", "time", "code", "numeric_value"])
        if ecfg.sequence:
            vocab = EventVocabulary.from_json(ecfg.sequence)
            events = vocab.encode(cohort.events(sid), cohort.index_time(sid))[1]
            n = len(events)
            ehr = {k: (v[:, :n] if k in ("codes", "values", "value_missing", "dt_days", "event_mask") else v) for k, v in ehr.items()}
        kind = self.config.image.kind
        image = None
        image_emb = None
        present = 0.0
        slice_mm = None
        if self.config.image.voxels:
            vol = cohort.load_volume(sid)
            if vol is not None:
                image = torch.from_numpy(np.ascontiguousarray(vol.hu, dtype=np.float32))[None].to(self.device)
                present = 1.0
                slice_mm = float(vol.spacing_mm[0])
        elif kind == "embedding" and cohort.image_embeddings is not None:
            arr = image_embedding_arrays(cohort, [sid])
            image_emb = torch.as_tensor(arr["image_embedding"]).to(self.device)
            present = float(arr["image_present"][0])
        return CaseInputs(image=image, image_mask=torch.tensor([present], device=self.device), ehr=ehr, events=events,
                          image_embedding=image_emb, subject_id=sid, feature_names=ecfg.feature_names, slice_mm=slice_mm)

    def image_masks(self, hu: torch.Tensor, slice_mm: float | None = None) -> CaseConstants | None:
        """The constants of a CT under this model's transforms (lung mask, body box, the slice spacing ``slice_mm``
        when the chain resamples slices; None when the chain has none of them)."""
        chain = self.transforms
        return None if chain is None else chain.masks(hu, slice_mm)

    def encode_image(self, hu: torch.Tensor, masks: CaseConstants | None = None) -> torch.Tensor:
        """Encoder tokens of HU ``[B, S', R, C]`` (differentiable): the model's transforms, then its encoder."""
        chain = self.transforms
        assert chain is not None and self.net.image_encoder is not None  # type: ignore[attr-defined]
        return self.net.encode_image(chain(hu, masks))  # type: ignore[operator]

    def cached_tokens(self, hu: torch.Tensor) -> torch.Tensor | None:
        """Foundation models, outside autograd: the study's tokens ``[1, P, 2048]`` from the per-study
        embedding cache (encoded once and stored on a miss); None for other models or under autograd."""
        icfg = self.config.image
        if icfg.kind != "foundation" or torch.is_grad_enabled() or hu.shape[0] != 1:
            return None
        from core.models.foundation_cache import study_tokens

        assert icfg.grid is not None
        return study_tokens(hu[0], icfg.grid, icfg.hu_window, device=self.device)[None].to(self.device)

    def encoded_batch(self, inputs: CaseInputs, tokens: torch.Tensor | None = None) -> NetBatch:
        """The network batch of a case with its CT already encoded (``tokens``, or encoded here from
        ``inputs.image``; differentiable under autograd, from the embedding cache of a foundation model
        without it). Without a CT (or for a model that does not use it) no image key."""
        from core.models.net import with_image_tokens

        batch: NetBatch = {"image_present": inputs.image_mask.float().to(self.device)}
        if inputs.image_embedding is not None:
            batch["image_embedding"] = inputs.image_embedding
        batch.update(inputs.ehr)  # type: ignore[typeddict-item]
        uses = inputs.image is not None and self.net.image_encoder is not None and self.net.has_image  # type: ignore[attr-defined]
        if not uses:
            return batch
        if tokens is None:
            tokens = self.cached_tokens(inputs.image)  # type: ignore[arg-type]
        if tokens is None:
            tokens = self.encode_image(inputs.image, self.image_masks(inputs.image, inputs.slice_mm))  # type: ignore[arg-type]
        return with_image_tokens(batch, tokens, int(inputs.image.shape[1]))  # type: ignore[union-attr]

    def study_slice_weights(self, weights: torch.Tensor | None, inputs: CaseInputs) -> torch.Tensor | None:
        """Attention weights over the encoder's tokens ``[B, S']`` on the study's slices ``[B, S]`` (a chain with a
        working slice spacing makes one token per slab: ``SliceSpacing.spread_weights``); else as they are."""
        chain = self.transforms
        slices = getattr(chain, "slices", None)
        if weights is None or slices is None or inputs.image is None or inputs.slice_mm is None:
            return weights
        n = int(inputs.image.shape[1])
        if int(weights.shape[-1]) == n and slices.identity(inputs.slice_mm):
            return weights
        return slices.spread_weights(weights.float(), n, float(inputs.slice_mm))

    def _output(self, o: dict[str, Any]) -> ModelOutput:
        return ModelOutput(survival=o["survival"], risk=o["risk"], slice_weights=o["slice_weights"],
                           event_weights=o["event_weights"], attention=o["attention"])

    def forward(self, inputs: CaseInputs) -> ModelOutput:
        """Differentiable forward pass (the net is frozen in eval mode at load); gradients reach ``inputs.image``."""
        out = self._output(self.net(self.encoded_batch(inputs)))
        return dataclasses.replace(out, slice_weights=self.study_slice_weights(out.slice_weights, inputs))

    def replica(self) -> LoadedModel:
        """This model on a per-call replica of its network (``net_replica``: no tensor copied), for work
        that registers hooks or changes module modes; the shared network is never touched."""
        return dataclasses.replace(self, net=net_replica(self.net))

    def modalities_used(self, inputs: CaseInputs) -> list[str]:
        used = []
        net = self.net
        if net.has_image and float(inputs.image_mask.sum()) > 0:  # type: ignore[attr-defined]
            used.append("image")
        if net.has_ehr:  # type: ignore[attr-defined]
            e = inputs.ehr
            if "event_mask" in e and float(e["event_mask"].sum()) > 0:
                used.append("ehr_events")
            if "features_present" in e and float(e["features_present"].sum()) > 0:
                used.append("ehr_features")
            if "ehr_embedding_present" in e and float(e["ehr_embedding_present"].sum()) > 0:
                used.append("ehr_embedding")
        return used

    def predict_case(self, inputs: CaseInputs, horizons: tuple[int, ...] = HORIZONS, n_samples: int = MC_SAMPLES) -> CasePrediction:
        """Survival curve and band of one case; read-only on the shared network (inference mode, no mode
        flips: MC dropout runs on a per-call replica whose dropout draws from its own seeded generator)."""
        net = self.net
        with torch.inference_mode():
            batch = self.encoded_batch(inputs)
            point = net(batch)
            if "member_survival" in point:  # ensemble of seeds: the band is the range of the members' curves
                samples = point["member_survival"][:, 0].float().cpu().numpy()
                q = (0.0, 1.0)
            else:  # MC dropout, on tokens encoded once (the encoder has no dropout)
                rep = {k: (v.expand(n_samples, *v.shape[1:]) if v.dim() > 0 else v) for k, v in batch.items()}
                samples = mc_dropout_replica(net, seed=0)(rep)["survival"].float().cpu().numpy()
                q = (0.05, 0.95)
        surv = point["survival"][0].float().cpu().numpy()
        lower = np.minimum(np.quantile(samples, q[0], axis=0), surv)
        upper = np.maximum(np.quantile(samples, q[1], axis=0), surv)
        surv, lower, upper = (np.clip(a, 0.0, 1.0) for a in (surv, lower, upper))
        times = self.times
        sw, ew = self.study_slice_weights(point["slice_weights"], inputs), point["event_weights"]
        return CasePrediction(
            times=times, survival=surv, lower=lower, upper=upper, risk=float(point["risk"][0]),
            risk_at=risk_at(times, surv, horizons), modalities_used=self.modalities_used(inputs),
            slice_weights=None if sw is None else sw[0].float().cpu().numpy(),
            event_weights=None if ew is None else ew[0].float().cpu().numpy(),
            attention={k: (self.study_slice_weights(v, inputs) if k.startswith("ehr<-img") else v)[0].float().cpu().numpy()
                       for k, v in point["attention"].items()},  # image tokens as keys: on the study's slices
        )


def load_model(model_dir: Path | str, device: str = "cpu") -> LoadedModel:
    """Load a model folder (config.json + model.safetensors); never unpickles."""
    from core.models.net import build_net
    from core.runtime import resolve_device

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("model", str(model_dir), "is not a folder", "pass a model folder written by `python -m core train`")
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise InputError("model", str(model_dir), "has no config.json", "pass a model folder written by `python -m core train`")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError("config.json", f"line {err.lineno}", "is not valid JSON", "re-train the model") from None
    if not str(raw.get("format", "")).startswith("core.models.net.SurvivalNet"):
        raise InputError("config.json", raw.get("format"), "is not a SurvivalNet model config", "pass a model folder written by `python -m core train`")
    cfg = ModelConfig.from_dict(raw)
    state = read_safetensors(model_dir / WEIGHTS)
    dev = resolve_device(device)
    net = build_net(cfg)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # the same names, other shapes: the weights of another model beside this config.json
        shapes = sum("size mismatch" in line for line in str(err).splitlines())
        raise InputError(WEIGHTS, f"{shapes} tensors of other shapes", "weights do not match config.json",
                         "re-train the model; do not mix files of different models") from None
    # folders saved before the training mean of the linear EHR term was stored keep its old value, 0
    missing = [k for k in missing if not k.endswith("wide_mean")]
    if missing or unexpected:
        raise InputError(WEIGHTS, f"{len(missing)} missing, {len(unexpected)} unexpected tensors",
                         "weights do not match config.json", "re-train the model; do not mix files of different models")
    freeze(net.to(dev))
    metrics = json.loads((model_dir / "metrics.json").read_text()) if (model_dir / "metrics.json").exists() else {}
    card = (model_dir / "MODEL_CARD.md").read_text() if (model_dir / "MODEL_CARD.md").exists() else ""
    return LoadedModel(cfg, net, metrics, model_dir, card, dev)
