"""Carry the foundation weights' safetensors copy to a machine that takes at most ~35 MB per transfer.

The copy (235 MB of bfloat16) is split into its high and low bytes: the high bytes (sign and exponent) are
xz-compressed (117 -> 43 MB), the low bytes (mantissa) are stored as they are; the result is cut into parts.
``unpack`` joins the parts, rebuilds the file, checks it against the SHA-256 in its sidecar and writes both into
``CACHE/foundation`` (use that folder as ``CTEHR_CACHE_DIR`` there). Lossless; the bytes are checked.

    python bench/gpu/weights_parts.py pack OUT_PREFIX [--parts 5]   # writes OUT_PREFIX1/w.part .. OUT_PREFIXn/w.part
                                                                     # and OUT_PREFIX0/astra_i3resnet152.json
    python bench/gpu/weights_parts.py unpack PARTS_DIR SIDECAR CACHE  # PARTS_DIR holds 1.part .. n.part
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np


def pack(prefix: str, parts: int) -> None:
    """Split the local safetensors copy into ``parts`` files and copy its sidecar beside them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from core.models.foundation_weights import ensure_weights

    src = ensure_weights()
    raw = np.fromfile(src, dtype=np.uint8)
    n = len(raw)
    if n % 2:
        raw = np.concatenate([raw, np.zeros(1, np.uint8)])
    high = lzma.compress(raw[1::2].tobytes(), preset=6)
    blob = len(high).to_bytes(8, "little") + n.to_bytes(8, "little") + high + raw[0::2].tobytes()
    step = -(-len(blob) // parts)
    for i in range(parts):
        folder = Path(f"{prefix}{i + 1}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "w.part").write_bytes(blob[i * step:(i + 1) * step])
    Path(f"{prefix}0").mkdir(parents=True, exist_ok=True)
    shutil.copy(src.with_suffix(".json"), Path(f"{prefix}0") / src.with_suffix(".json").name)
    print(f"{n} bytes -> {len(blob)} in {parts} parts of {step} bytes")


def unpack(parts_dir: Path, sidecar: Path, cache: Path) -> None:
    """Join ``1.part`` .. ``n.part``, check the SHA-256 and write the copy and its sidecar under ``cache``."""
    files = sorted(parts_dir.glob("*.part"), key=lambda p: int(p.stem))
    blob = b"".join(p.read_bytes() for p in files)
    size_high, n = int.from_bytes(blob[:8], "little"), int.from_bytes(blob[8:16], "little")
    high = np.frombuffer(lzma.decompress(blob[16:16 + size_high]), np.uint8)
    low = np.frombuffer(blob[16 + size_high:], np.uint8)
    out = np.empty(2 * len(high), np.uint8)
    out[0::2], out[1::2] = low, high
    data = out[:n].tobytes()
    info = json.loads(sidecar.read_text())
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["safetensors_sha256"]:
        raise SystemExit(f"error: joined {len(files)} parts, sha256 {digest[:16]}... does not match the sidecar's "
                         f"{info['safetensors_sha256'][:16]}...: send the missing or broken parts again")
    folder = cache / "foundation"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "astra_i3resnet152.safetensors").write_bytes(data)
    shutil.copy(sidecar, folder / "astra_i3resnet152.json")
    print(f"{len(data)} bytes, sha256 checked: {folder}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("prefix")
    p.add_argument("--parts", type=int, default=5)
    u = sub.add_parser("unpack")
    u.add_argument("parts_dir", type=Path)
    u.add_argument("sidecar", type=Path)
    u.add_argument("cache", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.prefix, args.parts)
    else:
        unpack(args.parts_dir, args.sidecar, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
