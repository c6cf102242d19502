"""Export a SentenceTransformer directory to a self-contained onnxembed (and sentence-transformers ONNX) directory.

Needs the ``export`` extra (torch, transformers, sentence-transformers, onnx): ``pip install onnxembed[export]``.
Importing this package imports none of them; calling :func:`export` does. ``onnxembed.export`` is the same
function.
"""

from __future__ import annotations

from onnxembed.errors import ExportVerificationError, UnsupportedModelError
from onnxembed.exporter.pipeline import export

__all__ = ["ExportVerificationError", "UnsupportedModelError", "export"]
