"""Which graph of an exported directory to load.

"auto" takes the fastest variant whose recorded accuracy the exporter accepted: on CUDA the fused fp16
graph that pools inside (only (batch, dim) leaves the device), else the nearest to it that exists; on
CPU int8 when its accuracy met the budget it was made for, else the fused fp32 graph when there is one,
else fp32. A variant name or a graph file name picks that graph.

The int8 graphs quantize activations dynamically, with one scale per batch tensor: their embeddings
move with which texts share a batch, about as much as int8 moves them from fp32 (MiniLM: max abs 1.6e-2,
cosine >= 0.9958 between one text per call and one call of 400). fp32 and fused graphs do not. Running
each text alone (batch_size=1) makes int8 vectors depend on the text only.

An int8 graph with full-range weights (made on a CPU with VNNI) is not what "auto" takes on a CPU whose int8
kernel saturates on them (runtime/int8.py): its vectors there are not the ones its accuracy was measured on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from onnxembed.errors import Int8SaturationWarning, InvalidArgumentError
from onnxembed.manifest import Manifest, Variant
from onnxembed.runtime.int8 import full_range_int8, u8s8_saturates

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
        saturating = None
        for name in _AUTO_ORDER.get(provider, ("fp32",)):
            candidate = manifest.variants.get(name)
            if candidate is None or not candidate.accuracy.get("accepted", name == "fp32"):
                continue
            if _saturates(candidate):
                saturating = candidate
                continue
            break
        else:
            name, candidate = "fp32", manifest.variants["fp32"]
        if saturating is not None:
            warnings.warn(_saturation_note(saturating, f"Loading {name} instead."), Int8SaturationWarning, 4)
        return name, candidate.file
    named = [(variant, manifest.variants[variant])] if variant in manifest.variants else []
    for name, candidate in named or manifest.variants.items():
        if variant in (name, candidate.file, Path(candidate.file).name):
            if _saturates(candidate):
                warnings.warn(_saturation_note(candidate, "Loaded as asked."), Int8SaturationWarning, 4)
            return name, candidate.file
    for relative in (Path(variant), Path("onnx") / variant):
        if (model_dir / relative).is_file() and relative.suffix == ".onnx":
            return relative.name, str(relative)
    choices = ", ".join(["auto", *manifest.variants])
    raise InvalidArgumentError(
        f"variant {variant!r} is not in {model_dir}; choose from {choices} or a .onnx file there"
    )


def _saturates(candidate: Variant) -> bool:
    # Whatever the provider: CUDA has no uint8 x int8 MatMulInteger, so those nodes fall back to the CPU's kernel.
    return full_range_int8(candidate) and u8s8_saturates()


def _saturation_note(candidate: Variant, what: str) -> str:
    return (
        f"{candidate.file} holds full-range int8 weights (made on a CPU whose int8 kernel is exact: VNNI); "
        "onnxruntime's int8 kernel on this CPU adds their products in 16 bits and saturates, so its vectors "
        f"differ from those measured at export. {what} An int8 export with 7-bit weights (--int8-target avx2, "
        "made on any CPU) runs here as measured."
    )
