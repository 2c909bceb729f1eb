"""Decompression bombs are refused fast, with bounded memory and a one-line error; genuine data still loads.

Each bomb is run through the real command line in a child process whose wall
time and peak resident memory are measured (``resource.getrusage`` of a
wrapper's only child): at most 10 s and 1 GiB, exit status 2, one ``error:``
line on stderr.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.errors import InputError
from core.io.nifti import MAX_GZIP_RATIO, load_nifti_bytes
from core.io.study import load_study, load_study_bytes
from tests.dicom_factory import (
    deflate_bomb_dicom,
    phantom_hu,
    write_deidentified_series,
    zip_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
TIME_LIMIT_S = 10.0
RSS_LIMIT = GIB

_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
sys.stdout.write(repr((run.returncode, run.stdout, run.stderr, seconds, peak)))
"""


def measure(*args: str) -> tuple[int, str, str, float, int]:
    """(exit status, stdout, stderr, wall seconds, peak RSS bytes) of ``python -m core ARGS``."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)  # noqa: S307 - our own repr of a tuple of literals


def assert_refused(result: tuple[int, str, str, float, int], pattern: str) -> None:
    rc, stdout, stderr, seconds, peak = result
    print(f"refused in {seconds:.2f} s, peak RSS {peak / 2**20:.0f} MiB: {stderr.strip()}")
    assert rc == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert pattern in lines[0]
    assert seconds <= TIME_LIMIT_S
    assert peak <= RSS_LIMIT


def _gzip_of_zeros_after(head: bytes, n_zeros: int) -> bytes:
    """A valid gzip stream of ``head`` followed by ``n_zeros`` zero bytes, built without inflating it.

    One full-flushed deflate segment for 1 MiB of zeros is repeated (the
    dictionary is reset at each full flush, so repeating it stays valid).
    """
    chunk = 1 << 20
    assert n_zeros % chunk == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = co.compress(bytes(chunk)) + co.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    zeros_crc_step = bytes(chunk)
    for _ in range(n_zeros // chunk):
        crc = zlib.crc32(zeros_crc_step, crc)
    size = (len(head) + n_zeros) & 0xFFFFFFFF
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return b"".join([header, first, segment * (n_zeros // chunk), b"\x03\x00", struct.pack("<II", crc & 0xFFFFFFFF, size)])


def _nifti_header(shape: tuple[int, int, int]) -> bytes:
    """A valid NIfTI-1 header (352 bytes with the empty extension flag) for int16 voxels of ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([0.7, 0.7, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * 4
    assert len(raw) == 352 and raw[344:347] == b"n+1"
    return raw


@pytest.fixture(scope="module")
def dicom_bomb(tmp_path_factory) -> Path:
    path = deflate_bomb_dicom(tmp_path_factory.mktemp("bomb") / "bomb.dcm", inflated_bytes=GIB)
    assert path.stat().st_size < 1_200_000  # about 1 MB on disk ...
    return path


def test_deflated_dicom_bomb_is_a_real_bomb(dicom_bomb):
    # ... and it really inflates to a gigabyte (counted in steps, never held)
    data = dicom_bomb.read_bytes()
    inflater = zlib.decompressobj(-15)
    assert data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length: the deflated dataset follows the meta
    start = 144 + struct.unpack("<I", data[140:144])[0]
    total, rest = 0, data[start:]
    while rest and not inflater.eof:
        total += len(inflater.decompress(rest, 1 << 26))
        rest = inflater.unconsumed_tail
    assert total > GIB


def test_deflated_dicom_bomb_refused_by_inspect_and_deid(dicom_bomb, tmp_path):
    assert_refused(measure("inspect", str(dicom_bomb), "--json"), "a decompression bomb?")
    out = tmp_path / "out"
    assert_refused(measure("deid", str(dicom_bomb), str(out)), "a decompression bomb?")
    assert not out.exists()  # nothing written


def test_deflated_bomb_with_a_long_meta_group(tmp_path):
    path = deflate_bomb_dicom(tmp_path / "padded.dcm", inflated_bytes=GIB, meta_padding=40_000)
    assert path.read_bytes().find(b"1.2.840.10008.1.2.1.99") > 40_000  # beyond the first read of a header
    assert_refused(measure("inspect", str(path), "--json"), "a decompression bomb?")
    with pytest.raises(InputError, match="a decompression bomb"):
        load_study_bytes(path.read_bytes(), "padded.dcm")


def test_deflated_dicom_bomb_inside_a_zip_upload(dicom_bomb):
    blob = zip_bytes([dicom_bomb])
    with pytest.raises(InputError, match=r"DICOM file: got bomb.dcm, expands beyond \d+ bytes \(100 x its"):
        load_study_bytes(blob, "upload.zip")


def test_gzip_nifti_bomb_refused(tmp_path):
    head = _nifti_header((1024, 1024, 512))  # 1 GiB of int16 voxels
    blob = _gzip_of_zeros_after(head, GIB)
    assert len(blob) < 1_200_000
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(blob)
    head = zlib.decompressobj(31).decompress(blob, 352)
    assert nib.Nifti1Header.from_fileobj(io.BytesIO(head)).get_data_shape() == (1024, 1024, 512)  # a real NIfTI ...
    assert_refused(measure("inspect", str(path), "--json"), "100 x its")
    with pytest.raises(InputError, match="a decompression bomb"):
        load_nifti_bytes(blob, "bomb.nii.gz")


def test_zip_bomb_refused(tmp_path):
    head = b""
    chunk = 1 << 20
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = co.compress(bytes(chunk)) + co.flush(zlib.Z_FULL_FLUSH)
    body = segment * 1024 + b"\x03\x00"  # 1 GiB of zeros
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(bytes(chunk), crc)
    name = b"IM00001.dcm"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(body), GIB, len(name), 0) + name
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(body), GIB, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    path = tmp_path / "bomb.zip"
    path.write_bytes(head + local + body + central + end)
    assert path.stat().st_size < 1_200_000
    assert_refused(measure("inspect", str(path), "--json"), "zip bomb?")


def test_genuine_deflated_dicom_and_large_genuine_ct_still_load(tmp_path):
    # a large CT-like volume with scanner noise: gzip NIfTI compresses it a few times, far below 100x
    hu = phantom_hu((96, 512, 512), seed=3, noise=12.0).astype(np.int16)
    img = nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), np.diag([-0.7, -0.7, 1.5, 1.0]))
    path = tmp_path / "large_ct.nii.gz"
    nib.save(img, str(path))
    raw_size = len(gzip.decompress(path.read_bytes()))
    ratio = raw_size / path.stat().st_size
    print(f"genuine CT: {raw_size} bytes in a {path.stat().st_size}-byte gzip (ratio {ratio:.1f})")
    assert ratio < MAX_GZIP_RATIO / 10
    volume = load_study(path)
    assert volume.shape == (96, 512, 512)
    assert float(volume.hu.min()) == float(hu.min()) and float(volume.hu.max()) == float(hu.max())


def test_real_ct_ratio_is_far_below_the_cap(real_ct):
    raw = gzip.decompress(real_ct.read_bytes())
    assert len(raw) / real_ct.stat().st_size < 5  # real CTs compress a few times
    assert load_study(real_ct).shape[0] > 0


def test_inspect_of_a_normal_series_is_unchanged(tmp_path):
    written = write_deidentified_series(tmp_path / "s", shape=(5, 32, 32))
    rc, stdout, stderr, seconds, peak = measure("inspect", str(written.folder), "--json")
    assert rc == 0, stderr
    info = json.loads(stdout)
    assert info["shape"] == [5, 32, 32] and info["phi"] == [] and info["burned_in"] is False
