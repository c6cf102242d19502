"""Kernel checks that need numpy alone (no torch, no sentence-transformers): hand-computed tiny arrays and
brute force, so `pytest tests/kernels` says something on a runtime-only install too."""

from __future__ import annotations

import numpy as np

from onnxembed.kernels import normalize, pool, quantize_embeddings, semantic_search, similarity

TOKENS = np.array([[[1.0, 2.0], [3.0, -4.0], [9.0, 9.0]], [[0.0, 1.0], [5.0, 5.0], [7.0, 7.0]]], dtype=np.float32)
MASK = np.array([[1, 1, 0], [1, 0, 0]])


def test_pooling_by_hand() -> None:
    np.testing.assert_allclose(pool(TOKENS, MASK, "mean"), [[2.0, -1.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool(TOKENS, MASK, "max"), [[3.0, 2.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool(TOKENS, MASK, "cls"), [[1.0, 2.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool(TOKENS, MASK, "lasttoken"), [[3.0, -4.0], [0.0, 1.0]])
    np.testing.assert_allclose(
        pool(TOKENS, MASK, "mean_sqrt_len_tokens"), [[4.0 / np.sqrt(2), -2.0 / np.sqrt(2)], [0.0, 1.0]]
    )
    # weightedmean weighs position k by k + 1: (1 * [1, 2] + 2 * [3, -4]) / 3
    np.testing.assert_allclose(pool(TOKENS, MASK, "weightedmean")[0], [7.0 / 3, -2.0], rtol=1e-6)
    np.testing.assert_allclose(pool(TOKENS, MASK, ("cls", "max")), [[1.0, 2.0, 3.0, 2.0], [0.0, 1.0, 0.0, 1.0]])


def test_normalize_by_hand_and_zero_rows_stay_zero() -> None:
    np.testing.assert_allclose(normalize(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)), [[0.6, 0.8], [0.0, 0.0]])


def test_similarity_by_hand() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
    b = np.array([[0.0, 2.0]], np.float32)
    np.testing.assert_allclose(similarity(a, b, "cosine"), [[0.0], [np.sqrt(0.5)]], atol=1e-7)
    np.testing.assert_allclose(similarity(a, b, "dot"), [[0.0], [2.0]])
    np.testing.assert_allclose(similarity(a, b, "euclidean"), [[-np.sqrt(5.0)], [-np.sqrt(2.0)]], rtol=1e-6)
    np.testing.assert_allclose(similarity(a, b, "manhattan"), [[-3.0], [-2.0]])


def test_semantic_search_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    queries, corpus = rng.standard_normal((7, 16), np.float32), rng.standard_normal((300, 16), np.float32)
    scores = normalize(queries) @ normalize(corpus).T
    found_scores, found_ids = semantic_search(queries, corpus, top_k=5, corpus_chunk_size=64)
    expected = np.argsort(-scores, axis=1)[:, :5]
    np.testing.assert_array_equal(found_ids, expected)
    np.testing.assert_allclose(found_scores, np.take_along_axis(scores, expected, axis=1), rtol=1e-5)


def test_binary_quantization_by_hand() -> None:
    embeddings = np.array([[0.5, -1.0, 2.0, 0.0, -0.1, 3.0, 1.0, -2.0, 4.0]], np.float32)
    # bits set where the value is > 0, packed big-endian in bytes; the 9th value starts a second byte
    np.testing.assert_array_equal(quantize_embeddings(embeddings, "ubinary"), [[0b10100110, 0b10000000]])
    np.testing.assert_array_equal(quantize_embeddings(embeddings, "binary"), [[0b10100110 - 128, 0b10000000 - 128]])
