"""Reranker.predict and .rank against sentence-transformers' CrossEncoder (the oracle) on tiny replicas of each
format and family: scores within 1e-4 after the activation, the same order wherever scores differ by more,
CrossEncoder's result shapes and argument names, its errors, and no torch at run time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed import ArgumentTypeError, Encoder, InvalidArgumentError, ModelLoadError, Reranker
from tests import rerankers
from tests.replicas import CORPUS, LONG_TEXT, MIXED_TEXTS, Replica
from tests.rerankers import PAIRS, RERANKER_FIXTURES, exported_reranker

bert_reranker, xlmr_reranker = rerankers.bert_reranker, rerankers.xlmr_reranker
modernbert_reranker, nli_bert = rerankers.modernbert_reranker, rerankers.nli_bert
distilbert_reranker, mpnet_reranker = rerankers.distilbert_reranker, rerankers.mpnet_reranker
ATOL = 1e-4


@pytest.fixture(scope="module", params=RERANKER_FIXTURES)
def case(request: pytest.FixtureRequest, exports_dir: Path) -> tuple[Any, Reranker]:
    """(CrossEncoder(src), Reranker(export)) for each replica."""
    from sentence_transformers import CrossEncoder

    replica: Replica = request.getfixturevalue(request.param)
    return CrossEncoder(str(replica.path), device="cpu"), Reranker(exported_reranker(replica, exports_dir), "cpu")


def _close(expected: Any, actual: Any) -> None:
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    assert np.abs(expected - actual).max() <= ATOL, np.abs(expected - actual).max()


def test_predict_matches_cross_encoder(case: tuple[Any, Reranker]) -> None:
    reference, reranker = case
    _close(reference.predict(PAIRS), reranker.predict(PAIRS))
    assert reranker.num_labels == reference.num_labels
    # the raw logits too, and one pair at a time (no padding), and tiny batches cut by tokens
    import torch

    _close(
        reference.predict(PAIRS, activation_fn=torch.nn.Identity()), reranker.predict(PAIRS, activation_fn="identity")
    )
    _close(reference.predict(PAIRS[:20]), reranker.predict(PAIRS[:20], batch_size=1))
    _close(reference.predict(PAIRS), reranker.predict(PAIRS, max_batch_tokens=64))


def test_predict_shapes_as_cross_encoder(case: tuple[Any, Reranker]) -> None:
    reference, reranker = case
    pair = (CORPUS[1], CORPUS[2])
    for one in (pair, list(pair), np.array(pair)):  # a 1-D array of two strings is one pair too
        _close(reference.predict(one), reranker.predict(one))
    _close(reference.predict(np.array(PAIRS[:5])), reranker.predict(np.array(PAIRS[:5])))
    listed, theirs = (
        reranker.predict(PAIRS[:3], convert_to_numpy=False),
        reference.predict(PAIRS[:3], convert_to_numpy=False),
    )
    assert isinstance(listed, list) and len(listed) == len(theirs) == 3
    for mine, other in zip(listed, theirs, strict=True):
        _close(other.numpy(), mine)
    assert reranker.predict([]).shape == np.asarray(reference.predict([])).shape == (0,)
    # sentences= is the older name of inputs, activation_fct of activation_fn; num_workers is ignored
    _close(reference.predict(PAIRS[:4]), reranker.predict(sentences=PAIRS[:4]))
    import torch

    with pytest.warns(UserWarning, match="num_workers"):
        legacy = reranker.predict(PAIRS[:4], activation_fct="tanh", num_workers=2)
    _close(reference.predict(PAIRS[:4], activation_fn=torch.nn.Tanh()), legacy)
    if reference.num_labels == 1:
        ranked = reranker.rank(CORPUS[1], CORPUS[2:6], activation_fct="identity")
        theirs = reference.rank(CORPUS[1], CORPUS[2:6], activation_fn=torch.nn.Identity())
        assert [r["corpus_id"] for r in ranked] == [r["corpus_id"] for r in theirs]


def test_softmax_and_activations(case: tuple[Any, Reranker]) -> None:
    import torch

    reference, reranker = case
    if reranker.num_labels > 1:
        _close(reference.predict(PAIRS, apply_softmax=True), reranker.predict(PAIRS, apply_softmax=True))
    else:  # softmax over one label: 6.x (and the docstring) leave the scores; 5.x made them all 1.0
        _close(reference.predict(PAIRS), reranker.predict(PAIRS, apply_softmax=True))
    for module in (torch.nn.Sigmoid(), torch.nn.Tanh()):  # a torch activation is recognised, run in numpy
        _close(reference.predict(PAIRS, activation_fn=module), reranker.predict(PAIRS, activation_fn=module))
    # with its settings: on the same logits, GELU(approximate="tanh") is not erf's (up to 4.7e-4 apart)
    logits = torch.from_numpy(reranker.predict(PAIRS, activation_fn=torch.nn.Identity()))
    for module in (torch.nn.GELU(), torch.nn.GELU(approximate="tanh")):
        expected = module(logits).numpy()
        np.testing.assert_allclose(reranker.predict(PAIRS, activation_fn=module), expected, rtol=0, atol=1e-6)
    _close(reference.predict(PAIRS, activation_fn=torch.nn.Tanh()), reranker.predict(PAIRS, activation_fn=np.tanh))
    # other torch modules and torch's functions get a tensor, as in sentence-transformers
    for function in (torch.nn.Softmax(dim=1), torch.nn.LogSoftmax(dim=1), torch.nn.Hardtanh(), torch.sigmoid):
        _close(reference.predict(PAIRS, activation_fn=function), reranker.predict(PAIRS, activation_fn=function))
    with pytest.raises(ArgumentTypeError, match="activation_fn failed on the logits.*numpy array"):
        reranker.predict(PAIRS[:2], activation_fn=lambda logits: logits.softmax(dim=1))


def test_rank_matches_cross_encoder(case: tuple[Any, Reranker]) -> None:
    reference, reranker = case
    documents = [text for _, text in PAIRS[:40]]
    query = CORPUS[7]
    if reference.num_labels != 1:
        with pytest.raises(ValueError, match="num_labels=1"):
            reference.rank(query, documents)
        with pytest.raises(InvalidArgumentError, match="num_labels=1.*has 3"):
            reranker.rank(query, documents)
        return
    expected = reference.rank(query, documents, return_documents=True)
    actual = reranker.rank(query, documents, return_documents=True)
    assert [sorted(row) for row in actual] == [sorted(row) for row in expected]  # corpus_id, score, text
    by_id = {row["corpus_id"]: row for row in expected}
    for row in actual:
        assert abs(row["score"] - by_id[row["corpus_id"]]["score"]) <= ATOL
        assert row["text"] == documents[row["corpus_id"]]
        # a Python float as sentence-transformers 6.x gives it (5.x: numpy float32), so that json takes it
        assert type(row["score"]) is float and isinstance(expected[0]["score"], (float, np.floating))
    json.dumps(actual)
    # the same order wherever scores differ by more than the tolerance
    position = {row["corpus_id"]: place for place, row in enumerate(actual)}
    for first, second in zip(expected, expected[1:], strict=False):
        if first["score"] - second["score"] > ATOL:
            assert position[first["corpus_id"]] < position[second["corpus_id"]]
    top = reranker.rank(query, documents, top_k=5)
    assert [row["corpus_id"] for row in top] == [row["corpus_id"] for row in actual[:5]]
    assert "text" not in top[0] and len(reference.rank(query, documents, top_k=5)) == 5


def test_prompts_as_cross_encoder(modernbert_reranker: Replica, bert_reranker: Replica, exports_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(modernbert_reranker.path), device="cpu")
    reranker = Reranker(exported_reranker(modernbert_reranker, exports_dir), "cpu")
    assert reranker.prompts == reference.prompts == {"query": "search_query: "}
    _close(reference.predict(PAIRS, prompt_name="query"), reranker.predict(PAIRS, prompt_name="query"))
    with pytest.raises(InvalidArgumentError, match="prompt_name 'nope' is not one of the model's prompts: 'query'"):
        reranker.predict(PAIRS, prompt_name="nope")
    reference = CrossEncoder(str(bert_reranker.path), device="cpu")
    reranker = Reranker(exported_reranker(bert_reranker, exports_dir), "cpu")
    prompt = "Given a web search query, retrieve relevant passages: "
    _close(reference.predict(PAIRS, prompt=prompt), reranker.predict(PAIRS, prompt=prompt))
    ranked, theirs = reranker.rank("x", MIXED_TEXTS, prompt=prompt), reference.rank("x", MIXED_TEXTS, prompt=prompt)
    assert {row["corpus_id"] for row in ranked[:3]} == {row["corpus_id"] for row in theirs[:3]}


def test_long_pairs_truncate_as_cross_encoder(bert_reranker: Replica, exports_dir: Path) -> None:
    """Longest-first truncation of pairs: one long text, two long texts (the odd max_length's extra token goes to
    the longer), a long query with a document whose tokens outnumber the cut piece's."""
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(bert_reranker.path), device="cpu")
    reranker = Reranker(exported_reranker(bert_reranker, exports_dir), "cpu")
    assert reranker.max_seq_length == 63
    dense = "".join(CORPUS[1:4]) * 30  # Chinese/Korean: many tokens per character
    pairs = [
        (LONG_TEXT, "short"),
        ("short", LONG_TEXT),
        (LONG_TEXT, LONG_TEXT[5:]),
        (LONG_TEXT[5:], LONG_TEXT),
        (LONG_TEXT, dense),
        (dense, LONG_TEXT),
        (LONG_TEXT[:2000], dense[:300]),
        # both long, so both are cut: the pieces must compare as the whole texts do
        (LONG_TEXT, LONG_TEXT),
        (LONG_TEXT, LONG_TEXT + " and a few more words at the end"),
        (LONG_TEXT + " and a few more words at the end", LONG_TEXT),
        (LONG_TEXT * 3, LONG_TEXT * 2),
        (LONG_TEXT * 2, dense * 2),
    ]
    tokenizer = reranker._tokenizer
    seen: list[Any] = []
    encode_batch = tokenizer._encode_batch

    def recording(items: list[Any], **options: Any) -> Any:
        seen.extend(item for item in items if not isinstance(item, str))
        return encode_batch(items, **options)

    tokenizer._encode_batch = recording
    _close(
        reference.predict(pairs, activation_fn=__import__("torch").nn.Identity()),
        reranker.predict(pairs, activation_fn="identity"),
    )
    # no pair of two whole long texts reached the tokenizer (it would pair their overflow pieces with each other)
    long_texts = {text for pair in pairs[7:] for text in pair}
    assert not [pair for pair in seen if pair[0] in long_texts and pair[1] in long_texts]


def test_bad_inputs_raise_clear_errors(bert_reranker: Replica, exports_dir: Path) -> None:
    reranker = Reranker(exported_reranker(bert_reranker, exports_dir), "cpu")
    with pytest.raises(ArgumentTypeError, match=r"inputs\[1\] must hold two strings; got \(str, int\)"):
        reranker.predict([("a", "b"), ("a", 3)])
    with pytest.raises(ArgumentTypeError, match=r"inputs\[0\] must be a \(query, document\) pair"):
        reranker.predict([("a", "b", "c")])
    with pytest.raises(ArgumentTypeError, match="got NoneType"):
        reranker.predict(None)
    with pytest.raises(InvalidArgumentError, match="activation_fn 'softplus' is not supported; choose from identity"):
        reranker.predict(PAIRS[:2], activation_fn="softplus")
    with pytest.raises(InvalidArgumentError, match="convert_to_tensor=True needs torch"):
        reranker.predict(PAIRS[:2], convert_to_tensor=True)
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
        reranker.predict(PAIRS[:2], batch_size=0)
    with pytest.raises(ArgumentTypeError, match="documents must be a list of str"):
        reranker.rank("q", "not a list")
    with pytest.raises(ArgumentTypeError, match="query must be a str"):
        reranker.rank(["q"], ["d"])
    with pytest.raises(ArgumentTypeError, match=r"documents\[1\] is int, not str"):
        reranker.rank("q", ["d", 3])
    with pytest.raises(ArgumentTypeError, match="top_k must be an int or None; got float"):
        reranker.rank("q", ["d", "e"], top_k=2.5)
    # containers list() would take apart other than as meant: a set's order is not the caller's
    with pytest.raises(ArgumentTypeError, match="documents is a set: pass a list"):
        reranker.rank("q", {"d", "e"})
    with pytest.raises(ArgumentTypeError, match="inputs is a set"):
        reranker.predict({("a", "b"), ("c", "d")})
    # device= as in CrossEncoder: where the provider runs is accepted, another device refused
    np.testing.assert_array_equal(reranker.predict(PAIRS[:3], device="cpu"), reranker.predict(PAIRS[:3]))
    assert reranker.rank("q", ["d", "e"], device="cpu")[0]["corpus_id"] in (0, 1)
    with pytest.raises(InvalidArgumentError, match="device='cuda', but this Reranker runs on CPUExecutionProvider"):
        reranker.predict(PAIRS[:3], device="cuda")
    assert reranker.device == "cpu" and reranker.max_length == reranker.max_seq_length


def test_model_kinds_are_not_confused(bert_reranker: Replica, exports_dir: Path, tiny_export: Path) -> None:
    with pytest.raises(ModelLoadError, match="reranker .*load it with onnxembed.Reranker"):
        Encoder(exported_reranker(bert_reranker, exports_dir))
    with pytest.raises(ModelLoadError, match="embedding model export, not a reranker; load it with onnxembed.Encoder"):
        Reranker(tiny_export)


def test_runtime_never_imports_torch(bert_reranker: Replica, exports_dir: Path) -> None:
    out = exported_reranker(bert_reranker, exports_dir)
    code = (
        "import sys\n"
        "from onnxembed import Reranker\n"
        f"reranker = Reranker({str(out)!r})\n"
        "ranked = reranker.rank('a query', ['one text', 'another', ''], return_documents=True)\n"
        "assert [sorted(row) for row in ranked] == [['corpus_id', 'score', 'text']] * 3, ranked\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'optimum') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: []" in result.stdout
