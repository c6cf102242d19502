"""The reranking routes: text-embeddings-inference's ``POST /rerank`` and Cohere's / Jina's ``POST /v1/rerank``
and ``/v2/rerank`` (the official ``cohere`` client's ``ClientV2.rerank`` speaks the latter).

In scope: the request fields of each API, the documents limit (``max_documents``, 413 past it), scores as the
model's activation gives them (``raw_scores``: the logits), results sorted best first (ties in input order).
Not in scope: batching (the shared batcher runs the pairs beside any embedding model's texts), the statuses
every route shares (parsing.py, gate.py).

TEI's ``/rerank``: ``{"query", "texts", "raw_scores", "return_text", "truncate"}`` -> ``[{"index", "score",
"text"?}]``; ``truncate`` false (TEI's default) makes a pair over max_seq_length tokens a 413. Cohere/Jina:
``{"model", "query", "documents" (strings, or objects with "text"), "top_n", "return_documents",
"max_tokens_per_doc"}`` -> ``{"id", "results": [{"index", "relevance_score", "document"?: {"text"}}], "model",
"usage", "meta"}``; ``max_tokens_per_doc`` cuts each document after that many of its tokens (the model's
tokenizer, no special tokens) before pairing, and pairs are always truncated to the model's max_seq_length
(longest text first), which also bounds max_tokens_per_doc; results carry the documents as sent.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from onnxembed.kernels.dense import activate
from onnxembed.runtime import Reranker
from onnxembed.serve.batcher import QueueFull, ShuttingDown
from onnxembed.serve.config import ApiError
from onnxembed.serve.parsing import (
    INVALID,
    TOO_LARGE,
    check_truncation_direction,
    optional_field,
    read_json,
    texts_field,
)


def _reranker(request: Request) -> Reranker:
    reranker: Reranker | None = request.app.state.service.reranker
    if reranker is None:  # routes are only mounted with a reranker; kept for safety
        raise ApiError(404, "this server has no reranker", "not_found")
    if reranker.num_labels != 1:
        raise ApiError(
            422, f"the reranker has {reranker.num_labels} labels; ranking needs a model with one score a pair", INVALID
        )
    return reranker


def _query(payload: dict[str, Any], max_chars: int) -> str:
    query = payload.get("query")
    if not isinstance(query, str) or not query:
        raise ApiError(422, "'query' is required and must be a non-empty string", INVALID)
    if len(query) > max_chars:
        raise ApiError(413, f"'query' has {len(query)} characters; the limit is {max_chars}", TOO_LARGE)
    return query


async def _scores(request: Request, query: str, documents: list[str], truncate: bool) -> tuple[np.ndarray, int]:
    """Each document's logit against ``query`` (in order) and the tokens the model read, from the shared batcher.
    ``truncate`` False: a pair over max_seq_length tokens is a 413."""
    service = request.app.state.service
    reranker = _reranker(request)
    if service.batcher is None:
        raise ApiError(503, "the server is starting", "server_busy")
    pairs = [(query, document) for document in documents]
    chars = len(query) + sum(map(len, documents))  # the pairs share the query string
    try:
        future = service.batcher.submit(pairs, "", reranker, chars)
    except (QueueFull, ShuttingDown) as error:
        raise ApiError(503, str(error), "server_busy", {"Retry-After": str(service.config.retry_after_s)}) from error
    try:
        done = await service._answer_or_hang_up(future, request.receive)
    except ShuttingDown as error:
        raise ApiError(503, str(error), "server_busy", {"Retry-After": str(service.config.retry_after_s)}) from error
    logits, tokens = done.rows[:, 0], done.tokens
    limit = reranker.max_seq_length
    if not truncate and (cut := np.flatnonzero(tokens >= limit)).size:
        # only pairs that reached the limit may be over it; counting stops past the limit (tokenize.py)
        over = await run_in_threadpool(reranker._tokenizer.over_limit, [pairs[i] for i in cut])
        for index, longer in zip(cut.tolist(), over, strict=True):
            if longer:
                message = f"text {index} with the query has more than {limit} tokens, the most the model reads"
                raise ApiError(413, message + " (send truncate: true)", TOO_LARGE)
    if not np.isfinite(logits).all():
        raise ApiError(500, "the model produced non-finite scores (NaN or inf) for this input", "server_error")
    return logits, int(tokens.sum())


def _ranked(scores: np.ndarray, top: int | None) -> list[int]:
    """Indices best first; equal scores keep input order (as CrossEncoder.rank's stable sort)."""
    order = np.argsort(-scores, kind="stable").tolist()
    return order if top is None else order[:top]


async def tei_rerank(request: Request) -> Response:
    from onnxembed.serve.app import VectorsResponse

    service = request.app.state.service
    config = service.config
    payload = await read_json(request, config.max_body_bytes)
    query = _query(payload, config.max_input_chars)
    texts = texts_field(payload, "texts", config, config.max_documents)
    raw_scores = optional_field(payload, "raw_scores", bool, False)
    return_text = optional_field(payload, "return_text", bool, False)
    truncate = optional_field(payload, "truncate", bool, False)
    check_truncation_direction(payload, service.reranker.manifest.truncation_side)
    del payload  # unread fields are not held while the texts wait (parsing.py)
    logits, _ = await _scores(request, query, texts, truncate)
    scores = logits if raw_scores else activate(logits[:, None], service.reranker.activation_fn)[:, 0]
    results = []
    for index in _ranked(scores, None):
        result: dict[str, Any] = {"index": index, "score": scores[index]}
        if return_text:
            result["text"] = texts[index]
        results.append(result)
    return VectorsResponse(results)


def _documents(payload: dict[str, Any], config: Any) -> list[str]:
    """Cohere's and Jina's ``documents``: strings, or objects whose "text" is one (Cohere v1, Jina)."""
    documents = payload.get("documents")
    if isinstance(documents, list):
        documents = [
            document["text"] if isinstance(document, dict) and isinstance(document.get("text"), str) else document
            for document in documents
        ]
    return texts_field(
        {"documents": documents} if "documents" in payload else {}, "documents", config, config.max_documents
    )


async def cohere_rerank(request: Request) -> Response:
    from onnxembed.serve.app import VectorsResponse

    service = request.app.state.service
    config = service.config
    payload = await read_json(request, config.max_body_bytes)
    optional_field(payload, "model", str)  # any name is accepted; the response names the served reranker
    query = _query(payload, config.max_input_chars)
    documents = _documents(payload, config)
    top_n = optional_field(payload, "top_n", int)
    if top_n is not None and top_n < 1:
        raise ApiError(422, f"'top_n' must be a positive integer; got {top_n}", INVALID)
    return_documents = optional_field(payload, "return_documents", bool, False)
    max_tokens = optional_field(payload, "max_tokens_per_doc", int)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(422, f"'max_tokens_per_doc' must be a positive integer; got {max_tokens}", INVALID)
    del payload
    scored = documents
    if max_tokens is not None and max_tokens < service.reranker.max_seq_length:
        scored = await run_in_threadpool(service.reranker._tokenizer.heads, documents, max_tokens)
    logits, tokens = await _scores(request, query, scored, truncate=True)
    scores = activate(logits[:, None], service.reranker.activation_fn)[:, 0]
    results = []
    for index in _ranked(scores, top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    return VectorsResponse(
        {
            "id": str(uuid.uuid4()),
            "results": results,
            "model": config.reranker_name,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }
    )
