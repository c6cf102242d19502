"""Embedding on a Ray cluster: ``embed_dataset`` for any Ray Dataset, ``embed_corpus_ray`` for the CLI.

In scope: an actor pool in which each actor loads one Encoder once (``map_batches`` with a class), sized
from the cluster (one actor per GPU with the CUDA provider, else CPUs / threads per actor), actor restarts
and task retries when a worker dies, and the CLI's restartable per-file job. Not in scope: encoding
(runtime/), the part layout (parts.py). Ray is imported only here, inside functions.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

from onnxembed.corpus.inputs import InputFile, id_column_of, list_inputs, read_chunks
from onnxembed.corpus.job import check_job, temporary_path
from onnxembed.corpus.local import CorpusPrecision, CorpusResult, OnError, bad_row_error, check_options
from onnxembed.corpus.parts import collect_report, embedding_array, part_name
from onnxembed.corpus.rows import embed_rows, text_error

logger = logging.getLogger(__name__)

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
    ) -> None:
        from onnxembed.runtime import Encoder

        self.encoder = Encoder(model_dir, provider=provider, threads=threads)
        self.text_column, self.id_column = text_column, id_column
        self.batch_size, self.precision, self.on_error = batch_size, precision, on_error

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        errors = [text_error(text) for text in texts]
        first_bad = next((index for index, error in enumerate(errors) if error is not None), None)
        if first_bad is not None and self.on_error == "fail":
            row_id = batch.column(self.id_column)[first_bad].as_py() if self.id_column else f"#{first_bad} of a batch"
            raise bad_row_error({"id": row_id, "error": errors[first_bad]})
        embeddings = embed_rows(self.encoder, texts, errors, self.batch_size, self.precision)
        valid = np.array([error is None for error in errors], dtype=bool)
        batch = batch.append_column("embedding", embedding_array(embeddings, valid, self.precision))
        if self.on_error == "skip":
            batch = batch.append_column("error", pa.array(errors, type=pa.string()))
        return batch


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
        return _map_batches(
            ds, actor_class, model_dir, text_column, id_column, batch_size, rows_per_batch, precision, on_error, plan
        )


def _map_batches(
    ds: Any,
    actor_class: type[EmbedBatches],
    model_dir: str | Path,
    text_column: str,
    id_column: str | None,
    batch_size: int | None,
    rows_per_batch: int,
    precision: str,
    on_error: str,
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
            "batch_size": batch_size,
            "precision": precision,
            "on_error": on_error,
        },
        concurrency=plan["concurrency"],
        num_cpus=plan["num_cpus"],
        num_gpus=plan["num_gpus"],
        max_restarts=_RETRIES,
        max_task_retries=_RETRIES,
    )


def _file_dataset(file: InputFile, text_column: str, id_column: str | None, rows_per_block: int) -> Any:
    """A file as a Ray Dataset with columns id, text. Parquet with an id column is read by the cluster
    (``read_parquet``); text, JSONL and files numbered by row are read here in blocks, which keeps global
    row numbers and reads mixed-type or null JSON texts row by row (a non-string text becomes null)."""
    ray = _import_ray()
    import pyarrow as pa

    if file.format == "parquet" and id_column is not None:
        ds = ray.data.read_parquet(str(file.path), columns=[id_column, text_column])
        return ds.rename_columns({id_column: "id", text_column: "text"}) if id_column != "id" else ds
    blocks = [
        pa.table(
            {"id": pa.array(ids), "text": pa.array([t if isinstance(t, str) else None for t in texts], pa.string())}
        )
        for ids, texts in (
            (chunk.ids, chunk.texts) for chunk in read_chunks(file, text_column, id_column, rows_per_block)
        )
    ]
    return ray.data.from_arrow(
        blocks or [pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())})]
    )


def embed_corpus_ray(
    input_path: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    address: str | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    on_error: OnError = "fail",
    batch_size: int | None = None,
    precision: CorpusPrecision = "float32",
    rows_per_block: int = 8192,
) -> CorpusResult:
    """As :func:`onnxembed.corpus.embed_corpus`, on Ray (``ray.init(address)``; a local cluster when None).

    Each input file becomes one Ray job whose parts land in OUTPUT/part-NNNNN/ by an atomic folder rename,
    so a restarted job skips finished files. Bad rows are found by the actors and, with on_error="fail",
    stop the job before the file's folder is committed.
    """
    ray = _import_ray()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    check_options(on_error, precision)
    output = Path(output)
    files = list_inputs(input_path)
    id_columns = [id_column_of(file, id_column) for file in files]
    settings = {"runner": "ray", "text_column": text_column, "id_column": id_column, "precision": precision}
    check_job(output, {**settings, "inputs": [str(file.path) for file in files]})
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    embedded = reused = 0
    try:
        for file, file_id_column in zip(files, id_columns, strict=True):
            final = output / part_name(file.index)
            if final.exists():
                reused += file.rows
                continue
            ds = _file_dataset(file, text_column, file_id_column, rows_per_block)
            ds = embed_dataset(
                ds, model, "text", id_column="id", batch_size=batch_size, precision=precision, on_error="skip"
            )
            partial = temporary_path(final)
            shutil.rmtree(partial, ignore_errors=True)
            try:
                partial.mkdir(parents=True)
                ds.select_columns(["id", "embedding", "error"]).write_parquet(str(partial))
                if on_error == "fail" and any(partial.iterdir()):
                    bad = pq.read_table(partial, columns=["id", "error"], filters=pc.field("error").is_valid())
                    if bad.num_rows:
                        raise bad_row_error({"id": bad["id"][0].as_py(), "error": bad["error"][0].as_py()})
                partial.replace(final)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            embedded += file.rows
    finally:
        if started:
            ray.shutdown()
    errors, duplicates = collect_report(output, [file.name for file in files])
    return CorpusResult(embedded, reused, errors, duplicates)
