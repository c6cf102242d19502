"""The errors an export raises on purpose, importable without torch."""


class UnsupportedModelError(ValueError):
    """The model has a module, architecture or setting onnxembed cannot carry; the message names it."""


class ExportVerificationError(RuntimeError):
    """The exported graph does not reproduce its source model."""
