"""How far a variant's embeddings are from the fp32 graph's, on a calibration corpus.

In scope: the statistics recorded per variant in the manifest — mean, 1st-percentile and minimum cosine
between matching embeddings, and the overlap of each text's 10 nearest neighbours — and a speed ratio.
Not in scope: making variants (quantize.py). Runs on the torch-free runtime.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from onnxembed.kernels import normalize


def compare(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine statistics of candidate[i] vs reference[i], and mean top-k neighbour overlap (self excluded)."""
    reference, candidate = normalize(reference), normalize(candidate)
    cosine = np.einsum("ij,ij->i", reference, candidate)
    k = min(k, len(reference) - 1)
    overlap = float("nan")
    if k >= 1:
        neighbours = []
        for embeddings in (reference, candidate):
            scores = embeddings @ embeddings.T
            np.fill_diagonal(scores, -np.inf)
            neighbours.append(np.argpartition(-scores, k, axis=1)[:, :k])
        overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(*neighbours, strict=True)]))
    return {
        "mean_cosine": float(cosine.mean()),
        "p1_cosine": float(np.percentile(cosine, 1)),
        "min_cosine": float(cosine.min()),
        f"top{k}_overlap": overlap,
    }


# About how long one timed pass of the speed measurement runs: timing 512 texts four times per variant kept a
# 0.6B decoder's export busy for most of its variants stage (docs/performance.md#decoders-qwen3-embedding-06b-shape).
TIMING_PASS_SECONDS = 10.0
TIMING_MIN_TEXTS = 64


def timing_texts(encoder: Any, texts: list[str], seconds: float = TIMING_PASS_SECONDS) -> list[str]:
    """The first texts of ``texts`` that ``encoder`` encodes in about ``seconds`` (at least TIMING_MIN_TEXTS),
    from a warm-up on the first TIMING_MIN_TEXTS. Every variant is then timed on this same list, so their
    speed ratios compare equal work."""
    head = texts[:TIMING_MIN_TEXTS]
    encoder.encode(head)  # lazy initialisation and allocator arenas, not timed
    start = time.perf_counter()
    encoder.encode(head)
    per_text = (time.perf_counter() - start) / max(1, len(head))
    wanted = int(seconds / per_text) if per_text > 0 else len(texts)
    return texts[: max(TIMING_MIN_TEXTS, min(len(texts), wanted))]


def rate(encoder: Any, texts: list[str], repeats: int = 3) -> float:
    """Median texts/s of ``encoder.encode(texts)`` after a warm-up."""
    encoder.encode(texts[:64])
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts)
        timings.append(time.perf_counter() - start)
    return len(texts) / statistics.median(timings)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors (ties ranked in input order; 1.0 for constant ones)."""
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator else 1.0
