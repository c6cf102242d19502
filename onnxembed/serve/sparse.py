"""The sparse route: text-embeddings-inference's ``POST /embed_sparse`` (and ``POST /`` as the same) for a
SparseEncoder export.

In scope: the request fields TEI has (``inputs``, ``truncate``, ``prompt_name``), ``prompt_name`` choosing the
route of an inference-free model as ``encode_query`` / ``encode_document`` do ("query" -> the query route,
"document" / "passage" / "corpus" -> the document route; its prompt is applied when the model has one by that
name), and the answer ``[[{"index", "value"}, ...] per text]`` with ascending term ids.
Not in scope: batching (the shared batcher runs the SPLADE graph), the statuses every route shares (parsing.py,
gate.py). An inference-free model's query route is a table lookup: it runs on a worker thread, not the batcher.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from onnxembed.errors import InvalidArgumentError
from onnxembed.runtime import SparseEncoder
from onnxembed.serve.config import ApiError
from onnxembed.serve.parsing import (
    INVALID,
    TOO_LARGE,
    check_truncation_direction,
    optional_field,
    read_json,
    texts_field,
)

_ROUTE_NAMES = {"query": "query", "document": "document", "passage": "document", "corpus": "document"}


def _task_and_prompt(model: SparseEncoder, payload: dict[str, Any]) -> tuple[str | None, str]:
    name = optional_field(payload, "prompt_name", str, model.manifest.default_prompt_name)
    if name is None:
        return None, ""
    prompts = model.prompts
    if name not in prompts and name not in _ROUTE_NAMES:
        known = ", ".join(repr(key) for key in sorted({*prompts, *_ROUTE_NAMES}))
        raise ApiError(422, f"prompt_name {name!r} is not one of the model's prompts or routes: {known}", INVALID)
    return _ROUTE_NAMES.get(name), prompts.get(name, "")


def _entries(indices: np.ndarray, values: np.ndarray) -> list[dict[str, Any]]:
    return [{"index": index, "value": value} for index, value in zip(indices.tolist(), values.tolist(), strict=True)]


async def tei_embed_sparse(request: Request) -> Response:
    from onnxembed.serve.app import VectorsResponse

    service = request.app.state.service
    model: SparseEncoder = service.encoder
    payload = await read_json(request, service.config.max_body_bytes)
    texts = texts_field(payload, "inputs", service.config)
    truncate = optional_field(payload, "truncate", bool, False)
    task, prompt = _task_and_prompt(model, payload)
    check_truncation_direction(payload, model.manifest.truncation_side)
    del payload  # unread fields are not held while the texts wait (parsing.py)
    try:
        to_table = model._routes_to_table(task)
    except InvalidArgumentError as error:  # a route the model lacks, or no default route
        raise ApiError(422, f"{error} (prompt_name chooses the route)", INVALID) from error
    if to_table:
        if not truncate:
            over = await run_in_threadpool(model._static_tokenizer.over_limit, [prompt + text for text in texts])
            if any(over):
                limit = model.manifest.static_route.max_seq_length  # type: ignore[union-attr]
                message = f"input {over.index(True)} has more than {limit} tokens, the most the query route reads"
                raise ApiError(413, message + " (send truncate: true)", TOO_LARGE)
        rows = await run_in_threadpool(model.encode, texts, None, prompt, task=task)
        return VectorsResponse([_entries(row.indices, row.values) for row in rows])
    rows, _ = await service.embed(request, texts, prompt, truncate=truncate)
    return VectorsResponse([_entries(row.indices, row.values) for row in rows])
