"""Request bodies to checked Python values; every problem is an ApiError with a 4xx status.

In scope: the body size limit, UTF-8 and JSON decoding, field types, input counts and lengths.
Not in scope: what the fields mean (app.py).

Statuses: 400 body is not UTF-8 JSON; 413 body, input count or input length over a limit (as
text-embeddings-inference); 422 a field of the wrong type or value, no input, or an empty string (OpenAI and
text-embeddings-inference reject empty strings too).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from onnxembed.serve.config import ApiError, ServeConfig

INVALID = "invalid_request_error"
TOO_LARGE = "payload_too_large"


async def read_json(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read no further than ``max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_body_bytes}", TOO_LARGE)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise ApiError(413, f"request body is over the limit of {max_body_bytes} bytes", TOO_LARGE)
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"request body is not valid UTF-8: {error}", INVALID) from error
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(400, f"request body is not valid JSON: {error}", INVALID) from error
    except RecursionError as error:
        raise ApiError(400, "request body nests JSON too deeply", INVALID) from error
    if not isinstance(payload, dict):
        raise ApiError(422, f"request body must be a JSON object; got {_json_type(payload)}", INVALID)
    return payload


def texts_field(payload: dict[str, Any], name: str, config: ServeConfig) -> list[str]:
    """``payload[name]``: a str or a non-empty list of str, within the count and length limits."""
    if name not in payload:
        raise ApiError(422, f"'{name}' is required: a string or a list of strings", INVALID)
    value = payload[name]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ApiError(422, f"'{name}' must be a string or a list of strings; got {_json_type(value)}", INVALID)
    if not texts:
        raise ApiError(422, f"'{name}' must not be an empty list", INVALID)
    if len(texts) > config.max_inputs:
        raise ApiError(413, f"'{name}' has {len(texts)} texts; the limit is {config.max_inputs}", TOO_LARGE)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(422, f"'{name}'[{index}] must be a string; got {_json_type(text)}", INVALID)
        if not text:
            raise ApiError(422, f"'{name}'[{index}] is empty; send at least one character", INVALID)
        if not text.isascii() and _has_surrogate(text):  # JSON "\ud800" escapes decode to text no tokenizer takes
            raise ApiError(422, f"'{name}'[{index}] holds a lone UTF-16 surrogate; it is not valid text", INVALID)
        if len(text) > config.max_input_chars:
            raise ApiError(
                413, f"'{name}'[{index}] has {len(text)} characters; the limit is {config.max_input_chars}", TOO_LARGE
            )
    return texts


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


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", list: "a list"}


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
