"""Settings checked at start-up (limits that contradict each other, API keys), the parser under a bounded
fuzz, and /health with a dead worker; no server process."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from onnxembed.errors import InvalidArgumentError, OnnxEmbedError
from onnxembed.serve.config import ApiError, ServeConfig, api_key_from

pytest.importorskip("orjson", reason="the server needs the serve extra: pip install 'onnxembed[serve]'")


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_queue": 8, "max_inputs": 16}, "never fits"),
        ({"max_queue": 8, "max_inputs": 1}, "at least 2"),
        ({"max_queue_chars": 1000}, "max_queue_chars"),  # one 8 MiB body holds more
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"send_timeout_s": 0}, "send_timeout_s"),
        ({"max_connections": 0}, "max_connections"),
        ({"api_key": ""}, "empty"),
        ({"api_key": "two words"}, "without spaces"),
        ({"drain_timeout_s": -5}, "shutdown-timeout"),
    ],
)
def test_contradictory_limits_are_refused(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        ServeConfig(model_name="m", **limits)


def test_queue_holds_any_request_within_the_limits() -> None:
    config = ServeConfig(model_name="m", max_body_bytes=1000, max_queue_chars=1000)
    assert config.max_request_chars == 1000


def test_api_key_sources(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert api_key_from("flag", None, {"ONNXEMBED_API_KEY": "env"}) == "flag"
    assert api_key_from(None, str(key_file), {"ONNXEMBED_API_KEY": "env"}) == "from-file"
    assert api_key_from(None, None, {"ONNXEMBED_API_KEY": "env"}) == "env"
    assert api_key_from(None, None, {}) is None
    for flag, file, environ in (
        ("", None, {}),  # --api-key "$UNSET"
        (None, None, {"ONNXEMBED_API_KEY": ""}),
        ("a", str(key_file), {}),
        (None, str(tmp_path / "missing"), {}),
    ):
        with pytest.raises(InvalidArgumentError):
            api_key_from(flag, file, environ)
    key_file.write_text("\n")
    with pytest.raises(InvalidArgumentError, match="empty"):
        api_key_from(None, str(key_file), {})


@pytest.mark.parametrize(
    "options",
    [
        ["--api-key", ""],
        ["--max-queue", "8", "--max-inputs", "16"],
        ["--max-queue-chars", "100"],
        ["--port", "70000"],  # uvicorn would find it only when binding, after loading, with a traceback
        ["--shutdown-timeout", "-5"],
    ],
)
def test_cli_refuses_before_loading_anything(options: list[str], tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "onnxembed", "serve", str(tmp_path), "--port", "1", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("onnxembed serve: error:") and completed.stderr.count("\n") == 1


def test_max_documents_without_a_reranker_is_refused(tiny_export: Path) -> None:
    """It would bound nothing: refused rather than ignored."""
    completed = subprocess.run(
        [sys.executable, "-m", "onnxembed", "serve", str(tiny_export), "--port", "1", "--max-documents", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1 and "no reranker is served" in completed.stderr, completed.stderr


def test_parser_raises_only_client_errors() -> None:
    """A bounded fuzz of the body parser and the field checks: anything is a 4xx ApiError or a value."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from onnxembed.serve.parsing import choice_field, optional_field, parse_json, texts_field

    config = ServeConfig(model_name="m", max_inputs=4, max_input_chars=50, max_queue=8)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
        max_leaves=20,
    )
    bodies = st.binary(max_size=200) | json_values.map(lambda value: repr(value).encode())
    fields = st.dictionaries(st.sampled_from(["input", "dimensions", "encoding_format"]), json_values)

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(body=bodies, payload=fields)
    def check(body: bytes, payload: dict[str, Any]) -> None:
        for call in (
            lambda: parse_json(body),
            lambda: texts_field(payload, "input", config),
            lambda: optional_field(payload, "dimensions", int),
            lambda: choice_field(payload, "encoding_format", ("float", "base64")),
        ):
            try:
                call()
            except ApiError as error:
                assert 400 <= error.status < 500 and isinstance(error, OnnxEmbedError)

    check()


def test_health_is_503_once_a_worker_thread_died(tiny_export: Path) -> None:
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from onnxembed import Encoder
    from onnxembed.serve.app import build_app

    app = build_app(Encoder(tiny_export), ServeConfig(model_name="m"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        dead = threading.Thread(target=lambda: None)
        dead.start()
        dead.join()
        app.state.service.batcher._threads.append(dead)
        response = client.get("/health")
        assert response.status_code == 503 and "died" in response.json()["reason"]
        app.state.service.batcher._threads.remove(dead)


def test_large_bodies_are_parsed_two_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed JSON can take ~30x its bytes, so at most MAX_PARSES_OFF_LOOP large bodies are parsed at once;
    the rest wait their turn and still get their payloads."""
    import asyncio
    import json
    import time

    from starlette.requests import Request

    from onnxembed.serve import parsing

    running = 0
    most = 0
    lock = threading.Lock()
    parse = parsing.parse_json

    def slow_parse(body: bytes) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return parse(body)

    monkeypatch.setattr(parsing, "parse_json", slow_parse)
    body = json.dumps({"input": "x", "junk": ["y"] * (parsing.PARSE_OFF_LOOP_BYTES // 4)}).encode()

    def request() -> Request:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return Request({"type": "http", "method": "POST", "headers": []}, receive)

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(parsing.read_json(request(), len(body)) for _ in range(6)))

    payloads = asyncio.run(main())
    assert [payload["input"] for payload in payloads] == ["x"] * 6
    assert most == parsing.MAX_PARSES_OFF_LOOP == 2


class _Transport:
    """What the send watchdog reads of a transport; ``unsent`` falls as the client reads."""

    def __init__(self) -> None:
        self.unsent = 0
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.unsent += len(data)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize("reads", [True, False])
def test_send_watchdog_drops_only_clients_that_read_nothing(reads: bool) -> None:
    """A keep-alive client that read its first answer and reads on through a second, larger one stays; one that
    stops reading is dropped after the send timeout (the buffer alone cannot tell them apart: the second
    answer refills what the client drained)."""
    import asyncio

    pytest.importorskip("uvicorn")
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from onnxembed.serve.protocol import guarded_protocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    async def run() -> bool:
        protocol_class = guarded_protocol(10.0, 10, 1 << 20, send_timeout_s=0.2)
        protocol = protocol_class(config=Config(app, http=protocol_class), server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.transport.write(b"x" * 10_000)  # the first answer, 10 kB left unsent when it completes
        protocol.on_response_complete()
        await asyncio.sleep(0.05)
        transport.unsent = 0  # the client read all of it and asked again: a 5 MB answer
        protocol.transport.write(b"x" * 5_000_000)
        protocol.pause_writing()
        for _ in range(4):  # 0.4 s, two send timeouts
            await asyncio.sleep(0.1)
            if reads:
                transport.unsent -= 100_000
        return transport.aborted

    assert asyncio.run(run()) is not reads
