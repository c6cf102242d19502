"""The HTTP API on Starlette: OpenAI's /v1/embeddings, text-embeddings-inference's /embed and /similarity,
/v1/models, /health, /metrics.

In scope: routes, the API key, turning errors into ``{"error": {"message", "type"}}``, the token limit check
(only texts cut at max_seq_length are recounted), per-request post-processing of the workers' rows
(dimensions, normalize, base64).
Not in scope: batching (batcher.py), body checks (parsing.py), the exposition format (metrics.py).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import Tokenizer

from onnxembed.kernels import normalize
from onnxembed.runtime import Encoder
from onnxembed.serve.batcher import Batcher, QueueFull, ShuttingDown
from onnxembed.serve.config import ApiError, ServeConfig
from onnxembed.serve.metrics import Metrics
from onnxembed.serve.parsing import INVALID, TOO_LARGE, choice_field, optional_field, read_json, texts_field

OPEN_PATHS = ("/health",)  # answered without the API key, for load balancers


class VectorsResponse(JSONResponse):
    """JSON whose numpy float32 arrays orjson writes directly, each number in its shortest float32 form (as
    text-embeddings-inference and OpenAI send them; it parses back to the same float32). For 36 MiniLM rows:
    0.27 ms against 7.4 ms for json.dumps of ``tolist()``, in half the bytes."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class TokenCounter:
    """Tokens per text before truncation (special tokens and prompt included), for text-embeddings-inference's
    ``truncate: false`` check. Only texts that reached max_seq_length in the model need it: a text cut short
    is exactly one whose truncated count is the limit."""

    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def count(self, texts: list[str], prompt: str) -> list[int]:
        encodings = self._tokenizer.encode_batch([prompt + text for text in texts], add_special_tokens=True)
        return [len(encoding.ids) for encoding in encodings]


class EmbeddingService:
    """What the routes share: the Encoder, its batcher, limits, metrics."""

    def __init__(self, encoder: Encoder, config: ServeConfig) -> None:
        self.encoder = encoder
        self.config = config
        self.metrics = Metrics()
        self.counter = TokenCounter(encoder.model_dir)
        self.batcher: Batcher | None = None

    def start(self) -> None:
        self.batcher = Batcher(
            self.encoder,
            self.config.max_queue,
            self.config.max_run_texts,
            self.config.max_batch_tokens,
            self.metrics,
            batch_wait_s=self.config.batch_wait_ms / 1000,
            workers=self.config.workers,
        )

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def prompt(self, payload: dict[str, Any]) -> str:
        name = optional_field(payload, "prompt_name", str, self.encoder.manifest.default_prompt_name)
        if name is None:
            return ""
        prompts = self.encoder.prompts
        if name not in prompts:
            known = ", ".join(repr(key) for key in prompts) or "none"
            raise ApiError(422, f"prompt_name {name!r} is not one of the model's prompts: {known}", INVALID)
        return prompts[name]

    async def embed(self, texts: list[str], prompt: str, truncate: bool) -> tuple[np.ndarray, int]:
        """(len(texts), dim) float32 rows as ``Encoder.encode(texts, prompt=prompt)`` gives them, and the tokens
        the model read (after truncation). ``truncate`` False: an input longer than the model reads is 413.

        The token counts come from the batches themselves: counting every text again before queueing it cost
        a few points of throughput (docs/performance.md#what-the-serving-figures-decided). The cost: an
        over-long input with ``truncate`` False is refused after its batch has run instead of before."""
        if self.batcher is None:
            raise ApiError(503, "the server is starting", "server_busy")
        try:
            future = self.batcher.submit(texts, prompt)
        except QueueFull as error:
            headers = {"Retry-After": str(self.config.retry_after_s)}
            raise ApiError(503, str(error), "server_busy", headers) from error
        except ShuttingDown as error:
            raise ApiError(503, str(error), "server_busy", {"Retry-After": str(self.config.retry_after_s)}) from error
        embedded = await asyncio.wrap_future(future)
        rows, tokens = embedded.rows, embedded.tokens
        limit = self.encoder.max_seq_length
        if not truncate and (cut := np.flatnonzero(tokens >= limit)).size:
            counts = await run_in_threadpool(self.counter.count, [texts[index] for index in cut], prompt)
            for index, count in zip(cut.tolist(), counts, strict=True):
                if count > limit:
                    message = f"input {index} has {count} tokens; the model reads {limit} (send truncate: true)"
                    raise ApiError(413, message, TOO_LARGE)
        if not np.isfinite(rows).all():  # orjson would write NaN and inf as null; say what happened instead
            raise ApiError(500, "the model produced non-finite values (NaN or inf) for this input", "server_error")
        return rows, int(tokens.sum())

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and not 1 <= dimensions <= self.encoder.dim:
            raise ApiError(422, f"'dimensions' must be in 1..{self.encoder.dim}; got {dimensions}", INVALID)


async def openai_embeddings(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    payload = await read_json(request, service.config.max_body_bytes)
    texts = texts_field(payload, "input", service.config)
    optional_field(payload, "model", str)  # any name is accepted; the response names the served model
    encoding_format = choice_field(payload, "encoding_format", ("float", "base64"))
    dimensions = optional_field(payload, "dimensions", int)
    service.check_dimensions(dimensions)
    rows, tokens = await service.embed(texts, service.prompt(payload), truncate=True)
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
    dimensions = optional_field(payload, "dimensions", int)
    service.check_dimensions(dimensions)
    rows, _ = await service.embed(texts, service.prompt(payload), truncate=truncate)
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
    sentences = texts_field(inputs, "sentences", service.config)
    truncate = optional_field(payload, "truncate", bool, False)
    rows, _ = await service.embed(source + sentences, service.prompt(payload), truncate=truncate)
    scores = service.encoder.similarity(rows[:1], rows[1:])[0]
    return VectorsResponse(np.ascontiguousarray(scores, dtype=np.float32))


async def models(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    model = {"id": service.config.model_name, "object": "model", "created": 0, "owned_by": "onnxembed"}
    return JSONResponse({"object": "list", "data": [model]})


async def health(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    if service.batcher is None or service.batcher.closed:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    service: EmbeddingService = request.app.state.service
    depth = service.batcher.queue_depth if service.batcher is not None else 0
    return PlainTextResponse(service.metrics.render(depth), media_type="text/plain; version=0.0.4")


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": error_type}}, status_code=status, headers=headers)


async def _api_error(request: Request, error: Exception) -> Response:
    error = cast(ApiError, error)  # Starlette dispatches by type
    return error_response(error.status, error.message, error.error_type, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    error = cast(HTTPException, error)
    return error_response(error.status_code, str(error.detail), "not_found" if error.status_code == 404 else INVALID)


async def _server_error(request: Request, error: Exception) -> Response:
    return error_response(500, f"internal error: {type(error).__name__}: {error}", "server_error")


class Gate:
    """ASGI middleware around every request: the API key (401), and the request counter and latency."""

    def __init__(self, app: ASGIApp, service: EmbeddingService) -> None:
        self.app = app
        self.service = service
        self.paths = {route.path for route in ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            key = self.service.config.api_key
            if key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope, key):
                response = error_response(401, "missing or wrong API key (Authorization: Bearer KEY)", "unauthorized")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in self.paths else "other"
            self.service.metrics.observe_request(endpoint, status, time.perf_counter() - started)

    @staticmethod
    def _authorized(scope: Scope, key: str) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


ROUTES = [
    Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
    Route("/embed", tei_embed, methods=["POST"]),
    Route("/similarity", tei_similarity, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]


def build_app(encoder: Encoder, config: ServeConfig) -> Starlette:
    """The ASGI app. Its lifespan starts the batcher's workers and, on shutdown, drains and stops it."""
    service = EmbeddingService(encoder, config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.state.service = service
    app.add_middleware(Gate, service=service)
    return app
