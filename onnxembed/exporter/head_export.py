"""Steps shared by the export jobs of models whose graph gives one (batch, n) output from a head: rerankers
(rerank.py: logits) and sparse encoders (sparse.py: SPLADE vectors).

In scope: tracing that output and checking it against torch on padded batches (with the dynamo fallback of the
embedding job), and the steps after the graph (manifest, pipeline verification, variants).
Not in scope: what each kind verifies against sentence-transformers or measures its variants on.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.errors import ExportVerificationError
from onnxembed.manifest import LOGITS_OUTPUT, MANIFEST_NAME, MODEL_INPUTS, Manifest, Variant

logger = logging.getLogger(__name__)


def graph_input_names(tokenizer: Any, model: Any) -> tuple[str, ...]:
    """The inputs the graph takes: those of MODEL_INPUTS that the tokenizer gives and the model's forward accepts."""
    accepted = set(inspect.signature(model.forward).parameters)
    return tuple(name for name in MODEL_INPUTS if name in tokenizer.model_input_names and name in accepted)


def manifest_fields(
    tokenizer: Any,
    max_seq_length: int,
    do_lower_case: bool,
    input_names: tuple[str, ...],
    output_name: str,
    prompts: dict[str, str],
    default_prompt_name: str | None,
) -> dict[str, Any]:
    """The Manifest fields a reranker's and a sparse encoder's export fill alike: no pooling and no Normalize
    (the graph's output is the result), the tokenizer's settings, prompts, the fp32 graph and the versions."""
    from onnxembed.exporter.pipeline import ONNX_FILE, _versions

    return {
        "pooling_modes": (),
        "include_prompt": True,
        "normalize": False,
        "max_seq_length": max_seq_length,
        "do_lower_case": do_lower_case,
        "pad_token_id": int(tokenizer.pad_token_id),
        "padding_side": str(tokenizer.padding_side),
        "truncation_side": str(tokenizer.truncation_side),
        "input_names": input_names,
        "output_name": output_name,
        "prompts": prompts,
        "default_prompt_name": default_prompt_name,
        "versions": _versions(),
        "variants": {"fp32": Variant(file=ONNX_FILE, dtype="fp32")},
    }


def trace_and_verify(
    model: Any,
    input_names: tuple[str, ...],
    pad_token_id: int,
    onnx_file: Path,
    max_seq_length: int,
    output: str,
    *,
    exporter: Any,
    external_data: bool | None,
    verify: bool,
    atol: float,
) -> tuple[dict[str, Any], float | None]:
    """Trace ``model``'s ``output`` ((batch, n)) to ``onnx_file`` and check it against torch (see
    :func:`verify_logits_graph`); a graph that fails is exported again with the other exporter ("auto" only,
    see fallback_exporter).
    Returns what export_onnx did and the max abs difference (None unverified). Rerankers and sparse encoders."""
    from onnxembed.exporter.onnx_export import export_onnx, fallback_exporter

    args = (model, input_names, pad_token_id, onnx_file)
    trace = export_onnx(*args, exporter, external_data, verified=verify, output=output, max_seq_length=max_seq_length)
    if not verify:
        return trace, None
    check = (model, onnx_file, input_names, pad_token_id, max_seq_length, atol, output)
    try:
        return trace, verify_logits_graph(*check)
    except ExportVerificationError as error:
        first = trace["exporter"]
        other = fallback_exporter(exporter, first, getattr(model.config, "model_type", None))
        if other is None:
            raise
        logger.warning("the %s graph failed verification (%s); exporting with %s", first, error, other)
        trace = export_onnx(*args, other, external_data, output=output, max_seq_length=max_seq_length)
        return trace, verify_logits_graph(*check)


def verify_logits_graph(
    model: Any,
    onnx_file: Path,
    input_names: tuple[str, ...],
    pad_token_id: int,
    max_len: int,
    atol: float = 1e-4,
    output: str = LOGITS_OUTPUT,
) -> float:
    """Max abs difference of the graph's ``output`` ((batch, n): a classifier's logits, a sparse encoder's
    vectors) from torch's on padded batches unlike the export sample."""
    import onnxruntime as ort
    import torch

    from onnxembed.exporter.verify import _graph_batches, attention_reach
    from onnxembed.runtime.session import quiet_options

    session = ort.InferenceSession(str(onnx_file), sess_options=quiet_options(), providers=["CPUExecutionProvider"])
    worst = 0.0
    batches = _graph_batches(input_names, model.config.vocab_size, pad_token_id, max_len, attention_reach(model.config))
    with torch.no_grad():
        for batch in batches:
            expected = getattr(model(**{name: torch.from_numpy(array) for name, array in batch.items()}), output)
            (actual,) = session.run([output], batch)
            worst = max(worst, float(np.abs(actual - expected.numpy()).max()))
    if not worst <= atol:
        raise ExportVerificationError(
            f"{onnx_file} disagrees with the torch model on padded batches: max abs diff {worst:.3g} > {atol:g}"
        )
    return worst


def finish_export(
    out: Path,
    manifest: Manifest,
    verify: Callable[[], dict[str, Any]] | None,
    build_variants: Callable[[], dict[str, Variant]] | None,
) -> Manifest:
    """The steps after the graph, for rerankers and sparse encoders: write the manifest, check the whole pipeline
    with ``verify`` (a failure removes the manifest, so that the directory does not load), record the fp32
    accuracy, build and measure the variants, write the manifest again."""
    manifest.write(out)
    accuracy: dict[str, Any] = {}
    if verify is not None:
        try:
            accuracy = verify()
        except Exception:
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            raise
    variants = {"fp32": dataclasses.replace(manifest.variants["fp32"], accuracy=accuracy)}
    if build_variants is not None:
        variants.update(build_variants())
    manifest = dataclasses.replace(manifest, variants=variants)
    manifest.write(out)
    logger.info("exported %s %s -> %s: %s", manifest.task, manifest.source.get("path"), out, accuracy)
    return manifest
