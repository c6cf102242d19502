"""Cohere's embed API (/v2/embed, /v1/embed) over real HTTP, through the official ``cohere`` client where it is
installed: every embedding type against sentence-transformers' ``encode`` and ``quantize_embeddings`` on the
same texts, input_type choosing the model's prompts, truncate and max_tokens, and the refusals."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.replicas import CORPUS, LONG_TEXT, Replica, exported
from tests.serve.conftest import API_KEY, Server, start_server, stop_server

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install 'onnxembed[serve]'")

TEXTS = CORPUS[:6] + ["日本語の文です", "emoji 🙂 and more"]


@pytest.fixture(scope="module")
def served(mpnet_prompts: Replica, exports_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = exported(mpnet_prompts, exports_dir)
    running = start_server(out, tmp_path_factory.mktemp("cohere") / "server.log", "--api-key", API_KEY)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def reference(mpnet_prompts: Replica) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(mpnet_prompts.path), device="cpu")


def test_official_client_every_embedding_type(served: Server, reference: Any) -> None:
    cohere = pytest.importorskip("cohere", reason="the cohere client is in the dev extra")
    from sentence_transformers.quantization import quantize_embeddings

    client = cohere.ClientV2(base_url=served.url, api_key=API_KEY)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    for input_type, prompt_name in [("search_query", "query"), ("search_document", "document")]:
        response = client.embed(texts=TEXTS, model="m", input_type=input_type, embedding_types=types)
        expected = reference.encode(TEXTS, prompt_name=prompt_name)
        embeddings = response.embeddings
        np.testing.assert_allclose(np.array(embeddings.float_), expected, atol=1e-5, rtol=0)
        decoded = np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in embeddings.base64])
        np.testing.assert_allclose(decoded, expected, atol=1e-5, rtol=0)
        for kind in ("binary", "ubinary"):
            np.testing.assert_array_equal(np.array(getattr(embeddings, kind)), quantize_embeddings(expected, kind))
        # int8: each vector scaled by its own largest magnitude (fp32 noise may move a step by one)
        scaled = np.round(127 * expected / np.abs(expected).max(axis=1, keepdims=True)).astype(int)
        assert np.abs(np.array(embeddings.int8) - scaled).max() <= 1
        assert np.abs(np.array(embeddings.uint8) - (scaled + 128)).max() <= 1
        int8 = np.array(embeddings.int8, dtype=np.float64)
        cosines = (int8 * expected).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosines.min() > 0.999
        alone = client.embed(texts=TEXTS[:1], model="m", input_type=input_type, embedding_types=["int8", "uint8"])
        assert alone.embeddings.int8[0] == embeddings.int8[0] and alone.embeddings.uint8[0] == embeddings.uint8[0]
        assert response.response_type == "embeddings_by_type" and list(response.texts) == TEXTS
        assert response.meta.billed_units.input_tokens > len(TEXTS)


def test_v2_inputs_with_one_text_part_each(served: Server, reference: Any) -> None:
    cohere = pytest.importorskip("cohere", reason="the cohere client is in the dev extra")
    from cohere.types import EmbedInput, TextEmbedContent

    client = cohere.ClientV2(base_url=served.url, api_key=API_KEY)
    inputs = [EmbedInput(content=[TextEmbedContent(text=text)]) for text in TEXTS[:4]]
    response = client.embed(inputs=inputs, model="m", input_type="search_query", embedding_types=["float"])
    expected = reference.encode(TEXTS[:4], prompt_name="query")
    np.testing.assert_allclose(np.array(response.embeddings.float_), expected, atol=1e-5, rtol=0)


def test_v1_refuses_v2s_inputs(served: Server) -> None:
    response = served.request("/v1/embed", {"inputs": [{"content": [{"type": "text", "text": "a"}]}]})
    assert response.status == 422 and "'inputs' is v2's" in response.body["error"]["message"], response.body


def test_v1_floats_and_the_default_prompt(served: Server, reference: Any) -> None:
    response = served.request("/v1/embed", {"texts": TEXTS[:3]})  # no input_type: the default prompt (query)
    assert response.status == 200, response.body
    assert response.body["response_type"] == "embeddings_floats"
    expected = reference.encode(TEXTS[:3])
    np.testing.assert_allclose(np.array(response.body["embeddings"]), expected, atol=1e-5, rtol=0)
    by_type = served.request("/v1/embed", {"texts": TEXTS[:3], "embedding_types": ["float"]})
    assert by_type.body["response_type"] == "embeddings_by_type"
    np.testing.assert_allclose(np.array(by_type.body["embeddings"]["float"]), expected, atol=1e-5, rtol=0)


def test_truncate_max_tokens_and_output_dimension(served: Server, reference: Any) -> None:
    body = {"texts": [LONG_TEXT], "input_type": "search_document"}
    cut = served.request("/v2/embed", body)  # truncate END by default
    expected = reference.encode([LONG_TEXT], prompt_name="document")
    np.testing.assert_allclose(np.array(cut.body["embeddings"]["float"]), expected, atol=1e-5, rtol=0)
    assert served.request("/v2/embed", {**body, "truncate": "NONE"}).status == 413
    assert served.request("/v2/embed", {**body, "truncate": "START"}).status == 422  # the model cuts the end
    offsets = reference.tokenizer(LONG_TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    head = LONG_TEXT[: offsets[4][1]]  # the text through its fifth token
    few = served.request("/v2/embed", {**body, "max_tokens": 5})
    np.testing.assert_allclose(
        np.array(few.body["embeddings"]["float"]), reference.encode([head], prompt_name="document"), atol=1e-5, rtol=0
    )
    assert served.request("/v2/embed", {**body, "max_tokens": 5, "truncate": "NONE"}).status == 413
    fits = served.request("/v2/embed", {**body, "texts": [head], "max_tokens": 5, "truncate": "NONE"})
    assert fits.status == 200, fits.body
    short = served.request("/v2/embed", {**body, "output_dimension": 8})
    rows = np.array(short.body["embeddings"]["float"])
    np.testing.assert_allclose(rows, expected[:, :8] / np.linalg.norm(expected[:, :8]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"texts": ["a"]}, "input_type"),  # required on v2, as Cohere's API
        ({"texts": ["a"], "input_type": "image"}, "input_type"),
        ({"texts": ["a"], "input_type": "search_query", "embedding_types": ["float16"]}, "embedding_types"),
        ({"texts": ["a"], "input_type": "search_query", "embedding_types": []}, "embedding_types"),
        ({"images": ["data:image/png;base64,AAAA"], "input_type": "image"}, "images"),
        (
            {"inputs": [{"content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}], "input_type": "image"},
            "'image_url' part",
        ),
        (
            {
                "inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "input_type": "search_query",
            },
            "2 text parts",
        ),
        ({"inputs": ["a"], "input_type": "search_query"}, "'inputs'[0]"),
        ({"inputs": "a", "input_type": "search_query"}, "'inputs' must be a list of objects"),
        (
            {"inputs": [{"content": [{"type": "text", "text": "a"}]}], "texts": ["a"], "input_type": "search_query"},
            "not both",
        ),
        (
            {"inputs": [{"content": [{"type": "text", "text": ""}]}], "input_type": "search_query"},
            "'inputs'[0] is empty",
        ),
        ({"texts": ["a"], "input_type": "search_query", "max_tokens": 0}, "max_tokens"),
        ({"texts": ["a"], "input_type": "search_query", "output_dimension": 4096}, "output_dimension"),
    ],
)
def test_refusals_name_the_field(served: Server, payload: dict[str, Any], message: str) -> None:
    response = served.request("/v2/embed", payload)
    assert response.status == 422 and message in response.body["error"]["message"], response.body
