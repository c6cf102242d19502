"""The HTTP API on Starlette: OpenAI's /v1/embeddings, text-embeddings-inference's /embed and /similarity,
Cohere's /v1/embed and /v2/embed (cohere.py), /v1/models, /health, /metrics; ``POST /`` answers as /embed
(text-embeddings-inference's clients). With a reranker (alone, or beside the embedding model) also /rerank,
/v1/rerank and /v2/rerank (rerank.py); ``POST /`` answers as /rerank when the reranker is the served model. A
sparse (SPLADE) model has /embed_sparse instead of the embedding routes, and ``POST /`` answers as it
(sparse.py).

In scope: routes, turning errors into ``{"error": {"message", "type"}}``, the token limit check
(only texts cut at max_seq_length are recounted), per-request post-processing of the workers' rows
(dimensions, normalize, base64).
Not in scope: batching (batcher.py), body checks (parsing.py), the API key and other header checks
(gate.py), connections (protocol.py), the exposition format (metrics.py).

Statuses (each tested over real HTTP in tests/serve):

=====  ==========================================================================================
200    the answer
400    the body is not JSON orjson accepts: invalid UTF-8, lone surrogate, 10**5000, deep nesting
401    missing or wrong API key (``Authorization: Bearer KEY``; /health needs none)
404    no such route
405    wrong method for the route; ``Allow`` names the right one
413    body, input count, input length (characters) over a limit, or with TEI's ``truncate: false``
       an input over max_seq_length tokens; readable by a client still sending (the rest of the body
       is read and discarded, within limits)
415    a Content-Type other than ``application/json`` (charset utf-8 or none); none at all is JSON
422    well-formed JSON with a field of the wrong type or value
429    more than ``max_concurrent_requests`` POSTs in flight (TEI's answer); Retry-After
503    the queue holds too many texts or characters now (Retry-After), the server is starting or
       stopping, or (from the connection layer) too many connections
500    only a real internal fault (the model's output not finite, a bug)
=====  ==========================================================================================

A client that hangs up gets nothing; its request leaves the queue if no worker took it, and /metrics
counts it under onnxembed_client_disconnects_total, not as a status. A connection that has not sent its
headers and body within ``request_timeout_s`` is closed (protocol.py).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, cast

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive

from onnxembed.errors import InvalidArgumentError
from onnxembed.kernels import normalize
from onnxembed.runtime import Encoder, Reranker, SparseEncoder
from onnxembed.serve.batcher import Batcher, Embedded, QueueFull, ShuttingDown
from onnxembed.serve.config import ApiError, ClientGone, ServeConfig
from onnxembed.serve.gate import DISCONNECTED, Gate, error_response
from onnxembed.serve.metrics import Metrics
from onnxembed.serve.parsing import (
    INVALID,
    TOO_LARGE,
    check_truncation_direction,
    choice_field,
    optional_field,
    read_json,
    texts_field,
)


class VectorsResponse(JSONResponse):
    """JSON whose numpy float32 arrays orjson writes directly, each number in its shortest float32 form (as
    text-embeddings-inference and OpenAI send them; it parses back to the same float32). For 36 MiniLM rows:
    0.27 ms against 7.4 ms for json.dumps of ``tolist()``, in half the bytes."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class EmbeddingService:
    """What the routes share: the Encoder and/or the Reranker, one batcher for both, limits, metrics."""

    def __init__(
        self, encoder: Encoder | SparseEncoder | None, config: ServeConfig, reranker: Reranker | None = None
    ) -> None:
        if encoder is None and reranker is None:
            raise InvalidArgumentError("the server needs an embedding model, a reranker or both")
        self._encoder = encoder
        self.reranker = reranker
        self.config = config
        self.metrics = Metrics()
        self.batcher: Batcher | None = None

    @property
    def encoder(self) -> Encoder:
        """The embedding model (the embedding routes are mounted only with one)."""
        if self._encoder is None:
            raise ApiError(404, "this server serves a reranker only; it has no embedding model", "not_found")
        # a SparseEncoder has what embed() and the batcher use (dim, max_seq_length, _tokenizer, _batches); the
        # dense-only routes are not mounted for it (_routes)
        return cast(Encoder, self._encoder)

    def start(self) -> None:
        self.batcher = Batcher(
            self._encoder if self._encoder is not None else self.reranker,  # type: ignore[arg-type]
            self.config.max_queue,
            self.config.max_run_texts,
            self.config.max_batch_tokens,
            self.metrics,
            batch_wait_s=self.config.batch_wait_ms / 1000,
            workers=self.config.workers,
            max_queue_chars=self.config.max_queue_chars,
        )

    def stop(self, timeout: float | None = None) -> None:
        if self.batcher is not None:
            self.batcher.close(timeout)

    def prompt(self, payload: dict[str, Any]) -> str:
        name = optional_field(payload, "prompt_name", str, self.encoder.manifest.default_prompt_name)
        if name is None:
            return ""
        prompts = self.encoder.prompts
        if name not in prompts:
            known = ", ".join(repr(key) for key in prompts) or "none"
            raise ApiError(422, f"prompt_name {name!r} is not one of the model's prompts: {known}", INVALID)
        return prompts[name]

    async def embed(self, request: Request, texts: list[str], prompt: str, truncate: bool) -> tuple[np.ndarray, int]:
        """(len(texts), dim) float32 rows as ``Encoder.encode(texts, prompt=prompt)`` gives them, and the tokens
        the model read (after truncation). ``truncate`` False: an input longer than the model reads is 413.

        The token counts come from the batches themselves: counting every text again before queueing it cost
        a few points of throughput (docs/performance.md#what-the-serving-figures-decided). The cost: an
        over-long input with ``truncate`` False is refused after its batch has run instead of before."""
        if self.batcher is None:
            raise ApiError(503, "the server is starting", "server_busy")
        try:
            future = self.batcher.submit(texts, prompt)
        except (QueueFull, ShuttingDown) as error:
            headers = {"Retry-After": str(self.config.retry_after_s)}
            raise ApiError(503, str(error), "server_busy", headers) from error
        try:
            embedded = await self._answer_or_hang_up(future, request.receive)
        except ShuttingDown as error:  # queued texts left when the drain's time limit ran out
            raise ApiError(503, str(error), "server_busy", {"Retry-After": str(self.config.retry_after_s)}) from error
        except InvalidArgumentError as error:  # e.g. a prompt this variant cannot leave out of its pooling
            raise ApiError(422, str(error), INVALID) from error
        rows, tokens = embedded.rows, embedded.tokens
        limit = self.encoder.max_seq_length
        if not truncate and (cut := np.flatnonzero(tokens >= limit)).size:
            # only texts that reached the limit may be over it; counting stops past the limit (tokenize.py)
            over = await run_in_threadpool(self.encoder._tokenizer.over_limit, [prompt + texts[i] for i in cut])
            for index, longer in zip(cut.tolist(), over, strict=True):
                if longer:
                    message = (
                        f"input {index} has more than {limit} tokens, the most the model reads (send truncate: true)"
                    )
                    raise ApiError(413, message, TOO_LARGE)
        values = rows if rows.dtype != object else np.concatenate([row.values for row in rows] or [np.empty(0)])
        if not np.isfinite(values).all():  # orjson would write NaN and inf as null; say what happened instead
            raise ApiError(500, "the model produced non-finite values (NaN or inf) for this input", "server_error")
        return rows, int(tokens.sum())

    async def _answer_or_hang_up(self, future: Future[Embedded], receive: Receive) -> Embedded:
        """The batcher's answer, unless the client hangs up first: then its texts leave the queue (if no
        worker took them yet) and ClientGone is raised. The body was read, so the next message uvicorn
        gives is the disconnect."""

        async def hung_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        answer = asyncio.wrap_future(future)
        watch = asyncio.ensure_future(hung_up())
        try:
            await asyncio.wait((answer, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not answer.done():
            if self.batcher is not None:
                self.batcher.withdraw(future)
            answer.cancel()
            raise ClientGone("the client hung up while its request waited")
        return answer.result()

    def check_dimensions(self, dimensions: int | None, name: str = "dimensions") -> None:
        if dimensions is not None and not 1 <= dimensions <= self.encoder.dim:
            raise ApiError(422, f"'{name}' must be in 1..{self.encoder.dim}; got {dimensions}", INVALID)


async def openai_embeddings(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    payload = await read_json(request, service.config.max_body_bytes)
    texts = texts_field(payload, "input", service.config)
    optional_field(payload, "model", str)  # any name is accepted; the response names the served model
    encoding_format = choice_field(payload, "encoding_format", ("float", "base64"))
    dimensions = optional_field(payload, "dimensions", int)
    service.check_dimensions(dimensions)
    prompt = service.prompt(payload)
    del payload  # unread fields are not held while the texts wait (parsing.py)
    rows, tokens = await service.embed(request, texts, prompt, truncate=True)
    if dimensions is not None:  # as OpenAI's text-embedding-3: shorten, then re-normalize
        rows = normalize(rows[:, :dimensions])
    data = [
        {"object": "embedding", "index": index, "embedding": _openai_vector(row, encoding_format)}
        for index, row in enumerate(rows)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return VectorsResponse({"object": "list", "data": data, "model": service.config.model_name, "usage": usage})


def _openai_vector(row: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":  # little-endian float32 bytes, as OpenAI sends them
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(row, dtype=np.float32)


async def tei_embed(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    payload = await read_json(request, service.config.max_body_bytes)
    texts = texts_field(payload, "inputs", service.config)
    normalize_rows = optional_field(payload, "normalize", bool, True)
    truncate = optional_field(payload, "truncate", bool, False)
    check_truncation_direction(payload, service.encoder.manifest.truncation_side)
    dimensions = optional_field(payload, "dimensions", int)
    service.check_dimensions(dimensions)
    prompt = service.prompt(payload)
    del payload
    rows, _ = await service.embed(request, texts, prompt, truncate=truncate)
    if dimensions is not None:
        rows = rows[:, :dimensions]
    if normalize_rows:
        rows = normalize(rows)
    return VectorsResponse(np.ascontiguousarray(rows, dtype=np.float32))


async def tei_similarity(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    payload = await read_json(request, service.config.max_body_bytes)
    # text-embeddings-inference nests the sentences in "inputs"; a flat body is accepted too.
    inputs = payload.get("inputs", payload)
    if not isinstance(inputs, dict):
        raise ApiError(422, "'inputs' must be an object with 'source_sentence' and 'sentences'", INVALID)
    if not isinstance(inputs.get("source_sentence"), str):
        raise ApiError(422, "'source_sentence' is required and must be a string", INVALID)
    if not isinstance(inputs.get("sentences"), list):
        raise ApiError(422, "'sentences' is required and must be a list of strings", INVALID)
    source = texts_field(inputs, "source_sentence", service.config)
    # the source counts among max_inputs, so that every request within the limits fits the queue
    sentences = texts_field(inputs, "sentences", service.config, service.config.max_inputs - 1)
    truncate = optional_field(payload, "truncate", bool, False)
    check_truncation_direction(payload, service.encoder.manifest.truncation_side)
    prompt = service.prompt(payload)
    del payload, inputs
    rows, _ = await service.embed(request, source + sentences, prompt, truncate=truncate)
    scores = service.encoder.similarity(rows[:1], rows[1:])[0]
    return VectorsResponse(np.ascontiguousarray(scores, dtype=np.float32))


async def models(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    names = [service.config.model_name]
    if service.config.reranker_name not in (None, service.config.model_name):
        names.append(service.config.reranker_name)  # type: ignore[arg-type]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "onnxembed"} for name in names]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    if service.batcher is None or service.batcher.closed:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    if not service.batcher.alive:  # a worker died: its share of the queue would wait forever
        return JSONResponse({"status": "unavailable", "reason": "an inference worker thread died"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    depth = service.batcher.queue_depth if service.batcher is not None else 0
    return PlainTextResponse(service.metrics.render(depth), media_type="text/plain; version=0.0.4")


async def _api_error(request: Request, error: Exception) -> Response:
    error = cast(ApiError, error)  # Starlette dispatches by type
    return error_response(error.status, error.message, error.error_type, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    error = cast(HTTPException, error)  # 404, and 405 with its Allow header
    error_type = "not_found" if error.status_code == 404 else INVALID
    return error_response(error.status_code, str(error.detail), error_type, dict(error.headers or {}))


async def _gone(request: Request, error: Exception) -> Response:
    return Response(status_code=DISCONNECTED)  # never delivered; the gate counts it as a disconnect


async def _server_error(request: Request, error: Exception) -> Response:
    return error_response(500, f"internal error: {type(error).__name__}: {error}", "server_error")


EMBEDDING_ROUTES = [
    Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
    Route("/embed", tei_embed, methods=["POST"]),
    Route("/similarity", tei_similarity, methods=["POST"]),
]
COMMON_ROUTES = [
    Route("/v1/models", models, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
ROUTES = [Route("/", tei_embed, methods=["POST"]), *EMBEDDING_ROUTES, *COMMON_ROUTES]


def _routes(embedding: bool, reranking: bool, sparse: bool = False) -> list[Route]:
    """The routes of the models served; ``POST /`` is the embedding model's /embed (a sparse model's
    /embed_sparse), else the reranker's /rerank."""
    from onnxembed.serve.cohere import cohere_embed_v1, cohere_embed_v2
    from onnxembed.serve.rerank import cohere_rerank, tei_rerank
    from onnxembed.serve.sparse import tei_embed_sparse

    rerank = [
        Route("/rerank", tei_rerank, methods=["POST"]),
        Route("/v1/rerank", cohere_rerank, methods=["POST"]),
        Route("/v2/rerank", cohere_rerank, methods=["POST"]),
    ]
    if sparse:
        root = Route("/", tei_embed_sparse, methods=["POST"])
        embedding_routes = [Route("/embed_sparse", tei_embed_sparse, methods=["POST"])]
    else:
        root = Route("/", tei_embed if embedding else tei_rerank, methods=["POST"])
        cohere = [
            Route("/v1/embed", cohere_embed_v1, methods=["POST"]),
            Route("/v2/embed", cohere_embed_v2, methods=["POST"]),
        ]
        embedding_routes = [*EMBEDDING_ROUTES, *cohere] if embedding else []
    return [root, *embedding_routes, *(rerank if reranking else []), *COMMON_ROUTES]


def build_app(
    encoder: Encoder | SparseEncoder | None, config: ServeConfig, reranker: Reranker | None = None
) -> Starlette:
    """The ASGI app for an embedding model, a reranker, or both (one batcher and worker pool for both). Its
    lifespan starts the batcher's workers and, on shutdown, drains and stops it."""
    service = EmbeddingService(encoder, config, reranker)
    routes = _routes(encoder is not None, reranker is not None, isinstance(encoder, SparseEncoder))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop, config.drain_timeout_s)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            ClientGone: _gone,
            ClientDisconnect: _gone,
            Exception: _server_error,
        },
    )
    # Starlette answers "/v1/embeddings/" with a 307 whose Location is built from the client's Host header
    # (and says http:// behind a TLS proxy): one path per route, anything else a JSON 404.
    app.router.redirect_slashes = False
    app.state.service = service
    app.add_middleware(Gate, service=service, paths={route.path for route in routes})
    return app
