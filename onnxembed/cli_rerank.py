"""The reranker's part of the ``onnxembed`` command: ``onnxembed rerank MODEL_DIR QUERY FILE``, and how export
and info describe a reranker export. Kept apart from cli.py, which parses the command line and runs the
command named."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onnxembed.manifest import Manifest


def add_parser(commands: Any) -> None:
    rerank = commands.add_parser("rerank", help="rank the lines of a file against a query with an exported reranker")
    rerank.add_argument("model_dir", help="directory written by `onnxembed export` from a CrossEncoder")
    rerank.add_argument("query", help="the query")
    rerank.add_argument("file", help="documents, one per line (UTF-8; '-' reads stdin); empty lines are skipped")
    rerank.add_argument("--top-k", type=int, help="print the best K lines (default: all)")
    rerank.add_argument("--raw-scores", action="store_true", help="print the logits, before the model's activation")
    rerank.add_argument("--provider", default="auto", help="auto, cpu, cuda or an onnxruntime provider name")
    rerank.add_argument("--variant", default="auto", help="auto, fp32, int8, fp16, optimized or a graph file name")
    rerank.add_argument("--threads", type=int, help="intra-op threads (default: one per core)")
    rerank.add_argument("--batch-size", type=int, default=32, help="pairs per batch at most (default 32)")


def run(args: argparse.Namespace) -> None:
    """Print ``rank<TAB>score<TAB>line`` for each document, best first (line numbers count from 1)."""
    from onnxembed.errors import InvalidArgumentError
    from onnxembed.runtime import Reranker

    if args.top_k is not None and args.top_k < 1:
        raise InvalidArgumentError(f"--top-k must be a positive integer; got {args.top_k}")
    reranker = Reranker(args.model_dir, provider=args.provider, threads=args.threads, variant=args.variant)
    from onnxembed.cli_encode import read_lines

    # bytes, lines ended by "\n" only, as encode reads them: the line numbers printed are an editor's
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    stream = stdin if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    try:
        name = "standard input" if args.file == "-" else args.file
        numbered = list(enumerate(read_lines(stream, name), 1))
    finally:
        if args.file != "-":
            stream.close()
    documents = [(number, line) for number, line in numbered if line.strip()]
    if not documents:
        raise InvalidArgumentError(f"{args.file} has no non-empty line to rank")
    ranked = reranker.rank(
        args.query,
        [line for _, line in documents],
        top_k=args.top_k,
        batch_size=args.batch_size,
        activation_fn="identity" if args.raw_scores else None,
    )
    for place, row in enumerate(ranked, 1):
        number, line = documents[row["corpus_id"]]
        print(f"{place}\t{float(row['score']):.6f}\t{number}\t{line}")


def export_summary(manifest: Manifest) -> list[str]:
    """What `onnxembed export` prints about a reranker export."""
    accuracy = manifest.variants["fp32"].accuracy
    lines = [f"reranker: {manifest.num_labels} label(s), activation {manifest.activation_fn}"]
    if "max_abs_diff" in accuracy:
        lines.append(
            f"verified against sentence-transformers {accuracy['sentence_transformers']} CrossEncoder.predict: max abs "
            f"diff {accuracy['max_abs_diff']:.2e} (logits vs torch {accuracy['logits_max_abs_diff']:.2e})"
        )
    elif accuracy:
        lines.append(f"graph verified; {accuracy}")
    else:
        lines.append("not verified (--no-verify)")
    return lines


def ranking_summary(accuracy: dict[str, Any]) -> str:
    """One variant's measured ranking accuracy, for export and info."""
    if "mean_spearman" not in accuracy:
        return str(accuracy.get("measured", ""))
    summary = (
        f"mean Spearman {accuracy['mean_spearman']:.4f} (min {accuracy['min_spearman']:.4f}), top-10 overlap "
        f"{accuracy['top10_overlap']:.3f} over {accuracy['queries']} queries, {accuracy['speedup_vs_fp32']:.2f}x fp32"
    )
    if "recipe" in accuracy:
        verdict = "meets" if accuracy["accepted"] else "MISSES"
        summary += (
            f"; recipe {accuracy['recipe']} {verdict} Spearman >= {accuracy['budget_mean_spearman']}, "
            f"top-10 >= {accuracy['budget_top10_overlap']}"
        )
    return summary
