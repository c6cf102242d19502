"""The Batcher without HTTP: rows go back to their own submitter across prompts and threads, a full
queue refuses, close drains what was accepted, a request is answered when its own texts are done, and a
failing batch or plan fails only the requests it holds, never a worker."""

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
from tests.replicas import CORPUS, Replica


class BlockingEncoder:
    """Stands in for Encoder: one model batch per text; ``_embed_batch`` waits for ``release`` (and for the
    text's own gate, if it has one), then returns the row [len(text), len(text)], or raises for "boom";
    planning "noplan" raises."""

    dim = 2

    def __init__(self) -> None:
        self.release = threading.Event()
        self.gates: dict[str, threading.Event] = {}
        self.takes: list[list[str]] = []  # the texts of each plan, in order
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def _batches(self, texts: list[str], prompt: str = "", max_batch_tokens: int | None = None) -> Any:
        self.takes.append(list(texts))
        for index, text in enumerate(texts):
            if text == "noplan":
                raise ValueError("cannot plan this")
            yield np.array([index]), {"text": np.array([text]), "attention_mask": np.ones((1, max(len(text), 1)))}

    def _embed_batch(self, arrays: dict[str, np.ndarray], prompt: str = "") -> np.ndarray:
        (text,) = arrays["text"].tolist()
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.release.wait(timeout=30)
            self.gates.get(text, self.release).wait(timeout=30)
            if text == "boom":
                raise RuntimeError("boom")
            return np.array([[len(text), len(text)]], dtype=np.float32)
        finally:
            with self._lock:
                self.running -= 1


def _wait_until(condition: Any) -> bool:
    for _ in range(500):  # bounded: 5 s
        if condition():
            return True
        threading.Event().wait(0.01)
    return False


@pytest.mark.parametrize(("workers", "threads"), [(1, None), (3, 1)])  # several workers share one Encoder
def test_rows_go_back_to_their_own_request_with_prompts(
    tiny_export: Path, chinese_bert: Replica, workers: int, threads: int | None
) -> None:
    from sentence_transformers import SentenceTransformer

    tokenize = SentenceTransformer(str(chinese_bert.path), device="cpu").tokenize  # tiny_export's source
    encoder = Encoder(tiny_export, threads=threads)
    batcher = Batcher(encoder, max_queue=10_000, max_run_texts=64, metrics=Metrics(), workers=workers)
    jobs = [(CORPUS[i : i + 1 + i % 7], "query: " if i % 3 == 0 else "") for i in range(60)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = list(pool.map(lambda job: batcher.submit(job[0], job[1]), jobs))
        for (texts, prompt), future in zip(jobs, futures, strict=True):
            rows, tokens = future.result(timeout=30)
            np.testing.assert_allclose(rows, encoder.encode(texts, prompt=prompt), atol=1e-5)
            # what the model read, as sentence-transformers feeds it (some requests here are empty)
            expected = tokenize([prompt + text for text in texts])["attention_mask"].sum(axis=1) if texts else []
            assert tokens.tolist() == list(expected)
    finally:
        batcher.close(timeout=30)


def test_full_queue_refuses_and_close_drains() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=4, max_run_texts=100)  # type: ignore[arg-type]
    first = batcher.submit(["a"], "")  # the worker takes it and blocks in encode
    assert _wait_until(lambda: batcher.queue_depth == 0)
    queued = [batcher.submit(["bb", "ccc"], ""), batcher.submit(["dddd", "e"], "")]
    assert batcher.queue_depth == 4
    with pytest.raises(QueueFull):
        batcher.submit(["f"], "")
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 30})
    closer.start()
    assert _wait_until(lambda: batcher.closed)
    with pytest.raises(ShuttingDown):
        batcher.submit(["g"], "")
    fake.release.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    assert first.result(timeout=1).rows[:, 0].tolist() == [1]
    assert queued[0].result(timeout=1).rows[:, 0].tolist() == [2, 3]
    assert queued[1].result(timeout=1).rows[:, 0].tolist() == [4, 1]
    assert fake.takes == [["a"], ["bb", "ccc", "dddd", "e"]]  # the two waiting requests were taken together


def test_a_failing_batch_of_one_prompt_spares_the_requests_of_another() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100)  # type: ignore[arg-type]
    try:
        bad = batcher.submit(["boom"], "p: ")
        good = batcher.submit(["ok"], "")
        fake.release.set()
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(timeout=30)
        assert good.result(timeout=30).rows[:, 0].tolist() == [2]
        assert batcher.submit(["later"], "").result(timeout=30).rows[:, 0].tolist() == [5]
    finally:
        batcher.close(timeout=30)


def test_batch_wait_gathers_requests_into_one_run() -> None:
    fake = BlockingEncoder()
    fake.release.set()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, batch_wait_s=0.5)  # type: ignore[arg-type]
    try:
        first = batcher.submit(["a"], "")
        second = batcher.submit(["bb"], "")  # well inside the first one's wait
        assert first.result(timeout=30).rows[0, 0] == 1 and second.result(timeout=30).rows[0, 0] == 2
        assert fake.takes == [["a", "bb"]]
    finally:
        batcher.close(timeout=30)


def test_second_worker_takes_requests_while_the_first_runs_and_close_drains_both() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, workers=2)  # type: ignore[arg-type]
    first = batcher.submit(["a"], "")
    assert _wait_until(lambda: batcher.queue_depth == 0)  # one worker holds it, blocked in encode
    second = batcher.submit(["bb", "ccc"], "")
    # with one worker this request would wait in the queue until the first run ends
    assert _wait_until(lambda: batcher.queue_depth == 0), "the second worker did not take the waiting request"
    third = batcher.submit(["dddd"], "")  # both workers busy: it waits
    assert batcher.queue_depth == 1
    closer = threading.Thread(target=batcher.close, kwargs={"timeout": 30})
    closer.start()
    fake.release.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    assert first.result(timeout=1).rows[:, 0].tolist() == [1]
    assert second.result(timeout=1).rows[:, 0].tolist() == [2, 3]
    assert third.result(timeout=1).rows[:, 0].tolist() == [4]
    assert sorted(map(tuple, fake.takes)) == [("a",), ("bb", "ccc"), ("dddd",)]


def _threads_alive(batcher: Batcher) -> int:
    return sum(thread.is_alive() for thread in batcher._threads)


def _hold_workers(fake: BlockingEncoder, batcher: Batcher, count: int) -> list[Any]:
    """Keep ``count`` workers busy on gated one-text requests, so that what is submitted next is taken at once."""
    held = []
    for index in range(count):
        fake.gates[f"hold{index}"] = threading.Event()
        held.append(batcher.submit([f"hold{index}"], ""))
    assert _wait_until(lambda: fake.running == count)
    return held


def _let_go(fake: BlockingEncoder, count: int) -> None:
    for index in range(count):
        fake.gates[f"hold{index}"].set()


def test_a_request_is_answered_when_its_own_texts_are_done() -> None:
    """Requests taken together: those whose batches are done are answered while the take's last batch runs."""
    fake = BlockingEncoder()
    fake.release.set()
    fake.gates["slow"] = threading.Event()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100)  # type: ignore[arg-type]
    try:
        _hold_workers(fake, batcher, 1)
        fast = batcher.submit(["x", "yy"], "")
        empty = batcher.submit([], "")
        slow = batcher.submit(["slow"], "")  # its batch runs last and waits for its gate
        _let_go(fake, 1)
        assert fast.result(timeout=30).rows[:, 0].tolist() == [1, 2]
        assert empty.result(timeout=30).rows.shape == (0, 2)
        assert not slow.done()
        fake.gates["slow"].set()
        assert slow.result(timeout=30).rows[:, 0].tolist() == [4]
        assert fake.takes[-1] == ["x", "yy", "slow"]
    finally:
        batcher.close(timeout=30)


def test_a_failing_batch_fails_only_the_requests_it_holds_and_no_worker() -> None:
    """Two requests in one take on two workers: one's batch fails while the other's still runs."""
    fake = BlockingEncoder()
    fake.release.set()
    fake.gates["okay"] = threading.Event()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, workers=2)  # type: ignore[arg-type]
    try:
        _hold_workers(fake, batcher, 2)
        bad = batcher.submit(["boom"], "")
        good = batcher.submit(["okay", "b"], "")
        _let_go(fake, 2)
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(timeout=30)
        assert fake.takes[-1] == ["boom", "okay", "b"]  # one take
        assert not good.done()
        fake.gates["okay"].set()
        assert good.result(timeout=30).rows[:, 0].tolist() == [4, 1]
        assert _threads_alive(batcher) == 2
        later = [batcher.submit(["c" * n], "") for n in (1, 2, 3)]
        assert [future.result(timeout=30).rows[0, 0] for future in later] == [1, 2, 3]
    finally:
        batcher.close(timeout=30)
    assert _threads_alive(batcher) == 0


def test_a_take_that_cannot_be_planned_fails_its_requests_and_no_worker() -> None:
    fake = BlockingEncoder()
    fake.release.set()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, workers=2)  # type: ignore[arg-type]
    try:
        with pytest.raises(ValueError, match="cannot plan this"):
            batcher.submit(["a", "noplan"], "").result(timeout=30)
        assert batcher.submit(["ok"], "").result(timeout=30).rows[:, 0].tolist() == [2]
        assert _threads_alive(batcher) == 2
    finally:
        batcher.close(timeout=30)


def test_free_workers_join_in_on_the_batches_of_one_take() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, workers=2)  # type: ignore[arg-type]
    try:
        future = batcher.submit(["p", "qq"], "")
        assert _wait_until(lambda: fake.running == 2), "the second worker did not run the take's other batch"
        fake.release.set()
        assert future.result(timeout=30).rows[:, 0].tolist() == [1, 2]
        assert fake.takes == [["p", "qq"]] and fake.most_running == 2
    finally:
        batcher.close(timeout=30)


def test_queue_is_bounded_in_characters_too() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=100, max_queue_chars=10)  # type: ignore[arg-type]
    try:
        first = batcher.submit(["a"], "")  # the worker takes it and blocks
        assert _wait_until(lambda: batcher.queue_depth == 0)
        waiting = batcher.submit(["bbbbbbbb"], "")  # 8 characters wait
        with pytest.raises(QueueFull, match="characters"):
            batcher.submit(["ccc"], "")
        assert batcher.withdraw(waiting)  # its client hung up: it leaves the queue, freeing its characters
        assert waiting.cancelled() and batcher.queue_depth == 0
        later = batcher.submit(["cccccccc"], "")
    finally:
        fake.release.set()
        batcher.close(timeout=30)
    assert first.result(timeout=1).rows[:, 0].tolist() == [1]
    assert later.result(timeout=1).rows[:, 0].tolist() == [8]
    assert ["bbbbbbbb"] not in fake.takes  # the withdrawn request never ran


def test_close_gives_up_on_a_stuck_model_after_its_timeout() -> None:
    fake = BlockingEncoder()
    batcher = Batcher(fake, max_queue=100, max_run_texts=1)  # type: ignore[arg-type]
    running = batcher.submit(["a"], "")
    assert _wait_until(lambda: batcher.queue_depth == 0)
    queued = batcher.submit(["b"], "")
    batcher.close(timeout=0.1)  # the model never returns in time: the queued request is answered anyway
    with pytest.raises(ShuttingDown):
        queued.result(timeout=1)
    assert batcher.alive  # the stuck worker is still in its batch
    fake.release.set()
    assert running.result(timeout=30).rows[:, 0].tolist() == [1]
    assert _wait_until(lambda: not batcher.alive)
