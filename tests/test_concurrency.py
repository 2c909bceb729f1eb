"""Concurrent sessions on one shared model: predictions and attributions equal the sequential ones, no hooks or
``.grad`` left behind; no process-wide warning filter or torch thread count changed by request threads."""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODELS = ("concat", "cross_attention", "coattention_image")  # shipped: whole-CT detector, 5-seed ensembles
THREADS = 4
TOL = 1e-6
PER_MODEL_EXTRA = {"concat": ("occlusion",), "cross_attention": ("smoothgrad",)}


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """Three shipped demo models, each loaded once (as the app's cache shares them), and one demo case (the tasks run
    THREADS at a time below, so every model is shared between threads; a second case only doubled the time)."""
    import tempfile

    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.registry import load_model

    with tempfile.TemporaryDirectory(prefix="ctehr-concurrency-") as tmp:
        cohort = load_cohort(write_demo_cohort(Path(tmp) / "cohort", n=10, seed=3))
        models = {name: load_model(ROOT / "assets" / "demo_models" / name) for name in DEMO_MODELS}
        sids = [s for s in cohort.ids() if cohort.load_volume(s) is not None][:1]
        inputs = {(name, sid): m.case_inputs(cohort, sid) for name, m in models.items() for sid in sids}
        yield {"models": models, "sids": sids, "inputs": inputs}


def _tasks(shared: dict[str, Any]) -> list[tuple[str, Callable[[], dict[str, np.ndarray]]]]:
    """(label, fn) for every mix of model, case and operation; fn returns named arrays."""
    from core.explain import attribute, event_attributions

    tasks: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = []
    for (name, sid), inputs in shared["inputs"].items():
        model = shared["models"][name]
        k = int(inputs.image.shape[1]) // 2  # type: ignore[union-attr]

        def predict(model: Any = model, inputs: Any = inputs) -> dict[str, np.ndarray]:
            p = model.predict_case(inputs)
            return {"survival": p.survival, "lower": p.lower, "upper": p.upper}

        def image(method: str, model: Any = model, inputs: Any = inputs, k: int = k) -> dict[str, np.ndarray]:
            return {"map": attribute(model, inputs, method, 365.0, k, n_steps=8, with_events=False).map}

        def events(model: Any = model, inputs: Any = inputs) -> dict[str, np.ndarray]:
            return {"score": event_attributions(model, inputs, 365.0, n_steps=8)["score"].to_numpy(dtype=float)}

        def detections(model: Any = model, inputs: Any = inputs) -> dict[str, np.ndarray]:  # the whole volume
            return {"map": attribute(model, inputs, "detector_ig", 365.0, None, n_steps=8, with_events=False).map}

        tasks.append((f"{name}/{sid}/predict", predict))
        tasks.append((f"{name}/{sid}/events", events))
        tasks.append((f"{name}/{sid}/detector_ig", detections))
        # occlusion (64 forward passes, ~10 s a model: two thirds of the sequential time) and SmoothGrad on one
        # model each: the same Captum paths on a shared net; 20 tasks keep the work a multiple of THREADS
        methods = ("saliency", "gradcam", "integrated_gradients") + PER_MODEL_EXTRA.get(name, ())
        for method in methods:
            tasks.append((f"{name}/{sid}/{method}", lambda method=method, image=image: image(method)))
    return tasks


def _hooks_and_grads(net: torch.nn.Module) -> list[str]:
    left = []
    for name, m in net.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if len(getattr(m, attr)):
                left.append(f"{name or 'net'}.{attr}")
        if m.training:
            left.append(f"{name or 'net'} in training mode")
    left += [f"{n}.grad" for n, p in net.named_parameters() if p.grad is not None]
    left += [f"{n} requires_grad" for n, p in net.named_parameters() if p.requires_grad]
    return left


def test_concurrent_predictions_and_attributions_equal_the_sequential_ones(shared: dict[str, Any]) -> None:
    from core.explain import METHODS

    tasks = _tasks(shared)
    assert len(tasks) == 3 * 6 + 2
    assert {label.rsplit('/', 1)[1] for label, _ in tasks} == {"predict", "events", *METHODS}  # every method
    expected = {label: fn() for label, fn in tasks}
    assert all(np.abs(v).sum() > 0 for r in expected.values() for v in r.values())  # real maps, not zeros

    # every task once more, in a shuffled order, THREADS at a time: with 3 models, two of each wave share a model
    work = list(tasks)
    assert len(work) % THREADS == 0 and THREADS > len(shared["models"])  # else a last, smaller wave waits 60 s
    random.Random(0).shuffle(work)
    barrier = threading.Barrier(THREADS)

    def run(item: tuple[str, Callable[[], dict[str, np.ndarray]]]) -> tuple[str, dict[str, np.ndarray] | str]:
        label, fn = item
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass  # the last few tasks: fewer than THREADS left
        try:
            return label, fn()
        except Exception as err:  # noqa: BLE001 - every failure is collected and reported below
            return label, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(run, work))

    errors = [f"{label}: {r[:160]}" for label, r in results if isinstance(r, str)]
    assert not errors, f"{len(errors)} of {len(results)} calls raised, e.g. {errors[:3]}"
    worst = {}
    for label, got in results:
        assert isinstance(got, dict)
        for key, want in expected[label].items():
            assert got[key].shape == want.shape, (label, key)
            worst[f"{label}:{key}"] = float(np.max(np.abs(got[key] - want))) if want.size else 0.0
    bad = {k: v for k, v in worst.items() if v > TOL}
    assert not bad, f"{len(bad)} results differ from the sequential ones: {sorted(bad.items(), key=lambda kv: -kv[1])[:5]}"
    for name, model in shared["models"].items():
        assert _hooks_and_grads(model.net) == [], name


def test_replica_shares_weights_and_keeps_hooks_and_modes_to_itself(shared: dict[str, Any]) -> None:
    from core.models.replica import drop_hooks, mc_dropout_replica, net_replica

    net = shared["models"]["concat"].net
    rep = net_replica(net)
    assert all(a is b for a, b in zip(net.parameters(), rep.parameters(), strict=True))
    assert all(a is b for a, b in zip(net.buffers(), rep.buffers(), strict=True))
    layer = next(m for m in rep.modules() if isinstance(m, torch.nn.Linear))
    layer.register_forward_hook(lambda *a: None)
    rep.train()
    assert _hooks_and_grads(rep) != [] and _hooks_and_grads(net) == []
    drop_hooks(rep)
    assert not any(len(m._forward_hooks) for m in rep.modules())
    mc = mc_dropout_replica(net, seed=0)
    assert any(type(m).__name__ == "SeededDropout" for m in mc.modules())
    assert _hooks_and_grads(net) == []


def test_mc_dropout_band_is_repeatable_and_leaves_the_global_random_state(shared: dict[str, Any]) -> None:
    """A single network's MC-dropout band: the same under other threads' random draws; torch's RNG untouched."""
    import copy

    from core.registry import LoadedModel

    ens = shared["models"]["concat"]
    member = copy.deepcopy(ens.net.members[0]).eval()
    for p in member.parameters():
        p.requires_grad_(False)
    single = LoadedModel(ens.config, member, {}, ens.model_dir, "")
    inputs = next(v for (n, _), v in shared["inputs"].items() if n == "concat")
    first = single.predict_case(inputs)
    assert float(np.max(first.upper - first.lower)) > 1e-3  # dropout really varies the curves
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda _: single.predict_case(inputs), range(8)))
    assert torch.equal(torch.get_rng_state(), state)
    for p in again:
        assert np.max(np.abs(p.lower - first.lower)) <= TOL and np.max(np.abs(p.upper - first.upper)) <= TOL


def test_event_attributions_emit_no_warning(shared: dict[str, Any]) -> None:
    from core.explain import event_attributions

    model = shared["models"]["concat"]
    inputs = next(v for (n, _), v in shared["inputs"].items() if n == "concat")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = event_attributions(model, inputs, 365.0, n_steps=4)
    assert len(table) > 0
    assert [str(w.message)[:60] for w in caught] == []


# ----------------------------------------------------------------- process-wide settings


def _dicom_with_warning(folder: Path) -> Path:
    """A tiny 3-slice CT series with an unknown character set (pydicom warns when it decodes text)."""
    from tests.dicom_factory import edit_file, write_series

    write_series(folder, shape=(3, 16, 16))

    def charset(ds: Any) -> None:
        ds.SpecificCharacterSet = "ISO_IR 999"

    for f in sorted(folder.glob("*.dcm")):
        edit_file(f, charset)
    return folder


@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")  # the test writes the odd character set itself
def test_overlapping_loads_that_warn_leave_the_warning_filters_as_they_were(tmp_path: Path) -> None:
    from core.io.dicom import load_dicom
    from core.io.nifti import load_nifti_bytes

    study = _dicom_with_warning(tmp_path / "s")
    nifti = _broken_scaling_nifti()
    before = list(warnings.filters)
    barrier = threading.Barrier(4)

    def load(i: int) -> list[str]:
        barrier.wait(timeout=60)
        return load_dicom(study).warnings if i % 2 == 0 else load_nifti_bytes(nifti, "x.nii").warnings

    with ThreadPoolExecutor(4) as pool:
        notes = list(pool.map(load, range(4)))
    assert warnings.filters == before
    for i in (0, 2):  # every thread's own pydicom warnings land in its own Volume
        assert any("DICOM reading warning" in w for w in notes[i]), notes[i]
    with warnings.catch_warnings(record=True) as caught:  # later warnings of the process still show
        warnings.simplefilter("default")
        warnings.warn("still shown", UserWarning)
    assert [str(w.message) for w in caught] == ["still shown"]


def _broken_scaling_nifti() -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.header["scl_slope"] = np.inf  # read as no scaling
    return img.to_bytes()


def test_training_in_a_request_thread_never_changes_the_thread_count(tmp_path: Path) -> None:
    """torch's thread count is process-wide (threads started later take it): a training call from a request
    thread leaves it alone while it runs (the fusion stage used to set 1) and after it raised."""
    from core.demo import write_demo_cohort
    from core.train import train_model

    cohort = write_demo_cohort(tmp_path / "c", n=24, seed=1, volumes=False)
    outer = torch.get_num_threads()
    torch.set_num_threads(2)  # the tests' processes run with 1 (conftest): a count the fusion stage would change
    before = torch.get_num_threads()
    during: list[int] = []
    raised: list[BaseException] = []

    def fresh_thread_count() -> int:
        out: list[int] = []
        t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
        t.start()
        t.join()
        return out[0]

    def probe(fraction: float, message: str) -> None:
        if ": epoch " in message:  # inside the fusion stage
            during.append(fresh_thread_count())
            raise RuntimeError("stopped by the test")

    def train() -> None:
        try:
            train_model(cohort, "ehr_only", tmp_path / "m", epochs=1, device="cpu", progress=probe,
                        overrides={"threads": 1})
        except RuntimeError as err:
            raised.append(err)

    try:
        t = threading.Thread(target=train)
        t.start()
        t.join()
        assert [str(e) for e in raised] == ["stopped by the test"]
        assert during == [before]
        assert torch.get_num_threads() == before and fresh_thread_count() == before
    finally:
        torch.set_num_threads(outer)


def test_sanity_randomization_leaves_the_shared_net_and_the_global_random_state(shared: dict[str, Any]) -> None:
    from core.sanity import cascading_randomization

    model = shared["models"]["image_only" if "image_only" in shared["models"] else "concat"]
    inputs = next(v for (n, _), v in shared["inputs"].items() if n == model.fusion)
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    torch.manual_seed(7)
    state = torch.get_rng_state()
    table, _ = cascading_randomization(model, inputs, "gradcam", 365.0, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert table["spearman"].iloc[0] == 1.0 and float(table["spearman"].iloc[-1]) < 0.9
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in weights.items())
    assert _hooks_and_grads(model.net) == []
