"""Pooling and normalization of token embeddings, in numpy.

In scope: every pooling mode of sentence-transformers' ``Pooling`` module (cls, max, mean,
mean_sqrt_len_tokens, weightedmean, lasttoken, and concatenations of them), the prompt-exclusion
mask of ``include_prompt=False``, and L2 normalization as in its ``Normalize`` module.
Not in scope: anything that runs a model. Shapes follow the runtime: token_embeddings is
(batch, seq, dim) float32, attention_mask is (batch, seq) with 1 for real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from onnxembed.errors import InvalidArgumentError

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)

# sentence-transformers clamps token counts at 1e-9 and F.normalize floors norms at 1e-12.
_COUNT_EPS = np.float32(1e-9)
_NORM_EPS = np.float32(1e-12)


def exclude_prompt(attention_mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """Return a copy of attention_mask (batch, seq) with the prompt's tokens masked out.

    With right padding the prompt is the first ``prompt_length`` positions; with left padding
    it starts after each row's padding, as in sentence-transformers' Pooling.
    """
    mask = np.array(attention_mask, copy=True)
    first_real = mask.argmax(axis=1)
    positions = np.arange(mask.shape[1])[None, :]
    mask[positions < (first_real + prompt_length)[:, None]] = 0
    return mask


def pool(
    token_embeddings: np.ndarray,
    attention_mask: np.ndarray,
    modes: str | Sequence[str] = "mean",
) -> np.ndarray:
    """Pool (batch, seq, dim) token embeddings into (batch, len(modes) * dim) float32.

    Several modes are concatenated in the order given, as sentence-transformers does.
    """
    mode_list = [modes] if isinstance(modes, str) else list(modes)
    if not mode_list:
        raise InvalidArgumentError(f"no pooling mode given; choose from {POOLING_MODES}")
    for mode in mode_list:
        if mode not in POOLING_MODES:
            raise InvalidArgumentError(f"unknown pooling mode {mode!r}; choose from {POOLING_MODES}")
    if token_embeddings.ndim != 3 or attention_mask.shape != token_embeddings.shape[:2]:
        raise InvalidArgumentError(
            f"token_embeddings must be (batch, seq, dim) and attention_mask (batch, seq); "
            f"got {token_embeddings.shape} and {attention_mask.shape}"
        )
    embeddings = token_embeddings.astype(np.float32, copy=False)
    mask = attention_mask.astype(np.float32)
    pooled = [_pool_one(embeddings, mask, mode) for mode in mode_list]
    return pooled[0] if len(pooled) == 1 else np.concatenate(pooled, axis=1)


def _masked_sum(embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_s weights[b, s] * embeddings[b, s, :] as one batched matmul: (batch, dim)."""
    return np.matmul(weights[:, None, :], embeddings)[:, 0, :]


def _gather_rows(embeddings: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return embeddings[np.arange(embeddings.shape[0]), positions]


def _pool_one(embeddings: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        # The first real token: position 0 with right padding, after the padding with left.
        return _gather_rows(embeddings, mask.argmax(axis=1))
    if mode == "max":
        masked = np.where(mask[:, :, None] > 0, embeddings, np.float32(-np.inf))
        return masked.max(axis=1)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        counts = np.maximum(mask.sum(axis=1, keepdims=True), _COUNT_EPS)
        total = _masked_sum(embeddings, mask)
        return total / (counts if mode == "mean" else np.sqrt(counts))
    if mode == "weightedmean":
        weights = mask * np.arange(1, mask.shape[1] + 1, dtype=np.float32)[None, :]
        total = _masked_sum(embeddings, weights)
        return total / np.maximum(weights.sum(axis=1, keepdims=True), _COUNT_EPS)
    # lasttoken: the last real token of each row; a row with no real token gives zeros (position 0, masked).
    seq_len = mask.shape[1]
    flipped = mask[:, ::-1]
    from_end = flipped.argmax(axis=1)
    from_end = np.where(flipped.max(axis=1) == 0, seq_len - 1, from_end)
    last = _gather_rows(embeddings, seq_len - 1 - from_end)
    return last * _gather_rows(mask, seq_len - 1 - from_end)[:, None]


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalize the last axis, flooring norms at 1e-12 (torch.nn.functional.normalize), in the dtype of
    :func:`float_array`."""
    embeddings = float_array(embeddings)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, _NORM_EPS)


def float_array(values: object) -> np.ndarray:
    """``values`` as float32, or float64 where it is a float64 array: sentence-transformers keeps a float64
    tensor's dtype (values past float32's range would overflow) and makes Python numbers float32, as torch does."""
    array = np.asarray(values)
    if isinstance(values, np.ndarray) and array.dtype == np.float64:
        return array
    return array.astype(np.float32, copy=False)
