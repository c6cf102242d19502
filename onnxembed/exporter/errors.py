"""The errors an export raises on purpose (defined in onnxembed.errors, importable without torch)."""

from onnxembed.errors import ExportVerificationError, UnsupportedModelError

__all__ = ["ExportVerificationError", "UnsupportedModelError"]
