"""onnxembed.SparseEncoder against sentence-transformers' SparseEncoder(src) on the same texts: queries, documents
and the default route, prompts, max_active_dims, batches cut small, each output form, decode; and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import ArgumentTypeError, Encoder, InvalidArgumentError, ModelLoadError, SparseEncoder, export
from onnxembed.kernels import SparseEmbedding
from tests import sparse
from tests.replicas import Replica
from tests.sparse import SPARSE_FIXTURES, SPARSE_TEXTS, assert_same_vectors, exported_sparse

bert_splade, inference_free_splade = sparse.bert_splade, sparse.inference_free_splade

_REFERENCES: dict[str, Any] = {}


def _reference(replica: Replica) -> Any:
    from sentence_transformers import SparseEncoder as Reference

    if replica.name not in _REFERENCES:
        _REFERENCES[replica.name] = Reference(str(replica.path), device="cpu")
    return _REFERENCES[replica.name]


def _pair(name: str, request: pytest.FixtureRequest, exports_dir: Path) -> tuple[Any, SparseEncoder]:
    replica: Replica = request.getfixturevalue(name)
    return _reference(replica), SparseEncoder(exported_sparse(replica, exports_dir), provider="cpu")


@pytest.mark.parametrize("name", SPARSE_FIXTURES)
@pytest.mark.parametrize("method", ["encode_query", "encode_document", "encode"])
def test_vectors_equal_sentence_transformers(
    name: str, method: str, request: pytest.FixtureRequest, exports_dir: Path
) -> None:
    reference, model = _pair(name, request, exports_dir)
    expected = getattr(reference, method)(SPARSE_TEXTS, convert_to_sparse_tensor=False)
    assert_same_vectors(expected, getattr(model, method)(SPARSE_TEXTS, convert_to_sparse_tensor=False))
    # the sparse form holds the same weights at the same terms
    rows = getattr(model, method)(SPARSE_TEXTS)
    assert all(isinstance(row, SparseEmbedding) for row in rows)
    assert_same_vectors(expected, np.stack([row.to_dense() for row in rows]))


@pytest.mark.parametrize("name", SPARSE_FIXTURES)
def test_options_as_sentence_transformers(name: str, request: pytest.FixtureRequest, exports_dir: Path) -> None:
    reference, model = _pair(name, request, exports_dir)
    for options in (
        {"prompt": "search: "},
        {"max_active_dims": 5},
        {"batch_size": 1},
        {"prompt_name": "query"} if "query" in model.prompts else {"prompt": ""},
    ):
        for method in ("encode_query", "encode_document"):
            expected = getattr(reference, method)(SPARSE_TEXTS, convert_to_sparse_tensor=False, **options)
            assert_same_vectors(
                expected, getattr(model, method)(SPARSE_TEXTS, convert_to_sparse_tensor=False, **options)
            )
    # more texts than the query table makes dense at once (DENSE_BLOCK_ROWS) under max_active_dims
    many = SPARSE_TEXTS * (300 // len(SPARSE_TEXTS) + 1)
    expected = reference.encode_query(many, convert_to_sparse_tensor=False, max_active_dims=3)
    assert_same_vectors(expected, model.encode_query(many, convert_to_sparse_tensor=False, max_active_dims=3))
    # a token budget far below the texts' lengths: one text a batch, the same vectors
    expected = reference.encode_document(SPARSE_TEXTS, convert_to_sparse_tensor=False)
    assert_same_vectors(
        expected, model.encode_document(SPARSE_TEXTS, convert_to_sparse_tensor=False, max_batch_tokens=8)
    )


def test_output_forms(bert_splade: Replica, exports_dir: Path) -> None:
    scipy = pytest.importorskip("scipy.sparse")
    model = SparseEncoder(exported_sparse(bert_splade, exports_dir), provider="cpu")
    dense = model.encode_document(SPARSE_TEXTS, convert_to_sparse_tensor=False)
    csr = model.encode_document(SPARSE_TEXTS, convert_to_csr=True)
    assert isinstance(csr, scipy.csr_matrix) and csr.shape == (len(SPARSE_TEXTS), model.dim)
    np.testing.assert_array_equal(csr.toarray(), dense)
    one = model.encode_document(SPARSE_TEXTS[3])
    assert isinstance(one, SparseEmbedding) and one.dim == model.dim
    np.testing.assert_array_equal(one.to_dense(), dense[3])
    assert one.as_dict() == {int(i): float(dense[3, i]) for i in np.flatnonzero(dense[3])}
    assert model.encode_document(SPARSE_TEXTS[3], convert_to_sparse_tensor=False).shape == (model.dim,)
    assert model.encode_document([]) == [] and model.encode_document([], convert_to_csr=True).shape == (0, model.dim)


@pytest.mark.parametrize("name", SPARSE_FIXTURES)
def test_decode_as_sentence_transformers(name: str, request: pytest.FixtureRequest, exports_dir: Path) -> None:
    reference, model = _pair(name, request, exports_dir)
    texts = SPARSE_TEXTS[2:6]
    expected = reference.decode(reference.encode_query(texts), top_k=6)
    actual = model.decode(model.encode_query(texts), top_k=6)
    assert len(expected) == len(actual)
    for theirs, ours in zip(expected, actual, strict=True):
        assert [token for token, _ in ours] == [token for token, _ in theirs]
        np.testing.assert_allclose([weight for _, weight in ours], [weight for _, weight in theirs], atol=1e-4)
    single = model.decode(model.encode_query(texts[0]))
    assert isinstance(single, list) and all(isinstance(token, str) for token, _ in single)


def test_pairwise_intersection_and_sparsity_as_sentence_transformers(bert_splade: Replica, exports_dir: Path) -> None:
    """sentence-transformers' own functions on the same vectors (ours, as torch tensors): whether the vectors
    equal its model's is the other tests' question; a weight at the relu boundary may be 1e-9 in one, 0 in the
    other, and move an active-term count."""
    import torch

    reference = _reference(bert_splade)
    model = SparseEncoder(exported_sparse(bert_splade, exports_dir), provider="cpu")
    texts = SPARSE_TEXTS[:6]
    ours = model.encode(texts)
    rows = torch.from_numpy(np.stack([row.to_dense() for row in ours]))
    np.testing.assert_allclose(
        model.similarity_pairwise(ours[:3], ours[3:]),
        reference.similarity_pairwise(rows[:3], rows[3:]).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    for second, theirs in ((ours[1], rows[1]), (ours[1:4], rows[1:4])):  # one vector, then several
        expected = reference.intersection(rows[0], theirs).to_dense().numpy()
        shared = model.intersection(ours[0], second)
        dense = (
            shared.to_dense() if isinstance(shared, SparseEmbedding) else np.stack([row.to_dense() for row in shared])
        )
        assert dense.shape == expected.shape
        np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-7)
        assert model.decode(shared) is not None
    # a 1-D tensor is one vector, as in sentence-transformers (the result has its shape)
    assert isinstance(model.intersection(rows[0], rows[1]), SparseEmbedding)
    expected_stats = reference.sparsity(rows)
    stats = model.sparsity(ours)
    assert stats.keys() == expected_stats.keys()
    for key, value in expected_stats.items():
        assert abs(stats[key] - value) <= 1e-6 * max(1.0, abs(value)), (key, stats[key], value)
    # dense rows as a list of arrays, and torch tensors (sparse, as sentence-transformers returns them), are the
    # same vectors to similarity
    np.testing.assert_allclose(model.similarity(list(rows.numpy()), ours), model.similarity(ours, ours), rtol=1e-6)
    np.testing.assert_allclose(
        model.similarity(rows.to_sparse(), ours), reference.similarity(rows, rows).numpy(), rtol=1e-5, atol=1e-5
    )
    theirs = reference.encode(texts)  # a sparse COO tensor
    np.testing.assert_allclose(
        model.similarity(theirs, theirs), reference.similarity(theirs, theirs).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(model.encode(texts[0], device="cpu").indices, ours[0].indices)
    with pytest.raises(InvalidArgumentError, match="device='cuda', but this SparseEncoder runs on"):
        model.encode(texts, device="cuda")
    assert model.default_prompt_name == reference.default_prompt_name and model.device == "cpu"


def test_a_model_saved_with_another_similarity_scores_as_sentence_transformers(
    bert_splade: Replica, tmp_path: Path
) -> None:
    """similarity_fn_name as saved ("cosine" here) and as set, on the model's own vectors."""
    import json
    import shutil

    from sentence_transformers import SparseEncoder as Reference

    src = tmp_path / "src"
    shutil.copytree(bert_splade.path, src)
    config = json.loads((src / "config_sentence_transformers.json").read_text())
    (src / "config_sentence_transformers.json").write_text(json.dumps({**config, "similarity_fn_name": "cosine"}))
    export(src, tmp_path / "out")
    reference, model = Reference(str(src), device="cpu"), SparseEncoder(tmp_path / "out", provider="cpu")
    queries, documents = reference.encode_query(SPARSE_TEXTS[:3]), reference.encode_document(SPARSE_TEXTS[3:9])
    for name in ("cosine", "dot", "euclidean", "manhattan"):
        if name != "cosine":
            reference.similarity_fn_name = model.similarity_fn_name = name
        assert model.similarity_fn_name == reference.similarity_fn_name == name
        expected = reference.similarity(queries, documents).numpy()
        np.testing.assert_allclose(model.similarity(queries, documents), expected, rtol=1e-5, atol=1e-5)
        expected_pairs = reference.similarity_pairwise(queries.to_dense(), documents.to_dense()[:3]).numpy()
        actual_pairs = model.similarity_pairwise(queries, documents.to_dense()[:3])
        np.testing.assert_allclose(actual_pairs, expected_pairs, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="unknown similarity function"):
        model.similarity_fn_name = "jaccard"


def test_bad_input(bert_splade: Replica, exports_dir: Path, tiny_export: Path) -> None:
    out = exported_sparse(bert_splade, exports_dir)
    model = SparseEncoder(out, provider="cpu")
    with pytest.raises(InvalidArgumentError, match="prompt_name 'nope' is not one of the model's prompts"):
        model.encode("text", prompt_name="nope")
    with pytest.raises(ArgumentTypeError, match=r"sentences\[1\] is int, not str"):
        model.encode(["text", 3])
    with pytest.raises(ArgumentTypeError, match="sentences is a dict: pass the text"):
        model.encode({"text": "hello"})
    with pytest.raises(InvalidArgumentError, match="max_active_dims must be a positive integer"):
        model.encode("text", max_active_dims=0)
    with pytest.raises(InvalidArgumentError, match="top_k must be a positive integer"):
        model.decode(model.encode("text"), top_k=0)
    with pytest.raises(ModelLoadError, match="load it with onnxembed.SparseEncoder"):
        Encoder(out)
    with pytest.raises(ModelLoadError, match="not a sparse encoder; load it with onnxembed.Encoder"):
        SparseEncoder(tiny_export)


def test_info_describes_the_sparse_pipeline(inference_free_splade: Replica, exports_dir: Path, capsys: Any) -> None:
    from onnxembed.cli import main

    assert main(["info", str(exported_sparse(inference_free_splade, exports_dir))]) == 0
    printed = capsys.readouterr().out
    assert "MLMTransformer (BertForMaskedLM) -> SpladePooling (sum, log1p_relu" in printed
    assert "query: SparseStaticEmbedding (inference-free)" in printed


@pytest.mark.parametrize(
    "parameters",
    [{"default_route": "query"}, {"default_route": None, "allow_empty_key": False}],
    ids=["default-query", "no-default"],
)
def test_routes_as_sentence_transformers(
    parameters: dict[str, Any], inference_free_splade: Replica, tmp_path: Path
) -> None:
    """The Router's default_route and allow_empty_key decide encode() without a task, and a task it has no route
    for is an error: the export answers (or refuses) every task as sentence-transformers does."""
    import json
    import shutil

    from sentence_transformers import SparseEncoder as Reference

    from onnxembed import export

    source = tmp_path / "routed"
    shutil.copytree(inference_free_splade.path, source)
    config_path = source / "router_config.json"
    config = json.loads(config_path.read_text())
    config["parameters"].update(parameters)
    config_path.write_text(json.dumps(config))
    reference = Reference(str(source), device="cpu")
    export(source, tmp_path / "routed-onnx")
    model = SparseEncoder(tmp_path / "routed-onnx", provider="cpu")
    assert set(model.routes) == {"query", "document"}
    for task in (None, "query", "document", "passage"):
        try:
            expected = reference.encode(SPARSE_TEXTS, convert_to_sparse_tensor=False, task=task)
        except ValueError as error:
            with pytest.raises(InvalidArgumentError):
                model.encode(SPARSE_TEXTS, task=task)
            assert task is not None or "default" in str(error), error
            continue
        assert_same_vectors(expected, model.encode(SPARSE_TEXTS, convert_to_sparse_tensor=False, task=task))
