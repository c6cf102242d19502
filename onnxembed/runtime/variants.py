"""Which graph of an exported directory to load.

"auto" takes the fastest variant whose recorded accuracy the exporter accepted: on CUDA the fused fp16
graph that pools inside (only (batch, dim) leaves the device), else the nearest to it that exists; on
CPU int8 when its accuracy met the budget it was made for, else the fused fp32 graph when there is one,
else fp32. A variant name or a graph file name picks that graph.

The int8 graphs quantize activations dynamically, with one scale per batch tensor: their embeddings
move with which texts share a batch, about as much as int8 moves them from fp32 (MiniLM: max abs 1.6e-2,
cosine >= 0.9958 between one text per call and one call of 400). fp32 and fused graphs do not. Running
each text alone (batch_size=1) makes int8 vectors depend on the text only.
"""

from __future__ import annotations

from pathlib import Path

from onnxembed.errors import InvalidArgumentError
from onnxembed.manifest import Manifest

_AUTO_ORDER = {
    "CUDAExecutionProvider": (
        "optimized-gpu-pooled",
        "fp16-pooled",
        "optimized-gpu",
        "fp16",
        "fp32-pooled",
        "fp32",
    ),
    "CPUExecutionProvider": ("int8", "optimized", "fp32"),
}


def choose_variant(manifest: Manifest, model_dir: Path, variant: str, provider: str) -> tuple[str, str]:
    """(variant name, graph file relative to model_dir). ValueError listing the choices if unknown."""
    if variant == "auto":
        for name in _AUTO_ORDER.get(provider, ("fp32",)):
            candidate = manifest.variants.get(name)
            if candidate is not None and candidate.accuracy.get("accepted", name == "fp32"):
                return name, candidate.file
        return "fp32", manifest.variants["fp32"].file
    if variant in manifest.variants:
        return variant, manifest.variants[variant].file
    for name, candidate in manifest.variants.items():
        if variant in (candidate.file, Path(candidate.file).name):
            return name, candidate.file
    for relative in (Path(variant), Path("onnx") / variant):
        if (model_dir / relative).is_file() and relative.suffix == ".onnx":
            return relative.name, str(relative)
    choices = ", ".join(["auto", *manifest.variants])
    raise InvalidArgumentError(
        f"variant {variant!r} is not in {model_dir}; choose from {choices} or a .onnx file there"
    )
