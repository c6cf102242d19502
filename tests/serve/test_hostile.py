"""Hostile clients against a real ``onnxembed serve`` on loopback, over raw sockets: slow headers, trickled
bodies, hang-ups mid-body and mid-queue, oversized and lying Content-Lengths, huge integers, deep nesting,
invalid UTF-8, 10,000 tiny inputs, 8 MiB of one-character words, wrong keys and media types. Each gets its
documented status (app.py's table), nothing is a 500, and a normal request afterwards is answered exactly.

Every loop here is bounded in count, every socket has a timeout; the server's own request timeout is 1 s.
"""

from __future__ import annotations

import errno
import gzip
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import Encoder
from tests.conftest import CORPUS
from tests.serve.conftest import API_KEY, Server, start_server, stop_server

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install 'onnxembed[serve]'")

BODY_LIMIT = 9 << 20
OPTIONS = {
    "api-key": API_KEY,
    "request-timeout": "1",
    "max-connections": "24",
    "max-concurrent-requests": "4",
    "max-body-bytes": str(BODY_LIMIT),
    "max-inputs": "10000",
    "max-queue": "10000",
}
SOCKET_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    options = [f"--{name}={value}" for name, value in OPTIONS.items()]
    running = start_server(tiny_export, tmp_path_factory.mktemp("hostile") / "server.log", *options)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def encoder(tiny_export: Path) -> Encoder:
    return Encoder(tiny_export)


def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)


def _head(path: str, length: int | None, content_type: str | None = "application/json", key: str = API_KEY) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    lines += [f"Content-Type: {content_type}"] if content_type is not None else []
    lines += [f"Content-Length: {length}"] if length is not None else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, headers in lower case, body); status 0 when the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def _exchange(server: Server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(server) as sock:
        sock.sendall(raw)
        return _read_response(sock)


def _post(server: Server, path: str, body: bytes, **head: Any) -> tuple[int, dict[str, str], Any]:
    status, headers, data = _exchange(server, _head(path, len(body), **head) + body)
    try:
        return status, headers, json.loads(data)
    except ValueError:
        return status, headers, data


def _assert_healthy(server: Server, encoder: Encoder) -> None:
    """A normal request is answered with exactly the offline Encoder's rows, and no 500 was ever counted."""
    texts = CORPUS[:5]
    response = server.request("/v1/embeddings", {"input": texts})
    assert response.status == 200, response.body
    rows = np.array([item["embedding"] for item in response.body["data"]], dtype=np.float32)
    np.testing.assert_allclose(rows, encoder.encode(texts), atol=1e-5)
    metrics = server.request("/metrics").body
    assert 'status="500"' not in metrics, metrics


def _metric(server: Server, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)} (\S+)$", server.request("/metrics").body, flags=re.M)
    return float(found[0]) if found else 0.0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"input": "x", "dimensions": 1' + b"0" * 5000 + b"}", 400),  # 10**5000
        (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
        (b'{"input": "\xff\xfe invalid UTF-8"}', 400),
        (b'{"input": "x", "dimensions": 1e999}', 400),
        (b'{"input": "x"', 400),
        (b'{"input": "x", "dimensions": 1.5}', 422),
        (b'{"input": {"nested": "object"}}', 422),
        (json.dumps({"input": ["x"] * 10_001}).encode(), 413),
    ],
)
def test_malformed_bodies(server: Server, encoder: Encoder, body: bytes, status: int) -> None:
    got, _, answer = _post(server, "/v1/embeddings", body)
    assert got == status, answer
    assert answer["error"]["message"]
    _assert_healthy(server, encoder)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),  # what a web page may send cross-site without a preflight
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json; charset=latin-1", 415),
        ("application/json", 200),
        ("Application/JSON; charset=UTF-8", 200),
        (None, 200),  # no Content-Type: JSON
    ],
)
def test_content_types(server: Server, content_type: str | None, status: int) -> None:
    got, _, answer = _post(server, "/embed", b'{"inputs": "x"}', content_type=content_type)
    assert got == status, answer


def test_compressed_bodies_are_415(server: Server) -> None:
    body = gzip.compress(b'{"inputs": "x"}')
    head = _head("/embed", len(body)).replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n")
    status, _, answer = _exchange(server, head + body)
    assert status == 415 and b"Content-Encoding gzip" in answer, answer


@pytest.mark.parametrize("key", ["wrong", "", "caf\xe9", "x" * 10_000])
def test_wrong_keys(server: Server, key: str) -> None:
    got, headers, answer = _post(server, "/embed", b'{"inputs": "x"}', key=key)
    assert got == 401 and headers["www-authenticate"] == "Bearer", answer


def test_wrong_method_names_the_allowed_one(server: Server) -> None:
    response = server.request("/embed")
    assert response.status == 405 and response.headers["allow"] == "POST"


def test_post_to_the_root_answers_as_embed(server: Server) -> None:
    root, embed = server.request("/", {"inputs": CORPUS[:3]}), server.request("/embed", {"inputs": CORPUS[:3]})
    assert root.status == embed.status == 200 and root.body == embed.body


def test_oversized_body_gets_a_readable_413(server: Server, encoder: Encoder) -> None:
    """Sent whole, or announced and never sent (a lying Content-Length): the client reads the 413."""
    body = b'{"input": "' + b"y" * (BODY_LIMIT + 1000) + b'"}'
    status, _, answer = _exchange(server, _head("/v1/embeddings", len(body)) + body)
    assert status == 413, answer
    assert server.request("/v1/embeddings", raw=body).status == 413  # urllib sends it all before reading
    with _connect(server) as sock:
        sock.sendall(_head("/v1/embeddings", 1 << 40) + b'{"input": "')
        assert _read_response(sock)[0] == 413
    chunked = _head("/v1/embeddings", None)[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(chunked)
        for _ in range(12):  # 12 MiB in 1 MiB chunks, more than the limit; stop when answered
            try:
                sock.sendall(b"100000\r\n" + b" " * (1 << 20) + b"\r\n")
            except OSError:
                break
        assert _read_response(sock)[0] == 413
    _assert_healthy(server, encoder)


def test_slow_clients_are_cut_off_and_do_not_starve_others(server: Server, encoder: Encoder) -> None:
    started = time.monotonic()
    headers_never_done = [_connect(server) for _ in range(6)]
    for sock in headers_never_done:
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    trickled = _connect(server)
    trickled.sendall(_head("/embed", 1000) + b'{"inputs": "')
    silent = _connect(server)  # sends nothing at all
    _assert_healthy(server, encoder)  # answered while all of them hang on
    try:
        for _ in range(30):  # the body trickles on, a byte at a time, past the deadline
            trickled.sendall(b"a")
            time.sleep(0.1)
    except OSError:
        pass  # closed under it
    for sock in [*headers_never_done, trickled, silent]:
        status, _, _ = _read_response(sock)  # returns once the server has closed the connection
        assert status in (408, 0)
        sock.close()
    assert time.monotonic() - started < SOCKET_TIMEOUT_S  # closed by the server, not by our timeout
    _assert_healthy(server, encoder)


def test_too_many_requests_in_flight_is_429(server: Server, encoder: Encoder) -> None:
    holding = [_connect(server) for _ in range(4)]  # --max-concurrent-requests 4: bodies left unfinished
    try:
        for sock in holding:
            sock.sendall(_head("/embed", 100) + b'{"inputs": ')
        for _ in range(50):  # bounded: until the server has read all four heads
            status, headers, answer = _post(server, "/embed", b'{"inputs": "x"}')
            if status == 429:
                break
            time.sleep(0.02)
        assert status == 429 and headers["retry-after"] == "1", answer
    finally:
        for sock in holding:
            sock.close()
    for _ in range(100):  # bounded: the held requests end as their clients go
        if server.request("/embed", {"inputs": "x"}).status == 200:
            break
        time.sleep(0.05)
    _assert_healthy(server, encoder)


def test_clients_that_stop_reading_are_dropped(make_server: Any, tiny_export: Path, encoder: Encoder) -> None:
    """Clients that send requests and never read the answers (three pipelined, so that the second waits to
    be sent) lose their connections once nothing was read for the send timeout: a reset instead of the
    rest of the answers, and their request slots come back. Each answer (~1.5 MB) is more than the kernel
    buffers for a client that reads nothing, so the rest waits in the server."""
    options = {**OPTIONS, "max-queue": "50000", "send-timeout": "1"}  # all twelve requests queue at once
    server = make_server(tiny_export, *[f"--{name}={value}" for name, value in options.items()])
    body = json.dumps({"inputs": ["a"] * 4000, "normalize": False}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    stalled: list[socket.socket] = []
    reset = [False] * 4
    try:
        for _ in range(4):  # --max-concurrent-requests 4
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.sendall((_head("/embed", len(body)) + body) * 3)
            stalled.append(sock)
        for _ in range(300):  # bounded (30 s): until the server has reset all four; reading nothing meanwhile
            for index, sock in enumerate(stalled):
                reset[index] |= sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
            if all(reset):
                break
            time.sleep(0.1)
        assert all(reset), reset
    finally:
        for sock in stalled:
            sock.close()
    _assert_healthy(server, encoder)
    for _ in range(8):  # the slots are free again
        assert server.request("/embed", {"inputs": "x"}).status == 200


def test_connection_cap(server: Server, encoder: Encoder) -> None:
    idle = [_connect(server) for _ in range(int(OPTIONS["max-connections"]))]
    try:
        extra = _connect(server)
        status, headers, _ = _read_response(extra)
        extra.close()
        assert status == 503 and headers["retry-after"] == "1"
    finally:
        for sock in idle:
            sock.close()
    for _ in range(100):  # bounded: until the server has seen the idle ones go
        if server.request("/health").status == 200:
            break
        time.sleep(0.05)
    _assert_healthy(server, encoder)


def test_hang_ups_mid_body_and_mid_queue(server: Server, encoder: Encoder) -> None:
    before = _metric(server, 'onnxembed_client_disconnects_total{endpoint="/embed"}')
    with _connect(server) as sock:  # mid-body
        sock.sendall(_head("/embed", 5000) + b'{"inputs": ["abc", ')
        time.sleep(0.2)
    queued = json.dumps({"inputs": [text * 20 for text in CORPUS] * 8, "truncate": True}).encode()
    for _ in range(4):  # mid-queue: each waits behind the others' batches when its client goes
        with _connect(server) as sock:
            sock.sendall(_head("/embed", len(queued)) + queued)
            time.sleep(0.05)
    for _ in range(200):  # bounded: until the server has noticed all five
        if _metric(server, 'onnxembed_client_disconnects_total{endpoint="/embed"}') >= before + 5:
            break
        time.sleep(0.05)
    assert _metric(server, 'onnxembed_client_disconnects_total{endpoint="/embed"}') >= before + 5
    assert _metric(server, "onnxembed_queue_depth") == 0
    _assert_healthy(server, encoder)


def test_ten_thousand_tiny_inputs(server: Server, encoder: Encoder) -> None:
    texts = [chr(ord("a") + index % 26) for index in range(10_000)]
    status, _, answer = _post(server, "/embed", json.dumps({"inputs": texts, "normalize": False}).encode())
    assert status == 200
    np.testing.assert_allclose(np.array(answer[:26], dtype=np.float32), encoder.encode(texts[:26]), atol=1e-5)
    assert len(answer) == 10_000


def test_eight_mebibytes_of_one_character_words(server: Server, encoder: Encoder) -> None:
    """The tokenizer's worst case (a token per two characters), 84 inputs at the character limit: only the
    part of each text that truncation keeps is tokenized, so this is quick and small."""
    texts = [(chr(ord("a") + index % 26) + " ") * 50_000 for index in range(84)]
    body = json.dumps({"inputs": texts, "truncate": True, "normalize": False}).encode()
    assert len(body) > 8 << 20
    status, _, answer = _post(server, "/embed", body)
    assert status == 200
    np.testing.assert_allclose(np.array(answer[:3], dtype=np.float32), encoder.encode(texts[:3]), atol=1e-5)
    status, _, answer = _post(server, "/embed", json.dumps({"inputs": texts[:2]}).encode())  # truncate: false
    assert status == 413 and "more than" in answer["error"]["message"]
    _assert_healthy(server, encoder)
