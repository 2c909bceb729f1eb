"""``python -m core inspect``: JSON contract, no torch, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.dicom_factory import write_series, zip_folder
from tests.test_io_safezip import bomb  # noqa: F401 - the session-scoped zip bomb fixture


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_inspect_json_on_real_ct_and_no_torch(real_ct, tmp_path):
    code = (
        "import json, sys\n"
        "from core.cli import main\n"
        f"rc = main(['inspect', {str(real_ct)!r}, '--json'])\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in ('torch', 'captum', 'monai', 'streamlit', 'SimpleITK') if m in sys.modules)\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    info = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert info["shape"] == [30, 101, 122] and info["spacing_mm"] == [3.0, 3.0, 3.0]
    assert (info["hu_min"], info["hu_max"]) == (-1100.0, 1207.0)
    assert list(tmp_path.iterdir()) == []


def test_inspect_dicom_zip_json_and_text_output(tmp_path):
    written = write_series(tmp_path / "series", shape=(5, 32, 40), compression="rle", series_uid="")
    (tmp_path / "study.zip").write_bytes(zip_folder(written.folder))
    proc = run_cli("inspect", str(tmp_path / "study.zip"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "dicom" and info["shape"] == [5, 32, 40] and info["spacing_mm"] == [2.5, 0.75, 0.75]
    assert info["hu_min"] == float(written.hu.min()) and info["hu_max"] == float(written.hu.max())
    assert info["n_series"] == 1 and "PatientName" in info["phi"]
    text = run_cli("inspect", str(written.folder), cwd=tmp_path)
    assert text.returncode == 0
    assert "shape       5 slices x 32 rows x 40 cols" in text.stdout
    assert "PatientName" in text.stdout
    bad = run_cli("inspect", str(written.folder), "--series", "nope", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --series: got nope, is not a series of this study; fix: choose one of: noUID-1-")


def _bad_inputs(root: Path, bomb: bytes) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected start of the message after 'error: ')."""
    root.mkdir()
    out: dict[str, tuple[Path, str]] = {}

    empty = root / "empty.dcm"
    empty.write_bytes(b"")
    out["empty file"] = (empty, f"study: got {empty}, is empty (0 bytes)")

    rnd = root / "random.bin"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["random bytes"] = (rnd, f"study: got {rnd}, is not a DICOM, NIfTI or zip file")

    garbage = root / "garbage.dcm"  # starts like a raw DICOM dataset, then random bytes
    garbage.write_bytes(b"\x08\x00\x05\x00" + np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    out["DICOM-like garbage"] = (garbage, f"study: got {garbage}, holds no readable DICOM image (1 unreadable")

    series = write_series(root / "src", shape=(2, 32, 32))
    data = series.paths[0].read_bytes()
    trunc = root / "truncated.dcm"
    trunc.write_bytes(data[: len(data) // 2])
    out["truncated DICOM"] = (trunc, "DICOM file: got truncated.dcm, is truncated")

    text = root / "scan.nii.gz"
    text.write_text("patient list\nnot an image\n")
    out["text named .nii.gz"] = (text, f"study: got {text}, is a text file")

    for label, entry in (("dotdot", "../../evil.dcm"), ("absolute", "/tmp/evil.dcm")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("ok.dcm", data)
            zf.writestr(entry, data)
        path = root / f"{label}.zip"
        path.write_bytes(buf.getvalue())
        out[f"zip {label}"] = (path, f"zip entry: got {entry}, ")

    bomb_path = root / "bomb.zip"
    bomb_path.write_bytes(bomb)
    out["zip bomb"] = (bomb_path, "zip entry: got zeros.dcm, has a compression ratio above 200:1")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w"):
        pass
    empty_zip = root / "empty.zip"
    empty_zip.write_bytes(buf.getvalue())
    out["empty zip"] = (empty_zip, f"zip: got {empty_zip}, contains no files")  # named, no longer "got zip"

    vox = np.zeros((4, 4, 4), dtype=np.float32)
    vox[0, 0, 0], vox[1, 1, 1] = np.nan, np.inf
    nan_path = root / "nan.nii.gz"
    nib.save(nib.Nifti1Image(vox, np.eye(4)), str(nan_path))
    out["NIfTI NaN/inf"] = (nan_path, "NIfTI voxels: got nan.nii.gz, 1 NaN and 1 inf values")

    out["missing"] = (root / "nope.dcm", f"study: got {root / 'nope.dcm'}, does not exist; fix: check the path")
    return out


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, bomb) -> dict[str, tuple[Path, str]]:  # noqa: F811
    return _bad_inputs(tmp_path_factory.mktemp("bad") / "inputs", bomb)


BAD = ["empty file", "random bytes", "DICOM-like garbage", "truncated DICOM", "text named .nii.gz", "zip dotdot", "zip absolute", "zip bomb", "empty zip", "NIfTI NaN/inf", "missing"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_one_line_exit_2_fast_and_writes_nothing(bad_inputs, name, tmp_path):
    path, expected = bad_inputs[name]
    before = sorted(p.name for p in path.parent.iterdir())
    start = time.perf_counter()
    proc = run_cli("inspect", str(path), "--json", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("error: " + expected), lines[0]
    assert "; fix: " in lines[0]
    assert elapsed < 10.0
    assert sorted(p.name for p in path.parent.iterdir()) == before
    assert list(tmp_path.iterdir()) == []  # the working directory stays empty
