"""The overlapped engine (tokenizing ahead on other threads, several sessions, IO binding) changes nothing
but speed: same embeddings in input order as the one-thread loop, errors surface, nothing is lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.runtime.pipeline import OverlappedRunner, run_serial
from onnxembed.runtime.tokenize import TextTokenizer
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS


def _texts() -> list[str]:
    return [*MIXED_TEXTS, *CORPUS, *(f"{i} {CORPUS[i % len(CORPUS)][: i % 40]}" for i in range(300)), LONG_TEXT]


@pytest.mark.parametrize(
    "options",
    [
        {"overlap": True},
        {"overlap": True, "sessions": 3, "threads": 1},
        {"overlap": True, "io_binding": True},
        {"overlap": False, "io_binding": True},
    ],
)
def test_overlapped_engine_gives_the_serial_embeddings(tiny_export: Path, options: dict) -> None:
    texts = _texts()
    expected = Encoder(tiny_export, provider="cpu").encode(texts, max_batch_tokens=256)
    actual = Encoder(tiny_export, provider="cpu", **options).encode(texts, max_batch_tokens=256)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_overlapped_engine_restores_input_order(tiny_export: Path) -> None:
    encoder = Encoder(tiny_export, provider="cpu", overlap=True, sessions=2)
    texts = _texts()
    np.testing.assert_allclose(encoder.encode(texts[::-1])[::-1], encoder.encode(texts), rtol=0, atol=1e-6)


def test_sessions_need_overlap(tiny_export: Path) -> None:
    with pytest.raises(ValueError, match="overlap=True"):
        Encoder(tiny_export, provider="cpu", sessions=2)
    with pytest.raises(ValueError, match="sessions"):
        Encoder(tiny_export, provider="cpu", overlap=True, sessions=0)


def _jobs(count: int, per_job: int, fail_at: int | None = None) -> list:
    def job(start: int) -> Iterator[int]:
        for item in range(start, start + per_job):
            if item == fail_at:
                raise RuntimeError(f"tokenizing failed at {item}")
            yield item

    return [lambda start=k * per_job: job(start) for k in range(count)]


def test_run_overlapped_hands_every_item_to_exactly_one_worker() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def worker(item: int) -> None:
        with lock:
            seen.append(item)

    runner = OverlappedRunner(workers=3, producers=2, depth=2)
    for _ in range(2):  # the threads outlive a run
        seen.clear()
        runner.run(_jobs(7, 50), [worker, worker, worker])
        assert sorted(seen) == list(range(350))
    serial: list[int] = []
    run_serial(_jobs(7, 50), serial.append)
    assert serial == list(range(350))


def test_run_overlapped_raises_a_producer_error() -> None:
    with pytest.raises(RuntimeError, match="tokenizing failed at 123"):
        OverlappedRunner(workers=1, producers=2, depth=1).run(_jobs(5, 50, fail_at=123), [lambda item: None])


def test_run_overlapped_raises_a_worker_error_and_stops() -> None:
    produced: list[int] = []

    def job() -> Iterator[int]:
        for item in range(100_000):
            produced.append(item)
            yield item

    def worker(item: int) -> None:
        if item == 10:
            raise ValueError("the model failed on item 10")

    with pytest.raises(ValueError, match="item 10"):
        OverlappedRunner(workers=1, producers=1, depth=2).run([job], [worker])
    # the producer stopped soon after instead of producing everything
    assert len(produced) < 100


def test_encoder_error_in_a_worker_thread_reaches_the_caller(tiny_export: Path) -> None:
    encoder = Encoder(tiny_export, provider="cpu", overlap=True, sessions=2)

    class Broken:
        def run(self, *args: object) -> None:
            raise RuntimeError("session broke")

    good = encoder._sessions
    encoder._sessions = [Broken(), Broken()]
    with pytest.raises(RuntimeError, match="session broke"):
        encoder.encode(_texts())
    encoder._sessions = good  # the engine's threads survive a failed call
    np.testing.assert_allclose(encoder.encode(_texts()), Encoder(tiny_export).encode(_texts()), rtol=0, atol=1e-6)


def test_worker_threads_live_as_long_as_the_encoder(tiny_export: Path) -> None:
    """onnxruntime's CUDA provider keeps per-thread state: every call must run a session on the same thread."""
    encoder = Encoder(tiny_export, provider="cpu", overlap=True, sessions=2)
    seen: set[str] = set()
    run = encoder._run

    def spy(session, arrays):
        seen.add(threading.current_thread().name)
        return run(session, arrays)

    encoder._run = spy
    for _ in range(3):
        encoder.encode(_texts())
    assert seen <= {"onnxembed-run-0_0", "onnxembed-run-1_0"} and seen


@pytest.mark.parametrize("multiple", [1, 8])
def test_whole_batch_padding_places_every_token(tiny_export: Path, multiple: int) -> None:
    from onnxembed.manifest import Manifest

    for side in ("right", "left"):
        manifest = Manifest.read(tiny_export)
        tokenizer = TextTokenizer(tiny_export, manifest)
        tokenizer._left_padding = side == "left"
        encodings = tokenizer.encode(["a", CORPUS[0], CORPUS[1][:10], LONG_TEXT])
        arrays = tokenizer.pad(encodings, multiple)
        width = arrays["input_ids"].shape[1]
        assert width % multiple == 0 and width >= max(len(e.ids) for e in encodings)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            real = slice(width - n, width) if side == "left" else slice(0, n)
            pad = np.ones(width, dtype=bool)
            pad[real] = False
            assert arrays["input_ids"][row, real].tolist() == encoding.ids
            assert arrays["token_type_ids"][row, real].tolist() == encoding.type_ids
            assert arrays["attention_mask"][row].sum() == n and arrays["attention_mask"][row, real].all()
            assert (arrays["input_ids"][row, pad] == manifest.pad_token_id).all()
            assert (arrays["token_type_ids"][row, pad] == 0).all()


def test_padding_to_a_multiple_stops_at_max_seq_length(tiny_export: Path) -> None:
    """Rounding up to a multiple of 8 must not run past the model's positions (a table may end there)."""
    import dataclasses

    from onnxembed.manifest import Manifest

    manifest = dataclasses.replace(Manifest.read(tiny_export), max_seq_length=250)
    tokenizer = TextTokenizer(tiny_export, manifest)
    arrays = tokenizer.pad(tokenizer.encode([LONG_TEXT, "a"]), 8)
    assert arrays["input_ids"].shape == (2, 250)
    assert tokenizer.pad(tokenizer.encode(["a", CORPUS[0]]), 8)["input_ids"].shape[1] % 8 == 0
