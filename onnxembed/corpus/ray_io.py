"""One input file's way through Ray on the embed-corpus path: read by the cluster, written as Parquet blocks,
checked and committed.

In scope: the file as a Ray Dataset (``read_parquet``, or a Datasource of one read task running
inputs.read_chunks and the local runner's row checks on a worker), the write task of each embedded block, the
checks before commit (bad rows, rows per part and per file) and the commit of a local folder (fsync, manifest,
rename). Not in scope: the actor pool and the job driver (ray.py), the part layout (parts.py), commits on object
stores (objectstore.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxembed.corpus import objectstore
from onnxembed.corpus.inputs import CorpusError, InputFile, read_chunks
from onnxembed.corpus.job import fsync_folder
from onnxembed.corpus.local import bad_row_error
from onnxembed.corpus.objectstore import Output
from onnxembed.corpus.parts import LINES_KEY, bad_rows
from onnxembed.corpus.rows import IdCheck, chunk_errors, storable_ids


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'onnxembed[ray]'") from None
    return ray


def file_dataset(
    file: InputFile, text_column: str, id_column: str | None, rows_per_block: int, ids_check: IdCheck, on_error: str
) -> Any:
    """A file as a Ray Dataset, read by the cluster: Parquet with an id column by ``read_parquet`` (columns id,
    text; ids and texts checked by the actors), anything else by one read task of :func:`_read_blocks`
    (columns id, text, error, line)."""
    ray = import_ray()
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    path = file.path.resolve()  # workers do not run in the driver's folder
    if file.format == "parquet":  # here, where the error is a plain one, not a worker's traceback
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_column not in columns:
            raise CorpusError(f"{file.path} has no text column {text_column!r}; columns: {', '.join(columns)}")
    if file.format == "parquet" and id_column is not None:
        check_parquet_id_kind(file.path, id_column, ids_check)
        ds = ray.data.read_parquet(str(path), columns=[id_column, text_column])
        ds = ds.rename_columns({id_column: "id", text_column: "text"}) if id_column != "id" else ds
        return ds.select_columns(["id", "text"])
    source = dataclasses.replace(file, path=path)
    arguments = (source, text_column, id_column, rows_per_block, ids_check.kind, on_error)

    class FileRows(Datasource):  # defined here: Ray is imported only inside functions
        def estimate_inmemory_data_size(self) -> int:
            return source.size

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Any = None, data_context: Any = None) -> Any:
            metadata = BlockMetadata(
                num_rows=source.rows, size_bytes=source.size, exec_stats=None, input_files=(str(path),)
            )
            return [ReadTask(lambda: _read_blocks(*arguments), metadata)]

    return ray.data.read_datasource(FileRows())


def _read_blocks(
    file: InputFile, text_column: str, id_column: str | None, rows: int, id_kind: type | None, on_error: str
) -> Iterator[Any]:
    """The read task: ``read_chunks`` and the row checks of the local runner, run on a worker, a block of
    ``rows`` rows at a time. ``id_kind``: the job's id kind from earlier files (None: this file's first id)."""
    import pyarrow as pa

    ids_check = IdCheck()
    ids_check.kind = id_kind
    for chunk in read_chunks(file, text_column, id_column, rows):
        errors = chunk_errors(chunk.ids, chunk.texts, chunk.read_errors, ids_check)
        texts = [text if error is None else None for text, error in zip(chunk.texts, errors, strict=True)]
        id_type = pa.string() if ids_check.kind is str else pa.int64() if ids_check.kind is int else None
        yield pa.table(
            {
                "id": pa.array(storable_ids(chunk.ids, errors, ids_check), id_type),
                "text": pa.array(texts, pa.string()),
                "error": pa.array(errors, pa.string()),
                "line": pa.array(chunk.lines, pa.int64()),
            }
        )
        if on_error == "fail" and any(error is not None for error in errors):
            return  # the check before commit names this row; reading on would embed rows never committed


def write_block(batch: Any, filesystem: Any, folder: str) -> Any:
    """Write one embedded block as one Parquet file in the part folder, named by its first input line (a
    retried task rewrites the same file) or at random; return its name and rows. The driver commits exactly
    the files returned, so a file from a failed attempt is never counted."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    written = pa.table({"name": pa.array([], pa.string()), "rows": pa.array([], pa.int64())})
    if batch.num_rows == 0:
        return written
    table = batch.select(["id", "embedding", "error"])
    if "line" in batch.column_names:
        lines = batch.column("line").to_pylist()
        name = f"{min(lines):012d}.parquet"
        errors = batch.column("error").to_pylist()
        bad_lines = [line for line, error in zip(lines, errors, strict=True) if error is not None]
        if bad_lines:  # as parts.part_table keeps them: the report names each bad row's line
            table = table.replace_schema_metadata({LINES_KEY: json.dumps(bad_lines).encode()})
    else:
        name = f"{uuid.uuid4().hex}.parquet"
    pq.write_table(table, posixpath.join(folder, name), filesystem=filesystem)
    return pa.table({"name": [name], "rows": pa.array([table.num_rows], pa.int64())})


def check_parquet_id_kind(path: Path, id_column: str, ids_check: IdCheck) -> None:
    """The cluster reads these ids, not the driver: check their column's type against the job's id kind
    before any row is embedded (an output id column holds one type), and let it set the kind when first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    id_type = pq.read_schema(path).field(id_column).type
    is_string = pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
    kind = str if is_string else int if pa.types.is_integer(id_type) else None
    if kind is None:
        raise CorpusError(f"{path}: id column {id_column!r} is {id_type}; ids are strings or integers")
    if ids_check.kind is None:
        ids_check.kind = kind
    elif kind is not ids_check.kind:
        raise CorpusError(
            f"{path}: id column {id_column!r} holds {kind.__name__} ids ({id_type}); this job's ids are "
            f"{ids_check.kind.__name__} (one output id column holds one type): embed it in a job of its own"
        )


def seed_id_kind(ids_check: IdCheck, parts: list[str], filesystem: Any) -> None:
    """The job's id kind from a file's written parts, once it is known: the next files' ids are checked as
    the first run checked them (the kind was set on a worker, or by an earlier run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in sorted(parts):
        if ids_check.kind is not None:
            return
        id_type = pq.read_schema(path, filesystem=filesystem).field("id").type
        ids_check.kind = str if pa.types.is_string(id_type) else int if pa.types.is_integer(id_type) else None


def check_written(
    out: Output, folder: str, written: list[dict[str, Any]], file: InputFile, on_error: str
) -> list[dict[str, Any]]:
    """Check what Ray wrote before it is committed: with on_error="fail" no bad row (the first by line is
    named), then each file's rows as read back from its footer, and all of them against the input's. Files
    in the folder that no task returned (a failed attempt's) are removed. Returns the parts to list."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    names = [entry["name"] for entry in written]
    if len(set(names)) != len(names):
        raise CorpusError(f"{file.path}: Ray wrote a part twice ({sorted(names)}); nothing committed, rerun")
    paths = [posixpath.join(folder, name) for name in names]
    if on_error == "fail":
        bad = [record for path in paths for record in bad_rows(path, str(file.path), out.filesystem)]
        if bad:
            raise bad_row_error(min(bad, key=lambda record: record.get("line") or 0))
    on_disk = [pq.read_metadata(path, filesystem=out.filesystem).num_rows for path in paths]
    for entry, rows in zip(written, on_disk, strict=True):
        if rows != entry["rows"]:
            raise CorpusError(f"{file.path}: part {entry['name']} holds {rows} rows, {entry['rows']} written; rerun")
    if sum(on_disk) != file.rows:
        raise CorpusError(f"{file.path}: Ray wrote {sum(on_disk)} rows of {file.rows}; nothing committed, rerun")
    for info in out.filesystem.get_file_info(fs.FileSelector(folder)):
        if posixpath.basename(info.path) not in names:
            out.filesystem.delete_file(info.path)
    return [{"name": name, "rows": rows} for name, rows in zip(names, on_disk, strict=True)]


def commit_folder(partial: Path, final: Path, file_name: str, parts: list[dict[str, Any]]) -> None:
    """Make the checked parts durable, then rename the folder: the step after which the file counts as done.
    The manifest is written here too, so every committed folder lists its parts."""
    for part in parts:
        with open(partial / part["name"], "rb") as stream:
            os.fsync(stream.fileno())
    manifest = {"format": objectstore.MANIFEST_FORMAT, "input": file_name, "parts": parts}
    with open(partial / objectstore.MANIFEST, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    fsync_folder(partial)
    partial.replace(final)
    fsync_folder(final.parent)
