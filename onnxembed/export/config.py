"""Read a SentenceTransformer directory's own configuration files, as sentence-transformers reads them.

In scope: modules.json, the Transformer module's sentence_bert_config.json, the Pooling config
(legacy ``pooling_mode_*`` booleans and the newer ``pooling_mode``), Normalize, and
config_sentence_transformers.json (prompts, default prompt, similarity function).
Not in scope: loading weights or tokenizers (load.py). Pure JSON: imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxembed.kernels import POOLING_MODES

# The legacy boolean keys, in the order sentence-transformers concatenates them.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class UnsupportedModelError(ValueError):
    """The model has a module or architecture onnxembed cannot carry; the message names it."""


@dataclass(frozen=True)
class SentenceTransformerConfig:
    """The settings that decide a SentenceTransformer's embeddings, read from its directory."""

    root: Path
    transformer_dir: Path
    max_seq_length: int | None
    do_lower_case: bool
    pooling_modes: tuple[str, ...]
    include_prompt: bool
    normalize: bool
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    truncate_dim: int | None = None
    modules: tuple[dict[str, Any], ...] = ()  # modules.json entries


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"could not read {path}: {error}") from error
    if not isinstance(value, dict) and not isinstance(value, list):
        raise ValueError(f"{path} is not a JSON object")
    return value  # type: ignore[return-value]


def _module_kind(type_name: str) -> str:
    """'sentence_transformers.models.Pooling' -> 'Pooling'."""
    return type_name.rsplit(".", 1)[-1]


def pooling_modes_from_config(config: dict[str, Any]) -> tuple[str, ...]:
    """Pooling modes from a 1_Pooling/config.json, in concatenation order."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key, False))
        modes = modes or ("mean",)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise UnsupportedModelError(f"pooling mode {mode!r} is not supported; supported: {POOLING_MODES}")
    return modes


def read_sentence_transformer_config(root: Path) -> SentenceTransformerConfig:
    """Read ``root`` (a SentenceTransformer directory). Raises UnsupportedModelError for a module
    other than Transformer, Pooling and Normalize, in that order."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        raise ValueError(f"{modules_path} is missing: {root} is not a SentenceTransformer directory")
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not modules:
        raise ValueError(f"{modules_path} does not list any module")
    kinds = [_module_kind(str(module.get("type", ""))) for module in modules]
    for module, kind in zip(modules, kinds, strict=True):
        if kind not in _SUPPORTED_MODULES:
            raise UnsupportedModelError(
                f"module {module.get('type')!r} ({module.get('path') or 'root'}) is not supported: onnxembed "
                f"exports {' -> '.join(_SUPPORTED_MODULES)} pipelines only"
            )
    if kinds[0] != "Transformer" or kinds.count("Transformer") != 1 or kinds.count("Pooling") > 1:
        raise UnsupportedModelError(
            f"module order {' -> '.join(kinds)} is not supported; expected Transformer -> Pooling [-> Normalize]"
        )
    if "Pooling" not in kinds:
        raise UnsupportedModelError(
            "a model without a Pooling module gives token embeddings, which onnxembed does not export"
        )
    if kinds.index("Pooling") != 1 or ("Normalize" in kinds and kinds[-1] != "Normalize"):
        raise UnsupportedModelError(
            f"module order {' -> '.join(kinds)} is not supported; expected Transformer -> Pooling [-> Normalize]"
        )

    transformer_dir = root / str(modules[0].get("path", ""))
    st_config: dict[str, Any] = {}
    for name in ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_xlnet_config.json"):
        if (transformer_dir / name).is_file():
            st_config = _read_json(transformer_dir / name)
            break

    pooling_dir = root / str(modules[1].get("path", ""))
    pooling_config = _read_json(pooling_dir / "config.json")
    pipeline_config: dict[str, Any] = {}
    if (root / "config_sentence_transformers.json").is_file():
        pipeline_config = _read_json(root / "config_sentence_transformers.json")
    prompts = pipeline_config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(value, str) for value in prompts.values()):
        raise ValueError(f"{root / 'config_sentence_transformers.json'}: prompts must map names to strings")
    default_prompt_name = pipeline_config.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of the prompts {list(prompts)}")

    return SentenceTransformerConfig(
        root=root,
        transformer_dir=transformer_dir,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        pooling_modes=pooling_modes_from_config(pooling_config),
        include_prompt=bool(pooling_config.get("include_prompt", True)),
        normalize="Normalize" in kinds,
        prompts=dict(prompts),
        default_prompt_name=default_prompt_name,
        similarity_fn_name=pipeline_config.get("similarity_fn_name"),
        truncate_dim=pipeline_config.get("truncate_dim"),
        modules=tuple(modules),
    )
