"""Export a StaticEmbedding model (model2vec-style: a tokenizer and one embedding table, no transformer).

sentence-transformers' StaticEmbedding tokenizes without special tokens, keeps tokenizer.json's own
truncation (none in model2vec's files: its max_seq_length is unbounded), and averages the token vectors of
each text (an EmbeddingBag). The export is a one-node graph (input_ids -> Gather -> token vectors) that the
runtime mean-pools with the attention mask like any other model: the same batching, serving and Dense /
Normalize code, with no numpy path of its own to keep in step.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxembed.errors import ModelLoadError
from onnxembed.exporter.dense import WEIGHTS_FILE, module_tensors
from onnxembed.exporter.onnx_io import save

# What the manifest records as max_seq_length when tokenizer.json truncates nothing.
UNBOUNDED_LENGTH = 2**31 - 1
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class StaticExport:
    dim: int
    max_seq_length: int
    truncation_side: str


def export_static(folder: Path, out: Path, onnx_file: Path, output_name: str) -> StaticExport:
    """Write ``onnx_file`` (input_ids (batch, seq) int64 -> ``output_name`` (batch, seq, dim) float32), and
    tokenizer.json and model.safetensors at the root of ``out``, where sentence-transformers looks for them."""
    from safetensors.numpy import save_file

    tensors = module_tensors(folder)
    if "embedding.weight" not in tensors:
        raise ModelLoadError(f"{folder} has no embedding.weight (found {sorted(tensors)})")
    table = np.ascontiguousarray(tensors["embedding.weight"], dtype=np.float32)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"{tokenizer_file} is missing")
    truncation = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("truncation") or {}
    if out.resolve() != folder.resolve():
        shutil.copyfile(tokenizer_file, out / "tokenizer.json")
    save_file({"embedding.weight": table}, str(out / WEIGHTS_FILE))

    node = helper.make_node("Gather", ["embedding", "input_ids"], [output_name], axis=0)
    graph = helper.make_graph(
        [node],
        "static_embedding",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", "sequence", table.shape[1]])],
        initializer=[numpy_helper.from_array(table, "embedding")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    save(model, onnx_file, table.nbytes > _EXTERNAL_DATA_BYTES)
    return StaticExport(
        dim=int(table.shape[1]),
        max_seq_length=int(truncation.get("max_length") or UNBOUNDED_LENGTH),
        truncation_side=str(truncation.get("direction", "right")).lower(),
    )
