"""encode's sentence-transformers options — truncate_dim, normalize_embeddings, precision — against
SentenceTransformer.encode with the same arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from tests.replicas import CORPUS, MIXED_TEXTS, Replica, exported

TEXTS = MIXED_TEXTS + CORPUS[12:40]


@pytest.fixture(scope="module", params=["mpnet_prompts", "chinese_bert"])
def pair(request: pytest.FixtureRequest, exports_dir: Path):
    """(SentenceTransformer, exported dir) for a normalizing model (mpnet) and a non-normalizing one."""
    from sentence_transformers import SentenceTransformer

    replica: Replica = request.getfixturevalue(request.param)
    return SentenceTransformer(str(replica.path), device="cpu"), exported(replica, exports_dir), replica


@pytest.mark.parametrize("normalize_embeddings", [False, True])
@pytest.mark.parametrize("truncate_dim", [8, 13, 32, 64])
def test_truncate_dim(pair, truncate_dim: int, normalize_embeddings: bool) -> None:
    reference, out, _ = pair
    expected = reference.encode(TEXTS, truncate_dim=truncate_dim, normalize_embeddings=normalize_embeddings)
    actual = Encoder(out).encode(TEXTS, truncate_dim=truncate_dim, normalize_embeddings=normalize_embeddings)
    assert actual.shape == expected.shape == (len(TEXTS), min(truncate_dim, 32))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_truncate_dim_on_the_encoder(pair) -> None:
    from sentence_transformers import SentenceTransformer

    _, out, replica = pair
    reference = SentenceTransformer(str(replica.path), device="cpu", truncate_dim=12)
    encoder = Encoder(out, truncate_dim=12)
    assert encoder.dim == reference.get_sentence_embedding_dimension() == 12
    np.testing.assert_allclose(encoder.encode(TEXTS), reference.encode(TEXTS), atol=1e-4, rtol=0)
    # a truncated vector of a normalizing model is not unit length unless asked
    norms = np.linalg.norm(encoder.encode(TEXTS[:5]), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(
        np.linalg.norm(encoder.encode(TEXTS[:5], normalize_embeddings=True), axis=1), 1.0, atol=1e-5
    )


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_precision(pair, precision: str) -> None:
    reference, out, _ = pair
    expected = reference.encode(TEXTS, precision=precision)
    actual = Encoder(out).encode(TEXTS, precision=precision)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if precision == "float32":
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
        return
    # Float embeddings agree to ~1e-7, so a value may sit on the other side of a rounding step.
    step_differences = np.abs(actual.astype(np.int32) - expected.astype(np.int32))
    assert step_differences.max() <= (1 if precision in ("int8", "uint8") else 0)
    assert (step_differences == 0).mean() > 0.99


def test_single_text_with_precision(pair) -> None:
    reference, out, _ = pair
    np.testing.assert_array_equal(
        Encoder(out).encode(TEXTS[2], precision="ubinary"), reference.encode(TEXTS[2], precision="ubinary")
    )


@pytest.mark.parametrize("truncate_dim", [0, -3, 2.5])
def test_bad_truncate_dim(tiny_export: Path, truncate_dim) -> None:
    with pytest.raises(ValueError, match="truncate_dim must be a positive integer"):
        Encoder(tiny_export).encode(["a"], truncate_dim=truncate_dim)
    with pytest.raises(ValueError, match="truncate_dim must be a positive integer"):
        Encoder(tiny_export, truncate_dim=truncate_dim)


def test_unknown_precision(tiny_export: Path) -> None:
    with pytest.raises(ValueError, match="'int4'"):
        Encoder(tiny_export).encode(["a"], precision="int4")  # type: ignore[arg-type]


def test_similarity_pairwise_uses_the_models_function(pair) -> None:
    reference, out, _ = pair
    encoder = Encoder(out)
    a, b = encoder.encode(TEXTS[:6]), encoder.encode(TEXTS[6:12])
    expected = reference.similarity_pairwise(a, b).numpy()
    np.testing.assert_allclose(encoder.similarity_pairwise(a, b), expected, rtol=1e-5, atol=1e-6)


def test_paraphrase_mining_matches_sentence_transformers(pair) -> None:
    from sentence_transformers.util import paraphrase_mining as st_paraphrase_mining

    from onnxembed.runtime import paraphrase_mining

    reference, out, _ = pair
    texts = CORPUS[:30]
    expected = st_paraphrase_mining(reference, texts, top_k=3)
    actual = paraphrase_mining(Encoder(out), texts, top_k=3)
    assert [(i, j) for _, i, j in actual[:10]] == [(i, j) for _, i, j in expected[:10]]
    np.testing.assert_allclose([s for s, _, _ in actual], [s for s, _, _ in expected[: len(actual)]], atol=1e-4)
    # the encode options sentence-transformers' paraphrase_mining passes on
    options = {"truncate_dim": 12, "prompt": "query: "}
    expected = st_paraphrase_mining(reference, texts, top_k=3, **options)
    actual = paraphrase_mining(Encoder(out), texts, top_k=3, **options)
    assert [(i, j) for _, i, j in actual[:10]] == [(i, j) for _, i, j in expected[:10]]
    # a str is one sentence (encode's rule), which has no pair; its characters are not sentences
    assert paraphrase_mining(Encoder(out), "a string") == st_paraphrase_mining(reference, "a string") == []


def test_similarity_fn_name_is_settable_as_on_a_sentence_transformer(pair) -> None:
    from sentence_transformers import SentenceTransformer

    reference, out, replica = pair
    encoder = Encoder(out)
    a, b = encoder.encode(TEXTS[:5]), encoder.encode(TEXTS[5:9])
    fresh = SentenceTransformer(str(replica.path), device="cpu")  # the module's reference stays as loaded
    assert encoder.similarity_fn_name == fresh.similarity_fn_name
    for name in ("dot", "euclidean", "manhattan", "cosine"):
        fresh.similarity_fn_name = name
        encoder.similarity_fn_name = name
        np.testing.assert_allclose(encoder.similarity(a, b), fresh.similarity(a, b).numpy(), rtol=1e-5, atol=1e-5)
        loaded = SentenceTransformer(str(replica.path), device="cpu", similarity_fn_name=name)
        np.testing.assert_allclose(
            Encoder(out, similarity_fn_name=name).similarity_pairwise(a[:4], b),
            loaded.similarity_pairwise(a[:4], b).numpy(),
            rtol=1e-5,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="unknown similarity function 'hamming'"):
        encoder.similarity_fn_name = "hamming"
    from sentence_transformers import SimilarityFunction

    encoder.similarity_fn_name = SimilarityFunction.DOT_PRODUCT  # the enum, as sentence-transformers takes it
    assert encoder.similarity_fn_name == "dot"
    assert encoder.default_prompt_name == reference.default_prompt_name
    assert encoder.get_sentence_embedding_dimension() == reference.get_sentence_embedding_dimension()
    assert encoder.device == "cpu"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"text": "hello"}, "sentences is a dict: pass the text"),  # list() would give its keys
        ({"b", "a"}, "sentences is a set: pass a list"),  # an order the caller cannot map back
        (np.array("hello"), "0-d array"),
    ],
)
def test_inputs_list_would_take_apart_are_refused(tiny_export: Path, inputs, message: str) -> None:
    from onnxembed import ArgumentTypeError

    encoder = Encoder(tiny_export)
    with pytest.raises(ArgumentTypeError, match=message):
        encoder.encode(inputs)
    with pytest.raises(ArgumentTypeError, match=message):
        next(encoder.encode_iter(inputs))
    with pytest.raises(ArgumentTypeError, match="prompt_name must be a str; got list"):
        encoder.encode(["a"], prompt_name=["query"])


def test_torch_side_options(pair) -> None:
    """convert_to_numpy, device and output_value with the values sentence-transformers' encode takes; what
    needs torch (tensors, token embeddings, another device) is refused by name."""
    from onnxembed.errors import InvalidArgumentError

    reference, out, _ = pair
    encoder = Encoder(out)
    texts = TEXTS[:5]
    expected = reference.encode(texts, convert_to_numpy=True, device="cpu", output_value="sentence_embedding")
    actual = encoder.encode(texts, convert_to_numpy=True, device="cpu", output_value="sentence_embedding")
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    as_list = encoder.encode(texts, convert_to_numpy=False)
    expected_list = reference.encode(texts, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(expected_list) == len(texts)
    for row, tensor in zip(as_list, expected_list, strict=True):
        np.testing.assert_allclose(row, tensor.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder.encode(texts[0], convert_to_numpy=False), expected[0], atol=1e-5, rtol=0)
    for options, name in [
        ({"convert_to_tensor": True}, "convert_to_tensor"),
        ({"output_value": "token_embeddings"}, "output_value"),
        ({"output_value": None}, "output_value"),
        ({"device": "cuda:0"}, "device"),
    ]:
        with pytest.raises(InvalidArgumentError, match=name):
            encoder.encode(texts, **options)
