"""Batch planning: every text runs exactly once within the limits, and batching never changes results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.runtime import batching
from tests.conftest import CORPUS, LONG_TEXT, MIXED_TEXTS

TEXTS = [*MIXED_TEXTS, *CORPUS, LONG_TEXT[:700], "", "b"] * 2


@pytest.mark.parametrize(
    ("batch_size", "max_batch_tokens", "window", "min_fill"),
    [(32, 1024, 4096, 0.0), (5, 64, 7, 0.0), (1, 10**6, 3, 0.0), (32, 1024, 4096, 0.85), (64, 10**6, 4096, 0.5)],
)
def test_every_text_once_within_limits(
    tiny_export: Path, monkeypatch, batch_size, max_batch_tokens, window, min_fill
) -> None:
    monkeypatch.setattr(batching, "TOKENIZE_WINDOW", window)
    tokenizer = Encoder(tiny_export)._tokenizer
    seen = []
    planned = batching.batches(TEXTS, tokenizer, "", batch_size, max_batch_tokens, False, min_fill=min_fill)
    for indices, arrays in planned:
        rows, longest = arrays["input_ids"].shape
        assert rows == len(indices) <= batch_size
        assert rows == 1 or rows * longest <= max_batch_tokens
        # no row is mostly padding: each holds at least min_fill of the longest
        assert arrays["attention_mask"].sum(axis=1).min() >= min_fill * longest
        # each row holds its own text's tokens, not a neighbour's
        expected = tokenizer.pad(tokenizer.encode([TEXTS[i] for i in indices]))
        np.testing.assert_array_equal(arrays["input_ids"], expected["input_ids"])
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(TEXTS)))


def test_results_do_not_depend_on_batching(tiny_export: Path, chinese_bert) -> None:
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(chinese_bert.path), device="cpu").encode(TEXTS)
    encoder = Encoder(tiny_export)
    for batch_size, max_batch_tokens in ((32, None), (3, 50), (64, 100_000), (1, 1)):
        actual = encoder.encode(TEXTS, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_bad_max_batch_tokens(tiny_export: Path) -> None:
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer"):
        Encoder(tiny_export).encode(["a"], max_batch_tokens=0)
