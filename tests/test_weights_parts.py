"""bench/gpu/weights_parts.py: the weights' copy cut into parts and joined again, byte for byte, and a missing,
truncated or damaged part named before anything is joined."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("weights_parts", ROOT / "bench" / "gpu" / "weights_parts.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def packed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A bfloat16-like file of odd length packed into 3 parts, the parts copied to PARTS as 1.part .. 3.part."""
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.05, 40_001).astype(np.float32)
    data = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes() + b"\x07"  # odd length: the padding byte
    src = tmp_path / "w.safetensors"
    src.write_bytes(data)
    sidecar = tmp_path / "w.json"
    sidecar.write_text(json.dumps({"safetensors_sha256": hashlib.sha256(data).hexdigest()}))
    written = _tool().pack_file(src, sidecar, str(tmp_path / "out"), 3)
    parts = tmp_path / "PARTS"
    parts.mkdir()
    for i, p in enumerate(written, 1):
        (parts / f"{i}.part").write_bytes(p.read_bytes())
    return parts, tmp_path / "out0" / "w.json", data


def test_the_parts_join_to_the_same_bytes(packed: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    parts, sidecar, data = packed
    manifest = json.loads((sidecar.parent / "parts.json").read_text())
    assert manifest["parts"] == 3 and sum(manifest["sizes"]) == manifest["blob_bytes"]
    # the high bytes compress: the parts hold less than the file
    assert manifest["blob_bytes"] < len(data)
    out = _tool().unpack(parts, sidecar, tmp_path / "cache")
    assert out.read_bytes() == data
    assert (out.parent / "astra_i3resnet152.json").read_text() == sidecar.read_text()


def test_a_missing_part_is_named(packed: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    parts, sidecar, _ = packed
    (parts / "2.part").unlink()
    with pytest.raises(SystemExit, match=r"part 2 of 3: .*2\.part is missing"):
        _tool().unpack(parts, sidecar, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_truncated_or_damaged_part_is_named(packed: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    parts, sidecar, _ = packed
    third = parts / "3.part"
    good = third.read_bytes()
    third.write_bytes(good[:-10])
    with pytest.raises(SystemExit, match=r"part 3 of 3: .* has \d+ bytes, the pack wrote \d+"):
        _tool().unpack(parts, sidecar, tmp_path / "cache")
    third.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(SystemExit, match=r"part 3 of 3: .* does not match its SHA-256"):
        _tool().unpack(parts, sidecar, tmp_path / "cache")


def test_without_a_manifest_a_short_join_fails_on_the_checks(packed: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    """Packs written before the manifest: a missing last part is caught by the byte count or the decoder, never
    written as weights."""
    parts, sidecar, _ = packed
    (sidecar.parent / "parts.json").unlink()
    (parts / "3.part").unlink()
    with pytest.raises(SystemExit, match=r"error: joined 2 parts"):
        _tool().unpack(parts, sidecar, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
