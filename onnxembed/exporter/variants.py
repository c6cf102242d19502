"""Build the faster variants an export asks for, measure each against fp32, and record what was chosen.

In scope: --optimize, --quantize int8 (with its accuracy budget), --fp16, --pool-in-graph, for embedding models
(cosine to fp32) and for models measured on ranking (rerankers, sparse encoders); the calibration
split (half to calibrate, half held out to measure, so the recorded accuracy is not measured on the text it
was tuned on). Not in scope: how a variant is made (quantize.py) or measured (accuracy.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxembed.errors import InvalidArgumentError
from onnxembed.exporter import onnx_io, quantize
from onnxembed.exporter.accuracy import compare, rate, timing_texts
from onnxembed.exporter.graph_pooling import add_pooling
from onnxembed.exporter.quantize import Target
from onnxembed.manifest import Manifest, Variant
from onnxembed.runtime.weights import read_dense_layer

logger = logging.getLogger(__name__)

# A graph that pools inside must reproduce fp32 as its unpooled source does: exactly for fp32 graphs, to
# fp16's own error for fp16 ones (the GPU goal: min cosine 0.9999 against sentence-transformers fp32).
POOLED_MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999}


def _encoder(out: Path, file: str) -> Any:
    from onnxembed.runtime import Encoder

    return Encoder(out, provider="cpu", variant=file)


def _calibration_feeds(encoder: Any, texts: list[str]) -> list[dict[str, object]]:
    from onnxembed.runtime.batching import batches

    planned = batches(texts, encoder._tokenizer, "", 32, 4096, False)
    return [{name: arrays[name] for name in encoder._input_names} for _, arrays in planned]


def build_variants(
    out: Path,
    *,
    num_heads: int,
    hidden_size: int,
    right_padded: bool,
    texts: list[str],
    optimize: bool = False,
    target: Target = "cpu",
    int8_target: str | None = None,
    int8_min_cosine: float = 0.99,
    fp16: bool = False,
    pool_in_graph: bool = False,
    manifest: Manifest | None = None,
) -> dict[str, Variant]:
    """Write the requested variants into out/onnx and return them with their measured accuracy; an int8 one
    when ``int8_target`` names what it is made for (quantize.int8_target())."""
    calibration, held_out = texts[: len(texts) // 2], texts[len(texts) // 2 :]
    fp32 = _encoder(out, "fp32")
    reference = fp32.encode(held_out)
    timed = timing_texts(fp32, held_out[:512])
    fp32_rate = rate(fp32, timed)
    feeds = _calibration_feeds(fp32, calibration) if int8_target else []
    # a large model's fp32 session holds its weights and onnxruntime's packed copies: not kept beside int8's
    del fp32
    fp32_file = out / "onnx" / "model.onnx"
    variants: dict[str, Variant] = {}

    def measured(file: str, **extra: Any) -> dict[str, Any]:
        encoder = _encoder(out, file)
        accuracy: dict[str, Any] = {**compare(reference, encoder.encode(held_out)), "texts": len(held_out)}
        accuracy["speedup_vs_fp32"] = rate(encoder, timed) / fp32_rate
        accuracy["timed_texts"] = len(timed)
        return {**accuracy, **extra}

    variants.update(_float_variants(out, measured, optimize, target, fp16, num_heads, hidden_size, right_padded))
    if int8_target:
        variants["int8"] = _choose_int8(out, fp32_file, measured, feeds, int8_min_cosine, int8_target)
    if pool_in_graph:
        if manifest is None:
            raise InvalidArgumentError("pool_in_graph needs the manifest (pooling modes, Normalize, dim)")
        graphs = {"fp32": Variant(str(fp32_file.relative_to(out)), "fp32"), **variants}
        for name in ("fp32", "fp16", "optimized-gpu"):
            if name not in graphs:
                continue
            source = graphs[name].file
            file = source.removesuffix(".onnx") + "_pooled.onnx"
            add_pooling(
                out / source,
                out / file,
                manifest.output_name,
                manifest.pooling_modes,
                manifest.normalize,
                manifest.dim,
                quantize.needs_external_data(out / source),
                dense=[read_dense_layer(out, layer) for layer in manifest.dense],
            )
            accuracy = _try_measure(measured, file)
            if "min_cosine" in accuracy:  # measured on CPU: the pooled graph must give its source's vectors
                floor = POOLED_MIN_COSINE[graphs[name].dtype]
                accuracy.update(accepted=accuracy["min_cosine"] >= floor, budget_min_cosine=floor)
                if not accuracy["accepted"]:
                    warnings.warn(
                        f"{file}: min cosine vs fp32 {accuracy['min_cosine']:.6f} < {floor}; kept, but "
                        "Encoder(variant='auto') will not choose it",
                        stacklevel=3,
                    )
            variants[f"{name}-pooled"] = Variant(file, graphs[name].dtype, accuracy, pooled=True)
    return variants


def _try_measure(measured: Any, file: str) -> dict[str, Any]:
    try:
        return dict(measured(file), accepted=True)
    except Exception as error:  # onnxruntime's CPU provider lacks some fp16 kernels
        return {"accepted": True, "measured": f"not on CPU: {type(error).__name__}: {str(error)[:200]}"}


def _choose_int8(
    out: Path, fp32_file: Path, measured: Any, feeds: list[dict[str, object]], budget: float, target: str
) -> Variant:
    """Try INT8_RECIPES fastest first; keep the first whose 1st-percentile cosine meets the budget."""
    file = quantize.int8_file_name(target)
    accuracy, accepted, tried = _first_accepted_int8(
        out,
        fp32_file,
        measured,
        feeds,
        target,
        lambda accuracy: accuracy["p1_cosine"] >= budget,
        lambda recipe, accuracy: {
            "recipe": recipe,
            "p1_cosine": accuracy["p1_cosine"],
            "speedup": accuracy["speedup_vs_fp32"],
        },
    )
    if not accepted:
        warnings.warn(
            f"no int8 recipe met p1 cosine >= {budget} (best {accuracy['p1_cosine']:.4f}); kept {file} but "
            "Encoder(variant='auto') will not choose it",
            stacklevel=3,
        )
    accuracy.update(budget_p1_cosine=budget, accepted=accepted, tried=tried)
    return Variant(file, "int8", accuracy)


def build_ranked_variants(
    out: Path,
    num_heads: int,
    hidden_size: int,
    right_padded: bool,
    measured: Callable[..., dict[str, Any]],
    feeds: Callable[[], list[dict[str, Any]]],
    *,
    optimize: bool,
    target: Target,
    int8_target: str | None,
    fp16: bool,
    budget: tuple[float, float],
    runtime: str,
) -> dict[str, Variant]:
    """The variants of a model measured on ranking (a reranker, a sparse encoder): ``measured(file, **extra)``
    gives a graph's accuracy against fp32 with "mean_spearman", "top10_overlap" and "speedup_vs_fp32";
    ``feeds()`` the calibration batches; ``budget`` int8's (mean Spearman, top-10 overlap) floor."""
    fp32_file = out / "onnx" / "model.onnx"
    variants = _float_variants(out, measured, optimize, target, fp16, num_heads, hidden_size, right_padded)
    if int8_target:
        variants["int8"] = _choose_ranked_int8(out, fp32_file, measured, feeds(), budget, runtime, int8_target)
    return variants


def _float_variants(
    out: Path,
    measured: Callable[..., dict[str, Any]],
    optimize: bool,
    target: Target,
    fp16: bool,
    num_heads: int,
    hidden_size: int,
    right_padded: bool,
) -> dict[str, Variant]:
    """The optimized (or optimized-gpu) and fp16 graphs of out's fp32 one, each measured by ``measured``."""
    fp32_file = out / "onnx" / "model.onnx"
    variants: dict[str, Variant] = {}
    if optimize:
        file = quantize.OPTIMIZED_FILE[target]
        quantize.optimize(fp32_file, out / file, target, num_heads, hidden_size, right_padded)
        name = "optimized" if target == "cpu" else "optimized-gpu"
        # fp16 graphs have no CPU kernels for every op: measure only what CPU can run
        variants[name] = Variant(file, "fp32" if target == "cpu" else "fp16", _try_measure(measured, file))
    if fp16:
        quantize.to_fp16(fp32_file, out / quantize.FP16_FILE)
        variants["fp16"] = Variant(quantize.FP16_FILE, "fp16", _try_measure(measured, quantize.FP16_FILE))
    return variants


def _choose_ranked_int8(
    out: Path,
    fp32_file: Path,
    measured: Callable[..., dict[str, Any]],
    feeds: list[dict[str, Any]],
    budget: tuple[float, float],
    runtime: str,
    target: str,
) -> Variant:
    """INT8_RECIPES fastest first; keep the first whose ranking meets the budget (else the last, not accepted)."""
    min_spearman, min_overlap = budget
    file = quantize.int8_file_name(target)
    accuracy, accepted, tried = _first_accepted_int8(
        out,
        fp32_file,
        measured,
        feeds,
        target,
        lambda accuracy: accuracy["mean_spearman"] >= min_spearman and accuracy["top10_overlap"] >= min_overlap,
        lambda recipe, accuracy: {
            key: accuracy[key] for key in ("recipe", "mean_spearman", "top10_overlap", "speedup_vs_fp32")
        },
    )
    if not accepted:
        warnings.warn(
            f"no int8 recipe met mean Spearman >= {min_spearman} and top-10 overlap >= {min_overlap} (last: "
            f"{accuracy['mean_spearman']:.4f}, {accuracy['top10_overlap']:.3f}); kept {file} but "
            f"{runtime}(variant='auto') will not choose it",
            stacklevel=3,
        )
    accuracy.update(budget_mean_spearman=min_spearman, budget_top10_overlap=min_overlap, accepted=accepted, tried=tried)
    return Variant(file, "int8", accuracy)


def _first_accepted_int8(
    out: Path,
    fp32_file: Path,
    measured: Callable[..., dict[str, Any]],
    feeds: list[dict[str, Any]],
    target: str,
    accepts: Callable[[dict[str, Any]], bool],
    tried_entry: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
    """INT8_RECIPES fastest first, each quantized for ``target`` with ``feeds`` and ``measured``; the first that
    ``accepts`` (else the last) becomes int8_file_name(target), the others are removed. Returns its accuracy,
    whether it was accepted, and ``tried_entry(recipe name, accuracy)`` of every recipe tried, for the manifest."""
    file = quantize.int8_file_name(target)
    tried = []
    for recipe in quantize.INT8_RECIPES:
        candidate = out / "onnx" / f"int8_candidate_{recipe.name}.onnx"
        how = quantize.quantize_int8(fp32_file, candidate, recipe, feeds, target=target)
        accuracy = measured(str(candidate.relative_to(out)), **how)
        tried.append(tried_entry(recipe.name, accuracy))
        logger.info("int8 %s: %s", recipe.name, accuracy)
        accepted = accepts(accuracy)
        if accepted or recipe is quantize.INT8_RECIPES[-1]:
            onnx_io.move(candidate, out / file)
            break
        onnx_io.remove(candidate)
    return accuracy, accepted, tried
