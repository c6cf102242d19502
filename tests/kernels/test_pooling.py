"""Pooling, prompt exclusion and normalization against sentence-transformers' own Pooling and torch's normalize."""

from __future__ import annotations

import numpy as np
import pytest

from onnxembed.kernels import POOLING_MODES, exclude_prompt, normalize, pool

# The sentence-transformers oracle needs the export extra; without it this module skips.
torch = pytest.importorskip("torch")
_st = pytest.importorskip("sentence_transformers.models")
Pooling = _st.Pooling


TOL = {"rtol": 1e-5, "atol": 1e-6}
DIM = 5
# Rows of different lengths; row 2 has no real token at all.
LENGTHS = [7, 1, 0, 4, 2, 6]
SEQ = max(LENGTHS)


def _mask(lengths: list[int], side: str) -> np.ndarray:
    real = np.arange(SEQ)[None, :] < np.array(lengths)[:, None]
    return (real if side == "right" else real[:, ::-1]).astype(np.int64)


def _embeddings(seed: int, batch: int = len(LENGTHS)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, SEQ, DIM)).astype(np.float32)


def _st_pool(embeddings: np.ndarray, mask: np.ndarray, modes, prompt_length: int | None = None) -> dict:
    pooling = Pooling(embedding_dimension=DIM, pooling_mode=modes, include_prompt=prompt_length is None)
    features = {"token_embeddings": torch.from_numpy(embeddings), "attention_mask": torch.from_numpy(mask)}
    if prompt_length is not None:
        features["prompt_length"] = prompt_length
    with torch.no_grad():
        return pooling.forward(features)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_single_mode_matches_sentence_transformers(mode: str, side: str) -> None:
    embeddings, mask = _embeddings(seed=1), _mask(LENGTHS, side)
    expected = _st_pool(embeddings, mask, mode)["sentence_embedding"].numpy()
    got = pool(embeddings, mask, mode)
    assert got.shape == (len(LENGTHS), DIM)
    np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.parametrize("modes", [("lasttoken", "mean", "cls", "max"), ["weightedmean", "mean_sqrt_len_tokens"]])
def test_concatenated_modes_keep_the_given_order(modes) -> None:
    embeddings, mask = _embeddings(seed=2), _mask(LENGTHS, "right")
    expected = _st_pool(embeddings, mask, tuple(modes))["sentence_embedding"].numpy()
    got = pool(embeddings, mask, modes)
    assert got.shape == (len(LENGTHS), len(modes) * DIM)
    np.testing.assert_allclose(got, expected, **TOL)
    for index, mode in enumerate(modes):
        np.testing.assert_allclose(got[:, index * DIM : (index + 1) * DIM], pool(embeddings, mask, mode), **TOL)


@pytest.mark.parametrize("mode", ["cls", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_all_zero_mask_row_is_finite_and_matches(mode: str) -> None:
    embeddings, mask = _embeddings(seed=3, batch=2), _mask([SEQ, 0], "right")
    got = pool(embeddings, mask, mode)
    np.testing.assert_allclose(got, _st_pool(embeddings, mask, mode)["sentence_embedding"].numpy(), **TOL)
    assert np.isfinite(got).all()
    expected_empty = embeddings[1, 0] if mode == "cls" else np.zeros(DIM, dtype=np.float32)
    np.testing.assert_allclose(got[1], expected_empty, **TOL)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("prompt_length", [1, 2, 3])
def test_exclude_prompt_mask_matches_sentence_transformers(side: str, prompt_length: int) -> None:
    mask = _mask(LENGTHS, side)
    # Pooling(include_prompt=False) puts the mask it pooled with back into the features.
    expected = _st_pool(_embeddings(seed=4), mask, "mean", prompt_length)["attention_mask"].numpy()
    got = exclude_prompt(mask, prompt_length)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(mask, _mask(LENGTHS, side))  # the input is not modified


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("modes", [*POOLING_MODES, ("cls", "weightedmean", "lasttoken")])
def test_pool_without_prompt_matches_include_prompt_false(modes, side: str) -> None:
    embeddings, mask, prompt_length = _embeddings(seed=5), _mask(LENGTHS, side), 2
    expected = _st_pool(embeddings, mask, modes, prompt_length)["sentence_embedding"].numpy()
    got = pool(embeddings, exclude_prompt(mask, prompt_length), modes)
    np.testing.assert_allclose(got, expected, **TOL)


def test_exclude_prompt_by_hand() -> None:
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    expected = np.array([[0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(exclude_prompt(mask, 1), expected)


@pytest.mark.parametrize(
    ("mode", "mask", "expected"),
    [
        ("mean", [[1, 0]], [[1.0, 2.0]]),
        ("mean", [[1, 1]], [[2.0, 3.0]]),
        ("max", [[1, 0]], [[1.0, 2.0]]),
        ("max", [[1, 1]], [[3.0, 4.0]]),
        ("cls", [[0, 1]], [[3.0, 4.0]]),
        ("lasttoken", [[1, 0]], [[1.0, 2.0]]),
        ("lasttoken", [[0, 1]], [[3.0, 4.0]]),
        ("mean_sqrt_len_tokens", [[1, 1]], [[4.0 / np.sqrt(2.0), 6.0 / np.sqrt(2.0)]]),
        ("weightedmean", [[1, 1]], [[7.0 / 3.0, 10.0 / 3.0]]),
        ("weightedmean", [[0, 1]], [[3.0, 4.0]]),
    ],
)
def test_tiny_arrays_by_hand(mode: str, mask, expected) -> None:
    embeddings = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)
    np.testing.assert_allclose(pool(embeddings, np.array(mask), mode), np.array(expected), **TOL)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_output_is_float32_for_float64_input(mode: str) -> None:
    embeddings, mask = _embeddings(seed=6).astype(np.float64), _mask(LENGTHS, "right")
    got = pool(embeddings, mask, [mode, "mean"])
    assert got.dtype == np.float32
    # normalize keeps float64, as F.normalize does (values past float32's range would overflow)
    assert (
        normalize(embeddings[:, 0]).dtype == np.float64 and normalize(embeddings[:, 0, :2].tolist()).dtype == np.float32
    )


def test_normalize_matches_torch() -> None:
    embeddings = np.random.default_rng(7).standard_normal((6, 11)).astype(np.float32) * 30
    embeddings[2] = 0.0
    embeddings[4] *= 1e-8
    expected = torch.nn.functional.normalize(torch.from_numpy(embeddings), p=2, dim=-1).numpy()
    got = normalize(embeddings)
    np.testing.assert_allclose(got, expected, **TOL)
    np.testing.assert_allclose(np.linalg.norm(got[[0, 1, 3, 4, 5]], axis=1), 1.0, **TOL)
    np.testing.assert_array_equal(got[2], 0.0)
    np.testing.assert_allclose(normalize(np.array([3.0, 4.0])), [0.6, 0.8], **TOL)


@pytest.mark.parametrize("modes", ["median", ["mean", "sum"], ("cls", "MEAN")])
def test_unknown_mode_is_named(modes) -> None:
    bad = next(mode for mode in ([modes] if isinstance(modes, str) else modes) if mode not in POOLING_MODES)
    with pytest.raises(ValueError, match=repr(bad)):
        pool(_embeddings(seed=8), _mask(LENGTHS, "right"), modes)


def test_no_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="no pooling mode"):
        pool(_embeddings(seed=9), _mask(LENGTHS, "right"), [])


@pytest.mark.parametrize(
    ("embeddings_shape", "mask_shape"),
    [((6, 7, 5), (6, 6)), ((6, 7, 5), (5, 7)), ((6, 7, 5), (6, 7, 5)), ((7, 5), (7,)), ((6, 7, 5), (42,))],
)
def test_mismatched_shapes_are_errors(embeddings_shape, mask_shape) -> None:
    with pytest.raises(ValueError, match="attention_mask"):
        pool(np.zeros(embeddings_shape, dtype=np.float32), np.ones(mask_shape, dtype=np.int64), "mean")
