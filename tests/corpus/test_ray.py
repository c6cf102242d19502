"""The Ray path on a local cluster (``ray.init(num_cpus=2)``): ``onnxembed.ray.embed_dataset`` and
``onnxembed embed-corpus --ray``. The oracle is ``Encoder(tiny_export).encode`` on the same texts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxembed.cli import main
from tests.corpus.helpers import IDS, TEXTS, assert_rows_equal, read_output, write_parquet, write_text

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def expected(tiny_export: Path) -> dict[str, np.ndarray]:
    from onnxembed import Encoder

    return dict(zip(IDS, Encoder(tiny_export).encode(TEXTS), strict=True))


def _rows(table: Any) -> dict[Any, dict[str, Any]]:
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicated ids"
    errors = table["error"].to_pylist() if "error" in table.column_names else [None] * len(ids)
    return {
        row_id: {"embedding": None if vector is None else np.asarray(vector), "error": error}
        for row_id, vector, error in zip(ids, table["embedding"].to_pylist(), errors, strict=True)
    }


def test_embed_dataset_matches_encoder(ray_cluster: Any, tiny_export: Path, expected: dict) -> None:
    import pyarrow as pa

    from onnxembed.ray import embed_dataset

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in zip(IDS, TEXTS, strict=True)], override_num_blocks=4)
    embedded = embed_dataset(ds, tiny_export, rows_per_batch=5)
    table = pa.concat_tables(ray.get(embedded.to_arrow_refs()))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), len(next(iter(expected.values()))))
    assert_rows_equal(_rows(table), expected)


def test_actor_killed_midway_is_retried(ray_cluster: Any, tiny_export: Path, tmp_path: Path, expected: dict) -> None:
    import pyarrow as pa

    from onnxembed.corpus.ray import EmbedBatches
    from onnxembed.ray import embed_dataset

    marker = str(tmp_path / "killed-once")

    class DiesOnFirstBatch(EmbedBatches):
        def __call__(self, batch: Any) -> Any:
            import os

            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the worker process dies, as on a lost node
            return super().__call__(batch)

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in zip(IDS, TEXTS, strict=True)], override_num_blocks=4)
    embedded = embed_dataset(ds, tiny_export, rows_per_batch=5, actor_class=DiesOnFirstBatch)
    table = pa.concat_tables(ray.get(embedded.to_arrow_refs()))
    assert Path(marker).exists(), "no actor was killed"
    assert_rows_equal(_rows(table), expected)


def test_cli_ray_bad_rows_then_text_file_rerun(
    ray_cluster: Any, tiny_export: Path, tmp_path: Path, expected: dict, capsys: pytest.CaptureFixture
) -> None:
    rows: list[dict[str, Any]] = [{"id": i, "text": t} for i, t in zip(IDS, TEXTS, strict=True)]
    rows[5]["text"] = None
    folder = tmp_path / "in"
    folder.mkdir()
    write_parquet(folder / "a.parquet", rows)
    output = tmp_path / "out"
    args = ["embed-corpus", str(folder), str(output), "--model", str(tiny_export), "--ray"]
    assert main(args) == 1
    assert "row id 'doc-005': text is null" in capsys.readouterr().err
    assert not [path for path in output.iterdir() if path.name.startswith("part-")]

    assert main([*args, "--on-error", "skip"]) == 0
    assert "1 bad rows skipped (ids 'doc-005')" in capsys.readouterr().err
    result = read_output(output)
    assert result.pop(IDS[5]) == {"embedding": None, "error": "text is null"}
    assert_rows_equal(result, {i: v for i, v in expected.items() if i != IDS[5]})

    # A text file: ids are row numbers; a rerun finds the file done and embeds nothing.
    text_output = tmp_path / "out-text"
    source = write_text(tmp_path / "in.txt", TEXTS)
    assert main(["embed-corpus", str(source), str(text_output), "--model", str(tiny_export), "--ray"]) == 0
    assert main(["embed-corpus", str(source), str(text_output), "--model", str(tiny_export), "--ray"]) == 0
    assert f"0 rows embedded, {len(TEXTS)} found done" in capsys.readouterr().err
    assert_rows_equal(read_output(text_output), dict(enumerate(expected.values())))


def test_cli_ray_jsonl_bad_rows_rerun_and_model_change(
    ray_cluster: Any, tiny_export: Path, tmp_path: Path, expected: dict, capsys: pytest.CaptureFixture
) -> None:
    import json
    import shutil

    lines = [json.dumps({"id": i, "text": t}).encode() for i, t in zip(IDS, TEXTS, strict=True)]
    lines[2] = b'{"id": "doc-002", "text": "a \\udc00 b"}'  # a lone surrogate: the tokenizer would raise
    lines[6] = b'{"id": "doc-006", "text": "caf\xe9"}'
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out"
    args = ["embed-corpus", str(folder), str(output), "--model", str(tiny_export), "--ray", "--no-progress"]
    assert main(args) == 1
    assert "a.jsonl:3: row id 'doc-002': text has a lone surrogate" in capsys.readouterr().err
    assert not list(output.glob("part-*"))

    (output / ".part-00000.tmp-99999").mkdir()  # a crashed run's folder
    assert main([*args, "--on-error", "skip"]) == 0
    assert "2 bad rows skipped (ids 'doc-002', 'doc-006')" in capsys.readouterr().err
    assert not (output / ".part-00000.tmp-99999").exists()
    report = [json.loads(line) for line in (output / "_errors.jsonl").read_text().splitlines()]
    assert [(record["id"], record["file"]) for record in report] == [("doc-002", "a.jsonl"), ("doc-006", "a.jsonl")]
    result = read_output(output)
    assert result.pop("doc-006") == {"embedding": None, "error": "invalid UTF-8 at byte 30"}
    assert result.pop("doc-002")["embedding"] is None
    assert_rows_equal(result, {i: v for i, v in expected.items() if i not in ("doc-002", "doc-006")})

    assert main([*args, "--on-error", "skip"]) == 0
    assert f"0 rows embedded, {len(TEXTS)} found done" in capsys.readouterr().err

    model = tmp_path / "model"
    shutil.copytree(tiny_export, model)
    (model / "onnxembed.json").write_text((model / "onnxembed.json").read_text() + "\n")
    assert main([*args[:3], "--model", str(model), *args[5:], "--on-error", "skip"]) == 1
    assert "the model changed" in capsys.readouterr().err


def test_parquet_ids_of_another_kind_are_refused_before_embedding(tmp_path: Path) -> None:
    """Parquet ids are read by the cluster, not checked row by row in the driver: a file whose id column has
    another type than the job's ids is refused by name up front (pyarrow could not merge the parts later)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onnxembed.corpus.inputs import CorpusError
    from onnxembed.corpus.ray import check_parquet_id_kind
    from onnxembed.corpus.rows import IdCheck

    ints, strings, floats = tmp_path / "ints.parquet", tmp_path / "strings.parquet", tmp_path / "floats.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "text": ["a", "b"]}), ints)
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["a", "b"]}), strings)
    pq.write_table(pa.table({"id": [1.5, 2.5], "text": ["a", "b"]}), floats)

    check = IdCheck()
    check_parquet_id_kind(ints, "id", check)
    assert check.kind is int  # the first file sets the job's kind; a JSONL id of another kind is a bad row
    assert check.error("x") == "id is str; this job's ids are int"
    with pytest.raises(CorpusError, match="strings.parquet.*holds str ids.*this job's ids are int"):
        check_parquet_id_kind(strings, "id", check)
    with pytest.raises(CorpusError, match="floats.parquet.*is double; ids are strings or integers"):
        check_parquet_id_kind(floats, "id", IdCheck())


def test_cli_ray_batch_of_only_bad_rows_keeps_their_ids(
    ray_cluster: Any, tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every row of the block is bad: the report still names each by the id the driver read."""
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    rows = [{"id": "x-1", "text": None}, {"id": "x-2", "text": 5}, {"id": "x-3", "text": "a \udc00 b"}]
    (folder / "bad.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    output = tmp_path / "out"
    args = ["embed-corpus", str(folder), str(output), "--model", str(tiny_export), "--ray", "--no-progress"]
    assert main([*args, "--on-error", "skip"]) == 0
    capsys.readouterr()
    report = [json.loads(line) for line in (output / "_errors.jsonl").read_text().splitlines()]
    assert [record["id"] for record in report] == ["x-1", "x-2", "x-3"]


# The local runner is the reference for embed-corpus on Ray: the same input, embedded by both, must give the
# same rows (ids, errors, embeddings) and the same _errors.jsonl, line numbers included.

_TEXT_FILE = b"first line\n\nthird, after a blank line\r\nbad \xff utf-8\n  \nlast, without a newline"
_JSONL_FILE = b"\n".join(
    [
        b'{"id": 100, "text": "alpha"}',
        b"",
        b'{"id": 101, "text": null}',
        b"not json",
        b"[1, 2]",
        b'{"id": "x", "text": "an id of another kind"}',
        b'{"id": 1.5, "text": "a float id"}',
        b'{"id": 102, "text": "caf\xe9"}',
        b'{"id": 103, "text": "a \\udc00 b"}',
        b'{"id": 104, "text": 5}',
        b'{"text": "no id"}',
        b'{"id": 105, "text": "beta"}',
        b"   ",
        b'{"id": 106, "text": "gamma"}',
    ]
)


def _mixed_inputs(folder: Path) -> Path:
    """Text (blank lines, CRLF, invalid UTF-8, no final newline), JSONL (blank lines, every kind of bad row)
    and Parquet without ids: ids are row numbers and JSONL ints, so every file has good rows and bad ones."""
    folder.mkdir()
    (folder / "a.txt").write_bytes(_TEXT_FILE)
    (folder / "b.jsonl").write_bytes(_JSONL_FILE + b"\n")
    write_parquet(folder / "c.parquet", [{"text": text} for text in ["p0", None, "p2", "p3", "p4"]])
    (folder / "d.txt").write_bytes(b"")  # no rows: Ray commits an empty folder, the local runner no part
    return folder


def _all_rows(output: Path) -> list[tuple[Any, Any, Any]]:
    """Every row of OUTPUT as (id, error, embedding or None), in a stable order (bad rows may share a null id)."""
    import pyarrow.parquet as pq

    table = pq.read_table(output)
    rows = zip(table["id"].to_pylist(), table["error"].to_pylist(), table["embedding"].to_pylist(), strict=True)
    return sorted(rows, key=lambda row: (repr(row[0]), row[1] or ""))


def _assert_same_output(output: Path, reference: Path) -> None:
    import json

    rows, expected = _all_rows(output), _all_rows(reference)
    assert [row[:2] for row in rows] == [row[:2] for row in expected]
    for (row_id, _, vector), (_, _, expected_vector) in zip(rows, expected, strict=True):
        assert (vector is None) == (expected_vector is None), row_id
        if vector is not None:
            np.testing.assert_allclose(vector, expected_vector, atol=1e-5, err_msg=str(row_id))
    report = [json.loads(line) for line in (output / "_errors.jsonl").read_text().splitlines()]
    assert report == [json.loads(line) for line in (reference / "_errors.jsonl").read_text().splitlines()]
    assert [record["line"] for record in report if record["file"] == "b.jsonl"] == [3, 4, 5, 6, 7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def mixed_reference(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(INPUT, OUTPUT of the local runner on it, in chunks as small as the Ray blocks below)."""
    from onnxembed.corpus import embed_corpus

    root = tmp_path_factory.mktemp("mixed")
    folder = _mixed_inputs(root / "in")
    embed_corpus(folder, root / "local", tiny_export, on_error="skip", chunk_rows=4)
    return folder, root / "local"


def test_ray_reads_in_the_cluster_as_the_local_runner_reads(
    ray_cluster: Any, tiny_export: Path, tmp_path: Path, mixed_reference: tuple[Path, Path]
) -> None:
    from onnxembed.corpus import embed_corpus
    from onnxembed.corpus.inputs import CorpusError
    from onnxembed.corpus.ray import embed_corpus_ray

    folder, reference = mixed_reference
    # A file:// URI is a local folder: committed by rename, as a path is.
    output = tmp_path / "out"
    result = embed_corpus_ray(folder, output.as_uri(), tiny_export, on_error="skip", rows_per_block=4)
    assert sorted(path.name for path in output.iterdir()) == [
        "_errors.jsonl", "_job.json", "part-00000", "part-00001", "part-00002", "part-00003"
    ]  # fmt: skip
    _assert_same_output(output, reference)
    assert result.rows_embedded == 6 + 12 + 5 and len(result.errors) == 1 + 9 + 1

    # With on_error="fail" both stop at the same first bad row, named by file and line.
    with pytest.raises(CorpusError) as local_failure:
        embed_corpus(folder, tmp_path / "local-fail", tiny_export, chunk_rows=4)
    with pytest.raises(CorpusError) as ray_failure:
        embed_corpus_ray(folder, tmp_path / "ray-fail", tiny_export, rows_per_block=4)
    assert str(ray_failure.value) == str(local_failure.value)
    assert "a.txt:4: row id 3: invalid UTF-8 at byte 4" in str(ray_failure.value)
    assert not list((tmp_path / "ray-fail").glob("*part-*"))


def _no_rename_filesystem(root: Path) -> Any:
    """A pyarrow filesystem over ``root`` that refuses to move anything, as an object store cannot."""
    from pyarrow import fs

    class NoRename(fs.FileSystemHandler):  # defined here so that cloudpickle sends it to the workers by value
        def __init__(self, root: str) -> None:
            self.root, self.inner = root, fs.SubTreeFileSystem(root, fs.LocalFileSystem())

        def __reduce__(self) -> Any:
            return NoRename, (self.root,)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, NoRename) and other.root == self.root

        def __ne__(self, other: object) -> bool:
            return not self == other

        def get_type_name(self) -> str:
            return "no-rename"

        def move(self, src: str, dest: str) -> None:
            raise OSError(f"this filesystem has no rename ({src} -> {dest})")

        def normalize_path(self, path: str) -> str:
            return path

        def get_file_info(self, paths: list[str]) -> Any:
            return self.inner.get_file_info(paths)

        def get_file_info_selector(self, selector: Any) -> Any:
            return self.inner.get_file_info(selector)

        def create_dir(self, path: str, recursive: bool) -> None:
            self.inner.create_dir(path, recursive=recursive)

        def delete_dir(self, path: str) -> None:
            self.inner.delete_dir(path)

        def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
            self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

        def delete_root_dir_contents(self) -> None:
            self.inner.delete_dir_contents("", accept_root_dir=True)

        def delete_file(self, path: str) -> None:
            self.inner.delete_file(path)

        def copy_file(self, src: str, dest: str) -> None:
            self.inner.copy_file(src, dest)

        def open_input_stream(self, path: str) -> Any:
            return self.inner.open_input_stream(path)

        def open_input_file(self, path: str) -> Any:
            return self.inner.open_input_file(path)

        def open_output_stream(self, path: str, metadata: Any) -> Any:
            return self.inner.open_output_stream(path, metadata=metadata)

        def open_append_stream(self, path: str, metadata: Any) -> Any:
            return self.inner.open_append_stream(path, metadata=metadata)

    root.mkdir(exist_ok=True)
    return fs.PyFileSystem(NoRename(str(root)))


def test_ray_commits_by_manifest_where_nothing_can_be_renamed(
    ray_cluster: Any, tiny_export: Path, tmp_path: Path, mixed_reference: tuple[Path, Path], monkeypatch: Any
) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from onnxembed.corpus.inputs import CorpusError
    from onnxembed.corpus.ray import embed_corpus_ray

    def not_in_the_driver(*args: Any) -> Any:
        raise AssertionError("the driver read rows of an input file")

    # The workers read with their own copy of the module; the driver's must never read a row.
    monkeypatch.setattr("onnxembed.corpus.ray_io.read_chunks", not_in_the_driver)
    folder, reference = mixed_reference
    filesystem = _no_rename_filesystem(tmp_path / "bucket")
    output = tmp_path / "bucket" / "out"

    def run(**options: Any) -> Any:
        return embed_corpus_ray(folder, "out", tiny_export, rows_per_block=4, filesystem=filesystem, **options)

    # With on_error="fail", the first bad row stops the job and its folder is not left behind.
    with pytest.raises(CorpusError, match=r"a\.txt:4: row id 3: invalid UTF-8 at byte 4"):
        run()
    assert not list(output.glob("part-*"))

    run(on_error="skip", restart=True)
    _assert_same_output(output, reference)
    manifest = json.loads((output / "part-00001" / "_manifest.json").read_text())
    parts = sorted(path.name for path in (output / "part-00001").glob("*.parquet"))
    assert [part["name"] for part in manifest["parts"]] == parts  # exactly the files in the folder
    assert sum(part["rows"] for part in manifest["parts"]) == 14 - 2  # b.jsonl's lines but the 2 blank ones

    # A crashed run: one folder without its manifest (with a stray file in it), and a stray file with a bad
    # row in a committed folder. The first is embedded again; the second is never read into the report.
    (output / "part-00001" / "_manifest.json").unlink()
    stray = pa.table({"id": [7], "embedding": pa.array([None], pa.list_(pa.float32(), 2)), "error": ["stray"]})
    pq.write_table(stray, output / "part-00001" / "stray.parquet")
    pq.write_table(stray, output / "part-00002" / "stray.parquet")
    result = run(on_error="skip")
    assert result.rows_reused == 6 + 5 and result.rows_embedded == 12
    assert not (output / "part-00001" / "stray.parquet").exists()
    assert "stray" not in (output / "_errors.jsonl").read_text()
    (output / "part-00002" / "stray.parquet").unlink()
    _assert_same_output(output, reference)


def test_rows_written_are_checked_before_commit(tmp_path: Path) -> None:
    """What the write tasks say they wrote is read back: a part's footer must hold the rows its task counted,
    all parts the input's rows; a file no task returned (a failed attempt's) is removed."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    from onnxembed.corpus.inputs import CorpusError, InputFile
    from onnxembed.corpus.objectstore import resolve_output
    from onnxembed.corpus.ray_io import check_written

    folder = tmp_path / "part-00000"
    folder.mkdir()
    block = pa.table(
        {"id": [1, 2, 3], "embedding": pa.array([[0.0]] * 3, pa.list_(pa.float32(), 1)), "error": [None] * 3}
    )
    pq.write_table(block, folder / "a.parquet")
    pq.write_table(block.slice(0, 2), folder / "b.parquet")
    pq.write_table(block, folder / "from-a-failed-attempt.parquet")
    out = resolve_output(tmp_path)
    file = InputFile(tmp_path / "in.txt", "text", 0, 0, rows=5)
    with pytest.raises(CorpusError, match="part b.parquet holds 2 rows, 3 written"):
        check_written(
            out, str(folder), [{"name": "a.parquet", "rows": 3}, {"name": "b.parquet", "rows": 3}], file, "fail"
        )
    with pytest.raises(CorpusError, match="Ray wrote 3 rows of 5; nothing committed"):
        check_written(out, str(folder), [{"name": "a.parquet", "rows": 3}], file, "fail")
    written = [{"name": "a.parquet", "rows": 3}, {"name": "b.parquet", "rows": 2}]
    assert check_written(out, str(folder), written, file, "fail") == written
    assert sorted(path.name for path in folder.iterdir()) == ["a.parquet", "b.parquet"]

    bad = block.set_column(2, "error", pa.array([None, "text is null", None], pa.string()))
    pq.write_table(bad, folder / "a.parquet")
    with pytest.raises(CorpusError, match="in.txt: row id 2: text is null"):
        check_written(out, str(folder), written, file, "fail")
    assert check_written(out, str(folder), written, file, "skip") == written


def test_output_uris(tmp_path: Path) -> None:
    """A file:// URI is a local folder (rename commit); an unknown scheme is refused by name; the local
    runner, which only renames, refuses URIs rather than make a folder named "s3:"."""
    from pyarrow import fs

    from onnxembed.corpus import embed_corpus
    from onnxembed.corpus.inputs import CorpusError
    from onnxembed.corpus.objectstore import resolve_output

    assert resolve_output((tmp_path / "out").as_uri()).local == tmp_path / "out"
    subtree = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())
    assert resolve_output("out", subtree).local is None  # no rename through it: the manifest commit
    with pytest.raises(CorpusError, match="nosuchscheme://x: not a path or a URI pyarrow can open"):
        resolve_output("nosuchscheme://x")
    source = write_text(tmp_path / "in.txt", ["a"])
    with pytest.raises(CorpusError, match="a URI is an output of the Ray runner only"):
        embed_corpus(source, "s3://bucket/out", tmp_path / "no-model")
    assert not (Path("s3:")).exists()
