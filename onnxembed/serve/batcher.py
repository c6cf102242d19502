"""Dynamic batching: worker threads run the texts of concurrent requests together.

In scope: the bounded queue (counted in texts), taking every waiting request at once, one
``Encoder.encode`` call per prompt (the Encoder cuts token-budget batches inside it), handing each
request exactly its own rows through a future, draining on close.
Not in scope: HTTP and per-request post-processing (normalize, dimensions) — app.py does that on the rows.

There is no artificial wait to fill a batch: while the workers run their groups, new requests pile up and
the next free worker takes them all, so batches grow with load and a lone request runs at once. Several
workers share one Encoder (its sessions are safe to run from several threads); see serve.worker_threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from onnxembed.runtime import Encoder
from onnxembed.serve.metrics import Metrics

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds too many texts to take this request now."""


class ShuttingDown(Exception):
    """The batcher was closed: it finishes what it accepted and takes nothing new."""


@dataclass
class _Job:
    texts: list[str]
    prompt: str
    tokens: int
    future: Future[np.ndarray]


class Batcher:
    """Queue texts from any thread; ``workers`` threads encode them. ``submit`` returns a future of
    (len(texts), dim) float32 rows: the Encoder's output (prompt applied, model's own Normalize), in order."""

    def __init__(
        self,
        encoder: Encoder,
        max_queue: int,
        max_run_texts: int,
        max_batch_tokens: int | None = None,
        metrics: Metrics | None = None,
        batch_wait_s: float = 0.0,
        workers: int = 1,
    ) -> None:
        self._encoder = encoder
        self._batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self._max_run_texts = max_run_texts
        self._max_batch_tokens = max_batch_tokens
        self._metrics = metrics
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"onnxembed-batcher-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Texts waiting for the worker (not counting the group it is running)."""
        return self._queued

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, texts: list[str], prompt: str, tokens: int) -> Future[np.ndarray]:
        """Queue texts (all run with ``prompt``, "" for none); raises QueueFull or ShuttingDown."""
        future: Future[np.ndarray] = Future()
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if self._queued + len(texts) > self.max_queue:
                raise QueueFull(f"{self._queued} texts are queued (limit {self.max_queue}); retry later")
            self._jobs.append(_Job(texts, prompt, tokens, future))
            self._queued += len(texts)
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Take nothing new, finish every accepted job, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None  # closed and drained
            # Let a burst of concurrent requests gather into one run (bigger batches pad less).
            deadline = time.monotonic() + self._batch_wait_s
            while not self._closed and self._queued < self._max_run_texts:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[_Job] = []
            count = 0
            while self._jobs and (not taken or count + len(self._jobs[0].texts) <= self._max_run_texts):
                job = self._jobs.popleft()
                count += len(job.texts)
                taken.append(job)
            self._queued -= count
            if self._jobs:  # left over (max_run_texts): another worker may be free to take them
                self._cond.notify()
        # A request whose client went away may have cancelled its future; after this it cannot.
        return [job for job in taken if job.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            by_prompt: dict[str, list[_Job]] = {}
            for job in jobs:
                by_prompt.setdefault(job.prompt, []).append(job)
            for prompt, group in by_prompt.items():
                self._encode(prompt, group)

    def _encode(self, prompt: str, group: list[_Job]) -> None:
        texts = [text for job in group for text in job.texts]
        started = time.perf_counter()
        try:
            embeddings = self._encoder.encode(texts, prompt=prompt, max_batch_tokens=self._max_batch_tokens)
        except Exception as error:  # a failing group fails its own requests, never the worker
            logger.exception("encoding %d texts failed", len(texts))
            for job in group:
                job.future.set_exception(error)
            return
        if self._metrics is not None:
            self._metrics.observe_batch(len(texts), sum(job.tokens for job in group), time.perf_counter() - started)
        offset = 0
        for job in group:
            job.future.set_result(embeddings[offset : offset + len(job.texts)])
            offset += len(job.texts)
