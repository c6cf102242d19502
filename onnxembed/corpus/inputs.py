"""Reading a corpus: Parquet, JSONL or text files (a file, or a folder of them) as chunks of (ids, texts).

In scope: finding the input files and their formats, counting their rows (for global row numbers and the
progress bar), and reading fixed-size chunks in file order, so a chunk's rows are the same on every run.
Not in scope: checking the texts (a bad row is reported by the caller, with its id) and encoding.
Text files hold one text per line (empty lines too, as ``onnxembed encode`` reads them); their id is the
global row number. Parquet and JSONL files give the id column when they have it, else the row number too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from onnxembed.errors import InvalidArgumentError

Format = Literal["parquet", "jsonl", "text"]
SUFFIXES: dict[str, Format] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".txt": "text",
    ".text": "text",
}
DEFAULT_ID_COLUMN = "id"


class CorpusError(InvalidArgumentError):
    """The input or output of a corpus job is not usable as given."""


@dataclass(frozen=True)
class InputFile:
    """One input file: its position among the inputs (names its output parts) and its first global row."""

    path: Path
    format: Format
    index: int
    first_row: int
    rows: int


def list_inputs(input_path: str | Path) -> list[InputFile]:
    """The input files in name order (a folder is searched recursively; names starting with . or _ skipped)."""
    root = Path(input_path)
    if root.is_dir():
        paths = sorted(
            path
            for path in root.rglob("*")
            if path.is_file()
            and path.suffix.lower() in SUFFIXES
            and not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)
        )
        if not paths:
            raise CorpusError(f"{root} holds no input files; expected names ending in {', '.join(SUFFIXES)}")
    elif root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise CorpusError(f"{root}: unknown input format {root.suffix!r}; expected one of {', '.join(SUFFIXES)}")
        paths = [root]
    else:
        raise CorpusError(f"input {root} does not exist")
    files = []
    first_row = 0
    for index, path in enumerate(paths):
        file_format = SUFFIXES[path.suffix.lower()]
        rows = count_rows(path, file_format)
        files.append(InputFile(path, file_format, index, first_row, rows))
        first_row += rows
    return files


def count_rows(path: Path, file_format: Format) -> int:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as stream:
        if file_format == "text":
            return sum(1 for _ in stream)
        return sum(1 for line in stream if line.strip())


def id_column_of(file: InputFile, id_column: str | None) -> str | None:
    """The id column this file gives: ``id_column`` (an error if missing), else "id" if present, else None."""
    if file.format == "text":
        if id_column is not None:
            raise CorpusError(f"{file.path}: text files have no columns; --id-column {id_column!r} needs Parquet/JSONL")
        return None
    columns = _columns(file)
    if id_column is not None:
        if id_column not in columns:
            raise CorpusError(f"{file.path} has no id column {id_column!r}; columns: {', '.join(columns)}")
        return id_column
    return DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in columns else None


def _columns(file: InputFile) -> list[str]:
    if file.format == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(file.path).schema_arrow.names)
    with open(file.path, "rb") as stream:
        for line in stream:
            if line.strip():
                record = json.loads(line)
                return list(record) if isinstance(record, dict) else []
    return []


def read_chunks(
    file: InputFile, text_column: str, id_column: str | None, chunk_rows: int
) -> Iterator[tuple[list[Any], list[Any]]]:
    """Yields (ids, texts) of ``chunk_rows`` rows (the last chunk fewer); texts as read, possibly not str.

    ``id_column`` is the column :func:`id_column_of` chose, or None for global row numbers.
    """
    if file.format == "parquet":
        rows = _parquet_rows(file, text_column, id_column, chunk_rows)
    elif file.format == "jsonl":
        rows = _jsonl_rows(file, text_column, id_column)
    else:
        rows = _text_rows(file)
    ids: list[Any] = []
    texts: list[Any] = []
    for row_id, text in rows:
        ids.append(row_id)
        texts.append(text)
        if len(ids) == chunk_rows:
            yield ids, texts
            ids, texts = [], []
    if ids:
        yield ids, texts


def _parquet_rows(file: InputFile, text_column: str, id_column: str | None, chunk_rows: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file.path)
    if text_column not in parquet.schema_arrow.names:
        raise CorpusError(
            f"{file.path} has no text column {text_column!r}; columns: {', '.join(parquet.schema_arrow.names)}"
        )
    columns = [text_column] if id_column is None else [text_column, id_column]
    row = file.first_row
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        texts = batch.column(text_column).to_pylist()
        ids = range(row, row + len(texts)) if id_column is None else batch.column(id_column).to_pylist()
        yield from zip(ids, texts, strict=True)
        row += len(texts)


def _jsonl_rows(file: InputFile, text_column: str, id_column: str | None) -> Iterator[Any]:
    row = file.first_row
    with open(file.path, "rb") as stream:
        for line_number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"{file.path}:{line_number}: not JSON ({error})") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{file.path}:{line_number}: a JSON object per line expected")
            yield (row if id_column is None else record.get(id_column)), record.get(text_column)
            row += 1


def _text_rows(file: InputFile) -> Iterator[Any]:
    with open(file.path, "rb") as stream:
        for row, line in enumerate(stream, file.first_row):
            yield row, line.decode("utf-8").rstrip("\r\n")
