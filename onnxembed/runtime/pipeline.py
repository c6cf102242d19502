"""Running planned batches: one after another, or overlapped (tokenizing ahead while the model runs).

In scope: threads and a bounded queue between the jobs that tokenize and pad (batching.plan) and the
workers that run a session on each batch; stopping every thread and re-raising the first error.
Not in scope: what a job or a worker does (engine.py).

Overlapped (OverlappedRunner): ``producers`` threads take the jobs in turn and put their batches on a
queue of ``depth`` batches; one thread per worker (one per session) takes them off. tokenizers' encode_batch and
onnxruntime's run both release the GIL, so tokenizing the next window, padding it with numpy and
running the model proceed at once; the queue bounds memory. On a GPU this is what keeps the device fed;
on a 2-core CPU the two sides compete for the same cores (docs/performance.md#cpu-cores-threads-sessions-or-processes).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from onnxembed.errors import InvalidArgumentError

Item = TypeVar("Item")
_POLL_S = 0.05


def progress_bar(total: int, enabled: bool, desc: str, unit: str) -> Any:
    """A tqdm bar over ``total`` items when ``enabled`` (tqdm imported only then), else None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def run_serial(jobs: Sequence[Callable[[], Iterator[Item]]], worker: Callable[[Item], None]) -> None:
    """Every job's items through ``worker``, in the calling thread."""
    for job in jobs:
        for item in job():
            worker(item)


class OverlappedRunner:
    """Runs jobs' items through workers with jobs and workers on threads that live as long as the runner.

    Long-lived threads matter on CUDA: onnxruntime's CUDA provider keeps per-thread state (cuBLAS handles,
    the kernels it has set up for each shape), which threads started afresh for every call lose (measured:
    docs/performance.md#gpu-engine-settings). ``run`` calls are serialized: one device, one engine.
    """

    def __init__(self, workers: int, producers: int, depth: int) -> None:
        if workers < 1 or producers < 1 or depth < 1:
            raise InvalidArgumentError(
                "OverlappedRunner needs at least one worker, one producer and a queue depth of 1"
            )
        self._producers = ThreadPoolExecutor(producers, thread_name_prefix="onnxembed-tokenize")
        self._producer_count = producers
        # one thread per worker, so that worker k (session k) always runs on the same thread
        self._workers = [ThreadPoolExecutor(1, thread_name_prefix=f"onnxembed-run-{k}") for k in range(workers)]
        self._depth = depth
        self._lock = threading.Lock()

    def run(self, jobs: Sequence[Callable[[], Iterator[Item]]], workers: Sequence[Callable[[Item], None]]) -> None:
        """Every job's item through one of ``workers`` (one per worker thread). Returns when all are handled;
        the first exception of any thread stops the others and is raised here. Items are handled in no
        particular order: a worker must place its results itself."""
        if len(workers) != len(self._workers):
            raise InvalidArgumentError(
                f"this runner has {len(self._workers)} worker threads; got {len(workers)} workers"
            )
        with self._lock:
            self._run(jobs, workers)

    def _run(self, jobs: Sequence[Callable[[], Iterator[Item]]], workers: Sequence[Callable[[Item], None]]) -> None:
        items: queue.Queue[Any] = queue.Queue(maxsize=self._depth)
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

        count = min(self._producer_count, max(len(jobs), 1))
        producing = [self._producers.submit(produce, jobs[k::count]) for k in range(count)]
        consuming = [pool.submit(consume, worker) for pool, worker in zip(self._workers, workers, strict=True)]
        try:
            wait(producing)
            for _ in consuming:
                put(done)
            wait(consuming)
        except BaseException:  # KeyboardInterrupt in the caller: stop the threads before leaving
            stop.set()
            wait([*producing, *consuming], timeout=10)
            raise
        if errors:
            raise errors[0]
