"""Running planned batches: one after another, or overlapped (tokenizing ahead while the model runs).

In scope: threads and a bounded queue between the jobs that tokenize and pad (batching.plan) and the
workers that run a session on each batch; stopping every thread and re-raising the first error.
Not in scope: what a job or a worker does (encoder.py).

Overlapped: ``producers`` threads take the jobs in turn and put their batches on a queue of ``depth``
batches; one thread per worker (one per session) takes them off. tokenizers' encode_batch and
onnxruntime's run both release the GIL, so tokenizing the next window, padding it with numpy and
running the model proceed at once; the queue bounds memory. On a GPU this is what keeps the device fed;
on a 2-core CPU the two sides compete for the same cores (see the README for what was measured).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")
_POLL_S = 0.05


def run_serial(jobs: Sequence[Callable[[], Iterator[Item]]], worker: Callable[[Item], None]) -> None:
    """Every job's items through ``worker``, in the calling thread."""
    for job in jobs:
        for item in job():
            worker(item)


def run_overlapped(
    jobs: Sequence[Callable[[], Iterator[Item]]],
    workers: Sequence[Callable[[Item], None]],
    producers: int,
    depth: int,
) -> None:
    """Every job's items through one of ``workers``, with jobs and workers on their own threads.

    Returns when every item has been handled; the first exception of any thread stops the others and is
    raised here. Items are handled in no particular order: a worker must place its results itself.
    """
    if not workers or producers < 1 or depth < 1:
        raise ValueError("run_overlapped needs at least one worker, one producer and a queue depth of 1")
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    errors: list[BaseException] = []
    done = object()

    def fail(error: BaseException) -> None:
        errors.append(error)
        stop.set()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce(mine: Sequence[Callable[[], Iterator[Item]]]) -> None:
        try:
            for job in mine:
                for item in job():
                    if not put(item):
                        return
        except BaseException as error:  # re-raised in the caller's thread
            fail(error)

    def consume(worker: Callable[[Item], None]) -> None:
        while not stop.is_set():
            try:
                item = items.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is done:
                return
            try:
                worker(item)
            except BaseException as error:  # re-raised in the caller's thread
                fail(error)
                return

    producer_threads = [
        threading.Thread(target=produce, args=(jobs[k::producers],), name=f"onnxembed-tokenize-{k}", daemon=True)
        for k in range(min(producers, max(len(jobs), 1)))
    ]
    worker_threads = [
        threading.Thread(target=consume, args=(worker,), name=f"onnxembed-run-{k}", daemon=True)
        for k, worker in enumerate(workers)
    ]
    for thread in (*producer_threads, *worker_threads):
        thread.start()
    try:
        for thread in producer_threads:
            thread.join()
        for _ in worker_threads:
            put(done)
        for thread in worker_threads:
            thread.join()
    except BaseException:  # KeyboardInterrupt in the caller: let the threads wind down
        stop.set()
        raise
    if errors:
        raise errors[0]
