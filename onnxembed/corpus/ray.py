"""Embedding on a Ray cluster: ``embed_dataset`` for any Ray Dataset, ``embed_corpus_ray`` for the CLI.

In scope: an actor pool in which each actor loads one Encoder once (``map_batches`` with a class), sized
from the cluster (one actor per GPU with the CUDA provider, else CPUs / threads per actor), actor restarts
and task retries when a worker dies, and the CLI's restartable per-file job. Not in scope: encoding
(runtime/), the part layout (parts.py). Ray is imported only here, inside functions.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from onnxembed.corpus.inputs import CorpusError, InputFile, id_column_of, list_inputs, read_chunks
from onnxembed.corpus.job import check_paths, fsync_folder, inputs_record, locked, model_record, temporary_path
from onnxembed.corpus.local import (
    CorpusPrecision,
    CorpusResult,
    OnError,
    bad_row_error,
    check_options,
    finish_job,
    raise_first_bad,
    require_pyarrow,
    start_job,
)
from onnxembed.corpus.parts import embedding_array, part_name
from onnxembed.corpus.rows import IdCheck, chunk_errors, embed_rows, storable_ids, text_error

logger = logging.getLogger(__name__)

_ID_TYPES: dict[Any, Any] = {}  # filled on first use: importing pyarrow here would import it with the package
_RETRIES = 4  # actor restarts and task retries: a worker that dies is replaced, a crash loop still ends


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'onnxembed[ray]'") from None
    return ray


class EmbedBatches:
    """The map_batches class: ``__init__`` loads one Encoder per actor, ``__call__`` embeds a pyarrow batch.

    Adds ``embedding`` (a fixed-size list; null for a bad row) and, with on_error="skip", ``error``.
    """

    def __init__(
        self,
        model_dir: str,
        text_column: str,
        id_column: str | None,
        provider: str,
        threads: int | None,
        batch_size: int | None,
        precision: str,
        on_error: str,
        variant: str = "auto",
    ) -> None:
        from onnxembed.runtime import Encoder

        self.encoder = Encoder(model_dir, provider=provider, threads=threads, variant=variant)
        self.text_column, self.id_column = text_column, id_column
        self.batch_size, self.precision, self.on_error = batch_size, precision, on_error

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        ids = batch.column(self.id_column).to_pylist() if self.id_column else [None] * len(texts)
        # A batch from embed-corpus carries the driver's read/id checks in "error"; others are checked here.
        read_errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(texts)
        # The driver has already made its rows' ids storable; ids read by the cluster are checked here.
        from_driver = "error" in batch.column_names
        ids_check = IdCheck() if self.id_column else None
        errors = [
            read_error or (ids_check.error(row_id) if ids_check else None) or text_error(text)
            for row_id, text, read_error in zip(ids, texts, read_errors, strict=True)
        ]
        self._raise_first_bad(ids, errors)
        embeddings = embed_rows(self.encoder, texts, errors, self.batch_size, self.precision)
        self._raise_first_bad(ids, errors)
        valid = np.array([error is None for error in errors], dtype=bool)
        if ids_check is not None and not from_driver and not valid.all():
            index = batch.column_names.index(self.id_column)
            stored = pa.array(storable_ids(ids, errors, ids_check), type=batch.schema.field(index).type)
            batch = batch.set_column(index, self.id_column, stored)
        batch = batch.append_column("embedding", embedding_array(embeddings, valid, self.precision))
        if self.on_error == "skip":
            error_column = pa.array(errors, type=pa.string())
            if "error" in batch.column_names:
                batch = batch.set_column(batch.column_names.index("error"), "error", error_column)
            else:
                batch = batch.append_column("error", error_column)
        return batch

    def _raise_first_bad(self, ids: list[Any], errors: list[str | None]) -> None:
        if self.on_error == "skip":
            return
        for index, (row_id, error) in enumerate(zip(ids, errors, strict=True)):
            if error is not None:
                shown = row_id if self.id_column else f"#{index} of a batch"
                raise bad_row_error({"id": shown, "error": error})


def plan_actors(threads_per_actor: int | None = None, num_actors: int | None = None) -> dict[str, Any]:
    """Actor count and per-actor resources from the running cluster.

    With GPUs: one actor per GPU, CUDA provider. Else actors of ``threads_per_actor`` CPUs and intra-op
    threads (default 1 below 8 CPUs, else 2), as many as fit in all CPUs but one: Ray Data's list-files,
    read and write tasks need a CPU each, and with every CPU held by an actor they would never start.
    """
    ray = _import_ray()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        return {"concurrency": num_actors or gpus, "num_gpus": 1, "num_cpus": 1, "provider": "cuda", "threads": None}
    threads = threads_per_actor or (1 if cpus < 8 else 2)
    actors = num_actors or max(1, (cpus - 1) // threads)
    return {"concurrency": actors, "num_gpus": None, "num_cpus": threads, "provider": "cpu", "threads": threads}


def embed_dataset(
    ds: Any,
    model_dir: str | Path,
    text_column: str = "text",
    *,
    id_column: str | None = None,
    batch_size: int | None = None,
    rows_per_batch: int = 1024,
    precision: CorpusPrecision = "float32",
    on_error: OnError = "fail",
    threads_per_actor: int | None = None,
    num_actors: int | None = None,
    actor_class: type[EmbedBatches] = EmbedBatches,
    variant: str = "auto",
) -> Any:
    """A Ray Dataset with an ``embedding`` column: fixed-size list of float32 (int8/uint8 packed bits for
    binary/ubinary), computed lazily by an actor pool (see :func:`plan_actors`). ``model_dir`` must be
    readable at the same path on every node. ``rows_per_batch`` rows go to an actor at a time (each split
    into ``batch_size``-text inference batches). A bad row (null or non-string text) fails the job naming
    its ``id_column`` value with on_error="fail"; with "skip" it gets a null embedding and an ``error``.
    A dead actor is restarted and its batches retried (up to 4 times). ``actor_class``: a subclass of
    :class:`EmbedBatches`, to add steps around it.
    """
    _import_ray()
    check_options(on_error, precision)
    plan = plan_actors(threads_per_actor, num_actors)
    logger.info(
        "embedding with %d actors (%s, %s threads each)", plan["concurrency"], plan["provider"], plan["threads"]
    )
    with warnings.catch_warnings():
        # Ray 2.60 warns on any **ray_remote_args; max_restarts/max_task_retries have no named form yet, and
        # Ray Data's own default (-1) would retry an actor that crashes on every batch forever.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        options = {"batch_size": batch_size, "precision": precision, "on_error": on_error, "variant": variant}
        return _map_batches(ds, actor_class, model_dir, text_column, id_column, rows_per_batch, options, plan)


def _map_batches(
    ds: Any,
    actor_class: type[EmbedBatches],
    model_dir: str | Path,
    text_column: str,
    id_column: str | None,
    rows_per_batch: int,
    options: dict[str, Any],
    plan: dict[str, Any],
) -> Any:
    return ds.map_batches(
        actor_class,
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "model_dir": str(Path(model_dir).resolve()),
            "text_column": text_column,
            "id_column": id_column,
            "provider": plan["provider"],
            "threads": plan["threads"],
            **options,
        },
        concurrency=plan["concurrency"],
        num_cpus=plan["num_cpus"],
        num_gpus=plan["num_gpus"],
        max_restarts=_RETRIES,
        max_task_retries=_RETRIES,
    )


def _file_dataset(
    file: InputFile, text_column: str, id_column: str | None, rows_per_block: int, ids_check: IdCheck, on_error: str
) -> Any:
    """A file as a Ray Dataset with columns id, text, error. Parquet with an id column is read by the cluster
    (``read_parquet``). Text, JSONL and files numbered by row are read here, in file order (global row numbers
    need it), and checked row by row (a read error, bad id or text names its line); each block goes to the
    object store as it is read, so the driver holds one block, never the file."""
    ray = _import_ray()
    import pyarrow as pa

    _ID_TYPES.update({str: pa.string(), int: pa.int64()})
    if file.format == "parquet" and id_column is not None:
        check_parquet_id_kind(file.path, id_column, ids_check)
        ds = ray.data.read_parquet(str(file.path), columns=[id_column, text_column])
        ds = ds.rename_columns({id_column: "id", text_column: "text"}) if id_column != "id" else ds
        return ds.select_columns(["id", "text"])
    refs = []
    for chunk in read_chunks(file, text_column, id_column, rows_per_block):
        errors = chunk_errors(chunk.ids, chunk.texts, chunk.read_errors, ids_check)
        raise_first_bad(on_error, str(file.path), chunk.ids, chunk.lines, errors)
        texts = [text if error is None else None for text, error in zip(chunk.texts, errors, strict=True)]
        columns = {"id": storable_ids(chunk.ids, errors, ids_check), "text": texts, "error": errors}
        types = {"id": _ID_TYPES.get(ids_check.kind), "text": pa.string(), "error": pa.string()}
        refs.append(ray.put(pa.table({name: pa.array(values, types[name]) for name, values in columns.items()})))
    if not refs:
        refs = [ray.put(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}))]
    return ray.data.from_arrow_refs(refs)


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


def _seed_id_kind(ids_check: IdCheck, folder: Path) -> None:
    """A finished file's id kind, from its parts: a rerun checks the next files' ids as the first run did."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if ids_check.kind is None:
        for path in sorted(folder.glob("*.parquet")):
            id_type = pq.read_schema(path).field("id").type
            ids_check.kind = str if pa.types.is_string(id_type) else int if pa.types.is_integer(id_type) else None
            return


def _commit_folder(partial: Path, final: Path, expected_rows: int, on_error: str, file_name: str) -> None:
    """Check the rows Ray wrote (count, and bad rows with on_error="fail"), make them durable, then rename the
    folder: the step after which the file counts as done."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(partial.glob("*.parquet"))
    written = sum(pq.read_metadata(path).num_rows for path in files)
    if written != expected_rows:
        raise CorpusError(f"{file_name}: Ray wrote {written} rows of {expected_rows}; nothing committed, rerun")
    if on_error == "fail" and files:
        bad = pq.read_table(partial, columns=["id", "error"], filters=pc.field("error").is_valid())
        if bad.num_rows:
            raise bad_row_error({"id": bad["id"][0].as_py(), "file": file_name, "error": bad["error"][0].as_py()})
    for path in files:
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
    fsync_folder(partial)
    partial.replace(final)
    fsync_folder(final.parent)


def embed_corpus_ray(
    input_path: str | Path,
    output: str | Path,
    model_dir: str | Path,
    *,
    address: str | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    on_error: OnError = "fail",
    batch_size: int | None = None,
    precision: CorpusPrecision = "float32",
    rows_per_block: int = 8192,
    variant: str = "auto",
    restart: bool = False,
) -> CorpusResult:
    """As :func:`onnxembed.corpus.embed_corpus`, on Ray (``ray.init(address)``; a local cluster when None).

    Each input file becomes one Ray job whose parts land in OUTPUT/part-NNNNN/ by a folder rename after
    its rows are counted and fsynced, so a restarted job skips finished files. OUTPUT and ``model_dir`` must
    be at the same path on every node (local disk for one node, else NFS or another shared filesystem).
    The job record and what a rerun refuses are the local path's (docs/corpora.md).
    """
    ray = _import_ray()
    from onnxembed.manifest import Manifest
    from onnxembed.runtime.variants import choose_variant

    require_pyarrow()
    check_options(on_error, precision)
    output = Path(output)
    check_paths(input_path, output)
    files = list_inputs(input_path)
    id_columns = [id_column_of(file, id_column) for file in files]
    options = {"on_error": on_error, "batch_size": batch_size, "rows_per_block": rows_per_block}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        # The variant the actors will load, chosen here as their Encoder will for their provider.
        on_gpu = plan_actors()["provider"] == "cuda"
        provider = "CUDAExecutionProvider" if on_gpu else "CPUExecutionProvider"
        chosen, _ = choose_variant(Manifest.read(model_dir), Path(model_dir), variant, provider)
        settings = {"runner": "ray", "text_column": text_column, "id_column": id_column, "precision": precision}
        job = {"settings": settings, "model": model_record(model_dir, chosen), "inputs": inputs_record(files)}
        return _run_files(output, files, id_columns, job, restart, model_dir, chosen, options)
    finally:
        if started:
            ray.shutdown()


def _run_files(
    output: Path,
    files: list[InputFile],
    id_columns: list[str | None],
    job: dict[str, Any],
    restart: bool,
    model_dir: str | Path,
    variant: str,
    options: dict[str, Any],
) -> CorpusResult:
    """Under OUTPUT's lock: each file not yet committed, embedded by the actor pool and committed."""
    text_column, on_error = job["settings"]["text_column"], options["on_error"]
    embedded = reused = 0
    ids_check = IdCheck()
    with locked(output):
        start_job(output, job, restart)
        for file, file_id_column in zip(files, id_columns, strict=True):
            final = output / part_name(file.index)
            if final.is_dir():
                _seed_id_kind(ids_check, final)
                reused += file.rows
                continue
            ds = _file_dataset(file, text_column, file_id_column, options["rows_per_block"], ids_check, on_error)
            ds = embed_dataset(
                ds,
                model_dir,
                "text",
                id_column="id",
                batch_size=options["batch_size"],
                precision=job["settings"]["precision"],
                on_error="skip",  # bad rows are checked in the written folder, before it is committed
                variant=variant,
            )
            partial = temporary_path(final)
            try:
                partial.mkdir(parents=True)
                ds.select_columns(["id", "embedding", "error"]).write_parquet(str(partial))
                _commit_folder(partial, final, file.rows, on_error, str(file.path))
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            embedded += file.rows
        bad, duplicates = finish_job(output, [file.name for file in files], on_error)
    return CorpusResult(embedded, reused, bad, duplicates)
