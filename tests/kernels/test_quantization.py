"""quantize_embeddings against sentence-transformers' own, on random and real-like embeddings, plus
hand-computed tiny arrays for the edges (clipping, zero ranges, bit packing) and every refused input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxembed.kernels.quantization import PRECISIONS, quantize_embeddings

# The sentence-transformers oracle needs the export extra; without it this module skips.
_st = pytest.importorskip("sentence_transformers")
st_quantize_embeddings = _st.quantize_embeddings


DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}
# dims 1, 7, 13 and 385 are not multiples of 8; 130 rows is above sentence-transformers' 100-row warning.
SHAPES = [(1, 1), (1, 8), (5, 13), (64, 384), (130, 7), (3, 385)]


def _random(seed: int, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _real_like(seed: int, n: int, dim: int = 384) -> np.ndarray:
    """Unit vectors around a shared direction, with a few outlier dimensions, as sentence embeddings are."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim) * np.where(rng.random(dim) < 0.02, 8.0, 1.0)
    vectors = common + rng.standard_normal((n, dim)) * 1.5
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _assert_same_as_st(got: np.ndarray, precision: str, embeddings: np.ndarray, **kwargs: object) -> None:
    expected = st_quantize_embeddings(embeddings, precision, **kwargs)
    assert got.dtype == DTYPES[precision] == expected.dtype
    np.testing.assert_array_equal(got, expected, strict=True)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_st_with_ranges_from_the_embeddings(precision: str, shape: tuple[int, int]) -> None:
    embeddings = _random(seed=shape[0] * 1000 + shape[1], shape=shape, scale=0.3)
    _assert_same_as_st(quantize_embeddings(embeddings, precision), precision, embeddings)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_st_with_calibration_embeddings(precision: str, shape: tuple[int, int]) -> None:
    embeddings = _random(seed=shape[1], shape=shape)
    # A narrower calibration set than the data: some values fall outside its range and clip.
    calibration = _random(seed=shape[1] + 1, shape=(50, shape[1]), scale=0.5)
    got = quantize_embeddings(embeddings, precision, calibration_embeddings=calibration)
    _assert_same_as_st(got, precision, embeddings, calibration_embeddings=calibration)


@pytest.mark.parametrize("ranges_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_st_with_ranges(precision: str, shape: tuple[int, int], ranges_dtype: type) -> None:
    embeddings = _random(seed=7, shape=shape)
    wide = _random(seed=8, shape=(2000, shape[1]))
    ranges = np.vstack((wide.min(axis=0), wide.max(axis=0))).astype(ranges_dtype)
    got = quantize_embeddings(embeddings, precision, ranges=ranges)
    _assert_same_as_st(got, precision, embeddings, ranges=ranges)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("source", ["embeddings", "calibration", "ranges"])
def test_matches_st_on_real_like_embeddings(precision: str, source: str) -> None:
    corpus, queries = _real_like(seed=1, n=1000), _real_like(seed=2, n=32)
    kwargs: dict[str, object] = {}
    if source == "calibration":
        kwargs["calibration_embeddings"] = corpus
    if source == "ranges":
        kwargs["ranges"] = np.vstack((corpus.min(axis=0), corpus.max(axis=0)))
    _assert_same_as_st(quantize_embeddings(queries, precision, **kwargs), precision, queries, **kwargs)


def test_float64_embeddings_keep_st_arithmetic() -> None:
    # The same data lands in bucket 254 in float32 (1 / (1/255) rounds down) and 255 in float64.
    embeddings = np.array([[1.0], [2.0]])
    assert quantize_embeddings(embeddings.astype(np.float32), "uint8").tolist() == [[0], [254]]
    assert quantize_embeddings(embeddings, "uint8").tolist() == [[0], [255]]
    _assert_same_as_st(quantize_embeddings(embeddings, "uint8"), "uint8", embeddings)


# Range [0, 255] makes each step exactly 1, so the buckets can be written down by hand.
STEP_ONE = np.array([[0.0, 0.0], [255.0, 255.0]], dtype=np.float32)


@pytest.mark.parametrize(
    ("precision", "expected"),
    [("uint8", [[0, 255], [10, 254], [0, 255]]), ("int8", [[-128, 127], [-118, 126], [-128, 127]])],
)
def test_values_outside_the_range_clip_and_values_inside_floor(precision: str, expected: list[list[int]]) -> None:
    embeddings = np.array([[-3.0, 300.0], [10.9, 254.99], [-np.inf, np.inf]], dtype=np.float32)
    got = quantize_embeddings(embeddings, precision, ranges=STEP_ONE)
    assert got.dtype == DTYPES[precision]
    assert got.tolist() == expected
    _assert_same_as_st(got, precision, embeddings, ranges=STEP_ONE)


def test_values_far_outside_a_narrow_range_clip_without_overflow_warning() -> None:
    # (3e38 - 0) / (1 / 255) overflows float32 to inf; the clip sends it to the top bucket.
    embeddings = np.array([[3e38], [-3e38], [0.5]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = quantize_embeddings(embeddings, "uint8", ranges=np.array([[0.0], [1.0]], dtype=np.float32))
    assert got[:, 0].tolist() == [255, 0, 127]


@pytest.mark.parametrize(("precision", "bottom", "top"), [("uint8", 0, 255), ("int8", -128, 127)])
def test_zero_range_dimension_gives_the_bottom_value(precision: str, bottom: int, top: int) -> None:
    embeddings = np.array([[0.5, 0.0], [0.5, 255.0], [0.5, 100.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid-value warning
        got = quantize_embeddings(embeddings, precision)
    assert got.tolist() == [[bottom, bottom], [bottom, top], [bottom, bottom + 100]]
    _assert_same_as_st(got, precision, embeddings)


def test_zero_range_dimension_steps_by_one_beyond_its_value_as_st() -> None:
    # sentence-transformers' step of 1 for min == max: values under min + 1 stay at the bottom.
    ranges = np.array([[0.5], [0.5]], dtype=np.float32)
    embeddings = np.array([[0.5], [-7.0], [1.4], [3.0], [1000.0]], dtype=np.float32)
    got = quantize_embeddings(embeddings, "uint8", ranges=ranges)
    assert got[:, 0].tolist() == [0, 0, 0, 2, 255]
    _assert_same_as_st(got, "uint8", embeddings, ranges=ranges)


def test_binary_packs_signs_big_endian_with_zero_padding() -> None:
    # Signs 1 0 0 1 0 1 1 0 | 1 (0 is not positive) -> bytes 0b10010110 = 150, 0b10000000 = 128.
    embeddings = np.array([[1.0, -1.0, 0.0, 2.0, -0.5, 3.0, 0.1, -2.0, 5.0]], dtype=np.float32)
    ubinary, binary = quantize_embeddings(embeddings, "ubinary"), quantize_embeddings(embeddings, "binary")
    assert (ubinary.dtype, ubinary.tolist()) == (np.uint8, [[150, 128]])
    assert (binary.dtype, binary.tolist()) == (np.int8, [[22, 0]])


@pytest.mark.parametrize(("precision", "width"), [("float32", 13), ("uint8", 13), ("binary", 2), ("ubinary", 2)])
def test_zero_rows_give_zero_rows(precision: str, width: int) -> None:
    got = quantize_embeddings(np.zeros((0, 13), np.float32), precision, ranges=np.ones((2, 13), np.float32))
    assert got.shape == (0, width) and got.dtype == DTYPES[precision]


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint16])
def test_wide_integers_quantize_as_their_float_values(dtype: type) -> None:
    """max - min and x - min in int16/int32 wrap around (sentence-transformers' arithmetic does): the buckets are
    those of the same values as floats."""
    info = np.iinfo(dtype)
    values = np.array([[info.min + 5], [info.min // 2 + info.max // 2], [info.max - 5]], dtype=dtype)
    for precision in ("uint8", "int8"):
        expected = st_quantize_embeddings(values.astype(np.float64), precision)
        np.testing.assert_array_equal(quantize_embeddings(values, precision), expected)
    calibration = np.array([[info.min + 10], [info.max - 10]], dtype=dtype)
    expected = st_quantize_embeddings(
        values.astype(np.float64), "uint8", calibration_embeddings=calibration.astype(np.float64)
    )
    np.testing.assert_array_equal(quantize_embeddings(values, "uint8", calibration_embeddings=calibration), expected)
    bottom, middle, top = quantize_embeddings(values, "uint8").ravel().tolist()  # spread, not wrapped
    assert bottom == 0 and 126 <= middle <= 128 and top >= 254


def test_float32_returns_a_copy() -> None:
    embeddings = _random(seed=3, shape=(2, 4))
    got = quantize_embeddings(embeddings, "float32")
    got[0, 0] = 99.0
    assert embeddings[0, 0] != 99.0


EMB = _random(seed=5, shape=(4, 6))
NAN_EMB = np.where(np.eye(4, 6) > 0, np.nan, EMB).astype(np.float32)


@pytest.mark.parametrize(
    ("precision", "kwargs", "error", "match"),
    [
        ("int4", {}, ValueError, r"'int4'.*'float32', 'int8', 'uint8', 'binary', 'ubinary'"),
        ("qint8", {}, ValueError, "unknown precision 'qint8'"),
        ("uint8", {"embeddings": EMB[0]}, ValueError, r"2-D \(n, dim\); got shape \(6,\)"),
        ("binary", {"embeddings": EMB[None]}, ValueError, r"2-D \(n, dim\); got shape \(1, 4, 6\)"),
        ("float32", {"embeddings": NAN_EMB}, ValueError, "embeddings contains NaN"),
        ("binary", {"embeddings": NAN_EMB}, ValueError, "embeddings contains NaN"),
        ("int8", {"embeddings": EMB.astype(np.int8)}, TypeError, "already quantized"),
        ("binary", {"embeddings": EMB > 0}, TypeError, "got dtype bool"),
        ("int8", {"ranges": np.ones(6)}, ValueError, r"ranges must be \(2, 6\).*got shape \(6,\)"),
        ("uint8", {"ranges": np.ones((2, 7))}, ValueError, r"ranges must be \(2, 6\)"),
        ("uint8", {"ranges": np.ones((3, 6))}, ValueError, r"ranges must be \(2, 6\)"),
        ("uint8", {"ranges": np.array([[0.0] * 6, [np.nan] * 6])}, ValueError, "ranges contains NaN"),
        ("uint8", {"ranges": np.array([[0.0] * 6, [np.inf] * 6])}, ValueError, "must be finite"),
        ("int8", {"ranges": np.array([[1.0] * 6, [0.0] * 6])}, ValueError, "min > max in dimensions"),
        ("int8", {"calibration_embeddings": EMB[:, :5]}, ValueError, r"\(m, 6\).*got shape \(4, 5\)"),
        ("int8", {"calibration_embeddings": EMB[0]}, ValueError, r"\(m, 6\).*got shape \(6,\)"),
        ("uint8", {"calibration_embeddings": NAN_EMB}, ValueError, "calibration_embeddings contains NaN"),
        ("uint8", {"calibration_embeddings": np.full((2, 6), np.inf)}, ValueError, "from calibration_embeddings"),
        ("uint8", {"embeddings": np.zeros((0, 6))}, ValueError, "from 0 embeddings"),
        ("uint8", {"calibration_embeddings": np.zeros((0, 6))}, ValueError, "from 0 calibration_embeddings"),
        ("uint8", {"ranges": np.array([[-3e38] * 6, [3e38] * 6], np.float32)}, ValueError, "too wide"),
    ],
)
def test_bad_input_says_what_is_allowed(precision: str, kwargs: dict, error: type[Exception], match: str) -> None:
    kwargs = dict(kwargs)  # the parameter dict is shared between runs: pop from a copy
    embeddings = kwargs.pop("embeddings", EMB)
    with pytest.raises(error, match=match):
        quantize_embeddings(embeddings, precision, **kwargs)
