"""A real ``onnxembed serve`` process on loopback, and a small urllib client for it.

Servers are killed in the fixture finalizer whatever the test did; every wait here is bounded.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

API_KEY = "test-key"
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or the text when it is not JSON


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def request(
        self, path: str, payload: Any = None, *, raw: bytes | None = None, key: str | None = API_KEY
    ) -> Response:
        """POST payload as JSON (or raw bytes); GET when both are None."""
        data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST")
        request.add_header("Content-Type", "application/json")
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
                return _response(reply.status, dict(reply.headers), reply.read())
        except urllib.error.HTTPError as error:
            return _response(error.code, dict(error.headers), error.read())


def _response(status: int, headers: dict[str, str], body: bytes) -> Response:
    headers = {name.lower(): value for name, value in headers.items()}
    try:
        return Response(status, headers, json.loads(body))
    except ValueError:
        return Response(status, headers, body.decode("utf-8", "replace"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(model: Path, log: Path, *options: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "onnxembed", "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, *options], stdout=sink, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {log.read_text()}")
        try:
            if server.request("/health").status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not answer /health in {START_TIMEOUT_S} s: {log.read_text()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(timeout=30)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers for one test; all are killed when it ends."""
    started: list[Server] = []

    def make(model: Path, *options: str) -> Server:
        server = start_server(model, tmp_path / f"server-{len(started)}.log", *options)
        started.append(server)
        return server

    yield make
    for server in started:
        stop_server(server)


# The module-wide server: an API key and small limits that the limit tests reach.
LIMITS = {"max_inputs": 32, "max_input_chars": 20_000, "max_body_bytes": 200_000, "max_queue": 512}


@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    options = [f"--{name.replace('_', '-')}={value}" for name, value in LIMITS.items()]
    running = start_server(tiny_export, tmp_path_factory.mktemp("serve") / "server.log", "--api-key", API_KEY, *options)
    try:
        yield running
    finally:
        stop_server(running)
