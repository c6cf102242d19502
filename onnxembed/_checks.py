"""Argument checks shared by the runtime's public entry points."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
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


# Threads (or sessions) past this many per logical CPU only compete for the same cores; thousands of them made
# onnxruntime spend minutes creating and spinning threads instead of failing.
MAX_THREADS_PER_CPU = 4


def thread_count(value: object, name: str) -> int:
    """``value`` as a positive int of at most MAX_THREADS_PER_CPU x this machine's logical CPUs."""
    count = positive_int(value, name)
    limit = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
    if count > limit:
        raise InvalidArgumentError(
            f"{name}={count} is more than {MAX_THREADS_PER_CPU} per logical CPU ({os.cpu_count()} here): they would "
            f"only compete for the same cores; at most {limit}"
        )
    return count


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
    if prompt_name is not None and not isinstance(prompt_name, str):
        raise ArgumentTypeError(f"prompt_name must be a str; got {type(prompt_name).__name__}")
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return ""
    if name not in prompts:
        known = ", ".join(repr(key) for key in prompts) or "none"
        raise InvalidArgumentError(f"prompt_name {name!r} is not one of the model's prompts: {known}")
    return prompts[name]


def unordered_or_keyed(inputs: object, name: str) -> None:
    """Refuse what list() would take apart other than as a caller means it: a dict (its keys), a set (in an
    order the caller cannot map back to the results), a DataFrame (its column names) and a 0-d numpy array."""
    if isinstance(inputs, Mapping):
        raise ArgumentTypeError(f"{name} is a {type(inputs).__name__}: pass the text(s) themselves, not a mapping")
    if isinstance(inputs, (set, frozenset)):
        raise ArgumentTypeError(f"{name} is a {type(inputs).__name__}: pass a list, whose order the results follow")
    if type(inputs).__name__ == "DataFrame":  # iterating one gives its column names
        raise ArgumentTypeError(f"{name} is a DataFrame: pass a list of its rows (df.values.tolist())")
    if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
        raise ArgumentTypeError(f"{name} is a 0-d array; pass its text as a str, or a 1-d array")


def checked_texts(sentences: Iterable[str]) -> list[str]:
    """``sentences`` as a list, if it is an iterable of str (not bytes), else ArgumentTypeError."""
    if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Iterable):
        raise ArgumentTypeError(f"sentences must be a str or an iterable of str; got {type(sentences).__name__}")
    unordered_or_keyed(sentences, "sentences")
    texts = list(sentences)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ArgumentTypeError(f"sentences[{index}] is {type(text).__name__}, not str")
    return texts


# torch's name for the device each onnxruntime provider runs on, for device=...; other providers (DirectML,
# CoreML, OpenVINO...) have none, so any device= there is refused.
TORCH_DEVICES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "ROCMExecutionProvider": "cuda",
    "MIGraphXExecutionProvider": "cuda",
}


def check_device(device: object, provider: str, owner: str) -> None:
    """sentence-transformers' ``device=`` of a call: accepted when it names where ``provider`` runs ("cpu",
    "cuda:0", a torch.device), else refused: the provider is chosen when the model is loaded."""
    if device is not None and str(device).split(":")[0] != TORCH_DEVICES.get(provider):
        raise InvalidArgumentError(
            f"device={device!r}, but this {owner} runs on {provider}; choose one with {owner}(provider=...)"
        )
