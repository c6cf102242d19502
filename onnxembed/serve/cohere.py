"""Cohere's embed API: ``POST /v2/embed`` (the official ``cohere`` client's ``ClientV2.embed``) and ``POST
/v1/embed`` (``Client.embed``).

In scope: the request fields (``texts``, or v2's ``inputs`` with one text part each, ``input_type``,
``embedding_types``, ``truncate``, ``max_tokens``, ``output_dimension``, ``model``) and the two response shapes. Not in
scope: batching and the statuses every route shares (app.py, parsing.py, gate.py).

``input_type`` picks the model's prompt as ``encode_query`` / ``encode_document`` do: "search_query" the
"query" prompt, "search_document" the first of "document", "passage" and "corpus"; "classification" and
"clustering" a prompt of that name (any case) where the model has one; else the model's default prompt.
``truncate`` "END" (Cohere's default) cuts texts over max_seq_length on the right, "NONE" makes them a 413,
"START" is accepted only for a model that truncates on the left. ``max_tokens`` cuts each text after that many
of its tokens first (with "NONE", a text that has more is a 413). ``embedding_types``: "float", "base64"
(little-endian float32 bytes), "binary" and "ubinary" as sentence-transformers' ``quantize_embeddings`` packs
the signs, and "int8" / "uint8" with each row scaled by its own largest magnitude (``round(127 x / max|x|)``,
plus 128 for uint8), so that a text's vector does not depend on the texts sent with it. ``output_dimension``
keeps that many leading dimensions and re-normalizes, as the OpenAI route's ``dimensions``. Images are not
embedded (422).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from onnxembed._checks import DOCUMENT_PROMPT_NAMES
from onnxembed.kernels import normalize, quantize_embeddings
from onnxembed.serve.config import ApiError
from onnxembed.serve.parsing import INVALID, TOO_LARGE, choice_field, optional_field, read_json, texts_field

EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


async def cohere_embed_v2(request: Request) -> Response:
    return await _cohere_embed(request, version=2)


async def cohere_embed_v1(request: Request) -> Response:
    return await _cohere_embed(request, version=1)


async def _cohere_embed(request: Request, version: int) -> Response:
    from onnxembed.serve.app import VectorsResponse

    service = request.app.state.service
    encoder = service.encoder
    payload = await read_json(request, service.config.max_body_bytes)
    if payload.get("images") is not None:
        raise ApiError(422, "'images' is not supported: this server embeds text only", INVALID)
    if payload.get("inputs") is not None:
        if version == 1:
            raise ApiError(422, "'inputs' is v2's (/v2/embed); /v1/embed takes 'texts'", INVALID)
        if payload.get("texts") is not None:
            raise ApiError(422, "send the texts once: as 'texts' or as 'inputs', not both", INVALID)
        payload["inputs"] = _inputs_texts(payload["inputs"])
        texts = texts_field(payload, "inputs", service.config)
    else:
        texts = texts_field(payload, "texts", service.config)
    optional_field(payload, "model", str)  # any name is accepted, as on the other routes
    if version == 2 and payload.get("input_type") is None:
        raise ApiError(422, f"'input_type' is required: one of {', '.join(INPUT_TYPES)}", INVALID)
    input_type = choice_field(payload, "input_type", INPUT_TYPES) if payload.get("input_type") is not None else None
    by_type = payload.get("embedding_types") is not None or version == 2
    types = _embedding_types(payload)
    truncate = choice_field(payload, "truncate", ("END", "NONE", "START"))
    side = encoder.manifest.truncation_side
    given = payload.get("truncate") is not None
    if given and truncate != "NONE" and (truncate == "START") != (side == "left"):
        raise ApiError(422, f"truncate {truncate!r} is not supported: this model truncates on the {side}", INVALID)
    max_tokens = optional_field(payload, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(422, f"'max_tokens' must be a positive integer; got {max_tokens}", INVALID)
    cut = max_tokens is not None and max_tokens < encoder.max_seq_length
    if cut and truncate != "NONE" and side != "right":  # a head is the wrong end for a model that keeps tails
        message = (
            f"'max_tokens' below max_seq_length ({encoder.max_seq_length}) needs a model that truncates on the right"
        )
        raise ApiError(422, message, INVALID)
    dimensions = optional_field(payload, "output_dimension", int)
    service.check_dimensions(dimensions, "output_dimension")
    prompt = encoder.prompts.get(_prompt_name(encoder, input_type), "") if input_type else service.prompt({})
    del payload  # unread fields are not held while the texts wait (parsing.py)
    sent = texts
    if cut:
        heads = await run_in_threadpool(encoder._tokenizer.heads, texts, max_tokens)
        if truncate == "NONE":  # as Cohere: an error only for a text that is longer
            longer = next(
                (index for index, (head, text) in enumerate(zip(heads, texts, strict=True)) if head != text), None
            )
            if longer is not None:
                message = f"text {longer} has more than max_tokens ({max_tokens}) tokens (send truncate 'END')"
                raise ApiError(413, message, TOO_LARGE)
        else:
            texts = heads
    rows, tokens = await service.embed(request, texts, prompt, truncate=truncate != "NONE")
    if dimensions is not None:
        rows = normalize(rows[:, :dimensions])
    embeddings = {kind: _encoded(rows, kind) for kind in types}
    meta = {"api_version": {"version": str(version)}, "billed_units": {"input_tokens": tokens}}
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": sent, "meta": meta}
    if by_type:
        body.update(embeddings=embeddings, response_type="embeddings_by_type")
    else:
        body.update(embeddings=embeddings["float"], response_type="embeddings_floats")
    return VectorsResponse(body)


def _inputs_texts(inputs: Any) -> Any:
    """v2's ``inputs`` (``[{"content": [{"type": "text", "text": ...}]}]``) as the texts they hold: one text part
    per input. Several parts make one vector in Cohere's multimodal models; joining them here would be a guess, so
    they are refused, as images are."""
    if not isinstance(inputs, list):
        message = "'inputs' must be a list of objects, each with 'content': a list of one text part"
        raise ApiError(422, message, INVALID)
    texts = []
    for index, item in enumerate(inputs):
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(content, list) or not content or not all(isinstance(part, dict) for part in content):
            raise ApiError(422, f"'inputs'[{index}] must be an object with 'content', a list of parts", INVALID)
        kinds = [part.get("type") for part in content]
        if any(kind != "text" for kind in kinds):
            other = next(kind for kind in kinds if kind != "text")
            raise ApiError(422, f"'inputs'[{index}] has a {other!r} part: this server embeds text only", INVALID)
        if len(content) != 1:
            message = f"'inputs'[{index}] has {len(content)} text parts; send one per input (join them first)"
            raise ApiError(422, message, INVALID)
        texts.append(content[0].get("text"))
    return texts


def _embedding_types(payload: dict[str, Any]) -> list[str]:
    given = payload.get("embedding_types")
    if given is None:
        return ["float"]
    if not isinstance(given, list) or not given or not all(isinstance(kind, str) for kind in given):
        raise ApiError(422, f"'embedding_types' must be a non-empty list of: {', '.join(EMBEDDING_TYPES)}", INVALID)
    for kind in given:
        if kind not in EMBEDDING_TYPES:
            raise ApiError(422, f"'embedding_types' has {kind!r}; choose from {', '.join(EMBEDDING_TYPES)}", INVALID)
    return list(dict.fromkeys(given))


def _prompt_name(encoder: Any, input_type: str) -> str | None:
    """The model's prompt for a Cohere input_type (None: the model has none for it)."""
    prompts = encoder.prompts
    if input_type == "search_query":
        names: tuple[str, ...] = ("query",)
    elif input_type == "search_document":
        names = DOCUMENT_PROMPT_NAMES
    else:
        names = tuple(name for name in prompts if name.lower() == input_type)
    found = next((name for name in names if name in prompts), None)
    return found if found is not None else encoder.manifest.default_prompt_name


def _encoded(rows: np.ndarray, kind: str) -> Any:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if kind == "float":
        return rows
    if kind == "base64":
        return [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in rows]
    if kind in ("binary", "ubinary"):
        return quantize_embeddings(rows, kind)  # type: ignore[arg-type]
    # int8 / uint8: each row scaled by its own largest magnitude, so a text's vector does not depend on the
    # texts sent with it (sentence-transformers' per-dimension ranges from the batch collapse a lone text to
    # -128 everywhere, and the client splits long lists into calls of 96)
    scale = np.abs(rows).max(axis=1, keepdims=True)
    steps = np.round(np.divide(rows * 127, scale, out=np.zeros_like(rows), where=scale > 0))
    signed = np.clip(steps, -127, 127).astype(np.int8)
    return signed if kind == "int8" else (signed.astype(np.int16) + 128).astype(np.uint8)
