"""Steps shared by the export jobs of models whose graph gives one (batch, n) output from a head: rerankers
(rerank.py: logits) and sparse encoders (sparse.py: SPLADE vectors).

In scope: tracing that output and checking it against torch on padded batches (with the dynamo fallback of the
embedding job), and the steps after the graph (manifest, pipeline verification, variants).
Not in scope: what each kind verifies against sentence-transformers or measures its variants on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.errors import ExportVerificationError
from onnxembed.manifest import LOGITS_OUTPUT, MANIFEST_NAME, Manifest, Variant

logger = logging.getLogger(__name__)


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
    :func:`verify_logits_graph`); a TorchScript graph that fails is exported again with dynamo ("auto" only).
    Returns what export_onnx did and the max abs difference (None unverified). Rerankers and sparse encoders."""
    from onnxembed.exporter.onnx_export import export_onnx

    args = (model, input_names, pad_token_id, onnx_file)
    trace = export_onnx(*args, exporter, external_data, verified=verify, output=output, max_seq_length=max_seq_length)
    if not verify:
        return trace, None
    check = (model, onnx_file, input_names, pad_token_id, max_seq_length, atol, output)
    try:
        return trace, verify_logits_graph(*check)
    except ExportVerificationError as error:
        if exporter != "auto" or trace["exporter"] != "torchscript":
            raise
        logger.warning("the TorchScript graph failed verification (%s); exporting with dynamo", error)
        trace = export_onnx(*args, "dynamo", external_data, output=output, max_seq_length=max_seq_length)
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

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
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
