"""Cutting a list of texts into padded batches that cost the least compute.

In scope: the order texts run in and where batches end. Not in scope: running them (encoder.py).

Padding is wasted compute, so texts run longest first, sorted by their real token counts, and a batch
holds at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens. Measured on all-MiniLM-L6-v2, 2
cores (Zen 4), stdlib-docstring sentences (~26 tokens): sorting by tokens instead of characters cut padded
tokens from 43k to 28k per 1,000 texts and raised throughput from 187 to 321 texts/s; budgets of 512-1,024
tokens were best for sentences, 1,024-2,048 for ~190-token paragraphs (smaller batches stay in cache),
hence the CPU default of 1,024. Where batches end within those limits is a cost trade (see CPU_RUN_COST).

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


# Where batches end. Every run costs a fixed time beyond its padded tokens: the weights stream from memory
# once per run (42 MB for MiniLM in fp32, more than the L3 cache) and each node is dispatched. On CPU the cuts
# minimise  sum over batches of (run cost + rows x longest)  in padded-token units, exactly (cut_batches).
# One session run on one thread (MiniLM, 2 Zen 5 cores): fp32 1.63 ms for 1 x 4 tokens, then ~0.095 ms a
# token, so a run costs ~17 tokens; int8 0.37 ms, then ~0.05 ms a token: ~4 tokens. Measured with
# bench/batch_cuts.py (1,818 random stdlib sentences; texts/s of two threads encoding calls of 4 / 14 / 36
# texts, and of one call of all; medians of 3 interleaved rounds):
#   fp32  run cost 8: 482 / 544 / 600 / 771, 16: 497 / 563 / 601 / 788, 32: 502 / 555 / 593 / 761; the
#         earlier rule (end a batch before a text under 0.85 of its longest), in a prototype of the script
#         run an hour before: 448 / 513 / 581 / 743, against 492 / 547 / 594 / 763 for run cost 18 there;
#         paragraphs in calls of 4 / 14: 0 (batches filled) 97 / 115, 8: 138 / 148, 16: 141 / 151
#   int8  0 (filled) 732 / 514 / 711 / 1281, 4: 946 / 1144 / 1158 / 1293, 8: 1144 / 1209 / 1218 / 1304 and
#         1099 / 1103 / 1170 / 1318, 16: 921 / 1039 / 1050 / 1370 and 942 / 1009 / 1118 / 1268
# On a GPU batches fill up to the limits (run cost 0): not measured there, where bigger batches matter more.
CPU_RUN_COST = {"float": 16, "int8": 8}


def default_max_batch_tokens(provider: str) -> int:
    return DEFAULT_MAX_BATCH_TOKENS.get(provider, DEFAULT_MAX_BATCH_TOKENS_OTHER)


def default_run_cost(provider: str, quantized: bool) -> int:
    """The fixed cost of a session run, in padded tokens, for cutting batches (0: fill them to the limits)."""
    if provider != "CPUExecutionProvider":
        return 0
    return CPU_RUN_COST["int8" if quantized else "float"]


def plan(
    texts: list[str],
    tokenizer: TextTokenizer,
    prompt: str,
    batch_size: int,
    max_batch_tokens: int,
    sentence_transformers_order: bool,
    pad_multiple: int = 1,
    run_cost: int = 0,
) -> list[Callable[[], Iterator[Batch]]]:
    """Independent jobs that together yield every text's batch once; each job tokenizes its own windows,
    so jobs can run on separate threads while the model runs (see runtime/pipeline.py).

    ``pad_multiple`` rounds padded lengths up (shapes repeat on a GPU); it is ignored for left-padded models,
    whose results depend on the padding. ``run_cost`` > 0: cut batches by :func:`cut_batches`; 0: fill each
    batch up to the limits.
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
        partial(_window_batches, window, texts, tokenizer, prompt, batch_size, max_batch_tokens, pad_multiple, run_cost)
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
    run_cost: int = 0,
) -> Iterator[Batch]:
    encodings = tokenizer.encode([prompt + texts[i] for i in window])
    lengths = np.fromiter((len(encoding) for encoding in encodings), dtype=np.int64, count=len(encodings))
    by_tokens = np.argsort(-lengths, kind="stable")
    padded = (-(-lengths[by_tokens] // pad_multiple) * pad_multiple).tolist()  # longest first
    if run_cost > 0:
        bounds = cut_batches(padded, batch_size, max_batch_tokens, run_cost)
    else:
        bounds = _fill_batches(padded, batch_size, max_batch_tokens)
    for start, end in bounds:
        chosen = by_tokens[start:end]
        yield window[chosen], tokenizer.pad([encodings[i] for i in chosen], pad_multiple)


def _fill_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[tuple[int, int]]:
    """(start, end) of batches over ``lengths`` (padded lengths, longest first), each as full as the limits let it."""
    bounds = []
    start = 0
    while start < len(lengths):
        rows = max(1, min(batch_size, max_batch_tokens // max(lengths[start], 1)))
        bounds.append((start, min(start + rows, len(lengths))))
        start += rows
    return bounds


def cut_batches(lengths: list[int], batch_size: int, max_batch_tokens: int, run_cost: float) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches over ``lengths`` (padded lengths, longest first) that minimise
    sum(run_cost + rows x longest) within the limits: at most ``batch_size`` rows, at most
    ``max_batch_tokens`` padded tokens unless a batch holds one row. Dynamic programming, O(n x batch_size):
    best[j] is the least cost of the first j texts, the last batch being texts i..j-1 (its longest is
    lengths[i])."""
    count = len(lengths)
    best = [0.0] + [float("inf")] * count
    first = [0] * (count + 1)
    for end in range(1, count + 1):
        least, start_of_least = float("inf"), end - 1
        for start in range(end - 1, max(0, end - batch_size) - 1, -1):
            rows = end - start
            tokens = rows * lengths[start]
            if rows > 1 and tokens > max_batch_tokens:
                break  # further back the batch only gets longer and wider
            if best[start] + tokens < least:
                least, start_of_least = best[start] + tokens, start
        best[end] = least + run_cost
        first[end] = start_of_least
    bounds = []
    end = count
    while end > 0:
        bounds.append((first[end], end))
        end = first[end]
    return bounds[::-1]
