"""The manifest (onnxembed.json) that an export writes and the runtime reads.

In scope: the frozen dataclasses that describe an exported model and their JSON round trip.
Not in scope: how the values are found (export/) or used (runtime/). Imports the standard library only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxembed.errors import ModelLoadError

MANIFEST_NAME = "onnxembed.json"
# The graph inputs an export may declare and the runtime knows how to fill.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The output of graphs that pool (and normalize) inside: (batch, dim) float32.
POOLED_OUTPUT = "sentence_embedding"
# The output of reranker (cross-encoder) graphs: (batch, num_labels) float32 logits, before the activation.
LOGITS_OUTPUT = "logits"
# 2 added Dense layers and StaticEmbedding's add_special_tokens; version 1 manifests read as they were.
FORMAT_VERSION = 2
# 3 added rerankers (task, num_labels, activation_fn). Only reranker exports are written as 3, so that an
# onnxembed that reads 2 still loads embedding exports, and says which format it reads for a reranker.
RERANKER_FORMAT_VERSION = 3
# 4 added sparse encoders (SPLADE: task "sparse", splade, static_route); written only for them, as 3 for rerankers.
SPARSE_FORMAT_VERSION = 4
# 5 added a sparse encoder's max_active_dims; written only where the model sets one, so that a reader of 4 says
# which format it cannot read instead of dropping the limit.
SPARSE_LIMITED_FORMAT_VERSION = 5
READABLE_FORMAT_VERSIONS = (1, 2, 3, 4, 5)
EMBEDDING = "embedding"
RERANKER = "reranker"
SPARSE = "sparse"
_RERANKER_KEYS = ("task", "num_labels", "activation_fn")
_SPARSE_KEYS = ("splade", "static_route")


@dataclass(frozen=True)
class Variant:
    """One ONNX graph of the model and the accuracy measured for it at export."""

    file: str  # relative to the model directory, e.g. "onnx/model.onnx"
    dtype: str = "fp32"
    accuracy: dict[str, Any] = field(default_factory=dict)
    pooled: bool = False  # the graph pools and normalizes itself: its output is POOLED_OUTPUT, (batch, dim)


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers Dense module after pooling: ``activation(x @ weight.T + bias)``."""

    path: str  # folder in the model directory: config.json and model.safetensors (linear.weight, linear.bias)
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of onnxembed.kernels.DENSE_ACTIVATIONS


@dataclass(frozen=True)
class StaticRoute:
    """An inference-free sparse model's query side: a per-token weight table that the runtime reads with numpy
    (sentence-transformers' SparseStaticEmbedding): a text's vector is the weight of each token it holds."""

    path: str  # folder in the model directory: tokenizer.json and model.safetensors ("weight": (vocab,) float32)
    max_seq_length: int  # tokens read per text (special tokens are not added)
    tasks: tuple[str, ...]  # encode tasks routed to the table ("query")
    default: bool | None = False  # encode() without a task: the table (True), the graph (False), an error (None)
    graph_tasks: tuple[str, ...] = ()  # tasks routed to the graph ("document"); others are errors. () (older
    # exports): every task not in ``tasks``


@dataclass(frozen=True)
class Manifest:
    """What the runtime needs to turn text into the same embeddings as sentence-transformers."""

    dim: int
    pooling_modes: tuple[str, ...]
    include_prompt: bool
    normalize: bool
    max_seq_length: int
    do_lower_case: bool
    pad_token_id: int
    padding_side: str
    input_names: tuple[str, ...]
    output_name: str
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"
    truncate_dim: int | None = None
    truncation_side: str = "right"
    architecture: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    dense: tuple[DenseLayer, ...] = ()  # applied in order after pooling, before Normalize
    add_special_tokens: bool = True  # False for StaticEmbedding, which tokenizes without them
    task: str = EMBEDDING  # RERANKER: a cross-encoder; its graph gives LOGITS_OUTPUT and dim == num_labels
    num_labels: int = 0  # rerankers: the classifier's outputs per pair
    activation_fn: str = ""  # rerankers: the activation predict applies to the logits (a kernels.dense name)
    # sparse: the SpladePooling the graph carries ({"pooling_strategy", "activation_function"}); its output is
    # POOLED_OUTPUT, (batch, vocabulary) float32, and dim is the vocabulary size
    splade: dict[str, str] = field(default_factory=dict)
    static_route: StaticRoute | None = None  # sparse, inference-free: the query side's table
    max_active_dims: int | None = None  # sparse: the terms each vector keeps at most (None: all)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        raw = asdict(self)
        # without the keys of later kinds, so that a reader of an earlier format still loads what it can
        if self.task != SPARSE:
            for key in _SPARSE_KEYS:
                del raw[key]
        if self.max_active_dims is None:
            del raw["max_active_dims"]
        if self.task == EMBEDDING:
            for key in _RERANKER_KEYS:
                del raw[key]
        return json.dumps(raw, indent=2, ensure_ascii=False) + "\n"

    def write(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, model_dir: str | Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_NAME
        if not Path(model_dir).is_dir():
            if Path(model_dir).exists():
                raise ModelLoadError(f"{str(model_dir)!r} is a file, not a model directory written by onnxembed export")
            raise ModelLoadError(f"model directory {str(model_dir)!r} does not exist")
        if not path.is_file():
            raise ModelLoadError(
                f"{path} is missing: {model_dir} is not an onnxembed export (run `onnxembed export SRC OUT`)"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ModelLoadError(f"{path} is corrupt: it holds a JSON {type(raw).__name__}, not an object")
            if raw.get("format_version") not in READABLE_FORMAT_VERSIONS:
                raise ModelLoadError(
                    f"{path} has format_version {raw.get('format_version')!r}; this onnxembed reads "
                    f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
                )
            raw["variants"] = {name: Variant(**variant) for name, variant in raw.get("variants", {}).items()}
            raw["dense"] = tuple(DenseLayer(**layer) for layer in raw.get("dense", ()))
            if raw.get("static_route") is not None:
                route = raw["static_route"]
                tuples = {key: tuple(route[key]) for key in ("tasks", "graph_tasks") if key in route}
                raw["static_route"] = StaticRoute(**{**route, **tuples})
            for key in ("pooling_modes", "input_names"):
                raw[key] = tuple(raw[key])
            return cls(**raw)
        except ModelLoadError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise ModelLoadError(f"{path} is corrupt: {error}") from error
