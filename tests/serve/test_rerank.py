"""The reranking routes over real HTTP, against CrossEncoder (the oracle): TEI's /rerank and Cohere/Jina's
/v1 and /v2/rerank (also through the official cohere client), a reranker beside an embedding model in one
process and a reranker served alone (``POST /`` is then /rerank), and clear 4xx for bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import rerankers
from tests.replicas import CORPUS, LONG_TEXT, Replica
from tests.rerankers import exported_reranker
from tests.serve.conftest import API_KEY, Server, start_server, stop_server

bert_reranker, nli_bert = rerankers.bert_reranker, rerankers.nli_bert
QUERY = CORPUS[4]
DOCUMENTS = [*CORPUS[10:16], "a", "Emoji are text too 😀🎉👍🏽"]
MAX_DOCUMENTS = 8


@pytest.fixture(scope="module")
def reranker_dir(bert_reranker: Replica, exports_dir: Path) -> Path:
    return exported_reranker(bert_reranker, exports_dir)


@pytest.fixture(scope="module")
def reference(bert_reranker: Replica) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(bert_reranker.path), device="cpu")


@pytest.fixture(scope="module")
def both(tiny_export: Path, reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An embedding model with a reranker beside it, with an API key and a small documents limit."""
    log = tmp_path_factory.mktemp("serve-rerank") / "both.log"
    options = ["--reranker", str(reranker_dir), "--api-key", API_KEY, f"--max-documents={MAX_DOCUMENTS}"]
    server = start_server(tiny_export, log, *options, "--max-input-chars=20000")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def alone(reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(reranker_dir, tmp_path_factory.mktemp("serve-rerank") / "alone.log", "--api-key", API_KEY)
    try:
        yield server
    finally:
        stop_server(server)


def test_tei_rerank_scores_and_order(both: Server, reference: Any) -> None:
    import torch

    expected = reference.predict([(QUERY, document) for document in DOCUMENTS])
    reply = both.request("/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert reply.status == 200, reply.body
    assert [row["index"] for row in reply.body] == list(np.argsort(-expected, kind="stable"))
    for row in reply.body:
        assert abs(row["score"] - expected[row["index"]]) <= 1e-4
        assert row["text"] == DOCUMENTS[row["index"]]
    logits = reference.predict([(QUERY, document) for document in DOCUMENTS], activation_fn=torch.nn.Identity())
    raw = both.request("/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True})
    assert all(abs(row["score"] - logits[row["index"]]) <= 1e-4 for row in raw.body)
    assert "text" not in raw.body[0]


def test_cohere_and_jina_shape(both: Server, reference: Any) -> None:
    expected = reference.rank(QUERY, DOCUMENTS)
    for path in ("/v1/rerank", "/v2/rerank"):
        reply = both.request(path, {"model": "any", "query": QUERY, "documents": DOCUMENTS, "top_n": 3})
        assert reply.status == 200, reply.body
        results = reply.body["results"]
        assert [row["index"] for row in results] == [row["corpus_id"] for row in expected[:3]]
        assert all(
            abs(row["relevance_score"] - float(ex["score"])) <= 1e-4 for row, ex in zip(results, expected, strict=False)
        )
        assert reply.body["model"] == both.request("/v1/models").body["data"][1]["id"]
        assert reply.body["usage"]["total_tokens"] > 0
    # Jina and Cohere v1 send documents as objects with "text", and may ask for them back
    objects = [{"text": document} for document in DOCUMENTS]
    reply = both.request("/v1/rerank", {"query": QUERY, "documents": objects, "return_documents": True})
    assert [row["document"]["text"] for row in reply.body["results"]] == [
        DOCUMENTS[row["corpus_id"]] for row in expected
    ]


def test_official_cohere_client(both: Server, reference: Any) -> None:
    cohere = pytest.importorskip("cohere", reason="the cohere client is in the dev extra")
    client = cohere.ClientV2(base_url=both.url, api_key=API_KEY)
    response = client.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=4)
    expected = reference.rank(QUERY, DOCUMENTS)[:4]
    assert [result.index for result in response.results] == [row["corpus_id"] for row in expected]
    assert all(
        abs(result.relevance_score - float(row["score"])) <= 1e-4
        for result, row in zip(response.results, expected, strict=False)
    )
    with pytest.raises(cohere.core.api_error.ApiError) as error:
        cohere.ClientV2(base_url=both.url, api_key="wrong").rerank(model="r", query=QUERY, documents=DOCUMENTS)
    assert error.value.status_code == 401


def test_root_route_follows_the_served_model(both: Server, alone: Server, reference: Any) -> None:
    assert both.request("/", {"inputs": ["a text"]}).status == 200  # the embedding model's /embed
    ranked = alone.request("/", {"query": QUERY, "texts": DOCUMENTS})
    assert ranked.status == 200 and ranked.body == alone.request("/rerank", {"query": QUERY, "texts": DOCUMENTS}).body
    assert alone.request("/embed", {"inputs": ["a"]}).status == 404
    assert [model["id"] for model in alone.request("/v1/models").body["data"]] == [alone_name(alone)]
    assert len(both.request("/v1/models").body["data"]) == 2


def alone_name(server: Server) -> str:
    return str(server.request("/v2/rerank", {"query": "q", "documents": ["d"]}).body["model"])


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/rerank", {"query": QUERY, "texts": []}, 422, "'texts' must not be an empty list"),
        ("/rerank", {"query": QUERY, "texts": ["d"] * (MAX_DOCUMENTS + 1)}, 413, "'texts' has 9 texts; the limit is 8"),
        ("/rerank", {"query": QUERY, "texts": ["ok", 3]}, 422, r"'texts'\[1\] must be a string; got integer"),
        ("/rerank", {"texts": ["d"]}, 422, "'query' is required and must be a non-empty string"),
        ("/rerank", {"query": "q" * 20_001, "texts": ["d"]}, 413, "'query' has 20001 characters; the limit is 20000"),
        ("/rerank", {"query": QUERY, "texts": ["d"], "raw_scores": "yes"}, 422, "'raw_scores' must be a boolean"),
        (
            "/rerank",
            {"query": QUERY, "texts": ["d"], "truncate": True, "truncation_direction": "Left"},
            422,
            "truncation_direction 'Left' is not supported: this model truncates on the right",
        ),
        (
            "/rerank",
            {"query": QUERY, "texts": [LONG_TEXT[:5000]]},
            413,
            "text 0 with the query has more than 63 tokens",
        ),
        ("/v2/rerank", {"query": QUERY, "documents": []}, 422, "'documents' must not be an empty list"),
        ("/v2/rerank", {"query": QUERY}, 422, "'documents' is required"),
        ("/v2/rerank", {"query": QUERY, "documents": [{"txt": "x"}]}, 422, r"'documents'\[0\] must be a string"),
        ("/v2/rerank", {"query": QUERY, "documents": ["d"], "top_n": 0}, 422, "'top_n' must be a positive integer"),
        ("/v1/rerank", {"query": 5, "documents": ["d"]}, 422, "'query' is required and must be a non-empty string"),
        (
            "/v2/rerank",
            {"query": QUERY, "documents": ["d"], "max_tokens_per_doc": 0},
            422,
            "'max_tokens_per_doc' must be a positive integer; got 0",
        ),
    ],
)
def test_bad_input_is_a_clear_4xx(both: Server, path: str, payload: Any, status: int, message: str) -> None:
    import re

    reply = both.request(path, payload)
    assert reply.status == status, reply.body
    assert re.search(message, reply.body["error"]["message"]), reply.body


def test_long_pairs_truncate_when_asked(both: Server, reference: Any) -> None:
    pairs = [(QUERY, LONG_TEXT[:5000]), (LONG_TEXT, "short")]
    expected = reference.predict(pairs)
    reply = both.request("/rerank", {"query": QUERY, "texts": [LONG_TEXT[:5000]], "truncate": True})
    assert abs(reply.body[0]["score"] - expected[0]) <= 1e-4
    cohere = both.request("/v2/rerank", {"query": LONG_TEXT[:20_000], "documents": ["short"]})  # always truncated
    assert abs(cohere.body["results"][0]["relevance_score"] - expected[1]) <= 1e-4


def test_max_tokens_per_doc_cuts_documents(both: Server, reference: Any, bert_reranker: Replica) -> None:
    """Cohere's max_tokens_per_doc: each document scored as its first N tokens, cut where transformers' tokenizer
    of the source says those tokens end; the results carry the documents as sent."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bert_reranker.path))
    documents = [CORPUS[10], CORPUS[12] * 3, LONG_TEXT[:2000], "a"]
    for max_tokens in (3, 12):
        offsets = tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        cut = [
            text[: spans[max_tokens - 1][1]] if len(spans) > max_tokens else text
            for text, spans in zip(documents, offsets, strict=True)
        ]
        expected = reference.predict([(QUERY, text) for text in cut])
        whole = reference.predict([(QUERY, text) for text in documents])
        assert np.abs(expected - whole).max() > 1e-3  # the cut changes the scores: the test can tell
        payload = {"query": QUERY, "documents": documents, "max_tokens_per_doc": max_tokens, "return_documents": True}
        reply = both.request("/v2/rerank", payload)
        assert reply.status == 200, reply.body
        by_index = {row["index"]: row for row in reply.body["results"]}
        assert max(abs(by_index[i]["relevance_score"] - expected[i]) for i in range(len(documents))) <= 1e-4
        assert [by_index[i]["document"]["text"] for i in range(len(documents))] == documents
    # past max_seq_length it changes nothing: a pair is already truncated to fewer of the document's tokens
    reply = both.request("/v2/rerank", {"query": QUERY, "documents": documents, "max_tokens_per_doc": 4096})
    scores = {row["index"]: row["relevance_score"] for row in reply.body["results"]}
    assert max(abs(scores[i] - whole[i]) for i in range(len(documents))) <= 1e-4


def test_metrics_and_auth_cover_rerank(both: Server) -> None:
    assert both.request("/rerank", {"query": "q", "texts": ["d"]}, key=None).status == 401
    assert both.request("/rerank", {"query": "q", "texts": ["d"]}).status == 200
    metrics = both.request("/metrics").body
    assert 'onnxembed_requests_total{endpoint="/rerank",status="200"}' in metrics
    assert 'onnxembed_requests_total{endpoint="/rerank",status="401"}' in metrics


def test_a_classifier_is_refused_at_start(
    nli_bert: Replica, exports_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3-label CrossEncoder would answer every rerank route with 422: the server refuses it before it listens."""
    import uvicorn

    from onnxembed.errors import InvalidArgumentError
    from onnxembed.serve import serve

    def started(self: Any) -> None:
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", started)
    with pytest.raises(InvalidArgumentError, match="gives 3 scores a pair"):
        serve(exported_reranker(nli_bert, exports_dir), host="127.0.0.1", port=0)
