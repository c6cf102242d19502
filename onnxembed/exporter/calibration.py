"""Real text not written here, for calibration and benchmarks: the Python standard library's docstrings.

``sentences()``: docstrings split into sentences (~26 tokens each with a BERT tokenizer);
``paragraphs()``: whole docstring paragraphs of 45+ words (~190 tokens). Deterministic for a given
Python version, and needs nothing but the interpreter, so every export can calibrate offline.
``read_calibration_file()``: a user's own texts, one per line.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import sys
import warnings
from pathlib import Path

from onnxembed.errors import InvalidArgumentError

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


# Importing these would run programs, open windows or print (antigravity opens a browser).
_NEVER_IMPORT = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv", "test"}


def _wide_modules() -> tuple[str, ...]:
    """Every public top-level standard library module that is safe to import (for the larger benchmark corpus)."""
    return tuple(
        sorted(name for name in sys.stdlib_module_names if not name.startswith("_") and name not in _NEVER_IMPORT)
    )


def _docstrings(wide: bool = False) -> list[str]:
    docs: list[str] = []
    seen: set[int] = set()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in _wide_modules() if wide else _MODULES:
            try:
                package = importlib.import_module(name)
            except Exception:  # platform-specific modules (msvcrt, winreg) are listed everywhere
                continue
            modules = [package]
            for info in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
                if "__main__" in info.name or ".test" in info.name or info.name.split(".")[0] in _NEVER_IMPORT:
                    continue  # importing these runs programs
                try:
                    modules.append(importlib.import_module(info.name))
                except Exception:  # some submodules need optional C libraries
                    continue
            for module in modules:
                for obj in [module, *vars(module).values()]:
                    members = [obj]
                    if wide and inspect.isclass(obj):
                        members += [value for value in vars(obj).values() if callable(value)]
                    for member in members:
                        documented = inspect.ismodule(member) or inspect.isclass(member) or callable(member)
                        doc = inspect.getdoc(member) if documented else None
                        if doc and id(doc) not in seen:
                            seen.add(id(doc))
                            docs.append(doc)
    return docs


def sentences(limit: int = 2000, wide: bool = False) -> list[str]:
    """Distinct docstring sentences of 4-60 words, at most ``limit``. ``wide``: from every standard library
    module and class member (~16k sentences on Python 3.11) instead of the 18 calibration packages (~3k)."""
    found: dict[str, None] = {}
    for doc in _docstrings(wide):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            if 4 <= len(sentence.split()) <= 60:
                found.setdefault(sentence)
    return list(found)[:limit]


def paragraphs(limit: int = 500, wide: bool = False) -> list[str]:
    """Distinct docstring paragraphs of 45+ words (~190 tokens), at most ``limit`` (``wide``: as sentences)."""
    found: dict[str, None] = {}
    for doc in _docstrings(wide):
        for paragraph in doc.split("\n\n"):
            text = " ".join(paragraph.split())
            if len(text.split()) >= 45:
                found.setdefault(text)
    return list(found)[:limit]


def read_calibration_file(path: str | Path, limit: int = 2000) -> list[str]:
    """Non-empty lines of ``path`` (UTF-8), at most ``limit``; ValueError if there are fewer than 32."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line][:limit]
    if len(texts) < 32:
        raise InvalidArgumentError(f"calibration file {path} has {len(texts)} non-empty lines; at least 32 are needed")
    return texts
