"""Batches made one ahead in a background thread while the network trains on the current one.

The lesion pretext makes each batch on the CPU (numpy: sampling slices, inserting synthetic lesions) and then
runs the network step. Made in order by one worker thread, the batches are the same as when the loop makes them
itself: the worker is the only user of the batch maker's random generator. The network's torch calls release
the GIL, so the two overlap: on a GPU the step then costs about the batch making alone, on the CPU the batch
making runs while the network's threads wait on each other.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetched(make: Callable[[], T], n: int) -> Iterator[T]:
    """``make()`` called ``n`` times, in order, in one worker thread that stays one call ahead of the consumer.

    An exception in ``make`` is raised where its result is taken. A consumer that stops early (break, exception,
    garbage-collected generator) leaves at most the one call in flight to finish; nothing runs after it.

    >>> counter = iter(range(100))
    >>> list(prefetched(lambda: next(counter), 4))
    [0, 1, 2, 3]
    """
    if n < 1:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        ahead: Future[T] = pool.submit(make)
        for i in range(n):
            value = ahead.result()  # the next call starts only after this one ended: one worker, in order
            if i + 1 < n:
                ahead = pool.submit(make)
            yield value
