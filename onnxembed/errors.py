"""The errors onnxembed raises on purpose, importable without torch or onnxruntime.

Every one inherits :class:`OnnxEmbedError`, so ``except OnnxEmbedError`` catches all of them, and also the
builtin a caller would expect (``ValueError`` for a bad value, ``TypeError`` for a wrong type,
``RuntimeError`` for a failed check), so code written against the builtins keeps working.
"""

from __future__ import annotations


class OnnxEmbedError(Exception):
    """Base class of every error onnxembed raises on purpose."""


class InvalidArgumentError(OnnxEmbedError, ValueError):
    """An argument's value is outside what is allowed; the message says what is allowed."""


class ArgumentTypeError(OnnxEmbedError, TypeError):
    """An argument has the wrong type (e.g. bytes where texts were expected)."""


class ModelLoadError(OnnxEmbedError, ValueError):
    """A model directory (an export, or the source of one) is missing, incomplete or corrupt; the message names
    the file."""


class UnsupportedModelError(OnnxEmbedError, ValueError):
    """The model has a module, architecture or setting onnxembed cannot carry; the message names it."""


class ExportVerificationError(OnnxEmbedError, RuntimeError):
    """The exported graph or pipeline does not reproduce its source model within the tolerance asked for."""


class OutputExistsError(OnnxEmbedError, FileExistsError):
    """The output directory exists and may not be replaced."""


class Int8SaturationWarning(UserWarning):
    """An int8 graph's full-range weights would saturate in this CPU's int8 kernel (onnxembed/runtime/int8.py):
    "auto" loads another variant; named, the graph loads with its vectors off the ones measured at export."""


__all__ = [
    "ArgumentTypeError",
    "ExportVerificationError",
    "Int8SaturationWarning",
    "InvalidArgumentError",
    "ModelLoadError",
    "OnnxEmbedError",
    "OutputExistsError",
    "UnsupportedModelError",
]
