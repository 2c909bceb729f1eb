"""Per-study embedding cache for the frozen foundation backbone: each study is encoded once.

``embed_study(hu, spacing_mm, device=..., resolution=...)`` returns the patch
tokens ``[P, 2048]`` (float32, CPU) of ``core.models.i3resnet.FoundationEncoder3D``
for one study. The result is stored as a safetensors file under
``<cache>/foundation/embeddings/<key>.safetensors`` (``<cache>`` is
``$CTEHR_CACHE_DIR`` or ``~/.cache/ctehr``), where ``key`` is the SHA-256 of
the HU array's bytes (as C-ordered float32) and shape, the voxel spacing, the
preprocessing configuration (working grid, HU window, preprocessing version)
and the weights' SHA-256. Comparing fusion strategies, retraining, or reopening
a case therefore reads the file instead of running the 117 M-parameter network.

On CUDA the forward pass runs under bfloat16 autocast, on the CPU in float32;
the key does not depend on the device, so tokens computed on a GPU are reused
on the CPU (the file's metadata records where they were computed). One
backbone per device is kept in memory and shared by all working grids.

The backbone as a model's image encoder (``--image-encoder-kind foundation``). A foundation model's image path is ``FoundationTokens(FoundationTransforms(hu))``:

* ``FoundationTransforms`` -- the backbone's preprocessing as named transforms
  (in the style of ``core.preprocess.transforms``), built by
  ``ImageConfig.transforms()`` so that training, prediction and explanation run
  the same steps and the model card names them: ``resize_volume_area`` (the HU
  volume to the working ``grid``, area averaging along shrinking axes, then
  trilinear), ``hu_window_unit`` (clip to ``hu_window``, scale to 0..1) and
  ``reorient_ras`` (study orientation -> the network's ``[Z, X, Y]``), in the
  order of ``core.models.i3resnet.FoundationEncoder3D.preprocess`` and with its
  functions, so ``FoundationTokens(FoundationTransforms(hu))`` equals
  ``FoundationEncoder3D(hu)`` bit for bit and the per-study embedding cache
  (``embed_study``) serves both. All steps are
  differentiable: Captum's gradients come back on the study's own voxels.
* ``FoundationTokens`` -- the pretrained I3ResNet-152, frozen, on the prepared
  input ``[B, 1, Z, X, Y]``: patch tokens ``[B, P, 2048]`` slice slab first.
  The backbone is the process-wide, strictly loaded one of
  ``shared_backbone``: it is *not* a registered
  submodule, so its 117 M parameters are not in the model's ``state_dict``
  (not saved into model.safetensors, not expected when loading, untouched by
  ``requires_grad_`` or ``to`` of the model) and every model in the process
  shares one copy per device. ``gradcam_layer`` is the study-oriented feature
  map and ``patch_slices`` maps token weights to slices.

``study_tokens`` gives the tokens of one study through the embedding cache (no
gradient): training encodes every subject once and prediction of a reopened
study reads the stored file. The network's input does not depend on the voxel
spacing (the working grid is fixed), so the tokens of a model are keyed with a
unit spacing (``TOKEN_SPACING``): a study is found in the cache whether it was
encoded in training or for a reopened case.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import InputError
from core.models.foundation_weights import cache_dir as default_cache_dir
from core.models.foundation_weights import load_pretrained, weights_sha256
from core.models.i3resnet import (
    ASTRA_HU_WINDOW,
    DEFAULT_GRID,
    FoundationEncoder3D,
    I3ResNet,
    StudyGrid,
    StudyGridTokens,
    patch_slice_matrix,
    resize_volume,
    study_to_network,
)

Progress = Callable[[float, str], None] | None

#: Bumped whenever ``FoundationEncoder3D.preprocess`` changes what the network sees.
PREPROCESS_VERSION = 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device", str(device), "CUDA is not available on this machine", "use --device cpu or auto")
    return dev


_backbones: dict[tuple[str, str], I3ResNet] = {}
_backbones_lock = threading.Lock()


def shared_backbone(device: str | torch.device = "cpu", weights: str = "astra") -> I3ResNet:
    """The process-wide pretrained backbone on ``device`` (built and loaded on first use, thread-safe, eval mode)."""
    key = (str(resolve_device(device)), weights)
    # built outside inference mode even when first asked for inside a prediction: its weights must stay usable
    # under autograd (saliency and Grad-CAM through the backbone)
    with _backbones_lock, torch.inference_mode(False):
        net = _backbones.get(key)
        if net is None:
            net = I3ResNet()
            load_pretrained(net, weights)
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            net = net.to(torch.device(key[0]))
            _backbones[key] = net
    return net


def shared_encoder(device: str | torch.device = "cpu", resolution: Sequence[int] = DEFAULT_GRID,
                   hu_window: tuple[float, float] = ASTRA_HU_WINDOW, weights: str = "astra") -> FoundationEncoder3D:
    """A ``FoundationEncoder3D`` for ``resolution`` that shares the process-wide backbone on ``device``."""
    grid = _grid(resolution)
    return FoundationEncoder3D(grid=grid, hu_window=hu_window, backbone=shared_backbone(device, weights)).eval()


def _grid(resolution: Sequence[int]) -> tuple[int, int, int]:
    grid = tuple(int(r) for r in resolution)
    if len(grid) != 3 or min(grid) < 16:
        raise InputError("resolution", tuple(resolution), "must be 3 sizes (slices, rows, cols), each >= 16",
                         "use e.g. (80, 112, 112) or the full (160, 224, 224)")
    return grid  # type: ignore[return-value]


def _as_hu(hu: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = hu.detach().cpu().numpy() if isinstance(hu, torch.Tensor) else np.asarray(hu)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise InputError("hu", tuple(arr.shape), "must be one study [slices, rows, cols]", "pass Volume.hu")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError("hu", "non-finite values", "the volume holds NaN or inf", "load the study with core.io")
    return arr


def embedding_key(hu: np.ndarray | torch.Tensor, spacing_mm: Sequence[float], *, resolution: Sequence[int] = DEFAULT_GRID,
                  hu_window: tuple[float, float] = ASTRA_HU_WINDOW, weights: str = "astra") -> str:
    """Hex SHA-256 identifying one study's embedding: HU bytes and shape, spacing, preprocessing, weights."""
    arr = _as_hu(hu)
    return _key(arr, spacing_mm, _grid(resolution), hu_window, weights)


def _key(arr: np.ndarray, spacing_mm: Sequence[float], grid: tuple[int, int, int], hu_window: tuple[float, float],
         weights: str) -> str:
    spacing = [round(float(s), 6) for s in spacing_mm]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError("spacing_mm", tuple(spacing_mm), "must be 3 positive numbers (slice, row, col)",
                         "pass Volume.spacing_mm")
    config = {"shape": list(arr.shape), "dtype": "float32", "spacing_mm": spacing, "grid": list(grid),
              "hu_window": [float(hu_window[0]), float(hu_window[1])], "preprocess": PREPROCESS_VERSION,
              "weights": weights, "weights_sha256": weights_sha256(weights)}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def embedding_path(key: str, cache_dir: Path | None = None) -> Path:
    """Where the embedding with ``key`` is (or will be) stored."""
    return (cache_dir or default_cache_dir()) / "foundation" / "embeddings" / f"{key}.safetensors"


def is_cached(hu: np.ndarray | torch.Tensor, spacing_mm: Sequence[float], *, resolution: Sequence[int] = DEFAULT_GRID,
              hu_window: tuple[float, float] = ASTRA_HU_WINDOW, cache_dir: Path | None = None) -> bool:
    """True when ``embed_study`` with these arguments would read the cache instead of running the network."""
    key = embedding_key(hu, spacing_mm, resolution=resolution, hu_window=hu_window)
    return embedding_path(key, cache_dir).is_file()


def embed_study(hu: np.ndarray | torch.Tensor, spacing_mm: Sequence[float], *, device: str | torch.device = "auto",
                resolution: Sequence[int] = DEFAULT_GRID, progress: Progress = None, cache_dir: Path | None = None,
                hu_window: tuple[float, float] = ASTRA_HU_WINDOW) -> torch.Tensor:
    """Patch tokens ``[P, 2048]`` (float32, CPU) of one study, from the cache or computed once and stored.

    ``hu`` is the study's HU ``[slices, rows, cols]`` (``Volume.hu``, or
    ``[1, S, R, C]``), ``spacing_mm`` its ``(slice, row, col)`` spacing,
    ``resolution`` the working grid ``(slices, rows, cols)``. Tokens are
    ordered slice slab first; ``shared_encoder(device, resolution)`` gives the
    matching ``token_grid`` and ``patch_slices``. ``progress(fraction,
    label)`` is called while the weights load and once per backbone block.
    """
    arr = _as_hu(hu)
    grid = _grid(resolution)
    key = _key(arr, spacing_mm, grid, hu_window, "astra")
    path = embedding_path(key, cache_dir)
    if path.is_file():
        from safetensors.torch import load_file

        if progress is not None:
            progress(1.0, "foundation embedding read from the cache")
        return load_file(str(path))["tokens"]
    dev = resolve_device(device)
    if progress is not None:
        progress(0.0, "loading the foundation backbone")
    encoder = shared_encoder(dev, grid, hu_window)
    report = progress
    step = None if report is None else (
        lambda fraction: report(0.1 + 0.85 * fraction, "encoding the study with the foundation backbone"))
    x = torch.from_numpy(arr)[None].to(dev)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        tokens = encoder(x, step)
    tokens = tokens[0].float().cpu().contiguous()
    _write(path, tokens, {"key": key, "token_grid": list(encoder.token_grid), "resolution": list(grid),
                          "hu_window": [float(hu_window[0]), float(hu_window[1])],
                          "spacing_mm": [float(v) for v in spacing_mm], "shape": list(arr.shape),
                          "weights_sha256": weights_sha256("astra"), "preprocess": PREPROCESS_VERSION,
                          "compute": "cuda-bf16-autocast" if dev.type == "cuda" else f"{dev.type}-float32"})
    if progress is not None:
        progress(1.0, "foundation embedding stored")
    return tokens


def embedding_info(path: Path) -> dict[str, object]:
    """What a cached embedding file records: key, token_grid, resolution, hu_window, spacing_mm, shape, compute, ..."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return dict(json.loads(meta.get("ctehr", "{}")))


def _write(path: Path, tokens: torch.Tensor, metadata: dict[str, object]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    save_file({"tokens": tokens}, str(tmp), metadata={"ctehr": json.dumps(metadata, sort_keys=True)})
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the backbone as a model's encoder

#: The spacing passed to the embedding cache for model tokens (the tokens do not depend on it).
TOKEN_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)
#: Width of one foundation token (the last stage's channels).
TOKEN_DIM = 2048


@dataclass(frozen=True)
class ResizeVolumeArea:
    """HU ``[B, S, R, C]`` -> ``[B, 1, *grid]``: area averaging along shrinking axes, trilinear along growing ones."""

    grid: tuple[int, int, int]
    name = "resize_volume_area"

    def __call__(self, hu: torch.Tensor) -> torch.Tensor:
        return resize_volume(hu.float().unsqueeze(1), self.grid)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "grid": list(self.grid)}


@dataclass(frozen=True)
class UnitWindow:
    """Clip HU to ``[low, high]`` and scale linearly to ``[0, 1]`` (``ScaleIntensityRange`` to 0..1 with clipping)."""

    low: float = -1000.0
    high: float = 200.0
    name = "hu_window_unit"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(self.low, self.high) - self.low) / (self.high - self.low)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "low_hu": self.low, "high_hu": self.high, "range": [0, 1]}


@dataclass(frozen=True)
class ReorientRAS:
    """Study orientation ``[..., S, R, C]`` -> the network's ``[..., Z, X, Y]`` (RAS, ``study_to_network``)."""

    name = "reorient_ras"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return study_to_network(x)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "layout": "[Z, X, Y]: columns and rows reversed, in-plane transposed"}


@dataclass(frozen=True)
class FoundationTransforms:
    """The chain HU ``[B, S, R, C]`` -> backbone input ``[B, 1, Z, X, Y]`` in 0..1 (see the module docstring).

    Same interface as ``core.preprocess.transforms.ImageTransforms`` (no constant masks, not per slice).

    >>> chain = FoundationTransforms(ResizeVolumeArea((16, 32, 32)), UnitWindow(-1000, 200))
    >>> [t["name"] for t in chain.describe()], tuple(chain(torch.full((1, 20, 40, 40), -400.0)).shape)
    (['resize_volume_area', 'hu_window_unit', 'reorient_ras'], (1, 1, 16, 32, 32))
    """

    resize: ResizeVolumeArea
    window: UnitWindow
    orient: ReorientRAS = ReorientRAS()
    per_slice = False

    def per_slice_for(self, slice_mm: float | None) -> bool:
        return False

    def masks(self, hu: torch.Tensor, slice_mm: float | None = None) -> None:
        return None  # the volume is resized to the backbone's grid whatever its spacing

    def __call__(self, hu: torch.Tensor, masks: None = None) -> torch.Tensor:
        return self.orient(self.window(self.resize(hu)))

    def study_grid(self, maps: torch.Tensor, shape: tuple[int, ...], masks: None = None) -> torch.Tensor:
        """A map ``[N, 1, d, h, w]`` on the backbone's grid -> ``[N, S, R, C]`` (trilinear) for ``shape`` ``(S, R, C)``."""
        import torch.nn.functional as F

        return F.interpolate(maps.float(), size=tuple(int(v) for v in shape), mode="trilinear", align_corners=False)[:, 0]

    def encoder_pixel_mm(self, hu: np.ndarray, spacing_mm: tuple[float, float, float] | list[float]) -> float:
        """The in-plane size in mm of one voxel of the backbone's grid for a study (``hu`` ``[S, R, C]``; spacing
        (slice, row, col) in mm): the mean of rows and columns over the grid's rows and columns."""
        _, r, c = np.shape(hu)
        return (r * float(spacing_mm[1]) / self.resize.grid[1] + c * float(spacing_mm[2]) / self.resize.grid[2]) / 2.0

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in (self.resize, self.window, self.orient)]

    def soft_tissue_step(self) -> tuple[float, float] | None:
        return None


def _check_weights(weights: str, expected_sha256: str | None) -> None:
    have = weights_sha256(weights)
    if expected_sha256 is not None and expected_sha256 != have:
        raise InputError("config.json", f"weights_sha256 {expected_sha256[:12]}...",
                         f"the model was trained on other {weights!r} foundation weights than the installed {have[:12]}...",
                         "install the weights the model was trained with or re-train it with `python -m core train`")


class FoundationTokens(StudyGridTokens, nn.Module):
    """Frozen pretrained backbone on the prepared input ``[B, 1, Z, X, Y]`` -> tokens ``[B, P, 2048]``.

    ``grid`` is the working grid ``(slices, rows, cols)`` of the transforms; ``weights`` the weight set
    (``"astra"``); ``expected_sha256`` (from config.json) refuses other weights. ``backbone`` replaces the
    shared pretrained one (tests with a random network); it is held outside the module tree either way.
    """

    def __init__(self, grid: Sequence[int], weights: str = "astra", expected_sha256: str | None = None,
                 backbone: I3ResNet | None = None) -> None:
        super().__init__()
        self.grid: tuple[int, int, int] = (int(grid[0]), int(grid[1]), int(grid[2]))
        self.weights = weights
        if backbone is None:
            _check_weights(weights, expected_sha256)
            backbone = shared_backbone("cpu", weights)
        object.__setattr__(self, "_backbone", backbone)  # not a submodule: kept out of state_dict and parameters()
        self.study_grid = StudyGrid()
        self.out_dim = int(backbone.out_channels)
        z, x, y = I3ResNet.feature_grid((self.grid[0], self.grid[2], self.grid[1]))
        self.token_grid: tuple[int, int, int] = (z, y, x)

    @property
    def backbone(self) -> I3ResNet:
        return self._backbone  # type: ignore[no-any-return]

    def _backbone_on(self, device: torch.device) -> I3ResNet:
        net = self.backbone
        if next(net.parameters()).device != device:
            net = shared_backbone(device, self.weights)
            object.__setattr__(self, "_backbone", net)
        return net

    def forward(self, x: torch.Tensor, progress: Callable[[float], None] | None = None) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected the prepared input [B, 1, Z, X, Y] (FoundationTransforms), got {tuple(x.shape)}")
        net = self._backbone_on(x.device)
        return self.study_grid(net(x.float(), progress)).flatten(2).transpose(1, 2)

    def patch_slices(self, n_slices: int) -> torch.Tensor:
        """``[P, S]``: each token's weight spread over the input slices its slab covers (rows sum to 1)."""
        return patch_slice_matrix(self.token_grid, self.grid[0], n_slices)


def study_tokens(hu: np.ndarray | torch.Tensor, grid: Sequence[int], hu_window: Sequence[float], *,
                 device: str | torch.device = "cpu", progress: Callable[[float, str], None] | None = None,
                 cache_dir: Path | None = None) -> torch.Tensor:
    """Tokens ``[P, 2048]`` (float32, CPU) of one study ``[S, R, C]`` HU, from the embedding cache or encoded once."""
    return embed_study(hu, TOKEN_SPACING, device=device, resolution=tuple(int(g) for g in grid),
                       hu_window=(float(hu_window[0]), float(hu_window[1])), progress=progress, cache_dir=cache_dir)


def tokens_cached(hu: np.ndarray | torch.Tensor, grid: Sequence[int], hu_window: Sequence[float],
                  cache_dir: Path | None = None) -> bool:
    """True when ``study_tokens`` would read the cache rather than run the backbone."""
    return is_cached(hu, TOKEN_SPACING, resolution=tuple(int(g) for g in grid),
                     hu_window=(float(hu_window[0]), float(hu_window[1])), cache_dir=cache_dir)
