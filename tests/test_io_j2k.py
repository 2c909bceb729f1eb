"""core.io.j2k: OpenJPEG through ctypes (single-tile decoding from memory, the GIL kept for the short calls),
the switch interval while slices are decoded ahead, and what the prefetch threads read."""

from __future__ import annotations

import ctypes
import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dicom_factory import write_series

from core.io import j2k, j2k_prefetch


@pytest.fixture(scope="module")
def lib() -> object:
    found = j2k._library()
    if found is None:
        pytest.skip("no OpenJPEG library")
    return found


def _values(decoded: j2k.DecodedJ2K) -> np.ndarray:
    return np.frombuffer(decoded.buffer(), dtype=decoded.dtype).reshape(decoded.rows, decoded.cols).astype(np.int64)


def test_single_tile_decoding_gives_what_opj_decode_gives(lib, tmp_path):
    written = write_series(tmp_path / "s", shape=(3, 48, 40), compression="j2k", signed=True, intercept=0.0, seed=4)
    for path in written.paths:
        found = j2k_prefetch._single_frame_codestream(path.read_bytes())
        assert found is not None
        _, stream, rows, cols = found
        with j2k._decode(stream, rows, cols, None, 32, single_tile=True) as tiled, j2k._decode(stream, rows, cols, None, 32, single_tile=False) as whole:
            assert (tiled.dtype, whole.dtype) == ("int16", "int32")  # 16-bit signed samples, as OpenJPEG writes a tile
            np.testing.assert_array_equal(_values(tiled), _values(whole))
            assert _values(tiled).min() < 0  # signed values survive
        with pytest.raises(ValueError):
            tiled.buffer()  # closed


def test_a_codestream_of_several_tiles_is_decoded_whole(lib):
    openjpeg = pytest.importorskip("openjpeg")
    image_module = pytest.importorskip("PIL.Image")
    values = np.random.default_rng(0).integers(0, 4000, size=(64, 96)).astype(np.uint16)
    image = image_module.frombytes("I;16", (96, 64), values.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG2000", no_jp2=True, irreversible=False, tile_size=(32, 32))
    codestream = buffer.getvalue()
    with j2k.decode(codestream, 64, 96, None, 16) as decoded:
        assert decoded.dtype == "int32"  # opj_decode's image: the single-tile path was left
        np.testing.assert_array_equal(_values(decoded), openjpeg.decode(codestream).astype(np.int64))
    with pytest.raises(j2k.J2KSizeMismatch):
        j2k.decode(codestream, 64, 64, None, 16)


def test_only_the_decoding_calls_release_the_gil(lib):
    python_api = ctypes._FUNCFLAG_PYTHONAPI  # set on functions of a ctypes.PyDLL: the GIL is kept during the call
    releasing = {name for name in j2k._SIGNATURES if not getattr(lib, name)._flags_ & python_api}
    assert releasing == {"opj_decode", "opj_decode_tile_data"}


def test_switch_interval_lowered_while_decoding_ahead_and_restored_by_the_last_holder(lib, tmp_path):
    written = write_series(tmp_path / "s", shape=(2, 32, 32), compression="j2k", seed=1)
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        first = j2k_prefetch.Prefetch(str(written.folder), workers=1)
        assert sys.getswitchinterval() == pytest.approx(j2k_prefetch.PREFETCH_SWITCH_INTERVAL_S)
        second = j2k_prefetch.Prefetch(str(written.folder), workers=1)
        first.close()
        first.close()  # twice: counted once
        assert sys.getswitchinterval() == pytest.approx(j2k_prefetch.PREFETCH_SWITCH_INTERVAL_S)  # the second still decodes
        second.close()
        assert sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        sys.setswitchinterval(before)


def test_a_prefetch_off_the_main_thread_leaves_the_switch_interval_alone(lib, tmp_path):
    """A server's request thread never changes the process-wide switch interval (other sessions share it)."""
    written = write_series(tmp_path / "s", shape=(2, 32, 32), compression="j2k", seed=6)
    before = sys.getswitchinterval()
    seen: list[float] = []

    def load() -> None:
        prefetch = j2k_prefetch.Prefetch(str(written.folder), workers=1)
        seen.append(sys.getswitchinterval())
        prefetch.close()

    try:
        sys.setswitchinterval(0.004)
        worker = threading.Thread(target=load)
        worker.start()
        worker.join(timeout=30)
        assert seen == [pytest.approx(0.004)] and sys.getswitchinterval() == pytest.approx(0.004)
    finally:
        sys.setswitchinterval(before)


def test_prefetch_reads_regular_jpeg2000_files_only_and_never_blocks_on_a_fifo(lib, tmp_path):
    written = write_series(tmp_path / "s", shape=(2, 32, 32), compression="j2k", seed=2)
    plain = write_series(tmp_path / "p", shape=(1, 32, 32), seed=3)
    data = written.paths[0].read_bytes()
    assert j2k_prefetch._read_j2k_file(str(written.paths[0])) == data
    assert j2k_prefetch._read_j2k_file(str(plain.paths[0])) is None
    link = tmp_path / "link.dcm"
    link.symlink_to(written.paths[0])
    assert j2k_prefetch._read_j2k_file(str(link)) is None
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(j2k_prefetch._read_j2k_file(str(fifo))), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive() and result == [None]


def test_a_prefetch_dropped_without_close_restores_the_switch_interval(lib, tmp_path):
    import gc

    written = write_series(tmp_path / "s", shape=(2, 32, 32), compression="j2k", seed=5)
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.003)
        early = j2k_prefetch.Prefetch(str(written.folder), workers=1)
        assert sys.getswitchinterval() == pytest.approx(j2k_prefetch.PREFETCH_SWITCH_INTERVAL_S)
        for thread in early._threads:
            thread.join()
        del early, thread
        gc.collect()
        assert sys.getswitchinterval() == pytest.approx(0.003)
    finally:
        sys.setswitchinterval(before)


def test_a_fresh_process_loading_a_study_lets_idle_blas_threads_sleep(tmp_path):
    """OpenBLAS's idle workers must not spin beside the decoders: set before numpy's first import, never over a user's value."""
    import subprocess

    written = write_series(tmp_path / "s", shape=(2, 32, 32), compression="j2k", seed=7)
    code = ("import os, sys; from core.io.study import load_study; load_study(sys.argv[1]); "
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    fresh = subprocess.run([sys.executable, "-c", code, str(written.folder)], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.split() == ["4", "True"]
    chosen = subprocess.run([sys.executable, "-c", code, str(written.folder)], cwd=root, env=dict(env, OPENBLAS_THREAD_TIMEOUT="10"), capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["10", "True"]
    after_numpy = subprocess.run([sys.executable, "-c", "import numpy; " + code, str(written.folder)], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert after_numpy.stdout.split() == ["None", "True"]
