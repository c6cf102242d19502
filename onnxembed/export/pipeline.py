"""The export job: read SRC, load the encoder, trace it, write OUT_DIR, verify, record the manifest.

OUT_DIR holds onnx/model.onnx, the tokenizer, config.json and the sentence-transformers module
configs, so that it also loads with ``SentenceTransformer(OUT_DIR, backend="onnx")``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from onnxembed.export.config import SentenceTransformerConfig, module_kind, read_sentence_transformer_config
from onnxembed.manifest import MANIFEST_NAME, MODEL_INPUTS, Manifest, Variant

if TYPE_CHECKING:
    from onnxembed.export.onnx_export import Exporter
    from onnxembed.export.quantize import Target

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"


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
            raise FileExistsError(f"{out_dir} holds the model being exported ({path}); choose another OUT_DIR")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (out_dir / MANIFEST_NAME).is_file() and not (out_dir / "modules.json").is_file():
            raise FileExistsError(f"{out_dir} is not a model directory; refusing to overwrite it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_sentence_transformers_files(
    st_config: SentenceTransformerConfig, out_dir: Path, max_seq_length: int
) -> None:
    """modules.json with the Transformer at the root, and each module's config copied over."""
    modules = []
    for index, module in enumerate(st_config.modules):
        kind = module_kind(str(module["type"]))
        path = "" if kind == "Transformer" else f"{index}_{kind}"
        modules.append({"idx": index, "name": str(index), "path": path, "type": module["type"]})
        source = st_config.root / str(module.get("path", ""))
        if kind == "Pooling":
            (out_dir / path).mkdir()
            shutil.copyfile(source / "config.json", out_dir / path / "config.json")
        elif kind == "Normalize":
            (out_dir / path).mkdir()
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    # Under the first name sentence-transformers looks for; tokenizer options are already in the saved tokenizer.
    bert_config = {
        key: value
        for key, value in st_config.transformer_config.items()
        if key not in ("tokenizer_args", "processor_kwargs")
    }
    bert_config.update(max_seq_length=max_seq_length, do_lower_case=st_config.do_lower_case)
    (out_dir / "sentence_bert_config.json").write_text(json.dumps(bert_config, indent=2) + "\n", encoding="utf-8")
    if (st_config.root / "config_sentence_transformers.json").is_file():
        shutil.copyfile(
            st_config.root / "config_sentence_transformers.json", out_dir / "config_sentence_transformers.json"
        )


def export(
    src: str | Path,
    out_dir: str | Path,
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
    int8_min_cosine: float = 0.99,
    fp16: bool = False,
    pool_in_graph: bool = False,
    calibration_file: str | Path | None = None,
) -> Manifest:
    """Export the SentenceTransformer at ``src`` to ``out_dir`` and verify it; return the manifest.

    ``base_model``: the base model directory of a PEFT adapter, overriding adapter_config.json.
    ``exporter``: "auto" (TorchScript, or dynamo when the traced graph fails verification), "torchscript"
    or "dynamo".
    ``external_data``: store weights beside the graph (None: only when over 2 GB).
    Verification raises ExportVerificationError (and removes the manifest) when the graph or the
    whole pipeline does not reproduce the source within ``min_cosine`` / ``atol``.

    Faster variants, each measured against fp32 on held-out calibration text (``calibration_file``, one
    text per line, or stdlib docstring sentences) and recorded in the manifest: ``optimize`` (fused for
    ``target`` "cpu" -> onnx/model_O2.onnx, "gpu" -> fp16 onnx/model_O4.onnx), ``quantize="int8"``
    (the fastest recipe whose 1st-percentile cosine vs fp32 is >= ``int8_min_cosine``), ``fp16``.
    ``pool_in_graph``: also the fp32 graph and each GPU graph with pooling and Normalize inside
    (``<file>_pooled.onnx``, variants ``fp32-pooled``, ``fp16-pooled``, ``optimized-gpu-pooled``), which
    the runtime prefers on CUDA; only for pooling the graph can do (export/graph_pooling.py).
    """
    _require_export_extra()
    from onnxembed.export.errors import ExportVerificationError, UnsupportedModelError
    from onnxembed.export.load import load_encoder, resolve_source
    from onnxembed.export.onnx_export import OUTPUT_NAME, export_onnx
    from onnxembed.export.verify import verify_graph, verify_pipeline

    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo'; got {exporter!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be 'int8' or None; got {quantize!r}")
    if target not in ("cpu", "gpu"):
        raise ValueError(f"target must be 'cpu' or 'gpu'; got {target!r}")
    if not 0.0 < int8_min_cosine <= 1.0:
        raise ValueError(f"int8_min_cosine must be in (0, 1]; got {int8_min_cosine}")
    source = resolve_source(src)
    st_config = read_sentence_transformer_config(source)
    if pool_in_graph:
        from onnxembed.export.graph_pooling import can_pool_in_graph

        reason = can_pool_in_graph(st_config.pooling_modes, st_config.include_prompt)
        if reason:
            raise UnsupportedModelError(f"--pool-in-graph: {reason}")
    loaded = load_encoder(st_config, base_model)
    out = Path(out_dir)
    adapter_base = [Path(loaded.adapter["base_model"])] if loaded.adapter else []
    _prepare_out_dir(out, overwrite, [source, *adapter_base])

    tokenizer, model = loaded.tokenizer, loaded.model
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer of {source} has no pad token; it cannot batch texts")
    accepted = set(inspect.signature(model.forward).parameters)
    input_names = tuple(name for name in MODEL_INPUTS if name in tokenizer.model_input_names and name in accepted)
    tokenizer.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    _write_sentence_transformers_files(st_config, out, loaded.max_seq_length)
    trace = export_onnx(
        model, input_names, tokenizer.pad_token_id, out / ONNX_FILE, exporter, external_data, verified=verify
    )
    graph_diff = None
    if verify:
        verify_args = (model, out / ONNX_FILE, input_names, tokenizer.pad_token_id, loaded.max_seq_length)
        try:
            graph_diff = verify_graph(*verify_args, max(atol, 1e-4))
        except ExportVerificationError as error:
            if exporter != "auto":
                raise
            logger.warning("the TorchScript graph failed verification (%s); exporting with dynamo", error)
            try:
                trace = export_onnx(
                    model, input_names, tokenizer.pad_token_id, out / ONNX_FILE, "dynamo", external_data
                )
                graph_diff = verify_graph(*verify_args, max(atol, 1e-4))
            except Exception as second:
                raise ExportVerificationError(
                    f"the TorchScript graph failed verification ({error}), and the dynamo export then failed: "
                    f"{type(second).__name__}: {second}"
                ) from second

    manifest = Manifest(
        dim=model.config.hidden_size * len(st_config.pooling_modes),
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
        source={"path": str(source), "adapter": loaded.adapter, **trace},
        versions=_versions(),
        variants={"fp32": Variant(file=ONNX_FILE, dtype="fp32")},
    )
    manifest.write(out)
    accuracy: dict[str, Any] = {}
    if verify:
        try:
            accuracy = {
                "token_embeddings_max_abs_diff": graph_diff,
                **verify_pipeline(source, out, "fp32", min_cosine, atol),
            }
        except Exception:
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            raise
    variants = {"fp32": Variant(file=ONNX_FILE, dtype="fp32", accuracy=accuracy)}
    manifest = dataclasses.replace(manifest, variants=variants)
    manifest.write(out)
    if optimize or quantize or fp16 or pool_in_graph:
        from onnxembed.export.calibration import read_calibration_file, sentences
        from onnxembed.export.variants import build_variants

        texts = read_calibration_file(calibration_file) if calibration_file else sentences(1000)
        variants.update(
            build_variants(
                out,
                num_heads=model.config.num_attention_heads,
                hidden_size=model.config.hidden_size,
                right_padded=manifest.padding_side == "right",
                texts=texts,
                optimize=optimize,
                target=target,
                quantize_int8=quantize == "int8",
                int8_min_cosine=int8_min_cosine,
                fp16=fp16,
                pool_in_graph=pool_in_graph,
                manifest=manifest,
            )
        )
        manifest = dataclasses.replace(manifest, variants=variants)
    manifest.write(out)
    logger.info("exported %s -> %s: %s", source, out, accuracy)
    return manifest
