"""Bad rows of every kind: with on_error="skip" each is reported by file, line and id and the good rows are
exactly ``Encoder.encode``'s; with the default the job stops naming file and line. Duplicate ids are reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed.corpus import CorpusError, embed_corpus
from tests.corpus.helpers import IDS, TEXTS, assert_rows_equal, read_output, write_text

pytest.importorskip("pyarrow")

POISON, NAN = "POISON: the encoder raises on this text", "NAN: the encoder returns NaN for this text"


@pytest.fixture(scope="module")
def expected(tiny_export: Path) -> dict[str, np.ndarray]:
    from onnxembed import Encoder

    return dict(zip(IDS, Encoder(tiny_export).encode(TEXTS), strict=True))


@pytest.fixture
def hostile_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoder.encode raises on any batch holding POISON (as a tokenizer or onnxruntime error would) and
    gives NaN for NAN's row."""
    from onnxembed.runtime.encoder import Encoder

    real_encode = Encoder.encode

    def encode(self: Any, texts: list[str], **options: Any) -> np.ndarray:
        if POISON in texts:
            raise ValueError("cannot tokenize")
        vectors = real_encode(self, [text.replace(NAN, "x") for text in texts], **options)
        vectors[[text == NAN for text in texts]] = np.nan
        return vectors

    monkeypatch.setattr(Encoder, "encode", encode)


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode() + b"\n"


# (raw JSONL line, its id in the report, the error it must report)
BAD_LINES = [
    (b'{"id": "s1", "text": "a \\ud800 b"}\n', "s1", "text has a lone surrogate (invalid Unicode) at character 2"),
    (b'{"id": "s2", "text": ["a", "list"]}\n', "s2", "text is list"),
    (b'{"id": "s3"}\n', "s3", "text is null"),
    (b'{"id": "", "text": "empty id"}\n', None, "id is empty"),
    (b'{"text": "no id"}\n', None, "id is empty"),
    (b'{"id": 1.5, "text": "float id"}\n', None, "id is float (1.5); ids are strings or integers"),
    (b'{"id": 7, "text": "int id among str ids"}\n', None, "id is int; this job's ids are str"),
    (b'{"id": "s8", "text": "caf\xe9"}\n', "s8", "invalid UTF-8 at byte 25"),
    (b'{"id": "s\xff", "text": "bad byte in the id"}\n', None, "invalid UTF-8 at byte 9"),
    (b'{"id": "s9", "text": \n', None, "not JSON (Expecting value at character 22)"),
    (b'["not", "an", "object"]\n', None, "not a JSON object"),
    (b'{"id": "s11", "text": "a", "n": ' + b"9" * 5000 + b"}\n", None, "not JSON (Exceeds the limit"),
    (b"[" * 100_000 + b"\n", None, "not JSON (nested too deeply)"),
    (_line({"id": "s13", "text": POISON}), "s13", "rejected by the encoder: ValueError: cannot tokenize"),
    (_line({"id": "s14", "text": NAN}), "s14", "embedding is not finite (NaN or inf)"),
]


def _corpus(path: Path) -> tuple[Path, dict[int, tuple[Any, str]]]:
    """Good rows (IDS/TEXTS) with the bad lines between them; returns {line: (id, error)} of the bad ones."""
    good = [_line({"id": row_id, "text": text}) for row_id, text in zip(IDS, TEXTS, strict=True)]
    lines, bad = [], {}
    for index, (raw, row_id, error) in enumerate(BAD_LINES):
        lines.extend(good[2 * index : 2 * index + 2])
        lines.append(raw)
        bad[len(lines)] = (row_id, error)
    lines.extend(good[2 * len(BAD_LINES) :])
    path.write_bytes(b"".join(lines))
    return path, bad


def test_every_kind_of_bad_row_is_reported_with_skip(
    tmp_path: Path, tiny_export: Path, expected: dict, hostile_encoder: None
) -> None:
    source, bad = _corpus(tmp_path / "in.jsonl")
    output = tmp_path / "out"
    result = embed_corpus(source, output, tiny_export, on_error="skip", chunk_rows=7)
    reported = {record["line"]: record for record in result.errors}
    assert sorted(reported) == sorted(bad)
    for line, (row_id, error) in bad.items():
        assert reported[line]["id"] == row_id and reported[line]["file"] == "in.jsonl", reported[line]
        assert reported[line]["error"].startswith(error), (reported[line], error)
    listed = [json.loads(line) for line in (output / "_errors.jsonl").read_text().splitlines()]
    assert listed == result.errors

    import pyarrow.parquet as pq  # read_output keys rows by id, and bad-id rows have none

    table = pq.read_table(output)
    assert table.num_rows == len(IDS) + len(BAD_LINES)
    is_bad = table["error"].is_valid().to_pylist()
    assert sum(is_bad) == len(BAD_LINES)
    assert all(
        vector is None for vector, bad_row in zip(table["embedding"].to_pylist(), is_bad, strict=True) if bad_row
    )
    good_ids = [row_id for row_id, bad_row in zip(table["id"].to_pylist(), is_bad, strict=True) if not bad_row]
    good_vectors = [v for v, bad_row in zip(table["embedding"].to_pylist(), is_bad, strict=True) if not bad_row]
    rows = {
        row_id: {"embedding": np.asarray(v), "error": None} for row_id, v in zip(good_ids, good_vectors, strict=True)
    }
    assert_rows_equal(rows, expected)

    # The rerun reuses every part and reports the same rows, from the parts alone.
    again = embed_corpus(source, output, tiny_export, on_error="skip", chunk_rows=7)
    assert (again.rows_embedded, again.errors) == (0, result.errors)


@pytest.mark.parametrize("index", range(len(BAD_LINES)))
def test_bad_row_fails_by_default_naming_file_and_line(
    tmp_path: Path, tiny_export: Path, hostile_encoder: None, index: int
) -> None:
    raw, row_id, error = BAD_LINES[index]
    source = tmp_path / "in.jsonl"
    source.write_bytes(_line({"id": "a", "text": "fine"}) + b"\n" + raw + _line({"id": "z", "text": "fine"}))
    with pytest.raises(CorpusError, match="--on-error skip") as failure:
        embed_corpus(source, tmp_path / "out", tiny_export)
    message = str(failure.value)
    # The id as read (an empty or float id too), where the report can only hold null.
    assert "in.jsonl:3: row id " in message and f": {error}" in message, message
    assert row_id is None or f"row id {row_id!r}: " in message


def test_text_file_invalid_utf8_names_file_and_line(tmp_path: Path, tiny_export: Path, expected: dict) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"hello\nwor\xffld\nbye\n")
    with pytest.raises(CorpusError, match=r"in.txt:2: row id 1: invalid UTF-8 at byte 3"):
        embed_corpus(source, tmp_path / "out", tiny_export)
    result = embed_corpus(source, tmp_path / "out2", tiny_export, on_error="skip")
    assert result.errors == [{"id": 1, "file": "in.txt", "line": 2, "error": "invalid UTF-8 at byte 3"}]
    assert sorted(read_output(tmp_path / "out2")) == [0, 1, 2]


def test_duplicate_ids_are_reported(tmp_path: Path, tiny_export: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(
        b"".join(_line({"id": i, "text": t}) for i, t in zip(IDS[:6], TEXTS[:6], strict=True))
    )
    (folder / "b.jsonl").write_bytes(_line({"id": IDS[2], "text": "again"}) + _line({"id": "new", "text": "x"}))
    with pytest.raises(CorpusError, match=r"1 ids appear more than once, e.g. 'doc-002' \(duplicate id: 2 rows, in a"):
        embed_corpus(folder, tmp_path / "out", tiny_export, chunk_rows=4)
    result = embed_corpus(folder, tmp_path / "out", tiny_export, chunk_rows=4, on_error="skip")
    assert result.errors == []
    assert result.duplicates == [{"id": IDS[2], "files": ["a.jsonl", "b.jsonl"], "error": "duplicate id: 2 rows"}]
    listed = [json.loads(line) for line in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()]
    assert listed == result.duplicates


def test_rows_of_a_chunk_that_all_fail_are_an_encoder_error(
    tmp_path: Path, tiny_export: Path, hostile_encoder: None
) -> None:
    """When no row of a chunk encodes alone, the encoder is broken, not the rows: no row is blamed."""
    source = write_text(tmp_path / "in.txt", [POISON, POISON])
    with pytest.raises(ValueError, match="cannot tokenize"):
        embed_corpus(source, tmp_path / "out", tiny_export, on_error="skip")
    assert not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize("good_id", ["b1", 7])
def test_a_part_with_only_bad_ids_keeps_the_output_readable(
    tmp_path: Path, tiny_export: Path, expected: dict, good_id: Any
) -> None:
    """A part whose rows all have bad ids (skipped) is written before any good id says the job's id type; it
    takes that type at the end, so that read_table(OUTPUT) reads every part (a null-typed id column beside
    string or int64 ones could not be cast)."""
    import pyarrow.parquet as pq

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_line({"id": None, "text": TEXTS[0]}))
    (folder / "b.jsonl").write_bytes(_line({"id": good_id, "text": TEXTS[1]}))
    result = embed_corpus(folder, tmp_path / "out", tiny_export, on_error="skip")
    assert [row["error"] for row in result.errors] == ["id is empty"]
    table = pq.read_table(tmp_path / "out")
    assert table["id"].to_pylist() == [None, good_id]
    np.testing.assert_allclose(table["embedding"].to_pylist()[1], expected[IDS[1]], atol=1e-5)
    assert table["embedding"].to_pylist()[0] is None


def test_jsonl_ids_are_never_replaced_by_row_numbers_unseen(tmp_path: Path, tiny_export: Path, expected: dict) -> None:
    """A byte order mark before the first row is read past (its id column found); a file whose first row has no
    id but later rows do numbers its rows, and the rows whose id that would drop are bad rows saying so."""
    folder = tmp_path / "bom"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(
        b"\xef\xbb\xbf" + _line({"id": "a", "text": TEXTS[0]}) + _line({"id": "b", "text": TEXTS[1]})
    )
    embed_corpus(folder, tmp_path / "bom-out", tiny_export)
    rows = read_output(tmp_path / "bom-out")
    assert list(rows) == ["a", "b"]
    np.testing.assert_allclose(rows["b"]["embedding"], expected[IDS[1]], atol=1e-5)
    folder = tmp_path / "late"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_line({"text": TEXTS[0]}) + _line({"id": "b", "text": TEXTS[1]}))
    with pytest.raises(CorpusError, match="has none, so its rows are numbered"):
        embed_corpus(folder, tmp_path / "late-out", tiny_export)
    result = embed_corpus(folder, tmp_path / "late-out-skip", tiny_export, on_error="skip")
    assert [row["line"] for row in result.errors] == [2]
    rows = read_output(tmp_path / "late-out-skip")
    np.testing.assert_allclose(rows[0]["embedding"], expected[IDS[0]], atol=1e-5)


def test_a_byte_order_mark_is_not_read_as_a_row_or_as_text(tmp_path: Path, tiny_export: Path, expected) -> None:
    """A JSONL file whose first line is only a byte order mark is counted as read (one blank line), so the next
    file's row numbers follow on; a text file's mark is not part of its first text (encode reads alike)."""
    from onnxembed.cli_encode import read_lines
    from onnxembed.corpus.inputs import list_inputs, read_chunks

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\xef\xbb\xbf \r\n" + _line({"text": TEXTS[0]}) + _line({"text": TEXTS[1]}))
    (folder / "b.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(TEXTS[2:4]).encode() + b"\n")
    files = list_inputs(folder)
    assert [file.rows for file in files] == [2, 2] and files[1].first_row == 2
    (text,) = [chunk for chunk in read_chunks(files[1], "text", None, 10)]
    assert text.texts == TEXTS[2:4] and text.ids == [2, 3]
    with open(folder / "b.txt", "rb") as stream:
        assert list(read_lines(stream, "b.txt")) == TEXTS[2:4]
    embed_corpus(folder, tmp_path / "out", tiny_export)
    rows = read_output(tmp_path / "out")
    assert list(rows) == [0, 1, 2, 3]
    assert_rows_equal(rows, {k: expected[IDS[k]] for k in range(4)})


def test_an_unreadable_parquet_input_is_named(tmp_path: Path, tiny_export: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_line({"id": "a", "text": TEXTS[0]}))
    (folder / "b.parquet").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"b\.parquet is not a readable Parquet file"):
        embed_corpus(folder, tmp_path / "out", tiny_export)
    (folder / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"b\.parquet is not a readable Parquet file"):
        embed_corpus(folder, tmp_path / "out", tiny_export)
