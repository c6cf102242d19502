"""Export a SentenceTransformer directory to a self-contained onnxembed (and sentence-transformers ONNX) directory.

Needs the ``export`` extra (torch, transformers, sentence-transformers, onnx): ``pip install onnxembed[export]``.
Importing this package imports none of them; calling :func:`export` does.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from onnxembed.export.errors import ExportVerificationError, UnsupportedModelError
from onnxembed.export.pipeline import export
from onnxembed.manifest import Manifest

__all__ = ["ExportVerificationError", "UnsupportedModelError", "export"]


class _CallableModule(types.ModuleType):
    """Lets ``onnxembed.export(src, out)`` work although ``onnxembed.export`` is this package:
    Python binds a subpackage over a same-named function in its parent once the subpackage is imported."""

    def __call__(self, src: str | Path, out_dir: str | Path, **kwargs: Any) -> Manifest:
        return export(src, out_dir, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
