"""``onnxembed export`` and the accuracy lines that it and ``onnxembed info`` print. Kept apart from cli.py,
which parses the command line and runs the command named.
"""

from __future__ import annotations

import argparse
from typing import Any

from onnxembed import cli_rerank
from onnxembed.manifest import RERANKER, SPARSE


def add_parser(commands: Any) -> None:
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
        "--int8-target",
        choices=("host", "avx2", "avx512_vnni", "arm64"),  # exporter/quantize.py's INT8_TARGETS (no onnx import here)
        default="host",
        help="the CPUs the int8 graph is for: host (this CPU's kind), avx2 (7-bit weights, exact on every x86-64 "
        "CPU), avx512_vnni or arm64 (full-range weights; made on a CPU with VNNI or ARM)",
    )
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


def run(args: argparse.Namespace) -> None:
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
        int8_target=args.int8_target,
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
            print(f"{name}: {variant.file} {accuracy_summary(variant.accuracy)}")


def accuracy_summary(accuracy: dict) -> str:
    """One variant's measured accuracy against fp32, for export and info."""
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
