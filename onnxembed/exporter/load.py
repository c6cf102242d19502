"""Load the pieces of a SentenceTransformer for export: its HF encoder (adapters merged) and tokenizer.

In scope: finding SRC (a directory, or a model name in the local Hugging Face cache, offline),
refusing architectures onnxembed cannot carry, merging a PEFT LoRA adapter, the effective
max_seq_length as sentence-transformers computes it.
Not in scope: tracing to ONNX (onnx_export.py) and checking the result (verify.py).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxembed.errors import InvalidArgumentError, ModelLoadError
from onnxembed.exporter.config import DECODER_MODEL_TYPES, SUPPORTED_ARCHITECTURES, SentenceTransformerConfig
from onnxembed.exporter.errors import UnsupportedModelError
from onnxembed.exporter.lora import ADAPTER_CONFIG, merge_lora, read_adapter_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedEncoder:
    model: Any  # transformers.PreTrainedModel, eval mode, adapters merged
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    max_seq_length: int
    architecture: str
    adapter: dict[str, Any] | None  # what was merged, for the manifest
    capped_from: int | None = None  # sentence-transformers' max_seq_length where the export had to lower it


def resolve_source(src: str | Path) -> Path:
    """A SentenceTransformer directory, or a hub name that is already in the local cache."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InvalidArgumentError(f"{src} is a file; expected a SentenceTransformer directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(src), local_files_only=True))
    except Exception as error:  # huggingface_hub raises several types for "not cached" / bad names
        raise InvalidArgumentError(
            f"{src!r} is neither a directory nor a model in the local Hugging Face cache "
            f"(no network is used): {type(error).__name__}"
        ) from error


def _resolve_base(adapter_dir: Path, adapter_config: dict[str, Any], base_model: str | Path | None) -> Path:
    if base_model is not None:
        path = Path(base_model).expanduser()
        if not path.is_dir():
            raise InvalidArgumentError(f"--base-model {base_model} is not a directory")
        return path
    name = adapter_config.get("base_model_name_or_path")
    if not name:
        raise InvalidArgumentError(f"{adapter_dir / ADAPTER_CONFIG} names no base model; pass --base-model PATH")
    try:
        return resolve_source(name)
    except ValueError:
        raise InvalidArgumentError(
            f"the adapter's base model {name!r} (from {adapter_dir / ADAPTER_CONFIG}) is not available offline: "
            f"it is not a directory here nor in the local Hugging Face cache; pass --base-model PATH"
        ) from None


def _check_architecture(model_dir: Path, classifier: bool = False, masked_lm: bool = False) -> str:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except ValueError as error:
        if not str(error).startswith("Unrecognized model"):
            raise
        # transformers' message goes on to list every model type it knows
        raise ModelLoadError(
            f"{model_dir / 'config.json'} has no model_type, and the folder's name contains none transformers "
            "knows: it is not a transformers model config"
        ) from error
    if masked_lm:
        from onnxembed.exporter.sparse_config import MASKED_LM_ARCHITECTURES

        if config.model_type not in MASKED_LM_ARCHITECTURES:
            raise UnsupportedModelError(
                f"masked-LM architecture {', '.join(getattr(config, 'architectures', None) or [])} (model_type "
                f"{config.model_type!r}) is not supported; supported: {', '.join(MASKED_LM_ARCHITECTURES.values())}"
            )
        return MASKED_LM_ARCHITECTURES[config.model_type]
    if classifier:
        from onnxembed.exporter.cross_encoder import CROSS_ENCODER_ARCHITECTURES

        if config.model_type not in CROSS_ENCODER_ARCHITECTURES:
            raise UnsupportedModelError(
                f"CrossEncoder architecture {', '.join(getattr(config, 'architectures', None) or [])} (model_type "
                f"{config.model_type!r}) is not supported; supported: {', '.join(CROSS_ENCODER_ARCHITECTURES.values())}"
            )
        return CROSS_ENCODER_ARCHITECTURES[config.model_type]
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        architectures = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        raise UnsupportedModelError(
            f"architecture {architectures} (model_type {config.model_type!r}) is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES.values())}"
        )
    custom = (getattr(config, "auto_map", None) or {}).get("AutoModel")
    if custom and config.model_type in DECODER_MODEL_TYPES:
        # gte-Qwen2's custom code makes Qwen2 attention bidirectional: transformers' own class would not match it
        raise UnsupportedModelError(
            f"{model_dir} ships its own modelling code (auto_map AutoModel: {custom}) for model_type "
            f"{config.model_type!r}; onnxembed exports transformers' {SUPPORTED_ARCHITECTURES[config.model_type]}, "
            "which that code may change, so it is not supported"
        )
    return SUPPORTED_ARCHITECTURES[config.model_type]


def load_encoder(
    st_config: SentenceTransformerConfig,
    base_model: str | Path | None = None,
    classifier: bool = False,
    masked_lm: bool = False,
) -> LoadedEncoder:
    """Load the Transformer module of ``st_config`` as sentence-transformers would, on CPU in fp32;
    ``classifier``: with its sequence-classification head, as a CrossEncoder loads it; ``masked_lm``: with its
    masked-LM head (vocabulary logits), as a SparseEncoder's fill-mask Transformer loads it."""
    import transformers
    from transformers import AutoTokenizer

    transformer_dir = st_config.transformer_dir
    adapter = None
    weights_dir = transformer_dir
    if (transformer_dir / ADAPTER_CONFIG).is_file():
        adapter_config = read_adapter_config(transformer_dir)
        weights_dir = _resolve_base(transformer_dir, adapter_config, base_model)
        adapter = {
            "base_model": str(weights_dir),
            "r": adapter_config.get("r"),
            "lora_alpha": adapter_config.get("lora_alpha"),
        }
    elif base_model is not None:
        raise InvalidArgumentError(
            f"base_model (--base-model) names the base of a PEFT adapter; {transformer_dir} has no "
            f"{ADAPTER_CONFIG}, its weights are its own"
        )
    architecture = _check_architecture(weights_dir, classifier, masked_lm)
    # Eager attention traces to plain MatMul/Softmax, which onnxruntime's optimizer can fuse later. The class
    # is named, not AutoModel's choice: T5 checkpoints load as their encoder alone, as sentence-transformers does.
    model_class = getattr(transformers, architecture)
    try:
        model = model_class.from_pretrained(str(weights_dir), attn_implementation="eager")
    except Exception as error:  # safetensors' header errors do not name the file
        raise ModelLoadError(
            f"could not load the {architecture} weights in {weights_dir}: {type(error).__name__}: {error}"
        ) from error
    if type(model).__name__ != architecture:
        raise UnsupportedModelError(f"{weights_dir} loads as {type(model).__name__}; expected {architecture}")
    if adapter is not None:
        adapter["merged_layers"] = merge_lora(model, transformer_dir)
        logger.info("merged LoRA adapter into %d layers of %s", adapter["merged_layers"], weights_dir)
    model.eval()

    tokenizer_dir = transformer_dir if (transformer_dir / "tokenizer_config.json").is_file() else weights_dir
    # As sentence-transformers: the module's tokenizer options, max_seq_length unless they set
    # model_max_length, and otherwise the tokenizer's own limit capped at the model's position table.
    tokenizer_kwargs = dict(st_config.processor_kwargs)
    if st_config.max_seq_length is not None and "model_max_length" not in tokenizer_kwargs:
        tokenizer_kwargs["model_max_length"] = st_config.max_seq_length
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), **tokenizer_kwargs)
    except Exception as error:  # with no tokenizer files at all, transformers fails on a None path (TypeError)
        raise ModelLoadError(
            f"could not load a tokenizer from {tokenizer_dir}: {type(error).__name__}: {error}"
        ) from error
    if not tokenizer.is_fast:
        raise UnsupportedModelError(f"the tokenizer in {tokenizer_dir} has no fast (tokenizers) version")
    # T5's relative positions have no table to cap at (sentence-transformers checks for the attribute too).
    positions = getattr(model.config, "max_position_embeddings", -1)
    if "model_max_length" not in tokenizer_kwargs and positions != -1:
        tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
    wanted = int(tokenizer.model_max_length)
    max_seq_length = _within_fixed_rope(model.config, wanted, weights_dir)
    tokenizer.model_max_length = max_seq_length
    if st_config.do_lower_case:
        _add_lowercase(tokenizer)
    capped_from = wanted if max_seq_length < wanted else None
    return LoadedEncoder(model, tokenizer, int(max_seq_length), architecture, adapter, capped_from)


def rope_types(config: Any) -> set[str]:
    """The RoPE scalings a transformers config asks for ({"default"} when none); transformers 5 may give one per
    layer type."""
    scaling = getattr(config, "rope_scaling", None) or {}
    per_layer = [value for value in scaling.values() if isinstance(value, dict)]
    return {str(entry.get("rope_type", entry.get("type", "default"))) for entry in per_layer or [scaling]}


def _within_fixed_rope(config: Any, max_seq_length: int, source: Path) -> int:
    """max_seq_length, capped where the RoPE frequencies would depend on the batch. Dynamic NTK scaling
    recomputes them from a batch's padded length once it passes max_position_embeddings, and keeps them for
    later calls (so vectors depend on what ran before); below that length it keeps the trained ones, which a
    graph can carry. LongRoPE switches frequency sets at that length: not carried."""
    kinds = rope_types(config)
    positions = getattr(config, "max_position_embeddings", None)
    if "longrope" in kinds:
        raise UnsupportedModelError(
            f"{source}: rope_scaling 'longrope' switches its RoPE frequencies by each batch's length; onnxembed "
            "does not export it"
        )
    dynamic = sorted(kind for kind in kinds if "dynamic" in kind)
    if dynamic and positions and max_seq_length > positions:
        warnings.warn(
            f"{source}: rope_scaling {dynamic[0]!r} recomputes its RoPE frequencies from each batch's length past "
            f"max_position_embeddings ({positions}) and keeps them between calls, which no fixed graph "
            f"reproduces; max_seq_length capped at {positions} (was {max_seq_length}): longer texts are truncated "
            "there",
            stacklevel=3,
        )
        return int(positions)
    return max_seq_length


def _add_lowercase(tokenizer: Any) -> None:
    """Lowercase in the tokenizer's own normalizer, as sentence-transformers does for do_lower_case."""
    from tokenizers import normalizers

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    parts = list(current) if isinstance(current, normalizers.Sequence) else ([current] if current else [])
    if not any(isinstance(part, normalizers.Lowercase) for part in parts):
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *parts])
