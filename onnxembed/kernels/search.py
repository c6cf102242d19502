"""Exact top-k search over embeddings, in numpy.

In scope: sentence-transformers' ``util.semantic_search`` (cosine or dot score) and
``util.paraphrase_mining_embeddings`` on float embeddings; exact Hamming search over packed binary embeddings
(``quantize_embeddings`` precisions "ubinary" and "binary"), with the float-query rescoring of
``semantic_search_faiss`` / ``semantic_search_usearch``. Results are arrays, not lists of dicts.
Not in scope: approximate indexes (HNSW, IVF), int8/uint8 scalar-quantized search, sparse embeddings,
community detection, anything that embeds text.

Memory is bounded by the chunk sizes: the corpus is never copied whole, and the largest allocation is one
(query_chunk_size, corpus_chunk_size) float32 score block. Each chunk's top-k is found with ``np.partition``
(linear time, no sort), merged with the running top-k, and only the k winners are ever sorted.
Ties rank the lower corpus index first, whatever the chunk sizes, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from onnxembed._checks import positive_int
from onnxembed.errors import InvalidArgumentError
from onnxembed.kernels.pooling import normalize

ScoreFunction = Literal["cosine", "dot"]
SCORE_FUNCTIONS: tuple[str, ...] = get_args(ScoreFunction)

# F.normalize floors norms at 1e-12; dividing dot scores by the floored corpus norm is the same cosine.
_NORM_EPS = np.float32(1e-12)
# numpy < 2.0 has no bitwise_count: count bits of each byte through a table instead.
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
_POPCOUNT_TABLE = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)
# "binary" precision stores packbits(...) - 128 as int8, which flips the top bit of every byte.
_BINARY_OFFSET = np.uint8(0x80)

# Fills a (query block, corpus chunk) float32 score block; larger is better.
_Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def semantic_search(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    *,
    top_k: int = 10,
    score_function: ScoreFunction = "cosine",
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
) -> tuple[np.ndarray, np.ndarray]:
    """The top_k corpus entries for each query, best first, as sentence-transformers' ``util.semantic_search``.

    query_embeddings: (n_queries, dim) or (dim,) float; corpus_embeddings: (n_corpus, dim) float, any float
    dtype, cast one chunk at a time (a memmap works); scored in float32, or in float64 for a float64 corpus.
    The options are keyword-only: their order differs from sentence-transformers' (query_chunk_size comes
    third there). Returns (scores, indices): (n_queries, k) float32 (float64) and int64 with
    k = min(top_k, n_corpus); an empty corpus gives k = 0, as sentence-transformers
    gives empty lists.
    """
    _check_score_function(score_function)
    top_k = positive_int(top_k, "top_k")
    query_chunk_size = positive_int(query_chunk_size, "query_chunk_size")
    corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
    queries = _float_matrix(query_embeddings, "query_embeddings", allow_vector=True)
    corpus = _float_matrix(corpus_embeddings, "corpus_embeddings", allow_vector=False)
    _check_same_dim(queries, corpus, "dim")

    dtype = _score_dtype(corpus)
    k = min(top_k, corpus.shape[0])
    scores = np.empty((queries.shape[0], k), dtype=dtype)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    if k == 0:
        return scores, indices
    scorer = _float_scorer(score_function, dtype)
    for start in range(0, queries.shape[0], query_chunk_size):
        stop = start + query_chunk_size
        block = _prepare_queries(queries[start:stop], score_function, dtype)
        scores[start:stop], indices[start:stop] = _search_block(block, corpus, k, corpus_chunk_size, scorer)
    return scores, indices


def semantic_search_binary(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    *,
    top_k: int = 10,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    rescore_embeddings: np.ndarray | None = None,
    oversample: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming search over packed binary embeddings, optionally rescored with float queries.

    query_embeddings: (n_queries, n_bytes) or (n_bytes,); corpus_embeddings: (n_corpus, n_bytes). Each is
    uint8 ("ubinary": ``np.packbits(x > 0)``) or int8 ("binary": the same bits minus 128), as
    ``quantize_embeddings`` makes them; the two may differ. Without rescoring, scores are minus the Hamming
    distance (higher is better), as float32.

    rescore_embeddings: the float queries, (n_queries, dim) with n_bytes == ceil(dim / 8). Then the
    top_k * oversample nearest by Hamming are rescored as sentence-transformers' faiss/usearch rescoring does:
    float query · unpacked corpus bits in {0, 1}, and the best top_k kept. (Rescoring against bits in {-1, +1}
    gives 2 * that - sum(query): other scores, the same ranking.)

    Returns (scores, indices): (n_queries, min(top_k, n_corpus)) float32 and int64, best first.
    """
    top_k = positive_int(top_k, "top_k")
    oversample = positive_int(oversample, "oversample")
    query_chunk_size = positive_int(query_chunk_size, "query_chunk_size")
    corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
    queries = _packed_matrix(query_embeddings, "query_embeddings", allow_vector=True)
    corpus = _packed_matrix(corpus_embeddings, "corpus_embeddings", allow_vector=False)
    _check_same_dim(queries, corpus, "n_bytes (packed bits)")
    float_queries = None
    if rescore_embeddings is not None:
        float_queries = _float_matrix(rescore_embeddings, "rescore_embeddings", allow_vector=True)
        _check_rescore_shape(float_queries, queries)
        if not np.isfinite(float_queries).all():
            raise InvalidArgumentError("rescore_embeddings contain NaN or inf; embeddings must be finite")

    # XOR of two "binary" int8 arrays equals XOR of their packbits (the offset cancels); only a mix of the two
    # needs the query's top bits flipped to match the corpus.
    query_bytes = queries.view(np.uint8)
    if queries.dtype != corpus.dtype:
        query_bytes = query_bytes ^ _BINARY_OFFSET

    k = min(top_k, corpus.shape[0])
    n_candidates = k if float_queries is None else min(top_k * oversample, corpus.shape[0])
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    if k == 0:
        return scores, indices
    for start in range(0, queries.shape[0], query_chunk_size):
        stop = start + query_chunk_size
        block_scores, block_indices = _search_block(
            query_bytes[start:stop], corpus, n_candidates, corpus_chunk_size, _hamming_scorer
        )
        if float_queries is not None:
            block_scores, block_indices = _rescore(float_queries[start:stop], corpus, block_indices, k)
        scores[start:stop], indices[start:stop] = block_scores, block_indices
    return scores, indices


def paraphrase_mining_embeddings(
    embeddings: np.ndarray,
    *,
    top_k: int = 100,
    max_pairs: int = 500000,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    score_function: ScoreFunction = "cosine",
) -> list[tuple[float, int, int]]:
    """The most similar pairs among (n, dim) float embeddings, as sentence-transformers'
    ``util.paraphrase_mining_embeddings``: each sentence's top_k neighbours other than itself, as pairs
    (score, i, j) with i < j, each pair once, highest score first (ties: lower i, then lower j), at most
    max_pairs.

    Where sentence-transformers differs, this follows its docstring rather than its loop: its top_k is per
    corpus chunk, so a corpus over corpus_chunk_size rows yields more neighbours; it keeps max_pairs - 1
    directed pairs before removing duplicates, so it returns fewer than max_pairs (a prefix of this list);
    and it drops scores <= -1. Here the result does not depend on the chunk sizes. The options are
    keyword-only (sentence-transformers' order differs); float64 embeddings are scored in float64.
    """
    _check_score_function(score_function)
    top_k = positive_int(top_k, "top_k")
    max_pairs = positive_int(max_pairs, "max_pairs")
    query_chunk_size = positive_int(query_chunk_size, "query_chunk_size")
    corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
    matrix = _float_matrix(embeddings, "embeddings", allow_vector=False)
    n = matrix.shape[0]
    if n < 2:
        return []

    k = min(top_k, n - 1)
    dtype = _score_dtype(matrix)
    scorer = _float_scorer(score_function, dtype)
    pool_scores = np.empty(0, dtype=dtype)
    pool_pairs = np.empty((0, 2), dtype=np.int64)
    for start in range(0, n, query_chunk_size):
        block = _prepare_queries(matrix[start : start + query_chunk_size], score_function, dtype)
        scores, neighbours = _search_block(block, matrix, k, corpus_chunk_size, scorer, self_offset=start)
        rows = np.arange(start, start + block.shape[0])[:, None]
        found = neighbours != rows  # self only survives when every other score is -inf
        first, second = np.broadcast_to(rows, neighbours.shape)[found], neighbours[found]
        pairs = np.stack((np.minimum(first, second), np.maximum(first, second)), axis=1)
        # Pruning to max_pairs after every query chunk keeps memory bounded and loses nothing: a pair pushed
        # out has max_pairs better ones already in the pool, and the pool only gets better.
        pool_scores, pool_pairs = _best_unique_pairs(
            np.concatenate((pool_scores, scores[found])), np.concatenate((pool_pairs, pairs)), n, max_pairs
        )
    return list(zip(pool_scores.tolist(), pool_pairs[:, 0].tolist(), pool_pairs[:, 1].tolist(), strict=True))


def _search_block(
    query_block: np.ndarray,
    corpus: np.ndarray,
    k: int,
    corpus_chunk_size: int,
    scorer: _Scorer,
    self_offset: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one query block over the whole corpus, chunk by chunk: (block, k) float32 and int64, best first.

    self_offset: the block's first row index in the corpus, to leave each query out of its own results.
    """
    floating = np.issubdtype(query_block.dtype, np.floating)  # packed bits are scored as float32 (Hamming)
    best_scores = np.empty((query_block.shape[0], 0), dtype=query_block.dtype if floating else np.float32)
    best_indices = np.empty((query_block.shape[0], 0), dtype=np.int64)
    for start in range(0, corpus.shape[0], corpus_chunk_size):
        scores = scorer(query_block, corpus[start : start + corpus_chunk_size])
        if self_offset is not None:
            rows = np.arange(scores.shape[0])
            columns = rows + self_offset - start
            inside = (columns >= 0) & (columns < scores.shape[1])
            scores[rows[inside], columns[inside]] = -np.inf
        # max() propagates NaN: one reduction over the block, no mask allocated.
        if np.isnan(scores.max()):
            stop = start + scores.shape[1]
            raise InvalidArgumentError(
                f"scores against corpus rows {start}:{stop} contain NaN; embeddings must be finite"
            )
        positions = np.stack([_top_positions(row, k) for row in scores])
        chunk_scores = np.take_along_axis(scores, positions, axis=1)
        best_scores, best_indices = _keep_best(
            np.concatenate((best_scores, chunk_scores), axis=1),
            np.concatenate((best_indices, positions + start), axis=1),
            k,
        )
        del scores  # else the next chunk's block is allocated while this one is alive: twice the peak memory
    return best_scores, best_indices


def _top_positions(row: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values of a (n,) row, ties to the lower position; unordered (min(k, n),) int64.

    One row at a time: the block-wide argpartition allocates int64 indices twice the size of the score block,
    and per row np.partition + a threshold measured 2x faster than argpartition (1e5-1e6 columns).
    """
    n = row.shape[0]
    if k >= n:
        return np.arange(n)
    kth = np.partition(row, n - k)[n - k]
    positions = np.flatnonzero(row >= kth)
    if positions.size > k:  # ties at the k-th value: take the lowest positions
        values = row[positions]
        above = positions[values > kth]
        positions = np.concatenate((above, positions[values == kth][: k - above.size]))
    return positions


def _keep_best(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of (rows, m) scores, sorted by score descending then index ascending."""
    order = np.lexsort((indices, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


def _best_unique_pairs(scores: np.ndarray, pairs: np.ndarray, n: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort (m,) scores and (m, 2) pairs best first, keep each pair once (its best score), at most max_pairs."""
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -scores))
    scores, pairs = scores[order], pairs[order]
    # np.unique's return_index is each key's first occurrence, i.e. its best score in this order.
    _, first = np.unique(pairs[:, 0] * n + pairs[:, 1], return_index=True)
    keep = np.sort(first)[:max_pairs]
    return scores[keep], pairs[keep]


def _score_dtype(corpus: np.ndarray) -> type[np.floating]:
    """float64 for a float64 corpus array (pooling.float_array's rule), else float32: a float64 query (one parsed
    from JSON) against a float32 corpus must not copy every corpus chunk to float64."""
    return np.float64 if corpus.dtype == np.float64 else np.float32


def _float_scorer(score_function: ScoreFunction, dtype: type[np.floating] = np.float32) -> _Scorer:
    def score(query_block: np.ndarray, corpus_chunk: np.ndarray) -> np.ndarray:
        chunk = corpus_chunk.astype(dtype, copy=False)
        scores = query_block @ chunk.T
        if score_function == "cosine":
            # Divide by the corpus norms instead of normalizing the chunk: no (chunk, dim) copy. einsum, not
            # np.linalg.norm, which squares into a temporary the size of the chunk.
            norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
            scores /= np.maximum(norms, _NORM_EPS)
        return scores

    return score


def _prepare_queries(block: np.ndarray, score_function: ScoreFunction, dtype: type[np.floating]) -> np.ndarray:
    block = block.astype(dtype, copy=False)
    return normalize(block) if score_function == "cosine" else block


def _hamming_scorer(query_bytes: np.ndarray, corpus_chunk: np.ndarray) -> np.ndarray:
    """Minus the Hamming distances between (q, n_bytes) and (c, n_bytes) packed bits: (q, c) float32.

    The chunk is transposed to (words, c) so that every XOR and popcount runs over one contiguous row of
    c words; measured 2-4x faster than XOR-ing (c, words) rows and summing along the short axis.
    """
    n_bytes = query_bytes.shape[1]
    # bitwise_count takes the widest word that divides a row; the table lookup of numpy < 2.0 takes bytes.
    widths = (8, 4, 2, 1) if _HAS_BITWISE_COUNT else (1,)
    word = np.dtype(f"u{next(width for width in widths if n_bytes % width == 0)}")
    corpus_words = np.ascontiguousarray(np.ascontiguousarray(corpus_chunk).view(np.uint8).view(word).T)
    query_words = np.ascontiguousarray(query_bytes).view(word)
    scores = np.zeros((query_bytes.shape[0], corpus_chunk.shape[0]), dtype=np.float32)
    xor: np.ndarray = np.empty(corpus_chunk.shape[0], dtype=word)
    counts = np.empty(corpus_chunk.shape[0], dtype=np.uint8)
    for row, query in zip(scores, query_words, strict=True):
        for column, query_word in zip(corpus_words, query, strict=True):
            np.bitwise_xor(column, query_word, out=xor)
            if _HAS_BITWISE_COUNT:
                np.bitwise_count(xor, out=counts)
            else:
                np.take(_POPCOUNT_TABLE, xor, out=counts)
            row += counts  # float32 holds these integer counts exactly
    return np.negative(scores, out=scores)


def _rescore(
    float_queries: np.ndarray, corpus: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rescore (q, c) candidate indices with float queries against the candidates' bits; keep the k best."""
    packed = corpus[candidates].view(np.uint8)  # (q, c, n_bytes); only the candidates are read
    if corpus.dtype == np.int8:
        # Undo the -128. (sentence-transformers' usearch path unpacks int8 with astype(uint8), which keeps it
        # and so reads the first bit of every byte inverted.)
        packed = packed ^ _BINARY_OFFSET
    bits = np.unpackbits(packed, axis=-1, count=float_queries.shape[1]).astype(np.float32)
    # The formula of sentence-transformers' semantic_search_faiss/usearch: einsum("ij,ikj->ik", float, bits).
    scores = np.einsum("ij,ikj->ik", float_queries.astype(np.float32, copy=False), bits)
    return _keep_best(scores, candidates, k)


def _check_score_function(score_function: str) -> None:
    if score_function not in SCORE_FUNCTIONS:
        raise InvalidArgumentError(f"unknown score function {score_function!r}; choose from {SCORE_FUNCTIONS}")


def _matrix(embeddings: np.ndarray, name: str, allow_vector: bool) -> np.ndarray:
    matrix = np.asarray(embeddings)
    if matrix.ndim == 1 and allow_vector:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        allowed = "(n, dim) or (dim,)" if allow_vector else "(n, dim)"
        raise InvalidArgumentError(f"{name} must be {allowed}; got shape {matrix.shape}")
    return matrix


def _float_matrix(embeddings: np.ndarray, name: str, allow_vector: bool) -> np.ndarray:
    matrix = _matrix(embeddings, name, allow_vector)
    if not np.issubdtype(matrix.dtype, np.floating):
        raise InvalidArgumentError(
            f"{name} must be float embeddings; got dtype {matrix.dtype}. Packed binary embeddings (uint8/int8) "
            f"go to semantic_search_binary; for int8 scalar quantization cast to float32 first"
        )
    # Python floats are float32 as torch makes them; an array keeps its dtype here (cast a chunk at a time)
    return matrix if isinstance(embeddings, np.ndarray) else matrix.astype(np.float32)


def _packed_matrix(embeddings: np.ndarray, name: str, allow_vector: bool) -> np.ndarray:
    matrix = _matrix(embeddings, name, allow_vector)
    if matrix.dtype not in (np.uint8, np.int8):
        raise InvalidArgumentError(
            f"{name} must be packed bits, uint8 ('ubinary') or int8 ('binary') as quantize_embeddings makes; "
            f"got dtype {matrix.dtype}. Float embeddings go to semantic_search"
        )
    return matrix


def _check_same_dim(queries: np.ndarray, corpus: np.ndarray, what: str) -> None:
    if queries.shape[1] != corpus.shape[1]:
        raise InvalidArgumentError(
            f"{what} mismatch: query_embeddings have {queries.shape[1]}, corpus_embeddings have {corpus.shape[1]}"
        )


def _check_rescore_shape(float_queries: np.ndarray, packed_queries: np.ndarray) -> None:
    n_bytes = packed_queries.shape[1]
    if float_queries.shape[0] != packed_queries.shape[0]:
        raise InvalidArgumentError(
            f"rescore_embeddings must have one row per query: {packed_queries.shape[0]} queries, "
            f"got {float_queries.shape[0]} rows"
        )
    # packbits pads the last byte with zeros, so n_bytes packed bytes hold any dim from 8*n_bytes - 7 up.
    if not 8 * n_bytes - 7 <= float_queries.shape[1] <= 8 * n_bytes:
        raise InvalidArgumentError(
            f"rescore_embeddings have dim {float_queries.shape[1]}; {n_bytes} packed bytes allow a dim from "
            f"{max(8 * n_bytes - 7, 1)} to {8 * n_bytes}"
        )
