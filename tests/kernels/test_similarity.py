"""Similarity matrices and pairwise similarities against sentence-transformers' util functions."""

from __future__ import annotations

import numpy as np
import pytest

from onnxembed.kernels import SIMILARITY_FNS, cos_sim, dot_score, similarity, similarity_pairwise
from onnxembed.kernels.similarity import euclidean_sim, manhattan_sim

# The sentence-transformers oracle needs the export extra; without it this module skips.
torch = pytest.importorskip("torch")
_st = pytest.importorskip("sentence_transformers")
SimilarityFunction = _st.SimilarityFunction
util = _st.util


TOL = {"rtol": 1e-5, "atol": 1e-6}
ORACLES = {
    "cosine": (cos_sim, util.cos_sim),
    "dot": (dot_score, util.dot_score),
    "euclidean": (euclidean_sim, util.euclidean_sim),
    "manhattan": (manhattan_sim, util.manhattan_sim),
}


def _pair(seed: int, n: int, m: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim)).astype(np.float32)
    b = (rng.standard_normal((m, dim)) * 3).astype(np.float32)
    return a, b


@pytest.mark.parametrize("fn", sorted(ORACLES))
@pytest.mark.parametrize(("n", "m", "dim"), [(1, 1, 3), (4, 7, 16), (9, 2, 384), (3, 3, 1)])
def test_matches_sentence_transformers(fn: str, n: int, m: int, dim: int) -> None:
    ours, theirs = ORACLES[fn]
    a, b = _pair(seed=n * 100 + m, n=n, m=m, dim=dim)
    expected = theirs(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = ours(a, b)
    assert got.shape == (n, m)
    np.testing.assert_allclose(got, expected, **TOL)


def test_cos_sim_with_a_zero_vector_matches_sentence_transformers() -> None:
    a, b = _pair(seed=11, n=3, m=4, dim=8)
    a[1] = 0.0
    b[2] = 0.0
    got = cos_sim(a, b)
    np.testing.assert_allclose(got, util.cos_sim(torch.from_numpy(a), torch.from_numpy(b)).numpy(), **TOL)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[1], 0.0)
    np.testing.assert_array_equal(got[:, 2], 0.0)


@pytest.mark.parametrize("fn", sorted(ORACLES))
def test_one_dimensional_inputs_are_one_row(fn: str) -> None:
    ours, theirs = ORACLES[fn]
    a, b = _pair(seed=12, n=1, m=5, dim=6)
    expected = theirs(torch.from_numpy(a[0]), torch.from_numpy(b)).numpy()
    got = ours(a[0], b)
    assert got.shape == (1, 5)
    np.testing.assert_allclose(got, expected, **TOL)
    np.testing.assert_allclose(ours(a[0], b[3]), theirs(torch.from_numpy(a[0]), torch.from_numpy(b[3])).numpy(), **TOL)


@pytest.mark.parametrize("fn", SIMILARITY_FNS)
def test_similarity_uses_the_named_function(fn: str) -> None:
    a, b = _pair(seed=13, n=5, m=6, dim=10)
    oracle = SimilarityFunction.to_similarity_fn(fn)
    np.testing.assert_allclose(similarity(a, b, fn), oracle(torch.from_numpy(a), torch.from_numpy(b)).numpy(), **TOL)


def test_similarity_defaults_to_cosine() -> None:
    a, b = _pair(seed=14, n=3, m=2, dim=4)
    np.testing.assert_allclose(similarity(a, b), util.cos_sim(torch.from_numpy(a), torch.from_numpy(b)).numpy(), **TOL)


def test_cosine_and_dot_differ_on_unnormalized_input() -> None:
    a, b = _pair(seed=15, n=3, m=3, dim=8)
    assert not np.allclose(similarity(a, b, "cosine"), similarity(a, b, "dot"), **TOL)


def test_tiny_arrays_by_hand() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [3.0, 0.0]])
    half_root_two = 1.0 / np.sqrt(2.0)
    np.testing.assert_allclose(cos_sim(a, b), [[0.0, 1.0], [half_root_two, half_root_two]], **TOL)
    np.testing.assert_allclose(dot_score(a, b), [[0.0, 3.0], [2.0, 3.0]], **TOL)
    np.testing.assert_allclose(dot_score([1.0, 2.0], [3.0, 4.0]), [[11.0]], **TOL)


@pytest.mark.parametrize("fn", SIMILARITY_FNS)
def test_float64_input_is_scored_in_float64_as_sentence_transformers(fn: str) -> None:
    ours, theirs = ORACLES[fn]
    a, b = _pair(seed=16, n=2, m=3, dim=4)
    got = similarity(a.astype(np.float64), b.astype(np.float64), fn)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, similarity(a, b, fn), **TOL)
    # past float32's range (a cast would give inf, and cosines of 0): the values sentence-transformers gives
    wide_a, wide_b = a.astype(np.float64) * 1e20, b.astype(np.float64) * 1e20
    expected = theirs(torch.from_numpy(wide_a), torch.from_numpy(wide_b)).numpy()
    np.testing.assert_allclose(ours(wide_a, wide_b), expected, rtol=1e-6)
    assert similarity(a.astype(np.float64), b, fn).dtype == np.float32  # a mix (ST refuses it) stays float32
    pairwise = {"cosine": util.pairwise_cos_sim, "dot": util.pairwise_dot_score}.get(fn)
    if pairwise is not None:
        expected = pairwise(torch.from_numpy(wide_a[:2]), torch.from_numpy(wide_b[:2])).numpy()
        np.testing.assert_allclose(similarity_pairwise(wide_a[:2], wide_b[:2], fn), expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_quantized_embeddings_are_refused(dtype: type) -> None:
    """What encode(precision="int8"/"binary"...) returns; sentence-transformers' similarity raises on it too."""
    packed = np.zeros((2, 4), dtype=dtype)
    with pytest.raises(ValueError, match=f"a is {np.dtype(dtype).name} .*needs float embeddings"):
        similarity(packed, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="semantic_search_binary"):
        similarity_pairwise(np.ones((2, 4), np.float32), packed)


@pytest.mark.parametrize("fn", ["dot", "euclidean", "manhattan"])
def test_pairwise_of_two_vectors_is_0_d_as_sentence_transformers(fn: str) -> None:
    a, b = _pair(seed=17, n=1, m=1, dim=6)
    theirs = {"dot": util.pairwise_dot_score, "euclidean": util.pairwise_euclidean_sim}.get(
        fn, util.pairwise_manhattan_sim
    )
    expected = theirs(torch.from_numpy(a[0]), torch.from_numpy(b[0])).numpy()
    got = similarity_pairwise(a[0], b[0], fn)
    assert got.shape == expected.shape == ()
    np.testing.assert_allclose(got, expected, **TOL)


def test_normalize_takes_lists_and_keeps_float64() -> None:
    from onnxembed.kernels import normalize

    rows = [[3.0, 4.0], [0.0, 2.0]]
    np.testing.assert_allclose(normalize(rows), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    wide = np.array(rows) * 1e30
    expected = torch.nn.functional.normalize(torch.from_numpy(wide), dim=-1).numpy()
    assert normalize(wide).dtype == np.float64
    np.testing.assert_allclose(normalize(wide), expected, rtol=1e-12)


@pytest.mark.parametrize("function", [cos_sim, dot_score])
@pytest.mark.parametrize(("a_shape", "b_shape"), [((2, 3), (4, 5)), ((3,), (2, 4)), ((1, 8), (8, 1))])
def test_dimension_mismatch_is_an_error(function, a_shape, b_shape) -> None:
    with pytest.raises(ValueError, match="dimension mismatch"):
        function(np.ones(a_shape, dtype=np.float32), np.ones(b_shape, dtype=np.float32))


@pytest.mark.parametrize("function", [cos_sim, dot_score])
def test_three_dimensional_input_is_an_error(function) -> None:
    with pytest.raises(ValueError, match=r"\(n, dim\)"):
        function(np.ones((2, 3, 4), dtype=np.float32), np.ones((2, 4), dtype=np.float32))


@pytest.mark.parametrize("fn", SIMILARITY_FNS)
@pytest.mark.parametrize(("n", "dim"), [(1, 3), (6, 16), (4, 384)])
def test_pairwise_matches_sentence_transformers(fn: str, n: int, dim: int) -> None:
    a, b = _pair(seed=n + dim, n=n, m=n, dim=dim)
    oracle = SimilarityFunction.to_similarity_pairwise_fn(fn)
    expected = oracle(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = similarity_pairwise(a, b, fn)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, **TOL)
    # the pairwise value is the diagonal of the matrix
    np.testing.assert_allclose(got, np.diag(similarity(a, b, fn)), **TOL)


def test_distances_by_hand() -> None:
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0]])
    np.testing.assert_allclose(euclidean_sim(a, b), [[-5.0], [-np.sqrt(13.0)]], **TOL)
    np.testing.assert_allclose(manhattan_sim(a, b), [[-7.0], [-5.0]], **TOL)
    np.testing.assert_array_equal(euclidean_sim(a, a).diagonal(), 0.0)  # exact for identical vectors


def test_pairwise_needs_equal_rows() -> None:
    with pytest.raises(ValueError, match="as many rows"):
        similarity_pairwise(np.ones((2, 3)), np.ones((3, 3)))


@pytest.mark.parametrize("fn", ["euclidian", "dot_product", "Cosine", ""])
def test_unknown_similarity_function_is_named(fn: str) -> None:
    a, b = _pair(seed=17, n=2, m=2, dim=3)
    with pytest.raises(ValueError, match=f"unknown similarity function {fn!r}"):
        similarity(a, b, fn)
