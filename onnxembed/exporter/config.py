"""Read a SentenceTransformer directory's own configuration files, as sentence-transformers reads them.

In scope: modules.json, the Transformer module's sentence_bert_config.json, the Pooling config
(legacy ``pooling_mode_*`` booleans and the newer ``pooling_mode``), StaticEmbedding, Dense, Normalize, and
config_sentence_transformers.json (prompts, default prompt, similarity function).
Not in scope: loading weights or tokenizers (load.py). Pure JSON: imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxembed.errors import InvalidArgumentError, ModelLoadError
from onnxembed.exporter.errors import UnsupportedModelError
from onnxembed.kernels import POOLING_MODES, SIMILARITY_FNS

# The legacy boolean keys, in the order sentence-transformers concatenates them.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# model_type -> the encoder class sentence-transformers' Transformer module loads for it (for T5 and mT5 the
# encoder alone, as its _ENCODER_ONLY_MODELS table does; AutoModel would build the decoder too). The decoders
# (Qwen3-Embedding, e5-mistral style: causal attention, last-token pooling) are their bare base models.
SUPPORTED_ARCHITECTURES = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "distilbert": "DistilBertModel",
    "mpnet": "MPNetModel",
    "modernbert": "ModernBertModel",
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "gemma3_text": "Gemma3TextModel",
    "qwen3": "Qwen3Model",
    "qwen2": "Qwen2Model",
    "llama": "LlamaModel",
    "mistral": "MistralModel",
}
# Causal decoders: their graphs have no encoder-style attention for onnxruntime's BERT fusion to match.
DECODER_MODEL_TYPES = frozenset({"qwen3", "qwen2", "llama", "mistral"})

SUPPORTED_MODULES = ("Transformer", "StaticEmbedding", "Pooling", "Dense", "Normalize")
_PIPELINES = "Transformer -> Pooling [-> Dense ...] [-> Normalize] or StaticEmbedding [-> Dense ...] [-> Normalize]"
# torch.nn activation class -> the name onnxembed.kernels.dense gives it (Dense modules name them by import path).
TORCH_ACTIVATIONS = {
    "Identity": "identity",
    "Tanh": "tanh",
    "ReLU": "relu",
    "GELU": "gelu",
    "Sigmoid": "sigmoid",
    "SiLU": "silu",
}
# sentence-transformers looks for the Transformer module's config under these names, in this order.
TRANSFORMER_CONFIG_NAMES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
# Keys that change how text is processed or the model is built in ways onnxembed does not reproduce:
# refused by name rather than left for verification to find.
_MODEL_KWARG_KEYS = ("model_args", "model_kwargs", "config_args", "config_kwargs")
# Loading options that leave an fp32 CPU export's numbers as they are.
_HARMLESS_MODEL_KWARGS = {"trust_remote_code", "torch_dtype", "dtype", "device_map", "low_cpu_mem_usage", "revision"}


@dataclass(frozen=True)
class DenseConfig:
    """A Dense module as its config.json describes it."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of onnxembed.kernels.DENSE_ACTIVATIONS


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
    processor_kwargs: dict[str, Any] = field(default_factory=dict)  # for AutoTokenizer.from_pretrained
    transformer_config: dict[str, Any] = field(default_factory=dict)  # the module's own config, as read
    dense: tuple[DenseConfig, ...] = ()
    static: bool = False  # a StaticEmbedding (transformer_dir is its folder), not a Transformer + Pooling


def read_json(path: Path) -> Any:
    """The JSON value in ``path`` (an object, or a list for modules.json); ModelLoadError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not read {path}: {error}") from error


def read_json_object(path: Path) -> dict[str, Any]:
    """read_json for a config file, which must hold a JSON object."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} is not a JSON object (found a {type(config).__name__})")
    return config


def module_kind(type_name: str) -> str:
    """'sentence_transformers.models.Pooling' -> 'Pooling'."""
    return type_name.rsplit(".", 1)[-1]


def read_modules(modules_path: Path) -> list[dict[str, Any]]:
    """modules.json's entries, each an object with a "path": sentence-transformers reads every entry's (the
    root module's is "") and fails without one; read as "" it would take another module's config."""
    modules = read_json(modules_path)
    if not isinstance(modules, list) or not modules:
        raise InvalidArgumentError(f"{modules_path} does not list any module")
    for index, module in enumerate(modules):
        if not isinstance(module, dict) or not isinstance(module.get("path"), str):
            raise ModelLoadError(f'{modules_path}: module {index} is not an object with a "path": {module!r}')
    return modules


def _check_module_order(modules: list[dict[str, Any]]) -> list[str]:
    kinds = [module_kind(str(module.get("type", ""))) for module in modules]
    for module, kind in zip(modules, kinds, strict=True):
        if kind not in SUPPORTED_MODULES:
            raise UnsupportedModelError(
                f"module {module.get('type')!r} ({module.get('path') or 'root'}) is not supported: onnxembed "
                f"exports {_PIPELINES}"
            )
    if kinds[0] == "Transformer" and "Pooling" not in kinds:
        raise UnsupportedModelError(
            "a model without a Pooling module gives token embeddings, which onnxembed does not export"
        )
    head = ["Transformer", "Pooling"] if kinds[0] == "Transformer" else ["StaticEmbedding"]
    rest = kinds[len(head) :]
    dense = len(rest) - (1 if rest and rest[-1] == "Normalize" else 0)
    if kinds[: len(head)] != head or any(kind != "Dense" for kind in rest[:dense]) or len(rest) > dense + 1:
        raise UnsupportedModelError(f"module order {' -> '.join(kinds)} is not supported; expected {_PIPELINES}")
    return kinds


def _dense_config(path: Path) -> DenseConfig:
    """A Dense module's config.json, refusing what onnxembed would not reproduce."""
    config = read_json_object(path / "config.json")
    for key in ("module_input_name", "module_output_name"):
        name = config.get(key)
        if name not in (None, "sentence_embedding"):
            raise UnsupportedModelError(
                f"{path / 'config.json'}: {key} {name!r} is not supported; onnxembed carries Dense layers that read "
                "and write sentence_embedding"
            )
    activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    short = activation.rsplit(".", 1)[-1]
    if not activation.startswith("torch.") or short not in TORCH_ACTIVATIONS:
        raise UnsupportedModelError(
            f"{path / 'config.json'}: activation_function {activation!r} is not supported; supported: torch.nn "
            f"{', '.join(TORCH_ACTIVATIONS)}"
        )
    try:
        return DenseConfig(
            path=path,
            in_features=int(config["in_features"]),
            out_features=int(config["out_features"]),
            bias=bool(config.get("bias", True)),
            activation=TORCH_ACTIVATIONS[short],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{path / 'config.json'} lacks in_features/out_features: {error}") from error


def transformer_module_config(transformer_dir: Path, task: str = "feature-extraction") -> dict[str, Any]:
    """The Transformer module's own config, under the first of sentence-transformers' file names found;
    ``task``: the transformer_task it must have (a CrossEncoder's is "sequence-classification")."""
    for name in TRANSFORMER_CONFIG_NAMES:
        if (transformer_dir / name).is_file():
            config = read_json_object(transformer_dir / name)
            max_seq_length = config.get("max_seq_length")
            if max_seq_length is not None and (type(max_seq_length) is not int or max_seq_length < 1):
                raise ModelLoadError(
                    f"{transformer_dir / name}: max_seq_length must be a positive integer; got {max_seq_length!r}"
                )
            if config.get("processing_kwargs"):
                raise UnsupportedModelError(
                    f"{transformer_dir / name}: processing_kwargs={config['processing_kwargs']!r} is not supported"
                )
            for key in _MODEL_KWARG_KEYS:
                unknown = set(config.get(key) or {}) - _HARMLESS_MODEL_KWARGS
                if unknown:
                    raise UnsupportedModelError(
                        f"{transformer_dir / name}: {key} {sorted(unknown)} change the model; "
                        "onnxembed does not apply them"
                    )
            found = config.get("transformer_task", "feature-extraction")
            if found != task:
                raise UnsupportedModelError(
                    f"{transformer_dir / name}: transformer_task {found!r} is not supported here; expected {task!r}"
                )
            return config  # type: ignore[no-any-return]
    return {}


def _prompts(pipeline_config: dict[str, Any], path: Path) -> dict[str, str]:
    """Prompts as sentence-transformers holds them: its default empty 'query' and 'document' prompts,
    overridden by the model's, with None read as ''."""
    saved = pipeline_config.get("prompts") or {}
    if not isinstance(saved, dict) or not all(value is None or isinstance(value, str) for value in saved.values()):
        raise InvalidArgumentError(f"{path}: prompts must map names to strings")
    prompts = {"query": "", "document": ""}
    prompts.update({name: value or "" for name, value in saved.items()})
    return prompts


def read_pipeline_config(root: Path) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """config_sentence_transformers.json ({} when absent), its prompts (see _prompts) and default_prompt_name,
    checked to name one of them."""
    path = root / "config_sentence_transformers.json"
    pipeline_config = read_json_object(path) if path.is_file() else {}
    prompts = _prompts(pipeline_config, path)
    similarity = pipeline_config.get("similarity_fn_name")
    if similarity is not None and similarity not in SIMILARITY_FNS:
        # sentence-transformers refuses it on load; the runtime could not score with it
        raise InvalidArgumentError(
            f"{path}: similarity_fn_name {similarity!r} is not one of sentence-transformers' {SIMILARITY_FNS}"
        )
    default_prompt_name = pipeline_config.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise InvalidArgumentError(
            f"default_prompt_name {default_prompt_name!r} is not one of the prompts {list(prompts)}"
        )
    return pipeline_config, prompts, default_prompt_name


def pooling_modes_from_config(config: dict[str, Any], where: str = "pooling config") -> tuple[str, ...]:
    """Pooling modes from a 1_Pooling/config.json (``where``, for errors), in concatenation order."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = tuple(raw) if isinstance(raw, list) else (raw,)
        if not modes:
            raise UnsupportedModelError(f"{where}: pooling_mode is an empty list; supported: {POOLING_MODES}")
    else:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key, False))
        modes = modes or ("mean",)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise UnsupportedModelError(f"{where}: pooling mode {mode!r} is not supported; supported: {POOLING_MODES}")
    return modes


def processor_kwargs(st_config: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_args (older name) or processor_kwargs, without trust_remote_code, as sentence-transformers
    passes them to AutoTokenizer/AutoProcessor."""
    kwargs = dict(st_config.get("processor_kwargs") or st_config.get("tokenizer_args") or {})
    kwargs.pop("trust_remote_code", None)
    return kwargs


def whole_transformer_config(
    root: Path, transformer_dir: Path, transformer: dict[str, Any]
) -> SentenceTransformerConfig:
    """The settings of a model whose Transformer module is its whole path to the output (a CrossEncoder's
    classifier, a SparseEncoder's masked LM): no pooling, no Normalize; ``transformer``: the module's config."""
    return SentenceTransformerConfig(
        root=root,
        transformer_dir=transformer_dir,
        max_seq_length=transformer.get("max_seq_length"),
        do_lower_case=bool(transformer.get("do_lower_case", False)),
        pooling_modes=(),
        include_prompt=True,
        normalize=False,
        processor_kwargs=processor_kwargs(transformer),
        transformer_config=transformer,
    )


def read_sentence_transformer_config(root: Path) -> SentenceTransformerConfig:
    """Read ``root`` (a SentenceTransformer directory). Raises UnsupportedModelError for modules other than
    Transformer -> Pooling or StaticEmbedding, then Dense layers and Normalize, in that order."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        raise InvalidArgumentError(f"{modules_path} is missing: {root} is not a SentenceTransformer directory")
    modules = read_modules(modules_path)
    kinds = _check_module_order(modules)
    static = kinds[0] == "StaticEmbedding"

    transformer_dir = root / modules[0]["path"]
    st_config = {} if static else transformer_module_config(transformer_dir)
    # a StaticEmbedding may stand alone: no second module to read
    pooling_path = None if static else root / modules[1]["path"] / "config.json"
    pooling_config = {} if pooling_path is None else read_json_object(pooling_path)
    dense = tuple(
        _dense_config(root / module["path"]) for module, kind in zip(modules, kinds, strict=True) if kind == "Dense"
    )
    pipeline_path = root / "config_sentence_transformers.json"
    pipeline_config, prompts, default_prompt_name = read_pipeline_config(root)
    truncate_dim = pipeline_config.get("truncate_dim")
    if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim < 1):
        raise InvalidArgumentError(f"{pipeline_path}: truncate_dim must be a positive integer; got {truncate_dim!r}")

    return SentenceTransformerConfig(
        root=root,
        transformer_dir=transformer_dir,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        pooling_modes=("mean",)
        if pooling_path is None
        else pooling_modes_from_config(pooling_config, str(pooling_path)),
        include_prompt=bool(pooling_config.get("include_prompt", True)),
        normalize="Normalize" in kinds,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=pipeline_config.get("similarity_fn_name"),
        truncate_dim=truncate_dim,
        modules=tuple(modules),
        processor_kwargs=processor_kwargs(st_config),
        transformer_config=st_config,
        dense=dense,
        static=static,
    )
