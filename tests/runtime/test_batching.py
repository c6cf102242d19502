"""Batch planning: every text runs exactly once within the limits, and batching never changes results."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.runtime import batching
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS, exported

TEXTS = [*MIXED_TEXTS, *CORPUS, LONG_TEXT[:700], "", "b"] * 2


@pytest.mark.parametrize(
    ("batch_size", "max_batch_tokens", "window", "run_cost"),
    [(32, 1024, 4096, 0), (5, 64, 7, 0), (1, 10**6, 3, 0), (32, 1024, 4096, 16), (5, 64, 7, 16), (64, 10**6, 4096, 1)],
)
def test_every_text_once_within_limits(
    tiny_export: Path, monkeypatch, batch_size, max_batch_tokens, window, run_cost
) -> None:
    monkeypatch.setattr(batching, "TOKENIZE_WINDOW", window)
    tokenizer = Encoder(tiny_export)._tokenizer
    seen = []
    planned = batching.batches(TEXTS, tokenizer, "", batch_size, max_batch_tokens, False, run_cost=run_cost)
    for indices, arrays in planned:
        rows, longest = arrays["input_ids"].shape
        assert rows == len(indices) <= batch_size
        assert rows == 1 or rows * longest <= max_batch_tokens
        # each row holds its own text's tokens, not a neighbour's
        expected = tokenizer.pad(tokenizer.encode([TEXTS[i] for i in indices]))
        np.testing.assert_array_equal(arrays["input_ids"], expected["input_ids"])
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(TEXTS)))


def _all_cuts(count: int) -> Iterator[list[tuple[int, int]]]:
    """Every way to split range(count) into consecutive non-empty batches."""
    for ends in itertools.product((False, True), repeat=count - 1):
        bounds, start = [], 0
        for index, cut in enumerate(ends, start=1):
            if cut:
                bounds.append((start, index))
                start = index
        yield [*bounds, (start, count)]


@pytest.mark.parametrize("seed", range(40))
def test_cut_batches_is_the_cheapest_cut(seed: int) -> None:
    """Against every possible cut of a short list: the least cost within the limits, and it keeps the limits."""
    rng = random.Random(seed)
    lengths = sorted((rng.randint(1, 60) for _ in range(rng.randint(1, 11))), reverse=True)
    batch_size, budget, run_cost = rng.randint(1, 6), rng.choice([30, 80, 200, 10**6]), rng.choice([0.5, 4, 16, 90])

    def cost(bounds: list[tuple[int, int]]) -> float:
        return sum(run_cost + (end - start) * lengths[start] for start, end in bounds)

    def allowed(bounds: list[tuple[int, int]]) -> bool:
        return all(
            end - start <= batch_size and (end - start == 1 or (end - start) * lengths[start] <= budget)
            for start, end in bounds
        )

    cheapest = min(cost(bounds) for bounds in _all_cuts(len(lengths)) if allowed(bounds))
    chosen = batching.cut_batches(lengths, batch_size, budget, run_cost)
    assert allowed(chosen)
    assert [start for start, _ in chosen[1:]] == [end for _, end in chosen[:-1]]  # consecutive, every text once
    assert chosen[0][0] == 0 and chosen[-1][1] == len(lengths)
    assert cost(chosen) == pytest.approx(cheapest)


def test_cut_batches_trades_padding_for_runs() -> None:
    """Worked by hand for lengths [10, 9, 3, 2] (cost = runs x run cost + padded tokens): a free run gives each
    text its own batch (24 tokens, no padding); at 2 a run, [10, 9] + [3, 2] costs 4 + 26 = 30 against 8 + 24
    = 32 singly and 2 + 40 = 42 all together; at 20 a run, all together costs 20 + 40 = 60 against 40 + 26."""
    lengths = [10, 9, 3, 2]
    assert batching.cut_batches(lengths, 32, 1024, 0) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert batching.cut_batches(lengths, 32, 1024, 2) == [(0, 2), (2, 4)]
    assert batching.cut_batches(lengths, 32, 1024, 20) == [(0, 4)]
    # the limits hold whatever the run cost: one row a batch; at most 19 padded tokens, so 10 and 9 apart
    # (3 runs: 60 + 10 + 9 + 6 = 85, against 60 + 10 + 18 + 2 = 90 for [10] + [9, 3] + [2])
    assert batching.cut_batches(lengths, 1, 1024, 20) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert batching.cut_batches(lengths, 32, 19, 20) == [(0, 1), (1, 2), (2, 4)]


def test_results_do_not_depend_on_batching(tiny_export: Path, chinese_bert) -> None:
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(chinese_bert.path), device="cpu").encode(TEXTS)
    encoder = Encoder(tiny_export)
    for batch_size, max_batch_tokens in ((32, None), (3, 50), (64, 100_000), (1, 1)):
        actual = encoder.encode(TEXTS, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("replica_name", ["chinese_bert", "multi_pooling_bert"])  # the second leaves the prompt out
def test_batch_steps_give_sentence_transformers_embeddings(
    request: pytest.FixtureRequest, exports_dir: Path, replica_name: str
) -> None:
    """Encoder._batches + _embed_batch (the server's workers run these) against sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    replica = request.getfixturevalue(replica_name)
    expected = SentenceTransformer(str(replica.path), device="cpu").encode(TEXTS, prompt="query: ")
    encoder = Encoder(exported(replica, exports_dir))
    rows = np.full((len(TEXTS), encoder.dim), np.nan, dtype=np.float32)
    for indices, arrays in encoder._batches(TEXTS, prompt="query: ", max_batch_tokens=200):
        rows[indices] = encoder._embed_batch(arrays, prompt="query: ")
    np.testing.assert_allclose(rows, expected, atol=1e-4, rtol=0)


def test_bad_max_batch_tokens(tiny_export: Path) -> None:
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer"):
        Encoder(tiny_export).encode(["a"], max_batch_tokens=0)
