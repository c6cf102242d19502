"""Broken or mistyped sentence-transformers directories: each refused with an error that names the file and
what is wrong, before anything is written; never read another way (a module entry without "path" once read the
model's own config.json as its Pooling config, and exported mean pooling in place of weightedmean)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import __version__ as TRANSFORMERS_VERSION

from onnxembed import export
from onnxembed.errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from tests.replicas import Replica


def _json(name: str, change: Callable[[object], object]) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        path = src / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return edit


def _set(name: str, **values: object) -> Callable[[Path], None]:
    return _json(name, lambda config: {**config, **values})  # type: ignore[dict-item]


def _without_path(modules: object) -> object:
    assert isinstance(modules, list)
    modules[1].pop("path")
    return modules


def _remove(*names: str) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        for name in names:
            (src / name).unlink(missing_ok=True)  # transformers 5 saves no vocab.txt

    return edit


def _truncate(name: str) -> Callable[[Path], None]:
    def edit(src: Path) -> None:
        (src / name).write_bytes((src / name).read_bytes()[:4])

    return edit


CASES = {
    "module without path": (
        _json("modules.json", _without_path),
        ModelLoadError,
        'module 1 is not an object with a "path"',
    ),
    "module as a string": (_json("modules.json", lambda m: [m[0], "1_Pooling"]), ModelLoadError, "module 1 is not"),
    "junk before the Transformer": (_json("modules.json", lambda m: ["junk", m[0]]), ModelLoadError, "module 0 is not"),
    "unknown similarity": (
        _set("config_sentence_transformers.json", similarity_fn_name="jaccard"),
        InvalidArgumentError,
        "similarity_fn_name 'jaccard' is not one of",
    ),
    "pipeline config a list": (
        _json("config_sentence_transformers.json", lambda c: [c]),
        ModelLoadError,
        "JSON object",
    ),
    "pooling config a list": (_json("1_Pooling/config.json", lambda c: [c]), ModelLoadError, "JSON object"),
    "pooling_mode a number": (_set("1_Pooling/config.json", pooling_mode=3), UnsupportedModelError, "pooling mode 3"),
    "pooling_mode empty": (_set("1_Pooling/config.json", pooling_mode=[]), UnsupportedModelError, "empty list"),
    "max_seq_length a string": (
        _set("sentence_bert_config.json", max_seq_length="20"),
        ModelLoadError,
        "max_seq_length must be a positive integer",
    ),
    "no tokenizer files": (
        _remove("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"),
        ModelLoadError,
        "could not load a tokenizer from",
    ),
    "config without model_type": (
        _json("config.json", lambda c: {k: v for k, v in c.items() if k != "model_type"}),  # type: ignore[attr-defined]
        ModelLoadError,
        "has no model_type",
    ),
    "weights cut short": (_truncate("model.safetensors"), ModelLoadError, "could not load the BertModel weights in"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_source_is_refused_by_name(chinese_bert: Replica, tmp_path: Path, case: str) -> None:
    edit, error, message = CASES[case]
    if case == "no tokenizer files" and not TRANSFORMERS_VERSION.startswith("4."):
        pytest.skip(
            "transformers 5 builds a tokenizer of the special tokens alone, which sentence-transformers 6 loads"
        )
    src = tmp_path / "src"
    shutil.copytree(chinese_bert.path, src)
    edit(src)
    with pytest.raises(error, match=message):
        export(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
