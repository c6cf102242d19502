"""Embedding on a Ray cluster: ``embed_dataset`` for any Ray Dataset, ``embed_corpus_ray`` for the CLI.

In scope: an actor pool in which each actor loads one Encoder once (``map_batches`` with a class), sized
from the cluster (one actor per GPU with the CUDA provider, else CPUs / threads per actor), actor restarts
and task retries when a worker dies, and the CLI's restartable job that takes the input files one by one.
Not in scope: how one file is read, written, checked and committed on Ray (ray_io.py), encoding (runtime/),
the part layout (parts.py), OUTPUT on object stores (objectstore.py). Ray is imported only inside functions.

Reading is the cluster's, never the driver's: Parquet with an id column by ``read_parquet``; text, JSONL and
Parquet numbered by row by one read task per file (a Datasource running inputs.read_chunks on a worker,
one block per ``rows_per_block`` rows). Not ``read_json``/``read_text``: their parsers fail a whole block on
one bad line and number no lines; one sequential task keeps line and row numbers, blank lines and row checks
exactly the local runner's. Reading is cheap beside embedding, so one task per file costs no throughput.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import warnings
from pathlib import Path
from typing import Any

from onnxembed.corpus import objectstore
from onnxembed.corpus.inputs import InputFile, id_column_of, list_inputs
from onnxembed.corpus.job import check_paths, inputs_record, locked, model_record, temporary_path
from onnxembed.corpus.local import (
    CorpusPrecision,
    CorpusResult,
    OnError,
    bad_row_error,
    check_options,
    finish_job,
    judge_report,
    require_pyarrow,
    start_job,
)
from onnxembed.corpus.objectstore import Output
from onnxembed.corpus.parts import embedding_array, part_name
from onnxembed.corpus.ray_io import (
    check_parquet_id_kind,
    check_written,
    commit_folder,
    file_dataset,
    import_ray,
    seed_id_kind,
    write_block,
)
from onnxembed.corpus.rows import IdCheck, embed_rows, storable_ids, text_error

__all__ = ["EmbedBatches", "check_parquet_id_kind", "embed_corpus_ray", "embed_dataset", "plan_actors"]

logger = logging.getLogger(__name__)

_RETRIES = 4  # actor restarts and task retries: a worker that dies is replaced, a crash loop still ends


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
        # A batch from embed-corpus's reader carries its read/id checks in "error"; others are checked here.
        read_errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(texts)
        # That reader has already made its rows' ids storable; other ids (read_parquet's) are checked here.
        from_reader = "error" in batch.column_names
        ids_check = IdCheck() if self.id_column else None
        errors = [
            read_error or (ids_check.error(row_id) if ids_check else None) or text_error(text)
            for row_id, text, read_error in zip(ids, texts, read_errors, strict=True)
        ]
        self._raise_first_bad(ids, errors)
        embeddings = embed_rows(self.encoder, texts, errors, self.batch_size, self.precision)
        self._raise_first_bad(ids, errors)
        valid = np.array([error is None for error in errors], dtype=bool)
        if ids_check is not None and not from_reader and not valid.all():
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
    ray = import_ray()
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
    import_ray()
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
    filesystem: Any = None,
) -> CorpusResult:
    """As :func:`onnxembed.corpus.embed_corpus`, on Ray (``ray.init(address)``; a local cluster when None).

    Each input file becomes one Ray job, read by the cluster, whose parts land in OUTPUT/part-FFFFF/ and are
    counted before they are committed, so a restarted job skips finished files. OUTPUT is a folder every
    node shares (local disk for one node, NFS), committed by a folder rename after fsync; or a URI that
    ``pyarrow.fs.FileSystem.from_uri`` opens (``s3://``, ``gs://``; ``file://`` is a local folder), or a
    path in ``filesystem`` (a pyarrow filesystem), committed by a manifest written last. INPUT and
    ``model_dir`` must be at the same path on every node. The job record and what a rerun refuses are the
    local path's (docs/corpora.md).
    """
    ray = import_ray()
    from onnxembed.manifest import Manifest
    from onnxembed.runtime.variants import choose_variant

    require_pyarrow()
    check_options(on_error, precision)
    out = objectstore.resolve_output(output, filesystem)
    if out.local is not None:
        check_paths(input_path, out.local)
    files = list_inputs(input_path)
    id_columns = [id_column_of(file, id_column) for file in files]
    options = {"on_error": on_error, "batch_size": batch_size, "rows_per_block": rows_per_block}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        # The variant every actor loads, resolved once here (one job, one graph): by this driver's CPU where
        # that decides it (a full-range int8 graph and a saturating int8 kernel, runtime/int8.py).
        on_gpu = plan_actors()["provider"] == "cuda"
        provider = "CUDAExecutionProvider" if on_gpu else "CPUExecutionProvider"
        chosen, _ = choose_variant(Manifest.read(model_dir), Path(model_dir), variant, provider)
        settings = {"runner": "ray", "text_column": text_column, "id_column": id_column, "precision": precision}
        job = {"settings": settings, "model": model_record(model_dir, chosen), "inputs": inputs_record(files)}
        run = _Run(out, files, job, model_dir, chosen, options)
        if out.local is None:
            objectstore.start_job(out, job, restart)
            return run.all(id_columns)
        with locked(out.local):
            start_job(out.local, job, restart)
            return run.all(id_columns)
    finally:
        if started:
            ray.shutdown()


class _Run:
    """One embed-corpus job on Ray, once OUTPUT is started: each file not yet committed is embedded by the
    actor pool, written, checked and committed (folder rename on local disk, manifest on object stores)."""

    def __init__(
        self,
        out: Output,
        files: list[InputFile],
        job: dict[str, Any],
        model_dir: str | Path,
        variant: str,
        options: dict[str, Any],
    ) -> None:
        self.out, self.files, self.job, self.model_dir, self.variant = out, files, job, model_dir, variant
        self.options = options
        self.ids_check = IdCheck()

    def all(self, id_columns: list[str | None]) -> CorpusResult:
        embedded = reused = 0
        names = [file.name for file in self.files]
        on_error = self.options["on_error"]
        for file, file_id_column in zip(self.files, id_columns, strict=True):
            folder = self.out.path(part_name(file.index))
            if self._is_done(folder):
                seed_id_kind(self.ids_check, self._committed_parts(folder), self.out.filesystem)
                reused += file.rows
                continue
            self._embed_file(file, file_id_column, folder)
            embedded += file.rows
        if self.out.local is not None:
            bad, duplicates = finish_job(self.out.local, names, on_error)
        else:
            bad, duplicates, listed_in = objectstore.collect_report(self.out, names)
            judge_report(bad, duplicates, on_error, listed_in)
        return CorpusResult(embedded, reused, bad, duplicates)

    def _committed_parts(self, folder: str) -> list[str]:
        if self.out.local is not None:  # every file of a renamed folder (older runs wrote no manifest)
            return [str(path) for path in sorted(Path(folder).glob("*.parquet"))]
        return objectstore.committed_parts(self.out, folder)

    def _is_done(self, folder: str) -> bool:
        if self.out.local is not None:
            return Path(folder).is_dir()  # renamed into place: committed (older runs wrote no manifest)
        return objectstore.is_committed(self.out, folder)

    def _embed_file(self, file: InputFile, id_column: str | None, folder: str) -> None:
        local = Path(folder) if self.out.local is not None else None
        target = str(temporary_path(local)) if local is not None else folder
        try:
            self.out.filesystem.create_dir(target, recursive=True)
            # An empty file is an empty folder, without starting an actor pool.
            written = self._write(file, id_column, target) if file.rows else []
            parts = check_written(self.out, target, written, file, self.options["on_error"])
            if local is not None:
                commit_folder(Path(target), local, file.name, parts)
            else:
                objectstore.commit(self.out, folder, file.name, parts)
        except BaseException:
            if local is None:  # not committed: removed now rather than on the next start
                _delete_quietly(self.out.filesystem, folder)
            raise
        finally:
            if local is not None:
                shutil.rmtree(target, ignore_errors=True)
        seed_id_kind(self.ids_check, [posixpath.join(folder, part["name"]) for part in parts], self.out.filesystem)

    def _write(self, file: InputFile, id_column: str | None, target: str) -> list[dict[str, Any]]:
        """Read, embed and write one file into ``target``; returns what the write tasks wrote."""
        settings, options = self.job["settings"], self.options
        ds = file_dataset(
            file, settings["text_column"], id_column, options["rows_per_block"], self.ids_check, options["on_error"]
        )
        ds = embed_dataset(
            ds,
            self.model_dir,
            "text",
            id_column="id",
            batch_size=options["batch_size"],
            precision=settings["precision"],
            on_error="skip",  # bad rows are checked in the written folder, before it is committed
            variant=self.variant,
        )
        arguments = {"filesystem": self.out.filesystem, "folder": target}
        writes = ds.map_batches(
            write_block, batch_size=None, batch_format="pyarrow", zero_copy_batch=True, fn_kwargs=arguments
        )
        return list(writes.take_all())


def _delete_quietly(filesystem: Any, folder: str) -> None:
    try:
        filesystem.delete_dir(folder)
    except OSError as error:
        logger.warning("could not remove %s (%s); the next run removes it", folder, error)
