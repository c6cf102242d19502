"""The one place that builds onnxruntime sessions: provider choice and SessionOptions.

In scope: resolving a provider name, thread settings, loading an ONNX file with clear errors.
Not in scope: tokenization, batching and pooling (tokenize.py, batching.py, engine.py).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from onnxembed._checks import thread_count
from onnxembed.errors import ArgumentTypeError, InvalidArgumentError
from onnxembed.manifest import ModelLoadError

if TYPE_CHECKING:
    from onnxembed.manifest import Manifest

logger = logging.getLogger(__name__)

# Short names users type, mapped to onnxruntime's provider names.
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def resolve_provider(provider: str) -> str:
    """Return the onnxruntime provider name for ``provider`` ("auto", a short name or a full name).

    "auto" picks CUDA when onnxruntime has it, else CPU with a warning when a CUDA build was expected.
    An explicit provider that is not available raises ValueError listing the available ones.
    """
    available = ort.get_available_providers()
    if not isinstance(provider, str):
        raise ArgumentTypeError(f"provider must be a str ('auto', 'cpu', 'cuda' or one of {', '.join(available)})")
    if provider == "auto":
        if "CUDAExecutionProvider" in available:
            return "CUDAExecutionProvider"
        if ort.get_device() == "GPU":
            warnings.warn(
                "onnxruntime has no CUDAExecutionProvider here; falling back to CPU "
                f"(available: {', '.join(available)})",
                stacklevel=3,
            )
        return "CPUExecutionProvider"
    name = _PROVIDER_ALIASES.get(provider.lower(), provider)
    if name not in available:
        raise InvalidArgumentError(f"provider {provider!r} is not available; available: {', '.join(available)}")
    return name


def quiet_options() -> ort.SessionOptions:
    """Session options that log onnxruntime's errors only: at load it warns about its own rewrites (names
    inside a graph loop's subgraphs) for every decoder or looped graph, and none of it is the user's to act on."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return options


def create_session(onnx_path: Path, provider: str, threads: int | None) -> ort.InferenceSession:
    """Load ``onnx_path`` on ``provider`` (already resolved) with ``threads`` intra-op threads."""
    if not onnx_path.is_file():
        raise ModelLoadError(f"ONNX file {onnx_path} does not exist")
    if threads is not None:
        threads = thread_count(threads, "threads")
    options = quiet_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    if provider == "CUDAExecutionProvider" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises several private exception types for a bad file
        raise ModelLoadError(f"could not load ONNX file {onnx_path}: {error}") from error
    logger.debug("loaded %s on %s", onnx_path, session.get_providers())
    return session


def open_graph(
    model_dir: Path, manifest: Manifest, variant: str, provider: str, threads: int | None, output: str
) -> tuple[str, ort.InferenceSession, list[str]]:
    """The session of a model's chosen variant whose graph gives ``output`` (a reranker's logits, a sparse
    encoder's vectors): (variant name, session, its input names); ModelLoadError if the graph takes inputs
    onnxembed cannot feed or lacks ``output``."""
    from onnxembed.manifest import MODEL_INPUTS
    from onnxembed.runtime.variants import choose_variant

    name, variant_file = choose_variant(manifest, model_dir, variant, provider)
    session = create_session(model_dir / variant_file, provider, threads)
    input_names = [graph_input.name for graph_input in session.get_inputs()]
    unknown = [input_name for input_name in input_names if input_name not in MODEL_INPUTS]
    if unknown:
        raise ModelLoadError(f"{variant_file} takes inputs {unknown} that onnxembed cannot feed")
    outputs = [graph_output.name for graph_output in session.get_outputs()]
    if output not in outputs:
        raise ModelLoadError(f"{variant_file} has no output {output!r} (outputs: {outputs})")
    return name, session, input_names
