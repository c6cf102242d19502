"""TEI's /embed_sparse (and ``POST /`` as the same) over real HTTP, against sentence-transformers' SparseEncoder
(the oracle): documents through the SPLADE graph, queries of an inference-free model through its table
(``prompt_name`` choosing the route), and clear 4xx for bad input."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import sparse
from tests.replicas import CORPUS, LONG_TEXT, Replica
from tests.serve.conftest import API_KEY, Server, start_server, stop_server
from tests.sparse import assert_same_vectors, exported_sparse

inference_free_splade = sparse.inference_free_splade
TEXTS = [*CORPUS[3:9], "a", "Emoji are text too 😀🎉👍🏽"]


@pytest.fixture(scope="module")
def served(
    inference_free_splade: Replica, exports_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    out = exported_sparse(inference_free_splade, exports_dir)
    server = start_server(out, tmp_path_factory.mktemp("serve-sparse") / "server.log", "--api-key", API_KEY)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def reference(inference_free_splade: Replica) -> Any:
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(inference_free_splade.path), device="cpu")


def _dense(answer: list[list[dict[str, Any]]], dim: int) -> np.ndarray:
    rows = np.zeros((len(answer), dim), dtype=np.float32)
    for row, entries in enumerate(answer):
        indices = [entry["index"] for entry in entries]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        rows[row, indices] = [entry["value"] for entry in entries]
    return rows


@pytest.mark.parametrize(
    ("path", "prompt_name", "method"),
    [
        ("/embed_sparse", None, "encode"),
        ("/embed_sparse", "document", "encode_document"),
        ("/embed_sparse", "query", "encode_query"),
        ("/", "query", "encode_query"),
        ("/", "passage", "encode_document"),
    ],
)
def test_embed_sparse_as_sentence_transformers(
    served: Server, reference: Any, path: str, prompt_name: str | None, method: str
) -> None:
    expected = getattr(reference, method)(TEXTS, convert_to_sparse_tensor=False)
    payload: dict[str, Any] = {"inputs": TEXTS, "truncate": True}
    if prompt_name is not None:
        payload["prompt_name"] = prompt_name
    reply = served.request(path, payload)
    assert reply.status == 200, reply.body
    assert_same_vectors(expected, _dense(reply.body, expected.shape[1]))
    one = served.request(path, {**payload, "inputs": TEXTS[0]})
    assert one.status == 200 and len(one.body) == 1
    np.testing.assert_allclose(_dense(one.body, expected.shape[1])[0], expected[0].numpy(), atol=1e-4)


def test_bad_input(served: Server) -> None:
    reply = served.request("/embed_sparse", {"inputs": ["a"], "prompt_name": "nope"})
    assert (
        reply.status == 422
        and "prompt_name 'nope' is not one of the model's prompts or routes" in reply.body["error"]["message"]
    )
    reply = served.request("/embed_sparse", {"inputs": [3]})
    assert reply.status == 422, reply.body
    reply = served.request("/embed_sparse", {"inputs": [LONG_TEXT], "truncate": False, "prompt_name": "document"})
    assert reply.status == 413 and "more than 40 tokens" in reply.body["error"]["message"]
    assert served.request("/embed", {"inputs": ["a"]}).status == 404  # dense routes are not mounted for SPLADE
    assert served.request("/embed_sparse", {"inputs": ["a"]}, key=None).status == 401
    form = urllib.request.Request(served.url + "/embed_sparse", data=b'{"inputs": ["a"]}', method="POST")
    form.add_header("Content-Type", "text/plain")  # what a web page may post cross-site: the gate's 415
    form.add_header("Authorization", f"Bearer {API_KEY}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form, timeout=30)
    assert refused.value.code == 415


def test_queued_results_are_kept_sparse(inference_free_splade: Replica, exports_dir: Path, reference: Any) -> None:
    """The batcher keeps a SPLADE text's result as its active terms, not a vocabulary-wide float row (~120 KB a
    text for BERT's vocabulary), while it waits for the rest of its request."""
    from onnxembed import SparseEncoder
    from onnxembed.kernels import SparseEmbedding
    from onnxembed.serve.batcher import Batcher

    model = SparseEncoder(exported_sparse(inference_free_splade, exports_dir), provider="cpu")
    batcher = Batcher(model, max_queue=100, max_run_texts=100)
    try:
        rows = batcher.submit(TEXTS, "").result(timeout=60).rows
        empty = batcher.submit([], "").result(timeout=60).rows
    finally:
        batcher.close()
    assert rows.shape == (len(TEXTS),) and all(isinstance(row, SparseEmbedding) for row in rows)
    assert all(0 < row.indices.size < model.dim for row in rows)
    expected = reference.encode_document(TEXTS, convert_to_sparse_tensor=False)
    assert_same_vectors(expected, np.stack([row.to_dense() for row in rows]))
    assert empty.shape == (0,)
