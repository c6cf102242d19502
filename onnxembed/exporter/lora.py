"""Merge a PEFT LoRA adapter into its base model's weights, without peft.

In scope: LoRA on Linear and Embedding layers as peft saves it (adapter_config.json +
adapter_model.safetensors): W += scale * B @ A, with scale = lora_alpha / r (or / sqrt(r) with rsLoRA),
per-module rank and alpha patterns, fan_in_fan_out, and modules_to_save.
Not in scope: other PEFT methods (DoRA, IA3, prompt tuning): they are refused by name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from onnxembed.errors import InvalidArgumentError, ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$")


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InvalidArgumentError(
            f"{adapter_dir / ADAPTER_CONFIG}: PEFT method {peft_type} is not supported (LoRA only)"
        )
    if config.get("use_dora"):
        raise InvalidArgumentError(f"{adapter_dir / ADAPTER_CONFIG}: DoRA adapters are not supported (plain LoRA only)")
    return config


def _load_adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    for name in _ADAPTER_WEIGHTS:
        path = adapter_dir / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return load_file(str(path))
            return torch.load(str(path), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    raise ModelLoadError(f"no adapter weights in {adapter_dir}: expected one of {', '.join(_ADAPTER_WEIGHTS)}")


def _module_name(key: str, module_names: set[str]) -> str:
    """Map a saved key's module path onto the base model's module names (peft prefixes vary)."""
    candidate = key
    while True:
        if candidate in module_names:
            return candidate
        if "." not in candidate:
            raise KeyError(key)
        candidate = candidate.split(".", 1)[1]


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    for pattern, value in patterns.items():
        if module == pattern or module.endswith("." + pattern) or re.fullmatch(pattern, module):
            return float(value)
    return default


@torch.no_grad()
def merge_lora(model: torch.nn.Module, adapter_dir: Path) -> int:
    """Add the adapter in ``adapter_dir`` to ``model``'s weights in place; return the number of merged layers."""
    config = read_adapter_config(adapter_dir)
    weights = _load_adapter_weights(adapter_dir)
    modules = dict(model.named_modules())
    module_names = set(modules)
    parameters = dict(model.named_parameters())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _LORA_KEY.match(key)
        if match is None:
            # modules_to_save: a full replacement weight, saved under the module's own name.
            name = key.replace(".modules_to_save.default", "").replace(".modules_to_save", "")
            target = next((p for p in parameters if name == p or name.endswith("." + p)), None)
            if target is None:
                raise InvalidArgumentError(f"adapter weight {key!r} matches no parameter of the base model")
            parameters[target].copy_(tensor.to(parameters[target].dtype))
            continue
        try:
            module = _module_name(match["module"], module_names)
        except KeyError:
            raise InvalidArgumentError(f"adapter weight {key!r} matches no module of the base model") from None
        pairs.setdefault(module, {})[match["part"].replace("embedding_", "")] = tensor
    rank_default = int(config.get("r", 8))
    alpha_default = float(config.get("lora_alpha", rank_default))
    for module_name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise InvalidArgumentError(f"adapter has an incomplete LoRA pair for {module_name!r}: {sorted(pair)}")
        rank = _pattern_value(config.get("rank_pattern") or {}, module_name, rank_default)
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module_name, alpha_default)
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        module = modules[module_name]
        delta = (pair["B"].float() @ pair["A"].float()) * scale
        if isinstance(module, torch.nn.Embedding):
            delta = delta.T  # peft stores embedding LoRA as A: (r, vocab), B: (dim, r)
        elif not isinstance(module, torch.nn.Linear):
            raise InvalidArgumentError(
                f"LoRA on {type(module).__name__} ({module_name}) is not supported: Linear and Embedding only"
            )
        elif config.get("fan_in_fan_out"):
            delta = delta.T
        if delta.shape != module.weight.shape:
            raise InvalidArgumentError(
                f"LoRA delta for {module_name} has shape {tuple(delta.shape)}, weight {tuple(module.weight.shape)}"
            )
        module.weight += delta.to(module.weight.dtype)
    return len(pairs)
