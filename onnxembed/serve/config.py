"""Server settings and the one error type the HTTP layer turns into a JSON body.

In scope: limits, their defaults and checks. Not in scope: applying them (parsing.py, batcher.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxembed.errors import InvalidArgumentError


@dataclass(frozen=True)
class ServeConfig:
    """What the server accepts. Sizes are per request except ``max_queue`` (texts waiting, all requests)."""

    model_name: str
    api_key: str | None = None
    max_batch_tokens: int | None = None  # None: Encoder's default for the provider
    max_queue: int = 4096  # texts waiting for a worker; beyond it requests get 503 + Retry-After
    max_inputs: int = 2048  # texts in one request (OpenAI's limit); beyond it 413
    max_input_chars: int = 100_000  # characters in one text; beyond it 413
    max_body_bytes: int = 8 * 1024 * 1024  # request body; beyond it 413
    max_run_texts: int = 1024  # texts a worker takes off the queue at once, to cut into model batches
    batch_wait_ms: float = 0.0  # how long a worker lets concurrent requests gather before a run
    workers: int = 1  # inference threads sharing the model batches of what was taken
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in (
            "max_queue",
            "max_inputs",
            "max_input_chars",
            "max_body_bytes",
            "max_run_texts",
            "retry_after_s",
            "workers",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int; got {value!r}")
        if self.max_inputs > self.max_queue:
            raise InvalidArgumentError(
                f"max_inputs ({self.max_inputs}) must be <= max_queue ({self.max_queue}): a request that big never fits"
            )
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise InvalidArgumentError(f"max_batch_tokens must be a positive int; got {self.max_batch_tokens!r}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise InvalidArgumentError(f"batch_wait_ms must be between 0 and 10000; got {self.batch_wait_ms!r}")
        if self.api_key is not None and not self.api_key:
            raise InvalidArgumentError("api_key must not be empty; leave it out to serve without a key")


class ApiError(Exception):
    """An error a client caused (or 503 when busy): becomes ``{"error": {"message", "type"}}`` with ``status``."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers or {}
