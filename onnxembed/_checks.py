"""Argument checks shared by the runtime's public entry points."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from onnxembed.errors import ArgumentTypeError, InvalidArgumentError


def positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is a positive integer (numpy integers included, bools not), else ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def model_path(model_dir: object, name: str = "model_dir") -> Path:
    """``model_dir`` as a Path if it is a str or os.PathLike, else a TypeError that names what was given."""
    if not isinstance(model_dir, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a path (str or os.PathLike); got {type(model_dir).__name__}")
    return Path(model_dir)


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


# sentence-transformers' order of prompt names for documents (encode_document), first found wins
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


def resolve_prompt(prompts: dict[str, str], default_prompt_name: str | None, prompt_name: Any, prompt: Any) -> str:
    """The prompt text as sentence-transformers picks it: ``prompt`` wins over ``prompt_name`` (with a warning
    when both are given), else the named prompt, else the model's default prompt, else none ("")."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ArgumentTypeError(f"prompt must be a str; got {type(prompt).__name__}")
        if prompt_name is not None:
            import warnings

            warnings.warn(
                f"both prompt and prompt_name={prompt_name!r} given; using prompt, as sentence-transformers does",
                stacklevel=3,
            )
        return prompt
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return ""
    if name not in prompts:
        known = ", ".join(repr(key) for key in prompts) or "none"
        raise InvalidArgumentError(f"prompt_name {name!r} is not one of the model's prompts: {known}")
    return prompts[name]


def checked_texts(sentences: Iterable[str]) -> list[str]:
    """``sentences`` as a list, if it is an iterable of str (not bytes), else ArgumentTypeError."""
    if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Iterable):
        raise ArgumentTypeError(f"sentences must be a str or an iterable of str; got {type(sentences).__name__}")
    texts = list(sentences)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ArgumentTypeError(f"sentences[{index}] is {type(text).__name__}, not str")
    return texts
