"""``onnxembed serve`` over real HTTP on loopback: every vector against the offline Encoder, under
concurrency, in both encodings; each bad request's documented status; the API key; SIGTERM under load.

The oracle is ``Encoder(tiny_export).encode`` run in this process (itself checked against
sentence-transformers in tests/runtime): the server must hand each request exactly its own rows.
"""

from __future__ import annotations

import base64
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import Encoder
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS, Replica
from tests.serve.conftest import API_KEY, LIMITS, Server

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install 'onnxembed[serve]'")
pytest.importorskip("starlette", reason="the server needs the serve extra: pip install 'onnxembed[serve]'")
pytest.importorskip("orjson", reason="the server needs the serve extra: pip install 'onnxembed[serve]'")

# Everything but "" (the server rejects empty strings, as OpenAI and TEI do); LONG_TEXT is truncated.
TEXTS = [text for text in MIXED_TEXTS if text] + CORPUS[12:40]
ATOL = 1e-5


@pytest.fixture(scope="module")
def encoder(tiny_export: Path) -> Encoder:
    return Encoder(tiny_export)


def _decode(value: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype="<f4")


def _vectors(response: Any, kind: str) -> np.ndarray:
    """The rows of a 200 response of /v1/embeddings (float or base64) or /embed, in index order."""
    if kind == "embed":
        return np.array(response, dtype=np.float32)
    data = response["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    assert all(item["object"] == "embedding" for item in data)
    if kind == "base64":
        return np.stack([_decode(item["embedding"]) for item in data])
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def _send(server: Server, kind: str, texts: list[str]) -> Any:
    if kind == "embed":
        return server.request("/embed", {"inputs": texts, "truncate": True})  # TEXTS holds LONG_TEXT
    return server.request("/v1/embeddings", {"input": texts, "model": "anything", "encoding_format": kind})


def _expected(encoder: Encoder, kind: str, texts: list[str]) -> np.ndarray:
    return encoder.encode(texts, normalize_embeddings=kind == "embed")  # TEI normalizes by default


def test_openai_response_shape_and_values(server: Server, encoder: Encoder, st_tokens: Any) -> None:
    response = server.request("/v1/embeddings", {"input": TEXTS[:5], "model": "whatever"})
    assert response.status == 200
    body = response.body
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == Path(encoder.model_dir).name
    assert all(set(item) == {"object", "index", "embedding"} for item in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == st_tokens(TEXTS[:5])
    np.testing.assert_allclose(_vectors(body, "float"), encoder.encode(TEXTS[:5]), atol=ATOL)


@pytest.fixture(scope="module")
def st_tokens(chinese_bert: Replica) -> Any:
    """Tokens sentence-transformers feeds its model for some texts (truncated, special tokens included); the
    server's model is chinese_bert's export."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(chinese_bert.path), device="cpu")
    return lambda texts: int(model.tokenize(texts)["attention_mask"].sum())


def test_single_string_and_usage_counts_truncated_tokens(server: Server, encoder: Encoder) -> None:
    response = server.request("/v1/embeddings", {"input": LONG_TEXT})
    assert response.status == 200
    assert len(response.body["data"]) == 1
    assert response.body["usage"]["prompt_tokens"] == encoder.max_seq_length
    np.testing.assert_allclose(_vectors(response.body, "float")[0], encoder.encode(LONG_TEXT), atol=ATOL)


def test_base64_is_little_endian_float32(server: Server, encoder: Encoder) -> None:
    floats = server.request("/v1/embeddings", {"input": TEXTS[:4]}).body
    packed = server.request("/v1/embeddings", {"input": TEXTS[:4], "encoding_format": "base64"}).body
    np.testing.assert_array_equal(_vectors(packed, "base64"), _vectors(floats, "float"))
    np.testing.assert_allclose(_vectors(packed, "base64"), encoder.encode(TEXTS[:4]), atol=ATOL)


def test_dimensions_truncate_and_renormalize(server: Server, encoder: Encoder) -> None:
    response = server.request("/v1/embeddings", {"input": TEXTS[:6], "dimensions": 8})
    assert response.status == 200
    expected = encoder.encode(TEXTS[:6], truncate_dim=8, normalize_embeddings=True)
    np.testing.assert_allclose(_vectors(response.body, "float"), expected, atol=ATOL)


def test_tei_embed_normalize_and_truncate(server: Server, encoder: Encoder) -> None:
    normalized = server.request("/embed", {"inputs": TEXTS[:6]})
    raw = server.request("/embed", {"inputs": TEXTS[:6], "normalize": False})
    assert normalized.status == raw.status == 200
    expected = encoder.encode(TEXTS[:6], normalize_embeddings=True)
    np.testing.assert_allclose(_vectors(normalized.body, "embed"), expected, atol=ATOL)
    np.testing.assert_allclose(_vectors(raw.body, "embed"), encoder.encode(TEXTS[:6]), atol=ATOL)
    # text-embeddings-inference: an input over max_seq_length is 413 unless truncate is true
    assert server.request("/embed", {"inputs": [LONG_TEXT]}).status == 413
    truncated = server.request("/embed", {"inputs": [LONG_TEXT], "truncate": True, "normalize": False})
    np.testing.assert_allclose(_vectors(truncated.body, "embed"), encoder.encode([LONG_TEXT]), atol=ATOL)


def test_tei_truncation_direction_of_the_model_is_accepted(server: Server, encoder: Encoder) -> None:
    response = server.request("/embed", {"inputs": [LONG_TEXT], "truncate": True, "truncation_direction": "Right"})
    assert response.status == 200, response.body
    np.testing.assert_allclose(_vectors(response.body, "embed"), _expected(encoder, "embed", [LONG_TEXT]), atol=ATOL)


def test_tei_refuses_exactly_the_inputs_over_the_limit(server: Server, encoder: Encoder, st_tokens: Any) -> None:
    """The server learns token counts from its batches and recounts only texts that reached the limit:
    a text of exactly max_seq_length tokens passes, one token more is 413, whichever input it is."""
    limit = encoder.max_seq_length
    specials = st_tokens([""])
    word = next(word for word in LONG_TEXT.split() if st_tokens([f"{word} {word}"]) == specials + 2)  # one token
    at_limit, over = (" ".join([word] * (limit - specials + extra)) for extra in (0, 1))
    assert st_tokens([at_limit]) == limit and st_tokens([over]) == limit  # sentence-transformers cuts `over`
    response = server.request("/embed", {"inputs": [TEXTS[0], at_limit], "normalize": False})
    assert response.status == 200
    np.testing.assert_allclose(_vectors(response.body, "embed"), encoder.encode([TEXTS[0], at_limit]), atol=ATOL)
    refused = server.request("/embed", {"inputs": [TEXTS[0], at_limit, over]})
    assert refused.status == 413 and "input 2 has more than" in refused.body["error"]["message"]


def test_similarity(server: Server, encoder: Encoder) -> None:
    for body in (
        {"source_sentence": TEXTS[0], "sentences": TEXTS[1:5]},
        {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:5]}},
    ):
        response = server.request("/similarity", body)
        assert response.status == 200
        embeddings = encoder.encode(TEXTS[:5])
        expected = encoder.similarity(embeddings[:1], embeddings[1:])[0]
        np.testing.assert_allclose(response.body, expected, atol=ATOL)


def test_models_health_metrics(server: Server) -> None:
    models = server.request("/v1/models")
    assert models.status == 200 and models.body["data"][0]["object"] == "model"
    assert server.request("/health", key=None).status == 200
    server.request("/embed", {"inputs": ["metrics"]})
    metrics = server.request("/metrics")
    assert metrics.status == 200
    for name in (
        'onnxembed_requests_total{endpoint="/embed",status="200"}',
        "onnxembed_queue_depth",
        "onnxembed_batch_size_bucket",
        "onnxembed_batch_tokens_bucket",
        "onnxembed_inference_duration_seconds_bucket",
        "onnxembed_request_duration_seconds_bucket",
    ):
        assert name in metrics.body


@pytest.mark.parametrize("key", [None, "wrong"])
def test_api_key(server: Server, key: str | None) -> None:
    for path, payload in (("/v1/embeddings", {"input": "x"}), ("/embed", {"inputs": "x"}), ("/metrics", None)):
        response = server.request(path, payload, key=key)
        assert response.status == 401
        assert response.body["error"]["type"] == "unauthorized"
    assert server.request("/embed", {"inputs": "x"}, key=API_KEY).status == 200


BAD_REQUESTS: list[tuple[str, Any, bytes | None, int]] = [
    ("/v1/embeddings", None, b"{not json", 400),
    ("/v1/embeddings", None, b'{"input": "\xff\xfe"}', 400),
    ("/v1/embeddings", None, b"[" * 100_000, 400),
    ("/v1/embeddings", ["a list"], None, 422),
    ("/v1/embeddings", {}, None, 422),
    ("/v1/embeddings", {"input": []}, None, 422),
    ("/v1/embeddings", {"input": ""}, None, 422),
    ("/v1/embeddings", {"input": ["ok", ""]}, None, 422),
    ("/v1/embeddings", None, b'{"input": ["ok", "lone \\ud800 surrogate"]}', 400),  # orjson refuses it
    ("/v1/embeddings", {"input": [1, 2, 3]}, None, 422),  # token ids are not supported
    ("/v1/embeddings", {"input": 5}, None, 422),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, None, 422),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, None, 422),
    ("/v1/embeddings", {"input": "x", "dimensions": 10_000}, None, 422),
    ("/v1/embeddings", {"input": "x", "dimensions": "8"}, None, 422),
    ("/v1/embeddings", {"input": "x", "prompt_name": "nope"}, None, 422),
    ("/v1/embeddings", {"input": ["x"] * (LIMITS["max_inputs"] + 1)}, None, 413),
    ("/v1/embeddings", {"input": "x" * (LIMITS["max_input_chars"] + 1)}, None, 413),
    ("/v1/embeddings", None, b'{"input": "' + b"y" * LIMITS["max_body_bytes"] + b'"}', 413),
    ("/embed", {"inputs": "x", "normalize": "yes"}, None, 422),
    ("/embed", {"inputs": "x", "truncate": 1}, None, 422),
    ("/embed", {"inputs": "x", "truncate": True, "truncation_direction": "Left"}, None, 422),  # the model cuts right
    ("/embed", {"inputs": "x", "truncate": True, "truncation_direction": "sideways"}, None, 422),
    (
        "/similarity",
        {"source_sentence": "x", "sentences": ["y"], "truncate": True, "truncation_direction": "Left"},
        None,
        422,
    ),
    ("/similarity", {"source_sentence": "x"}, None, 422),
    ("/similarity", {"source_sentence": 3, "sentences": ["y"]}, None, 422),
    ("/similarity", {"source_sentence": "x", "sentences": []}, None, 422),
    ("/no-such-route", {"input": "x"}, None, 404),
    ("/v1/embeddings/", {"input": "x"}, None, 404),  # not a redirect to a Location built from the Host header
]


@pytest.mark.parametrize(("path", "payload", "raw", "status"), BAD_REQUESTS)
def test_bad_request_gets_json_error(server: Server, path: str, payload: Any, raw: bytes | None, status: int) -> None:
    response = server.request(path, payload, raw=raw)
    assert response.status == status, response.body
    assert isinstance(response.body["error"]["message"], str) and response.body["error"]["type"]
    # the worker is alive and correct after it
    assert server.request("/embed", {"inputs": "still alive"}).status == 200


def test_wrong_method_is_405(server: Server) -> None:
    response = server.request("/embed")
    assert response.status == 405 and "error" in response.body


def test_concurrent_clients_get_their_own_rows(server: Server, encoder: Encoder) -> None:
    """8 clients x 10 requests, 1-8 texts each, three response kinds: nothing lost, nothing swapped."""

    def client(seed: int) -> list[tuple[str, list[str], Any]]:
        rng = random.Random(seed)
        results = []
        for _ in range(10):
            kind = rng.choice(["float", "base64", "embed"])
            texts = rng.sample(TEXTS, rng.randint(1, 8))
            results.append((kind, texts, _send(server, kind, texts)))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [item for future in [pool.submit(client, seed) for seed in range(8)] for item in future.result()]
    assert len(results) == 80
    for kind, texts, response in results:
        assert response.status == 200, response.body
        np.testing.assert_allclose(_vectors(response.body, kind), _expected(encoder, kind, texts), atol=ATOL)
    batch_sizes = [line for line in server.request("/metrics").body.splitlines() if "batch_size_count" in line]
    assert batch_sizes, "the worker reported no batches"


def test_full_queue_is_503_with_retry_after(make_server: Any, tiny_export: Path, encoder: Encoder) -> None:
    """A queue of 16 texts and 16 clients sending 16 long texts each: some are turned away, none is wrong."""
    busy = make_server(tiny_export, "--max-queue", "16")  # --max-inputs follows it down to 16
    texts = [LONG_TEXT[offset : offset + 2000] for offset in range(0, 3200, 200)]
    expected = encoder.encode(texts)
    statuses: list[int] = []
    for _ in range(10):  # bounded: stop once the queue has overflowed
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(lambda _: busy.request("/v1/embeddings", {"input": texts}), range(16)))
        for response in responses:
            statuses.append(response.status)
            if response.status == 200:
                np.testing.assert_allclose(_vectors(response.body, "float"), expected, atol=ATOL)
            else:
                assert response.status == 503, response.body
                assert response.headers["retry-after"] == "1"
                assert response.body["error"]["type"] == "server_busy"
        if 503 in statuses:
            break
    assert 503 in statuses and 200 in statuses


def test_sigterm_under_load_finishes_accepted_requests(make_server: Any, tiny_export: Path, encoder: Encoder) -> None:
    server = make_server(tiny_export)
    results: list[tuple[str, list[str], Any]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):  # bounded; ends early once the server stops answering
            kind = rng.choice(["float", "base64", "embed"])
            texts = rng.sample(TEXTS, rng.randint(1, 8))
            try:
                response = _send(server, kind, texts)
            except OSError:  # refused or reset once the server stops listening
                return
            with lock:
                results.append((kind, texts, response))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0, server.log.read_text()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert results, "no request was answered before SIGTERM"
    for kind, texts, response in results:
        if response.status == 200:
            np.testing.assert_allclose(_vectors(response.body, kind), _expected(encoder, kind, texts), atol=ATOL)
        else:  # accepted while shutting down: turned away cleanly, never a 500
            assert response.status == 503, response.body
    assert sum(response.status == 200 for _, _, response in results) > 0


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "onnxembed", "serve", str(tmp_path / "missing"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("onnxembed serve: error:") and completed.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("provider", "workers", "threads", "expected"),
    [
        ("CPUExecutionProvider", None, None, (4, 1)),  # one single-threaded worker per core (4 here)
        ("CPUExecutionProvider", None, 2, (1, 2)),  # asking for threads keeps one worker
        ("CPUExecutionProvider", 3, None, (3, 1)),
        ("CPUExecutionProvider", 1, None, (1, None)),  # one worker: onnxruntime's threads, one per core
        ("CPUExecutionProvider", 2, 2, (2, 2)),  # both given: as given
        ("CUDAExecutionProvider", None, None, (2, None)),  # one tokenizes the next take while one runs
        ("CUDAExecutionProvider", 1, None, (1, None)),
    ],
)
def test_worker_threads_defaults(
    monkeypatch: pytest.MonkeyPatch, provider: str, workers: int | None, threads: int | None, expected: Any
) -> None:
    import onnxembed.serve

    monkeypatch.setattr(onnxembed.serve, "_usable_cores", lambda: 4)
    assert onnxembed.serve.worker_threads(provider, workers, threads) == expected


def test_one_core_gets_one_worker_on_all_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxembed.serve

    monkeypatch.setattr(onnxembed.serve, "_usable_cores", lambda: 1)
    assert onnxembed.serve.worker_threads("CPUExecutionProvider", None, None) == (1, None)


def test_one_worker_on_all_threads_serves_concurrent_clients(
    make_server: Any, tiny_export: Path, encoder: Encoder
) -> None:
    single = make_server(tiny_export, "--workers", "1")
    jobs = [TEXTS[i : i + 1 + i % 6] for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda texts: single.request("/v1/embeddings", {"input": texts}), jobs))
    for texts, response in zip(jobs, responses, strict=True):
        assert response.status == 200, response.body
        np.testing.assert_allclose(_vectors(response.body, "float"), encoder.encode(texts), atol=ATOL)


def test_non_finite_vectors_are_a_500_not_nulls(make_server: Any, tiny_export: Path, tmp_path: Path) -> None:
    """A graph whose output is NaN: the client gets a JSON 500 saying so, never a 200 with nulls in it."""
    import shutil

    import onnx
    from onnx import numpy_helper

    broken = tmp_path / "nan-model"
    shutil.copytree(tiny_export, broken)
    graph_file = broken / "onnx" / "model.onnx"
    model = onnx.load(str(graph_file))
    for index, tensor in enumerate(model.graph.initializer):  # poison every float weight
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), tensor.name))
    onnx.save(model, str(graph_file))
    server = make_server(broken, "--variant", "fp32")
    for path, payload in (("/v1/embeddings", {"input": ["hello"]}), ("/embed", {"inputs": "hello"})):
        response = server.request(path, payload)
        assert response.status == 500, response.body
        assert "non-finite" in response.body["error"]["message"]
    assert server.request("/v1/embeddings", {"input": "hello", "encoding_format": "base64"}).status == 500
