"""Cutting a list of texts into padded batches that cost the least compute.

In scope: the order texts (or a reranker's pairs) run in and where batches end. Not in scope: running them
(engine.py, reranker.py, sparse_encoder.py).

Padding is wasted compute, so texts run longest first, sorted by their real token counts, and a batch
holds at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens; where batches end within those
limits is a cost trade (see CPU_RUN_COST). The measurements behind the defaults:
docs/performance.md#cpu-batches-sorted-by-tokens-cut-by-cost.

Models that pad on the left and count positions from the padding (BERT with padding_side="left") give
results that depend on which texts share a batch; for them the batches are sentence-transformers' own
(character-length order, fixed ``batch_size``) so that the embeddings match it exactly. Left-padded decoders
are exempt (SHIFT_INVARIANT_ARCHITECTURES).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxembed.runtime.tokenize import Item, TextTokenizer

if TYPE_CHECKING:
    from onnxembed.manifest import Manifest

DEFAULT_MAX_BATCH_TOKENS = {"CPUExecutionProvider": 1024}
# On a GPU bigger batches keep the device busy; 32k tokens was within 10% of the best budget for each model
# and text measured on an H100 (docs/performance.md#gpu-engine-settings).
DEFAULT_MAX_BATCH_TOKENS_OTHER = 32768
# Texts are tokenized a window at a time: an Encoding costs ~190 bytes a token, too much to hold for a corpus.
TOKENIZE_WINDOW = 4096

Batch = tuple[np.ndarray, dict[str, np.ndarray]]  # (indices into texts, padded arrays)

# Left-padded, yet a text's vector does not depend on how far it is padded: rotary position embeddings enter
# attention only as differences of positions, so the shift that left padding gives every position cancels.
# These run the planner's batches, which pad far less (docs/performance.md#cpu-batches-sorted-by-tokens-cut-by-cost).
SHIFT_INVARIANT_ARCHITECTURES = frozenset({"Qwen3Model", "Qwen2Model", "MistralModel", "LlamaModel"})


# Where batches end. Every run costs a fixed time beyond its padded tokens (the weights stream from memory once
# per run, each node is dispatched), so on CPU the cuts minimise  sum over batches of (run cost + rows x
# longest)  in padded-token units, exactly (cut_batches). The costs below are the best measured with
# bench/batch_cuts.py (docs/performance.md#where-a-batch-ends-the-run-cost). On a GPU batches fill up to the
# limits (run cost 0), where bigger batches matter more.
CPU_RUN_COST = {"float": 16, "int8": 8}


def default_max_batch_tokens(provider: str) -> int:
    return DEFAULT_MAX_BATCH_TOKENS.get(provider, DEFAULT_MAX_BATCH_TOKENS_OTHER)


def default_run_cost(provider: str, quantized: bool) -> int:
    """The fixed cost of a session run, in padded tokens, for cutting batches (0: fill them to the limits)."""
    if provider != "CPUExecutionProvider":
        return 0
    return CPU_RUN_COST["int8" if quantized else "float"]


def sentence_transformers_batches(manifest: Manifest) -> bool:
    """Whether a model's vectors depend on which texts share its batches, so that it must run
    sentence-transformers' own (see the module's docstring)."""
    return manifest.padding_side == "left" and manifest.architecture not in SHIFT_INVARIANT_ARCHITECTURES


@dataclass(frozen=True)
class Batcher:
    """How one loaded model cuts its batches: its tokenizer and padding side, the provider's pad multiple and
    the variant's run cost. The Encoder, Reranker and SparseEncoder each hold one."""

    tokenizer: TextTokenizer
    sentence_transformers_order: bool
    pad_multiple: int
    run_cost: int

    @classmethod
    def for_model(cls, tokenizer: TextTokenizer, manifest: Manifest, provider: str, variant: str) -> Batcher:
        return cls(
            tokenizer,
            sentence_transformers_batches(manifest),
            # Shapes that repeat let a GPU reuse its kernels' choices; results do not depend on padding length.
            1 if provider == "CPUExecutionProvider" else 8,
            # int8 runs cost less to start than float ones.
            default_run_cost(provider, quantized=variant.startswith("int8")),
        )

    def plan(
        self, texts: Sequence[Item], prompt: str, batch_size: int, max_batch_tokens: int
    ) -> list[Callable[[], Iterator[Batch]]]:
        """:func:`plan` with this model's settings."""
        return plan(
            texts,
            self.tokenizer,
            prompt,
            batch_size,
            max_batch_tokens,
            self.sentence_transformers_order,
            self.pad_multiple,
            self.run_cost,
        )

    def batches(self, texts: Sequence[Item], prompt: str, batch_size: int, max_batch_tokens: int) -> Iterator[Batch]:
        """Every batch of :meth:`plan`'s jobs, one job after another."""
        for job in self.plan(texts, prompt, batch_size, max_batch_tokens):
            yield from job()


def _length(item: Item) -> int:
    """sentence-transformers' sort key: a text's characters, a pair's characters summed."""
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def with_prompt(prompt: str, item: Item) -> Item:
    """The prompt before a text, or before a pair's first text (the query), as sentence-transformers puts it."""
    return prompt + item if isinstance(item, str) else (prompt + item[0], item[1])


def plan(
    texts: Sequence[Item],
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
    order = np.argsort([-_length(text) for text in texts])
    if sentence_transformers_order:

        def in_sentence_transformers_order() -> Iterator[Batch]:
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                yield indices, tokenizer.pad(tokenizer.encode([with_prompt(prompt, texts[i]) for i in indices]))

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
    texts: Sequence[Item],
    tokenizer: TextTokenizer,
    prompt: str,
    batch_size: int,
    max_batch_tokens: int,
    pad_multiple: int,
    run_cost: int = 0,
) -> Iterator[Batch]:
    encodings = tokenizer.encode([with_prompt(prompt, texts[i]) for i in window])
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
