"""Top-k search against sentence-transformers' util.semantic_search and util.paraphrase_mining_embeddings;
Hamming search against a brute force over the float signs; rescoring against the formula of its
semantic_search_faiss/usearch. Random floats have no ties; exact ties are built from small integers."""

from __future__ import annotations

import numpy as np
import pytest

from onnxembed.kernels import search
from onnxembed.kernels.search import paraphrase_mining_embeddings, semantic_search, semantic_search_binary

# The sentence-transformers oracle needs the export extra; without it this module skips.
torch = pytest.importorskip("torch")
_st = pytest.importorskip("sentence_transformers")
quantize_embeddings = _st.quantize_embeddings
util = _st.util


TOL = {"rtol": 1e-5, "atol": 1e-5}
ST_SCORE = {"cosine": util.cos_sim, "dot": util.dot_score}
CHUNKS = [(100, 500000), (5, 33)]  # sentence-transformers' defaults, and many partial chunks to merge


def _embeddings(seed: int, n: int, dim: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Unequal norms, so that cosine and dot rank differently.
    return (rng.standard_normal((n, dim)) * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


def _st_search(queries: np.ndarray, corpus: np.ndarray, top_k: int, fn: str) -> tuple[np.ndarray, np.ndarray]:
    hits = util.semantic_search(
        torch.from_numpy(queries), torch.from_numpy(corpus), top_k=top_k, score_function=ST_SCORE[fn]
    )
    scores = np.array([[hit["score"] for hit in row] for row in hits], dtype=np.float32)
    return scores, np.array([[hit["corpus_id"] for hit in row] for row in hits], dtype=np.int64)


@pytest.mark.parametrize("fn", ["cosine", "dot"])
@pytest.mark.parametrize("top_k", [1, 10, 2000])
@pytest.mark.parametrize(("query_chunk_size", "corpus_chunk_size"), CHUNKS)
def test_semantic_search_matches_sentence_transformers(fn, top_k, query_chunk_size, corpus_chunk_size) -> None:
    queries, corpus = _embeddings(1, 37), _embeddings(2, 1000)
    expected_scores, expected_indices = _st_search(queries, corpus, top_k, fn)
    scores, indices = semantic_search(
        queries,
        corpus,
        top_k=top_k,
        score_function=fn,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
    )
    assert scores.shape == indices.shape == (37, min(top_k, 1000))
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_allclose(scores, expected_scores, **TOL)
    # Each index has the score claimed for it: a near-tie may swap two indices, nothing else may differ.
    full = ST_SCORE[fn](torch.from_numpy(queries), torch.from_numpy(corpus)).numpy()
    np.testing.assert_allclose(np.take_along_axis(full, indices, axis=1), expected_scores, **TOL)
    assert all(len(set(row)) == len(row) for row in indices.tolist())
    assert (indices == expected_indices).mean() > 0.999


def test_cosine_and_dot_rank_differently_here() -> None:
    queries, corpus = _embeddings(1, 37), _embeddings(2, 1000)
    assert (semantic_search(queries, corpus, score_function="dot")[1] != semantic_search(queries, corpus)[1]).any()


def test_one_dimensional_query_is_one_row_and_float64_is_scored_in_float64() -> None:
    queries, corpus = _embeddings(3, 4), _embeddings(4, 50)
    scores, indices = semantic_search(queries[2], corpus, top_k=5)
    expected_scores, expected_indices = semantic_search(queries[2:3], corpus, top_k=5)
    assert scores.shape == (1, 5)
    np.testing.assert_array_equal(indices, expected_indices)
    wide_scores, wide_indices = semantic_search(queries.astype(np.float64), corpus.astype(np.float64), top_k=5)
    assert wide_scores.dtype == np.float64
    np.testing.assert_array_equal(wide_indices[2:3], expected_indices)
    np.testing.assert_allclose(wide_scores[2:3], expected_scores, **TOL)


@pytest.mark.parametrize("fn", ["cosine", "dot"])
def test_float64_past_float32s_range_as_sentence_transformers(fn: str) -> None:
    """A cast to float32 would make these inf: cosines of 0 and dot scores of inf, and the wrong neighbours."""
    queries, corpus = _embeddings(5, 3).astype(np.float64) * 1e20, _embeddings(6, 40).astype(np.float64) * 1e20
    hits = util.semantic_search(
        torch.from_numpy(queries), torch.from_numpy(corpus), top_k=4, score_function=ST_SCORE[fn]
    )
    scores, indices = semantic_search(queries, corpus, top_k=4, score_function=fn)
    assert indices.tolist() == [[hit["corpus_id"] for hit in row] for row in hits]
    np.testing.assert_allclose(scores, [[hit["score"] for hit in row] for row in hits], rtol=1e-6)
    # a float64 query (parsed from JSON) against a float32 corpus: scored in float32, no corpus copy to float64
    narrow = _embeddings(6, 40)
    mixed_scores, mixed_indices = semantic_search(narrow[:3].astype(np.float64), narrow, top_k=4, score_function=fn)
    assert mixed_scores.dtype == np.float32
    np.testing.assert_array_equal(mixed_indices, semantic_search(narrow[:3], narrow, top_k=4, score_function=fn)[1])
    expected = util.paraphrase_mining_embeddings(torch.from_numpy(corpus), top_k=2, score_function=ST_SCORE[fn])
    mined = paraphrase_mining_embeddings(corpus, top_k=2, score_function=fn)
    assert [(i, j) for _, i, j in mined[:10]] == [(i, j) for _, i, j in expected[:10]]


def test_options_are_keyword_only() -> None:
    """sentence-transformers' third positional argument is query_chunk_size: taken as top_k it would give other
    results without a word."""
    queries, corpus = _embeddings(7, 3), _embeddings(8, 20)
    with pytest.raises(TypeError, match="positional"):
        semantic_search(queries, corpus, 50)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        paraphrase_mining_embeddings(corpus, 5000)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        semantic_search_binary(queries.view(np.uint8), corpus.view(np.uint8), 5)  # type: ignore[misc]


@pytest.mark.parametrize(("query_chunk_size", "corpus_chunk_size"), [*CHUNKS, (1, 1), (2, 7)])
def test_ties_rank_the_lower_index_first_whatever_the_chunks(query_chunk_size, corpus_chunk_size) -> None:
    rng = np.random.default_rng(5)
    corpus = rng.integers(0, 3, (60, 8)).astype(np.float32)  # small integers: dot products are exact
    corpus[[7, 31, 52]] = 9.0  # three copies of the best match
    queries = np.ones((3, 8), dtype=np.float32)
    scores, indices = semantic_search(
        queries,
        corpus,
        top_k=4,
        score_function="dot",
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
    )
    np.testing.assert_array_equal(indices[:, :3], [[7, 31, 52]] * 3)
    # Brute force with a stable sort on minus the score: ties in index order.
    expected = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(scores[:, 0], 72.0)


def test_empty_corpus_gives_empty_rows_like_sentence_transformers() -> None:
    queries, corpus = _embeddings(6, 3), np.empty((0, 64), dtype=np.float32)
    scores, indices = semantic_search(queries, corpus)
    assert scores.shape == indices.shape == (3, 0)
    assert util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus)) == [[], [], []]
    assert semantic_search_binary(np.zeros((2, 8), np.uint8), np.zeros((0, 8), np.uint8))[0].shape == (2, 0)


def test_nan_scores_are_an_error() -> None:
    corpus = _embeddings(7, 20)
    corpus[11, 3] = np.nan
    with pytest.raises(ValueError, match="contain NaN"):
        semantic_search(_embeddings(8, 2), corpus)


def _bits_and_packed(seed: int, n: int, dim: int, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    floats = _embeddings(seed, n, dim)
    return floats, floats > 0, quantize_embeddings(floats, precision=precision)


@pytest.mark.parametrize(
    ("query_precision", "corpus_precision"), [("ubinary",) * 2, ("binary",) * 2, ("binary", "ubinary")]
)
@pytest.mark.parametrize("dim", [64, 60, 24])
@pytest.mark.parametrize(("query_chunk_size", "corpus_chunk_size"), CHUNKS)
def test_hamming_matches_brute_force(query_precision, corpus_precision, dim, query_chunk_size, corpus_chunk_size):
    _, query_bits, queries = _bits_and_packed(9, 37, dim, query_precision)
    _, corpus_bits, corpus = _bits_and_packed(10, 1000, dim, corpus_precision)
    scores, indices = semantic_search_binary(
        queries, corpus, top_k=10, query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size
    )
    distances = (query_bits[:, None, :] != corpus_bits[None, :, :]).sum(axis=-1)
    # Hamming distances tie often: ties go to the lower index, as a stable sort does.
    np.testing.assert_array_equal(indices, np.argsort(distances, axis=1, kind="stable")[:, :10])
    np.testing.assert_array_equal(scores, -np.sort(distances, axis=1)[:, :10])
    assert scores.dtype == np.float32


def test_hamming_table_lookup_matches_bitwise_count(monkeypatch) -> None:
    _, _, queries = _bits_and_packed(11, 5, 136, "ubinary")
    _, _, corpus = _bits_and_packed(12, 300, 136, "ubinary")
    expected = semantic_search_binary(queries, corpus, top_k=20, corpus_chunk_size=64)
    monkeypatch.setattr(search, "_HAS_BITWISE_COUNT", False)
    got = semantic_search_binary(queries, corpus, top_k=20, corpus_chunk_size=64)
    for got_array, expected_array in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_array, expected_array)


def _st_rescore(floats, query_bits, corpus_bits, top_k, oversample):
    """semantic_search_faiss' rescoring, on exact Hamming candidates (faiss IndexBinaryFlat, ties by index)."""
    distances = (query_bits[:, None, :] != corpus_bits[None, :, :]).sum(axis=-1)
    candidates = np.argsort(distances, axis=1, kind="stable")[:, : top_k * oversample]
    top_k_embeddings = np.unpackbits(np.packbits(corpus_bits, axis=-1)[candidates], axis=-1).astype(int)
    rescored_scores = np.einsum("ij,ikj->ik", floats, top_k_embeddings)
    rescored_indices = np.argsort(-rescored_scores, kind="stable")[:, :top_k]
    rows = np.arange(len(floats))[:, None]
    return rescored_scores[rows, rescored_indices], candidates[rows, rescored_indices]


@pytest.mark.parametrize("corpus_precision", ["ubinary", "binary"])
@pytest.mark.parametrize(("top_k", "oversample"), [(10, 4), (3, 1), (400, 4)])
def test_rescoring_matches_the_sentence_transformers_formula(corpus_precision, top_k, oversample) -> None:
    floats, query_bits, queries = _bits_and_packed(13, 37, 64, "ubinary")
    _, corpus_bits, corpus = _bits_and_packed(14, 1000, 64, corpus_precision)
    expected_scores, expected_indices = _st_rescore(floats, query_bits, corpus_bits, top_k, oversample)
    scores, indices = semantic_search_binary(
        queries,
        corpus,
        top_k=top_k,
        query_chunk_size=5,
        corpus_chunk_size=33,
        rescore_embeddings=floats,
        oversample=oversample,
    )
    assert scores.shape == (37, min(top_k, 1000))
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, **TOL)


def test_rescoring_with_nan_is_an_error() -> None:
    floats, _, queries = _bits_and_packed(16, 3, 64, "ubinary")
    _, _, corpus = _bits_and_packed(17, 50, 64, "ubinary")
    floats[1, 5] = np.nan
    with pytest.raises(ValueError, match="rescore_embeddings contain NaN or inf"):
        semantic_search_binary(queries, corpus, top_k=3, rescore_embeddings=floats)


def test_rescoring_finds_the_true_nearest_neighbour_on_easy_data() -> None:
    rng = np.random.default_rng(15)
    corpus = rng.standard_normal((1000, 256)).astype(np.float32)
    targets = rng.choice(1000, size=40, replace=False)
    queries = corpus[targets] + 0.5 * rng.standard_normal((40, 256)).astype(np.float32)
    cosine = util.cos_sim(torch.from_numpy(queries), torch.from_numpy(corpus)).numpy()
    np.testing.assert_array_equal(cosine.argmax(axis=1), targets)  # the data really is easy
    packed_queries, packed_corpus = (quantize_embeddings(x, precision="ubinary") for x in (queries, corpus))
    _, indices = semantic_search_binary(packed_queries, packed_corpus, top_k=5, rescore_embeddings=queries)
    np.testing.assert_array_equal(indices[:, 0], targets)


def _pairs(mined) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for _, i, j in mined]


def _mining_data(seed: int, n: int) -> np.ndarray:
    """Norms within 5%: each sentence is its own best dot match and no dot is <= -1, where sentence-transformers'
    loop departs from its docstring (it would then keep top_k + 1 neighbours, and drop scores <= -1)."""
    rng = np.random.default_rng(seed)
    unit = rng.standard_normal((n, 32))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return (unit * rng.uniform(0.95, 1.05, (n, 1))).astype(np.float32)


def _brute_force_mining(embeddings: np.ndarray, top_k: int, fn: str) -> list[tuple[float, int, int]]:
    scores = ST_SCORE[fn](torch.from_numpy(embeddings), torch.from_numpy(embeddings)).numpy()
    np.fill_diagonal(scores, -np.inf)
    best: dict[tuple[int, int], float] = {}
    for i, row in enumerate(scores):
        for j in np.argsort(-row, kind="stable")[: min(top_k, len(row) - 1)]:  # self is last
            best[(min(i, int(j)), max(i, int(j)))] = float(row[j])
    return sorted(((score, i, j) for (i, j), score in best.items()), key=lambda pair: (-pair[0], pair[1], pair[2]))


@pytest.mark.parametrize("fn", ["cosine", "dot"])
@pytest.mark.parametrize(("top_k", "n"), [(5, 300), (1, 300), (10, 6)])
def test_paraphrase_mining_matches_sentence_transformers(fn, top_k, n) -> None:
    embeddings = _mining_data(16, n)
    # sentence-transformers' result depends on its chunks (top_k per corpus chunk): give it one chunk; ours
    # does not, so ours gets small ones.
    expected = util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=top_k, score_function=ST_SCORE[fn])
    mined = paraphrase_mining_embeddings(
        embeddings, top_k=top_k, query_chunk_size=64, corpus_chunk_size=50, score_function=fn
    )
    assert _pairs(mined) == _pairs(expected)
    np.testing.assert_allclose([s for s, _, _ in mined], [s for s, _, _ in expected], **TOL)
    assert all(i < j for _, i, j in mined)
    if top_k >= n - 1:
        assert len(mined) == n * (n - 1) // 2


@pytest.mark.parametrize(("top_k", "n"), [(5, 300), (10, 6)])
def test_paraphrase_mining_by_dot_follows_the_docstring_where_sentence_transformers_does_not(top_k, n) -> None:
    embeddings = _embeddings(16, n, dim=32)  # norms 0.5-2: some sentences are not their own best match
    mined = paraphrase_mining_embeddings(
        embeddings, top_k=top_k, query_chunk_size=64, corpus_chunk_size=50, score_function="dot"
    )
    expected = _brute_force_mining(embeddings, top_k, "dot")
    assert _pairs(mined) == _pairs(expected)
    np.testing.assert_allclose([s for s, _, _ in mined], [s for s, _, _ in expected], **TOL)
    theirs = util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=top_k, score_function=util.dot_score)
    assert _pairs(theirs) != _pairs(mined)  # the departure is real on this data


def test_paraphrase_mining_max_pairs() -> None:
    embeddings = _mining_data(17, 200)
    full = paraphrase_mining_embeddings(embeddings, top_k=5)
    for max_pairs in (1, 37, len(full) - 1):
        mined = paraphrase_mining_embeddings(embeddings, top_k=5, max_pairs=max_pairs, query_chunk_size=30)
        # the same pairs; scores to float32 rounding (a BLAS may sum a dot product of other chunk shapes in
        # another order: 0.5552822 against 0.5552820 on a Zen 5 host)
        assert _pairs(mined) == _pairs(full[:max_pairs])
        np.testing.assert_allclose([s for s, _, _ in mined], [s for s, _, _ in full[:max_pairs]], **TOL)
        # sentence-transformers keeps max_pairs - 1 directed pairs, then drops duplicates: a prefix of ours.
        expected = util.paraphrase_mining_embeddings(torch.from_numpy(embeddings), top_k=5, max_pairs=max_pairs)
        assert len(expected) < max_pairs
        assert _pairs(expected) == _pairs(full[: len(expected)])


def test_paraphrase_mining_of_fewer_than_two_is_empty() -> None:
    assert paraphrase_mining_embeddings(_embeddings(18, 1)) == []
    assert paraphrase_mining_embeddings(np.empty((0, 4), dtype=np.float32)) == []


FLOAT, PACKED = np.ones((3, 8), np.float32), np.ones((3, 2), np.uint8)
ERRORS = [
    (semantic_search, (FLOAT, np.ones((4, 9), np.float32)), {}, "dim mismatch"),
    (semantic_search, (np.ones((2, 3, 8)), FLOAT), {}, r"query_embeddings must be \(n, dim\) or \(dim,\)"),
    (semantic_search, (FLOAT, FLOAT[0]), {}, r"corpus_embeddings must be \(n, dim\); got shape \(8,\)"),
    (semantic_search, (FLOAT, FLOAT), {"score_function": "euclidean"}, "unknown score function 'euclidean'"),
    (semantic_search, (FLOAT, FLOAT), {"top_k": 0}, "top_k must be a positive integer; got 0"),
    (semantic_search, (FLOAT, FLOAT), {"top_k": 2.5}, "top_k must be a positive integer"),
    (semantic_search, (FLOAT, FLOAT), {"top_k": True}, "top_k must be a positive integer"),
    (semantic_search, (FLOAT, FLOAT), {"query_chunk_size": 0}, "query_chunk_size must be a positive integer"),
    (semantic_search, (FLOAT, FLOAT), {"corpus_chunk_size": -1}, "corpus_chunk_size must be a positive integer"),
    (semantic_search, (PACKED, PACKED), {}, "must be float embeddings.*semantic_search_binary"),
    (semantic_search_binary, (FLOAT, FLOAT), {}, r"must be packed bits, uint8 \('ubinary'\) or int8"),
    (semantic_search_binary, (PACKED, np.ones((4, 3), np.uint8)), {}, "n_bytes .* mismatch"),
    (semantic_search_binary, (PACKED, PACKED), {"oversample": 0}, "oversample must be a positive integer"),
    (semantic_search_binary, (PACKED, PACKED), {"rescore_embeddings": FLOAT[:2]}, "one row per query"),
    (semantic_search_binary, (PACKED, PACKED), {"rescore_embeddings": np.ones((3, 17))}, "from 9 to 16"),
    (semantic_search_binary, (PACKED, PACKED), {"rescore_embeddings": PACKED}, "rescore_embeddings must be float"),
    (paraphrase_mining_embeddings, (FLOAT,), {"max_pairs": 0}, "max_pairs must be a positive integer"),
    (paraphrase_mining_embeddings, (FLOAT,), {"score_function": "cos_sim"}, "choose from \\('cosine', 'dot'\\)"),
    (paraphrase_mining_embeddings, (FLOAT[0],), {}, r"embeddings must be \(n, dim\)"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "match"), ERRORS)
def test_bad_input_is_a_value_error_that_says_what_is_allowed(function, args, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        function(*args, **kwargs)
