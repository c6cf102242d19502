"""Argument checks shared by the runtime's public entry points."""

from __future__ import annotations

import numpy as np

from onnxembed.errors import InvalidArgumentError


def positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is a positive integer (numpy integers included, bools not), else ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}")
    return int(value)
