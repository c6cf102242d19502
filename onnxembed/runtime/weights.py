"""Read a safetensors file (a Dense layer's weights) into numpy arrays, without torch or the safetensors package.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw little-endian data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxembed.errors import ModelLoadError
from onnxembed.kernels.dense import DENSE_ACTIVATIONS
from onnxembed.manifest import DenseLayer

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor in ``path`` as a numpy array (bf16 widened to float32); ModelLoadError naming the file."""
    try:
        data = path.read_bytes()
        (header_length,) = np.frombuffer(data[:8], dtype="<u8")
        header = json.loads(data[8 : 8 + int(header_length)])
        if not isinstance(header, dict):
            raise ModelLoadError(f"{path}: the safetensors header is not a JSON object")
        body = memoryview(data)[8 + int(header_length) :]
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            raw = body[begin:end]
            if info["dtype"] == "BF16":  # the upper half of a float32
                wide = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                array = wide.view(np.float32)
            elif info["dtype"] in _DTYPES:
                array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
            else:
                raise ModelLoadError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which onnxembed cannot read")
            tensors[name] = array.reshape(info["shape"])
        return tensors
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path} is not a readable safetensors file: {error}") from error


def read_dense_layer(model_dir: Path, layer: DenseLayer) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(weight, bias, activation) of one Dense layer of the manifest, read from its folder."""
    path = model_dir / layer.path / "model.safetensors"
    tensors = read_safetensors(path)
    weight, bias = tensors.get("linear.weight"), tensors.get("linear.bias")
    if weight is None or weight.shape != (layer.out_features, layer.in_features) or (bias is None) == layer.bias:
        raise ModelLoadError(f"{path} does not hold the Dense layer its manifest describes ({layer})")
    if layer.activation not in DENSE_ACTIVATIONS:
        raise ModelLoadError(f"{path}: activation {layer.activation!r} is not one of {DENSE_ACTIVATIONS}")
    return weight, bias, layer.activation
