"""The Batcher without HTTP: rows go back to their own submitter across prompts and threads, a full
queue refuses, close drains what was accepted, and a failing encode fails only its own requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.serve.batcher import Batcher, QueueFull, ShuttingDown
from onnxembed.serve.metrics import Metrics
from tests.conftest import CORPUS


class BlockingEncoder:
    """Stands in for Encoder: waits for ``release``, then returns row i = [len(text)] * 2 (or raises)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], **options: Any) -> np.ndarray:
        self.release.wait(timeout=30)
        self.calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("boom")
        return np.array([[len(text), len(text)] for text in texts], dtype=np.float32)


def _wait_until(condition: Any) -> bool:
    for _ in range(500):  # bounded: 5 s
        if condition():
            return True
        threading.Event().wait(0.01)
    return False


@pytest.mark.parametrize(("workers", "threads"), [(1, None), (3, 1)])  # several workers share one Encoder
def test_rows_go_back_to_their_own_request_with_prompts(tiny_export: Path, workers: int, threads: int | None) -> None:
    encoder = Encoder(tiny_export, threads=threads)
    batcher = Batcher(encoder, max_queue=10_000, max_run_texts=64, metrics=Metrics(), workers=workers)
    jobs = [(CORPUS[i : i + 1 + i % 7], "query: " if i % 3 == 0 else "") for i in range(60)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = list(pool.map(lambda job: batcher.submit(job[0], job[1], tokens=0), jobs))
        for (texts, prompt), future in zip(jobs, futures, strict=True):
            np.testing.assert_allclose(future.result(timeout=30), encoder.encode(texts, prompt=prompt), atol=1e-5)
    finally:
        batcher.close(timeout=30)


def test_full_queue_refuses_and_close_drains() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=4, max_run_texts=100)  # type: ignore[arg-type]
    first = batcher.submit(["a"], "", tokens=1)  # the worker takes it and blocks in encode
    assert _wait_until(lambda: batcher.queue_depth == 0)
    queued = [batcher.submit(["bb", "ccc"], "", tokens=2), batcher.submit(["dddd", "e"], "", tokens=2)]
    assert batcher.queue_depth == 4
    with pytest.raises(QueueFull):
        batcher.submit(["f"], "", tokens=1)
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 30})
    closer.start()
    assert _wait_until(lambda: batcher.closed)
    with pytest.raises(ShuttingDown):
        batcher.submit(["g"], "", tokens=1)
    fake.release.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    assert first.result(timeout=1)[:, 0].tolist() == [1]
    assert queued[0].result(timeout=1)[:, 0].tolist() == [2, 3]
    assert queued[1].result(timeout=1)[:, 0].tolist() == [4, 1]
    assert fake.calls == [["a"], ["bb", "ccc", "dddd", "e"]]  # the two waiting requests ran together


def test_failing_encode_fails_only_its_group() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100)  # type: ignore[arg-type]
    try:
        bad = batcher.submit(["boom"], "p: ", tokens=1)
        good = batcher.submit(["ok"], "", tokens=1)
        fake.release.set()
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(timeout=30)
        assert good.result(timeout=30)[:, 0].tolist() == [2]
        assert batcher.submit(["later"], "", tokens=1).result(timeout=30)[:, 0].tolist() == [5]
    finally:
        batcher.close(timeout=30)


def test_batch_wait_gathers_requests_into_one_run() -> None:
    fake = BlockingEncoder()
    fake.release.set()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, batch_wait_s=0.5)  # type: ignore[arg-type]
    try:
        first = batcher.submit(["a"], "", tokens=1)
        second = batcher.submit(["bb"], "", tokens=1)  # well inside the first one's wait
        assert first.result(timeout=30)[0, 0] == 1 and second.result(timeout=30)[0, 0] == 2
        assert fake.calls == [["a", "bb"]]
    finally:
        batcher.close(timeout=30)


def test_second_worker_takes_requests_while_the_first_runs_and_close_drains_both() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, workers=2)  # type: ignore[arg-type]
    first = batcher.submit(["a"], "", tokens=1)
    assert _wait_until(lambda: batcher.queue_depth == 0)  # one worker holds it, blocked in encode
    second = batcher.submit(["bb", "ccc"], "", tokens=2)
    # with one worker this request would wait in the queue until the first run ends
    assert _wait_until(lambda: batcher.queue_depth == 0), "the second worker did not take the waiting request"
    third = batcher.submit(["dddd"], "", tokens=1)  # both workers busy: it waits
    assert batcher.queue_depth == 1
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 30})
    closer.start()
    fake.release.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    assert first.result(timeout=1)[:, 0].tolist() == [1]
    assert second.result(timeout=1)[:, 0].tolist() == [2, 3]
    assert third.result(timeout=1)[:, 0].tolist() == [4]
    assert sorted(map(tuple, fake.calls)) == [("a",), ("bb", "ccc"), ("dddd",)]
