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
