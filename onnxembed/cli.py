"""The ``onnxembed`` command: export, encode, info, serve, embed-corpus, rerank, tune.

Errors become one line on stderr and exit code 1 (2 for usage errors, from argparse); ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from onnxembed import cli_rerank, cli_tune
from onnxembed.manifest import RERANKER, SPARSE, Manifest

_BATCH_HELP = "texts per batch at most (default: 32 on CPU; on a GPU the token budget alone)"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxembed", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress to stderr, and show the traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="export a SentenceTransformer directory to ONNX and verify it")
    export.add_argument(
        "model_name_or_path", help="SentenceTransformer directory, or a model name in the local HF cache"
    )
    export.add_argument("model_dir", help="directory to write (onnx/model.onnx, tokenizer, configs, onnxembed.json)")
    export.add_argument("--base-model", help="base model directory for a PEFT adapter (overrides adapter_config.json)")
    export.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto")
    export.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store weights beside the graph (default: only when over 2 GB)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace MODEL_DIR if it holds a model")
    export.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against the source")
    faster = export.add_argument_group("faster variants (each measured against fp32 and recorded)")
    faster.add_argument("--optimize", action="store_true", help="fused graph: onnx/model_O2.onnx (cpu) or _O4 (gpu)")
    faster.add_argument("--target", choices=("cpu", "gpu"), default="cpu", help="what --optimize fuses for")
    faster.add_argument("--quantize", choices=("int8",), help="int8 weights, for CPU")
    faster.add_argument(
        "--int8-min-cosine",
        type=float,
        metavar="P1",
        help="embedding models' int8 budget: the fastest recipe whose 1st-percentile cosine vs fp32 is >= P1 "
        "(default 0.99)",
    )
    faster.add_argument(
        "--int8-min-spearman",
        type=float,
        metavar="RHO",
        help="rerankers' and sparse encoders' int8 budget: mean Spearman per held-out query vs fp32 >= RHO "
        "(default 0.98)",
    )
    faster.add_argument(
        "--int8-min-top10-overlap",
        type=float,
        metavar="SHARE",
        help="rerankers' and sparse encoders' int8 budget: mean share of fp32's top 10 (documents; a sparse "
        "encoder's terms) kept in int8's top 10 >= SHARE (default 0.9)",
    )
    faster.add_argument("--fp16", action="store_true", help="fp16 graph with fp32 inputs/outputs, for CUDA")
    faster.add_argument(
        "--pool-in-graph",
        action="store_true",
        help="also write fp32 and GPU graphs that pool and normalize inside (only (batch, dim) leaves the device)",
    )
    faster.add_argument("--calibration-file", help="texts to calibrate and measure on, one per line")

    encode = commands.add_parser("encode", help="embed one text per line into an .npy file")
    encode.add_argument("model_dir", help="directory written by `onnxembed export`")
    encode.add_argument("input", nargs="?", default="-", help="text file, one text per line (default: stdin)")
    encode.add_argument("-o", "--output", required=True, help=".npy file to write, (n, dim) float32")
    encode.add_argument(
        "--batch-size", type=int, help="texts per batch at most (default: 32 on CPU, the token budget on GPU)"
    )
    encode.add_argument("--prompt-name", help="one of the model's prompts")
    encode.add_argument("--prompt", help="a prompt string to prepend to every text")
    encode.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    encode.add_argument(
        "--precision", choices=("float32", "binary", "ubinary"), default="float32", help="packed bits for (u)binary"
    )
    encode.add_argument("--provider", default="auto", help="auto, cpu, cuda or an onnxruntime provider name")
    encode.add_argument("--threads", type=int, help="intra-op threads (default: one per core)")
    encode.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")

    info = commands.add_parser("info", help="show what an exported directory holds")
    info.add_argument(
        "model_dir", nargs="?", help="directory written by `onnxembed export` (none: what export supports)"
    )
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")

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
        "--request-timeout", type=float, default=10.0, help="seconds to send a request's headers and body (default 10)"
    )
    serve.add_argument(
        "--shutdown-timeout", type=int, default=30, help="seconds to finish requests on SIGTERM (default 30)"
    )

    cli_rerank.add_parser(commands)
    cli_tune.add_parser(commands)

    corpus = commands.add_parser("embed-corpus", help="embed Parquet/JSONL/text into Parquet, locally or on Ray")
    corpus.add_argument("input", help="a .parquet, .jsonl or .txt file (one text per line), or a folder of them")
    corpus.add_argument(
        "output",
        help="folder of Parquet parts (id, embedding); a rerun skips finished parts. With --ray also a URI "
        "pyarrow opens (s3://bucket/path, gs://...)",
    )
    corpus.add_argument(
        "--model-dir", "--model", dest="model_dir", required=True, help="directory written by `onnxembed export`"
    )
    corpus.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    corpus.add_argument("--id-column", help="column holding the id (default: 'id' if present, else the row number)")
    corpus.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS", help="run on a Ray cluster (no ADDRESS: a local one)"
    )
    corpus.add_argument(
        "--on-error", choices=("fail", "skip"), default="fail", help="bad rows: stop, or list and go on"
    )
    corpus.add_argument("--batch-size", type=int, help=_BATCH_HELP)
    corpus.add_argument(
        "--precision", choices=("float32", "binary", "ubinary"), default="float32", help="packed bits for (u)binary"
    )
    corpus.add_argument("--chunk-rows", type=int, default=8192, help="rows per part, locally (default 8192)")
    corpus.add_argument("--provider", default="auto", help="locally: auto, cpu, cuda or an onnxruntime provider")
    corpus.add_argument("--threads", type=int, help="locally: intra-op threads (default: one per core)")
    corpus.add_argument("--variant", default="auto", help="graph to use: auto, fp32, int8, ... (see `info`)")
    corpus.add_argument(
        "--restart", action="store_true", help="remove this job's parts in OUTPUT first (other files are kept)"
    )
    corpus.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return parser


def _read_lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\r\n")


def _run_export(args: argparse.Namespace) -> None:
    from onnxembed import export

    manifest = export(
        args.model_name_or_path,
        args.model_dir,
        base_model=args.base_model,
        exporter=args.exporter,
        external_data=args.external_data,
        overwrite=args.overwrite,
        verify=args.verify,
        optimize=args.optimize,
        target=args.target,
        quantize=args.quantize,
        int8_min_cosine=args.int8_min_cosine,
        int8_min_spearman=args.int8_min_spearman,
        int8_min_top10_overlap=args.int8_min_top10_overlap,
        fp16=args.fp16,
        pool_in_graph=args.pool_in_graph,
        calibration_file=args.calibration_file,
    )
    accuracy = manifest.variants["fp32"].accuracy
    print(f"exported {args.model_name_or_path} -> {args.model_dir} ({manifest.architecture}, dim {manifest.dim})")
    if manifest.task == RERANKER:
        print("\n".join(cli_rerank.export_summary(manifest)))
    elif manifest.task == SPARSE and accuracy:
        print(
            f"verified against sentence-transformers {accuracy['sentence_transformers']}: max abs diff "
            f"{accuracy.get('query_max_abs_diff', float('nan')):.2e} (queries), "
            f"{accuracy.get('document_max_abs_diff', float('nan')):.2e} (documents)"
        )
    elif "min_cosine" in accuracy:
        print(
            f"verified against sentence-transformers {accuracy['sentence_transformers']}: min cosine "
            f"{accuracy['min_cosine']:.7f}, max abs diff {accuracy['max_abs_diff']:.2e}"
        )
    elif accuracy:
        print(
            f"graph verified (max abs diff {accuracy['token_embeddings_max_abs_diff']:.2e}); "
            f"sentence-transformers {accuracy['sentence_transformers']}"
        )
    else:
        print("not verified (--no-verify)")
    for name, variant in manifest.variants.items():
        if name != "fp32":
            print(f"{name}: {variant.file} {_accuracy_summary(variant.accuracy)}")


def _accuracy_summary(accuracy: dict) -> str:
    if "mean_spearman" in accuracy:  # a reranker's or sparse encoder's variant, measured on ranking
        return cli_rerank.ranking_summary(accuracy)
    if "mean_cosine" not in accuracy:
        return str(accuracy.get("measured", ""))
    summary = (
        f"mean cosine {accuracy['mean_cosine']:.4f}, p1 {accuracy['p1_cosine']:.4f}, min {accuracy['min_cosine']:.4f}, "
        f"top-10 overlap {accuracy.get('top10_overlap', float('nan')):.3f}, {accuracy['speedup_vs_fp32']:.2f}x fp32"
    )
    if "recipe" in accuracy:
        verdict = "meets" if accuracy["accepted"] else "MISSES"
        summary += f"; recipe {accuracy['recipe']} {verdict} p1 >= {accuracy['budget_p1_cosine']}"
    return summary


def _count_lines(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))


def _run_encode(args: argparse.Namespace) -> None:
    """Stream lines through Encoder.encode_iter into the .npy file: memory stays flat for any corpus.
    The file appears only when complete (written beside it first)."""
    from tqdm.auto import tqdm

    from onnxembed.npy_stream import NpyWriter
    from onnxembed.runtime import Encoder

    encoder = Encoder(args.model_dir, provider=args.provider, threads=args.threads)
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    total = None if args.input == "-" else _count_lines(args.input)
    output = Path(args.output)
    partial = output.with_name(output.name + ".partial")
    try:
        blocks = encoder.encode_iter(
            _read_lines(stream),
            batch_size=args.batch_size,
            prompt_name=args.prompt_name,
            prompt=args.prompt,
            normalize_embeddings=args.normalize,
            precision=args.precision,
        )
        packed = args.precision != "float32"
        width = -(-encoder.dim // 8) if packed else encoder.dim
        dtype = {"float32": np.float32, "binary": np.int8, "ubinary": np.uint8}[args.precision]
        with (
            tqdm(total=total, desc="Encoding", unit="text", disable=not args.progress) as progress,
            NpyWriter(partial, width, dtype) as writer,
        ):
            for block in blocks:
                writer.write(block)
                progress.update(len(block))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
        if stream is not sys.stdin:
            stream.close()
    print(f"wrote {output}: {writer.rows} x {width} {np.dtype(dtype).name}", file=sys.stderr)


def _run_info(args: argparse.Namespace) -> None:
    if args.model_dir is None:
        _print_supported()
        return
    manifest = Manifest.read(args.model_dir)
    if args.json:
        print(manifest.to_json(), end="")
        return
    print(f"model:           {args.model_dir}")
    print(f"architecture:    {manifest.architecture}  (source: {manifest.source.get('path')})")
    if manifest.source.get("adapter"):
        print(f"adapter merged:  {manifest.source['adapter']}")
    print(f"dim:             {manifest.dim}")
    print(f"modules:         {_modules_line(manifest)}")
    print(f"max_seq_length:  {manifest.max_seq_length}  (lowercase: {manifest.do_lower_case})")
    print(f"similarity:      {manifest.similarity_fn_name}")
    if manifest.truncate_dim is not None:
        print(f"truncate_dim:    {manifest.truncate_dim}")
    print(f"inputs:          {', '.join(manifest.input_names)}")
    prompts = json.dumps(manifest.prompts, ensure_ascii=False)
    print(f"prompts:         {prompts}  (default: {manifest.default_prompt_name})")
    for name, variant in manifest.variants.items():
        if name == "fp32":
            accuracy = ", ".join(
                f"{key} {value:.7g}" if isinstance(value, float) else f"{key} {value}"
                for key, value in variant.accuracy.items()
            )
        else:
            accuracy = _accuracy_summary(variant.accuracy)
        print(f"variant {name}:  {variant.file}  [{accuracy or 'not verified'}]")
    print(f"versions:        {', '.join(f'{k} {v}' for k, v in manifest.versions.items())}")


def _print_supported() -> None:
    from onnxembed.exporter.config import (
        DECODER_MODEL_TYPES,
        SUPPORTED_ARCHITECTURES,
        SUPPORTED_MODULES,
        TORCH_ACTIVATIONS,
    )
    from onnxembed.kernels import POOLING_MODES

    encoders = [name for key, name in SUPPORTED_ARCHITECTURES.items() if key not in DECODER_MODEL_TYPES]
    decoders = [name for key, name in SUPPORTED_ARCHITECTURES.items() if key in DECODER_MODEL_TYPES]
    print("onnxembed export carries (docs/export.md):")
    print(f"  encoders:    {', '.join(encoders)}")
    print(f"  decoders:    {', '.join(decoders)} (causal; last-token or mean pooling)")
    print(f"  modules:     {', '.join(SUPPORTED_MODULES)}")
    print(f"  pooling:     {', '.join(POOLING_MODES)} (and concatenations)")
    print(f"  Dense:       activations {', '.join(TORCH_ACTIVATIONS)}")
    print("  sparse:      SparseEncoder: MLMTransformer -> SpladePooling (max/sum, relu/log1p_relu); inference-free")
    print("               Router (SparseStaticEmbedding queries); SparseAutoEncoder (CSR) is refused")
    print("  other architectures and modules are refused by name")


def _modules_line(manifest: Manifest) -> str:
    """The pipeline as sentence-transformers' modules, e.g. 'Transformer (BertModel) -> Pooling (cls) -> Dense
    (768 -> 3072, identity) -> Normalize'."""
    if manifest.task == RERANKER:
        return f"Transformer ({manifest.architecture}, {manifest.num_labels} label(s)) -> {manifest.activation_fn}"
    if manifest.task == SPARSE:
        splade = manifest.splade
        masked_lm = manifest.architecture.removesuffix("+SpladePooling")
        line = f"MLMTransformer ({masked_lm}) -> SpladePooling ({splade.get('pooling_strategy')}, "
        line += f"{splade.get('activation_function')}; {manifest.dim} terms)"
        route = manifest.static_route
        return line if route is None else f"{line}; {'/'.join(route.tasks)}: SparseStaticEmbedding (inference-free)"
    if manifest.architecture == "StaticEmbedding":
        parts = ["StaticEmbedding (mean of token vectors)"]
    else:
        excluded = "" if manifest.include_prompt else ", prompt excluded"
        parts = [f"Transformer ({manifest.architecture})", f"Pooling ({'+'.join(manifest.pooling_modes)}{excluded})"]
    parts += [f"Dense ({layer.in_features} -> {layer.out_features}, {layer.activation})" for layer in manifest.dense]
    if manifest.normalize:
        parts.append("Normalize")
    return " -> ".join(parts)


def _run_serve(args: argparse.Namespace) -> None:
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
        graceful_timeout_s=args.shutdown_timeout,
        log_level="info" if args.verbose else "warning",
        reranker=args.reranker,
        max_documents=args.max_documents,
    )


def _run_embed_corpus(args: argparse.Namespace) -> None:
    common = {
        "text_column": args.text_column,
        "id_column": args.id_column,
        "on_error": args.on_error,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "variant": args.variant,
        "restart": args.restart,
    }
    if args.ray is None:
        from onnxembed.corpus import embed_corpus

        result = embed_corpus(
            args.input,
            args.output,
            args.model_dir,
            chunk_rows=args.chunk_rows,
            provider=args.provider,
            threads=args.threads,
            show_progress_bar=args.progress,
            **common,
        )
    else:
        from onnxembed.corpus.ray import embed_corpus_ray

        result = embed_corpus_ray(args.input, args.output, args.model_dir, address=args.ray or None, **common)
    print(
        f"wrote {args.output}: {result.rows_embedded} rows embedded, {result.rows_reused} found done",
        file=sys.stderr,
    )
    if result.errors:
        shown = ", ".join(repr(error["id"]) for error in result.errors[:10])
        more = f" and {len(result.errors) - 10} more" if len(result.errors) > 10 else ""
        print(
            f"{len(result.errors)} bad rows skipped (ids {shown}{more}); see {args.output.rstrip('/')}/_errors.jsonl",
            file=sys.stderr,
        )
    if result.duplicates:
        shown = ", ".join(repr(record["id"]) for record in result.duplicates[:10])
        print(f"{len(result.duplicates)} ids appear more than once ({shown}); see _errors.jsonl", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    commands = {
        "export": _run_export,
        "encode": _run_encode,
        "info": _run_info,
        "serve": _run_serve,
        "embed-corpus": _run_embed_corpus,
        "rerank": cli_rerank.run,
        "tune": cli_tune.run,
    }
    try:
        commands[args.command](args)
    except KeyboardInterrupt:
        print("onnxembed: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI's contract: one line, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"onnxembed {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
