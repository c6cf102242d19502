"""Sparse vectors (SPLADE) in numpy: per-text indices and weights, CSR rows, dot scores and exact top-k search.

In scope: :class:`SparseEmbedding` (one text: active term ids and their weights, as fastembed's SparseEmbedding
and Qdrant's sparse vectors hold them), :class:`SparseMatrix` (rows in CSR form: indptr, indices, values),
keeping a row's ``max_active_dims`` heaviest terms as sentence-transformers' ``select_max_active_dims`` does,
similarity scores (dot, and the cosine, euclidean and manhattan a SparseEncoder may be saved with), and top-k
search over a CSR corpus with sentence-transformers' ``util.semantic_search`` result order.
Not in scope: approximate or inverted-index search, anything that embeds text.

Memory is bounded by chunks: a block of queries is made dense (block x vocabulary float32), each corpus chunk
is scored by gathering the queries' weights at its terms, a few queries at a time, at most _SCORE_ELEMENTS
float32 values at once; top-k merging is the dense search's (search.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxembed._checks import positive_int
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError
from onnxembed.kernels.similarity import check_similarity_fn

# At most this many float32 products (query weight x document weight) at once while scoring: 64 MiB.
_SCORE_ELEMENTS = 1 << 24


@dataclass(frozen=True, eq=False)
class SparseEmbedding:
    """One text's sparse vector: ``indices`` (nnz,) int64 ascending term ids, ``values`` (nnz,) float32 their
    weights, ``dim`` the vocabulary size. Zero weights are not stored.

    Example:
        >>> embedding.as_dict()  # {term id: weight}
        {2054: 1.12, 2003: 0.35}
    """

    indices: np.ndarray
    values: np.ndarray
    dim: int

    def as_dict(self) -> dict[int, float]:
        """``{term id: weight}`` as Python numbers (a form Qdrant and Elasticsearch take)."""
        return dict(zip(self.indices.tolist(), self.values.tolist(), strict=True))

    def to_dense(self) -> np.ndarray:
        """(dim,) float32 with the weights at their term ids."""
        dense = np.zeros(self.dim, dtype=np.float32)
        dense[self.indices] = self.values
        return dense

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return f"SparseEmbedding(nnz={len(self)}, dim={self.dim})"


@dataclass(frozen=True, eq=False)
class SparseMatrix:
    """Rows of sparse vectors in CSR form: row i's terms are ``indices[indptr[i]:indptr[i+1]]`` with weights
    ``values[...]``; ``indptr`` (rows + 1,) int64, ``indices`` (nnz,) int64, ``values`` (nnz,) float32."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    dim: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.indptr.shape[0]) - 1, self.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> SparseMatrix:
        """A block of consecutive rows (a view of the terms, indptr rebased)."""
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise InvalidArgumentError("a SparseMatrix is sliced by consecutive rows only")
        stop = max(start, stop)
        indptr = self.indptr[start : stop + 1]
        terms = slice(int(indptr[0]), int(indptr[-1]))
        return SparseMatrix(indptr - indptr[0], self.indices[terms], self.values[terms], self.dim)

    def row(self, index: int) -> SparseEmbedding:
        terms = slice(int(self.indptr[index]), int(self.indptr[index + 1]))
        return SparseEmbedding(self.indices[terms], self.values[terms], self.dim)

    def rows(self) -> list[SparseEmbedding]:
        return [self.row(index) for index in range(self.shape[0])]

    def to_dense(self) -> np.ndarray:
        """(rows, dim) float32."""
        dense = np.zeros(self.shape, dtype=np.float32)
        dense[np.repeat(np.arange(self.shape[0]), np.diff(self.indptr)), self.indices] = self.values
        return dense

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.csr_matrix`` of the same rows (needs scipy)."""
        try:
            from scipy.sparse import csr_matrix
        except ImportError as error:
            raise ImportError("scipy CSR output needs scipy: pip install scipy") from error
        return csr_matrix((self.values, self.indices, self.indptr), shape=self.shape)

    @classmethod
    def from_rows(cls, rows: Sequence[SparseEmbedding], dim: int | None = None) -> SparseMatrix:
        dims = {row.dim for row in rows}
        if dim is None:
            if len(dims) > 1:
                raise InvalidArgumentError(f"sparse embeddings of different dims {sorted(dims)} cannot be stacked")
            dim = dims.pop() if dims else 0
        elif dims - {dim}:
            raise InvalidArgumentError(f"sparse embeddings of dim {sorted(dims - {dim})} given where {dim} is")
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=indptr[1:])
        indices = np.concatenate([row.indices for row in rows]) if rows else np.empty(0, np.int64)
        values = np.concatenate([row.values for row in rows]) if rows else np.empty(0, np.float32)
        return cls(indptr, indices.astype(np.int64, copy=False), values.astype(np.float32, copy=False), dim)


def sparse_rows(dense: np.ndarray, max_active_dims: int | None = None) -> SparseMatrix:
    """(rows, dim) float weights -> their active terms in CSR form; with ``max_active_dims``, each row's
    heaviest ``max_active_dims`` terms by absolute weight (sentence-transformers' ``select_max_active_dims``;
    ties keep the lower term id)."""
    dense = np.asarray(dense, dtype=np.float32)
    if dense.ndim != 2:
        raise InvalidArgumentError(f"expected (rows, dim) weights; got shape {dense.shape}")
    if max_active_dims is not None:
        max_active_dims = positive_int(max_active_dims, "max_active_dims")
        if max_active_dims < dense.shape[1]:
            magnitude = np.abs(dense)
            # keep strictly above the k-th largest magnitude, then the lowest ids among those equal to it
            kth = -np.partition(-magnitude, max_active_dims - 1, axis=1)[:, max_active_dims - 1 : max_active_dims]
            above = magnitude > kth
            tied = (magnitude == kth) & (np.cumsum(magnitude == kth, axis=1) <= max_active_dims - above.sum(1)[:, None])
            dense = np.where(above | tied, dense, np.float32(0))
    rows, indices = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return SparseMatrix(indptr, indices.astype(np.int64), dense[rows, indices], dense.shape[1])


def as_sparse_matrix(embeddings: Any, name: str = "embeddings") -> SparseMatrix:
    """A SparseMatrix of: a SparseMatrix, one SparseEmbedding or a list of them, a scipy sparse matrix, a
    (rows, dim) / (dim,) dense array or a list of (dim,) arrays, or a torch tensor (dense or sparse)."""
    if isinstance(embeddings, SparseMatrix):
        return embeddings
    if isinstance(embeddings, SparseEmbedding):
        return SparseMatrix.from_rows([embeddings])
    if isinstance(embeddings, (list, tuple)) and all(isinstance(row, SparseEmbedding) for row in embeddings):
        return SparseMatrix.from_rows(embeddings)
    if hasattr(embeddings, "detach") and hasattr(embeddings, "is_sparse"):  # a torch tensor, without torch
        if embeddings.is_sparse:  # COO, as sentence-transformers returns: its terms, never a dense copy
            return _from_coo(embeddings.detach().cpu().coalesce())
        embeddings = np.asarray(embeddings.detach().cpu().to_dense().float().numpy())
    if isinstance(embeddings, (list, tuple)) and embeddings and all(isinstance(row, np.ndarray) for row in embeddings):
        if any(row.ndim != 1 for row in embeddings) or len({row.shape for row in embeddings}) > 1:
            raise InvalidArgumentError(f"{name}: a list of dense vectors must hold (dim,) arrays of one dim")
        embeddings = np.stack(embeddings)
    if hasattr(embeddings, "tocsr") and hasattr(embeddings, "shape"):  # scipy.sparse, without importing scipy
        csr = embeddings.tocsr()
        csr.sort_indices()
        data = np.asarray(csr.data, dtype=np.float32)
        return SparseMatrix(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), data, int(csr.shape[1]))
    if isinstance(embeddings, np.ndarray) and embeddings.ndim in (1, 2) and embeddings.dtype.kind in "fiu":
        return sparse_rows(np.atleast_2d(embeddings))
    raise ArgumentTypeError(
        f"{name} must be SparseEmbedding(s), a SparseMatrix, a scipy sparse matrix or a dense array; "
        f"got {type(embeddings).__name__}"
    )


def _from_coo(tensor: Any) -> SparseMatrix:
    """A coalesced torch sparse COO tensor, (dim,) or (rows, dim), as CSR rows (coalesced indices come sorted
    by row, then term); stored zeros are dropped, as every other form here drops them."""
    if tensor.ndim not in (1, 2):
        raise InvalidArgumentError(f"a sparse tensor of embeddings must be 1-D or 2-D; got {tensor.ndim}-D")
    indices = tensor.indices().numpy().astype(np.int64)
    values = tensor.values().float().numpy()
    keep = values != 0
    indices, values = indices[:, keep], values[keep]
    if tensor.ndim == 1:
        return SparseMatrix(np.array([0, values.shape[0]], np.int64), indices[0], values, int(tensor.shape[0]))
    rows = int(tensor.shape[0])
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices[0], minlength=rows), out=indptr[1:])
    return SparseMatrix(indptr, indices[1], values, int(tensor.shape[1]))


def _score_chunk(queries: np.ndarray, chunk: SparseMatrix) -> np.ndarray:
    """(q, dim) dense float32 queries . chunk's rows -> (q, rows) float32 dot scores, a few queries at a time."""
    rows = chunk.shape[0]
    scores = np.zeros((queries.shape[0], rows), dtype=np.float32)
    nnz = chunk.indices.shape[0]
    if nnz == 0 or rows == 0:
        return scores
    # reduceat over the non-empty rows only: each sums to the next one's start, which is its own end (the rows
    # between are empty), and the last to the end of the terms
    filled = np.flatnonzero(chunk.indptr[1:] > chunk.indptr[:-1])
    starts = chunk.indptr[filled]
    step = max(1, _SCORE_ELEMENTS // nnz)
    for first in range(0, queries.shape[0], step):
        products = queries[first : first + step, chunk.indices] * chunk.values
        scores[first : first + step, filled] = np.add.reduceat(products, starts, axis=1)
    return scores


def sparse_dot_score(a: Any, b: Any) -> np.ndarray:
    """Dot products of every row of ``a`` with every row of ``b``: (len(a), len(b)) float32, as
    ``SparseEncoder.similarity`` gives for a model whose similarity is "dot". Each of ``a`` and ``b``: what
    :func:`as_sparse_matrix` takes.

    Raises:
        InvalidArgumentError: The two have different vocabulary sizes.
    """
    left, right = as_sparse_matrix(a, "a"), as_sparse_matrix(b, "b")
    _check_same_dim(left, right)
    scores = np.empty((left.shape[0], right.shape[0]), dtype=np.float32)
    block = max(1, _SCORE_ELEMENTS // max(1, left.dim))
    for start in range(0, left.shape[0], block):
        scores[start : start + block] = _score_chunk(left[start : start + block].to_dense(), right)
    return scores


def sparse_similarity(a: Any, b: Any, fn: str = "dot") -> np.ndarray:
    """(len(a), len(b)) float32 similarities by a sentence-transformers similarity_fn_name, as
    ``SparseEncoder.similarity`` gives them: "dot", "cosine", and the negated "euclidean" and "manhattan"
    distances. ``a`` and ``b``: what :func:`as_sparse_matrix` takes; never made dense beyond a block of ``a``.

    Raises:
        InvalidArgumentError: An unknown ``fn``, or the two have different vocabulary sizes.
    """
    fn = check_similarity_fn(fn)
    left, right = as_sparse_matrix(a, "a"), as_sparse_matrix(b, "b")
    if fn in ("euclidean", "manhattan"):
        _check_same_dim(left, right)
        return _distances(left, right, 2 if fn == "euclidean" else 1)
    dots = sparse_dot_score(left, right)
    if fn == "dot":
        return dots
    # cosine; zero vectors score 0, as torch's normalize (eps 1e-12) leaves them
    left_norms, right_norms = np.sqrt(_squared_norms(left)), np.sqrt(_squared_norms(right))
    scale = np.maximum(left_norms, 1e-12)[:, None] * np.maximum(right_norms, 1e-12)[None, :]
    return (dots / scale).astype(np.float32)


def sparse_similarity_pairwise(a: Any, b: Any, fn: str = "dot") -> np.ndarray:
    """(n,) float32 similarity of ``a[i]`` and ``b[i]`` by a similarity_fn_name (see :func:`sparse_similarity`),
    each pair from its own terms only; two single vectors give a 0-d array, as sentence-transformers' 0-d tensor.

    Raises:
        InvalidArgumentError: An unknown ``fn``, or ``a`` and ``b`` of different shapes.
    """
    fn = check_similarity_fn(fn)
    left, right = as_sparse_matrix(a, "a"), as_sparse_matrix(b, "b")
    if left.shape != right.shape:
        raise InvalidArgumentError(f"pairwise similarity needs a and b of one shape; got {left.shape}, {right.shape}")
    scores = np.zeros(len(left), dtype=np.float32)
    for index in range(len(left)):
        first, second = left.row(index), right.row(index)
        x, y = first.values.astype(np.float64), second.values.astype(np.float64)
        _, at_first, at_second = np.intersect1d(first.indices, second.indices, return_indices=True)
        dot = float(np.dot(x[at_first], y[at_second]))
        if fn == "dot":
            scores[index] = dot
        elif fn == "cosine":
            scores[index] = dot / (max(float(np.linalg.norm(x)), 1e-12) * max(float(np.linalg.norm(y)), 1e-12))
        else:  # |x - y|^p summed: each vector's own terms, the shared ones counted once, as their difference
            power = 2 if fn == "euclidean" else 1
            own = (np.abs(x) ** power).sum() + (np.abs(y) ** power).sum()
            x_shared, y_shared = x[at_first], y[at_second]
            shared = np.abs(x_shared) ** power + np.abs(y_shared) ** power - np.abs(x_shared - y_shared) ** power
            distance = max(float(own - shared.sum()), 0.0)
            scores[index] = -(np.sqrt(distance) if power == 2 else distance)
    return scores.reshape(()) if _single(a) and _single(b) else scores


def _single(vectors: Any) -> bool:
    return isinstance(vectors, SparseEmbedding) or getattr(vectors, "ndim", None) == 1


def _squared_norms(matrix: SparseMatrix) -> np.ndarray:
    """(rows,) float64 squared L2 norms."""
    squares = matrix.values.astype(np.float64) ** 2
    return np.array(
        [squares[start:stop].sum() for start, stop in zip(matrix.indptr[:-1], matrix.indptr[1:], strict=True)]
    )


def _distances(left: SparseMatrix, right: SparseMatrix, p: int) -> np.ndarray:
    """Negated L1 (p=1) or L2 (p=2) distances in float64, a dense block of ``left`` (float64, a quarter of
    _SCORE_ELEMENTS values, with one temporary like it) at a time: |l|^p summed, less |l|^p at r's terms, plus
    |l - r|^p there. Identical rows give ~1e-5 at most where the float32 |a|^2 - 2ab + |b|^2 of
    sentence-transformers' sparse euclidean gives up to ~0.2 on long SPLADE vectors."""
    scores = np.empty((left.shape[0], right.shape[0]), dtype=np.float32)
    block = max(1, _SCORE_ELEMENTS // (4 * max(1, left.dim)))
    for start in range(0, left.shape[0], block):
        dense = left[start : start + block].to_dense().astype(np.float64)
        totals = (np.abs(dense) ** p).sum(axis=1)
        for column, row in enumerate(right.rows()):
            at_terms = dense[:, row.indices]
            distance = totals - (np.abs(at_terms) ** p).sum(axis=1) + (np.abs(at_terms - row.values) ** p).sum(axis=1)
            scores[start : start + block, column] = -(np.sqrt(np.maximum(distance, 0.0)) if p == 2 else distance)
    return scores


def sparse_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    top_k: int = 10,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 50000,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top_k`` corpus rows by dot score for each query, best first (ties: lower corpus row first), as
    sentence-transformers' ``util.semantic_search(..., score_function=dot_score)`` ranks them.

    Args:
        query_embeddings: Queries, in any form :func:`as_sparse_matrix` takes.
        corpus_embeddings: The corpus, likewise (a SparseMatrix or scipy CSR is searched without copying).
        top_k: Results per query.
        query_chunk_size: Queries made dense at once ((chunk, vocabulary) float32).
        corpus_chunk_size: Corpus rows scored at once.

    Returns:
        (scores, indices): (n_queries, min(top_k, n_corpus)) float32 and int64.
    """
    from onnxembed.kernels.search import _search_block

    top_k = positive_int(top_k, "top_k")
    query_chunk_size = positive_int(query_chunk_size, "query_chunk_size")
    corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
    queries = as_sparse_matrix(query_embeddings, "query_embeddings")
    corpus = as_sparse_matrix(corpus_embeddings, "corpus_embeddings")
    _check_same_dim(queries, corpus)
    k = min(top_k, corpus.shape[0])
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    if k == 0:
        return scores, indices
    for start in range(0, queries.shape[0], query_chunk_size):
        stop = start + query_chunk_size
        block = queries[start:stop].to_dense()
        scores[start:stop], indices[start:stop] = _search_block(block, corpus, k, corpus_chunk_size, _score_chunk)  # type: ignore[arg-type]
    return scores, indices


def _check_same_dim(a: SparseMatrix, b: SparseMatrix) -> None:
    if a.dim != b.dim and a.shape[0] and b.shape[0]:
        raise InvalidArgumentError(f"vocabulary sizes differ: {a.dim} and {b.dim}")
