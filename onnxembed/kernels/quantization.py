"""Quantization of embeddings to int8, uint8 and packed bits, in numpy.

In scope: sentence-transformers' ``quantize_embeddings`` (``sentence_transformers/util/quantization.py``),
with identical output arrays wherever it returns one: float32 as is, per-dimension scalar quantization
to 256 buckets (int8, uint8) and sign bits packed eight to a byte (binary, ubinary). Its arithmetic is
kept as it is, including the float dtype of the intermediate steps (float32 embeddings and ranges give
float32 steps, float64 ranges give float64), its ``floor`` and its clipping; so the maximum of a range
can land in bucket 254 rather than 255, as it does there. On top of it: a 1-D vector, NaN, non-finite
or inverted ranges, mismatched shapes and 8-bit inputs are refused with an error saying what is
allowed, zero rows give a zero-row result, and far-out values clip without an overflow warning.
Not in scope: search over quantized embeddings (faiss, usearch), rescoring, and torch tensors
(anything ``np.asarray`` accepts is converted; pass ``tensor.cpu().numpy()``).
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from onnxembed.errors import ArgumentTypeError, InvalidArgumentError

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# sentence-transformers warns when it computes int8/uint8 ranges from fewer embeddings than this.
_FEW_EMBEDDINGS = 100
# Buckets span [0, 255]; int8 is the same buckets shifted down by 128.
_TOP_BUCKET = 255
_INT8_SHIFT = 128


def quantize_embeddings(
    embeddings: npt.ArrayLike,
    precision: Precision,
    ranges: npt.ArrayLike | None = None,
    calibration_embeddings: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Quantize (n, dim) float embeddings to ``precision``, as sentence-transformers does.

    - ``float32``: (n, dim) float32, a copy.
    - ``uint8``: (n, dim) uint8 buckets ``clip(floor((x - min) / ((max - min) / 255)), 0, 255)`` per
      dimension; ``int8``: (n, dim) int8, the same buckets minus 128. Values outside [min, max] clip to
      the end buckets. A dimension with min == max gets a step of 1 (sentence-transformers' guard), so
      values at that min go to the bottom bucket (0, or -128 for int8) with no division by zero.
    - ``ubinary``: (n, ceil(dim / 8)) uint8, ``np.packbits(x > 0, axis=-1)`` (big-endian bit order,
      the last byte zero-padded); ``binary``: the same bytes minus 128, as int8.

    ``ranges`` is (2, dim): row 0 the per-dimension minimum, row 1 the maximum. Without it the ranges
    are the per-dimension min and max of ``calibration_embeddings`` (m, dim), or else of ``embeddings``
    themselves (logged as a warning below 100 rows, as sentence-transformers does). Both are used only
    by int8 and uint8, and ``ranges`` wins when both are given. Embeddings and ranges may be any float
    dtype, or integers wider than 8 bits (taken as float64); the arithmetic runs in the dtype numpy promotes
    them to.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InvalidArgumentError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    matrix = _as_real_array(embeddings, "embeddings")
    if matrix.ndim != 2:
        raise InvalidArgumentError(
            f"embeddings must be 2-D (n, dim); got shape {matrix.shape}. For a single vector pass embeddings[None, :]"
        )
    _reject_nan(matrix, "embeddings")

    if precision == "float32":
        return matrix.astype(np.float32)
    if precision in ("binary", "ubinary"):
        # packbits along the last axis already gives (n, ceil(dim / 8)), zero rows included;
        # sentence-transformers' extra reshape(n, -1) fails on zero rows and changes nothing otherwise.
        packed = np.packbits(matrix > 0, axis=-1)
        if precision == "ubinary":
            return packed
        # Subtract in int16 so that the shift does not rely on uint8 wrap-around before the cast.
        return (packed.astype(np.int16) - _INT8_SHIFT).astype(np.int8)

    bounds = _resolve_ranges(matrix, precision, ranges, calibration_embeddings)
    starts = bounds[0, :]
    # Overflow here means the range is wider than the dtype can hold; raise below rather than warn.
    with np.errstate(over="ignore"):
        steps = (bounds[1, :] - bounds[0, :]) / _TOP_BUCKET
    if not np.isfinite(steps).all():
        raise InvalidArgumentError(f"ranges too wide for {steps.dtype}: max - min overflows; got {bounds.tolist()}")
    # sentence-transformers' guard against min == max: a step of 1 leaves values at the min in bucket 0.
    # Kept as its exact expression: a Python 1 takes the dtype of `steps`.
    steps = np.where(steps == 0, 1, steps)
    # Values far outside the range may overflow to +-inf here; the clip sends them to the end buckets,
    # so the overflow warning would only be noise. floor, not round: that is sentence-transformers'.
    with np.errstate(over="ignore"):
        buckets = np.clip(np.floor((matrix - starts) / steps), 0, _TOP_BUCKET)
    if precision == "uint8":
        return buckets.astype(np.uint8)
    return (buckets - _INT8_SHIFT).astype(np.int8)


def _as_real_array(value: npt.ArrayLike, name: str) -> np.ndarray:
    """np.asarray(value), refusing dtypes sentence-transformers' arithmetic does not handle."""
    array = np.asarray(value)
    kind, size = array.dtype.kind, array.dtype.itemsize
    # int8/uint8 inputs are already quantized, and 8-bit max - min wraps around; bool, complex and
    # object arrays have no per-dimension ranges to speak of.
    if kind not in "fiu" or (kind in "iu" and size == 1):
        raise ArgumentTypeError(
            f"{name} must be a float array (or integers wider than 8 bits); got dtype {array.dtype}"
            + (": int8/uint8 embeddings are already quantized" if kind in "iu" and size == 1 else "")
        )
    # integers as float64: max - min and x - min in int16/int32 wrap around (sentence-transformers' do)
    return array.astype(np.float64) if kind in "iu" else array


def _reject_nan(array: np.ndarray, name: str) -> None:
    # NaN has no bucket and no sign: sentence-transformers would turn it into an arbitrary byte.
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise InvalidArgumentError(f"{name} contains NaN at (row, column) {np.argwhere(np.isnan(array))[:5].tolist()}")


def _resolve_ranges(
    embeddings: np.ndarray,
    precision: str,
    ranges: npt.ArrayLike | None,
    calibration_embeddings: npt.ArrayLike | None,
) -> np.ndarray:
    """The (2, dim) min and max rows: ``ranges``, else from calibration_embeddings, else from embeddings."""
    dim = embeddings.shape[1]
    calibration = None
    if calibration_embeddings is not None:
        # Checked even when `ranges` wins: a calibration set of another dim is a mistake either way.
        calibration = _as_real_array(calibration_embeddings, "calibration_embeddings")
        if calibration.ndim != 2 or calibration.shape[1] != dim:
            raise InvalidArgumentError(
                f"calibration_embeddings must be 2-D (m, {dim}), the dim of embeddings; got shape {calibration.shape}"
            )
        _reject_nan(calibration, "calibration_embeddings")

    if ranges is not None:
        bounds, source = _as_real_array(ranges, "ranges"), "ranges"
        if bounds.shape != (2, dim):
            raise InvalidArgumentError(
                f"ranges must be (2, {dim}): row 0 the per-dimension minimum, row 1 the maximum; "
                f"got shape {bounds.shape}"
            )
        _reject_nan(bounds, "ranges")
    else:
        rows, source = (
            (calibration, "calibration_embeddings") if calibration is not None else (embeddings, "embeddings")
        )
        if rows.shape[0] == 0:
            raise InvalidArgumentError(
                f"cannot compute {precision} ranges from 0 {source}; pass ranges or calibration_embeddings"
            )
        if calibration is None and rows.shape[0] < _FEW_EMBEDDINGS:
            logger.warning(
                "computing %s ranges from only %d embeddings; ranges or calibration_embeddings from more "
                "embeddings give steadier buckets",
                precision,
                rows.shape[0],
            )
        bounds = np.vstack((np.min(rows, axis=0), np.max(rows, axis=0)))

    if not np.isfinite(bounds).all():
        raise InvalidArgumentError(f"{precision} ranges must be finite; the ones from {source} contain +-inf")
    inverted = np.flatnonzero(bounds[0] > bounds[1])
    if inverted.size:
        raise InvalidArgumentError(
            f"ranges row 0 is the minimum and row 1 the maximum; min > max in dimensions {inverted[:5].tolist()}"
        )
    return bounds
