"""The output folder of a corpus job: Parquet parts written atomically, the job's settings, the error list.

Each part holds columns ``id``, ``embedding`` (fixed-size list: float32, or int8/uint8 packed bits for
binary/ubinary; null for a bad row) and ``error`` (null, or why the row has no embedding). A part is
written under a name starting with "." and renamed when complete, so a part that exists is finished: a
restarted job skips it. ``_job.json`` keeps the settings that decide what goes in which part; a restart
with other settings is refused rather than mixing parts. Readers (pyarrow, Ray, DuckDB) skip "_" and "."
names, so ``pyarrow.parquet.read_table(OUTPUT)`` reads exactly the finished rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.corpus.inputs import CorpusError

JOB_FILE = "_job.json"
ERRORS_FILE = "_errors.jsonl"
VALUE_TYPES = {"float32": "float32", "binary": "int8", "ubinary": "uint8"}


def part_name(file_index: int, chunk_index: int | None = None) -> str:
    """``part-00003-000012.parquet`` (file 3, chunk 12), or ``part-00003`` (a folder of a file's parts)."""
    return f"part-{file_index:05d}" if chunk_index is None else f"part-{file_index:05d}-{chunk_index:06d}.parquet"


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def check_job(output: Path, settings: dict[str, Any]) -> None:
    """Create OUTPUT and record ``settings``; on a restart, refuse settings that differ from the first run's."""
    output.mkdir(parents=True, exist_ok=True)
    job = output / JOB_FILE
    if job.exists():
        recorded = json.loads(job.read_text(encoding="utf-8"))
        changed = {key: (recorded.get(key), value) for key, value in settings.items() if recorded.get(key) != value}
        if changed:
            details = "; ".join(f"{key}: was {old!r}, now {new!r}" for key, (old, new) in changed.items())
            raise CorpusError(f"{output} holds a job with other settings ({details}); use a new OUTPUT")
        return
    if any(path.name.startswith("part-") for path in output.iterdir()):
        raise CorpusError(f"{output} holds parts but no {JOB_FILE}; use a new OUTPUT")
    partial = temporary_path(job)
    partial.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(job)


def embedding_array(embeddings: np.ndarray, valid: np.ndarray, precision: str) -> Any:
    """(n, width) embeddings -> a FixedSizeListArray, null where ``valid`` (n,) bool is False."""
    import pyarrow as pa

    width = embeddings.shape[1]
    values = pa.array(np.ascontiguousarray(embeddings, dtype=VALUE_TYPES[precision]).reshape(-1))
    mask = None if bool(valid.all()) else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, width, mask=mask)


def part_table(
    ids: list[Any], embeddings: np.ndarray, valid: np.ndarray, errors: list[str | None], precision: str
) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "id": pa.array(ids),
            "embedding": embedding_array(embeddings, valid, precision),
            "error": pa.array(errors, type=pa.string()),
        }
    )


def write_part(path: Path, table: Any) -> None:
    """Write a Parquet part atomically: beside it under a hidden name, then renamed."""
    import pyarrow.parquet as pq

    partial = temporary_path(path)
    try:
        pq.write_table(table, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def collect_errors(output: Path) -> list[dict[str, Any]]:
    """The bad rows of all finished parts, as {"id", "error"}; also written to OUTPUT/_errors.jsonl."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(output, format="parquet")
    table = dataset.to_table(columns=["id", "error"], filter=pc.field("error").is_valid())
    records = [
        {"id": row_id, "error": error}
        for row_id, error in zip(table["id"].to_pylist(), table["error"].to_pylist(), strict=True)
    ]
    errors_file = output / ERRORS_FILE
    partial = temporary_path(errors_file)
    with open(partial, "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    partial.replace(errors_file)
    return records


def row_errors(texts: list[Any]) -> list[str | None]:
    """Why each text cannot be embedded (null, not a string), or None where it can."""
    return [
        None if isinstance(text, str) else f"text is {'null' if text is None else type(text).__name__}"
        for text in texts
    ]


def embed_rows(
    encoder: Any, texts: list[Any], errors: list[str | None], batch_size: int | None, precision: str
) -> np.ndarray:
    """(n, width) embeddings of the good texts; zero rows where ``errors`` names a bad one."""
    good = [index for index, error in enumerate(errors) if error is None]
    width = encoder.dim if precision == "float32" else -(-encoder.dim // 8)
    embeddings = np.zeros((len(texts), width), dtype=VALUE_TYPES[precision])
    if good:
        embeddings[good] = encoder.encode([texts[index] for index in good], batch_size=batch_size, precision=precision)
    return embeddings
