"""Read a sentence-transformers SparseEncoder directory (SPLADE) as sentence-transformers 5.x/6.x saves it.

In scope: telling a SparseEncoder directory from the others (``"model_type": "SparseEncoder"`` in
config_sentence_transformers.json, or a SpladePooling / SparseStaticEmbedding module), the two pipelines
onnxembed carries (MLMTransformer, or Transformer with ``transformer_task="fill-mask"``, then SpladePooling;
and the inference-free kind: a Router whose query route is a SparseStaticEmbedding and whose document route is
that pipeline), the masked-LM class per family, and refusing SparseAutoEncoder (CSR) models by name.
Not in scope: loading weights (load.py) or exporting (sparse.py). Pure JSON: imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxembed.errors import UnsupportedModelError
from onnxembed.exporter.config import (
    SentenceTransformerConfig,
    module_kind,
    read_json,
    read_json_object,
    read_modules,
    read_pipeline_config,
    transformer_module_config,
    whole_transformer_config,
)

# model_type -> the masked-LM class (AutoModelForMaskedLM's choice, as sentence-transformers loads a fill-mask
# Transformer).
MASKED_LM_ARCHITECTURES = {
    "bert": "BertForMaskedLM",
    "distilbert": "DistilBertForMaskedLM",
    "roberta": "RobertaForMaskedLM",
    "xlm-roberta": "XLMRobertaForMaskedLM",
    "mpnet": "MPNetForMaskedLM",
    "modernbert": "ModernBertForMaskedLM",
}
FILL_MASK_TASK = "fill-mask"
SPLADE_POOLING_STRATEGIES = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
_SPARSE_MODULES = {"SpladePooling", "SparseStaticEmbedding", "SparseAutoEncoder", "MLMTransformer"}
_CSR_REFUSAL = (
    "SparseAutoEncoder (CSR) models are not supported: onnxembed exports SPLADE models (MLMTransformer or a "
    "fill-mask Transformer, then SpladePooling) and inference-free SPLADE (a Router with a SparseStaticEmbedding "
    "query route)"
)


@dataclass(frozen=True)
class StaticRouteConfig:
    """An inference-free model's query side: a SparseStaticEmbedding folder and the tasks routed to it."""

    folder: Path
    tasks: tuple[str, ...]  # encode(task=...) values that reach it ("query")
    default: bool | None  # encode() without a task reaches it (True), the SPLADE route (False), neither (None)
    graph_tasks: tuple[str, ...] = ()  # encode(task=...) values that reach the SPLADE route ("document")


@dataclass(frozen=True)
class SparseEncoderConfig:
    """What decides a SparseEncoder's vectors, read from its directory."""

    root: Path
    st_config: SentenceTransformerConfig  # the MLM Transformer's settings, for load.load_encoder
    pooling_strategy: str  # "max" or "sum" over tokens
    activation_function: str  # "relu" (log1p(relu)) or "log1p_relu" (log1p(log1p(relu)))
    static_route: StaticRouteConfig | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "dot"
    max_active_dims: int | None = None  # sentence-transformers 6 saves it and applies it at every encode


def _kinds(modules: list[Any]) -> list[str]:
    return [module_kind(str(module.get("type", ""))) for module in modules if isinstance(module, dict)]


def is_sparse_encoder(root: Path) -> bool:
    """Whether ``root`` is a SparseEncoder directory; raises UnsupportedModelError for a SparseAutoEncoder."""
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        return False
    modules = read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(module, dict) for module in modules):
        return False  # not a SparseEncoder's; the SentenceTransformer reader names what is wrong
    kinds = _kinds(modules)
    if (root / "router_config.json").is_file() and "Router" in kinds:
        router = read_json_object(root / "router_config.json")
        kinds += [module_kind(str(name)) for name in (router.get("types") or {}).values()]
    if "SparseAutoEncoder" in kinds:
        raise UnsupportedModelError(f"{root} has a SparseAutoEncoder module: {_CSR_REFUSAL}")
    pipeline_path = root / "config_sentence_transformers.json"
    pipeline = read_json(pipeline_path) if pipeline_path.is_file() else {}
    return (isinstance(pipeline, dict) and pipeline.get("model_type") == "SparseEncoder") or bool(
        _SPARSE_MODULES & set(kinds)
    )


def _splade_pooling(folder: Path) -> tuple[str, str]:
    config = read_json_object(folder / "config.json") if (folder / "config.json").is_file() else {}
    strategy = config.get("pooling_strategy", "max")
    activation = config.get("activation_function", "relu")
    if strategy not in SPLADE_POOLING_STRATEGIES:
        raise UnsupportedModelError(f"{folder}: pooling_strategy {strategy!r}; supported: max, sum")
    if activation not in SPLADE_ACTIVATIONS:
        raise UnsupportedModelError(f"{folder}: activation_function {activation!r}; supported: relu, log1p_relu")
    return strategy, activation


def _mlm_route(folders: list[tuple[str, Path]], where: str) -> tuple[Path, str, str]:
    """(transformer folder, pooling strategy, activation) of a [MLMTransformer | Transformer] -> SpladePooling
    route; anything else is refused with what was found."""
    kinds = [kind for kind, _ in folders]
    if len(kinds) != 2 or kinds[0] not in ("MLMTransformer", "Transformer") or kinds[1] != "SpladePooling":
        raise UnsupportedModelError(
            f"{where}: modules {' -> '.join(kinds) or 'none'} are not supported for a SparseEncoder; onnxembed "
            "exports MLMTransformer (or a fill-mask Transformer) -> SpladePooling"
        )
    return (folders[0][1], *_splade_pooling(folders[1][1]))


def read_sparse_encoder_config(root: Path) -> SparseEncoderConfig:
    """Read ``root`` (a SparseEncoder directory: see :func:`is_sparse_encoder`)."""
    modules = read_modules(root / "modules.json")
    kinds = _kinds(modules)
    static_route = None
    if kinds == ["Router"]:
        router = read_json_object(root / modules[0]["path"] / "router_config.json")
        structure: dict[str, list[str]] = router.get("structure") or {}
        types: dict[str, str] = router.get("types") or {}
        parameters = router.get("parameters") or {}
        if parameters.get("route_mappings"):
            raise UnsupportedModelError(
                f"{root / 'router_config.json'}: route_mappings are not supported; onnxembed routes by task name"
            )
        routes = {
            name: [(module_kind(types[folder]), root / folder) for folder in folders]
            for name, folders in structure.items()
        }
        static = [name for name, route in routes.items() if [kind for kind, _ in route] == ["SparseStaticEmbedding"]]
        mlm = [name for name in routes if name not in static]
        if len(static) != 1 or len(mlm) != 1:
            raise UnsupportedModelError(
                f"{root / 'router_config.json'}: routes {', '.join(routes)} are not supported; onnxembed exports "
                "a Router with one SparseStaticEmbedding route (queries) and one SPLADE route (documents)"
            )
        transformer_dir, strategy, activation = _mlm_route(routes[mlm[0]], f"route {mlm[0]!r}")
        # as Router: without default_route, allow_empty_key (default True) makes the first route the default
        default = parameters.get("default_route")
        if default is None and parameters.get("allow_empty_key", True):
            default = next(iter(routes))
        static_route = StaticRouteConfig(
            routes[static[0]][0][1], (static[0],), None if default is None else default == static[0], (mlm[0],)
        )
    else:
        folders = [(kind, root / module["path"]) for kind, module in zip(kinds, modules, strict=True)]
        transformer_dir, strategy, activation = _mlm_route(folders, str(root / "modules.json"))
    transformer = transformer_module_config(transformer_dir, FILL_MASK_TASK)
    if transformer.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise UnsupportedModelError(f"{transformer_dir}: module_output_name {transformer['module_output_name']!r}")
    pipeline, prompts, default_prompt_name = read_pipeline_config(root)
    st_config = whole_transformer_config(root, transformer_dir, transformer)
    max_active_dims = pipeline.get("max_active_dims")
    if max_active_dims is not None and (
        isinstance(max_active_dims, bool) or not isinstance(max_active_dims, int) or max_active_dims < 1
    ):
        raise UnsupportedModelError(
            f"{root / 'config_sentence_transformers.json'}: max_active_dims {max_active_dims!r} is not a positive int"
        )
    return SparseEncoderConfig(
        root=root,
        st_config=st_config,
        pooling_strategy=strategy,
        activation_function=activation,
        static_route=static_route,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=pipeline.get("similarity_fn_name") or "dot",
        max_active_dims=max_active_dims,
    )
