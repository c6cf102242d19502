"""Faster variants: built, measured against fp32 on held-out text, recorded, chosen by the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxembed import Encoder, export
from onnxembed.exporter.accuracy import compare
from tests import decoders
from tests.replicas import CORPUS, DATA, MIXED_TEXTS, Replica

qwen3_embedding = decoders.qwen3_embedding

CALIBRATION = DATA / "multilingual.txt"


@pytest.fixture(scope="module")
def with_variants(chinese_bert: Replica, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variants") / "out"
    export(chinese_bert.path, out, optimize=True, quantize="int8", int8_min_cosine=0.9, calibration_file=CALIBRATION)
    return out


def test_variants_are_recorded_with_their_accuracy(with_variants: Path) -> None:
    manifest = json.loads((with_variants / "onnxembed.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "optimized", "int8"}
    int8 = manifest["variants"]["int8"]
    # 7-bit weights exactly where this CPU's int8 kernel saturates on full-range ones, named as
    # sentence-transformers names them
    from onnxembed.runtime.int8 import u8s8_saturates

    assert int8["accuracy"]["reduce_range"] == u8s8_saturates()
    full_range_names = ("onnx/model_qint8_avx512_vnni.onnx", "onnx/model_qint8_arm64.onnx")
    expected_names = ("onnx/model_qint8_avx2.onnx",) if u8s8_saturates() else full_range_names
    assert int8["file"] in expected_names
    assert (with_variants / int8["file"]).is_file()
    # and the file holds what the manifest says: 7-bit weights peak at 64, full-range ones at 127
    assert int8_weight_peak(with_variants / int8["file"]) == (64 if int8["accuracy"]["reduce_range"] else 127)
    accuracy = int8["accuracy"]
    assert accuracy["p1_cosine"] >= accuracy["budget_p1_cosine"] == 0.9 and accuracy["accepted"]
    assert accuracy["tried"][-1]["recipe"] == accuracy["recipe"]
    assert not list((with_variants / "onnx").glob("int8_candidate_*"))  # rejected candidates are removed
    assert manifest["variants"]["optimized"]["file"] == "onnx/model_O2.onnx"


def test_recorded_accuracy_holds_on_other_text(with_variants: Path, chinese_bert: Replica) -> None:
    """Re-measured on text the export never saw, against sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer

    texts = [*MIXED_TEXTS, *CORPUS[20:]]
    reference = SentenceTransformer(str(chinese_bert.path), device="cpu").encode(texts)
    recorded = json.loads((with_variants / "onnxembed.json").read_text())["variants"]
    optimized = Encoder(with_variants, variant="optimized").encode(texts)
    assert compare(reference, optimized)["min_cosine"] >= 0.99999
    int8 = compare(reference, Encoder(with_variants, variant="int8").encode(texts))
    # a tiny random model quantizes far worse than a trained one; the recorded p1 is a budget, not a promise
    assert int8["mean_cosine"] >= recorded["int8"]["accuracy"]["p1_cosine"] - 0.05


def test_auto_picks_int8_on_cpu_only_when_it_met_its_budget(with_variants: Path, chinese_bert, tmp_path) -> None:
    assert Encoder(with_variants).variant == "int8"
    assert Encoder(with_variants, variant="model_O2.onnx").variant == "optimized"
    with pytest.warns(UserWarning, match="no int8 recipe met"):
        export(
            chinese_bert.path, tmp_path / "strict", quantize="int8", int8_min_cosine=1.0, calibration_file=CALIBRATION
        )
    recorded = json.loads((tmp_path / "strict" / "onnxembed.json").read_text())["variants"]["int8"]["accuracy"]
    assert recorded["accepted"] is False
    assert Encoder(tmp_path / "strict").variant == "fp32"


def test_sentence_transformers_loads_the_int8_file(with_variants: Path) -> None:
    pytest.importorskip("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer

    file = Path(json.loads((with_variants / "onnxembed.json").read_text())["variants"]["int8"]["file"]).name
    theirs = SentenceTransformer(str(with_variants), backend="onnx", model_kwargs={"file_name": file}, device="cpu")
    # Dynamic quantization scales activations per batch, so compare text by text (batch_size=1).
    ours = Encoder(with_variants, variant="int8").encode(MIXED_TEXTS, batch_size=1)
    np.testing.assert_allclose(ours, theirs.encode(MIXED_TEXTS, batch_size=1), atol=1e-5, rtol=0)


def test_int8_one_text_per_run_depends_on_the_text_alone(with_variants: Path) -> None:
    """The documented way to int8 vectors that do not move with their neighbours: batch_size=1."""
    encoder = Encoder(with_variants, variant="int8")
    texts = [*MIXED_TEXTS, *CORPUS[:20]]
    alone = np.concatenate([encoder.encode([text]) for text in texts])
    np.testing.assert_array_equal(encoder.encode(texts, batch_size=1), alone)
    np.testing.assert_array_equal(encoder.encode(texts[::-1], batch_size=1), alone[::-1])


def int8_weight_peak(graph: Path) -> int:
    """The largest |weight| among an int8 graph's quantized weights."""
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(graph)).graph.initializer]
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.dtype == np.int8 and w.size > 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int4"}, "quantize"),
        ({"int8_min_cosine": 1.5}, "int8_min"),
        ({"int8_target": "avx2"}, "add it"),  # alone it would be ignored without a word
        ({"quantize": "int8", "int8_target": "avx512"}, "int8_target must be one of"),
    ],
)
def test_bad_variant_options(chinese_bert: Replica, tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        export(chinese_bert.path, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("saturates", "machine", "asked", "made_for"),
    [
        (True, "x86_64", "host", "avx2"),
        (True, "x86_64", "avx2", "avx2"),
        (False, "x86_64", "host", "avx512_vnni"),
        (False, "AMD64", "avx2", "avx2"),
        (False, "aarch64", "host", "arm64"),
        (False, "x86_64", "arm64", "arm64"),
    ],
)
def test_int8_target_follows_the_kernel(monkeypatch, saturates: bool, machine: str, asked: str, made_for: str) -> None:
    from onnxembed.exporter import quantize
    from onnxembed.runtime import int8

    monkeypatch.setattr(int8, "u8s8_saturates", lambda: saturates)
    monkeypatch.setattr(quantize.platform, "machine", lambda: machine)
    assert quantize.int8_target(asked) == made_for
    assert quantize.int8_file_name(made_for) == f"onnx/model_qint8_{made_for}.onnx"


@pytest.mark.parametrize("asked", ["avx512_vnni", "arm64"])
def test_full_range_int8_is_refused_before_the_export_where_it_cannot_be_measured(
    monkeypatch, chinese_bert: Replica, tmp_path: Path, asked: str
) -> None:
    from onnxembed.runtime import int8

    monkeypatch.setattr(int8, "u8s8_saturates", lambda: True)
    with pytest.raises(ValueError, match="saturates.*int8_target='avx2'"):
        export(chinese_bert.path, tmp_path / "out", quantize="int8", int8_target=asked)
    assert not (tmp_path / "out").exists()


def test_avx2_int8_made_on_a_vnni_host_has_7_bit_weights(monkeypatch, chinese_bert: Replica, tmp_path: Path) -> None:
    """An export for a fleet of CPUs without VNNI, made where full range would be the default."""
    from onnxembed.runtime import int8

    monkeypatch.setattr(int8, "u8s8_saturates", lambda: False)
    manifest = export(
        chinese_bert.path,
        tmp_path / "out",
        quantize="int8",
        int8_target="avx2",
        int8_min_cosine=0.9,
        calibration_file=CALIBRATION,
    )
    variant = manifest.variants["int8"]
    assert variant.file == "onnx/model_qint8_avx2.onnx" and variant.accuracy["reduce_range"] is True
    assert int8_weight_peak(tmp_path / "out" / variant.file) == 64
    monkeypatch.undo()  # the real kernel: 7-bit weights load on any CPU, and give what was recorded
    encoder = Encoder(tmp_path / "out")
    assert encoder.variant == "int8"
    reference = Encoder(tmp_path / "out", variant="fp32").encode(CORPUS[:40])
    assert compare(reference, encoder.encode(CORPUS[:40]))["mean_cosine"] >= variant.accuracy["p1_cosine"] - 0.05


class _ClockedEncoder:
    """Encodes nothing; each text advances a fake clock by ``per_text`` seconds."""

    def __init__(self, per_text: float) -> None:
        self.per_text, self.now, self.calls = per_text, 0.0, []

    def clock(self) -> float:
        return self.now

    def encode(self, texts: list[str]) -> None:
        self.calls.append(len(texts))
        self.now += self.per_text * len(texts)


@pytest.mark.parametrize(("per_text", "expected"), [(0.5, 64), (0.05, 200), (0.0001, 512)])
def test_variants_are_timed_on_as_many_texts_as_fit_the_pass(monkeypatch, per_text: float, expected: int) -> None:
    # a large model's speed ratio is timed on fewer texts, not 512 four times per variant
    from onnxembed.exporter import accuracy

    encoder = _ClockedEncoder(per_text)
    monkeypatch.setattr(accuracy.time, "perf_counter", encoder.clock)
    texts = [f"text {k}" for k in range(512)]
    chosen = accuracy.timing_texts(encoder, texts, seconds=10.0)
    assert chosen == texts[:expected]
    assert encoder.calls == [64, 64]


def test_smoothing_an_input_keeps_the_fp32_graph_exact(chinese_bert: Replica, tmp_path: Path) -> None:
    """smooth_inputs divides each FFN input's channels by a scale and multiplies the weights' rows by it: the
    fp32 graph it writes gives the same token embeddings, one Mul per layer more, with weights that changed."""
    import onnx
    import onnxruntime as ort

    from onnxembed.exporter import quantize
    from onnxembed.exporter.variants import _calibration_feeds

    out = tmp_path / "out"
    export(chinese_bert.path, out, quantize=None)
    fp32 = Encoder(out, variant="fp32")
    feeds = _calibration_feeds(fp32, CORPUS)
    source, smoothed = out / "onnx" / "model.onnx", tmp_path / "smoothed.onnx"
    quantize.smooth_inputs(source, smoothed, ("ffn_input",), feeds, alpha=0.7)

    before, after = onnx.load(str(source)), onnx.load(str(smoothed))
    layers = len(quantize.matmul_groups(before)["ffn_input"])
    muls = [len([node for node in graph.graph.node if node.op_type == "Mul"]) for graph in (before, after)]
    assert layers >= 2 and muls[1] == muls[0] + layers
    assert len(after.graph.initializer) == len(before.graph.initializer) + layers  # replaced weights are gone
    changed = [init for init in after.graph.initializer if init.name.endswith("_smoothed")]
    original = {init.name: onnx.numpy_helper.to_array(init) for init in before.graph.initializer}
    for init in changed:
        weight = onnx.numpy_helper.to_array(init)
        assert not any(np.allclose(weight, value) for value in original.values() if value.shape == weight.shape)
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (source, smoothed)]
    for feed in [*feeds, *_calibration_feeds(fp32, MIXED_TEXTS)]:
        expected, actual = (session.run(None, feed)[0] for session in sessions)
        # real tokens only: a left-padded decoder's padding rows see no real key, and nothing reads them
        real = feed["attention_mask"].astype(bool)
        np.testing.assert_allclose(actual[real], expected[real], atol=1e-4, rtol=1e-4)


def _reference_sentences(limit: int) -> list[str]:
    """Sentences of Python's language reference (pydoc_data): English prose the calibration never reads (it
    reads the docstrings of 18 standard library packages)."""
    import re
    from pydoc_data.topics import topics

    found: dict[str, None] = {}
    for topic in topics.values():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(topic.split())):
            if 6 <= len(sentence.split()) <= 40 and sentence[0].isupper():
                found.setdefault(sentence)
    return list(found)[:limit]


@pytest.mark.slow
def test_real_minilm_int8_meets_the_budget_on_unseen_text(minilm: Replica, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2, real weights: the int8 variant the exporter chooses keeps the int8 budget (mean cosine
    >= 0.996, p1 >= 0.99, top-10 overlap >= 0.93) against sentence-transformers' own fp32 vectors, on 400
    sentences the calibration never saw, in the runtime's batches."""
    from sentence_transformers import SentenceTransformer

    texts = _reference_sentences(400)
    assert len(texts) == 400
    manifest = export(minilm.path, tmp_path / "out", quantize="int8")
    assert manifest.variants["int8"].accuracy["accepted"]
    reference = SentenceTransformer(str(minilm.path), device="cpu").encode(texts)
    measured = compare(reference, Encoder(tmp_path / "out", variant="int8").encode(texts))
    assert measured["mean_cosine"] >= 0.996 and measured["p1_cosine"] >= 0.99, measured
    assert measured["top10_overlap"] >= 0.93, measured


@pytest.mark.parametrize("family", ["chinese_bert", "qwen3_embedding"])
def test_outlier_split_is_exact_and_zeroes_the_ffn_output_at_its_source(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """split_outliers on the FFN MatMuls of a BERT (GELU(x W1 + b1)) and a Qwen3 (SiLU(x Wg) * x Wu) replica:
    the fp32 graph it writes gives the same token embeddings. The FFN output's input is zeroed at its source
    (those columns of W1, b1 or Wg/Wu are 0, a copy of the activation makes the outliers: no mask pass over
    it), while the FFN input, a norm's output the residual also reads, keeps the mask."""
    import onnx
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    from onnxembed.exporter import quantize
    from onnxembed.exporter.variants import _calibration_feeds

    replica: Replica = request.getfixturevalue(family)
    # distinct biases and norms, as trained models have: the replicas' zero biases are one shared constant in
    # the graph, which the split must not zero for one layer (it keeps the mask there)
    model = SentenceTransformer(str(replica.path), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save(str(tmp_path / "src"))
    out = tmp_path / "out"
    export(tmp_path / "src", out, quantize=None)
    fp32 = Encoder(out, variant="fp32")
    feeds = _calibration_feeds(fp32, CORPUS)
    source, split = out / "onnx" / "model.onnx", tmp_path / "split.onnx"
    kept = quantize.split_outliers(source, split, ("ffn_output", "ffn_input"), feeds, 4)

    before, after = onnx.load(str(source)), onnx.load(str(split))
    groups = quantize.matmul_groups(before)
    ffn_inputs = {name for name in groups["ffn_input"]}
    layers = len(groups["ffn_output"])
    masks = [node for node in after.graph.node if node.op_type == "Mul" and node.name.endswith("_mask")]
    reads = {node.input[0] for node in before.graph.node if node.name in ffn_inputs}
    assert layers >= 2 and {node.input[0] for node in masks} == reads  # masks on the FFN inputs only
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in after.graph.initializer}
    zeroed = [name for name, weight in weights.items() if weight.ndim == 2 and not weight[:, :].any(axis=0).all()]
    assert len(zeroed) >= layers, zeroed  # W1 (BERT) or Wg and Wu (Qwen3) of every layer lost 4 columns
    assert len(kept) >= 2 * layers  # the outlier MatMuls of both splits stay fp32
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (source, split)]
    for feed in [*feeds, *_calibration_feeds(fp32, MIXED_TEXTS)]:
        expected, actual = (session.run(None, feed)[0] for session in sessions)
        # real tokens only: a left-padded decoder's padding rows see no real key, and nothing reads them
        real = feed["attention_mask"].astype(bool)
        np.testing.assert_allclose(actual[real], expected[real], atol=1e-4, rtol=1e-4)
