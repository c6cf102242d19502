"""What every request passes before its route: the API key, the Content-Type, the concurrency limit, and
the request metrics.

In scope: the statuses decided from the headers alone (401, 415, 429), counting requests and client
disconnects. Not in scope: the body (parsing.py), connections and their timeouts (protocol.py).

Before a response sent ahead of the body, the body is read and dropped within bounds (parsing.py's
discard_body), so that a client still sending reads the answer instead of a connection reset.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onnxembed.serve.parsing import DISCARD_BODIES, discard_body

OPEN_PATHS = ("/health",)  # answered without the API key, for load balancers
BODY_PATHS = (
    "/",
    "/v1/embeddings",
    "/embed",
    "/similarity",
    "/v1/embed",
    "/v2/embed",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/embed_sparse",
)
DISCONNECTED = 499  # nginx's "client closed request": what a route answers a client that is gone


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": error_type}}, status_code=status, headers=headers)


def json_content_type(value: str | None) -> bool:
    """Whether a request's Content-Type header is JSON (or absent, as curl -d and some clients send it).
    text/plain and form types are refused: a web page can send them cross-site without a preflight."""
    if value is None:
        return True
    media_type, _, parameters = value.partition(";")
    if media_type.strip().lower() != "application/json":
        return False
    for parameter in parameters.split(";"):
        name, _, given = parameter.partition("=")
        if name.strip().lower() == "charset" and given.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class Gate:
    """ASGI middleware: 401 missing or wrong key, 415 a body that is not JSON, 429 more requests in flight
    than ``max_concurrent_requests``; metrics for every request (a hung-up client counts as a disconnect,
    not as a status)."""

    def __init__(self, app: ASGIApp, service: Any, paths: set[str]) -> None:
        self.app = app
        self.service = service
        self.paths = paths
        self.in_flight = 0

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

        config = self.service.config
        headers = {name: value for name, value in scope["headers"]}
        path = scope["path"]
        try:
            response = None
            if config.api_key is not None and path not in OPEN_PATHS and not _authorized(headers, config.api_key):
                response = error_response(401, "missing or wrong API key (Authorization: Bearer KEY)", "unauthorized")
                response.headers["WWW-Authenticate"] = "Bearer"
            elif scope["method"] == "POST" and path in BODY_PATHS:
                content_type = headers.get(b"content-type")
                encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
                if not json_content_type(None if content_type is None else content_type.decode("latin-1")):
                    message = "the body must be JSON (Content-Type: application/json)"
                    response = error_response(415, message, "unsupported_media_type")
                elif encoding not in ("", "identity"):
                    message = f"Content-Encoding {encoding} is not supported; send the body uncompressed"
                    response = error_response(415, message, "unsupported_media_type")
                elif self.in_flight >= config.max_concurrent_requests:
                    message = f"{self.in_flight} requests are in flight (limit {config.max_concurrent_requests})"
                    response = error_response(429, message, "too_many_requests", {"Retry-After": "1"})
            if response is not None:
                await discard_body(receive, DISCARD_BODIES * config.max_body_bytes)
                await response(scope, receive, send_status)
            elif scope["method"] == "POST" and path in BODY_PATHS:
                self.in_flight += 1  # one event loop: no lock needed
                try:
                    await self.app(scope, receive, send_status)
                finally:
                    self.in_flight -= 1
            else:
                await self.app(scope, receive, send_status)
        finally:
            endpoint = path if path in self.paths else "other"
            if status == DISCONNECTED:
                self.service.metrics.observe_disconnect(endpoint)
            else:
                self.service.metrics.observe_request(endpoint, status, time.perf_counter() - started)


def _authorized(headers: dict[bytes, bytes], key: str) -> bool:
    given = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), key.encode())
