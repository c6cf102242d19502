"""The export job: read SRC, load the encoder, trace it, write OUT_DIR, verify, record the manifest.

OUT_DIR holds onnx/model.onnx, the tokenizer, config.json and the sentence-transformers module
configs, so that it also loads with ``SentenceTransformer(OUT_DIR, backend="onnx")``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import numbers
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial, wraps
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from onnxembed._checks import model_path
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError, OutputExistsError
from onnxembed.exporter.config import (
    DECODER_MODEL_TYPES,
    SentenceTransformerConfig,
    module_kind,
    read_sentence_transformer_config,
)
from onnxembed.manifest import MANIFEST_NAME, MODEL_INPUTS, DenseLayer, Manifest, Variant

if TYPE_CHECKING:
    from onnxembed.exporter.onnx_export import Exporter
    from onnxembed.exporter.quantize import Target

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"
# The int8 budget of embedding models: 1st-percentile cosine to fp32 (docs/performance.md#int8-variants).
INT8_MIN_COSINE = 0.99
# A StaticEmbedding's "graph": its table, which the runtime reads with numpy (exporter/static.py).
STATIC_FILE = "model.safetensors"


def _require_export_extra() -> None:
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise ImportError(f"exporting needs {error.name}: pip install 'onnxembed[export]'") from error


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("onnxembed", "torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _prepare_out_dir(out_dir: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Create out_dir; replace an old export only with overwrite, and never a directory holding an input."""
    target = out_dir.resolve()
    for path in inputs:
        resolved = path.resolve()
        if resolved == target or target in resolved.parents:
            raise OutputExistsError(f"{out_dir} holds the model being exported ({path}); choose another OUT_DIR")
        if resolved in target.parents:  # the source would carry the export in every later copy of it
            raise OutputExistsError(f"{out_dir} is inside the model being exported ({path}); choose another OUT_DIR")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
            )
        if not (out_dir / MANIFEST_NAME).is_file() and not (out_dir / "modules.json").is_file():
            raise OutputExistsError(f"{out_dir} is not a model directory; refusing to overwrite it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_sentence_transformers_files(
    st_config: SentenceTransformerConfig, out_dir: Path, max_seq_length: int, pooled_dim: int
) -> tuple[DenseLayer, ...]:
    """modules.json with the Transformer (or StaticEmbedding) at the root, each module's config copied over and
    each Dense layer's weights written beside it; returns the Dense layers for the manifest."""
    from onnxembed.exporter.dense import write_dense

    modules = []
    dense_folders = []
    for index, module in enumerate(st_config.modules):
        kind = module_kind(str(module["type"]))
        path = "" if kind in ("Transformer", "StaticEmbedding") else f"{index}_{kind}"
        modules.append({"idx": index, "name": str(index), "path": path, "type": module["type"]})
        source = st_config.root / module["path"]
        if kind == "Pooling":
            (out_dir / path).mkdir()
            shutil.copyfile(source / "config.json", out_dir / path / "config.json")
        elif kind == "Normalize":
            (out_dir / path).mkdir()
        elif kind == "Dense":
            dense_folders.append(Path(path))
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    dense = write_dense(st_config.dense, dense_folders, pooled_dim, out_dir)
    if (st_config.root / "config_sentence_transformers.json").is_file():
        shutil.copyfile(
            st_config.root / "config_sentence_transformers.json", out_dir / "config_sentence_transformers.json"
        )
    if st_config.static:
        return dense
    # Under the first name sentence-transformers looks for; tokenizer options are already in the saved tokenizer.
    bert_config = {
        key: value
        for key, value in st_config.transformer_config.items()
        if key not in ("tokenizer_args", "processor_kwargs")
    }
    bert_config.update(max_seq_length=max_seq_length, do_lower_case=st_config.do_lower_case)
    (out_dir / "sentence_bert_config.json").write_text(json.dumps(bert_config, indent=2) + "\n", encoding="utf-8")
    return dense


@dataclass(frozen=True)
class _Written:
    """What the first step of an export wrote: the manifest (fp32 graph not yet measured) and the figures the
    later steps need."""

    manifest: Manifest
    graph_diff: float | None  # torch vs ONNX token embeddings, when checked
    num_heads: int = 0  # for the optimizer's fusions (0: a graph with no attention)
    hidden_size: int = 0
    causal: bool = False  # a decoder: onnxruntime's BERT attention fusion assumes bidirectional attention


def _no_partial_output(function: Callable[..., Manifest]) -> Callable[..., Manifest]:
    """An export that fails (or is interrupted) into a directory that was empty or absent leaves nothing there: a
    half-written directory holds modules.json and a tokenizer but no graph, and would block the next run. A
    graph that fails verification stays for inspection (its manifest removed), as the docstring says."""

    @wraps(function)
    def wrapper(model_name_or_path: str | Path, model_dir: str | Path, **options: Any) -> Manifest:
        from onnxembed.exporter.errors import ExportVerificationError

        out = Path(model_dir)
        existed = out.exists()
        fresh = not existed or (out.is_dir() and not any(out.iterdir()))
        try:
            return function(model_name_or_path, model_dir, **options)
        except ExportVerificationError:
            raise
        except BaseException:
            if fresh and out.is_dir():
                for path in out.iterdir() if existed else [out]:  # a directory the user made stays, emptied
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            raise

    return wrapper


@_no_partial_output
def export(
    model_name_or_path: str | Path,
    model_dir: str | Path,
    *,
    base_model: str | Path | None = None,
    exporter: Exporter = "auto",
    external_data: bool | None = None,
    overwrite: bool = False,
    verify: bool = True,
    min_cosine: float = 0.99999,
    atol: float = 1e-4,
    optimize: bool = False,
    target: Target = "cpu",
    quantize: Literal["int8"] | None = None,
    int8_target: str | None = "host",
    int8_min_cosine: float | None = None,
    int8_min_spearman: float | None = None,
    int8_min_top10_overlap: float | None = None,
    fp16: bool = False,
    pool_in_graph: bool = False,
    calibration_file: str | Path | None = None,
) -> Manifest:
    """Export a SentenceTransformer, CrossEncoder or SparseEncoder model to an onnxembed model directory and verify it.

    Reads local files only: a directory, or a model name already in the local Hugging Face cache (no network).
    The directory written also loads in ``SentenceTransformer(model_dir, backend="onnx")`` where
    sentence-transformers can carry the pipeline (docs/export.md says which).

    Args:
        model_name_or_path: A SentenceTransformer directory, or a model name in the local Hugging Face cache.
        model_dir: Where to write the export (created; an earlier export there is replaced only with
            ``overwrite``).
        base_model: The base model directory of a PEFT adapter, overriding adapter_config.json.
        exporter: "auto" (TorchScript where it traces right, dynamo where the attention loops or TorchScript
            cannot trace; the other one when the graph fails verification), "torchscript" or "dynamo".
        external_data: Store weights beside the graph (None: only when over 2 GB).
        overwrite: Replace an earlier export in ``model_dir``.
        verify: Compare the graph with torch and the whole pipeline with ``SentenceTransformer.encode``.
        min_cosine: Lowest cosine to sentence-transformers that verification accepts.
        atol: Largest absolute difference that verification accepts.
        optimize: Also write a fused graph for ``target`` ("cpu": onnx/model_O2.onnx, "gpu": fp16
            onnx/model_O4.onnx).
        target: "cpu" or "gpu", for ``optimize``.
        quantize: "int8" also writes the fastest int8 recipe that meets the accuracy budget against fp32 on
            held-out calibration text: for an embedding model ``int8_min_cosine``, for a reranker
            ``int8_min_spearman`` and ``int8_min_top10_overlap``.
        int8_target: The CPUs the int8 graph is for, in sentence-transformers' names: "host" (this CPU's kind),
            "avx2" (7-bit weights: exact on every x86-64 CPU, and the only kind a CPU without VNNI can make),
            "avx512_vnni" or "arm64" (full-range weights, made on a CPU with VNNI or on ARM). None: "host".
        int8_min_cosine: Embedding models: the lowest 1st-percentile cosine of int8 vectors to fp32's (None:
            0.99). Refused for a reranker, whose scores are not vectors.
        int8_min_spearman: Rerankers: the lowest mean Spearman rank correlation per held-out query of int8's
            scores with fp32's (None: 0.98). Refused for an embedding model.
        int8_min_top10_overlap: Rerankers: the lowest mean share of fp32's top 10 documents per query that int8
            also ranks in its top 10 (None: 0.9). Refused for an embedding model.
        fp16: Also write an fp16 graph (for CUDA).
        pool_in_graph: Also write graphs that pool (and apply Dense and Normalize) inside, which the runtime
            prefers on CUDA.
        calibration_file: Text to calibrate and measure variants on, one text per line (default: sentences
            from the standard library's docstrings).

    Returns:
        The manifest written to ``model_dir/onnxembed.json``, with each variant's measured accuracy.

    Raises:
        UnsupportedModelError: A module, architecture or setting onnxembed cannot carry.
        ExportVerificationError: The export does not reproduce the source within ``min_cosine`` / ``atol``
            (the manifest is then removed, so the directory does not load).
        OutputExistsError: ``model_dir`` is not empty and ``overwrite`` is False, or holds the source.
        ImportError: The ``export`` extra is not installed.

    Example:
        >>> import onnxembed
        >>> manifest = onnxembed.export("path/to/sentence-transformer", "out/", quantize="int8")
        >>> manifest.dim
        384
    """
    _require_export_extra()
    from onnxembed.exporter.errors import UnsupportedModelError
    from onnxembed.exporter.load import resolve_source
    from onnxembed.exporter.quantize import int8_target as int8_target_for
    from onnxembed.exporter.verify import verify_pipeline

    model_path(model_name_or_path, "model_name_or_path")
    model_path(model_dir, "model_dir")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise InvalidArgumentError(f"exporter must be 'auto', 'torchscript' or 'dynamo'; got {exporter!r}")
    if quantize not in (None, "int8"):
        raise InvalidArgumentError(f"quantize must be 'int8' or None; got {quantize!r}")
    if target not in ("cpu", "gpu"):
        raise InvalidArgumentError(f"target must be 'cpu' or 'gpu'; got {target!r}")
    budgets = {
        "int8_min_cosine": int8_min_cosine,
        "int8_min_spearman": int8_min_spearman,
        "int8_min_top10_overlap": int8_min_top10_overlap,
    }
    for name, budget in budgets.items():
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Real)):
            raise ArgumentTypeError(f"{name} must be a number in (0, 1]; got {type(budget).__name__} {budget!r}")
        if budget is not None and not 0.0 < budget <= 1.0:
            raise InvalidArgumentError(f"{name} must be in (0, 1]; got {budget}")
    # options that only shape another option's output: given alone they would be ignored without a word
    given = [name for name, budget in budgets.items() if budget is not None]
    if given and quantize is None:
        raise InvalidArgumentError(f"{given[0]} is the budget of quantize='int8' (--quantize int8); add it")
    # before the export: a target this CPU cannot measure is refused now, not after minutes of tracing
    int8_target = "host" if int8_target is None else int8_target
    made_for = int8_target_for(int8_target) if quantize == "int8" else None
    if made_for is None and int8_target_for(int8_target, check_cpu=False) != "host":
        raise InvalidArgumentError(f"int8_target={int8_target!r} says what quantize='int8' is for; add it")
    if target != "cpu" and not optimize:
        raise InvalidArgumentError(f"target={target!r} chooses what optimize fuses for; add optimize=True (--optimize)")
    source = resolve_source(model_name_or_path)
    from onnxembed.exporter.cross_encoder import is_cross_encoder
    from onnxembed.exporter.sparse_config import is_sparse_encoder

    # rerankers and sparse encoders have their own jobs (rerank.py, sparse.py), with the same options and a
    # ranking budget for int8 (mean Spearman, top-10 overlap) in place of the vectors' cosine
    job: Any = None
    if is_sparse_encoder(source):
        from onnxembed.exporter.sparse import INT8_MIN_MEAN_SPEARMAN as spearman
        from onnxembed.exporter.sparse import INT8_MIN_TOP10_TERM_OVERLAP as overlap
        from onnxembed.exporter.sparse import export_sparse as job

        owner, kind = "a sparse encoder's", "a sparse encoder's graph pools itself (SPLADE)"
    elif is_cross_encoder(source):
        from onnxembed.exporter.rerank import INT8_MIN_MEAN_SPEARMAN as spearman
        from onnxembed.exporter.rerank import INT8_MIN_TOP10_OVERLAP as overlap
        from onnxembed.exporter.rerank import export_reranker as job

        owner, kind = "a reranker's", "a reranker's graph has no pooling; it gives logits"
    if job is not None:
        if pool_in_graph:
            raise UnsupportedModelError(f"--pool-in-graph: {kind}")
        if int8_min_cosine is not None:
            raise InvalidArgumentError(
                f"int8_min_cosine (--int8-min-cosine) is the budget of embedding vectors; {owner} int8 is "
                f"measured on ranking: set int8_min_spearman (--int8-min-spearman, default {spearman}) and "
                f"int8_min_top10_overlap (--int8-min-top10-overlap, default {overlap})"
            )
        # each job has its own default budget; only what was asked for replaces it
        ranking_budget = {name: value for name, value in budgets.items() if name != "int8_min_cosine" and value}
        return job(  # type: ignore[no-any-return]
            source,
            Path(model_dir),
            base_model=base_model,
            exporter=exporter,
            external_data=external_data,
            overwrite=overwrite,
            verify=verify,
            atol=atol,
            optimize=optimize,
            target=target,
            quantize=quantize,
            int8_target=made_for,
            fp16=fp16,
            **ranking_budget,
            texts=partial(_calibration_texts, calibration_file),
        )
    ranking = [name for name in ("int8_min_spearman", "int8_min_top10_overlap") if budgets[name] is not None]
    if ranking:
        raise InvalidArgumentError(
            f"{' and '.join(ranking)}: a ranking budget, for rerankers and sparse encoders; {source} is an "
            "embedding model, whose int8 budget is int8_min_cosine (--int8-min-cosine)"
        )
    st_config = read_sentence_transformer_config(source)
    if pool_in_graph:
        from onnxembed.exporter.graph_pooling import can_pool_in_graph

        reason = can_pool_in_graph(st_config.pooling_modes, st_config.include_prompt)
        if reason:
            raise UnsupportedModelError(f"--pool-in-graph: {reason}")
    out = Path(model_dir)
    if st_config.static:
        asked = [
            name
            for name, value in (
                ("base_model", base_model),
                ("optimize", optimize),
                ("quantize", quantize),
                ("fp16", fp16),
                ("pool_in_graph", pool_in_graph),
            )
            if value
        ]
        if asked:
            raise UnsupportedModelError(
                f"{', '.join(asked)}: a StaticEmbedding model has no transformer to merge, fuse or quantize; its "
                "fp32 export is a single table lookup"
            )
        _prepare_out_dir(out, overwrite, [source])
        written = _export_static(st_config, source, out)
    else:
        written = _export_transformer(
            st_config, source, out, base_model, exporter, external_data, overwrite, verify, atol
        )
    manifest = written.manifest
    manifest.write(out)
    accuracy: dict[str, Any] = {}
    if verify:
        try:
            graph = {} if written.graph_diff is None else {"token_embeddings_max_abs_diff": written.graph_diff}
            accuracy = {**graph, **verify_pipeline(source, out, "fp32", min_cosine, atol)}
        except Exception:
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            raise
    variants = {"fp32": dataclasses.replace(manifest.variants["fp32"], accuracy=accuracy)}
    manifest = dataclasses.replace(manifest, variants=variants)
    manifest.write(out)
    if optimize or quantize or fp16 or pool_in_graph:
        from onnxembed.exporter.variants import build_variants

        texts = _calibration_texts(calibration_file)
        variants.update(
            build_variants(
                out,
                num_heads=written.num_heads,
                hidden_size=written.hidden_size,
                right_padded=manifest.padding_side == "right" and not written.causal,
                texts=texts,
                optimize=optimize,
                target=target,
                int8_target=made_for,
                int8_min_cosine=INT8_MIN_COSINE if int8_min_cosine is None else int8_min_cosine,
                fp16=fp16,
                pool_in_graph=pool_in_graph,
                manifest=manifest,
            )
        )
        manifest = dataclasses.replace(manifest, variants=variants)
    manifest.write(out)
    logger.info("exported %s -> %s: %s", source, out, accuracy)
    return manifest


def _calibration_texts(calibration_file: str | Path | None) -> list[str]:
    from onnxembed.exporter.calibration import read_calibration_file, sentences

    return read_calibration_file(calibration_file) if calibration_file else sentences(1000)


def _export_static(st_config: SentenceTransformerConfig, source: Path, out: Path) -> _Written:
    from onnxembed.exporter.onnx_export import OUTPUT_NAME
    from onnxembed.exporter.static import export_static

    static = export_static(st_config.transformer_dir, out)
    dense = _write_sentence_transformers_files(st_config, out, static.max_seq_length, static.dim)
    manifest = Manifest(
        dim=dense[-1].out_features if dense else static.dim,
        pooling_modes=("mean",),
        include_prompt=True,
        normalize=st_config.normalize,
        max_seq_length=static.max_seq_length,
        do_lower_case=False,
        pad_token_id=0,  # any id: padding is masked out of the mean
        padding_side="right",
        truncation_side=static.truncation_side,
        input_names=("input_ids",),
        output_name=OUTPUT_NAME,
        prompts=st_config.prompts,
        default_prompt_name=st_config.default_prompt_name,
        similarity_fn_name=st_config.similarity_fn_name or "cosine",
        truncate_dim=st_config.truncate_dim,
        architecture="StaticEmbedding",
        source={"path": str(source)},
        versions=_versions(),
        variants={"fp32": Variant(file=STATIC_FILE, dtype="fp32")},
        dense=dense,
        add_special_tokens=False,
    )
    return _Written(manifest, None)


def _export_transformer(
    st_config: SentenceTransformerConfig,
    source: Path,
    out: Path,
    base_model: str | Path | None,
    exporter: Exporter,
    external_data: bool | None,
    overwrite: bool,
    verify: bool,
    atol: float,
) -> _Written:
    """Load the Transformer module, trace it to ONNX and check the graph against torch."""
    from onnxembed.exporter.errors import ExportVerificationError
    from onnxembed.exporter.load import load_encoder
    from onnxembed.exporter.onnx_export import OUTPUT_NAME, export_onnx, fallback_exporter
    from onnxembed.exporter.verify import verify_graph

    loaded = load_encoder(st_config, base_model)
    adapter_base = [Path(loaded.adapter["base_model"])] if loaded.adapter else []
    _prepare_out_dir(out, overwrite, [source, *adapter_base])

    tokenizer, model = loaded.tokenizer, loaded.model
    if tokenizer.pad_token_id is None:
        raise InvalidArgumentError(f"the tokenizer of {source} has no pad token; it cannot batch texts")
    accepted = set(inspect.signature(model.forward).parameters)
    input_names = tuple(name for name in MODEL_INPUTS if name in tokenizer.model_input_names and name in accepted)
    tokenizer.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    pooled_dim = model.config.hidden_size * len(st_config.pooling_modes)
    dense = _write_sentence_transformers_files(st_config, out, loaded.max_seq_length, pooled_dim)
    trace = export_onnx(
        model,
        input_names,
        tokenizer.pad_token_id,
        out / ONNX_FILE,
        exporter,
        external_data,
        verified=verify,
        max_seq_length=loaded.max_seq_length,
    )
    graph_diff = None
    if verify:
        verify_args = (model, out / ONNX_FILE, input_names, tokenizer.pad_token_id, loaded.max_seq_length)
        left_padded = tokenizer.padding_side == "left"
        try:
            graph_diff = verify_graph(*verify_args, max(atol, 1e-4), left_padded)
        except ExportVerificationError as error:
            first = trace["exporter"]
            other = fallback_exporter(exporter, first, getattr(model.config, "model_type", None))
            if other is None:
                raise
            logger.warning("the %s graph failed verification (%s); exporting with %s", first, error, other)
            try:
                trace = export_onnx(
                    model,
                    input_names,
                    tokenizer.pad_token_id,
                    out / ONNX_FILE,
                    other,
                    external_data,
                    max_seq_length=loaded.max_seq_length,
                )
                graph_diff = verify_graph(*verify_args, max(atol, 1e-4), left_padded)
            except Exception as second:
                raise ExportVerificationError(
                    f"the {first} graph failed verification ({error}), and the {other} export then failed: "
                    f"{type(second).__name__}: {second}"
                ) from second

    manifest = Manifest(
        dim=dense[-1].out_features if dense else pooled_dim,
        pooling_modes=st_config.pooling_modes,
        include_prompt=st_config.include_prompt,
        normalize=st_config.normalize,
        max_seq_length=loaded.max_seq_length,
        do_lower_case=st_config.do_lower_case,
        pad_token_id=int(tokenizer.pad_token_id),
        padding_side=str(tokenizer.padding_side),
        truncation_side=str(tokenizer.truncation_side),
        input_names=input_names,
        output_name=OUTPUT_NAME,
        prompts=st_config.prompts,
        default_prompt_name=st_config.default_prompt_name,
        similarity_fn_name=st_config.similarity_fn_name or "cosine",
        truncate_dim=st_config.truncate_dim,
        architecture=loaded.architecture,
        source={
            "path": str(source),
            "adapter": loaded.adapter,
            **trace,
            **({"max_seq_length_capped_from": loaded.capped_from} if loaded.capped_from else {}),
        },
        versions=_versions(),
        variants={"fp32": Variant(file=ONNX_FILE, dtype="fp32")},
        dense=dense,
    )
    causal = model.config.model_type in DECODER_MODEL_TYPES
    return _Written(manifest, graph_diff, model.config.num_attention_heads, model.config.hidden_size, causal)
