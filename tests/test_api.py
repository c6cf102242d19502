"""The public surface: names, the error hierarchy, encode's argument manners, encode_query/encode_document."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

import onnxembed
from onnxembed import Encoder
from tests.replicas import CORPUS, MIXED_TEXTS, Replica, exported


def test_export_is_a_function() -> None:
    assert inspect.isfunction(onnxembed.export)
    assert list(inspect.signature(onnxembed.export).parameters)[:2] == ["model_name_or_path", "model_dir"]


def test_every_error_has_the_common_base_and_its_builtin() -> None:
    builtin = {
        onnxembed.InvalidArgumentError: ValueError,
        onnxembed.ArgumentTypeError: TypeError,
        onnxembed.ModelLoadError: ValueError,
        onnxembed.UnsupportedModelError: ValueError,
        onnxembed.ExportVerificationError: RuntimeError,
        onnxembed.OutputExistsError: FileExistsError,
    }
    for error, base in builtin.items():
        assert issubclass(error, onnxembed.OnnxEmbedError) and issubclass(error, base)


def test_raised_errors_carry_the_base(tiny_export: Path, tmp_path: Path) -> None:
    encoder = Encoder(tiny_export, provider="cpu")
    with pytest.raises(onnxembed.InvalidArgumentError, match="batch_size"):
        encoder.encode(["a"], batch_size=0)
    with pytest.raises(onnxembed.ArgumentTypeError):
        encoder.encode(b"bytes")
    with pytest.raises(onnxembed.OnnxEmbedError, match="does not exist"):
        Encoder(tmp_path / "missing")
    (tmp_path / "a-file").write_text("not a model")
    with pytest.raises(onnxembed.OnnxEmbedError, match="is a file, not a model directory"):
        Encoder(tmp_path / "a-file")
    for load in (onnxembed.Encoder, onnxembed.Reranker, onnxembed.SparseEncoder):
        with pytest.raises(onnxembed.ArgumentTypeError, match="model_dir must be a path .*got NoneType"):
            load(None)


def test_encode_options_are_keyword_only(tiny_export: Path) -> None:
    encoder = Encoder(tiny_export, provider="cpu")
    with pytest.raises(TypeError):
        encoder.encode(["a"], 8)  # type: ignore[misc]
    texts = CORPUS[:5]
    np.testing.assert_array_equal(encoder.encode(sentences=texts), encoder.encode(texts))
    np.testing.assert_array_equal(encoder.encode(inputs=texts), encoder.encode(texts))
    with pytest.raises(onnxembed.ArgumentTypeError, match="not both"):
        encoder.encode(texts, sentences=texts)


@pytest.mark.parametrize("fixture", ["mpnet_prompts", "roberta_lora"])
def test_encode_query_and_document_match_sentence_transformers(request, fixture: str, exports_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    replica: Replica = request.getfixturevalue(fixture)
    encoder = Encoder(exported(replica, exports_dir), provider="cpu")
    reference = SentenceTransformer(str(replica.path), device="cpu")
    for ours, theirs in (
        (encoder.encode_query, reference.encode_query),
        (encoder.encode_document, reference.encode_document),
    ):
        np.testing.assert_allclose(ours(MIXED_TEXTS), theirs(MIXED_TEXTS), rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            ours(MIXED_TEXTS, prompt="custom: "), theirs(MIXED_TEXTS, prompt="custom: "), rtol=0, atol=1e-4
        )
    # The two differ where the model's prompts do.
    if encoder.prompts.get("query") != encoder.prompts.get("document"):
        assert not np.allclose(encoder.encode_query(CORPUS[:3]), encoder.encode_document(CORPUS[:3]))


def test_format_1_manifests_still_load_and_unknown_formats_are_named(tiny_export: Path, tmp_path: Path) -> None:
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    raw = json.loads((old / "onnxembed.json").read_text())
    assert raw["format_version"] == 2
    for key in ("dense", "add_special_tokens"):  # what format 1 did not have
        del raw[key]
    (old / "onnxembed.json").write_text(json.dumps({**raw, "format_version": 1}))
    np.testing.assert_array_equal(
        Encoder(old, provider="cpu").encode(CORPUS[:4]), Encoder(tiny_export).encode(CORPUS[:4])
    )
    # 3 is a reranker's format (read since rerankers); a later one is named, not called corrupt
    (old / "onnxembed.json").write_text(json.dumps({**raw, "format_version": 6}))
    with pytest.raises(onnxembed.ModelLoadError, match="format_version 6; this onnxembed reads 1, 2, 3, 4, 5"):
        Encoder(old)
