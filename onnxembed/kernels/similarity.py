"""Similarity matrices between embeddings, in numpy.

In scope: cosine and dot-product similarity matrices, as sentence-transformers' ``cos_sim`` and
``dot_score``. Not in scope: search over a corpus (top-k) or distances.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from onnxembed.kernels.pooling import normalize

SimilarityFn = Literal["cosine", "dot"]
SIMILARITY_FNS: tuple[str, ...] = get_args(SimilarityFn)


def _as_matrix(embeddings: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be (n, dim) or (dim,); got shape {matrix.shape}")
    return matrix


def dot_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, dim) x (m, dim) -> (n, m) float32 dot products."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimension mismatch: a has {a.shape[1]}, b has {b.shape[1]}")
    return a @ b.T


def cos_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, dim) x (m, dim) -> (n, m) float32 cosine similarities."""
    return dot_score(normalize(_as_matrix(a, "a")), normalize(_as_matrix(b, "b")))


def similarity(a: np.ndarray, b: np.ndarray, fn: str = "cosine") -> np.ndarray:
    """Similarity matrix by a sentence-transformers similarity_fn_name."""
    if fn == "cosine":
        return cos_sim(a, b)
    if fn == "dot":
        return dot_score(a, b)
    raise ValueError(f"unknown similarity function {fn!r}; choose from {SIMILARITY_FNS}")
