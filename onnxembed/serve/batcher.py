"""Dynamic batching: worker threads run the texts of concurrent requests together, one model batch at a time.

In scope: the bounded queue (counted in texts), taking every waiting request at once, cutting what was taken
into model batches (the Encoder's own plan: token order, token budget, run cost), running those batches on
whichever worker is free, handing each request exactly its own rows through a future as soon as its last
batch is done, draining on close.
Not in scope: HTTP and per-request post-processing (normalize, dimensions) — app.py does that on the rows.

One pool of workers serves every model of the server: an embedding model's texts and a reranker's (query,
document) pairs queue together, and a take is cut into batches per model and prompt (each model's own plan).

How the workers share the work: they pull model batches from one queue of planned batches. A worker that
finds that queue empty takes every waiting request (up to ``max_run_texts``), plans them and puts the
batches on the queue, so the other workers join in on them at once. There is no artificial wait to fill a
batch: while the workers run, new requests pile up and the next plan takes them all, so batches grow with
load and a lone request runs at once. Takes are bigger than when each worker encoded its own take (every
waiting request, taken while the other core still runs the previous take's last batch) and a request leaves
as soon as its own texts are done: faster under bench/serve.py's load
(docs/performance.md#what-the-serving-figures-decided).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import numpy as np

from onnxembed.errors import OnnxEmbedError
from onnxembed.kernels.sparse import sparse_rows
from onnxembed.runtime import Encoder, Reranker, SparseEncoder
from onnxembed.runtime.tokenize import Item
from onnxembed.serve.metrics import Metrics

Model = Encoder | Reranker | SparseEncoder  # all plan batches (_batches) and run one (_embed_batch) the same way

logger = logging.getLogger(__name__)


class Embedded(NamedTuple):
    """What a request gets back: its rows, and the tokens the model read for each text (after truncation,
    prompt and special tokens included; its attention mask's row sums)."""

    rows: np.ndarray  # (texts, dim) float32: embeddings, or a reranker's (pairs, num_labels) logits; for a
    # sparse encoder (texts,) objects, each a SparseEmbedding (a vocabulary-wide float row a text is ~120 KB)
    tokens: np.ndarray  # (texts,) int64


class QueueFull(OnnxEmbedError):
    """The queue holds too many texts to take this request now."""


class ShuttingDown(OnnxEmbedError):
    """The batcher was closed: it finishes what it accepted and takes nothing new."""


@dataclass
class _Job:
    texts: Sequence[Item]  # texts, or (query, document) pairs for a reranker
    prompt: str
    future: Future[Embedded]
    model: Model
    chars: int = 0


def _empty_rows(model: Model, texts: int) -> np.ndarray:
    if isinstance(model, SparseEncoder):
        return np.empty(texts, dtype=object)
    return np.empty((texts, model.dim), np.float32)


def _chars(item: Item) -> int:
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


@dataclass
class _Take:
    """Requests with one prompt, taken together: their rows, and how many texts each still waits for. Every
    request is answered exactly once: with its rows when its last text is done, or with the error of the
    first batch of its own that failed (the take's other requests go on)."""

    jobs: list[_Job]
    prompt: str
    model: Model
    rows: np.ndarray  # (texts of all jobs, dim) or, for a sparse model, (texts of all jobs,) objects
    tokens: np.ndarray  # (texts of all jobs,) tokens the model read, filled batch by batch
    owner: np.ndarray  # text -> index of its job
    offsets: np.ndarray  # job k's rows are rows[offsets[k]:offsets[k + 1]]
    left: list[int]  # texts not yet embedded, per job
    failed: set[int] = field(default_factory=set)  # jobs answered with an error
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, jobs: list[_Job], prompt: str, model: Model) -> _Take:
        counts = [len(job.texts) for job in jobs]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        owner = np.repeat(np.arange(len(jobs)), counts)
        total = int(offsets[-1])
        return cls(jobs, prompt, model, _empty_rows(model, total), np.zeros(total, np.int64), owner, offsets, counts)

    def texts(self) -> list[Item]:
        return [text for job in self.jobs for text in job.texts]

    def wanted(self, indices: np.ndarray) -> bool:
        """Whether any request of these texts still waits for them (not all have failed)."""
        with self.lock:
            return any(job not in self.failed for job in self.owner[indices].tolist())

    def done(self, indices: np.ndarray, embeddings: np.ndarray, tokens: np.ndarray) -> None:
        """Store one batch's rows and token counts; answer each request whose last text this was."""
        if self.rows.dtype == object:
            batch = sparse_rows(embeddings, cast(SparseEncoder, self.model).max_active_dims)
            for position, index in enumerate(indices.tolist()):
                self.rows[index] = batch.row(position)
        else:
            self.rows[indices] = embeddings
        self.tokens[indices] = tokens
        finished = []
        with self.lock:
            for job in self.owner[indices].tolist():
                if job in self.failed:
                    continue
                self.left[job] -= 1
                if self.left[job] == 0:
                    finished.append(job)
        for job in finished:
            own = slice(self.offsets[job], self.offsets[job + 1])
            self.jobs[job].future.set_result(Embedded(self.rows[own], self.tokens[own]))

    def fail(self, error: BaseException, indices: np.ndarray | None = None) -> None:
        """Answer with ``error`` the requests that own these texts (None: every request of the take), unless
        they were answered already."""
        owners = range(len(self.jobs)) if indices is None else set(self.owner[indices].tolist())
        with self.lock:
            newly = [job for job in owners if job not in self.failed and self.left[job] > 0]
            self.failed.update(newly)
        for job in newly:
            self.jobs[job].future.set_exception(error)


Run = tuple[_Take, np.ndarray, dict[str, np.ndarray]]  # (take, indices into its texts, padded arrays)


class Batcher:
    """Queue texts from any thread; ``workers`` threads embed them. ``submit`` returns a future of
    :class:`Embedded`: (len(texts), dim) float32 rows, what ``Encoder.encode(texts, prompt=prompt)`` gives, in
    order, and each text's token count (so the server need not tokenize twice to report usage)."""

    def __init__(
        self,
        encoder: Model,
        max_queue: int,
        max_run_texts: int,
        max_batch_tokens: int | None = None,
        metrics: Metrics | None = None,
        batch_wait_s: float = 0.0,
        workers: int = 1,
        max_queue_chars: int | None = None,
    ) -> None:
        self._encoder = encoder
        self.max_queue_chars = max_queue_chars  # None: no bound on characters
        self._batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self._max_run_texts = max_run_texts
        self._max_batch_tokens = max_batch_tokens
        self._metrics = metrics
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()  # requests not taken yet
        self._runs: deque[Run] = deque()  # planned batches not started yet
        self._queued = 0
        self._queued_chars = 0
        self._planning = 0  # workers cutting a take into batches (they will add runs)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"onnxembed-batcher-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Texts waiting to be taken (not counting those planned or running)."""
        return self._queued

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive(self) -> bool:
        """Whether every worker thread still runs (a dead one would leave its share of the queue waiting)."""
        return all(thread.is_alive() for thread in self._threads)

    def submit(
        self, texts: Sequence[Item], prompt: str, model: Model | None = None, chars: int | None = None
    ) -> Future[Embedded]:
        """Queue texts (all run with ``prompt``, "" for none) for ``model`` (default: the ``encoder`` the batcher
        was made with), or a reranker's pairs; ``chars``: the characters they hold (default: counted; a
        reranker's pairs share one query string). Raises QueueFull or ShuttingDown."""
        future: Future[Embedded] = Future()
        with self._cond:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if self._queued + len(texts) > self.max_queue:
                raise QueueFull(f"{self._queued} texts are queued (limit {self.max_queue}); retry later")
            chars = sum(map(_chars, texts)) if chars is None else chars
            if self.max_queue_chars is not None and self._queued_chars + chars > self.max_queue_chars:
                limit = self.max_queue_chars
                raise QueueFull(f"{self._queued_chars} characters are queued (limit {limit}); retry later")
            self._jobs.append(_Job(texts, prompt, future, self._encoder if model is None else model, chars))
            self._queued += len(texts)
            self._queued_chars += chars
            self._cond.notify()
        return future

    def withdraw(self, future: Future[Embedded]) -> bool:
        """Take back a request whose client hung up: out of the queue if no worker took it yet (True), else
        its future is cancelled, which stops it only if its batches were not planned."""
        with self._cond:
            for job in self._jobs:
                if job.future is future:
                    self._jobs.remove(job)
                    self._queued -= len(job.texts)
                    self._queued_chars -= job.chars
                    future.cancel()
                    return True
        future.cancel()
        return False

    def close(self, timeout: float | None = None) -> None:
        """Take nothing new, finish every accepted job, stop the workers. Past ``timeout`` seconds, the jobs
        not yet answered get ShuttingDown (a stuck model must not hold the process forever)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.alive:
            with self._cond:
                jobs, runs = list(self._jobs), list(self._runs)
                self._jobs.clear()
                self._runs.clear()
                self._queued = self._queued_chars = 0
            error = ShuttingDown("the server stopped before this request was embedded")
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(error)
            for take in {id(run[0]): run[0] for run in runs}.values():
                take.fail(error)

    def _work(self) -> None:
        while (run := self._next_run()) is not None:
            take, indices, arrays = run
            if not take.wanted(indices):
                continue
            started = time.perf_counter()
            try:
                embeddings = take.model._embed_batch(arrays, prompt=take.prompt)
                tokens = arrays["attention_mask"].sum(axis=1, dtype=np.int64)
                if self._metrics is not None:
                    self._metrics.observe_batch(len(indices), int(tokens.sum()), time.perf_counter() - started)
                take.done(indices, embeddings, tokens)
            except Exception as error:  # a failing batch fails the requests it holds, never the worker
                logger.exception("embedding a batch of %d texts failed", len(indices))
                take.fail(error, indices)

    def _next_run(self) -> Run | None:
        """The next planned batch; with none planned, take the waiting requests and plan them. None: closed
        and drained."""
        while True:
            with self._cond:
                while not self._runs and not self._jobs:
                    if self._closed and self._planning == 0:
                        self._cond.notify_all()  # the other workers may stop too
                        return None
                    self._cond.wait()
                if self._runs:
                    return self._runs.popleft()
                jobs = self._take()
                self._planning += 1
            runs: list[Run] = []
            try:
                runs = self._plan(jobs)
            except Exception as error:  # none of its batches was published: answer its requests here
                logger.exception("planning %d requests failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            finally:
                with self._cond:
                    self._planning -= 1
                    self._runs.extend(runs)
                    self._cond.notify_all()

    def _take(self) -> list[_Job]:
        """Every waiting request up to max_run_texts (after ``batch_wait_s`` to let a burst gather). Holds
        the lock."""
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
        self._queued_chars -= sum(job.chars for job in taken)
        return taken

    def _plan(self, jobs: list[_Job]) -> list[Run]:
        """The model batches of the taken requests, one take per model and prompt. A request whose client went
        away may have cancelled its future; after this it cannot."""
        by_prompt: dict[tuple[int, str], list[_Job]] = {}
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            if job.texts:
                by_prompt.setdefault((id(job.model), job.prompt), []).append(job)
            else:  # nothing to run: no batch would ever answer it
                job.future.set_result(Embedded(_empty_rows(job.model, 0), np.empty(0, np.int64)))
        runs: list[Run] = []
        for (_, prompt), group in by_prompt.items():
            model = group[0].model
            take = _Take.of(group, prompt, model)
            try:
                batches = model._batches(take.texts(), prompt, self._max_batch_tokens)  # type: ignore[arg-type]
                runs.extend((take, indices, arrays) for indices, arrays in batches)
            except Exception as error:  # e.g. a prompt this variant cannot leave out of its pooling
                logger.exception("planning %d texts failed", len(take.owner))
                take.fail(error)  # its batches already planned are skipped: no request of it is waiting
        return runs
