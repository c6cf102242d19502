"""Argument checks shared by the runtime's public entry points."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxembed.errors import ArgumentTypeError, InvalidArgumentError


def positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is a positive integer (numpy integers included, bools not), else ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def one_of_inputs(inputs: Any, sentences: Any, expected: str) -> Any:
    """``inputs``, or ``sentences`` (its older name, sentence-transformers' too): exactly one of them.
    ``expected`` says what they hold, for the error ("a str or an iterable of str")."""
    if sentences is None:
        if inputs is None:
            raise ArgumentTypeError(f"inputs must be {expected}; got NoneType")
        return inputs
    if inputs is not None:
        raise ArgumentTypeError("give the inputs once: as inputs or as sentences, not both")
    return sentences
