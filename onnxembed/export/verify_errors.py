"""The error verification raises, importable without torch."""


class ExportVerificationError(RuntimeError):
    """The exported graph does not reproduce its source model."""
