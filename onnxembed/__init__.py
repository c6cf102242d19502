"""onnxembed: SentenceTransformer models exported to ONNX, encoded without torch.

``Encoder`` runs an exported model (onnxruntime + tokenizers + numpy); ``export(src, out_dir)`` makes
one (needs ``pip install onnxembed[export]``). Importing this package does no work and never imports
torch: onnxruntime is imported when ``Encoder`` is first used.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from onnxembed import export
from onnxembed.manifest import Manifest, ModelLoadError

if TYPE_CHECKING:
    from onnxembed.runtime import Encoder

try:
    __version__ = metadata.version("onnxembed")
except metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["Encoder", "Manifest", "ModelLoadError", "__version__", "export"]


def __getattr__(name: str) -> Any:
    if name == "Encoder":
        from onnxembed.runtime import Encoder

        return Encoder
    raise AttributeError(f"module 'onnxembed' has no attribute {name!r}")
