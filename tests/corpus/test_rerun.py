"""Reruns of ``embed_corpus`` on the same OUTPUT: what is refused (and the message says what changed), what
``restart`` removes, crashes between writing a part and committing it, and files in OUTPUT that are not ours.

The oracle is ``Encoder(tiny_export).encode`` on the same texts; ``read_output`` asserts each id once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from onnxembed.corpus import CorpusError, embed_corpus
from tests.corpus.helpers import TEXTS, assert_rows_equal, read_output, write_text

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def expected(tiny_export: Path) -> dict[int, np.ndarray]:
    from onnxembed import Encoder

    return dict(enumerate(Encoder(tiny_export).encode(TEXTS)))


@pytest.fixture
def model_copy(tiny_export: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_export, copy)
    return copy


def _parts(output: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in output.glob("part-*")}


def test_rerun_with_same_settings_adds_nothing(tmp_path: Path, tiny_export: Path, expected: dict) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS)
    output = tmp_path / "out"
    embed_corpus(source, output, tiny_export, chunk_rows=6)
    before = _parts(output)
    result = embed_corpus(source, output, tiny_export, chunk_rows=6)
    assert (result.rows_embedded, result.rows_reused) == (0, len(TEXTS))
    assert _parts(output) == before
    assert_rows_equal(read_output(output), expected)


def test_model_change_refused_then_restart(tmp_path: Path, tiny_export: Path, model_copy: Path) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS)
    output = tmp_path / "out"
    embed_corpus(source, output, tiny_export, chunk_rows=6)
    # An int8 variant added to the model: "auto" would now pick it and mix its vectors with fp32 ones.
    manifest = json.loads((model_copy / "onnxembed.json").read_text())
    manifest["variants"]["int8"] = {**manifest["variants"]["fp32"], "dtype": "int8", "accuracy": {"accepted": True}}
    (model_copy / "onnxembed.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=r"the model changed .*the model variant: was 'fp32', now 'int8'.*--restart"):
        embed_corpus(source, output, model_copy, chunk_rows=6)
    assert json.loads((output / "_job.json").read_text())["model"]["variant"] == "fp32"

    (output / "notes.txt").write_text("mine\n")
    result = embed_corpus(source, output, model_copy, chunk_rows=6, restart=True)
    assert (result.rows_embedded, result.rows_reused) == (len(TEXTS), 0)
    assert json.loads((output / "_job.json").read_text())["model"]["variant"] == "int8"
    assert (output / "notes.txt").read_text() == "mine\n"


def test_variant_change_alone_is_named(tmp_path: Path, model_copy: Path) -> None:
    shutil.copy(model_copy / "onnx" / "model.onnx", model_copy / "onnx" / "other.onnx")
    source = write_text(tmp_path / "in.txt", TEXTS[:4])
    embed_corpus(source, tmp_path / "out", model_copy, variant="fp32")
    with pytest.raises(CorpusError, match=r"differs from this one: the model variant: was 'fp32', now 'other.onnx'\."):
        embed_corpus(source, tmp_path / "out", model_copy, variant="other.onnx")


def test_changed_added_and_removed_inputs_are_named(tmp_path: Path, tiny_export: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_text(folder / "a.txt", TEXTS[:5])
    write_text(folder / "b.txt", TEXTS[5:10])
    output = tmp_path / "out"
    embed_corpus(folder, output, tiny_export)
    # One character in the middle, same size: a size check alone would miss it.
    data = bytearray((folder / "a.txt").read_bytes())
    middle = len(data) // 2
    data[middle] = ord("x") if data[middle] != ord("x") else ord("y")
    (folder / "a.txt").write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=r"input a.txt changed content \(same size\)"):
        embed_corpus(folder, output, tiny_export)
    (folder / "b.txt").unlink()
    write_text(folder / "c.txt", TEXTS[10:12])
    with pytest.raises(CorpusError, match=r"input a.txt changed content.*; input b.txt is gone; input c.txt is new"):
        embed_corpus(folder, output, tiny_export)


def test_job_file_of_an_older_version_is_refused(tmp_path: Path, tiny_export: Path) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS[:3])
    output = tmp_path / "out"
    output.mkdir()
    (output / "_job.json").write_text(json.dumps({"runner": "local", "chunk_rows": 8192, "inputs": [str(source)]}))
    with pytest.raises(CorpusError, match="older onnxembed that did not record the model"):
        embed_corpus(source, output, tiny_export)
    for recorded in ({"format": 2, "model": 5}, {"format": 2, "inputs": [1]}, {"format": 2, "settings": []}):
        (output / "_job.json").write_text(json.dumps(recorded))  # the right format, another shape
        with pytest.raises(CorpusError, match="_job.json is not readable .*rerun with --restart"):
            embed_corpus(source, output, tiny_export)


_CRASHING_RUN = """
import os, sys
import onnxembed.corpus.parts as parts
from onnxembed.corpus import embed_corpus

real_commit, commits = parts.commit, []

def commit(partial, final):
    if len(commits) == 2:
        os._exit(3)  # the process dies after the part is written and fsynced, before its rename
    real_commit(partial, final)
    commits.append(final)

parts.commit = commit
embed_corpus(sys.argv[1], sys.argv[2], sys.argv[3], chunk_rows=5)
"""


def test_crash_between_part_write_and_commit(tmp_path: Path, tiny_export: Path, expected: dict) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS)
    output = tmp_path / "out"
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(_CRASHING_RUN))
    # This checkout's onnxembed, not whichever one the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    completed = subprocess.run(
        [sys.executable, str(script), str(source), str(output), str(tiny_export)], env=env, capture_output=True
    )
    assert completed.returncode == 3, completed.stderr.decode()[-2000:]
    assert sorted(_parts(output)) == ["part-00000-000000.parquet", "part-00000-000001.parquet"]
    stale = [path.name for path in output.iterdir() if path.name.startswith(".part-")]
    assert len(stale) == 1 and stale[0].startswith(".part-00000-000002.parquet.tmp-"), stale

    import pyarrow.parquet as pq

    assert pq.read_table(output).num_rows == 10, "the uncommitted part was read as output"
    result = embed_corpus(source, output, tiny_export, chunk_rows=5)
    assert (result.rows_reused, result.rows_embedded) == (10, len(TEXTS) - 10)
    assert not [path for path in output.iterdir() if path.name.startswith(".")], "a stale temporary file was left"
    assert_rows_equal(read_output(output), expected)


def test_incomplete_part_is_redone(tmp_path: Path, tiny_export: Path, expected: dict) -> None:
    source = write_text(tmp_path / "in.txt", TEXTS)
    output = tmp_path / "out"
    embed_corpus(source, output, tiny_export, chunk_rows=5)
    # What a power cut after an un-fsynced rename leaves: the name, with no (or part of the) data.
    (output / "part-00000-000001.parquet").write_bytes(b"")
    result = embed_corpus(source, output, tiny_export, chunk_rows=5)
    assert (result.rows_reused, result.rows_embedded) == (len(TEXTS) - 5, 5)
    assert_rows_equal(read_output(output), expected)


def test_foreign_files_in_output_are_left_alone_and_not_read(tmp_path: Path, tiny_export: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = write_text(tmp_path / "in.txt", TEXTS[:6])
    output = tmp_path / "out"
    output.mkdir()
    # Someone else's file, with an id that is also ours and an error: neither a duplicate nor a bad row of ours.
    pq.write_table(pa.table({"id": [0], "embedding": [[1.0]], "error": ["theirs"]}), output / "theirs.parquet")
    (output / ".hidden").write_text("x")
    result = embed_corpus(source, output, tiny_export, on_error="skip")
    assert (result.errors, result.duplicates) == ([], [])
    assert (output / "_errors.jsonl").read_text() == ""
    embed_corpus(source, output, tiny_export, on_error="skip", restart=True)
    assert (output / "theirs.parquet").exists() and (output / ".hidden").read_text() == "x"


def test_output_inside_input_is_refused(tmp_path: Path, tiny_export: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write_text(folder / "a.txt", TEXTS[:3])
    for output in (folder / "out", folder, folder / "deep" / "er"):
        with pytest.raises(CorpusError, match="inside INPUT"):
            embed_corpus(folder, output, tiny_export)
    with pytest.raises(CorpusError, match="is INPUT itself"):
        embed_corpus(folder / "a.txt", folder / "a.txt", tiny_export)
    assert sorted(path.name for path in folder.iterdir()) == ["a.txt"]


def test_second_job_on_the_same_output_is_refused(tmp_path: Path, tiny_export: Path) -> None:
    from onnxembed.corpus.job import locked

    source = write_text(tmp_path / "in.txt", TEXTS[:3])
    output = tmp_path / "out"
    with locked(output), pytest.raises(CorpusError, match="another embed-corpus job is writing"):
        embed_corpus(source, output, tiny_export)
    assert embed_corpus(source, output, tiny_export).rows_embedded == 3


def test_part_names_past_their_padding_stay_ours_and_in_order() -> None:
    """Part names are zero-padded to 5 and 6 digits; past 99,999 input files (or 999,999 chunks of one) they are
    longer, and must still be recognised as the job's own (rerun, restart) and be ordered by number."""
    from onnxembed.corpus.job import is_ours
    from onnxembed.corpus.parts import _file_index, part_name, part_order

    names = [part_name(10001, 0), part_name(100000, 0), part_name(10000, 1_000_000), part_name(10000, 2)]
    assert all(is_ours(name) for name in names) and is_ours(part_name(123456))
    assert not is_ours("part-1234-000001.parquet")  # not a width the job writes
    assert sorted(names, key=part_order) == [names[3], names[2], names[0], names[1]]
    assert _file_index(Path(part_name(100000, 1_000_000))) == 100000
    assert _file_index(Path(part_name(123456)) / "x.parquet") == 123456
