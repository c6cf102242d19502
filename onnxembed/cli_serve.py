"""``onnxembed serve``: the HTTP server's options, handed to onnxembed.serve. Kept apart from cli.py, which
parses the command line and runs the command named.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="HTTP server: OpenAI /v1/embeddings, TEI /embed, /similarity and /rerank, Cohere /v2/rerank"
    )
    serve.add_argument(
        "model_dir", help="directory written by `onnxembed export` (an embedding model, a reranker or a sparse model)"
    )
    serve.add_argument(
        "--reranker", metavar="DIR", help="also serve this reranker export (/rerank, /v1 and /v2/rerank)"
    )
    serve.add_argument(
        "--max-documents", type=int, help="documents per rerank request (default 1000, or --max-queue if smaller)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--api-key", help="require Authorization: Bearer KEY (default: $ONNXEMBED_API_KEY, else none; never empty)"
    )
    serve.add_argument("--api-key-file", metavar="PATH", help="read the key from a file (out of the process list)")
    serve.add_argument("--model-name", help="name the API reports (default: the directory's name)")
    serve.add_argument("--provider", default="auto", help="auto, cpu, cuda or an onnxruntime provider name")
    serve.add_argument(
        "--threads", type=int, help="intra-op threads per run (default: 1 with several CPU workers, else one per core)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="inference threads running the queued requests' batches (default: on CPU without --threads, one per "
        "core, each on 1 intra-op thread; on CPU with --threads 1; on a GPU 2)",
    )
    serve.add_argument("--variant", default="auto", help="auto, fp32, int8, fp16, optimized or a graph file name")
    serve.add_argument("--max-batch-tokens", type=int, help="padded tokens per inference batch")
    serve.add_argument(
        "--batch-wait-ms", type=float, default=0.0, help="let concurrent requests gather this long before a run"
    )
    serve.add_argument("--max-queue", type=int, default=4096, help="texts waiting before 503 (default 4096)")
    serve.add_argument("--max-inputs", type=int, help="texts per request (default 2048, or --max-queue if smaller)")
    serve.add_argument("--max-input-chars", type=int, default=100_000, help="characters per text (default 100000)")
    serve.add_argument("--max-body-bytes", type=int, default=8 << 20, help="request body size (default 8 MiB)")
    serve.add_argument(
        "--max-queue-chars", type=int, help="characters waiting before 503 (default 32 Mi, at least one request's)"
    )
    serve.add_argument(
        "--max-concurrent-requests", type=int, default=512, help="POSTs in flight before 429 (default 512)"
    )
    serve.add_argument("--max-connections", type=int, default=1024, help="open connections (default 1024)")
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds to send a request's headers and body (default 10)",
    )
    serve.add_argument(
        "--send-timeout",
        type=float,
        default=30.0,
        help="seconds a client may read nothing of an answer waiting to be sent (default 30)",
    )
    serve.add_argument(
        "--shutdown-timeout", type=int, default=30, help="seconds to finish requests on SIGTERM (default 30)"
    )


def run(args: argparse.Namespace) -> None:
    from onnxembed.serve import serve
    from onnxembed.serve.config import api_key_from

    serve(
        args.model_dir,
        args.host,
        args.port,
        provider=args.provider,
        threads=args.threads,
        workers=args.workers,
        variant=args.variant,
        model_name=args.model_name,
        api_key=api_key_from(args.api_key, args.api_key_file),
        max_batch_tokens=args.max_batch_tokens,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        max_body_bytes=args.max_body_bytes,
        max_queue_chars=args.max_queue_chars,
        max_concurrent_requests=args.max_concurrent_requests,
        max_connections=args.max_connections,
        request_timeout_s=args.request_timeout,
        send_timeout_s=args.send_timeout,
        graceful_timeout_s=args.shutdown_timeout,
        log_level="info" if args.verbose else "warning",
        reranker=args.reranker,
        max_documents=args.max_documents,
    )
