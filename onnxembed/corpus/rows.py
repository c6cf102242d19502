"""Which rows of a chunk can be embedded, and embedding the rest so that no one row can stop the job.

A row is bad when it could not be read (inputs.py), its id cannot be stored or is empty, its text is not a
string Unicode can encode (a lone surrogate from a JSON escape), the tokenizer or model refuses it, or its
embedding is not finite. Bad rows get a null embedding and say why; good rows are encoded together in one
call, so a bad row never changes its neighbours' vectors (int8 graphs depend on batch composition).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxembed.kernels.quantization import quantize_embeddings

VALUE_TYPES = {"float32": "float32", "binary": "int8", "ubinary": "uint8"}
_INT64 = 1 << 63


def _surrogate(text: str) -> int | None:
    """Where ``text`` has a lone surrogate (which no tokenizer and no Parquet string can take), else None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as failure:
        return failure.start
    return None


def text_error(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"text is {'null' if text is None else type(text).__name__}"
    at = _surrogate(text)
    return None if at is None else f"text has a lone surrogate (invalid Unicode) at character {at}"


class IdCheck:
    """Ids must be non-empty strings or 64-bit ints, all of one kind in a job: an output column holds one type.

    The first good id sets the kind; inputs are read in the same order on every run, so a rerun agrees."""

    def __init__(self) -> None:
        self.kind: type | None = None

    def error(self, row_id: Any) -> str | None:
        invalid = _invalid_id(row_id)
        if invalid:
            return invalid
        if self.kind is None:
            self.kind = type(row_id)
        elif type(row_id) is not self.kind:
            return f"id is {type(row_id).__name__}; this job's ids are {self.kind.__name__}"
        return None

    def storable(self, row_id: Any) -> bool:
        """Whether an id can go in the output's id column beside the job's others (checked, not recorded)."""
        return self.kind is not None and type(row_id) is self.kind and _invalid_id(row_id) is None


def _invalid_id(row_id: Any) -> str | None:
    if row_id is None or row_id == "":
        return "id is empty"
    if isinstance(row_id, bool) or not isinstance(row_id, (int, str)):
        return f"id is {type(row_id).__name__} ({str(row_id)[:40]}); ids are strings or integers"
    if isinstance(row_id, int) and not -_INT64 <= row_id < _INT64:
        return "id is an integer past 64 bits"
    if isinstance(row_id, str) and _surrogate(row_id) is not None:
        return "id has a lone surrogate (invalid Unicode)"
    return None


def chunk_errors(ids: list[Any], texts: list[Any], read_errors: list[str | None], check: IdCheck) -> list[str | None]:
    """Why each row cannot be embedded, or None where it can (read errors first, then the id, then the text)."""
    return [
        read_error or check.error(row_id) or text_error(text)
        for row_id, text, read_error in zip(ids, texts, read_errors, strict=True)
    ]


def storable_ids(ids: list[Any], errors: list[str | None], check: IdCheck) -> list[Any]:
    """The ids as written: a bad row keeps its id only where it is valid and of the job's kind (a row with
    an unreadable line may have any id, or one with invalid UTF-8 in it); else null."""
    return [
        row_id if error is None or check.storable(row_id) else None for row_id, error in zip(ids, errors, strict=True)
    ]


def _rejected(encoder: Any, texts: list[str], indices: list[int], batch_size: int | None) -> dict[int, str]:
    """Halves ``indices`` until each text the encoder raises on is alone: {index: the encoder's message}."""
    try:
        encoder.encode([texts[index] for index in indices], batch_size=batch_size)
        return {}
    except (MemoryError, RecursionError):
        raise
    except Exception as failure:
        if len(indices) == 1:
            return {indices[0]: f"rejected by the encoder: {type(failure).__name__}: {failure}"[:300]}
    middle = len(indices) // 2
    return {
        **_rejected(encoder, texts, indices[:middle], batch_size),
        **_rejected(encoder, texts, indices[middle:], batch_size),
    }


def embed_rows(
    encoder: Any, texts: list[Any], errors: list[str | None], batch_size: int | None, precision: str
) -> np.ndarray:
    """(n, width) embeddings of the good rows, zero rows for bad ones; fills in ``errors`` for rows the encoder
    refuses or whose embedding is NaN/inf. If every row of a chunk fails alone, the fault is the encoder's,
    not the rows': the error is raised rather than blamed on the rows."""
    good = [index for index, error in enumerate(errors) if error is None]
    width = encoder.dim if precision == "float32" else -(-encoder.dim // 8)
    embeddings = np.zeros((len(texts), width), dtype=VALUE_TYPES[precision])
    if not good:
        return embeddings
    try:
        vectors = encoder.encode([texts[index] for index in good], batch_size=batch_size)
    except (MemoryError, RecursionError):
        raise
    except Exception:
        rejected = _rejected(encoder, texts, good, batch_size)
        if len(rejected) == len(good):
            raise
        for index, message in rejected.items():
            errors[index] = message
        good = [index for index in good if index not in rejected]
        vectors = encoder.encode([texts[index] for index in good], batch_size=batch_size)
    finite = np.isfinite(vectors).all(axis=1)
    for index in np.asarray(good)[~finite]:
        errors[int(index)] = "embedding is not finite (NaN or inf)"
    kept = np.asarray(good)[finite]
    vectors = vectors[finite]
    if len(kept):
        embeddings[kept] = vectors if precision == "float32" else quantize_embeddings(vectors, precision)  # type: ignore[arg-type]
    return embeddings
