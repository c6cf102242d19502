"""``onnxembed rerank`` ranks a file's lines as CrossEncoder.rank does; ``export`` and ``info`` describe a
reranker; errors are one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from onnxembed.cli import main
from tests import rerankers
from tests.replicas import CORPUS, Replica
from tests.rerankers import exported_reranker

bert_reranker = rerankers.bert_reranker


def test_rerank_prints_lines_in_cross_encoder_order(
    bert_reranker: Replica, exports_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sentence_transformers import CrossEncoder

    out = exported_reranker(bert_reranker, exports_dir)
    documents = CORPUS[20:32]
    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join([documents[0], "", *documents[1:]]) + "\n", encoding="utf-8")  # an empty line 2
    assert main(["rerank", str(out), CORPUS[3], str(lines), "--top-k", "5"]) == 0
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    expected = CrossEncoder(str(bert_reranker.path), device="cpu").rank(CORPUS[3], documents, top_k=5)
    assert [row[0] for row in printed] == ["1", "2", "3", "4", "5"]
    assert [row[3] for row in printed] == [documents[row["corpus_id"]] for row in expected]
    assert all(abs(float(row[1]) - float(ex["score"])) <= 1e-4 for row, ex in zip(printed, expected, strict=True))
    # line numbers are the file's (the empty line counts)
    assert [int(row[2]) for row in printed] == [row["corpus_id"] + 1 + (row["corpus_id"] > 0) for row in expected]
    # lines end at "\n" only, as encode and embed-corpus read them: a lone "\r" stays inside its line, so the
    # numbers stay an editor's (text mode split there and numbered every later line one too high)
    lines.write_bytes(("\n".join([documents[0] + "\r" + documents[1], *documents[2:]]) + "\n").encode("utf-8"))
    assert main(["rerank", str(out), CORPUS[3], str(lines)]) == 0
    numbers = sorted(int(line.split("\t")[2]) for line in capsys.readouterr().out.split("\n") if line)
    assert numbers == list(range(1, len(documents)))


def test_rerank_errors_are_one_line(
    bert_reranker: Replica, exports_dir: Path, tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = exported_reranker(bert_reranker, exports_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("fine\ncaf\u00e9\n".encode("latin-1"))
    cases: list[tuple[list[str], str]] = [
        (["rerank", str(out), "q", str(empty)], "has no non-empty line to rank"),
        (["rerank", str(tiny_export), "q", str(empty)], "not a reranker; load it with onnxembed.Encoder"),
        (["rerank", str(out), "q", str(empty), "--top-k", "0"], "--top-k must be a positive integer"),
        (["rerank", str(out), "q", str(latin1)], f"{latin1} line 2 is not UTF-8"),
        # the embedding budget is refused for a reranker, naming the ranking budget that applies
        (
            ["export", str(bert_reranker.path), str(tmp_path / "x"), "--quantize", "int8", "--int8-min-cosine", ".9"],
            "a reranker's int8 is measured on ranking: set int8_min_spearman (--int8-min-spearman, default 0.98)",
        ),
        (
            ["export", str(bert_reranker.path), str(tmp_path / "x"), "--int8-min-top10-overlap", "1.5"],
            "int8_min_top10_overlap must be in (0, 1]; got 1.5",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_export_and_info_describe_a_reranker(
    bert_reranker: Replica, tmp_path: Path, capsys: pytest.CaptureFixture[str], exports_dir: Path
) -> None:
    assert main(["export", str(bert_reranker.path), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "reranker: 1 label(s), activation sigmoid" in printed
    assert "CrossEncoder.predict: max abs diff" in printed
    assert main(["info", str(exported_reranker(bert_reranker, exports_dir))]) == 0
    info: Any = capsys.readouterr().out
    assert "Transformer (BertForSequenceClassification, 1 label(s)) -> sigmoid" in info
