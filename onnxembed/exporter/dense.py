"""Carry a model's Dense modules into the export: float32 weights in safetensors, read later without torch.

In scope: reading each Dense module's weights (model.safetensors, or pytorch_model.bin from older saves),
checking that the layers chain (each in_features is the previous width), and writing each layer's folder in
the output as sentence-transformers saves it, so that the output also loads in sentence-transformers.
Not in scope: applying them (onnxembed.kernels.dense at run time, graph_pooling.py inside pooled graphs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from onnxembed.errors import ModelLoadError, UnsupportedModelError
from onnxembed.exporter.config import DenseConfig
from onnxembed.manifest import DenseLayer
from onnxembed.runtime.weights import read_safetensors

WEIGHTS_FILE = "model.safetensors"


def module_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The tensors a sentence-transformers module saved in ``folder``, as float32/int numpy arrays."""
    if (folder / WEIGHTS_FILE).is_file():
        return read_safetensors(folder / WEIGHTS_FILE)
    if (folder / "pytorch_model.bin").is_file():
        import torch

        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {name: tensor.float().numpy() for name, tensor in state.items()}
    raise ModelLoadError(f"{folder} holds no weights: expected {WEIGHTS_FILE} or pytorch_model.bin")


def dense_weights(layer: DenseConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight (out, in), bias (out,) or None), float32, checked against the layer's config."""
    tensors = module_tensors(layer.path)
    if "linear.weight" not in tensors:
        raise ModelLoadError(f"{layer.path} has no linear.weight (found {sorted(tensors)})")
    weight = np.ascontiguousarray(tensors["linear.weight"], dtype=np.float32)
    bias = tensors.get("linear.bias")
    if weight.shape != (layer.out_features, layer.in_features) or (bias is None) == layer.bias:
        raise ModelLoadError(
            f"{layer.path}: linear.weight {weight.shape}, bias {bias is not None} do not match its config "
            f"(out {layer.out_features}, in {layer.in_features}, bias {layer.bias})"
        )
    return weight, None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)


def write_dense(
    layers: tuple[DenseConfig, ...], folders: list[Path], pooled_dim: int, out: Path
) -> tuple[DenseLayer, ...]:
    """Write each layer into its folder under ``out`` (config.json as saved, float32 weights); return the
    manifest's description of them. UnsupportedModelError when the widths do not chain from ``pooled_dim``."""
    from safetensors.numpy import save_file

    written = []
    width = pooled_dim
    for layer, folder in zip(layers, folders, strict=True):
        if layer.in_features != width:
            raise UnsupportedModelError(
                f"{layer.path}: Dense in_features {layer.in_features} does not match the {width} values it receives"
            )
        weight, bias = dense_weights(layer)
        (out / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(layer.path / "config.json", out / folder / "config.json")
        tensors = {"linear.weight": weight} if bias is None else {"linear.weight": weight, "linear.bias": bias}
        save_file(tensors, str(out / folder / WEIGHTS_FILE))
        written.append(DenseLayer(str(folder), layer.in_features, layer.out_features, layer.bias, layer.activation))
        width = layer.out_features
    return tuple(written)
