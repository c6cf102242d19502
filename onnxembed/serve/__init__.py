"""``onnxembed serve``: an HTTP embedding server (OpenAI and text-embeddings-inference APIs) over one Encoder,
and/or a reranker (TEI's /rerank, Cohere's and Jina's /v1/rerank and /v2/rerank) over one Reranker.

In scope: loading the models, running uvicorn, SIGTERM. Not in scope: routes (app.py), dynamic batching
(batcher.py), request checks (parsing.py), metrics (metrics.py).

Needs ``pip install onnxembed[serve]`` (starlette, uvicorn, orjson); importing this package imports none.
On SIGTERM uvicorn stops accepting connections and waits for the requests in flight; the lifespan then
closes the batcher, which runs every text it accepted before its workers stop; ``serve`` then returns.
"""

from __future__ import annotations

import ipaddress
import logging
import numbers
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Literal

from onnxembed._checks import thread_count
from onnxembed.errors import InvalidArgumentError
from onnxembed.serve.config import ServeConfig

__all__ = ["ServeConfig", "serve", "worker_threads"]

logger = logging.getLogger(__name__)


def worker_threads(provider: str, workers: int | None, threads: int | None) -> tuple[int, int | None]:
    """(inference workers, intra-op threads per run) for a resolved provider name.

    On CPU, by default one worker per core, each run on one thread: the workers share the model batches of
    what was taken (batcher.py), so no core waits on another's threads; the cost is that a lone request runs
    on one core (docs/performance.md#what-the-serving-figures-decided). Elsewhere (GPUs) two workers, so
    that one tokenizes the next take while the other runs batches on the device.
    """
    on_cpu = provider == "CPUExecutionProvider"
    if workers is not None:
        workers = thread_count(workers, "workers")
    if threads is not None:
        threads = thread_count(threads, "threads")
    if workers is None:
        if on_cpu:
            workers = _usable_cores() if threads is None else 1
        else:
            workers = 2
    if on_cpu and threads is None and workers > 1:
        threads = 1  # the workers share the cores, one each
    return workers, threads


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    provider: str = "auto",
    threads: int | None = None,
    workers: int | None = None,
    variant: str = "auto",
    model_name: str | None = None,
    api_key: str | None = None,
    max_batch_tokens: int | None = None,
    batch_wait_ms: float = 0.0,
    max_queue: int = 4096,
    max_inputs: int | None = None,
    max_input_chars: int = 100_000,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_queue_chars: int | None = None,
    max_concurrent_requests: int = 512,
    max_connections: int = 1024,
    request_timeout_s: float = 10.0,
    send_timeout_s: float = 30.0,
    graceful_timeout_s: int | None = 30,
    log_level: Literal["warning", "info", "debug"] = "warning",
    reranker: str | Path | None = None,
    max_documents: int | None = None,
) -> None:
    """Serve the exported model at ``model_dir`` until SIGTERM or SIGINT. Blocks; returns after a clean shutdown.

    ``model_dir`` is an embedding model or a reranker (a CrossEncoder export: then ``POST /`` is /rerank);
    ``reranker`` serves a reranker beside an embedding model, on the same worker threads. A rerank request may
    hold ``max_documents`` documents (413 past it; default 1000, or ``max_queue`` when that is smaller).

    Limits are those of :class:`ServeConfig`; ``max_inputs`` defaults to 2048 (OpenAI's), or ``max_queue``
    when that is smaller. ``workers`` inference threads run the model batches of the waiting requests on one
    shared session; on CPU the default is one worker per core with one intra-op thread each (``threads``
    unset), elsewhere two (see :func:`worker_threads`). ``max_queue_chars`` defaults to 32 Mi characters, or
    what one request may hold if more. ``graceful_timeout_s`` bounds both the wait for requests in flight
    and, after it, the wait for the queued texts.
    """
    try:
        import uvicorn

        from onnxembed.serve.app import build_app
    except ImportError as error:
        hint = "pip install 'onnxembed[serve]'"
        raise ImportError(f"onnxembed serve needs starlette, uvicorn and orjson: {hint} ({error})") from error
    from onnxembed.manifest import RERANKER, SPARSE, Manifest
    from onnxembed.runtime import Encoder, Reranker, SparseEncoder
    from onnxembed.runtime.session import resolve_provider
    from onnxembed.serve.protocol import guarded_protocol

    # checked before the model loads: uvicorn would find a bad port only when it binds, with a traceback
    if isinstance(port, bool) or not isinstance(port, numbers.Integral) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be 0-65535 (0: any free port, which -v logs); got {port!r}")
    port = int(port)
    workers, threads = worker_threads(resolve_provider(provider), workers, threads)
    max_inputs = max_inputs if max_inputs is not None else min(2048, max_queue)
    documents_given = max_documents is not None
    if max_queue_chars is None:
        max_queue_chars = max(32 << 20, min(max_body_bytes, max_inputs * max_input_chars))
    max_documents = max_documents if max_documents is not None else min(1000, max_queue)
    task = Manifest.read(model_dir).task
    main_is_reranker = task == RERANKER
    if main_is_reranker and reranker is not None:
        raise InvalidArgumentError(f"{model_dir} is a reranker already; --reranker goes beside an embedding model")
    reranker_dir = model_dir if main_is_reranker else reranker
    if documents_given and reranker_dir is None:
        raise InvalidArgumentError("max_documents (--max-documents) bounds rerank requests; no reranker is served")
    name = model_name or Path(model_dir).resolve().name
    config = ServeConfig(
        model_name=name,
        reranker_name=None
        if reranker_dir is None
        else (name if main_is_reranker else Path(reranker_dir).resolve().name),
        max_documents=max_documents,
        api_key=api_key,
        max_batch_tokens=max_batch_tokens,
        batch_wait_ms=batch_wait_ms,
        workers=workers,
        max_queue=max_queue,
        max_inputs=max_inputs,
        max_input_chars=max_input_chars,
        max_body_bytes=max_body_bytes,
        max_queue_chars=max_queue_chars,
        max_concurrent_requests=max_concurrent_requests,
        max_connections=max_connections,
        request_timeout_s=request_timeout_s,
        send_timeout_s=send_timeout_s,
        drain_timeout_s=graceful_timeout_s,
    )
    if api_key is None and not _loopback(host):
        logger.warning("serving on %s without an API key: anyone who can reach it may use it", host)
    # sessions=1: the workers are the server's engine; a tuning profile gives an Encoder only its token budget
    encoder: Encoder | SparseEncoder | None = None
    if task == SPARSE:  # a sparse model: /embed_sparse (serve/sparse.py)
        encoder = SparseEncoder(model_dir, provider=provider, threads=threads, variant=variant)
    elif not main_is_reranker:
        encoder = Encoder(model_dir, provider=provider, threads=threads, variant=variant, sessions=1)
    # beside an embedding model the reranker takes its own best variant ("auto"): --variant names the model's
    rerank_variant = variant if main_is_reranker else "auto"
    scorer = None if reranker_dir is None else Reranker(reranker_dir, provider, threads, rerank_variant)
    if scorer is not None and scorer.num_labels != 1:  # every rerank route would answer 422
        raise InvalidArgumentError(
            f"{reranker_dir} gives {scorer.num_labels} scores a pair (a classifier); the rerank routes rank "
            "by one score a pair"
        )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(encoder, config, scorer),
            host=host,
            port=port,
            # h11 with deadlines and a connection cap (protocol.py); 4 bodies' worth of discarding at most
            http=guarded_protocol(request_timeout_s, max_connections, 4 * max_body_bytes, send_timeout_s),
            log_level=log_level,
            access_log=log_level != "warning",
            lifespan="on",
            timeout_graceful_shutdown=graceful_timeout_s,
        )
    )
    # uvicorn re-raises the signal it shut down for once it is done, under the handler it found: record
    # SIGTERM here instead of dying of it, so that a graceful stop exits 0.
    terminated: list[int] = []

    def _record(signum: int, frame: FrameType | None) -> None:
        terminated.append(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's only
    previous = signal.signal(signal.SIGTERM, _record) if in_main_thread else None
    try:
        server.run()
    except SystemExit as error:  # uvicorn exits 1 when it cannot bind or start; it has logged why
        raise RuntimeError(f"the server did not start on {host}:{port} (exit {error.code}; see the log)") from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise RuntimeError(f"the server did not start on {host}:{port}; see the log above")
