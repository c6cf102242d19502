"""The export job for a CrossEncoder (reranker): trace its classifier to a logits graph, write OUT_DIR, verify
it against torch and ``CrossEncoder.predict``, build the faster variants and measure them on ranking.

OUT_DIR holds onnx/model.onnx ((batch, num_labels) logits), the tokenizer, config.json and the
sentence-transformers files of a CrossEncoder (modules.json, config_sentence_transformers.json with its
activation). Variants are measured as a reranker is used: each held-out query's documents ranked by the
variant against fp32 (Spearman's rank correlation per query, overlap of the top 10).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.errors import ExportVerificationError, InvalidArgumentError
from onnxembed.exporter.cross_encoder import (
    TORCH_PATHS,
    CrossEncoderConfig,
    read_cross_encoder_config,
    resolve_activation,
)
from onnxembed.exporter.head_export import finish_export, graph_input_names, manifest_fields, trace_and_verify
from onnxembed.manifest import (
    LOGITS_OUTPUT,
    RERANKER,
    RERANKER_FORMAT_VERSION,
    Manifest,
    Variant,
)

logger = logging.getLogger(__name__)

# The default int8 accuracy budget for rerankers (export's int8_min_spearman and int8_min_top10_overlap replace
# it), on held-out queries from real text: mean Spearman per query and mean
# overlap of the top 10 documents, int8 against fp32.
INT8_MIN_MEAN_SPEARMAN = 0.98
INT8_MIN_TOP10_OVERLAP = 0.9
# Held-out ranking set: queries, and documents per query (its next sentences, which share its topic, and
# random others).
RANK_QUERIES = 24
RANK_DOCUMENTS = 50
RANK_NEIGHBOURS = 10


def export_reranker(
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
    int8_min_top10_overlap: float = INT8_MIN_TOP10_OVERLAP,
) -> Manifest:
    """Export the CrossEncoder at ``source`` to ``out`` (see :func:`onnxembed.export`); ``texts``: a function
    returning the calibration texts (called only when variants are asked for); int8 is accepted when its
    ranking meets ``int8_min_spearman`` and ``int8_min_top10_overlap``."""
    from onnxembed.exporter.load import load_encoder
    from onnxembed.exporter.pipeline import ONNX_FILE, _prepare_out_dir

    config = read_cross_encoder_config(source)
    loaded = load_encoder(config.st_config, base_model, classifier=True)
    adapter_base = [Path(loaded.adapter["base_model"])] if loaded.adapter else []
    _prepare_out_dir(out, overwrite, [source, *adapter_base])
    tokenizer, model = loaded.tokenizer, loaded.model
    if tokenizer.pad_token_id is None:
        raise InvalidArgumentError(f"the tokenizer of {source} has no pad token; it cannot batch pairs")
    num_labels = int(model.config.num_labels)
    activation = resolve_activation(config.activation_path, num_labels)
    input_names = graph_input_names(tokenizer, model)
    tokenizer.save_pretrained(str(out))
    _keep_faithful_tokenizer(tokenizer, config.st_config.transformer_dir / "tokenizer.json", out / "tokenizer.json")
    model.config.save_pretrained(str(out))
    _write_cross_encoder_files(config, out, loaded.max_seq_length, activation)
    onnx_file = out / ONNX_FILE
    trace, graph_diff = trace_and_verify(
        model,
        input_names,
        tokenizer.pad_token_id,
        onnx_file,
        loaded.max_seq_length,
        LOGITS_OUTPUT,
        exporter=exporter,
        external_data=external_data,
        verify=verify,
        atol=1e-4,
    )
    manifest = Manifest(
        **manifest_fields(
            tokenizer,
            loaded.max_seq_length,
            config.st_config.do_lower_case,
            input_names,
            LOGITS_OUTPUT,
            config.prompts,
            config.default_prompt_name,
        ),
        dim=num_labels,
        architecture=loaded.architecture,
        source={"path": str(source), "adapter": loaded.adapter, "activation_from": config.activation_source, **trace},
        task=RERANKER,
        num_labels=num_labels,
        activation_fn=activation,
        format_version=RERANKER_FORMAT_VERSION,
    )

    def checked() -> dict[str, Any]:
        return {"logits_max_abs_diff": graph_diff, **verify_predict(source, out, atol)}

    def variants() -> dict[str, Variant]:
        return build_reranker_variants(
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


def _keep_faithful_tokenizer(
    tokenizer: Any, source: Path, saved: Path, texts: list[str] | None = None, add_special_tokens: bool = True
) -> None:
    """transformers 5.24 re-saves a WordPiece tokenizer.json under other ids than the tokenizer it loaded (the
    tokens are the same; XLM-R's it saves right): where the saved file does not give the loaded tokenizer's ids
    on the verification pairs (or ``texts``) and the source's file does, the source's file is kept."""
    from tokenizers import Tokenizer

    if not source.is_file():
        return
    items: list[Any] = verification_pairs()[:24] if texts is None else texts
    if texts is None:
        queries, documents = [query for query, _ in items], [document for _, document in items]
        expected = tokenizer(queries, documents, truncation=False)["input_ids"]
    else:
        expected = tokenizer(texts, truncation=False, add_special_tokens=add_special_tokens)["input_ids"]

    def ids(path: Path) -> list[list[int]]:
        encodings = Tokenizer.from_file(str(path)).encode_batch(items, add_special_tokens=add_special_tokens)
        return [encoding.ids for encoding in encodings]

    if ids(saved) != list(map(list, expected)) and ids(source) == list(map(list, expected)):
        shutil.copyfile(source, saved)


def _write_cross_encoder_files(config: CrossEncoderConfig, out: Path, max_seq_length: int, activation: str) -> None:
    """modules.json (the Transformer at the root), its sentence_bert_config.json and
    config_sentence_transformers.json, as sentence-transformers 5.x saves a CrossEncoder."""
    module = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    (out / "modules.json").write_text(json.dumps([module], indent=2) + "\n", encoding="utf-8")
    transformer = {
        key: value
        for key, value in config.st_config.transformer_config.items()
        if key not in ("tokenizer_args", "processor_kwargs")
    }
    transformer.setdefault("transformer_task", "sequence-classification")
    transformer.setdefault("modality_config", {"text": {"method": "forward", "method_output_name": "logits"}})
    transformer.setdefault("module_output_name", "scores")
    transformer.update(max_seq_length=max_seq_length, do_lower_case=config.st_config.do_lower_case)
    (out / "sentence_bert_config.json").write_text(json.dumps(transformer, indent=2) + "\n", encoding="utf-8")
    pipeline = {
        "model_type": "CrossEncoder",
        "activation_fn": TORCH_PATHS[activation],
        "prompts": config.prompts,
        "default_prompt_name": config.default_prompt_name,
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(pipeline, indent=2) + "\n", encoding="utf-8")


def verification_pairs() -> list[tuple[str, str]]:
    """Every verification text against a few queries: empty, short, other scripts, and both texts far too long."""
    from onnxembed.exporter.verify import VERIFY_TEXTS

    queries = (VERIFY_TEXTS[2], VERIFY_TEXTS[3], VERIFY_TEXTS[0], VERIFY_TEXTS[-1])
    return [(query, document) for query in queries for document in VERIFY_TEXTS]


def verify_predict(source: Path, out: Path, atol: float) -> dict[str, Any]:
    """Compare ``Reranker.predict`` with ``CrossEncoder(source).predict`` (the model's activation, and raw
    logits) on :func:`verification_pairs`."""
    from onnxembed.runtime import Reranker

    try:
        from sentence_transformers import CrossEncoder, __version__

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = CrossEncoder(str(source), device="cpu")
    except Exception as error:  # an incompatible sentence-transformers version
        warnings.warn(
            f"sentence-transformers could not load {source} here, predict not verified: {error}", stacklevel=3
        )
        return {"sentence_transformers": f"not checked: {type(error).__name__}: {error}"}
    import torch

    reranker = Reranker(out, provider="cpu", variant="fp32")
    pairs = verification_pairs()
    worst = 0.0
    for mine, theirs in ((None, None), ("identity", torch.nn.Identity())):  # the model's activation, and none
        expected = np.asarray(reference.predict(pairs, show_progress_bar=False, activation_fn=theirs))
        actual = np.asarray(reranker.predict(pairs, activation_fn=mine))
        if expected.shape != actual.shape:
            raise ExportVerificationError(
                f"onnxembed gives scores of shape {actual.shape}, sentence-transformers {expected.shape}"
            )
        worst = max(worst, float(np.abs(expected.astype(np.float64) - actual).max()))
    if worst > atol:
        raise ExportVerificationError(
            f"{out} does not reproduce CrossEncoder({source}).predict: max abs diff {worst:.3g} > {atol:g}"
        )
    return {"sentence_transformers": __version__, "pairs": len(pairs), "max_abs_diff": worst}


def ranking_set(
    texts: list[str], queries: int = RANK_QUERIES, documents: int = RANK_DOCUMENTS
) -> list[tuple[str, list[str]]]:
    """Held-out (query, documents) sets from real text: a sentence as the query, the sentences after it (the
    same docstring's topic) and random others as its documents."""
    if len(texts) < documents + 1:
        raise InvalidArgumentError(f"ranking needs at least {documents + 1} held-out texts; got {len(texts)}")
    rng = np.random.default_rng(0)
    step = max(1, (len(texts) - RANK_NEIGHBOURS - 1) // queries)
    sets = []
    for start in range(0, step * queries, step)[:queries]:
        neighbours = texts[start + 1 : start + 1 + RANK_NEIGHBOURS]
        others = [texts[i] for i in rng.choice(len(texts), size=documents - len(neighbours), replace=False)]
        sets.append((texts[start], neighbours + others))
    return sets


def compare_rankings(reference: list[np.ndarray], candidate: list[np.ndarray], k: int = 10) -> dict[str, float]:
    """Per query (each label's column of a (documents, labels) array on its own): Spearman's rank correlation
    of the candidate's scores with the reference's, and the overlap of their top ``k`` documents."""
    from onnxembed.exporter.accuracy import spearman as spearman_of

    spearman, overlap, worst = [], [], 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        worst = max(worst, float(np.abs(ref - cand).max()))
        for label in range(ref.shape[1]):
            spearman.append(spearman_of(ref[:, label], cand[:, label]))
            top = min(k, len(ref))
            ours, theirs = (set(np.argsort(-x[:, label], kind="stable")[:top].tolist()) for x in (ref, cand))
            overlap.append(len(ours & theirs) / top)
    return {
        "mean_spearman": float(np.mean(spearman)),
        "min_spearman": float(np.min(spearman)),
        f"top{k}_overlap": float(np.mean(overlap)),
        "logits_max_abs_diff": worst,
    }


def _scores(reranker: Any, sets: list[tuple[str, list[str]]]) -> list[np.ndarray]:
    """Each query's (documents, num_labels) logits, one rank call per query as a reranker is used."""
    return [
        reranker.predict([(query, document) for document in documents], activation_fn="identity").reshape(
            len(documents), -1
        )
        for query, documents in sets
    ]


def _rate(reranker: Any, sets: list[tuple[str, list[str]]], repeats: int = 3) -> float:
    """Median pairs/s over the ranking set, after a warm-up."""
    _scores(reranker, sets[:1])
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        _scores(reranker, sets)
        timings.append(time.perf_counter() - start)
    return sum(len(documents) for _, documents in sets) / statistics.median(timings)


def build_reranker_variants(
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
    int8_budget: tuple[float, float] = (INT8_MIN_MEAN_SPEARMAN, INT8_MIN_TOP10_OVERLAP),
) -> dict[str, Variant]:
    """Write the requested variants into out/onnx; each measured on held-out ranking against fp32. int8 is
    accepted when its (mean Spearman, top-10 overlap) meet ``int8_budget``."""
    from onnxembed.exporter.variants import build_ranked_variants
    from onnxembed.runtime import Reranker

    calibration, held_out = texts[: len(texts) // 2], texts[len(texts) // 2 :]
    sets = ranking_set(held_out)
    fp32 = Reranker(out, provider="cpu", variant="fp32")
    reference = _scores(fp32, sets)
    fp32_rate = _rate(fp32, sets)

    def measured(file: str, **extra: Any) -> dict[str, Any]:
        reranker = Reranker(out, provider="cpu", variant=file)
        accuracy: dict[str, Any] = {**compare_rankings(reference, _scores(reranker, sets)), "queries": len(sets)}
        accuracy["documents_per_query"] = RANK_DOCUMENTS
        accuracy["speedup_vs_fp32"] = _rate(reranker, sets) / fp32_rate
        return {**accuracy, **extra}

    def feeds() -> list[dict[str, Any]]:
        pairs = [(query, document) for query, documents in ranking_set(calibration, 8) for document in documents]
        return [{name: arrays[name] for name in fp32._input_names} for _, arrays in fp32._batches(pairs)]

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
        runtime="Reranker",
    )
