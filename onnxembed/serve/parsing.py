"""Request bodies to checked Python values; every problem is an ApiError with a 4xx status.

In scope: the body size limit, JSON decoding (orjson: UTF-8, no NaN, integers within 64 bits, nesting under
1024), field types, input counts and lengths. Not in scope: what the fields mean (app.py), the statuses that
come before the body (gate.py).

Statuses: 400 anything the JSON parser refuses (invalid UTF-8, a lone surrogate escape, 10**5000, deep
nesting); 413 body, input count or input length over a limit (as text-embeddings-inference); 422 a field of
the wrong type or value, no input, or an empty string (OpenAI and text-embeddings-inference reject empty
strings too). A client that hangs up mid-body raises ClientGone.

Routes keep the fields they read and drop the parsed body before they wait for the model: a body's unknown
fields are never read, and held while queued they would cost memory that no limit counts.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from onnxembed.serve.config import ApiError, ClientGone, ServeConfig

INVALID = "invalid_request_error"
TOO_LARGE = "payload_too_large"
# Bodies over this size are parsed on a worker thread: orjson reads ~1 GB/s, so an 8 MiB body would hold the
# event loop (every other connection) for milliseconds.
PARSE_OFF_LOOP_BYTES = 64 << 10
# At most this many of those at once: parsed JSON takes up to ~30x its bytes ({} and [] are 64-byte objects),
# so 8 MiB bodies parsed side by side would each hold ~250 MB until done.
MAX_PARSES_OFF_LOOP = 2
_parse_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
# Before an early answer (413, 401, ...) the rest of the body is read and dropped, so that a client still
# sending (urllib sends all before reading, and asks to close after) reads the answer instead of a reset.
# Up to this many body limits, and only while bytes keep coming: a client that promised more than it sends
# and waits gets its answer after this idle time.
DISCARD_BODIES = 4
DISCARD_IDLE_S = 0.5


async def discard_body(receive: Receive, max_bytes: int) -> None:
    """Read and drop what is left of a request body: up to ``max_bytes``, while it keeps arriving."""
    seen = 0
    while seen <= max_bytes:
        try:
            message = await asyncio.wait_for(receive(), DISCARD_IDLE_S)
        except asyncio.TimeoutError:  # a class of its own before Python 3.11
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read no further than ``max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        await discard_body(request.receive, DISCARD_BODIES * max_body_bytes)
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_body_bytes}", TOO_LARGE)
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                await discard_body(request.receive, DISCARD_BODIES * max_body_bytes - size)
                raise ApiError(413, f"request body is over the limit of {max_body_bytes} bytes", TOO_LARGE)
            chunks.append(chunk)
    except ClientDisconnect as error:
        raise ClientGone("the client hung up while sending its body") from error
    body = b"".join(chunks)
    del chunks
    if size > PARSE_OFF_LOOP_BYTES:
        loop = asyncio.get_running_loop()
        slots = _parse_slots.get(loop) or _parse_slots.setdefault(loop, asyncio.Semaphore(MAX_PARSES_OFF_LOOP))
        async with slots:
            payload = await run_in_threadpool(parse_json, body)
    else:
        payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ApiError(422, f"request body must be a JSON object; got {_json_type(payload)}", INVALID)
    return payload


def parse_json(body: bytes) -> Any:
    """``body`` as JSON; 400 for whatever orjson refuses."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:  # a ValueError; also raised for invalid UTF-8 and deep nesting
        raise ApiError(400, f"request body is not valid JSON: {error}", INVALID) from error


def texts_field(payload: dict[str, Any], name: str, config: ServeConfig, max_count: int | None = None) -> list[str]:
    """``payload[name]``: a str or a non-empty list of str, within the length limit and ``max_count`` texts
    (default: max_inputs)."""
    max_count = config.max_inputs if max_count is None else max_count
    if name not in payload:
        raise ApiError(422, f"'{name}' is required: a string or a list of strings", INVALID)
    value = payload[name]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ApiError(422, f"'{name}' must be a string or a list of strings; got {_json_type(value)}", INVALID)
    if not texts:
        raise ApiError(422, f"'{name}' must not be an empty list", INVALID)
    if len(texts) > max_count:
        raise ApiError(413, f"'{name}' has {len(texts)} texts; the limit is {max_count}", TOO_LARGE)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            token_ids = isinstance(text, (int, list)) and not isinstance(text, bool)
            hint = " (token ids are not accepted: send the text)" if token_ids else ""
            raise ApiError(422, f"'{name}'[{index}] must be a string; got {_json_type(text)}{hint}", INVALID)
        if not text:
            raise ApiError(422, f"'{name}'[{index}] is empty; send at least one character", INVALID)
        if len(text) > config.max_input_chars:
            raise ApiError(
                413, f"'{name}'[{index}] has {len(text)} characters; the limit is {config.max_input_chars}", TOO_LARGE
            )
    return texts


def check_truncation_direction(payload: dict[str, Any], truncation_side: str) -> None:
    """text-embeddings-inference's ``truncation_direction`` ("Right" or "Left"), read as TEI reads it: only with
    ``truncate`` true. The model's own side is accepted, the other refused rather than ignored (batches cut every
    text on the model's side)."""
    if payload.get("truncation_direction") is None or payload.get("truncate") is not True:
        return
    direction = choice_field(payload, "truncation_direction", ("Right", "Left"))
    if direction.lower() != truncation_side:
        message = f"truncation_direction {direction!r} is not supported: this model truncates on the {truncation_side}"
        raise ApiError(422, message, INVALID)


def optional_field(payload: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """``payload[name]`` if present and not null, checked to be ``kind`` (bool is not an int here)."""
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(422, f"'{name}' must be {_KIND_NAMES[kind]}; got {_json_type(value)}", INVALID)
    return value


def choice_field(payload: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = optional_field(payload, name, str, choices[0])
    if value not in choices:
        raise ApiError(422, f"'{name}' must be one of {', '.join(choices)}; got {value!r}", INVALID)
    return str(value)


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "a list"}


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
