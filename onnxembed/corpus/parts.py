"""The parts of a corpus job's OUTPUT: Parquet files written durably, checked on reuse, and the bad-row report.

Each part holds columns ``id``, ``embedding`` (fixed-size list: float32, or int8/uint8 packed bits for
binary/ubinary; null for a bad row) and ``error`` (null, or why the row has no embedding). A part is
written under a hidden name, fsynced, read back (its row count), renamed, and the folder fsynced: a part
that exists under its final name is complete, even after a power cut. Readers (pyarrow, Ray, DuckDB) skip
"_" and "." names, so ``pyarrow.parquet.read_table(OUTPUT)`` reads exactly the finished rows (and any
foreign Parquet file someone put there: ours are ``part-*``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.corpus.job import ERRORS_FILE, PART_FILE, PART_FOLDER, fsync_folder, temporary_path, write_atomically
from onnxembed.corpus.rows import VALUE_TYPES

logger = logging.getLogger(__name__)

# Parquet key-value metadata of a part: the input line of each bad row, in row order, for the report.
LINES_KEY = b"onnxembed.bad_row_lines"


def part_name(file_index: int, chunk_index: int | None = None) -> str:
    """``part-00003-000012.parquet`` (file 3, chunk 12), or ``part-00003`` (a folder of a file's parts)."""
    return f"part-{file_index:05d}" if chunk_index is None else f"part-{file_index:05d}-{chunk_index:06d}.parquet"


def embedding_array(embeddings: np.ndarray, valid: np.ndarray, precision: str) -> Any:
    """(n, width) embeddings -> a FixedSizeListArray, null where ``valid`` (n,) bool is False."""
    import pyarrow as pa

    width = embeddings.shape[1]
    values = pa.array(np.ascontiguousarray(embeddings, dtype=VALUE_TYPES[precision]).reshape(-1))
    mask = None if bool(valid.all()) else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, width, mask=mask)


def part_table(
    ids: list[Any], embeddings: np.ndarray, errors: list[str | None], precision: str, lines: list[int]
) -> Any:
    """The part's table; ``lines`` (each row's input line) are kept for the bad rows only, as metadata."""
    import pyarrow as pa

    valid = np.array([error is None for error in errors], dtype=bool)
    table = pa.table(
        {
            "id": pa.array(ids),
            "embedding": embedding_array(embeddings, valid, precision),
            "error": pa.array(errors, type=pa.string()),
        }
    )
    bad_lines = [line for line, error in zip(lines, errors, strict=True) if error is not None]
    return table.replace_schema_metadata({LINES_KEY: json.dumps(bad_lines).encode()}) if bad_lines else table


def commit(partial: Path, final: Path) -> None:
    """The step after which a part counts as done: the rename, made durable."""
    partial.replace(final)
    fsync_folder(final.parent)


def write_part(path: Path, table: Any) -> None:
    """Write a part durably: hidden name, fsync, row count read back, rename, folder fsync."""
    import pyarrow.parquet as pq

    partial = temporary_path(path)
    try:
        pq.write_table(table, partial)
        with open(partial, "rb") as stream:
            os.fsync(stream.fileno())
        written = pq.read_metadata(partial).num_rows
        if written != table.num_rows:
            raise OSError(f"{partial}: {written} rows on disk, {table.num_rows} written")
        commit(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def type_null_ids(output: Path, kind: type | None) -> None:
    """Give the job's id type to the id columns written before any good id set it. A part whose ids are all
    bad (skipped rows) has an id column of Arrow type null; beside string or int64 columns in other parts,
    ``read_table(OUTPUT)`` then fails to cast, so such parts are rewritten with ``kind``'s type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind is None:  # no good id in the whole job: every part's column is null, and they agree
        return
    id_type = pa.string() if kind is str else pa.int64()
    for part in our_parts(output):
        if pa.types.is_null(pq.read_schema(part).field("id").type):
            table = pq.read_table(part)
            typed = table.set_column(0, pa.field("id", id_type), table["id"].cast(id_type))
            write_part(part, typed.replace_schema_metadata(table.schema.metadata))


def part_is_done(path: Path, rows: int) -> bool:
    """Whether a part from an earlier run is complete: readable, with the chunk's row count. A part that is
    not (written by an older onnxembed that did not fsync, then a power cut) is removed, to be redone."""
    import pyarrow.parquet as pq

    if not path.exists():
        return False
    try:
        if pq.read_metadata(path).num_rows == rows:
            return True
    except (OSError, ValueError):
        pass
    logger.warning("%s is incomplete or unreadable; embedding its rows again", path)
    path.unlink()
    return False


def our_parts(output: Path) -> list[Path]:
    """Our Parquet files in OUTPUT: local parts, and the files inside Ray's part folders."""
    parts: list[Path] = []
    # by number, not by name: past 99,999 files "part-100000" would sort before "part-10001"
    for path in sorted(output.iterdir(), key=lambda path: part_order(path.name)):
        if PART_FILE.fullmatch(path.name) and path.is_file():
            parts.append(path)
        elif PART_FOLDER.fullmatch(path.name) and path.is_dir():
            parts.extend(sorted(path.glob("*.parquet")))
    return parts


def part_order(name: str) -> tuple[tuple[int, ...], str]:
    """``part-00003-000012.parquet`` -> ((3, 12), ""); other names sort by themselves, after the parts."""
    match = re.fullmatch(r"part-(\d+)(?:-(\d+)\.parquet)?", name)
    if match is None:
        return (1 << 62,), name
    return tuple(int(number) for number in match.groups() if number is not None), ""


def _file_index(part: Path) -> int:
    """The input a part came from: ``part-FFFFF-...`` or a file inside ``part-FFFFF/``."""
    return int((part.name if PART_FILE.fullmatch(part.name) else part.parent.name).split("-")[1])


def bad_rows(part: str | Path, file_name: str, filesystem: Any = None) -> Iterable[dict[str, Any]]:
    """A part's bad rows as report records, with their input line where the part recorded it.
    ``filesystem``: a pyarrow filesystem that ``part`` is a path of (None: a local path)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(part, columns=["id", "error"], filesystem=filesystem)
    metadata = pq.read_schema(part, filesystem=filesystem).metadata or {}
    lines = json.loads(metadata.get(LINES_KEY, b"[]"))
    table = table.filter(pc.is_valid(table["error"]))
    for index, (row_id, error) in enumerate(zip(table["id"].to_pylist(), table["error"].to_pylist(), strict=True)):
        record = {"id": row_id, "file": file_name, "error": error}
        if index < len(lines):
            record["line"] = lines[index]
        yield record


def _duplicates(parts: list[tuple[str, str]], filesystem: Any) -> list[dict[str, Any]]:
    """Ids found more than once among the parts (the id column of every part is held at once)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = [pq.read_table(part, columns=["id"], filesystem=filesystem) for part, _ in parts]
    if not tables:
        return []
    ids = pa.concat_tables(tables, promote_options="permissive")
    counts = ids.group_by("id").aggregate([("id", "count")]).filter(pc.field("id_count") > 1)
    duplicated = counts["id"].to_pylist()
    if not duplicated:
        return []
    seen_in: dict[Any, list[str]] = {row_id: [] for row_id in duplicated}
    for (_, file_name), table in zip(parts, tables, strict=True):
        for row_id in table.filter(pc.is_in(table["id"], counts["id"]))["id"].unique().to_pylist():
            if file_name not in seen_in[row_id]:
                seen_in[row_id].append(file_name)
    return [
        {"id": row_id, "files": seen_in[row_id], "error": f"duplicate id: {count} rows"}
        for row_id, count in zip(duplicated, counts["id_count"].to_pylist(), strict=True)
    ]


def report_parts(
    parts: list[tuple[str, str]], filesystem: Any = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(bad rows, duplicate ids, the text of _errors.jsonl) over ``parts``, (path, input file name) pairs."""
    bad = [record for part, file_name in parts for record in bad_rows(part, file_name, filesystem)]
    duplicates = _duplicates(parts, filesystem)
    text = "".join(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in [*bad, *duplicates])
    return bad, duplicates, text


def collect_report(output: Path, file_names: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(bad rows, duplicate ids) over all our parts, also written to OUTPUT/_errors.jsonl, one JSON per line:
    ``{"id", "file", "line", "error"}`` per bad row, ``{"id", "files", "error": "duplicate id: N rows"}``."""
    parts = [(str(part), file_names[_file_index(part)]) for part in our_parts(output)]
    bad, duplicates, text = report_parts(parts)
    write_atomically(output / ERRORS_FILE, text)
    return bad, duplicates
