"""Sparse kernels against sentence-transformers: dot scores (util.dot_score) and the other similarities on sparse
tensors (util.cos_sim, euclidean_sim, manhattan_sim and their pairwise forms), top-k search (util.semantic_search
with dot_score), max_active_dims (util.select_max_active_dims); chunk sizes that split rows, empty rows."""

from __future__ import annotations

import numpy as np
import pytest

from onnxembed import ArgumentTypeError, InvalidArgumentError
from onnxembed.kernels import (
    SparseEmbedding,
    SparseMatrix,
    sparse_dot_score,
    sparse_search,
    sparse_similarity,
    sparse_similarity_pairwise,
)
from onnxembed.kernels.sparse import sparse_rows


def _random_sparse(rows: int, dim: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.random((rows, dim), dtype=np.float32) * 3
    dense[rng.random((rows, dim)) > density] = 0
    dense[::7] = 0  # empty rows, at the start and in between
    return dense


def test_dot_score_and_search_as_sentence_transformers() -> None:
    torch = pytest.importorskip("torch")
    from sentence_transformers import util

    queries, corpus = _random_sparse(13, 300, 0.05, 0), _random_sparse(101, 300, 0.05, 1)
    corpus[40] = corpus[41] = queries[1] * 5  # a tie at the top of the first query searched: lower row first
    expected = util.dot_score(torch.from_numpy(queries), torch.from_numpy(corpus)).numpy()
    for a, b in ((queries, corpus), (sparse_rows(queries).rows(), sparse_rows(corpus)), (sparse_rows(queries), corpus)):
        np.testing.assert_allclose(sparse_dot_score(a, b), expected, atol=1e-5)
    hits = util.semantic_search(
        torch.from_numpy(queries[1:]), torch.from_numpy(corpus), top_k=7, score_function=util.dot_score
    )
    scores, indices = sparse_search(
        sparse_rows(queries[1:]), sparse_rows(corpus), top_k=7, query_chunk_size=3, corpus_chunk_size=9
    )
    for row, expected_hits in enumerate(hits):
        np.testing.assert_allclose(scores[row], [hit["score"] for hit in expected_hits], atol=1e-5)
        if len(set(np.round(scores[row], 5))) == len(scores[row]):  # ordered alike where no two scores tie
            assert indices[row].tolist() == [hit["corpus_id"] for hit in expected_hits]
    assert indices[0, :2].tolist() == [40, 41]


@pytest.mark.parametrize("fn", ["dot", "cosine", "euclidean", "manhattan"])
def test_similarities_as_sentence_transformers_on_sparse_tensors(fn: str, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")  # sentence-transformers' sparse manhattan
    from sentence_transformers import util

    queries, corpus = _random_sparse(13, 300, 0.05, 4), _random_sparse(29, 300, 0.05, 5)
    corpus[3], corpus[5] = queries[2], queries[5]  # distances of 0, in the matrix and in the pairs
    matrix = {"dot": util.dot_score, "cosine": util.cos_sim, "euclidean": util.euclidean_sim}.get(
        fn, util.manhattan_sim
    )
    pairwise = getattr(
        util, f"pairwise_{'dot_score' if fn == 'dot' else fn[:3] + '_sim' if fn == 'cosine' else fn + '_sim'}"
    )
    left, right = torch.from_numpy(queries).to_sparse(), torch.from_numpy(corpus).to_sparse()
    # euclidean takes |a|^2 - 2ab + |b|^2, in float32 4e-3 off at a distance of 0 here: the reference is its
    # float64 result (ours sums without cancelling)
    exact = (left.to_dense().double(), right.to_dense().double()) if fn == "euclidean" else (left, right)
    expected = matrix(*exact).float().numpy()
    import onnxembed.kernels.sparse as kernels

    monkeypatch.setattr(kernels, "_SCORE_ELEMENTS", 300 * 16)  # blocks of 16 query rows (4 for distances)
    np.testing.assert_allclose(sparse_similarity(sparse_rows(queries), corpus, fn), expected, rtol=1e-5, atol=1e-5)
    expected_pairs = pairwise(left, torch.from_numpy(corpus[:13]).to_sparse()).numpy()
    np.testing.assert_allclose(
        sparse_similarity_pairwise(queries, corpus[:13], fn), expected_pairs, rtol=1e-5, atol=1e-5
    )
    # one vector against SparseEmbeddings, two single vectors (a 0-d result, as sentence-transformers' tensor)
    rows = sparse_rows(corpus).rows()
    np.testing.assert_allclose(sparse_similarity(rows[3], rows, fn), expected[2:3], rtol=1e-5, atol=1e-5)
    single = sparse_similarity_pairwise(queries[4], corpus[4], fn)
    assert single.shape == () and np.isclose(single, expected_pairs[4], rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="unknown similarity function 'jaccard'"):
        sparse_similarity(queries, corpus, "jaccard")


def test_scipy_round_trip() -> None:
    scipy = pytest.importorskip("scipy.sparse")
    dense = _random_sparse(9, 50, 0.2, 2)
    csr = scipy.csr_matrix(dense)
    np.testing.assert_array_equal(sparse_rows(dense).to_scipy().toarray(), dense)
    np.testing.assert_allclose(sparse_dot_score(csr, csr), dense @ dense.T, atol=1e-5)
    matrix = sparse_rows(dense)
    np.testing.assert_array_equal(matrix[2:5].to_dense(), dense[2:5])
    assert SparseMatrix.from_rows(matrix.rows()).to_dense().tolist() == dense.tolist()


def test_max_active_dims_as_sentence_transformers() -> None:
    torch = pytest.importorskip("torch")
    from sentence_transformers.util import select_max_active_dims

    dense = _random_sparse(12, 80, 0.5, 3)
    for k in (1, 4, 79, 200):
        expected = select_max_active_dims(torch.from_numpy(dense), max_active_dims=k).numpy()
        np.testing.assert_array_equal(sparse_rows(dense, k).to_dense(), expected)


def test_bad_input() -> None:
    one = SparseEmbedding(np.array([1, 4]), np.array([0.5, 1.0], np.float32), 10)
    other = SparseEmbedding(np.array([1]), np.array([2.0], np.float32), 12)
    with pytest.raises(InvalidArgumentError, match="vocabulary sizes differ: 10 and 12"):
        sparse_dot_score(one, other)
    with pytest.raises(ArgumentTypeError, match="query_embeddings must be SparseEmbedding"):
        sparse_search("text", [one])
    with pytest.raises(InvalidArgumentError, match="top_k must be a positive integer"):
        sparse_search([one], [one], top_k=0)
    assert sparse_dot_score(one, one).tolist() == [[1.25]]
