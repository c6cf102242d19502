"""The export job for a SparseEncoder (SPLADE): the masked-LM head and SpladePooling traced into one graph,
OUT_DIR written, verified against torch and ``SparseEncoder.encode_query`` / ``encode_document``, the faster
variants built and measured on held-out retrieval.

The graph gives (batch, vocabulary) float32: pooling inside it, because the (tokens x vocabulary) logits it pools
would otherwise leave onnxruntime per batch (gigabytes for BERT's 30,522 terms). An inference-free model's query
side (a SparseStaticEmbedding: one weight per token) is written as its table and tokenizer under ``query/``, which
the runtime reads with numpy. Variants are measured as a sparse retriever is used: each held-out query's
documents ranked by dot product (Spearman's rank correlation against fp32) and each text's 10 heaviest terms
(overlap with fp32's).
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from onnxembed.errors import ExportVerificationError, InvalidArgumentError, UnsupportedModelError
from onnxembed.exporter.sparse_config import SparseEncoderConfig, read_sparse_encoder_config
from onnxembed.manifest import (
    POOLED_OUTPUT,
    SPARSE,
    SPARSE_FORMAT_VERSION,
    SPARSE_LIMITED_FORMAT_VERSION,
    Manifest,
    StaticRoute,
    Variant,
)

logger = logging.getLogger(__name__)

# The int8 budget for sparse encoders, on held-out real text: mean Spearman of each query's dot-product ranking
# of its documents, and mean overlap of each text's 10 heaviest terms, int8 against fp32 (issue #25).
INT8_MIN_MEAN_SPEARMAN = 0.98
INT8_MIN_TOP10_TERM_OVERLAP = 0.9
STATIC_FOLDER = "query"
# Documents timed for each variant's speed-up: enough for a stable rate, few enough for a BERT-base export on CPU.
RATE_DOCUMENTS = 128
# tokenizers' truncation takes a usize: a tokenizer without a limit (model_max_length 1e30) reads this many
_NO_LIMIT = 2**31 - 1


class SpladeGraph(torch.nn.Module):
    """A masked LM and SpladePooling as one module: (input_ids, attention_mask[, token_type_ids]) ->
    ``.sentence_embedding`` (batch, vocabulary), computed as sentence-transformers' SpladePooling does (logits
    times the mask, relu, log1p, log1p again for "log1p_relu", then max or sum over tokens)."""

    def __init__(self, model: Any, pooling_strategy: str, activation_function: str) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.pooling_strategy = pooling_strategy
        self.activation_function = activation_function

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SimpleNamespace:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        logits = self.model(**inputs, return_dict=True).logits
        weights = torch.log1p(torch.relu(logits * attention_mask.unsqueeze(-1).to(logits.dtype)))
        if self.activation_function == "log1p_relu":
            weights = torch.log1p(weights)
        pooled = weights.amax(dim=1) if self.pooling_strategy == "max" else weights.sum(dim=1)
        return SimpleNamespace(sentence_embedding=pooled)


def export_sparse(
    source: Path,
    out: Path,
    *,
    base_model: str | Path | None,
    exporter: Any,
    external_data: bool | None,
    overwrite: bool,
    verify: bool,
    atol: float,
    optimize: bool,
    target: Any,
    quantize: str | None,
    int8_target: str | None,
    fp16: bool,
    texts: Any,
    int8_min_spearman: float = INT8_MIN_MEAN_SPEARMAN,
    int8_min_top10_overlap: float = INT8_MIN_TOP10_TERM_OVERLAP,
) -> Manifest:
    """Export the SparseEncoder at ``source`` to ``out`` (see :func:`onnxembed.export`); ``texts``: a function
    returning the calibration texts (called only when variants are asked for)."""
    from onnxembed.exporter.head_export import finish_export, graph_input_names, manifest_fields, trace_and_verify
    from onnxembed.exporter.load import load_encoder
    from onnxembed.exporter.pipeline import ONNX_FILE, _prepare_out_dir
    from onnxembed.exporter.rerank import _keep_faithful_tokenizer
    from onnxembed.exporter.verify import VERIFY_TEXTS

    config = read_sparse_encoder_config(source)
    loaded = load_encoder(config.st_config, base_model, masked_lm=True)
    adapter_base = [Path(loaded.adapter["base_model"])] if loaded.adapter else []
    _prepare_out_dir(out, overwrite, [source, *adapter_base])
    tokenizer, model = loaded.tokenizer, loaded.model
    if tokenizer.pad_token_id is None:
        raise InvalidArgumentError(f"the tokenizer of {source} has no pad token; it cannot batch texts")
    graph = SpladeGraph(model, config.pooling_strategy, config.activation_function).eval()
    input_names = graph_input_names(tokenizer, model)
    tokenizer.save_pretrained(str(out))
    faithful = list(VERIFY_TEXTS)
    source_tokenizer = config.st_config.transformer_dir / "tokenizer.json"
    _keep_faithful_tokenizer(tokenizer, source_tokenizer, out / "tokenizer.json", faithful)
    model.config.save_pretrained(str(out))
    static_route = _write_static_route(config, out, faithful) if config.static_route else None
    onnx_file = out / ONNX_FILE
    length = loaded.max_seq_length
    trace, graph_diff = trace_and_verify(
        graph,
        input_names,
        tokenizer.pad_token_id,
        onnx_file,
        length,
        POOLED_OUTPUT,
        exporter=exporter,
        external_data=external_data,
        verify=verify,
        atol=max(atol, 1e-4),
    )
    splade = {"pooling_strategy": config.pooling_strategy, "activation_function": config.activation_function}
    manifest = Manifest(
        **manifest_fields(
            tokenizer,
            length,
            config.st_config.do_lower_case,
            input_names,
            POOLED_OUTPUT,
            config.prompts,
            config.default_prompt_name,
        ),
        dim=int(model.config.vocab_size),
        similarity_fn_name=config.similarity_fn_name,
        architecture=f"{loaded.architecture}+SpladePooling",
        source={"path": str(source), "adapter": loaded.adapter, "model_type": "SparseEncoder", **trace},
        task=SPARSE,
        splade=splade,
        static_route=static_route,
        max_active_dims=config.max_active_dims,
        format_version=SPARSE_FORMAT_VERSION if config.max_active_dims is None else SPARSE_LIMITED_FORMAT_VERSION,
    )

    def checked() -> dict[str, Any]:
        return {"graph_max_abs_diff": graph_diff, **verify_encode(source, out, atol)}

    def variants() -> dict[str, Variant]:
        return build_sparse_variants(
            out,
            model.config.num_attention_heads,
            model.config.hidden_size,
            manifest.padding_side == "right",
            texts(),
            optimize=optimize,
            target=target,
            int8_target=int8_target,
            fp16=fp16,
            int8_budget=(int8_min_spearman, int8_min_top10_overlap),
        )

    return finish_export(out, manifest, checked if verify else None, variants if optimize or quantize or fp16 else None)


def _write_static_route(config: SparseEncoderConfig, out: Path, texts: list[str]) -> StaticRoute:
    """out/query: the SparseStaticEmbedding's tokenizer (as sentence-transformers loads it) and its weight table
    ((vocabulary,) float32 under "weight" in model.safetensors)."""
    from safetensors.numpy import save_file
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from onnxembed.exporter.rerank import _keep_faithful_tokenizer

    assert config.static_route is not None  # only called for an inference-free model
    folder = config.static_route.folder
    if not (folder / "model.safetensors").is_file():
        raise UnsupportedModelError(
            f"{folder}: a SparseStaticEmbedding without model.safetensors (an idf.json table) is not supported"
        )
    weight = load_file(str(folder / "model.safetensors")).get("weight")
    if weight is None or weight.ndim != 1:
        raise UnsupportedModelError(f"{folder / 'model.safetensors'} has no 1-D 'weight' table")
    target = out / STATIC_FOLDER
    target.mkdir()
    save_file({"weight": weight.float().numpy()}, str(target / "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not tokenizer.is_fast:
        raise UnsupportedModelError(f"the tokenizer in {folder} has no fast (tokenizers) version")
    tokenizer.save_pretrained(str(target))
    _keep_faithful_tokenizer(tokenizer, folder / "tokenizer.json", target / "tokenizer.json", texts, False)
    limit = tokenizer.model_max_length
    route = config.static_route
    return StaticRoute(STATIC_FOLDER, int(min(limit, _NO_LIMIT)), route.tasks, route.default, route.graph_tasks)


def verify_encode(source: Path, out: Path, atol: float) -> dict[str, Any]:
    """Compare ``SparseEncoder(out)`` with sentence-transformers' ``SparseEncoder(source)`` on the verification
    texts, as queries and as documents (dense vectors, max abs difference)."""
    from onnxembed.exporter.verify import VERIFY_TEXTS
    from onnxembed.runtime import SparseEncoder

    try:
        from sentence_transformers import SparseEncoder as Reference
        from sentence_transformers import __version__

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = Reference(str(source), device="cpu")
    except Exception as error:  # an incompatible sentence-transformers version
        warnings.warn(f"sentence-transformers could not load {source} here, encode not verified: {error}", stacklevel=3)
        return {"sentence_transformers": f"not checked: {type(error).__name__}: {error}"}
    encoder = SparseEncoder(out, provider="cpu", variant="fp32")
    texts = list(VERIFY_TEXTS)
    # sentence-transformers 6 applies the saved max_active_dims by itself, 5.x only when asked
    limit = {"max_active_dims": encoder.max_active_dims} if encoder.max_active_dims is not None else {}
    worst = {}
    for side in ("query", "document"):
        expected = getattr(reference, f"encode_{side}")(
            texts, convert_to_tensor=True, convert_to_sparse_tensor=False, **limit
        )
        actual = getattr(encoder, f"encode_{side}")(texts, convert_to_sparse_tensor=False)
        if tuple(expected.shape) != actual.shape:
            raise ExportVerificationError(
                f"onnxembed gives {side} vectors of shape {actual.shape}, sentence-transformers {tuple(expected.shape)}"
            )
        worst[side] = float(np.abs(expected.numpy().astype(np.float64) - actual).max())
    if max(worst.values()) > atol:
        raise ExportVerificationError(
            f"{out} does not reproduce SparseEncoder({source}).encode_query/encode_document: max abs diff {worst} > "
            f"{atol:g}"
        )
    diffs = {f"{side}_max_abs_diff": diff for side, diff in worst.items()}
    return {"sentence_transformers": __version__, "texts": len(texts), **diffs}


def _top_terms(vectors: np.ndarray, k: int) -> list[set[int]]:
    """Each row's ``k`` heaviest active terms (fewer where fewer are active)."""
    tops = []
    for row in vectors:
        active = np.flatnonzero(row)
        order = active[np.argsort(-row[active], kind="stable")[:k]]
        tops.append(set(order.tolist()))
    return tops


def compare_sparse(
    reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], sets: list[Any], k: int = 10
) -> dict[str, float]:
    """(query vectors, document vectors) of a candidate against the reference's: each query's dot-product
    ranking of its documents (Spearman; ``sets``: per query the document rows) and each document's ``k``
    heaviest terms (mean overlap). Documents only: an inference-free model's queries come from its table, the
    same in every variant, and would count as perfect overlaps."""
    from onnxembed.exporter.accuracy import spearman

    spearmans = []
    for query, rows in enumerate(sets):
        ranked = [documents[rows] @ queries[query] for queries, documents in (reference, candidate)]
        spearmans.append(spearman(*ranked))
    overlaps = []
    for ours, theirs in zip(_top_terms(reference[1], k), _top_terms(candidate[1], k), strict=True):
        # two documents without an active term agree (one without, the other with, share nothing)
        overlaps.append(len(ours & theirs) / len(ours) if ours else float(not theirs))
    return {
        "mean_spearman": float(np.mean(spearmans)),
        "min_spearman": float(np.min(spearmans)),
        f"top{k}_overlap": float(np.mean(overlaps)),
        "max_abs_diff": float(max(np.abs(r - c).max() for r, c in zip(reference, candidate, strict=True))),
    }


def build_sparse_variants(
    out: Path,
    num_heads: int,
    hidden_size: int,
    right_padded: bool,
    texts: list[str],
    *,
    optimize: bool,
    target: Any,
    int8_target: str | None,
    fp16: bool,
    int8_budget: tuple[float, float] = (INT8_MIN_MEAN_SPEARMAN, INT8_MIN_TOP10_TERM_OVERLAP),
) -> dict[str, Variant]:
    """Write the requested variants into out/onnx; each measured on held-out retrieval against fp32. int8 is
    accepted when its (mean Spearman, top-10 term overlap) meet ``int8_budget``."""
    from onnxembed.exporter.rerank import ranking_set
    from onnxembed.exporter.variants import build_ranked_variants
    from onnxembed.runtime import SparseEncoder

    calibration, held_out = texts[: len(texts) // 2], texts[len(texts) // 2 :]
    ranking = ranking_set(held_out)
    documents = sorted({document for _, docs in ranking for document in docs})
    position = {document: row for row, document in enumerate(documents)}
    sets = [np.array([position[document] for document in docs]) for _, docs in ranking]
    queries = [query for query, _ in ranking]

    def vectors(encoder: Any) -> tuple[np.ndarray, np.ndarray]:
        dense = {"convert_to_sparse_tensor": False}
        return encoder.encode_query(queries, **dense), encoder.encode_document(documents, **dense)

    timed = documents[:RATE_DOCUMENTS]

    def rate(encoder: Any, repeats: int = 3) -> float:
        """Median documents/s over the first RATE_DOCUMENTS held-out documents, after a warm-up."""
        encoder.encode_document(timed[:32])
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode_document(timed, convert_to_sparse_tensor=False)
            timings.append(time.perf_counter() - start)
        return len(timed) / statistics.median(timings)

    fp32 = SparseEncoder(out, provider="cpu", variant="fp32")
    reference = vectors(fp32)
    if not reference[1].any():
        warnings.warn(
            "the fp32 graph leaves no term active in any held-out document: the int8 budget compares empty "
            "vectors (a model whose masked-LM logits never pass zero?)",
            stacklevel=2,
        )
    fp32_rate = rate(fp32)

    def measured(file: str, **extra: Any) -> dict[str, Any]:
        encoder = SparseEncoder(out, provider="cpu", variant=file)
        accuracy: dict[str, Any] = {**compare_sparse(reference, vectors(encoder), sets), "queries": len(sets)}
        accuracy.update(documents=len(documents), speedup_vs_fp32=rate(encoder) / fp32_rate)
        return {**accuracy, **extra}

    def feeds() -> list[dict[str, Any]]:
        batches = fp32._batches(calibration[:256])
        return [{name: arrays[name] for name in fp32._input_names} for _, arrays in batches]

    return build_ranked_variants(
        out,
        num_heads,
        hidden_size,
        right_padded,
        measured,
        feeds,
        optimize=optimize,
        target=target,
        int8_target=int8_target,
        fp16=fp16,
        budget=int8_budget,
        runtime="SparseEncoder",
    )
