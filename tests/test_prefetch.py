"""core.train.prefetch: batches made one ahead in a worker thread, in order, the same as made in the loop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from core.models.image2d import SliceEncoder2D
from core.preprocess.transforms import ChannelStack, HUWindow
from core.train import pretext_lesions
from core.train.prefetch import prefetched
from core.train.pretext_lesions import LesionPrior, _sample_slices, insert_synthetic_lesions, pretrain_detector


def test_the_worker_draws_the_same_batches_in_the_same_order_as_the_loop() -> None:
    x = torch.rand(6, 4, 16, 16) * 0.2
    mask = torch.ones(6, 4)
    prior = LesionPrior(radius_px=(1.5, 3.0))

    def maker(rng: np.random.Generator):  # type: ignore[no-untyped-def]
        return lambda: insert_synthetic_lesions(_sample_slices(x, mask, np.arange(6), 5, rng), rng, prior, 1000.0, 0.0)

    inline = maker(np.random.default_rng(3))
    expected = [inline() for _ in range(12)]
    got = list(prefetched(maker(np.random.default_rng(3)), 12))
    assert len(got) == 12
    for (xa, ta), (xb, tb) in zip(expected, got):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert not torch.equal(expected[0][0], expected[1][0])  # the batches differ: the generator moved on


def test_the_next_batch_is_made_in_another_thread_while_the_consumer_works() -> None:
    made: list[tuple[int, str, float, float]] = []
    count = iter(range(10))

    def make() -> int:
        t0 = time.perf_counter()
        time.sleep(0.05)
        i = next(count)
        made.append((i, threading.current_thread().name, t0, time.perf_counter()))
        return i

    taken: list[tuple[int, float, float]] = []
    for i in prefetched(make, 4):
        t0 = time.perf_counter()
        time.sleep(0.25)  # the consumer's own work (the network step): long enough for a busy machine to start the worker
        taken.append((i, t0, time.perf_counter()))
    assert [m[0] for m in made] == [0, 1, 2, 3] and [t[0] for t in taken] == [0, 1, 2, 3]
    assert all(name.startswith("prefetch") for _, name, _, _ in made)
    for k in range(3):  # batch k+1 was being made while the consumer worked on batch k
        start_next, end_next = made[k + 1][2], made[k + 1][3]
        work_start, work_end = taken[k][1], taken[k][2]
        assert start_next < work_end and end_next > work_start


def test_an_error_in_the_maker_reaches_the_consumer_and_an_early_stop_leaves_no_work_behind() -> None:
    calls: list[int] = []

    def make() -> int:
        calls.append(len(calls))
        if len(calls) == 3:
            raise ValueError("bad batch 3")
        return len(calls)

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for v in prefetched(make, 5):
            got.append(v)
    assert got == [1, 2] and len(calls) == 3  # nothing after the failing call
    calls.clear()
    gen = prefetched(lambda: calls.append(1) or len(calls), 100)
    assert next(gen) == 1
    gen.close()  # the consumer stops early: the one call in flight ends, no more start
    time.sleep(0.05)
    assert len(calls) == 2
    assert list(prefetched(lambda: 1, 0)) == []


def test_the_pretext_trains_the_same_detector_with_the_batches_made_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(10, 3, 24, 24, generator=g) - 0.5) * 0.1
    mask = torch.ones(10, 3)

    def run() -> tuple[dict, list[torch.Tensor]]:
        torch.manual_seed(0)
        stem = ChannelStack(HUWindow(-1000, 1000), ((-160.0, 240.0),), (3,))
        enc = SliceEncoder2D(8, 24, (4, 8), stem=stem, strides=(2, 1), pool="detect")
        info = pretrain_detector(enc, x, mask, np.arange(8), np.arange(8, 10), steps=12, batch=6, seed=4,
                                 prior=LesionPrior(radius_px=(1.5, 3.0)))
        return info, [p.detach().clone() for p in enc.parameters()]

    info_ahead, params_ahead = run()
    monkeypatch.setattr(pretext_lesions, "prefetched", lambda make, n: (make() for _ in range(n)))  # made in the loop
    info_loop, params_loop = run()
    assert info_ahead["loss_first_50"] == info_loop["loss_first_50"] and info_ahead["synthetic_val_auc"] == info_loop["synthetic_val_auc"]
    assert all(torch.equal(a, b) for a, b in zip(params_ahead, params_loop))
