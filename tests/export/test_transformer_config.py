"""The Transformer module's settings that sentence-transformers honours, each checked end to end:
edit a copy of a replica, export it, compare with SentenceTransformer(copy).encode."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.exporter import UnsupportedModelError, export
from tests.replicas import LONG_TEXT, MIXED_TEXTS, Replica


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    change(data)
    path.write_text(json.dumps(data))


def _copy(replica: Replica, tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(replica.path, copy)
    return copy


def _assert_matches(src: Path, out: Path, batch_size: int = 4, **kwargs) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*MIXED_TEXTS, LONG_TEXT[:3000], LONG_TEXT[-3000:]]
    expected = SentenceTransformer(str(src), device="cpu").encode(texts, batch_size=batch_size, **kwargs)
    actual = Encoder(out, provider="cpu").encode(texts, batch_size=batch_size, **kwargs)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_left_truncation(chinese_bert: Replica, tmp_path: Path) -> None:
    src = _copy(chinese_bert, tmp_path)
    _edit_json(src / "tokenizer_config.json", lambda config: config.update(truncation_side="left"))
    export(src, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "onnxembed.json").read_text())["truncation_side"] == "left"
    _assert_matches(src, tmp_path / "out")


def test_left_padding_with_positions_counted_from_the_padding(chinese_bert: Replica, tmp_path: Path) -> None:
    """BERT numbers positions from 0 including left pads, so results depend on the batches: they must be
    the same batches as sentence-transformers'."""
    src = _copy(chinese_bert, tmp_path)
    _edit_json(src / "tokenizer_config.json", lambda config: config.update(padding_side="left"))
    export(src, tmp_path / "out")
    for batch_size in (3, 4, 7):
        _assert_matches(src, tmp_path / "out", batch_size=batch_size)


def test_left_padded_model_keeps_batches_of_32_on_a_gpu_provider(chinese_bert: Replica, tmp_path: Path) -> None:
    """On a GPU the default batch is the token budget alone, except for left-padded models: their results
    depend on the batches, which must stay sentence-transformers' default 32."""
    from sentence_transformers import SentenceTransformer

    src = _copy(chinese_bert, tmp_path)
    _edit_json(src / "tokenizer_config.json", lambda config: config.update(padding_side="left"))
    export(src, tmp_path / "out")
    encoder = Encoder(tmp_path / "out")
    encoder.provider = "CUDAExecutionProvider"  # the defaults a GPU gets; the session stays on CPU
    texts = [*MIXED_TEXTS, *(f"{i} {text}" for i, text in enumerate(MIXED_TEXTS * 3))]
    expected = SentenceTransformer(str(src), device="cpu").encode(texts)
    np.testing.assert_allclose(encoder.encode(texts), expected, rtol=0, atol=1e-4)


def test_legacy_config_file_name(distilbert_lowercase: Replica, tmp_path: Path) -> None:
    src = _copy(distilbert_lowercase, tmp_path)
    (src / "sentence_bert_config.json").unlink()
    (src / "sentence_distilbert_config.json").write_text(json.dumps({"max_seq_length": 20, "do_lower_case": True}))
    manifest = export(src, tmp_path / "out")
    assert manifest.max_seq_length == 20 and manifest.do_lower_case
    _assert_matches(src, tmp_path / "out")


def test_tokenizer_args_model_max_length_wins(chinese_bert: Replica, tmp_path: Path) -> None:
    src = _copy(chinese_bert, tmp_path)
    _edit_json(src / "sentence_bert_config.json", lambda config: config.update(tokenizer_args={"model_max_length": 24}))
    manifest = export(src, tmp_path / "out")
    assert manifest.max_seq_length == 24
    _assert_matches(src, tmp_path / "out")


def test_processing_kwargs_are_refused_by_name(chinese_bert: Replica, tmp_path: Path) -> None:
    src = _copy(chinese_bert, tmp_path)
    _edit_json(
        src / "sentence_bert_config.json", lambda config: config.update(processing_kwargs={"text": {"max_length": 16}})
    )
    with pytest.raises(UnsupportedModelError, match="processing_kwargs"):
        export(src, tmp_path / "out")


def test_default_query_and_document_prompts(chinese_bert: Replica, tmp_path: Path) -> None:
    """sentence-transformers gives every model empty 'query' and 'document' prompts, saved or not."""
    src = _copy(chinese_bert, tmp_path)
    (src / "config_sentence_transformers.json").unlink()
    export(src, tmp_path / "out")
    assert Encoder(tmp_path / "out").prompts == {"query": "", "document": ""}
    _assert_matches(src, tmp_path / "out", prompt_name="query")


@pytest.mark.parametrize("where", ["same", "parent", "inside", "deep inside"])
def test_never_overwrites_the_source(chinese_bert: Replica, tmp_path: Path, where: str) -> None:
    src = _copy(chinese_bert, tmp_path)
    out = {"same": src, "parent": tmp_path, "inside": src / "out", "deep inside": src / "1_Pooling" / "x"}[where]
    with pytest.raises(FileExistsError, match="holds the model being exported|is inside the model being exported"):
        export(src, out, overwrite=True)
    assert sorted(path.name for path in src.iterdir()) == sorted(path.name for path in chinese_bert.path.iterdir())
