"""Attention exported one head at a time: the same numbers as torch's own attention on real rows, and no
intermediate tensor in the graph as large as all heads' scores (what made an 8,192-token ModernBERT text
take 4.6x sentence-transformers' memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnxembed import export  # noqa: E402
from onnxembed.exporter.attention import heads_one_at_a_time, outside_window, padding_bias  # noqa: E402
from onnxembed.manifest import Manifest  # noqa: E402
from tests import decoders, families  # noqa: E402
from tests.replicas import Replica  # noqa: E402

modernbert = families.modernbert
qwen3_embedding = decoders.qwen3_embedding


@pytest.mark.parametrize(("heads", "kv_heads", "half_window"), [(4, 4, None), (4, 2, None), (6, 2, 3)])
def test_heads_one_at_a_time_equals_sdpa(heads: int, kv_heads: int, half_window: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    batch, seq, head_dim = 3, 11, 8
    query = torch.randn(batch, heads, seq, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, seq, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, seq, head_dim, generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[1, 7:] = 0
    attention_mask[2, 2:] = 0
    window = None if half_window is None else outside_window(seq, half_window)

    actual = heads_one_at_a_time(query, key, value, padding_bias(attention_mask, torch.float32), window, 0.3, heads)

    # the oracle: torch's SDPA on a boolean mask of the same keys, grouped heads repeated
    allowed = attention_mask.bool()[:, None, None, :].expand(batch, 1, seq, seq)
    if window is not None:
        allowed = allowed & ~window
    repeat = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        key.repeat_interleave(repeat, dim=1),
        value.repeat_interleave(repeat, dim=1),
        attn_mask=allowed,
        scale=0.3,
    )
    real = attention_mask.bool()
    assert torch.allclose(actual.transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-5)


@pytest.mark.parametrize(("window", "query_blocks"), [(0, 1), (0, 3), (4, 2)])
def test_causal_blocks_equal_sdpa(window: int, query_blocks: int) -> None:
    """Decoders: each query sees itself and the keys before it (the last ``window`` of them in a sliding
    layer), real keys only; left padding as Qwen3-Embedding's tokenizer pads."""
    generator = torch.Generator().manual_seed(1)
    batch, heads, kv_heads, seq, head_dim = 3, 4, 2, 10, 8
    query = torch.randn(batch, heads, seq, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, seq, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, seq, head_dim, generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[1, :4] = 0
    attention_mask[2, :9] = 0

    bias = padding_bias(attention_mask, torch.float32)
    actual = heads_one_at_a_time(query, key, value, bias, None, 0.3, heads, query_blocks, causal_window=window)

    positions = torch.arange(seq)
    allowed = positions[None, :] <= positions[:, None]
    if window:
        allowed = allowed & (positions[None, :] > positions[:, None] - window)
    allowed = allowed[None, None] & attention_mask.bool()[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), attn_mask=allowed, scale=0.3
    )
    real = attention_mask.bool()
    assert torch.allclose(actual.transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-5)


@pytest.mark.parametrize("block_tokens", [None, 32])
def test_modernbert_graph_holds_one_block_of_scores_at_a_time(
    block_tokens: int | None, modernbert: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every intermediate of the exported graph, run on one 1,024-token text, is smaller than the scores of all
    heads together (heads x seq x seq floats); the biggest is one head's, or one block of its query rows
    (max_seq_length 128 in blocks of 32 tokens: 4 blocks). Its vectors are sentence-transformers'."""
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder
    from onnxembed.exporter import attention
    from tests.replicas import MIXED_TEXTS

    if not attention._modernbert_patchable():
        pytest.skip("transformers 5.x: ModernBERT keeps its eager attention (its attention table is gone)")
    blocks = 1
    if block_tokens is not None:
        monkeypatch.setattr(attention, "QUERY_BLOCK_TOKENS", block_tokens)
        blocks = 4
    out = tmp_path / "modernbert"
    export(modernbert.path, out)
    manifest = Manifest.read(out)
    assert manifest.source["attention"] == f"one head at a time, {blocks} query block(s)"
    texts = [*MIXED_TEXTS, "word " * 400]
    expected = SentenceTransformer(str(modernbert.path), device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(Encoder(out).encode(texts, batch_size=4), expected, atol=1e-5, rtol=0)

    floats, values = _intermediates(out, seq=1024)  # long enough that attention scores are the largest tensors
    heads = 4  # tests/families.py's ModernBERT replica
    largest = sorted(floats.items(), key=lambda item: -item[1])[:3]
    assert max(floats.values()) == 1024 // blocks * 1024, largest
    # nothing else (the (seq, seq) bool window, say) comes near all heads' float scores either
    assert all(value.nbytes < heads * 1024 * 1024 * 4 // blocks for value in values.values())


def test_decoder_graph_holds_one_block_of_scores_at_a_time(
    qwen3_embedding: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Qwen3 replica (causal, left-padded, grouped-query attention; max_seq_length 64) exported in query
    blocks of 16 tokens: its largest intermediate at 1,024 tokens is one head's block of scores, not all
    heads' (batch, heads, seq, seq), and no (seq, seq) causal mask is built; its vectors are
    sentence-transformers'."""
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder
    from onnxembed.exporter import attention
    from tests.replicas import MIXED_TEXTS

    monkeypatch.setattr(attention, "QUERY_BLOCK_TOKENS", 16)
    out = tmp_path / "qwen3"
    export(qwen3_embedding.path, out, quantize=None)
    manifest = Manifest.read(out)
    blocks = attention.query_blocks(manifest.max_seq_length)
    assert blocks > 1
    assert manifest.source["attention"] == f"one head at a time, {blocks} query block(s)"
    texts = [*MIXED_TEXTS, "word " * 300]
    expected = SentenceTransformer(str(qwen3_embedding.path), device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(Encoder(out).encode(texts, batch_size=4), expected, atol=1e-5, rtol=0)

    seq = 1024  # the graph runs at any length; at this one attention's tensors outgrow the MLP's
    floats, values = _intermediates(out, seq)
    rows = -(-seq // blocks)
    largest = sorted(floats.items(), key=lambda item: -item[1])[:3]
    assert max(floats.values()) <= rows * seq, largest
    heads = 4  # tests/decoders.py
    assert all(value.nbytes < heads * seq * seq * 4 // blocks for value in values.values())
    assert all(value.size < seq * seq for value in values.values()), "a (seq, seq) mask is built"


def _intermediates(out: Path, seq: int) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Every intermediate of ``out``'s fp32 graph run on one ``seq``-token text: float element counts by name,
    and all values by name."""
    import onnxruntime as ort

    graph = onnx.load(str(out / "onnx" / "model.onnx"))
    produced = {name for node in graph.graph.node for name in node.output if name}
    graph.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(produced))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.full((1, seq), 7, dtype=np.int64), "attention_mask": np.ones((1, seq), dtype=np.int64)}
    names = [output.name for output in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds), strict=True))
    floats = {name: value.size for name, value in values.items() if value.dtype == np.float32}
    return floats, values
