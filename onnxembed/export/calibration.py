"""Real text not written here, for calibration and benchmarks: the Python standard library's docstrings.

``sentences()``: docstrings split into sentences (~26 tokens each with a BERT tokenizer);
``paragraphs()``: whole docstring paragraphs of 45+ words (~190 tokens). Deterministic for a given
Python version, and needs nothing but the interpreter, so every export can calibrate offline.
``read_calibration_file()``: a user's own texts, one per line.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import warnings
from pathlib import Path

_MODULES = (
    "collections",
    "json",
    "email",
    "http",
    "logging",
    "unittest",
    "asyncio",
    "argparse",
    "pathlib",
    "datetime",
    "decimal",
    "xml",
    "urllib",
    "csv",
    "sqlite3",
    "typing",
    "functools",
    "itertools",
)


def _docstrings() -> list[str]:
    docs: list[str] = []
    seen: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _MODULES:
            package = importlib.import_module(name)
            modules = [package]
            for info in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
                if "__main__" in info.name or ".test" in info.name:
                    continue  # importing these runs programs
                try:
                    modules.append(importlib.import_module(info.name))
                except Exception:  # some submodules need optional C libraries
                    continue
            for module in modules:
                for obj in [module, *vars(module).values()]:
                    doc = (
                        inspect.getdoc(obj) if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj) else None
                    )
                    if doc and id(doc) not in seen:
                        seen.add(id(doc))
                        docs.append(doc)
    return docs


def sentences(limit: int = 2000) -> list[str]:
    found: list[str] = []
    for doc in _docstrings():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            if 4 <= len(sentence.split()) <= 60 and sentence not in found:
                found.append(sentence)
    return found[:limit]


def paragraphs(limit: int = 500) -> list[str]:
    found: list[str] = []
    for doc in _docstrings():
        for paragraph in doc.split("\n\n"):
            text = " ".join(paragraph.split())
            if len(text.split()) >= 45 and text not in found:
                found.append(text)
    return found[:limit]


def read_calibration_file(path: str | Path, limit: int = 2000) -> list[str]:
    """Non-empty lines of ``path`` (UTF-8), at most ``limit``; ValueError if there are fewer than 32."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line][:limit]
    if len(texts) < 32:
        raise ValueError(f"calibration file {path} has {len(texts)} non-empty lines; at least 32 are needed")
    return texts
