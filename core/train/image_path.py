"""The image path after the encoder (token projection, slice context and position, the image-only pooling and head):
its state out of stage A, and the warm start of a strategy's image path from it in the fusion stage."""

from __future__ import annotations

import torch


def image_path_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The image path after the encoder: token projection, slice context and position, the fusion's image-only pooling."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in _image_path_parts(net).items():
        if mod is not None:
            out.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    return out


def _image_path_parts(net: torch.nn.Module) -> dict[str, torch.nn.Module | None]:
    from core.models.fusion import ImageAnchored, ImageOnly

    f = net.fusion
    branch = f if isinstance(f, ImageOnly) else (f.anchor if isinstance(f, ImageAnchored) else None)
    return {"image_proj": net.image_proj, "slice_pos": net.slice_pos, "slice_scales": net.slice_scales,
            "pool": branch.pool if branch is not None else f.image_pool(),
            "mlp": branch.mlp if branch is not None else None,
            "head": net.head if branch is not None and net.cfg.head == "discrete" else None}


def load_image_path(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Warm-start ``net``'s image path from ``image_path_state`` of the image stage; returns the parts loaded."""
    loaded = []
    for name, mod in _image_path_parts(net).items():
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        if mod is not None and sub:
            # the head's linear EHR term (``wide``) has no image-stage counterpart: it keeps its zero start
            missing, unexpected = mod.load_state_dict(sub, strict=False)
            if unexpected or [k for k in missing if not k.startswith("wide.")]:
                raise RuntimeError(f"image path {name}: missing {missing}, unexpected {unexpected}")
            loaded.append(name)
    return loaded
