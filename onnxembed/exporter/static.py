"""Export a StaticEmbedding model (model2vec-style: a tokenizer and one embedding table, no transformer).

sentence-transformers' StaticEmbedding tokenizes without special tokens, keeps tokenizer.json's own
truncation (none in model2vec's files: its max_seq_length is unbounded), and averages the token vectors of
each text (an EmbeddingBag). The export is the module as sentence-transformers saves it, at the root of the
output (tokenizer.json, model.safetensors with a float32 ``embedding.weight``): there is no graph, because the
runtime takes the rows with numpy, which ran faster than a one-node Gather graph in onnxruntime
(docs/performance.md#staticembedding-model2vec-style-models).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxembed.errors import ModelLoadError
from onnxembed.exporter.dense import WEIGHTS_FILE, module_tensors

# What the manifest records as max_seq_length when tokenizer.json truncates nothing.
UNBOUNDED_LENGTH = 2**31 - 1


@dataclass(frozen=True)
class StaticExport:
    dim: int
    max_seq_length: int
    truncation_side: str


def export_static(folder: Path, out: Path) -> StaticExport:
    """Write tokenizer.json and model.safetensors (float32) from the module ``folder`` to the root of ``out``."""
    from safetensors.numpy import save_file

    tensors = module_tensors(folder)
    if "embedding.weight" not in tensors:
        raise ModelLoadError(f"{folder} has no embedding.weight (found {sorted(tensors)})")
    table = np.ascontiguousarray(tensors["embedding.weight"], dtype=np.float32)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"{tokenizer_file} is missing")
    truncation = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("truncation") or {}
    shutil.copyfile(tokenizer_file, out / "tokenizer.json")
    save_file({"embedding.weight": table}, str(out / WEIGHTS_FILE))
    return StaticExport(
        dim=int(table.shape[1]),
        max_seq_length=int(truncation.get("max_length") or UNBOUNDED_LENGTH),
        truncation_side=str(truncation.get("direction", "right")).lower(),
    )
