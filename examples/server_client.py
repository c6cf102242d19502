"""Call `onnxembed serve` with the standard library only (urllib): OpenAI's and TEI's APIs.

    python examples/server_client.py MODEL_DIR                          # starts a server on a free port
    python examples/server_client.py MODEL_DIR http://127.0.0.1:8080    # or talks to a running one

Starting a server needs `pip install 'onnxembed[serve]'`; the client side needs nothing beyond Python. Set
ONNXEMBED_API_KEY to send a key (a started server requires the same key).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def call(base_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST ``body`` as JSON (GET without one) and return the parsed JSON answer."""
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get("ONNXEMBED_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # the server answers {"error": {"message", "type"}}
        raise SystemExit(f"{path}: HTTP {error.code}: {error.read().decode()}") from None


def start_server(model_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "onnxembed", "serve", model_dir, "--port", str(port)]
    server = subprocess.Popen(command)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as response:
                if json.load(response).get("status") == "ok":
                    return server, base_url
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not become healthy within 120 s")


def main(model_dir: str, base_url: str | None) -> None:
    server = None
    if base_url is None:
        server, base_url = start_server(model_dir)
    try:
        model = call(base_url, "/v1/models")["data"][0]["id"]
        texts = ["The cat sits on the mat.", "Stocks fell sharply."]
        openai = call(base_url, "/v1/embeddings", {"input": texts, "model": model})
        vectors = [item["embedding"] for item in openai["data"]]
        print(f"OpenAI /v1/embeddings: {len(vectors)} x {len(vectors[0])}, usage {openai['usage']}")
        tei = call(base_url, "/embed", {"inputs": texts, "normalize": True, "truncate": True})
        print(f"TEI /embed: {len(tei)} x {len(tei[0])}")
        scores = call(
            base_url,
            "/similarity",
            {"inputs": {"source_sentence": "A cat on a mat.", "sentences": texts}},
        )
        print("TEI /similarity:", [round(score, 3) for score in scores])
    finally:
        if server is not None:  # SIGTERM: the server finishes what it accepted and exits 0
            server.send_signal(signal.SIGTERM)
            print(f"server exited with {server.wait(timeout=60)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
