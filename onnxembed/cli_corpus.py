"""``onnxembed embed-corpus``: embed Parquet/JSONL/text into Parquet parts, locally or on Ray, and report the
bad rows. Kept apart from cli.py, which parses the command line and runs the command named.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onnxembed.errors import InvalidArgumentError

_BATCH_HELP = "texts per batch at most (default: 32 on CPU; on a GPU the token budget alone)"


def add_parser(commands: Any) -> None:
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
    corpus.add_argument("--chunk-rows", type=int, help="rows per part, locally (default 8192)")
    corpus.add_argument("--provider", default="auto", help="locally: auto, cpu, cuda or an onnxruntime provider")
    corpus.add_argument("--threads", type=int, help="locally: intra-op threads (default: one per core)")
    corpus.add_argument("--variant", default="auto", help="graph to use: auto, fp32, int8, ... (see `info`)")
    corpus.add_argument(
        "--restart", action="store_true", help="remove this job's parts in OUTPUT first (other files are kept)"
    )
    corpus.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def run(args: argparse.Namespace) -> None:
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
            chunk_rows=8192 if args.chunk_rows is None else args.chunk_rows,
            provider=args.provider,
            threads=args.threads,
            show_progress_bar=args.progress,
            **common,
        )
    else:
        # options of the local runner: on Ray they would be ignored without a word
        local = [
            option
            for option, given in (
                ("--chunk-rows", args.chunk_rows is not None),
                ("--threads", args.threads is not None),
                ("--provider", args.provider != "auto"),
            )
            if given
        ]
        if local:
            raise InvalidArgumentError(f"{', '.join(local)}: for local runs; with --ray the cluster's workers decide")
        from onnxembed.corpus.ray import embed_corpus_ray

        result = embed_corpus_ray(args.input, args.output, args.model_dir, address=args.ray or None, **common)
    print(
        f"wrote {args.output}: {result.rows_embedded} rows embedded, {result.rows_reused} found done"
        + (" (bad rows among them, with null embeddings)" if result.errors else ""),
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
