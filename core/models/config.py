"""The typed configuration of a survival model: what config.json holds, read once.

``ModelConfig.from_dict`` reads the JSON of a model folder (older folders lack
some keys: each default below is the behaviour those folders were trained
with) and ``to_dict`` writes it back in the same layout, so a folder keeps
loading across versions. Everything else in the package reads the typed
fields, never the raw dictionary.

>>> cfg = ModelConfig.from_dict({"fusion": "image_only", "head": "discrete", "dim": 8, "edges": [0, 1, 2],
...     "image": {"kind": "2d", "out_dim": 8, "size": 16, "channels": [4], "hu_window": [-1000, 1000]},
...     "ehr": {"sequence": None, "tabular": None, "embedding_dim": None}})
>>> cfg.image.kind, cfg.image.lung_mask, cfg.ensemble, cfg.ehr.has_any
('2d', False, 1, False)
>>> ModelConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import InputError

if TYPE_CHECKING:
    from core.models.foundation_cache import FoundationTransforms
    from core.preprocess.transforms import ImageTransforms

FORMAT = "core.models.net.SurvivalNet/1"
#: ``ModelConfig.extra`` key: set by training when the linear EHR term fitted after the networks gave every one of
#: them weight 0, so the risk does not change with the CT; its value is the model card's note (``core.predict`` warns).
CT_UNREAD = "ct_unread"
#: The foundation backbone's default working grid (slices, rows, cols) and HU window (``core.models.i3resnet``).
FOUNDATION_GRID: tuple[int, int, int] = (80, 112, 112)
FOUNDATION_HU_WINDOW: tuple[float, float] = (-1000.0, 200.0)


def _slice_mm(value: Any) -> float | str | None:
    """A config's ``slice_mm``: None (the study's own slices), ``"auto"`` (before training) or a spacing in mm."""
    if value is None or value == "auto":
        return value
    return float(value)


@dataclass(frozen=True)
class ImageConfig:
    """The image side: ``kind`` in 2d | 3d | foundation | embedding | none, and the settings of that kind.

    foundation: the frozen pretrained CT backbone (``core.models.foundation_cache``); ``grid`` is its
    working resolution, ``hu_window`` its 0..1 window, ``out_dim`` 2048, ``weights`` the weight set and
    ``weights_sha256`` the SHA-256 of the weights it was trained on (other weights are refused on load).

    >>> cfg = ImageConfig.from_dict({"kind": "foundation", "out_dim": 2048})
    >>> cfg.grid, cfg.hu_window, cfg.weights, cfg.voxels
    ((80, 112, 112), (-1000.0, 200.0), 'astra', True)
    """

    kind: str = "none"
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    out_dim: int = 64
    size: int = 64                                # 2d: slices resized to size x size
    channels: tuple[int, ...] = (8, 16, 32, 64)   # conv widths (2d or 3d)
    grid: tuple[int, int, int] | None = None      # 3d: volume resized to this grid
    lung_mask: bool = False                       # 2d: the optional lung-mask transform
    lung_close: float = 0.0
    lung_medial: bool = False
    emb_dim: int | None = None                    # embedding: width of one precomputed token
    emb_tokens: int | None = None
    weights: str | None = None                    # foundation: the pretrained weight set ("astra")
    weights_sha256: str | None = None             # foundation: SHA-256 of those weights
    # 2d, organ-agnostic encoder (absent in older folders: one channel, stride 2 everywhere, mean+max pooling)
    windows: tuple[tuple[float, float], ...] = ()  # HU windows as channels (ChannelStack); () = the input alone
    contrast: tuple[int, ...] = ()                # local-contrast kernels (pixels) of every window channel
    strides: tuple[int, ...] | None = None        # per conv layer; None = 2 each
    pool: str = "meanmax"                         # spatial pooling of the last map: meanmax | attnmax
    body_crop: bool = False                       # 2d / 3d: one square box around the body before the resize (BodyCrop)
    z_scales: tuple[int, ...] = ()                # 2d: slice context over windows of these slice counts (SliceScales); () = none
    detect_z: tuple[int, ...] = ()                # 2d detector: same-position logit means over these slice counts; () = none
    slice_mm: float | str | None = None           # 2d: working slice spacing (SliceSpacing); "auto" until training resolves it

    @property
    def voxels(self) -> bool:
        """True when the model reads CT voxels (2d, 3d or foundation), False for precomputed embeddings or no image."""
        return self.kind in ("2d", "3d", "foundation")

    def transforms(self) -> ImageTransforms | FoundationTransforms | None:
        """The preprocessing chain HU -> encoder input (None for embeddings or no image).

        2d: HU window, the lung mask when ``lung_mask`` (an organ rule for chest tasks), the body box when
        ``body_crop``, slices resized to ``size``, then (inside the encoder, when ``windows``) the windows and local-contrast channels; 3d: HU window, the volume resized to ``grid``; foundation: the volume resized to ``grid``
        (area / trilinear), the window scaled to 0..1, RAS reorientation (``core.models.foundation_cache``).
        """
        if not self.voxels:
            return None
        if self.kind == "foundation":
            from core.models.foundation_cache import FoundationTransforms, ResizeVolumeArea, UnitWindow

            assert self.grid is not None
            return FoundationTransforms(ResizeVolumeArea(self.grid), UnitWindow(*self.hu_window))
        from core.preprocess.transforms import BodyCrop, HUWindow, ImageTransforms, LungMaskFill, ResizeSlices, ResizeVolume

        window = HUWindow(*self.hu_window)
        crop = BodyCrop() if self.body_crop else None
        if self.kind == "3d":
            assert self.grid is not None
            return ImageTransforms(window, ResizeVolume(self.grid), crop=crop)
        lung = LungMaskFill(window, self.lung_close, self.lung_medial) if self.lung_mask else None
        stack = None
        if self.windows:
            from core.preprocess.transforms import ChannelStack

            stack = ChannelStack(window, self.windows, self.contrast)
        slices = None
        if self.slice_mm is not None:
            from core.preprocess.slices import SliceSpacing

            if isinstance(self.slice_mm, str):
                raise InputError("slice_mm", self.slice_mm, "is not resolved to a spacing in mm",
                                 "train the model (training sets it from its studies), or give a number of mm")
            slices = SliceSpacing(float(self.slice_mm))
        return ImageTransforms(window, ResizeSlices(self.size), lung, stack, crop, z_context=bool(self.detect_z),
                               slices=slices)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageConfig:
        kind = str(d.get("kind", "none"))
        found = kind == "foundation"
        grid = d.get("grid", FOUNDATION_GRID if found else None)
        return cls(
            kind=kind,
            hu_window=tuple(float(v) for v in d.get("hu_window", FOUNDATION_HU_WINDOW if found else (-1000.0, 1000.0))),  # type: ignore[arg-type]
            out_dim=int(d.get("out_dim", 2048 if found else 64)),
            size=int(d.get("size", 64)),
            channels=tuple(int(c) for c in d.get("channels", (8, 16, 32, 64))),
            grid=tuple(int(g) for g in grid) if grid is not None else None,  # type: ignore[arg-type]
            lung_mask=bool(d.get("lung_mask", False)),
            lung_close=float(d.get("lung_close", 0.0)),
            lung_medial=bool(d.get("lung_medial", False)),
            emb_dim=int(d["emb_dim"]) if d.get("emb_dim") is not None else None,
            emb_tokens=int(d["emb_tokens"]) if d.get("emb_tokens") is not None else None,
            weights=str(d.get("weights", "astra")) if found else None,
            weights_sha256=str(d["weights_sha256"]) if found and d.get("weights_sha256") else None,
            windows=tuple((float(w[0]), float(w[1])) for w in d.get("windows") or ()),
            contrast=tuple(int(k) for k in d.get("contrast") or ()),
            strides=tuple(int(s) for s in d["strides"]) if d.get("strides") else None,
            pool=str(d.get("pool", "meanmax")),
            body_crop=bool(d.get("body_crop", False)) and kind in ("2d", "3d"),
            z_scales=tuple(int(w) for w in d.get("z_scales") or ()) if kind == "2d" else (),
            slice_mm=_slice_mm(d.get("slice_mm")) if kind == "2d" else None,
            detect_z=tuple(int(w) for w in d.get("detect_z") or ()) if kind == "2d" else (),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "hu_window": list(self.hu_window), "out_dim": self.out_dim}
        if self.kind == "2d":
            out.update(size=self.size, channels=list(self.channels), lung_mask=self.lung_mask)
            if self.lung_close:
                out["lung_close"] = self.lung_close
            if self.lung_medial:
                out["lung_medial"] = True
            if self.windows:
                out.update(windows=[list(w) for w in self.windows], contrast=list(self.contrast))
            if self.strides is not None:
                out["strides"] = list(self.strides)
            if self.pool != "meanmax":
                out["pool"] = self.pool
            if self.z_scales:
                out["z_scales"] = list(self.z_scales)
            if self.detect_z:
                out["detect_z"] = list(self.detect_z)
            if self.slice_mm is not None:
                out["slice_mm"] = self.slice_mm
        elif self.kind == "3d":
            out.update(grid=list(self.grid or ()), channels=list(self.channels))
        if self.body_crop and self.kind in ("2d", "3d"):
            out["body_crop"] = True
        elif self.kind == "foundation":
            out.update(grid=list(self.grid or FOUNDATION_GRID), weights=self.weights, weights_sha256=self.weights_sha256)
        elif self.kind == "embedding":
            out.update(emb_dim=self.emb_dim, emb_tokens=self.emb_tokens)
        return out


@dataclass(frozen=True)
class EHRConfig:
    """The EHR side, fitted on the train split: event vocabulary, feature scaler, embedding width."""

    sequence: dict[str, Any] | None = None   # core.models.ehr_sequence.EventVocabulary.to_json()
    tabular: dict[str, Any] | None = None    # core.models.ehr_tabular.TabularScaler.to_json()
    embedding_dim: int | None = None
    layers: int = 1

    @property
    def has_any(self) -> bool:
        return bool(self.sequence or self.tabular or self.embedding_dim)

    @property
    def feature_names(self) -> list[str]:
        return list(self.tabular["columns"]) if self.tabular else []

    @property
    def summarises_timeline(self) -> bool:
        """Whether the tabular features are the timeline's summary (``core.models.ehr_summary``), not features.csv."""
        return bool(self.tabular) and self.tabular.get("source") == "timeline_summary"

    @property
    def curated_features(self) -> list[str]:
        """The features.csv columns the model reads (none when its tabular features summarise the timeline)."""
        return [] if self.summarises_timeline else self.feature_names

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EHRConfig:
        return cls(sequence=d.get("sequence") or None, tabular=d.get("tabular") or None,
                   embedding_dim=int(d["embedding_dim"]) if d.get("embedding_dim") else None, layers=int(d.get("layers", 1)))

    def to_dict(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "tabular": self.tabular, "embedding_dim": self.embedding_dim, "layers": self.layers}


@dataclass(frozen=True)
class ModelConfig:
    """A model: fusion strategy, survival head, time grid, image and EHR sides, ensemble size."""

    fusion: str
    head: str
    edges: tuple[float, ...]
    image: ImageConfig
    ehr: EHRConfig
    dim: int = 64
    dropout: float = 0.1
    heads: int = 2
    proportional_head: bool = False
    image_anchor: bool = False
    ehr_linear: bool = False
    ensemble: int = 1
    seed: int = 0
    format: str = FORMAT
    # a detector encoder's strategies that read the image: slice windows of the study-level linear image term, the
    # first inputs of the head's linear term (core.models.pooling.StudyStats; the linear members of
    # core.train.image_linear); () = none, and absent from config.json
    image_linear: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not read, kept

    _KNOWN = ("format", "fusion", "head", "proportional_head", "dim", "dropout", "heads", "edges", "image", "ehr",
              "seed", "image_anchor", "ehr_linear", "ensemble", "image_linear")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        for key in ("fusion", "head", "edges", "image", "ehr"):
            if key not in d:
                raise InputError("config.json", f"no {key!r}", "is not a complete model config",
                                 "re-train the model with `python -m core train`")
        return cls(
            fusion=str(d["fusion"]), head=str(d["head"]), edges=tuple(float(e) for e in d["edges"]),
            image=ImageConfig.from_dict(d["image"]), ehr=EHRConfig.from_dict(d["ehr"]),
            dim=int(d.get("dim", 64)), dropout=float(d.get("dropout", 0.1)), heads=int(d.get("heads", 2)),
            proportional_head=bool(d.get("proportional_head", False)), image_anchor=bool(d.get("image_anchor", False)),
            ehr_linear=bool(d.get("ehr_linear", False)), ensemble=int(d.get("ensemble", 1) or 1),
            seed=int(d.get("seed", 0)), format=str(d.get("format", FORMAT)),
            image_linear=tuple(int(w) for w in d.get("image_linear", ())),
            extra={k: v for k, v in d.items() if k not in cls._KNOWN},
        )

    @property
    def band_name(self) -> str:
        """The uncertainty band's short name (a legend entry): ``"MC dropout"`` for one network, else
        ``"ensemble range"``; ``core.registry.LoadedModel.uncertainty`` words it in full."""
        return "MC dropout" if self.ensemble < 2 else "ensemble range"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "fusion": self.fusion, "head": self.head, "proportional_head": self.proportional_head,
            "dim": self.dim, "dropout": self.dropout, "heads": self.heads, "edges": list(self.edges),
            "image": self.image.to_dict(), "ehr": self.ehr.to_dict(), "seed": self.seed,
            "image_anchor": self.image_anchor, "ehr_linear": self.ehr_linear, "ensemble": self.ensemble,
            **({"image_linear": list(self.image_linear)} if self.image_linear else {}), **self.extra,
        }
