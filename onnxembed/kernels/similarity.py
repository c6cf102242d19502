"""Similarity between embeddings, in numpy, as sentence-transformers' similarity functions.

Scores are float32, float64 where both inputs are float64 arrays.

In scope: the four functions sentence-transformers names in ``similarity_fn_name`` — cosine, dot,
euclidean and manhattan (the last two as negated distances, so that higher is more similar) — as
(n, m) matrices and as pairwise (n,) vectors.
Not in scope: top-k search over a corpus (search.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from onnxembed.errors import InvalidArgumentError
from onnxembed.kernels.pooling import float_array, normalize

SimilarityFn = Literal["cosine", "dot", "euclidean", "manhattan"]
SIMILARITY_FNS: tuple[str, ...] = get_args(SimilarityFn)

# Distances are computed from explicit differences (exact for near-identical vectors, unlike the
# |a|^2 + |b|^2 - 2ab expansion), a block of rows at a time so the (rows, m, dim) buffer stays small.
_DIFFERENCE_BUFFER_FLOATS = 1 << 22


def _as_matrix(embeddings: np.ndarray, name: str) -> np.ndarray:
    given = np.asarray(embeddings).dtype
    if given in (np.int8, np.uint8):
        # what encode(precision=...) returns: scores of packed bits or scaled bytes would mean nothing
        raise InvalidArgumentError(
            f"{name} is {given} (quantized or packed embeddings); similarity needs float embeddings: "
            "compare the float32 vectors, or search packed bits with semantic_search_binary"
        )
    matrix = float_array(embeddings)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise InvalidArgumentError(f"{name} must be (n, dim) or (dim,); got shape {matrix.shape}")
    return matrix


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as matrices of one float dtype: float64 if both are float64 arrays (float_array), else float32 (one
    float64 query need not copy a float32 matrix; sentence-transformers refuses the mix)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InvalidArgumentError(f"dimension mismatch: a has {a.shape[1]}, b has {b.shape[1]}")
    dtype = np.float64 if a.dtype == b.dtype == np.float64 else np.float32
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def dot_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, dim) x (m, dim) -> (n, m) float32 dot products."""
    a, b = _pair(a, b)
    return a @ b.T


def cos_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, dim) x (m, dim) -> (n, m) float32 cosine similarities."""
    a, b = _pair(a, b)
    return normalize(a) @ normalize(b).T


def _negated_distance(a: np.ndarray, b: np.ndarray, p: Literal[1, 2]) -> np.ndarray:
    a, b = _pair(a, b)
    scores = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
    rows = max(1, _DIFFERENCE_BUFFER_FLOATS // max(1, b.size))
    for start in range(0, a.shape[0], rows):
        difference = a[start : start + rows, None, :] - b[None, :, :]
        if p == 1:
            scores[start : start + rows] = -np.abs(difference).sum(axis=-1)
        else:
            scores[start : start + rows] = -np.sqrt(np.square(difference).sum(axis=-1))
    return scores


def euclidean_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) float32 negated Euclidean distances."""
    return _negated_distance(a, b, 2)


def manhattan_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) float32 negated Manhattan distances."""
    return _negated_distance(a, b, 1)


def _same_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(a, b)
    if a.shape[0] != b.shape[0]:
        raise InvalidArgumentError(
            f"pairwise similarity needs as many rows in a as in b; got {a.shape[0]} and {b.shape[0]}"
        )
    return a, b


def pairwise_dot_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, dim), (n, dim) -> (n,) float32: a[i] . b[i]."""
    a, b = _same_rows(a, b)
    return np.einsum("ij,ij->i", a, b)


def pairwise_cos_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) float32 cosine similarity of a[i] and b[i]."""
    a, b = _same_rows(a, b)
    return np.einsum("ij,ij->i", normalize(a), normalize(b))


def pairwise_euclidean_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) float32 negated Euclidean distance of a[i] and b[i]."""
    a, b = _same_rows(a, b)
    return -np.sqrt(np.square(a - b).sum(axis=-1))


def pairwise_manhattan_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) float32 negated Manhattan distance of a[i] and b[i]."""
    a, b = _same_rows(a, b)
    return -np.abs(a - b).sum(axis=-1)


_MATRIX: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": cos_sim,
    "dot": dot_score,
    "euclidean": euclidean_sim,
    "manhattan": manhattan_sim,
}
_PAIRWISE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": pairwise_cos_sim,
    "dot": pairwise_dot_score,
    "euclidean": pairwise_euclidean_sim,
    "manhattan": pairwise_manhattan_sim,
}


def check_similarity_fn(fn: str) -> str:
    """Return ``fn`` if it is one of SIMILARITY_FNS, else raise ValueError listing them."""
    if fn not in SIMILARITY_FNS:
        raise InvalidArgumentError(f"unknown similarity function {fn!r}; choose from {SIMILARITY_FNS}")
    return fn


def similarity(a: np.ndarray, b: np.ndarray, fn: str = "cosine") -> np.ndarray:
    """(n, m) similarity matrix by a sentence-transformers similarity_fn_name."""
    return _MATRIX[check_similarity_fn(fn)](a, b)


def similarity_pairwise(a: np.ndarray, b: np.ndarray, fn: str = "cosine") -> np.ndarray:
    """(n,) similarity of a[i] and b[i] by a sentence-transformers similarity_fn_name; two (dim,) vectors
    give a 0-d array, as sentence-transformers' pairwise functions give a 0-d tensor."""
    scores = _PAIRWISE[check_similarity_fn(fn)](a, b)
    return scores.reshape(()) if np.ndim(a) == 1 and np.ndim(b) == 1 else scores
