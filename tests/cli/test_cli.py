"""The ``onnxembed`` command: info, encode (file and stdin), export, one-line errors, --help.

The oracle for embeddings and model facts is sentence-transformers itself, never onnxembed's Encoder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxembed.cli import main
from tests.replicas import LONG_TEXT, MIXED_TEXTS, Replica

# An empty line in the middle, Chinese, Korean, a line far over max_seq_length, spaces only.
STDIN_TEXTS = ["first line", "", "我想买一个羽毛球拍，有什么推荐吗？", LONG_TEXT, "상법 제651조의 내용은?", " "]


@pytest.fixture(scope="module")
def reference(chinese_bert: Replica):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(chinese_bert.path), device="cpu")


def _assert_same(expected: np.ndarray, actual: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    cosine = (expected * actual).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1))
    assert cosine.min() >= 0.99999, f"min cosine {cosine.min()}"
    assert np.abs(expected - actual).max() <= 1e-4, f"max abs diff {np.abs(expected - actual).max()}"


def _pooling_mode(pooling) -> str:
    """sentence-transformers' Pooling mode: `pooling_mode` since 5.x, `get_pooling_mode_str()` before."""
    mode = getattr(pooling, "pooling_mode", None) or pooling.get_pooling_mode_str()
    return mode if isinstance(mode, str) else "+".join(mode)


def _info_fields(text: str) -> dict[str, str]:
    """`onnxembed info` output as {label: value}, e.g. {"dim": "32", "variant fp32": "onnx/model.onnx [...]"}."""
    fields = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        fields[label.strip()] = value.strip()
    return fields


def _run_module(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m onnxembed ARGS` in `cwd`, stdin given as UTF-8 bytes."""
    return subprocess.run(
        [sys.executable, "-m", "onnxembed", *args],
        input=None if stdin is None else stdin.encode("utf-8"),
        capture_output=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_info_prints_dim_pooling_max_seq_length_and_accuracy(tiny_export: Path, reference, capsys) -> None:
    assert main(["info", str(tiny_export)]) == 0
    fields = _info_fields(capsys.readouterr().out)
    assert fields["dim"] == str(reference.get_sentence_embedding_dimension())
    assert f"Pooling ({_pooling_mode(reference[1])})" in fields["modules"]
    assert fields["max_seq_length"].split()[0] == str(reference.max_seq_length)
    accuracy = re.search(r"min_cosine ([0-9.e-]+).*max_abs_diff ([0-9.e-]+)", fields["variant fp32"])
    assert accuracy, fields["variant fp32"]
    assert 0.99999 <= float(accuracy.group(1)) <= 1.0 + 1e-6
    assert 0.0 <= float(accuracy.group(2)) <= 1e-4


def test_info_names_a_variant_whose_file_is_gone(tiny_export: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_export, copy)
    (copy / "onnx" / "model.onnx").unlink()
    assert main(["info", str(copy)]) == 0
    assert "MISSING" in _info_fields(capsys.readouterr().out)["variant fp32"]


def test_info_json_is_the_manifest(tiny_export: Path, reference, capsys) -> None:
    assert main(["info", str(tiny_export), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["dim"] == reference.get_sentence_embedding_dimension()
    assert manifest["max_seq_length"] == reference.max_seq_length
    assert manifest["variants"]["fp32"]["accuracy"]["min_cosine"] >= 0.99999


def test_encode_file_matches_sentence_transformers(tiny_export: Path, reference, tmp_path: Path) -> None:
    texts = ["", *MIXED_TEXTS, ""]  # empty first and last lines too
    input_file = tmp_path / "texts.txt"
    input_file.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    output = tmp_path / "out.npy"
    assert main(["encode", str(tiny_export), str(input_file), "-o", str(output), "--batch-size", "5"]) == 0
    embeddings = np.load(output)
    assert embeddings.shape == (len(texts), reference.get_sentence_embedding_dimension())
    _assert_same(reference.encode(texts), embeddings)


def test_encode_reads_stdin(tiny_export: Path, reference, tmp_path: Path) -> None:
    output = tmp_path / "stdin.npy"
    result = _run_module(
        ["encode", str(tiny_export), "-o", str(output), "--no-progress"], tmp_path, stdin="\n".join(STDIN_TEXTS) + "\n"
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"{len(STDIN_TEXTS)} x {reference.get_sentence_embedding_dimension()}" in stderr
    _assert_same(reference.encode(STDIN_TEXTS), np.load(output))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stdin.npy"]  # nothing else written in cwd


def test_export_then_info(chinese_bert: Replica, reference, tmp_path: Path, capsys) -> None:
    out = tmp_path / "exported"
    assert main(["export", str(chinese_bert.path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"dim {reference.get_sentence_embedding_dimension()}" in printed
    assert "verified against sentence-transformers" in printed and "min cosine" in printed
    assert (out / "onnx" / "model.onnx").is_file()
    assert main(["info", str(out)]) == 0
    fields = _info_fields(capsys.readouterr().out)
    assert fields["dim"] == str(reference.get_sentence_embedding_dimension())
    assert fields["architecture"].startswith("BertModel")


def test_export_passes_int8_target_on(chinese_bert: Replica, tmp_path: Path, capsys) -> None:
    from onnxembed.cli import _build_parser
    from onnxembed.exporter.quantize import INT8_TARGETS

    export = _build_parser()._subparsers._group_actions[0].choices["export"]  # type: ignore[union-attr]
    (action,) = [action for action in export._actions if action.dest == "int8_target"]
    assert tuple(action.choices) == INT8_TARGETS
    # refused by export() itself (without --quantize it would be ignored), so the CLI handed it over
    assert main(["export", str(chinese_bert.path), str(tmp_path / "out"), "--int8-target", "avx2"]) == 1
    assert "int8_target='avx2'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _missing_model(tiny_export: Path, tmp_path: Path) -> list[str]:
    return ["info", str(tmp_path / "no-such-model")]


def _missing_model_encode(tiny_export: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "texts.txt").write_text("hello\n", encoding="utf-8")
    return ["encode", str(tmp_path / "no-such-model"), str(tmp_path / "texts.txt"), "-o", str(tmp_path / "o.npy")]


def _missing_input(tiny_export: Path, tmp_path: Path) -> list[str]:
    return ["encode", str(tiny_export), str(tmp_path / "no-such-file.txt"), "-o", str(tmp_path / "o.npy")]


def _not_a_sentence_transformer(tiny_export: Path, tmp_path: Path) -> list[str]:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}", encoding="utf-8")
    return ["export", str(plain), str(tmp_path / "out")]


def _unknown_provider(tiny_export: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "texts.txt").write_text("hello\n", encoding="utf-8")
    output = str(tmp_path / "o.npy")
    return ["encode", str(tiny_export), str(tmp_path / "texts.txt"), "-o", output, "--provider", "nope"]


def _output_is_the_input(tiny_export: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "texts.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(tmp_path / "texts.txt")  # the input read through a link is the input too
    return ["encode", str(tiny_export), str(tmp_path / "link.txt"), "-o", str(tmp_path / "texts.txt")]


def _output_folder_missing(tiny_export: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "texts.txt").write_text("hello\n", encoding="utf-8")
    return ["encode", str(tiny_export), str(tmp_path / "texts.txt"), "-o", str(tmp_path / "no-such-dir" / "o.npy")]


ERRORS = {
    "missing model dir": (_missing_model, "no-such-model"),
    "missing model dir (encode)": (_missing_model_encode, "no-such-model"),
    "missing input file": (_missing_input, "no-such-file.txt"),
    "not a SentenceTransformer": (_not_a_sentence_transformer, "modules.json"),
    "unknown provider": (_unknown_provider, "nope"),
    "output folder missing": (_output_folder_missing, "the folder"),
    "output is the input": (_output_is_the_input, "is the input file"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_exit_1(case: str, tiny_export: Path, tmp_path: Path, capsys) -> None:
    build_argv, named = ERRORS[case]
    argv = build_argv(tiny_export, tmp_path)
    assert main(argv) == 1
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"onnxembed {argv[0]}: error:"), stderr
    assert named in stderr  # the message says what was wrong
    assert "Traceback" not in stderr
    assert not (tmp_path / "o.npy").exists()
    if (tmp_path / "texts.txt").exists():  # the input is never touched
        assert (tmp_path / "texts.txt").read_text(encoding="utf-8") == "hello\n"


def test_encode_refuses_to_overwrite_the_file_stdin_reads(tiny_export: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n", encoding="utf-8")
    with open(texts, "rb") as stdin:  # onnxembed encode M -o texts.txt < texts.txt
        result = subprocess.run(
            [sys.executable, "-m", "onnxembed", "encode", str(tiny_export), "-o", str(texts)],
            stdin=stdin,
            capture_output=True,
            cwd=tmp_path,
            timeout=300,
            check=False,
        )
    assert result.returncode == 1 and b"is the input file" in result.stderr, result.stderr
    assert texts.read_text(encoding="utf-8") == "hello\n"


def test_encode_reads_a_pipe_named_as_input(tiny_export: Path, tmp_path: Path, reference) -> None:
    """A FIFO (as /dev/stdin or <(...) are) is read once, as it comes: not refused, not counted ahead."""
    import os
    import threading

    fifo = tmp_path / "texts.fifo"
    os.mkfifo(fifo)
    texts = ["first line", "second line", "third"]
    writer = threading.Thread(target=lambda: fifo.write_text("\n".join(texts) + "\n", encoding="utf-8"))
    writer.start()
    assert main(["encode", str(tiny_export), str(fifo), "-o", str(tmp_path / "o.npy"), "--no-progress"]) == 0
    writer.join()
    _assert_same(reference.encode(texts), np.load(tmp_path / "o.npy"))


def test_error_from_python_m_is_one_line(tiny_export: Path, tmp_path: Path) -> None:
    result = _run_module(_unknown_provider(tiny_export, tmp_path), tmp_path)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1
    assert stderr.splitlines() == [stderr.strip()] and stderr.startswith("onnxembed encode: error:"), stderr
    assert "available" in stderr


@pytest.mark.parametrize("command", [[], ["export"], ["encode"], ["info"]])
def test_help_exits_0(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(['onnxembed', *command])}")
