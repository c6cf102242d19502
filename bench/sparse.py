"""Sparse (SPLADE) encoder speed: onnxembed fp32 and int8 against sentence-transformers' SparseEncoder (torch).

100 passages encoded as documents, all systems in one process.

    python bench/sparse.py --work DIR [--shapes bert-base] [--rounds 3] [--int8-recipe all-matmul]
        [--markdown-out F] [--json-out F]

Shape (BertForMaskedLM -> SpladePooling(max, relu), max_seq_length 512, random weights: speed does not depend on
them; drawn at 1/sqrt(fan_in) as tests/sparse.py does, the MLM logits scaled to N(0, 1) and biased to -3.5:
100-250 active terms a passage on a 2-layer copy, ~14 at 12 layers, where a trained SPLADE document has
100-300; that moves only the cost of the sparse results):
- bert-base: hidden 768, 12 layers, 12 heads, FFN 3072, all-MiniLM-L6-v2's 30,522-term WordPiece vocabulary
  (the shape of naver/splade-cocondenser-ensembledistil and opensearch's doc-v3-distill document encoder).
Each shape is saved by SparseEncoder.save into DIR/NAME and exported with ``onnxembed.export(DIR/NAME,
DIR/NAME-onnx, quantize="int8")``; both steps are skipped when already there. ``--int8-recipe R`` exports to
DIR/NAME-onnx-R with that int8 recipe alone (recorded with its accuracy, accepted by the budget or not).

The passages are bench/rerank.py's: stdlib docstring text cut at lengths spread evenly over 30-200 WordPiece
tokens, the same on every run. Systems: SparseEncoder(DIR/NAME).encode_document on torch, onnxembed
SparseEncoder(DIR/NAME-onnx).encode_document with variant="fp32" and variant="int8", each at its default batch
size (32) and threads, sparse results (a COO tensor, per-text SparseEmbedding). The systems run in turn,
--rounds times over (the order reversed every other round); texts/s is the median round, ratios the median
of the per-round ratios. Utilisation: FLOPs of the 100 passages (2 x (encoder + MLM head) parameters per real
token, the head being hidden^2 + hidden x vocabulary, plus 4 x layers x hidden x tokens^2 per passage for
attention) over the encode time, against onnxruntime's float32 2048x2048 MatMul (bench/throughput.py's
matmul_peak, best of before and after). Agreement, on the untimed first encode: max abs diff against
SparseEncoder, and for int8 against fp32 the dot-product ranking and top-10 terms of exporter/sparse.py's
compare_sparse (each passage ranking the others as a query). Prints Markdown; writes it and JSON when asked.
Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from build_shapes import _tokenizer  # noqa: E402
from rerank import _passage_token_ids, _versions, make_passages, prepare  # noqa: E402
from throughput import _cpu_name, matmul_peak  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    # not in --help: for a quick end-to-end check of this script
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
}
PUBLIC_SHAPES = ("bert-base",)
MAX_LENGTH = 512
SPARSE_ENCODER, FP32, INT8 = "SparseEncoder (torch)", "onnxembed fp32", "onnxembed int8"


def build_shape(name: str, out: Path) -> None:
    """A random-weight BertForMaskedLM of the shape -> SpladePooling, saved by SparseEncoder.save."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[name],
    )
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():  # as tests/sparse.py: vectors that differ by text
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0)
        # logits ~N(0, 1): the head's LayerNorm gives unit-variance features and the decoder (tied to the
        # embeddings, drawn last above) has 1/sqrt(hidden) weights; then a bias that leaves ~100-250 terms active
        # per passage after max pooling on a 2-layer copy (~14 at 12 layers: deeper random layers agree more)
        model.cls.predictions.transform.LayerNorm.weight.fill_(1.0)
        model.cls.predictions.bias.fill_(-3.5)
    hf_dir = out.parent / f"{out.name}-hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=MAX_LENGTH, transformer_task="fill-mask")
    SparseEncoder(modules=[transformer, SpladePooling("max", "relu")], device="cpu").save(str(out))


def flops_per_token(config: dict[str, Any]) -> int:
    """2 x the parameters a token passes through: the encoder layers and the MLM head (transform + decoder)."""
    hidden, layers, ffn, vocab = (
        config[key] for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    )
    return 2 * (layers * (4 * hidden * hidden + 2 * hidden * ffn) + hidden * hidden + hidden * vocab)


def load_systems(src: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Each system's encode(passages) -> (n, vocab) dense float32 (for agreement) and its timed call."""
    import torch
    from sentence_transformers import SparseEncoder as Reference

    from onnxembed import SparseEncoder

    reference = Reference(str(src), device="cpu")
    systems: dict[str, dict[str, Any]] = {
        SPARSE_ENCODER: {
            "encode": lambda texts: reference.encode_document(texts),
            "dense": lambda texts: reference.encode_document(texts, convert_to_sparse_tensor=False).numpy(),
            "threads": torch.get_num_threads(),
        }
    }
    manifest = json.loads((out / "onnxembed.json").read_text())
    for name, variant in ((FP32, "fp32"), (INT8, "int8")):
        if variant not in manifest.get("variants", {}):
            systems[name] = {"status": "skipped", "note": f"{out}/onnxembed.json lists no {variant} variant"}
            continue
        model = SparseEncoder(out, provider="cpu", variant=variant)
        systems[name] = {
            "encode": model.encode_document,
            "dense": lambda texts, model=model: model.encode_document(texts, convert_to_sparse_tensor=False),
            "threads": os.cpu_count(),  # onnxruntime's default: one per core
            "accuracy_at_export": manifest["variants"][variant].get("accuracy", {}),
        }
    return systems


def measure_shape(name: str, src: Path, out: Path, passages: list[str], rounds: int) -> dict[str, Any]:
    """Load the three systems, encode once untimed (warm-up, agreement), then alternated rounds."""
    from onnxembed.exporter.sparse import compare_sparse

    config = json.loads((src / "config.json").read_text())
    tokens = [min(len(ids) + 2, MAX_LENGTH) for ids in _passage_token_ids(out, passages)]
    attention = 4 * config["num_hidden_layers"] * config["hidden_size"]
    flops = sum(flops_per_token(config) * t + attention * t * t for t in tokens)
    systems = load_systems(src, out)
    running = {key: system for key, system in systems.items() if "encode" in system}
    vectors = {key: system["dense"](passages) for key, system in running.items()}
    for system in running.values():
        system.update(status="ok", encode_s=[])
    order = list(running)
    for round_index in range(rounds):
        for key in order if round_index % 2 == 0 else order[::-1]:
            print(f"{name} round {round_index + 1}/{rounds}: {key} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            running[key]["encode"](passages)
            running[key]["encode_s"].append(time.perf_counter() - started)
    sets = [np.array([j for j in range(len(passages)) if j != i]) for i in range(len(passages))]
    for key, system in running.items():
        seconds = statistics.median(system["encode_s"])
        system.update(
            texts_per_s=len(passages) / seconds,
            texts_per_s_rounds=[len(passages) / s for s in system["encode_s"]],
            gflops=flops / seconds / 1e9,
            active_terms_mean=float((vectors[key] != 0).sum(1).mean()),
        )
        if SPARSE_ENCODER in vectors:
            system["max_abs_diff_vs_sparse_encoder"] = float(np.abs(vectors[key] - vectors[SPARSE_ENCODER]).max())
    for key, system in running.items():
        for base, label in ((SPARSE_ENCODER, "vs_sparse_encoder"), (FP32, "vs_fp32")):
            if base in running and key != base:
                ratios = [
                    own / theirs
                    for own, theirs in zip(
                        system["texts_per_s_rounds"], running[base]["texts_per_s_rounds"], strict=True
                    )
                ]
                system.update({f"{label}_rounds": ratios, label: statistics.median(ratios)})
        if key == INT8 and FP32 in vectors:
            pair = (vectors[FP32], vectors[FP32]), (vectors[INT8], vectors[INT8])
            system["vs_fp32_vectors"] = compare_sparse(pair[0], pair[1], sets)
    for system in systems.values():
        for field in ("encode", "dense"):
            system.pop(field, None)
    del running
    gc.collect()
    return {
        "src": str(src),
        "exported": str(out),
        "shape": {key: config[key] for key in SHAPES[name]}
        | {"vocab_size": config["vocab_size"], "max_length": MAX_LENGTH},
        "flops_per_token": flops_per_token(config),
        "passage_tokens": {
            "total": sum(tokens),
            "min": min(tokens),
            "mean": sum(tokens) / len(tokens),
            "max": max(tokens),
        },
        "gflop_per_100_passages": flops / 1e9,
        "systems": systems,
    }


def markdown(results: dict[str, Any]) -> str:
    machine, peak = results["machine"], results["peak_gflops"]
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores; onnxruntime fp32 MatMul peak {peak['onnxruntime']:.1f} "
        f"GFLOP/s (2048x2048, best before and after; numpy {peak['numpy']:.1f}); load average "
        f"{machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end",
        f"{results['settings']['rounds']} rounds, the systems in turn; per round one encode_document of the 100 "
        "passages (sparse results); texts/s the median round, ratios the median of the per-round ratios",
    ]
    for name, shape in results["shapes"].items():
        dims = shape["shape"]
        lines.append(
            f"{name}: hidden {dims['hidden_size']}, {dims['num_hidden_layers']} layers, "
            f"FFN {dims['intermediate_size']}, vocabulary {dims['vocab_size']}; "
            f"{shape['passage_tokens']['mean']:.0f} tokens per passage, "
            f"{shape['gflop_per_100_passages']:.1f} GFLOP per 100 passages"
        )
    lines += [
        "",
        "| shape | system | texts/s | x SparseEncoder | x fp32 | GFLOP/s | of MatMul peak | active terms "
        "| max abs diff vs SparseEncoder | Spearman vs fp32 | top-10 terms vs fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, shape in results["shapes"].items():
        for key, system in shape["systems"].items():
            if system.get("status") != "ok":
                lines.append(f"| {name} | {key} | {system.get('status')}: {system.get('note')} |")
                continue
            vs_fp32 = system.get("vs_fp32_vectors")
            cells = [
                name,
                key,
                f"{system['texts_per_s']:.2f}",
                f"{system['vs_sparse_encoder']:.2f}x" if "vs_sparse_encoder" in system else "",
                f"{system['vs_fp32']:.2f}x" if key == INT8 and "vs_fp32" in system else "",
                f"{system['gflops']:.1f}",
                f"{system['gflops'] / peak['onnxruntime']:.0%}",
                f"{system['active_terms_mean']:.0f}",
                "reference"
                if key == SPARSE_ENCODER
                else f"{system.get('max_abs_diff_vs_sparse_encoder', float('nan')):.2e}",
                f"{vs_fp32['mean_spearman']:.4f}" if vs_fp32 else "",
                f"{vs_fp32['top10_overlap']:.2f}" if vs_fp32 else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for key, system in shape["systems"].items():
            accuracy = system.get("accuracy_at_export") or {}
            if key == INT8 and "recipe" in accuracy:
                lines.append(
                    f"\n{name} int8 at export: recipe {accuracy['recipe']}, mean Spearman "
                    f"{accuracy['mean_spearman']:.4f}, top-10 terms {accuracy['top10_overlap']:.3f}, "
                    f"accepted {accuracy['accepted']}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the shapes are built and exported (kept)")
    parser.add_argument(
        "--shapes", default=",".join(PUBLIC_SHAPES), help=f"comma-separated: {', '.join(PUBLIC_SHAPES)}"
    )
    parser.add_argument("--rounds", type=int, default=3, help="times every system runs, in turn")
    parser.add_argument(
        "--int8-recipe", help="export int8 with this recipe only (e.g. all-matmul), not the budget's search"
    )
    parser.add_argument("--markdown-out", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    names = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHAPES]
    if unknown or not names:
        parser.error(f"unknown shapes {unknown}; choose from {', '.join(PUBLIC_SHAPES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.work.mkdir(parents=True, exist_ok=True)
    # build and export before measuring
    prepared = {name: prepare(name, args.work, build_shape, args.int8_recipe) for name in names}
    passages = make_passages(next(iter(prepared.values()))[1] / "tokenizer.json")
    loadavg_start = os.getloadavg()
    if loadavg_start[0] > 0.75 * (os.cpu_count() or 1):
        print(f"note: load average {loadavg_start[0]:.2f}: others are using this machine", file=sys.stderr)
    peak_start = matmul_peak()
    results: dict[str, Any] = {"settings": {"rounds": args.rounds, "batch_size": 32}, "shapes": {}}
    for name, (src, out) in prepared.items():
        results["shapes"][name] = measure_shape(name, src, out, passages, args.rounds)
    peak_end = matmul_peak()
    results["peak_gflops"] = {
        **{key: max(peak_start[key], peak_end[key]) for key in peak_start},
        "start": peak_start,
        "end": peak_end,
    }
    results["machine"] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": _versions(),
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg(),
    }
    for shape in results["shapes"].values():
        shape["hardware_limit_texts_per_s"] = (
            100 * results["peak_gflops"]["onnxruntime"] / shape["gflop_per_100_passages"]
        )
    text = markdown(results)
    print(text)
    if args.markdown_out:
        args.markdown_out.write_text(text + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
