"""Reading a corpus: Parquet, JSONL or text files (a file, or a folder of them) as chunks of rows.

In scope: finding the input files and their formats, counting their rows and fingerprinting their bytes
(one pass for text and JSONL), and reading fixed-size chunks in file order, so a chunk's rows are the same
on every run. A line that cannot be read (invalid UTF-8, not JSON, not an object) becomes a row with a read
error and its line number, so the caller can skip or refuse it like any other bad row. Not in scope:
checking ids and texts (rows.py) and encoding.
Text files hold one text per line (empty lines too, as ``onnxembed encode`` reads them); their id is the
global row number. Parquet and JSONL files give the id column when they have it, else the row number too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
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
UNNUMBERED_ID = (
    f"the row has an {DEFAULT_ID_COLUMN!r} but the file's first row has none, so its rows are numbered: give every "
    f"row an id, or pass --id-column {DEFAULT_ID_COLUMN}"
)
_BLOCK = 1 << 20


class CorpusError(InvalidArgumentError):
    """The input or output of a corpus job is not usable as given."""


@dataclass(frozen=True)
class InputFile:
    """One input file: its position among the inputs (names its output parts), its name relative to INPUT
    (recorded in _job.json, so a moved INPUT still matches), first global row, rows, size and content hash."""

    path: Path
    format: Format
    index: int
    first_row: int
    rows: int
    name: str = ""
    size: int = 0
    digest: str = ""


@dataclass
class Chunk:
    """``chunk_rows`` rows of a file: ids and texts as read, each row's line (1-based; the row's number in
    a Parquet file) and why it could not be read (None where it could)."""

    ids: list[Any]
    texts: list[Any]
    lines: list[int]
    read_errors: list[str | None]


def input_paths(input_path: str | Path) -> list[Path]:
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
        return paths
    if root.is_file():
        if root.suffix.lower() not in SUFFIXES:
            raise CorpusError(f"{root}: unknown input format {root.suffix!r}; expected one of {', '.join(SUFFIXES)}")
        return [root]
    raise CorpusError(f"input {root} does not exist")


def list_inputs(input_path: str | Path) -> list[InputFile]:
    """The input files, each counted and hashed in full (blake2b of every byte: an edit anywhere is seen)."""
    root = Path(input_path)
    files = []
    first_row = 0
    for index, path in enumerate(input_paths(root)):
        file_format = SUFFIXES[path.suffix.lower()]
        rows, size, digest = scan(path, file_format)
        name = path.relative_to(root).as_posix() if root.is_dir() else path.name
        files.append(InputFile(path, file_format, index, first_row, rows, name, size, digest))
        first_row += rows
    return files


def scan(path: Path, file_format: Format) -> tuple[int, int, str]:
    """(rows, bytes, blake2b hex) of a file. Text and JSONL rows are counted in the pass that hashes them."""
    digest = hashlib.blake2b(digest_size=16)
    size = rows = 0
    tail = b""  # a line cut by a block's end, carried to the next block
    with open(path, "rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
            first = size == 0
            size += len(block)
            if file_format == "text":
                rows += block.count(b"\n")
            elif file_format == "jsonl":
                # counted as _jsonl_rows reads: a first line that is only a byte order mark is blank
                lines = ((tail + block).removeprefix(_BOM) if first else tail + block).split(b"\n")
                tail = lines.pop()
                rows += sum(1 for line in lines if line.strip())
            tail = block[-1:] if file_format == "text" else tail
    if file_format == "text":
        rows += 1 if tail and tail != b"\n" else 0  # a last line without its newline
    elif file_format == "jsonl":
        rows += 1 if tail.strip() else 0
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowException, OSError) as error:  # pyarrow's messages do not name the file
            raise CorpusError(f"{path} is not a readable Parquet file: {error}") from error
    return rows, size, f"blake2b:{digest.hexdigest()}"


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
        for line in _without_bom(stream):
            if line.strip():
                record, _ = _parse_json(line)
                return list(record) if isinstance(record, dict) else []
    return []


_BOM = b"\xef\xbb\xbf"


def _without_bom(stream: Iterable[bytes]) -> Iterator[bytes]:
    """A file's lines, the first without a UTF-8 byte order mark (some editors write one; JSON has none)."""
    for number, line in enumerate(stream):
        yield line.removeprefix(_BOM) if number == 0 else line


def read_chunks(file: InputFile, text_column: str, id_column: str | None, chunk_rows: int) -> Iterator[Chunk]:
    """Chunks of ``chunk_rows`` rows (the last one fewer); texts as read, possibly not str.

    ``id_column`` is the column :func:`id_column_of` chose, or None for global row numbers.
    """
    if file.format == "parquet":
        rows = _parquet_rows(file, text_column, id_column, chunk_rows)
    elif file.format == "jsonl":
        rows = _jsonl_rows(file, text_column, id_column)
    else:
        rows = _text_rows(file)
    chunk = Chunk([], [], [], [])
    for row_id, text, line, error in rows:
        chunk.ids.append(row_id)
        chunk.texts.append(text)
        chunk.lines.append(line)
        chunk.read_errors.append(error)
        if len(chunk.ids) == chunk_rows:
            yield chunk
            chunk = Chunk([], [], [], [])
    if chunk.ids:
        yield chunk


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
        for offset, (row_id, text) in enumerate(zip(ids, texts, strict=True)):
            yield row_id, text, row - file.first_row + offset + 1, None
        row += len(texts)


def _parse_json(line: bytes) -> tuple[Any, str | None]:
    """(record, why it cannot be read). Invalid UTF-8 is still parsed (the bad bytes kept as lone surrogates,
    which the text check then refuses), so the row can be reported by its id."""
    error = None
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as failure:
        error = f"invalid UTF-8 at byte {failure.start}"
        decoded = line.decode("utf-8", errors="surrogateescape")
    try:
        return json.loads(decoded), error
    except json.JSONDecodeError as failure:  # its own "line 1 column N" would contradict the file's line
        return None, error or f"not JSON ({failure.msg} at character {failure.pos})"
    except ValueError as failure:  # an integer past Python's 4,300-digit limit
        return None, error or f"not JSON ({failure})"
    except RecursionError:
        return None, error or "not JSON (nested too deeply)"


def _jsonl_rows(file: InputFile, text_column: str, id_column: str | None) -> Iterator[Any]:
    row = file.first_row
    first_keys: list[str] | None = None
    has_text = False
    with open(file.path, "rb") as stream:
        for line_number, line in enumerate(_without_bom(stream), 1):
            if not line.strip():
                continue
            record, error = _parse_json(line)
            if isinstance(record, dict):
                first_keys = list(record) if first_keys is None else first_keys
                has_text = has_text or text_column in record
            if not isinstance(record, dict):
                row_id = row if id_column is None else None
                yield row_id, None, line_number, error or "not a JSON object"
            elif id_column is None and DEFAULT_ID_COLUMN in record:
                # the file's first row had no id, so rows are numbered: this row's own id would be lost unseen
                yield row, None, line_number, error or UNNUMBERED_ID
            else:
                yield (row if id_column is None else record.get(id_column)), record.get(text_column), line_number, error
            row += 1
    # A row without the text column is a bad row (JSONL rows may leave fields out); a file where no row has it
    # is a wrong --text-column, which --on-error skip would otherwise turn into a job of bad rows only.
    if first_keys is not None and not has_text:
        raise CorpusError(
            f"{file.path}: no row has the text column {text_column!r}; its first row has: {', '.join(first_keys)}"
        )


def _text_rows(file: InputFile) -> Iterator[Any]:
    with open(file.path, "rb") as stream:
        for line_number, line in enumerate(_without_bom(stream), 1):
            try:
                yield file.first_row + line_number - 1, line.decode("utf-8").rstrip("\r\n"), line_number, None
            except UnicodeDecodeError as failure:
                yield file.first_row + line_number - 1, None, line_number, f"invalid UTF-8 at byte {failure.start}"
