"""Encoder behaviour beyond the seed-model comparison: input forms, options, errors, threads, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxembed import Encoder, ModelLoadError
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS, Replica, exported


@pytest.fixture(scope="module")
def reference(chinese_bert: Replica):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(chinese_bert.path), device="cpu")


@pytest.fixture(scope="module")
def encoder(tiny_export: Path) -> Encoder:
    return Encoder(tiny_export, provider="cpu")


def _close(expected: np.ndarray, actual: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_long_text_uses_max_seq_length_not_tokenizer_json_truncation(encoder, reference, tiny_export) -> None:
    # The replica's tokenizer.json pads and truncates at 16; the model reads 256 tokens.
    assert json.loads((tiny_export / "tokenizer.json").read_text())["truncation"]["max_length"] == 16
    assert encoder.max_seq_length == reference.max_seq_length == 256
    _close(reference.encode([LONG_TEXT, CORPUS[0][:20]]), encoder.encode([LONG_TEXT, CORPUS[0][:20]]))
    # truncated at 256, not at 16: a text of 40 tokens differs from its first 14 tokens
    short, longer = encoder.encode(["word " * 14, "word " * 14 + "other " * 26])
    assert not np.allclose(short, longer, atol=1e-3)


def test_single_string_gives_a_vector(encoder, reference) -> None:
    vector = encoder.encode(CORPUS[3])
    assert vector.shape == (encoder.dim,) and vector.dtype == np.float32
    _close(reference.encode(CORPUS[3]), vector)


def test_any_iterable_of_str_in_input_order(encoder, reference) -> None:
    texts = list(reversed(MIXED_TEXTS))
    expected = reference.encode(texts)
    _close(expected, encoder.encode(text for text in texts))
    _close(expected, encoder.encode(tuple(texts), batch_size=1))
    _close(expected, encoder.encode(np.array(texts, dtype=object), batch_size=3))


def test_empty_list_gives_zero_rows(encoder) -> None:
    embeddings = encoder.encode([])
    assert embeddings.shape == (0, encoder.dim) and embeddings.dtype == np.float32


@pytest.mark.parametrize(("sentences", "index", "kind"), [(["a", None], 1, "NoneType"), (["a", "b", 3], 2, "int")])
def test_non_str_item_is_a_type_error_naming_its_index(encoder, sentences, index, kind) -> None:
    with pytest.raises(TypeError, match=rf"sentences\[{index}\] is {kind}"):
        encoder.encode(sentences)


@pytest.mark.parametrize("sentences", [None, 5, b"bytes"])
def test_non_iterable_input_is_a_type_error(encoder, sentences) -> None:
    with pytest.raises(TypeError, match="str or an iterable of str"):
        encoder.encode(sentences)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(encoder, batch_size) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["a"], batch_size=batch_size)


def test_normalize_embeddings_and_prompt_string(encoder, reference) -> None:
    _close(
        reference.encode(CORPUS[:5], normalize_embeddings=True), encoder.encode(CORPUS[:5], normalize_embeddings=True)
    )
    _close(reference.encode(CORPUS[:5], prompt="search: "), encoder.encode(CORPUS[:5], prompt="search: "))


def test_unknown_prompt_name(encoder) -> None:
    with pytest.raises(ValueError, match="prompt_name 'nosuch' is not one of the model's prompts"):
        encoder.encode(["a"], prompt_name="nosuch")


def test_similarity_uses_the_models_function(cls_pooling_bert: Replica, exports_dir) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(cls_pooling_bert.path), device="cpu")
    assert reference.similarity_fn_name == "dot"
    encoder = Encoder(exported(cls_pooling_bert, exports_dir), provider="cpu")
    embeddings = encoder.encode(CORPUS[:4])
    expected = reference.similarity(embeddings, embeddings).numpy()
    np.testing.assert_allclose(encoder.similarity(embeddings, embeddings), expected, rtol=1e-5, atol=1e-5)


def test_properties(encoder, reference, mpnet_prompts: Replica, exports_dir) -> None:
    from sentence_transformers import SentenceTransformer

    assert encoder.dim == reference.get_sentence_embedding_dimension() == 32
    assert encoder.prompts == reference.prompts
    prompted = Encoder(exported(mpnet_prompts, exports_dir), provider="cpu")
    expected = SentenceTransformer(str(mpnet_prompts.path), device="cpu")
    assert prompted.prompts == expected.prompts and set(mpnet_prompts.prompts) <= set(prompted.prompts)


def test_shared_between_threads(encoder, reference) -> None:
    texts = MIXED_TEXTS * 3
    expected = reference.encode(texts)
    results: dict[int, np.ndarray] = {}

    def work(worker: int) -> None:
        results[worker] = encoder.encode(texts[worker::4], batch_size=3)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in range(4):
        _close(expected[worker::4], results[worker])


def test_unknown_provider_lists_the_available_ones(tiny_export) -> None:
    with pytest.raises(ValueError, match="provider 'nosuch' is not available; available: .*CPUExecutionProvider"):
        Encoder(tiny_export, provider="nosuch")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_auto_provider_is_cpu_without_cuda(tiny_export) -> None:
    assert Encoder(tiny_export).provider == "CPUExecutionProvider"


def _broken_copy(tiny_export: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_export, copy)
    return copy


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "onnxembed.json").unlink(), "onnxembed.json is missing"),
        (lambda d: (d / "onnxembed.json").write_text("{not json"), "onnxembed.json is corrupt"),
        (lambda d: (d / "onnxembed.json").write_text('{"format_version": 1}'), "onnxembed.json is corrupt"),
        (lambda d: (d / "onnxembed.json").write_text("[1, 2]"), "onnxembed.json is corrupt: it holds a JSON list"),
        (lambda d: (d / "onnx" / "model.onnx").unlink(), "model.onnx does not exist"),
        (
            lambda d: (d / "onnx" / "model.onnx").write_bytes(b"\x08garbage" * 10),
            "could not load ONNX file .*model.onnx",
        ),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json does not exist"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json is corrupt"),
    ],
)
def test_missing_or_corrupt_files_are_named(tiny_export, tmp_path, damage, message) -> None:
    model_dir = _broken_copy(tiny_export, tmp_path)
    damage(model_dir)
    with pytest.raises(ModelLoadError, match=message):
        Encoder(model_dir, provider="cpu")


def test_variants(tiny_export) -> None:
    with pytest.raises(ValueError, match="variant 'int8' is not in .*choose from auto, fp32"):
        Encoder(tiny_export, variant="int8")
    assert Encoder(tiny_export).variant == "fp32"  # auto, with nothing faster exported
    assert Encoder(tiny_export, variant="model.onnx").variant == "fp32"  # by file name


def test_runtime_never_imports_torch(tiny_export) -> None:
    code = (
        "import sys, onnxembed\n"
        "from onnxembed import Encoder\n"
        f"vectors = Encoder({str(tiny_export)!r}).encode(['a text', ''], show_progress_bar=True)\n"
        "assert vectors.shape == (2, 32), vectors.shape\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'optimum') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: []" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs CUDAExecutionProvider")
def test_cuda_matches_sentence_transformers(tiny_export, reference) -> None:
    encoder = Encoder(tiny_export, provider="cuda")
    assert encoder.provider == "CUDAExecutionProvider"
    _close(reference.encode(MIXED_TEXTS), encoder.encode(MIXED_TEXTS))
