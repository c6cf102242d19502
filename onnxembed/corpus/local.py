"""The local path of ``onnxembed embed-corpus``: one process, one Encoder, bounded memory, restartable.

In scope: walking the input files chunk by chunk (``chunk_rows`` rows at a time, so memory holds one
chunk), encoding each chunk, writing it to its own part, skipping parts a previous run finished, and
reporting bad rows. Not in scope: reading formats (inputs.py), row checks (rows.py), the job record
(job.py), the part layout (parts.py), Ray (ray.py).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onnxembed._checks import positive_int
from onnxembed.corpus.inputs import CorpusError, id_column_of, list_inputs, read_chunks
from onnxembed.corpus.job import check_job, check_paths, inputs_record, locked, model_record, remove_ours
from onnxembed.corpus.parts import collect_report, part_is_done, part_name, part_table, type_null_ids, write_part
from onnxembed.corpus.rows import VALUE_TYPES, IdCheck, chunk_errors, embed_rows, storable_ids
from onnxembed.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
CorpusPrecision = Literal["float32", "binary", "ubinary"]
_SKIP_HINT = "(--on-error skip, on_error='skip', lists bad rows and goes on)"


@dataclass(frozen=True)
class CorpusResult:
    """What a job did: rows embedded now, rows found finished from an earlier run, the bad rows (all of
    OUTPUT's, as in _errors.jsonl) and the ids found more than once."""

    rows_embedded: int
    rows_reused: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)


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


def bad_row_error(record: dict[str, Any]) -> CorpusError:
    """A bad row as an error: ``file:line: row id 'x': why``."""
    where = record.get("file", "")
    where += f":{record['line']}" if record.get("line") is not None else ""
    where = f"{where}: " if where else ""
    return CorpusError(f"{where}row id {record.get('id')!r}: {record['error']} {_SKIP_HINT}")


def duplicates_error(duplicates: list[dict[str, Any]]) -> CorpusError:
    first = duplicates[0]
    return CorpusError(
        f"{len(duplicates)} ids appear more than once, e.g. {first['id']!r} ({first['error']}, in "
        f"{', '.join(first['files'])}); ids must be unique. Listed in _errors.jsonl; --on-error skip accepts them"
    )


def start_job(output: Path, job: dict[str, Any], restart: bool) -> None:
    """Under OUTPUT's lock: remove our files if ``restart``, a crashed run's temporary files in any case, then
    record or check the job."""
    removed = remove_ours(output, temporary_only=not restart)
    if removed:
        logger.info("removed from %s: %s", output, ", ".join(removed))
    check_job(output, job)


def finish_job(output: Path, file_names: list[str], on_error: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The report over all of OUTPUT; with on_error="fail", bad rows or duplicates left by an earlier
    ``skip`` run fail this one too: the output is not clean."""
    bad, duplicates = collect_report(output, file_names)
    judge_report(bad, duplicates, on_error, str(output / "_errors.jsonl"))
    return bad, duplicates


def judge_report(bad: list[dict[str, Any]], duplicates: list[Any], on_error: str, listed_in: str) -> None:
    if on_error == "fail" and bad:
        raise bad_row_error(bad[0])
    if on_error == "fail" and duplicates:
        raise duplicates_error(duplicates)
    if bad:
        logger.warning("%d bad rows skipped (listed in %s)", len(bad), listed_in)


def embed_corpus(
    input_path: str | Path,
    output: str | Path,
    model_dir: str | Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    on_error: OnError = "fail",
    batch_size: int | None = None,
    precision: CorpusPrecision = "float32",
    chunk_rows: int = 8192,
    provider: str = "auto",
    threads: int | None = None,
    variant: str = "auto",
    restart: bool = False,
    show_progress_bar: bool = False,
) -> CorpusResult:
    """Embed every row of INPUT into Parquet parts in OUTPUT (one per ``chunk_rows`` rows of each file).

    ``id_column`` None takes "id" where a file has it, else the global row number. A bad row (see
    docs/corpora.md: unreadable line, empty id, non-string text, refused by the tokenizer or model, NaN
    embedding) raises :class:`CorpusError` naming its file, line and id with ``on_error="fail"``; with
    "skip" it is written with a null embedding and its error, and listed in OUTPUT/_errors.jsonl. Running
    again with the same OUTPUT skips finished parts; a rerun with another model, variant, input content or
    setting is refused unless ``restart``, which removes our files in OUTPUT first.
    """
    from tqdm.auto import tqdm

    from onnxembed.runtime import Encoder

    require_pyarrow()
    check_options(on_error, precision)
    chunk_rows = positive_int(chunk_rows, "chunk_rows")
    if "://" in str(output):  # else a folder named "s3:" would be made here
        raise CorpusError(f"OUTPUT {output}: a URI is an output of the Ray runner only (--ray); here give a folder")
    output = Path(output)
    check_paths(input_path, output)
    files = list_inputs(input_path)
    id_columns = [id_column_of(file, id_column) for file in files]
    encoder = Encoder(model_dir, provider=provider, threads=threads, variant=variant)
    settings = {"runner": "local", "chunk_rows": chunk_rows, "text_column": text_column, "id_column": id_column}
    job = {
        "settings": {**settings, "precision": precision},
        "model": model_record(model_dir, encoder.variant),
        "inputs": inputs_record(files),
    }
    embedded = reused = 0
    ids_seen = IdCheck()
    with locked(output):
        start_job(output, job, restart)
        total = sum(file.rows for file in files)
        with tqdm(total=total, desc="Embedding", unit="text", disable=not show_progress_bar, file=sys.stderr) as bar:
            for file, file_id_column in zip(files, id_columns, strict=True):
                for index, chunk in enumerate(read_chunks(file, text_column, file_id_column, chunk_rows)):
                    # Every chunk's ids are checked, reused or not, so the job's id kind is the same on reruns.
                    errors = chunk_errors(chunk.ids, chunk.texts, chunk.read_errors, ids_seen)
                    path = output / part_name(file.index, index)
                    if part_is_done(path, len(chunk.ids)):
                        reused += len(chunk.ids)
                    else:
                        raise_first_bad(on_error, str(file.path), chunk.ids, chunk.lines, errors)
                        embeddings = embed_rows(encoder, chunk.texts, errors, batch_size, precision)
                        raise_first_bad(on_error, str(file.path), chunk.ids, chunk.lines, errors)
                        ids = storable_ids(chunk.ids, errors, ids_seen)
                        write_part(path, part_table(ids, embeddings, errors, precision, chunk.lines))
                        embedded += len(chunk.ids)
                    bar.update(len(chunk.ids))
        type_null_ids(output, ids_seen.kind)
        bad, duplicates = finish_job(output, [file.name for file in files], on_error)
    return CorpusResult(embedded, reused, bad, duplicates)


def raise_first_bad(on_error: str, file_name: str, ids: list[Any], lines: list[int], errors: list[str | None]) -> None:
    """With on_error="fail", the first bad row of a chunk as an error naming file, line and id."""
    if on_error == "skip":
        return
    for row_id, line, error in zip(ids, lines, errors, strict=True):
        if error is not None:
            raise bad_row_error({"id": row_id, "file": file_name, "line": line, "error": error})
