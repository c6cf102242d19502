"""onnxembed's chunked semantic_search against one numpy matmul + argpartition + sort, on a large corpus.

    python bench/semantic_search.py [--corpus 1000000] [--queries 100] [--dim 384] [--top-k 10] [--repeats 3]

The corpus is random unit vectors, float32, generated in chunks (1M x 384 is 1.5 GB). The baseline scores
all queries against the whole corpus in one matmul, argpartitions every row and sorts the top_k. Times are the
median of --repeats rounds, every method back to back within a round. Peak extra memory comes from one more
run each under tracemalloc (numpy reports its allocations to it), not timed. "top-k overlap" is the share of
the baseline's top-k indices that a method also returns (recall@k; binary search on random vectors is a poor
approximation). Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from onnxembed.kernels.search import semantic_search, semantic_search_binary

Search = Callable[[], tuple[np.ndarray, np.ndarray]]


def _unit_vectors(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + len(block)] = block
    return vectors


def _baseline(queries: np.ndarray, corpus: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ corpus.T
    top = np.argpartition(scores, scores.shape[1] - top_k, axis=1)[:, -top_k:]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


def _peak_extra_bytes(search: Search) -> int:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    search()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    corpus = _unit_vectors(rng, args.corpus, args.dim)
    queries = _unit_vectors(rng, args.queries, args.dim)
    packed_corpus, packed_queries = np.packbits(corpus > 0, axis=1), np.packbits(queries > 0, axis=1)
    k = args.top_k

    # (name, query_chunk_size, corpus_chunk_size, search); chunk sizes "-" for the baseline's single block.
    methods: list[tuple[str, str, str, Search]] = [
        ("baseline: matmul + argpartition + sort", "-", "-", lambda: _baseline(queries, corpus, k)),
        (
            "semantic_search dot",
            "100",
            "500000",
            lambda: semantic_search(queries, corpus, top_k=k, score_function="dot"),
        ),
        (
            "semantic_search cosine",
            "100",
            "500000",
            lambda: semantic_search(queries, corpus, top_k=k, score_function="cosine"),
        ),
        (
            "semantic_search dot, smaller corpus chunks",
            "100",
            "100000",
            lambda: semantic_search(queries, corpus, top_k=k, score_function="dot", corpus_chunk_size=100_000),
        ),
        (
            "semantic_search_binary (Hamming)",
            "100",
            "500000",
            lambda: semantic_search_binary(packed_queries, packed_corpus, top_k=k),
        ),
        (
            "semantic_search_binary + rescore, oversample 4",
            "100",
            "500000",
            lambda: semantic_search_binary(packed_queries, packed_corpus, top_k=k, rescore_embeddings=queries),
        ),
    ]
    timings: dict[str, list[float]] = {name: [] for name, *_ in methods}
    results: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, _, _, search in methods:
            start = time.perf_counter()
            results[name] = search()[1]
            timings[name].append(time.perf_counter() - start)
    peaks = {name: _peak_extra_bytes(search) for name, _, _, search in methods}

    baseline_name = methods[0][0]
    baseline_time = statistics.median(timings[baseline_name])
    expected = results[baseline_name].tolist()
    print(
        f"{args.queries} queries x {args.corpus:,} x {args.dim} float32 corpus ({corpus.nbytes / 2**30:.2f} GiB), "
        f"top_k {k}, median of {args.repeats}, {os.cpu_count()} CPUs, numpy {np.__version__}\n"
    )
    print("| method | query chunk | corpus chunk | time (s) | vs baseline | peak extra memory (MiB) | top-k overlap |")
    print("|---|---|---|---|---|---|---|")
    for name, query_chunk, corpus_chunk, _ in methods:
        median = statistics.median(timings[name])
        overlap = np.mean(
            [len(set(ours) & set(base)) / k for ours, base in zip(results[name].tolist(), expected, strict=True)]
        )
        print(
            f"| {name} | {query_chunk} | {corpus_chunk} | {median:.2f} | {median / baseline_time:.2f}x "
            f"| {peaks[name] / 2**20:.0f} | {overlap:.3f} |"
        )


if __name__ == "__main__":
    main()
