"""Carry the foundation weights' safetensors copy to a machine that takes at most ~35 MB per transfer.

The copy (235 MB of bfloat16) is split into its high and low bytes: the high bytes (sign and exponent) are
xz-compressed (117 -> 43 MB), the low bytes (mantissa) are stored as they are; the result is cut into parts.
``pack`` also writes ``parts.json`` beside the sidecar: the number of parts and each part's size and SHA-256, so
``unpack`` names a missing, truncated or damaged part before joining anything. ``unpack`` joins the parts,
rebuilds the file, checks it against the SHA-256 in its sidecar and writes both into ``CACHE/foundation`` (use
that folder as ``CTEHR_CACHE_DIR`` there). Lossless; the bytes are checked.

    python bench/gpu/weights_parts.py pack OUT_PREFIX [--parts 5]   # writes OUT_PREFIX1/w.part .. OUT_PREFIXn/w.part
                                                                     # and OUT_PREFIX0/astra_i3resnet152.json, parts.json
    python bench/gpu/weights_parts.py unpack PARTS_DIR SIDECAR CACHE  # PARTS_DIR holds 1.part .. n.part;
                                                                     # parts.json is read from beside SIDECAR
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

MANIFEST = "parts.json"


def pack_file(src: Path, sidecar: Path, prefix: str, parts: int) -> list[Path]:
    """Split ``src`` into ``parts`` files ``{prefix}1/w.part`` .. and copy ``sidecar`` and a manifest to ``{prefix}0``."""
    if parts < 1:
        raise SystemExit(f"error: --parts {parts}: must be at least 1")
    raw = np.fromfile(src, dtype=np.uint8)
    n = len(raw)
    if n % 2:
        raw = np.concatenate([raw, np.zeros(1, np.uint8)])
    high = lzma.compress(raw[1::2].tobytes(), preset=6)
    blob = len(high).to_bytes(8, "little") + n.to_bytes(8, "little") + high + raw[0::2].tobytes()
    step = -(-len(blob) // parts)
    written, manifest = [], {"parts": parts, "blob_bytes": len(blob), "sizes": [], "sha256": []}
    for i in range(parts):
        folder = Path(f"{prefix}{i + 1}")
        folder.mkdir(parents=True, exist_ok=True)
        chunk = blob[i * step:(i + 1) * step]
        (folder / "w.part").write_bytes(chunk)
        manifest["sizes"].append(len(chunk))
        manifest["sha256"].append(hashlib.sha256(chunk).hexdigest())
        written.append(folder / "w.part")
    head = Path(f"{prefix}0")
    head.mkdir(parents=True, exist_ok=True)
    shutil.copy(sidecar, head / sidecar.name)
    (head / MANIFEST).write_text(json.dumps(manifest, indent=1))
    print(f"{n} bytes -> {len(blob)} in {parts} parts of {step} bytes")
    return written


def pack(prefix: str, parts: int) -> None:
    """Split the local safetensors copy of the foundation weights (module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from core.models.foundation_weights import ensure_weights

    src = ensure_weights()
    pack_file(src, src.with_suffix(".json"), prefix, parts)


def _check_parts(parts_dir: Path, manifest_path: Path) -> list[Path]:
    """The parts ``1.part`` .. ``n.part`` in order, each checked against the manifest when there is one."""
    if not parts_dir.is_dir():
        raise SystemExit(f"error: PARTS_DIR {parts_dir}: not a folder; put 1.part .. n.part there")
    if not manifest_path.is_file():  # packs written before the manifest: every numbered part found, in order
        files = sorted((p for p in parts_dir.glob("*.part") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if not files:
            raise SystemExit(f"error: PARTS_DIR {parts_dir}: no 1.part .. n.part found; copy each OUT_PREFIXi/w.part there as i.part")
        return files
    manifest = json.loads(manifest_path.read_text())
    files = []
    for i in range(1, int(manifest["parts"]) + 1):
        p = parts_dir / f"{i}.part"
        if not p.is_file():
            raise SystemExit(f"error: part {i} of {manifest['parts']}: {p} is missing; send OUT_PREFIX{i}/w.part again as {i}.part")
        size, want = p.stat().st_size, manifest["sizes"][i - 1]
        if size != want:
            raise SystemExit(f"error: part {i} of {manifest['parts']}: {p} has {size} bytes, the pack wrote {want}; "
                             f"send OUT_PREFIX{i}/w.part again")
        if hashlib.sha256(p.read_bytes()).hexdigest() != manifest["sha256"][i - 1]:
            raise SystemExit(f"error: part {i} of {manifest['parts']}: {p} does not match its SHA-256 in {manifest_path.name}; "
                             f"send OUT_PREFIX{i}/w.part again")
        files.append(p)
    return files


def unpack(parts_dir: Path, sidecar: Path, cache: Path) -> Path:
    """Join ``1.part`` .. ``n.part``, check the SHA-256 and write the copy and its sidecar under ``cache``."""
    if not sidecar.is_file():
        raise SystemExit(f"error: SIDECAR {sidecar}: no such file; send OUT_PREFIX0/{sidecar.name}")
    files = _check_parts(parts_dir, sidecar.parent / MANIFEST)
    blob = b"".join(p.read_bytes() for p in files)
    size_high, n = int.from_bytes(blob[:8], "little"), int.from_bytes(blob[8:16], "little")
    try:
        high = np.frombuffer(lzma.decompress(blob[16:16 + size_high]), np.uint8)
    except lzma.LZMAError as err:
        raise SystemExit(f"error: joined {len(files)} parts: the compressed high bytes do not decode ({err}); "
                         "a part is missing, out of order or damaged: send the parts again") from None
    low = np.frombuffer(blob[16 + size_high:], np.uint8)
    if len(low) != len(high):
        raise SystemExit(f"error: joined {len(files)} parts: {len(low)} low bytes against {len(high)} high bytes; "
                         "a part is missing or truncated: send the parts again")
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
    target = folder / "astra_i3resnet152.safetensors"
    target.write_bytes(data)
    shutil.copy(sidecar, folder / "astra_i3resnet152.json")
    print(f"{len(data)} bytes, sha256 checked: {folder}")
    return target


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
