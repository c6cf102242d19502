"""The local path of ``onnxembed embed-corpus``: one process, one Encoder, bounded memory, restartable.

In scope: walking the input files chunk by chunk (``chunk_rows`` rows at a time, so memory holds one
chunk), encoding each chunk, writing it to its own part, skipping parts a previous run finished, and
reporting bad rows. Not in scope: reading formats (inputs.py), the part layout (parts.py), Ray (ray.py).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onnxembed._checks import positive_int
from onnxembed.corpus.inputs import CorpusError, id_column_of, list_inputs, read_chunks
from onnxembed.corpus.parts import (
    VALUE_TYPES,
    check_job,
    collect_errors,
    embed_rows,
    part_name,
    part_table,
    row_errors,
    write_part,
)
from onnxembed.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
CorpusPrecision = Literal["float32", "binary", "ubinary"]


@dataclass(frozen=True)
class CorpusResult:
    """What a job did: rows embedded now, rows found finished from an earlier run, and the bad rows."""

    rows_embedded: int
    rows_reused: int
    errors: list[dict[str, Any]] = field(default_factory=list)


def check_options(on_error: str, precision: str) -> None:
    if on_error not in ("fail", "skip"):
        raise InvalidArgumentError(f"on_error {on_error!r} is not supported; choose 'fail' or 'skip'")
    if precision not in VALUE_TYPES:
        raise InvalidArgumentError(f"precision {precision!r} is not supported here; choose from {tuple(VALUE_TYPES)}")


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("embedding a corpus needs pyarrow: pip install 'onnxembed[corpus]'") from None


def bad_row_error(row_id: Any, error: str) -> CorpusError:
    return CorpusError(f"row id {row_id!r}: {error} (on_error='skip', --on-error skip, lists bad rows and goes on)")


def embed_corpus(
    input_path: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    on_error: OnError = "fail",
    batch_size: int | None = None,
    precision: CorpusPrecision = "float32",
    chunk_rows: int = 8192,
    provider: str = "auto",
    threads: int | None = None,
    show_progress_bar: bool = False,
) -> CorpusResult:
    """Embed every row of INPUT into Parquet parts in OUTPUT (one per ``chunk_rows`` rows of each file).

    ``id_column`` None takes "id" where a file has it, else the global row number. A bad row (null or
    non-string text) raises :class:`CorpusError` naming its id with ``on_error="fail"``; with "skip" it is
    written with a null embedding and its error, and listed in OUTPUT/_errors.jsonl. Running again with
    the same OUTPUT skips finished parts.
    """
    from tqdm.auto import tqdm

    from onnxembed.runtime import Encoder

    require_pyarrow()
    check_options(on_error, precision)
    chunk_rows = positive_int(chunk_rows, "chunk_rows")
    output = Path(output)
    files = list_inputs(input_path)
    id_columns = [id_column_of(file, id_column) for file in files]
    settings = {"runner": "local", "chunk_rows": chunk_rows, "text_column": text_column, "id_column": id_column}
    check_job(output, {**settings, "precision": precision, "inputs": [str(file.path) for file in files]})
    encoder = Encoder(model, provider=provider, threads=threads)
    embedded = reused = 0
    total = sum(file.rows for file in files)
    with tqdm(total=total, desc="Embedding", unit="text", disable=not show_progress_bar, file=sys.stderr) as progress:
        for file, file_id_column in zip(files, id_columns, strict=True):
            for chunk_index, (ids, texts) in enumerate(read_chunks(file, text_column, file_id_column, chunk_rows)):
                path = output / part_name(file.index, chunk_index)
                if path.exists():
                    reused += len(ids)
                else:
                    errors = row_errors(texts)
                    first_bad = next((index for index, error in enumerate(errors) if error is not None), None)
                    if first_bad is not None and on_error == "fail":
                        raise bad_row_error(ids[first_bad], errors[first_bad] or "")
                    embeddings = embed_rows(encoder, texts, errors, batch_size, precision)
                    valid = np.array([error is None for error in errors], dtype=bool)
                    write_part(path, part_table(ids, embeddings, valid, errors, precision))
                    embedded += len(ids)
                progress.update(len(ids))
    bad_rows = collect_errors(output)
    if bad_rows:
        logger.warning("%d bad rows skipped (listed in %s)", len(bad_rows), output / "_errors.jsonl")
    return CorpusResult(embedded, reused, bad_rows)
