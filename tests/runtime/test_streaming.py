"""encode_iter and the .npy stream writer: bounded chunks, input order, same vectors as sentence-transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder
from onnxembed.npy_stream import NpyWriter
from tests.replicas import CORPUS, MIXED_TEXTS

TEXTS = [*MIXED_TEXTS, *CORPUS]


@pytest.fixture(scope="module")
def expected(chinese_bert) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(chinese_bert.path), device="cpu").encode(TEXTS)


def test_encode_iter_yields_blocks_in_order(tiny_export: Path, expected: np.ndarray) -> None:
    blocks = list(Encoder(tiny_export).encode_iter((text for text in TEXTS), chunk_size=7, batch_size=3))
    assert [len(block) for block in blocks] == [7] * (len(TEXTS) // 7) + ([len(TEXTS) % 7] if len(TEXTS) % 7 else [])
    np.testing.assert_allclose(np.concatenate(blocks), expected, atol=1e-4, rtol=0)


def test_encode_iter_names_the_global_index(tiny_export: Path) -> None:
    stream = Encoder(tiny_export).encode_iter(["a"] * 10 + [None], chunk_size=4)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"sentences\[10\] is NoneType"):
        list(stream)


def test_encode_iter_prompts_as_encode_and_warns_at_the_callers_line(tiny_export: Path) -> None:
    encoder = Encoder(tiny_export)
    with pytest.warns(UserWarning, match="both prompt and prompt_name") as seen:
        blocks = list(encoder.encode_iter(TEXTS, chunk_size=5, prompt="query: ", prompt_name="nope"))
    assert {warning.filename for warning in seen} == {__file__}  # not encoder.py's loop
    # chunks of 5 batch the texts otherwise than one call does, which moves fp32 results by rounding on some
    # CPUs (1.2e-7 on a Zen 4); a prompt dropped or doubled moves them by far more
    np.testing.assert_allclose(np.concatenate(blocks), encoder.encode(TEXTS, prompt="query: "), atol=1e-6, rtol=0)
    assert np.abs(np.concatenate(blocks) - encoder.encode(TEXTS)).max() > 1e-3  # the prompt does change them
    with pytest.raises(ValueError, match="prompt_name 'nope' is not one of the model's prompts"):
        next(encoder.encode_iter(TEXTS, prompt_name="nope"))


def test_encode_iter_refuses_per_chunk_ranges(tiny_export: Path) -> None:
    with pytest.raises(ValueError, match="calibration_embeddings"):
        next(Encoder(tiny_export).encode_iter(["a"], precision="int8"))


def test_npy_writer_round_trip(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32)
    with NpyWriter(tmp_path / "x.npy", 7) as writer:
        writer.write(rows[:3])
        writer.write(rows[3:])
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), rows)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy", mmap_mode="r"), rows)
    with NpyWriter(tmp_path / "empty.npy", 4, np.uint8):
        pass
    empty = np.load(tmp_path / "empty.npy")
    assert empty.shape == (0, 4) and empty.dtype == np.uint8
    with NpyWriter(tmp_path / "y.npy", 7) as writer, pytest.raises(ValueError, match=r"\(k, 7\) float32"):
        writer.write(rows[:, :5])


def test_cli_streams_packed_bits(tiny_export: Path, chinese_bert, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [text.replace("\n", " ") for text in TEXTS]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "onnxembed", "encode", str(tiny_export), str(tmp_path / "in.txt")]
    subprocess.run([*command, "-o", str(tmp_path / "out.npy"), "--precision", "ubinary"], check=True, cwd=tmp_path)
    expected = SentenceTransformer(str(chinese_bert.path), device="cpu").encode(texts, precision="ubinary")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.txt", "out.npy"]


def test_encode_cli_ends_lines_at_newlines_only(tiny_export: Path, chinese_bert, tmp_path: Path) -> None:
    """A lone carriage return stays inside its line (as embed-corpus reads it); CRLF endings are stripped.
    Through the file argument and stdin alike."""
    from sentence_transformers import SentenceTransformer

    raw = b"first line\r\nsecond \r part of the same line\nthird line\n"
    (tmp_path / "in.txt").write_bytes(raw)
    expected = SentenceTransformer(str(chinese_bert.path), device="cpu").encode(
        ["first line", "second \r part of the same line", "third line"]
    )
    command = [sys.executable, "-m", "onnxembed", "encode", str(tiny_export)]
    subprocess.run([*command, str(tmp_path / "in.txt"), "-o", "file.npy", "--no-progress"], check=True, cwd=tmp_path)
    subprocess.run([*command, "-o", "stdin.npy", "--no-progress"], input=raw, check=True, cwd=tmp_path)
    for name in ("file.npy", "stdin.npy"):
        np.testing.assert_allclose(np.load(tmp_path / name), expected, atol=1e-5)
