"""Throughput and latency of ``onnxembed serve`` under concurrent clients, against offline ``Encoder.encode``.

    python bench/serve.py EXPORTED_DIR [--clients 16] [--requests 400] [--rounds 5] [--seed 0] [--port 0]

Starts ``onnxembed serve EXPORTED_DIR`` on loopback (its own process, default settings); --clients threads
send --requests POST /v1/embeddings in all, each with 1-8 stdlib-docstring sentences (bench/corpus.py), one
keep-alive connection per client, after a warm-up round. Each of --rounds rounds times, back to back on the
same texts: the server round, then in this process ``Encoder.encode`` of all texts in one call (the best a
batch job gets), with the default Encoder and with one single-threaded session per core. The ratio to the
faster of those two is taken per round and the median reported, so a slower spell of the shared machine
hits both sides. After the rounds, once: one offline call per request in sequence (a server without
dynamic batching); the server's mean texts per model batch comes from its /metrics. Clients, server and
the offline encoder share the machine's cores, so the server column pays for its clients' JSON work too.
Prints a Markdown table with the load average and the cores busy; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from corpus import sentences  # noqa: E402

from onnxembed import Encoder  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(process: subprocess.Popen[bytes], port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout_s} s")


Served = dict[str, np.ndarray]  # text -> the vector the server sent for it


def _client(port: int, requests: list[list[str]], latencies: list[float], failures: list[str], served: Served) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for texts in requests:
        body = json.dumps({"input": texts, "model": "bench"})
        started = time.perf_counter()
        connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            failures.append(f"{response.status}: {payload[:200]!r}")
            continue
        for text, item in zip(texts, json.loads(payload)["data"], strict=True):  # clients parse, as real ones do
            served[text] = np.asarray(item["embedding"], dtype=np.float32)
    connection.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mean_model_batch(port: int) -> float:
    """Texts per model batch the server ran, from its /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    values = dict(
        line.split(" ", 1) for line in connection.getresponse().read().decode().splitlines() if not line.startswith("#")
    )
    return float(values["onnxembed_batch_size_sum"]) / max(float(values["onnxembed_batch_size_count"]), 1.0)


def run_clients(port: int, plan: list[list[list[str]]]) -> tuple[float, list[float], list[str], Served]:
    latencies: list[float] = []
    failures: list[str] = []
    served: Served = {}
    threads = [
        threading.Thread(target=_client, args=(port, requests, latencies, failures, served)) for requests in plan
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures, served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="requests in all, shared among the clients")
    parser.add_argument("--rounds", type=int, default=5, help="server and offline timings, alternated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--variant", default="auto", help="model variant for the server and the offline encoders")
    parser.add_argument("--server-args", default="", help="extra `onnxembed serve` options, e.g. '--workers 2'")
    args = parser.parse_args()

    pool = sentences()
    rng = random.Random(args.seed)
    requests = [rng.sample(pool, rng.randint(1, 8)) for _ in range(args.requests)]
    plan = [requests[client :: args.clients] for client in range(args.clients)]
    texts = [text for request in requests for text in request]
    load_before = os.getloadavg()

    port = args.port or _free_port()
    command = [
        sys.executable,
        "-m",
        "onnxembed",
        "serve",
        str(args.model),
        "--port",
        str(port),
        "--variant",
        args.variant,
    ]
    command += args.server_args.split()
    cores = os.cpu_count() or 1
    # The offline side at its best: the default Encoder, and one single-threaded session per core (the advice
    # for batch jobs, docs/performance.md#cpu-cores-threads-sessions-or-processes); each round's ratio is taken
    # against the faster of the two.
    offline_encoders = {"default Encoder": Encoder(args.model, variant=args.variant)}
    if cores > 1:
        offline_encoders[f"{cores} sessions x 1 thread"] = Encoder(
            args.model, threads=1, sessions=cores, overlap=True, variant=args.variant
        )
    for encoder in offline_encoders.values():
        encoder.encode(texts[:64])  # warm-up
    server = subprocess.Popen(command)
    server_s: list[float] = []
    offline_s: dict[str, list[float]] = {name: [] for name in offline_encoders}
    latencies: list[float] = []
    failures: list[str] = []
    client_cpu: list[float] = []  # cores busy in this process (the clients) during the server rounds
    server_cpus: list[float] = []  # cores busy in the server process
    try:
        _wait_ready(server, port)
        run_clients(port, [requests[:2] for requests in plan])  # warm-up
        for _ in range(args.rounds):
            server_cpu, own_cpu = _cpu_seconds(server.pid), os.times()
            seconds, round_latencies, round_failures, served = run_clients(port, plan)
            server_cpu = _cpu_seconds(server.pid) - server_cpu
            own = os.times()
            client_cpu.append((own.user + own.system - own_cpu.user - own_cpu.system) / seconds)
            server_cpus.append(server_cpu / seconds)
            server_s.append(seconds)
            latencies += round_latencies
            failures += round_failures
            for name, encoder in offline_encoders.items():
                started = time.perf_counter()
                offline = encoder.encode(texts)
                offline_s[name].append(time.perf_counter() - started)
        model_batch = _mean_model_batch(port)
    finally:
        server.terminate()
        server.wait(timeout=60)

    encoder = offline_encoders["default Encoder"]
    started = time.perf_counter()
    for request in requests:
        encoder.encode(request)
    sequential_s = time.perf_counter() - started
    max_diff = max(
        float(np.abs(served[text] - row).max()) for text, row in zip(texts, offline, strict=True) if text in served
    )
    load_after = os.getloadavg()

    best_offline_s = [min(times) for times in zip(*offline_s.values(), strict=True)]
    ratios = [offline / server for server, offline in zip(server_s, best_offline_s, strict=True)]
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"model {args.model} ({encoder.variant}), {len(texts)} sentences in {len(requests)} requests "
        f"from {args.clients} clients,"
    )
    print(f"server: onnxembed serve {args.server_args or '(defaults)'}; {args.rounds} rounds, {cores} cores, ", end="")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"max abs difference, served vs offline vectors: {max_diff:.1e}")
    print(
        f"cores busy during server rounds (median): server {statistics.median(server_cpus):.2f}, "
        f"clients {statistics.median(client_cpu):.2f}; server's mean model batch {model_batch:.1f} texts"
    )
    print("server / best offline per round: " + ", ".join(f"{ratio:.0%}" for ratio in ratios))
    if failures:
        print(f"{len(failures)} requests failed, e.g. {failures[0]}")
    print()
    print("| how | sentences/s (median of rounds) | p50 latency (ms) | p99 latency (ms) |")
    print("|---|---:|---:|---:|")
    server_rate = statistics.median(len(texts) / seconds for seconds in server_s)
    print(
        f"| server, {args.clients} clients | {server_rate:.0f} | {quantiles[49] * 1e3:.1f} | "
        f"{quantiles[98] * 1e3:.1f} |"
    )
    for name, times in offline_s.items():
        print(f"| offline encode, one call, {name} | {statistics.median(len(texts) / t for t in times):.0f} | | |")
    print(f"| server / best offline, median of per-round ratios | {statistics.median(ratios):.0%} | | |")
    print(
        f"| offline, default Encoder, one call per request | {len(texts) / sequential_s:.0f} | "
        f"{sequential_s / len(requests) * 1e3:.1f} (mean) | |"
    )


if __name__ == "__main__":
    main()
