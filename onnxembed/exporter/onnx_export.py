"""Trace an HF encoder to an ONNX graph with dynamic batch and sequence axes.

In scope: the traced wrapper (inputs -> last_hidden_state), choosing the exporter, a padded export
sample, external data for graphs over 2 GB.
Not in scope: checking that the graph is right (verify.py).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from onnxembed.exporter.attention import lean_attention, lean_family, loop_rows
from onnxembed.exporter.config import DECODER_MODEL_TYPES
from onnxembed.exporter.errors import UnsupportedModelError
from onnxembed.exporter.fusions import fuse_rms_norms
from onnxembed.exporter.onnx_io import save

logger = logging.getLogger(__name__)

Exporter = Literal["auto", "torchscript", "dynamo"]
OUTPUT_NAME = "last_hidden_state"
OPSET = 18
# protobuf's hard limit is 2 GiB; keep a margin for the graph itself.
_EXTERNAL_DATA_BYTES = 1_800_000_000


class _TokenEmbeddings(torch.nn.Module):
    """forward(input_ids, attention_mask[, token_type_ids]) -> (batch, seq, dim) token embeddings, or the
    model's other ``output`` (a classifier's (batch, num_labels) logits)."""

    def __init__(self, model: torch.nn.Module, output: str = OUTPUT_NAME) -> None:
        super().__init__()
        self.model = model
        self.output = output
        # Decoders and decoder-derived encoders (Gemma3) would otherwise build a key/value cache inside the graph.
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.no_cache:
            inputs["use_cache"] = False
        return getattr(self.model(**inputs, return_dict=True), self.output)  # type: ignore[no-any-return]


@contextlib.contextmanager
def _trained_rope(model: torch.nn.Module) -> Iterator[None]:
    """Trace dynamic NTK RoPE with its trained frequencies: transformers decides per batch whether to recompute
    them (a branch on the data torch.export cannot trace), and up to max_position_embeddings, where load.py caps
    max_seq_length, it keeps them."""

    def fixed(kind: Any) -> Any:  # transformers 5 keeps one kind per layer type in a dict
        if isinstance(kind, dict):
            return {layer: fixed(value) for layer, value in kind.items()}
        return "default" if "dynamic" in str(kind) else kind

    modules = [module for module in model.modules() if "dynamic" in str(getattr(module, "rope_type", ""))]
    kinds = [module.rope_type for module in modules]
    for module, kind in zip(modules, kinds, strict=True):
        module.rope_type = fixed(kind)
    try:
        yield
    finally:
        for module, kind in zip(modules, kinds, strict=True):
            module.rope_type = kind


def export_sample(
    input_names: tuple[str, ...], vocab_size: int, pad_token_id: int, length: int = 8
) -> tuple[torch.Tensor, ...]:
    """A batch of 2 x ``length`` with padding at the end of the second row: a graph traced on an all-ones mask
    can drop the mask."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.int64)
    attention_mask[1, length * 5 // 8 :] = 0
    input_ids[1, length * 5 // 8 :] = pad_token_id
    arrays = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(2, length, dtype=torch.int64),
    }
    return tuple(arrays[name] for name in input_names)


# Families TorchScript cannot carry here, and why: "auto" takes dynamo for them up front (no failed trace
# and fallback), and an explicit exporter="torchscript" is refused with the reason.
TORCHSCRIPT_UNSUPPORTED = {
    "gemma3_text": "TorchScript cannot trace Gemma3's mask functions (RuntimeError: unordered_map::at, torch 2.13)",
    **{
        model_type: "TorchScript cannot trace the decoders' causal mask functions (RuntimeError: unordered_map::at, "
        "torch 2.13 with transformers 4.57)"
        for model_type in DECODER_MODEL_TYPES
    },
}

# Families whose looped attention (dynamo) beat TorchScript's unrolled graph, where it applies.
LOOP_PREFERRED = frozenset({"modernbert"})


def choose_exporter(
    exporter: Exporter, verified: bool = True, model_type: str | None = None, loops: bool = False
) -> Literal["torchscript", "dynamo"]:
    """auto: TorchScript first. Its graphs are the ones onnxruntime's transformer optimizer fuses into
    Attention nodes (the dynamo graph of all-MiniLM-L6-v2 got no Attention fusion); the export job falls
    back to the other exporter when the graph fails verification (fallback_exporter; an early transformers
    5.x trace of the attention mask was wrong on padded batches; 5.24 with torch 2.13 traces every seed
    replica right).
    Unverified exports (--no-verify) cannot fall back, so on transformers 5.x they take dynamo, and so do
    the families in TORCHSCRIPT_UNSUPPORTED always (the decoders among them, whose attention dynamo exports
    as a loop: see attention.py). ModernBERT takes dynamo where its attention ``loops`` (transformers 4.x):
    on the 22-layer ModernBERT-base shape the looped graph ran short texts 1.2x and one 8,192-token text
    2.4x as fast as TorchScript's unrolled one (docs/performance.md#long-texts)."""
    reason = TORCHSCRIPT_UNSUPPORTED.get(model_type or "")
    if exporter == "torchscript" and reason:
        raise UnsupportedModelError(
            f"exporter='torchscript' cannot export model_type {model_type!r}: {reason}; "
            "use exporter='dynamo' (or 'auto')"
        )
    if exporter != "auto":
        return exporter
    if reason or (loops and model_type in LOOP_PREFERRED):
        return "dynamo"
    if verified:
        return "torchscript"
    import transformers

    return "torchscript" if int(transformers.__version__.split(".")[0]) < 5 else "dynamo"


def fallback_exporter(
    exporter: Exporter, first: str, model_type: str | None = None
) -> Literal["torchscript", "dynamo"] | None:
    """auto's second try when the ``first`` graph fails verification: the other exporter, where the family
    has one (TorchScript cannot trace the families in TORCHSCRIPT_UNSUPPORTED); None for an explicit choice."""
    if exporter != "auto":
        return None
    if first == "torchscript":
        return "dynamo"
    return None if (model_type or "") in TORCHSCRIPT_UNSUPPORTED else "torchscript"


def export_onnx(
    model: Any,  # transformers.PreTrainedModel
    input_names: tuple[str, ...],
    pad_token_id: int,
    out_file: Path,
    exporter: Exporter = "auto",
    external_data: bool | None = None,
    verified: bool = True,
    max_seq_length: int = 512,
    output: str = OUTPUT_NAME,
) -> dict[str, Any]:
    """Write ``out_file`` (and ``out_file.name + '_data'`` when external); return what was done. ``output``:
    the model output the graph gives ("logits" for a classifier: (batch, num_labels))."""
    import onnx

    lean = lean_family(model)
    method = choose_exporter(exporter, verified, getattr(model.config, "model_type", None), loops=lean)
    looped = method == "dynamo"
    length = 8
    if looped and lean:
        # Traced on one loop step, torch.export would fix the step count (and the length) at 1; two steps
        # leave it dynamic.
        length = loop_rows(model, max_seq_length) + 8
    wrapper = _TokenEmbeddings(model, output).eval()
    sample = export_sample(input_names, int(model.config.vocab_size), pad_token_id, length)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes[output] = {0: "batch", 1: "sequence"} if output == OUTPUT_NAME else {0: "batch"}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as scratch,
        torch.no_grad(),
        lean_attention(model, max_seq_length, looped) as plan,
        _trained_rope(model),
    ):
        traced = Path(scratch) / "model.onnx"
        if method == "torchscript":
            torch.onnx.export(
                wrapper,
                sample,
                str(traced),
                input_names=list(input_names),
                output_names=[output],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        else:
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            shapes = tuple({0: batch, 1: sequence} for _ in input_names)
            program = torch.onnx.export(
                wrapper,
                sample,
                input_names=list(input_names),
                output_names=[output],
                dynamic_shapes=shapes,
                opset_version=OPSET,
                dynamo=True,
                optimize=True,
            )
            if program is None:
                raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
            program.save(str(traced))
        # The exporters may already have spilled weights to files beside the graph: count them all.
        size = sum(path.stat().st_size for path in Path(scratch).iterdir())
        graph = onnx.load(str(traced), load_external_data=True)
    rms_norms = fuse_rms_norms(graph)
    external = size > _EXTERNAL_DATA_BYTES if external_data is None else external_data
    save(graph, out_file, external)
    logger.info("exported %s with %s (%d MB, external data: %s)", out_file, method, size >> 20, external)
    if rms_norms:
        logger.info("fused %d RMSNorms into SimplifiedLayerNormalization", rms_norms)
    return {
        "exporter": method,
        "opset": OPSET,
        "external_data": external,
        "graph_bytes": size,
        "attention": plan.describe() if plan else "eager",
        "fused_rms_norms": rms_norms,
    }
