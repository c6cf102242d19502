"""Read a sentence-transformers CrossEncoder directory (a reranker) as sentence-transformers reads it.

In scope: telling a CrossEncoder directory from a SentenceTransformer one in each format sentence-transformers
has written (5.x and 6.x: modules.json with one Transformer module whose task is sequence-classification and
config_sentence_transformers.json with ``"model_type": "CrossEncoder"``; 4.x: the activation under
``sentence_transformers`` in config.json; older: ``sbert_ce_default_activation_function`` in config.json and
no modules.json), the classifier class per family, the activation ``predict`` applies, and refusing LLM
rerankers (a LogitScore head) by name. Not in scope: loading weights (load.py) or exporting (rerank.py).
Pure JSON: imports no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxembed.errors import InvalidArgumentError, UnsupportedModelError
from onnxembed.exporter.config import (
    TORCH_ACTIVATIONS,
    SentenceTransformerConfig,
    module_kind,
    read_json,
    read_json_object,
    read_modules,
    transformer_module_config,
    whole_transformer_config,
)

logger = logging.getLogger(__name__)

# model_type -> the classifier class CrossEncoder loads (AutoModelForSequenceClassification's choice).
CROSS_ENCODER_ARCHITECTURES = {
    "bert": "BertForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "xlm-roberta": "XLMRobertaForSequenceClassification",
    "distilbert": "DistilBertForSequenceClassification",
    "mpnet": "MPNetForSequenceClassification",
    "modernbert": "ModernBertForSequenceClassification",
}
CLASSIFICATION_TASK = "sequence-classification"
# torch's path for each activation name, as sentence-transformers writes activation_fn.
TORCH_PATHS = {
    name: f"torch.nn.modules.{'linear' if torch == 'Identity' else 'activation'}.{torch}"
    for torch, name in TORCH_ACTIVATIONS.items()
}
_LLM_REFUSAL = (
    "LLM rerankers (a causal LM scored by a LogitScore head) are not supported; onnxembed exports "
    "CrossEncoders with a *ForSequenceClassification head (" + ", ".join(CROSS_ENCODER_ARCHITECTURES.values()) + ")"
)


@dataclass(frozen=True)
class CrossEncoderConfig:
    """What decides a CrossEncoder's scores, read from its directory."""

    root: Path
    st_config: SentenceTransformerConfig  # the Transformer module's settings, for load.load_encoder
    activation_path: str | None  # activation_fn as saved (None: sentence-transformers' default by num_labels)
    activation_source: str  # which file (and key) it came from
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def _architectures(root: Path) -> list[str]:
    path = root / "config.json"
    if not path.is_file():
        return []
    config = read_json(path)
    return list(config.get("architectures") or []) if isinstance(config, dict) else []


def is_cross_encoder(root: Path) -> bool:
    """Whether ``root`` is a CrossEncoder directory, in any format sentence-transformers wrote; raises
    UnsupportedModelError for an LLM reranker (a LogitScore head, or a causal LM without modules.json)."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        architectures = _architectures(root)
        if architectures and architectures[0].endswith("ForCausalLM"):
            raise UnsupportedModelError(f"{root} ({architectures[0]}): {_LLM_REFUSAL}")
        return bool(architectures) and architectures[0].endswith("ForSequenceClassification")
    modules = read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(module, dict) for module in modules):
        return False  # not a CrossEncoder's; the SentenceTransformer reader names what is wrong
    kinds = [module_kind(str(module.get("type", ""))) for module in modules]
    if "LogitScore" in kinds:
        raise UnsupportedModelError(f"{root} has a LogitScore module: {_LLM_REFUSAL}")
    pipeline_path = root / "config_sentence_transformers.json"
    if pipeline_path.is_file():
        pipeline = read_json(pipeline_path)
        if isinstance(pipeline, dict) and pipeline.get("model_type") == "CrossEncoder":
            return True
    if kinds[:1] == ["Transformer"] and len(kinds) == 1:
        transformer_dir = root / str(modules[0].get("path", ""))
        for name in ("sentence_bert_config.json",):
            if (transformer_dir / name).is_file():
                config = read_json(transformer_dir / name)
                return isinstance(config, dict) and config.get("transformer_task") == CLASSIFICATION_TASK
    return False


def read_cross_encoder_config(root: Path) -> CrossEncoderConfig:
    """Read ``root`` (a CrossEncoder directory: see :func:`is_cross_encoder`)."""
    transformer_dir = root
    transformer: dict[str, Any] = {}
    pipeline: dict[str, Any] = {}
    if (root / "modules.json").is_file():
        modules = read_modules(root / "modules.json")
        kinds = [module_kind(str(module.get("type", ""))) for module in modules]
        if kinds != ["Transformer"]:
            raise UnsupportedModelError(
                f"{root / 'modules.json'}: modules {' -> '.join(kinds)} are not supported for a CrossEncoder; "
                "onnxembed exports a single Transformer module with a sequence-classification head"
            )
        transformer_dir = root / modules[0]["path"]
        transformer = transformer_module_config(transformer_dir, CLASSIFICATION_TASK)
        for key in ("module_output_name",):
            if transformer.get(key, "scores") != "scores":
                raise UnsupportedModelError(f"{transformer_dir}: {key} {transformer[key]!r} is not supported")
        pipeline_path = root / "config_sentence_transformers.json"
        pipeline = read_json_object(pipeline_path) if pipeline_path.is_file() else {}
    architectures = _architectures(transformer_dir)
    if architectures and not architectures[0].endswith("ForSequenceClassification"):
        raise UnsupportedModelError(
            f"{transformer_dir / 'config.json'}: architecture {architectures[0]} is not a sequence classifier; "
            f"supported: {', '.join(CROSS_ENCODER_ARCHITECTURES.values())}"
        )
    path, source = _saved_activation(root, transformer_dir, pipeline)
    prompts = pipeline.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(value, (str, type(None))) for value in prompts.values()):
        raise InvalidArgumentError(f"{root / 'config_sentence_transformers.json'}: prompts must map names to strings")
    prompts = {name: value or "" for name, value in prompts.items()}
    default_prompt_name = pipeline.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise InvalidArgumentError(
            f"default_prompt_name {default_prompt_name!r} is not one of the prompts {list(prompts)}"
        )
    st_config = whole_transformer_config(root, transformer_dir, transformer)
    return CrossEncoderConfig(root, st_config, path, source, prompts, default_prompt_name)


def _saved_activation(root: Path, transformer_dir: Path, pipeline: dict[str, Any]) -> tuple[str | None, str]:
    """activation_fn where sentence-transformers looks for it, in its order: config_sentence_transformers.json,
    then config.json's ``sentence_transformers.activation_fn`` (4.x), then ``sbert_ce_default_activation_function``
    (before 4.0)."""
    if pipeline.get("activation_fn") is not None:
        return str(pipeline["activation_fn"]), "config_sentence_transformers.json activation_fn"
    config_path = transformer_dir / "config.json"
    config = read_json_object(config_path) if config_path.is_file() else {}
    saved = config.get("sentence_transformers")
    if isinstance(saved, dict) and "activation_fn" in saved:
        if saved["activation_fn"] is not None:
            return str(saved["activation_fn"]), "config.json sentence_transformers.activation_fn"
        return None, "default (config.json sentence_transformers.activation_fn is null)"
    if config.get("sbert_ce_default_activation_function") is not None:
        return str(config["sbert_ce_default_activation_function"]), "config.json sbert_ce_default_activation_function"
    return None, "default"


def resolve_activation(path: str | None, num_labels: int) -> str:
    """The kernels.dense name of the activation CrossEncoder.predict applies by default: the saved torch.nn
    class, or (none saved, or a custom class that sentence-transformers ignores without trust_remote_code)
    Sigmoid for one label and Identity otherwise."""
    default = "sigmoid" if num_labels == 1 else "identity"
    if path is None:
        return default
    short = path.rsplit(".", 1)[-1]
    if not path.startswith("torch."):
        logger.warning(
            "activation_fn %r is not a torch class; sentence-transformers uses %s without "
            "trust_remote_code, and so does onnxembed",
            path,
            default,
        )
        return default
    if short not in TORCH_ACTIVATIONS:
        raise UnsupportedModelError(
            f"activation_fn {path!r} is not supported; supported: torch.nn {', '.join(TORCH_ACTIVATIONS)}"
        )
    return TORCH_ACTIVATIONS[short]
