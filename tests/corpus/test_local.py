"""``onnxembed embed-corpus`` without Ray: Parquet, JSONL and text in, Parquet parts out, restartable.

The oracle is ``Encoder(tiny_export).encode`` on the same texts (itself checked against
sentence-transformers in tests/runtime); these tests check that the corpus path loses, duplicates or
mixes up no row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxembed.cli import main
from onnxembed.corpus import CorpusError, embed_corpus
from tests.corpus.helpers import IDS, TEXTS, assert_rows_equal, read_output, write_jsonl, write_parquet, write_text

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def expected(tiny_export: Path) -> np.ndarray:
    from onnxembed import Encoder

    return Encoder(tiny_export).encode(TEXTS)


def test_parquet_file_with_ids(tmp_path: Path, tiny_export: Path, expected: np.ndarray) -> None:
    source = write_parquet(tmp_path / "in.parquet", [{"id": i, "text": t} for i, t in zip(IDS, TEXTS, strict=True)])
    result = embed_corpus(source, tmp_path / "out", tiny_export, chunk_rows=7)
    assert (result.rows_embedded, result.rows_reused, result.errors) == (len(TEXTS), 0, [])
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == -(-len(TEXTS) // 7)
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert pq.read_schema(parts[0]).field("embedding").type == pa.list_(pa.float32(), expected.shape[1])
    assert_rows_equal(read_output(tmp_path / "out"), dict(zip(IDS, expected, strict=True)))


def test_jsonl_file_with_other_columns(tmp_path: Path, tiny_export: Path, expected: np.ndarray) -> None:
    rows = [{"key": i, "body": t, "lang": "x"} for i, t in zip(IDS, TEXTS, strict=True)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    embed_corpus(source, tmp_path / "out", tiny_export, text_column="body", id_column="key", chunk_rows=10)
    assert_rows_equal(read_output(tmp_path / "out"), dict(zip(IDS, expected, strict=True)))
    # a text column no row has is the job's mistake, named (as for Parquet), not a bad row on every line that
    # --on-error skip would skip, every one of them; a row that leaves the field out is one bad row
    with pytest.raises(CorpusError, match="no row has the text column 'text'; its first row has: key, body, lang"):
        embed_corpus(source, tmp_path / "out2", tiny_export, id_column="key", on_error="skip")
    sparse = write_jsonl(tmp_path / "sparse.jsonl", [{"key": "a", "title": "no body"}, *rows[1:4]])
    result = embed_corpus(sparse, tmp_path / "out3", tiny_export, text_column="body", id_column="key", on_error="skip")
    assert [error["id"] for error in result.errors] == ["a"]
    written = read_output(tmp_path / "out3")
    assert written.pop("a")["embedding"] is None
    assert_rows_equal(written, dict(zip(IDS[1:4], expected[1:4], strict=True)))


def test_text_file_ids_are_row_numbers(tmp_path: Path, tiny_export: Path, expected: np.ndarray) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS)
    embed_corpus(source, tmp_path / "out", tiny_export, chunk_rows=8)
    assert_rows_equal(read_output(tmp_path / "out"), dict(enumerate(expected)))


def test_folder_of_mixed_files_numbers_rows_globally(tmp_path: Path, tiny_export: Path, expected: np.ndarray) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_text(folder / "a.txt", TEXTS[:9])
    write_jsonl(folder / "b.jsonl", [{"text": t} for t in TEXTS[9:20]])
    write_parquet(folder / "c.parquet", [{"text": t} for t in TEXTS[20:]])
    (folder / "_notes.txt").write_text("not an input\n", encoding="utf-8")
    embed_corpus(folder, tmp_path / "out", tiny_export, chunk_rows=4)
    assert_rows_equal(read_output(tmp_path / "out"), dict(enumerate(expected)))


def test_restart_after_interruption_redoes_nothing(
    tmp_path: Path, tiny_export: Path, expected: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxembed.corpus.local as local

    source = write_text(tmp_path / "in.txt", TEXTS)
    output = tmp_path / "out"
    real_write_part = local.write_part
    written: list[str] = []

    def interrupted_write_part(path: Path, table: object) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write_part(path, table)
        written.append(path.name)

    monkeypatch.setattr(local, "write_part", interrupted_write_part)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(source, output, tiny_export, chunk_rows=5)
    assert sorted(path.name for path in output.iterdir() if path.name.startswith("part-")) == sorted(written)
    assert not [path for path in output.iterdir() if path.name.startswith(".")], "a temporary file was left"
    first_parts = {name: (output / name).stat().st_mtime_ns for name in written}

    monkeypatch.setattr(local, "write_part", real_write_part)
    result = embed_corpus(source, output, tiny_export, chunk_rows=5)
    assert (result.rows_reused, result.rows_embedded) == (10, len(TEXTS) - 10)
    assert {name: (output / name).stat().st_mtime_ns for name in written} == first_parts
    assert_rows_equal(read_output(output), dict(enumerate(expected)))

    # A lost part is redone alone.
    (output / written[1]).unlink()
    result = embed_corpus(source, output, tiny_export, chunk_rows=5)
    assert (result.rows_reused, result.rows_embedded) == (len(TEXTS) - 5, 5)
    assert_rows_equal(read_output(output), dict(enumerate(expected)))


def test_restart_with_other_settings_is_refused(tmp_path: Path, tiny_export: Path) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS[:6])
    embed_corpus(source, tmp_path / "out", tiny_export, chunk_rows=5)
    with pytest.raises(CorpusError, match="chunk_rows: was 5, now 4"):
        embed_corpus(source, tmp_path / "out", tiny_export, chunk_rows=4)


def _bad_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [{"id": i, "text": t} for i, t in zip(IDS, TEXTS, strict=True)]
    rows[3]["text"] = None
    rows[11]["text"] = 42
    del rows[17]["text"]
    return rows


def test_bad_rows_skipped_and_reported_by_id(tmp_path: Path, tiny_export: Path, expected: np.ndarray) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", _bad_rows())
    result = embed_corpus(source, tmp_path / "out", tiny_export, on_error="skip", chunk_rows=8)
    bad = {IDS[3]: "text is null", IDS[11]: "text is int", IDS[17]: "text is null"}
    assert {error["id"]: error["error"] for error in result.errors} == bad
    listed = [json.loads(line) for line in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()]
    assert {error["id"]: error["error"] for error in listed} == bad
    rows = read_output(tmp_path / "out")
    for row_id, error in bad.items():
        assert rows.pop(row_id) == {"embedding": None, "error": error}
    assert_rows_equal(rows, {i: v for i, v in zip(IDS, expected, strict=True) if i not in bad})


def test_bad_row_fails_by_default_naming_its_id(tmp_path: Path, tiny_export: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", _bad_rows()[:8])
    with pytest.raises(CorpusError, match=r"row id 'doc-003': text is null"):
        embed_corpus(source, tmp_path / "out", tiny_export)


def test_cli_one_line_error_and_skip_summary(tmp_path: Path, tiny_export: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", _bad_rows())
    args = ["embed-corpus", str(source), str(tmp_path / "out"), "--model", str(tiny_export), "--no-progress"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "row id 'doc-003': text is null" in error
    assert main([*args[:2], str(tmp_path / "out2"), *args[3:], "--on-error", "skip"]) == 0
    summary = capsys.readouterr().err
    assert "3 bad rows skipped (ids 'doc-003', 'doc-011', 'doc-017')" in summary
    assert "(bad rows among them, with null embeddings)" in summary
    # the local runner's options are refused with --ray rather than ignored there
    assert main([*args[:2], str(tmp_path / "out3"), *args[3:], "--ray", "--threads", "1", "--chunk-rows", "5"]) == 1
    assert "--chunk-rows, --threads: for local runs" in capsys.readouterr().err


def test_cli_binary_precision(tmp_path: Path, tiny_export: Path) -> None:
    from onnxembed import Encoder

    source = write_text(tmp_path / "in.txt", TEXTS)
    args = ["embed-corpus", str(source), str(tmp_path / "out"), "--model", str(tiny_export), "--precision", "binary"]
    assert main([*args, "--batch-size", "4"]) == 0
    expected = Encoder(tiny_export).encode(TEXTS, precision="binary")
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert pq.read_schema(next((tmp_path / "out").glob("part-*"))).field("embedding").type == pa.list_(pa.int8(), 4)
    rows = read_output(tmp_path / "out")
    np.testing.assert_array_equal(np.stack([rows[index]["embedding"] for index in range(len(TEXTS))]), expected)


def test_importing_imports_neither_ray_nor_pyarrow() -> None:
    code = (
        "import sys, onnxembed, onnxembed.ray, onnxembed.corpus, onnxembed.cli; "
        "print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"
