"""Server settings, the API key's sources, and the error types the HTTP layer turns into a status.

In scope: limits, their defaults and checks (limits that contradict each other are refused at start-up,
so that a 503 always means "retry later", never "this can never fit"). Not in scope: applying them
(parsing.py, gate.py, protocol.py, batcher.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from onnxembed.errors import InvalidArgumentError, OnnxEmbedError

API_KEY_ENV = "ONNXEMBED_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """What the server accepts. Sizes are per request except ``max_queue`` (texts waiting, all requests)."""

    model_name: str
    api_key: str | None = None
    max_batch_tokens: int | None = None  # None: Encoder's default for the provider
    max_queue: int = 4096  # texts waiting for a worker; beyond it requests get 503 + Retry-After
    max_queue_chars: int = 32 << 20  # characters of the texts waiting (memory); beyond it 503 too
    max_inputs: int = 2048  # texts in one request (OpenAI's limit); beyond it 413
    max_input_chars: int = 100_000  # characters in one text; beyond it 413
    max_body_bytes: int = 8 * 1024 * 1024  # request body; beyond it 413
    max_run_texts: int = 1024  # texts a worker takes off the queue at once, to cut into model batches
    batch_wait_ms: float = 0.0  # how long a worker lets concurrent requests gather before a run
    workers: int = 1  # inference threads sharing the model batches of what was taken
    retry_after_s: int = 1
    max_concurrent_requests: int = 512  # POSTs being read or answered at once; beyond it 429 (TEI's default)
    max_connections: int = 1024  # open connections; beyond it a new one gets 503 and is closed
    request_timeout_s: float = 10.0  # to send a request's headers and body; then the connection is closed
    send_timeout_s: float = 30.0  # to read some of an answer waiting to be sent; then the connection is reset
    drain_timeout_s: float | None = 30.0  # on shutdown, to finish the queued texts; then they get 503
    max_documents: int = 1000  # documents in one rerank request (Cohere's advice); beyond it 413
    reranker_name: str | None = None  # the served reranker's name, when there is one

    def __post_init__(self) -> None:
        for name in (
            "max_queue",
            "max_inputs",
            "max_input_chars",
            "max_body_bytes",
            "max_run_texts",
            "retry_after_s",
            "workers",
            "max_queue_chars",
            "max_concurrent_requests",
            "max_connections",
            "max_documents",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int; got {value!r}")
        if self.max_inputs > self.max_queue:
            raise InvalidArgumentError(
                f"max_inputs ({self.max_inputs}) must be <= max_queue ({self.max_queue}): a request that big never fits"
            )
        if self.reranker_name is not None and self.max_documents > self.max_queue:
            raise InvalidArgumentError(
                f"max_documents ({self.max_documents}) must be <= max_queue ({self.max_queue}): a rerank request that "
                "big never fits"
            )
        if self.max_inputs < 2:  # /similarity's source sentence counts among its inputs
            raise InvalidArgumentError(f"max_inputs must be at least 2 (a /similarity pair); got {self.max_inputs}")
        if self.max_request_chars > self.max_queue_chars:
            raise InvalidArgumentError(
                f"max_queue_chars ({self.max_queue_chars}) must be >= the characters one request may hold "
                f"({self.max_request_chars}: the least of max_body_bytes and max_inputs x max_input_chars)"
            )
        if self.drain_timeout_s is not None and not 0 <= self.drain_timeout_s < float("inf"):
            raise InvalidArgumentError(
                f"the shutdown timeout (--shutdown-timeout) must be 0 s or more; got {self.drain_timeout_s!r}"
            )
        for name in ("request_timeout_s", "send_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise InvalidArgumentError(f"{name} must be in (0, 3600]; got {getattr(self, name)!r}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise InvalidArgumentError(f"max_batch_tokens must be a positive int; got {self.max_batch_tokens!r}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise InvalidArgumentError(f"batch_wait_ms must be between 0 and 10000; got {self.batch_wait_ms!r}")
        if self.api_key is not None:
            check_api_key(self.api_key, "api_key")

    @property
    def max_request_chars(self) -> int:
        """The most characters one request can hold (a JSON string takes at least a byte a character)."""
        return min(self.max_body_bytes, self.max_inputs * self.max_input_chars)


def check_api_key(key: str, source: str) -> str:
    """``key`` if it can be sent in an Authorization header (printable ASCII, no spaces), else an error
    naming ``source``. An empty key is refused: it is what an unset shell variable expands to, and the
    server must not come up open when a key was meant."""
    if not key:
        raise InvalidArgumentError(f"{source} is empty (an unset variable?); give a key, or none to serve without one")
    if not (key.isascii() and key.isprintable()) or any(char.isspace() for char in key):
        raise InvalidArgumentError(f"{source} must be printable ASCII without spaces")
    return key


def api_key_from(flag: str | None, key_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The API key from ``--api-key``, ``--api-key-file`` (one line; keeps the key out of the process list)
    or $ONNXEMBED_API_KEY, in that order; None when none is given. Both options at once is an error."""
    if flag is not None and key_file is not None:
        raise InvalidArgumentError("give --api-key or --api-key-file, not both")
    if flag is not None:
        return check_api_key(flag, "--api-key")
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidArgumentError(f"cannot read --api-key-file {key_file}: {error}") from error
        return check_api_key(text.strip(), f"--api-key-file {key_file}")
    environ = dict(os.environ) if environ is None else environ
    if API_KEY_ENV in environ:
        return check_api_key(environ[API_KEY_ENV], f"${API_KEY_ENV}")
    return None


class ClientGone(OnnxEmbedError):
    """The client hung up before its answer: nothing to send, not a server error."""


class ApiError(OnnxEmbedError):
    """An error a client caused (or 503 when busy): becomes ``{"error": {"message", "type"}}`` with ``status``."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers or {}
