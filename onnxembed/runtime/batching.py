"""Cutting a list of texts into padded batches that cost the least compute.

In scope: the order texts run in and where batches end. Not in scope: running them (encoder.py).

Padding is wasted compute, so texts run longest first, sorted by their real token counts, and a batch
ends at ``batch_size`` texts or at ``max_batch_tokens`` padded tokens, whichever comes first. Measured
on all-MiniLM-L6-v2, 2 cores (Zen 4), stdlib-docstring sentences (~26 tokens): sorting by tokens
instead of characters cut padded tokens from 43k to 28k per 1,000 texts and raised throughput from
187 to 321 texts/s; budgets of 512-1,024 tokens were best for sentences, 1,024-2,048 for ~190-token
paragraphs (smaller batches stay in cache), hence the CPU default of 1,024.

Models that pad on the left and count positions from the padding (BERT with padding_side="left") give
results that depend on which texts share a batch; for them the batches are sentence-transformers' own
(character-length order, fixed ``batch_size``) so that the embeddings match it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

from onnxembed.runtime.tokenize import TextTokenizer

DEFAULT_MAX_BATCH_TOKENS = {"CPUExecutionProvider": 1024}
# On a GPU bigger batches keep the device busy. Measured on an H100 with the overlapped engine (texts/s at
# 16k / 32k / 64k / 128k tokens; bench/results/h100-*.md): MiniLM sentences 53.6k / 58.8k / 65.1k / 61.7k,
# paragraphs 21.0k / 20.8k / 20.4k / 18.2k; XLM-R-768 sentences 33.5k / 32.6k / 32.1k / 30.3k, paragraphs
# 10.2k / 9.6k / 8.0k / 7.3k. 32k is within 10% of the best in each.
DEFAULT_MAX_BATCH_TOKENS_OTHER = 32768
# Texts are tokenized a window at a time: an Encoding costs ~190 bytes a token, too much to hold for a corpus.
TOKENIZE_WINDOW = 4096

Batch = tuple[np.ndarray, dict[str, np.ndarray]]  # (indices into texts, padded arrays)


# A batch also ends before the first text shorter than MIN_FILL x its longest (padding it would be mostly
# waste). Measured on CPU (MiniLM, 2 cores, budget 1,024; texts/s without -> with 0.85): calls of 36 random
# sentences 190 -> 267, of 8 paragraphs 55 -> 69, one call of 1,818 sentences 332 -> 336. Not measured on a
# GPU, where bigger batches matter more: off there.
DEFAULT_MIN_FILL = {"CPUExecutionProvider": 0.85}


def default_max_batch_tokens(provider: str) -> int:
    return DEFAULT_MAX_BATCH_TOKENS.get(provider, DEFAULT_MAX_BATCH_TOKENS_OTHER)


def default_min_fill(provider: str) -> float:
    return DEFAULT_MIN_FILL.get(provider, 0.0)


def plan(
    texts: list[str],
    tokenizer: TextTokenizer,
    prompt: str,
    batch_size: int,
    max_batch_tokens: int,
    sentence_transformers_order: bool,
    pad_multiple: int = 1,
    min_fill: float = 0.0,
) -> list[Callable[[], Iterator[Batch]]]:
    """Independent jobs that together yield every text's batch once; each job tokenizes its own windows,
    so jobs can run on separate threads while the model runs (see runtime/pipeline.py).

    ``pad_multiple`` rounds padded lengths up (shapes repeat on a GPU); it is ignored for left-padded models,
    whose results depend on the padding. ``min_fill``: see DEFAULT_MIN_FILL.
    """
    # Longest first by characters: sentence-transformers' key and sort (np.argsort's default kind).
    order = np.argsort([-len(text) for text in texts])
    if sentence_transformers_order:

        def in_sentence_transformers_order() -> Iterator[Batch]:
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                yield indices, tokenizer.pad(tokenizer.encode([prompt + texts[i] for i in indices]))

        return [in_sentence_transformers_order]
    # bigger budgets (GPUs) get bigger windows, so that lengths sort well, up to a bound on memory
    size = min(max(TOKENIZE_WINDOW, max_batch_tokens // 8), 4 * TOKENIZE_WINDOW)
    windows = [order[start : start + size] for start in range(0, len(order), size)]
    return [
        partial(_window_batches, window, texts, tokenizer, prompt, batch_size, max_batch_tokens, pad_multiple, min_fill)
        for window in windows
    ]


def batches(*plan_args: Any, **plan_options: Any) -> Iterator[Batch]:
    """Yield (indices into texts, padded arrays) until every text has run once: :func:`plan`'s jobs, one
    after another."""
    for job in plan(*plan_args, **plan_options):
        yield from job()


def _window_batches(
    window: np.ndarray,
    texts: list[str],
    tokenizer: TextTokenizer,
    prompt: str,
    batch_size: int,
    max_batch_tokens: int,
    pad_multiple: int,
    min_fill: float = 0.0,
) -> Iterator[Batch]:
    encodings = tokenizer.encode([prompt + texts[i] for i in window])
    lengths = np.fromiter((len(encoding) for encoding in encodings), dtype=np.int64, count=len(encodings))
    by_tokens = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(by_tokens):
        longest = -(-int(lengths[by_tokens[start]]) // pad_multiple) * pad_multiple
        rows = max(1, min(batch_size, max_batch_tokens // max(longest, 1)))
        chosen = by_tokens[start : start + rows]
        if min_fill > 0:
            # end the batch before the first text that would be mostly padding
            too_short = np.flatnonzero(lengths[chosen] < min_fill * longest)
            if too_short.size:
                chosen = chosen[: max(1, int(too_short[0]))]
        start += len(chosen)
        yield window[chosen], tokenizer.pad([encodings[i] for i in chosen], pad_multiple)
