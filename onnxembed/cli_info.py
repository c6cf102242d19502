"""``onnxembed info``: what an exported directory holds, or what export supports. Kept apart from cli.py,
which parses the command line and runs the command named.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from onnxembed.cli_export import accuracy_summary
from onnxembed.manifest import RERANKER, SPARSE, Manifest


def add_parser(commands: Any) -> None:
    info = commands.add_parser("info", help="show what an exported directory holds")
    info.add_argument(
        "model_dir", nargs="?", help="directory written by `onnxembed export` (none: what export supports)"
    )
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")


def run(args: argparse.Namespace) -> None:
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
            accuracy = accuracy_summary(variant.accuracy)
        missing = "" if (Path(args.model_dir) / variant.file).is_file() else "  MISSING: the file is not there"
        print(f"variant {name}:  {variant.file}  [{accuracy or 'not verified'}]{missing}")
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
