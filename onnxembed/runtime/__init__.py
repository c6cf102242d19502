"""The torch-free runtime: load an exported directory and encode text. Never imports torch."""

from onnxembed.runtime.encoder import Encoder
from onnxembed.runtime.session import resolve_provider

__all__ = ["Encoder", "resolve_provider"]
