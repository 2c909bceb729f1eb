"""core.io.pydicom_import: pydicom without its codec plugins until asked, and the same pydicom once asked.

Every check runs in a fresh process (pydicom is imported once per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dicom_factory import write_series

CODEC_MODULES = ("gdcm", "PIL.Image", "pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "_CharLS", "http.client", "ssl")

# every plugin registry of pydicom, as a plain `import pydicom` leaves it (or as the first read leaves it)
REGISTRIES = """
import json, sys
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pydicom.pixels.encoders.base import _PIXEL_DATA_ENCODERS
out = {}
for kind, table in (("decoder", _PIXEL_DATA_DECODERS), ("encoder", _PIXEL_DATA_ENCODERS)):
    for uid, (coder, _) in table.items():
        out[f"{kind} {uid}"] = {
            "order": list(coder._available) + ["-"] + list(coder._unavailable),
            "functions": [f"{f.__module__}.{f.__name__}" for f in coder._available.values()],
            "available_plugins": list(coder.available_plugins),
            "is_available": coder.is_available,
            "missing": list(coder.missing_dependencies),
            "unavailable": {k: list(v) for k, v in coder._unavailable.items()},
            "doc": coder.__doc__,
        }
from pydicom import config
out["legacy"] = [(h.__name__, bool(h.is_available())) for h in config.pixel_data_handlers]
print(json.dumps(out, sort_keys=True))
"""


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_registries_read_after_the_deferred_import_equal_a_plain_import():
    plain = json.loads(run("import pydicom\n" + REGISTRIES).stdout)
    deferred = run(
        "import sys\nfrom core.io import pydicom_import\n"
        f"loaded = [m for m in {CODEC_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "waiting = pydicom_import.plugins_waiting()\n"
        "assert waiting >= 16, waiting  # every compressed syntax's decoder and encoder\n" + REGISTRIES
        + "assert pydicom_import.plugins_waiting() == 0\n"
    )
    after = json.loads(deferred.stdout)
    assert set(after) == set(plain)
    for key in plain:
        assert after[key] == plain[key], key
    j2k = plain["decoder 1.2.840.10008.1.2.4.90"]
    assert j2k["order"][: j2k["order"].index("-")] == ["gdcm", "pylibjpeg", "pillow"]  # the test compares something real
    assert plain["encoder 1.2.840.10008.1.2.5"]["available_plugins"]  # RLE: at least pydicom's own encoder


def test_a_jpeg2000_load_imports_no_codec_plugin_and_other_syntaxes_still_decode(tmp_path):
    j2k = write_series(tmp_path / "j2k", shape=(4, 32, 32), compression="j2k", signed=True, intercept=0.0, seed=1)
    rle = write_series(tmp_path / "rle", shape=(4, 32, 32), compression="rle", seed=2)
    code = (
        "import json, sys\n"
        "from core.io import j2k, pydicom_import\n"
        "from core.io.study import load_study\n"
        "a = load_study(sys.argv[1])\n"
        f"after_j2k = [m for m in {CODEC_MODULES!r} if m in sys.modules]\n"
        "b = load_study(sys.argv[2])\n"
        "print(json.dumps({'direct': j2k.available(), 'after_j2k': after_j2k, 'waiting': pydicom_import.plugins_waiting(),"
        " 'j2k': a.hu.tolist(), 'rle': b.hu.tolist(), 'rle_module': 'rle' in sys.modules}))\n"
    )
    out = json.loads(run(code, str(j2k.folder), str(rle.folder)).stdout)
    if not out["direct"]:
        pytest.skip("no OpenJPEG library: JPEG 2000 goes through pydicom's plugins")
    assert out["after_j2k"] == []
    assert out["waiting"] < 17 and out["rle_module"]  # the RLE load registered (only) the RLE decoder's plugins
    import numpy as np

    np.testing.assert_array_equal(np.array(out["j2k"], dtype=np.float32), j2k.hu)
    np.testing.assert_array_equal(np.array(out["rle"], dtype=np.float32), rle.hu)


def test_plugins_are_registered_once_when_threads_ask_at_the_same_time():
    code = (
        "import threading\n"
        "from core.io import pydicom_import\n"
        "from pydicom.pixels import get_decoder, get_encoder\n"
        "from pydicom.uid import RLELossless, JPEG2000Lossless, JPEGLSLossless\n"
        "barrier = threading.Barrier(8)\n"
        "seen = []\n"
        "def ask(i):\n"
        "    barrier.wait()\n"
        "    uid = (RLELossless, JPEG2000Lossless, JPEGLSLossless)[i % 3]\n"
        "    seen.append((get_decoder(uid).is_available, get_decoder(uid).available_plugins, get_encoder(RLELossless).available_plugins))\n"
        "threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert len(seen) == 8 and all(s[0] for s in seen), seen\n"
        "assert len({s[1] for s in seen if 'pydicom' in s[1]}) == 1 and len({s[2] for s in seen}) == 1, seen\n"
        "print(len(seen))\n"
    )
    assert run(code).stdout.strip() == "8"


def test_modules_run_on_first_use_behave_as_imported():
    code = (
        "import sys, threading, types\n"
        "from core.io import pydicom_import\n"
        "kinds = {m: type(sys.modules[m]).__name__ for m in ('urllib.request', 'pydicom.examples', 'PIL.ImageCms')}\n"
        "assert set(kinds.values()) == {'_DeferredModule'}, kinds\n"
        "found = []\n"
        "def touch():\n"
        "    import urllib.request\n"
        "    found.append(urllib.request.Request('http://example.invalid/x').host)\n"
        "threads = [threading.Thread(target=touch) for _ in range(6)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert found == ['example.invalid'] * 6, found\n"
        "assert type(sys.modules['urllib.request']) is types.ModuleType\n"
        "import pydicom\n"
        "assert pydicom.examples.ct.Modality == 'CT'\n"
        "from PIL import ImageCms\n"
        "assert ImageCms.createProfile('sRGB') is not None\n"
        "from pydicom import config\n"
        "assert any(h.__name__.endswith('gdcm_handler') and h.is_available() for h in config.pixel_data_handlers)\n"
        "print('ok')\n"
    )
    assert run(code).stdout.strip() == "ok"


def test_pydicom_imported_first_is_left_as_it_is():
    code = (
        "import sys\n"
        "import pydicom\n"
        "from core.io import pydicom_import\n"
        "assert pydicom_import.plugins_waiting() == 0\n"
        "from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS\n"
        "assert all(type(c._available) is dict for c, _ in _PIXEL_DATA_DECODERS.values())\n"
        "print('gdcm' in sys.modules)\n"
    )
    assert run(code).stdout.strip() == "True"
