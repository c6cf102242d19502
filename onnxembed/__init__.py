"""onnxembed: SentenceTransformer models exported to ONNX, encoded without torch.

``Encoder`` runs an exported model (onnxruntime + tokenizers + numpy), ``Reranker`` an exported CrossEncoder,
``SparseEncoder`` an exported SparseEncoder (SPLADE);
``export(model_name_or_path, model_dir)`` makes either (needs ``pip install onnxembed[export]``). Importing this
package does no work and never imports torch: onnxruntime is imported when ``Encoder`` or ``Reranker`` is first
used, torch when ``export`` is called.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from onnxembed.errors import (
    ArgumentTypeError,
    ExportVerificationError,
    InvalidArgumentError,
    ModelLoadError,
    OnnxEmbedError,
    OutputExistsError,
    UnsupportedModelError,
)
from onnxembed.exporter.pipeline import export
from onnxembed.manifest import Manifest

if TYPE_CHECKING:
    from onnxembed.runtime import Encoder, Reranker, SparseEncoder

try:
    __version__ = metadata.version("onnxembed")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "ArgumentTypeError",
    "Encoder",
    "ExportVerificationError",
    "InvalidArgumentError",
    "Manifest",
    "ModelLoadError",
    "OnnxEmbedError",
    "OutputExistsError",
    "Reranker",
    "SparseEncoder",
    "UnsupportedModelError",
    "__version__",
    "export",
]


def __getattr__(name: str) -> Any:
    if name in ("Encoder", "Reranker", "SparseEncoder"):
        from onnxembed import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'onnxembed' has no attribute {name!r}")
