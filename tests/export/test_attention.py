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
from onnxembed.exporter.attention import (  # noqa: E402
    heads_one_at_a_time,
    looped_attention,
    outside_window,
    padding_bias,
    step_rows,
)
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


def _sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    scale: float,
    half_window: int | None,
    causal_window: int | None,
) -> torch.Tensor:
    """The oracle: torch's SDPA on a boolean mask of the keys each query may see, grouped heads repeated."""
    seq = query.shape[2]
    positions = torch.arange(seq)
    queries, keys = positions[:, None], positions[None, :]
    allowed = attention_mask.bool()[:, None, None, :]
    if half_window is not None:
        allowed = allowed & ((keys - queries).abs() <= half_window)
    if causal_window is not None:
        allowed = allowed & (keys <= queries)
        if causal_window:
            allowed = allowed & (keys > queries - causal_window)
    repeat = query.shape[1] // key.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        query,
        key.repeat_interleave(repeat, dim=1),
        value.repeat_interleave(repeat, dim=1),
        attn_mask=allowed,
        scale=scale,
    )


# (heads, kv_heads, half_window, causal_window): bidirectional, ModernBERT's local window, causal, a decoder's
# sliding layer; grouped-query attention in most
LOOP_CASES = [(4, 4, None, None), (6, 2, 3, None), (4, 2, None, 0), (4, 1, None, 4)]


def _attention_inputs(seq: int, heads: int, kv_heads: int, seed: int) -> tuple[torch.Tensor, ...]:
    """query, key, value and a 0/1 mask for 3 texts of ``seq`` tokens: one full, one padded on the right, one
    on the left (as Qwen3-Embedding's tokenizer pads)."""
    generator = torch.Generator().manual_seed(seed)
    batch, head_dim = 3, 8
    query = torch.randn(batch, heads, seq, head_dim, generator=generator)
    key = torch.randn(batch, kv_heads, seq, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, seq, head_dim, generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[1, seq * 2 // 3 :] = 0
    attention_mask[2, : seq // 2] = 0
    return query, key, value, attention_mask


@pytest.mark.parametrize(("heads", "kv_heads", "half_window", "causal_window"), LOOP_CASES)
@pytest.mark.parametrize("seq", [3, 4, 11])
def test_looped_attention_equals_sdpa(
    heads: int, kv_heads: int, half_window: int | None, causal_window: int | None, seq: int
) -> None:
    """Steps of 4 query rows: one partial step, one exact, three with a partial last one."""
    query, key, value, attention_mask = _attention_inputs(seq, heads, kv_heads, seed=seq)
    bias = padding_bias(attention_mask, torch.float32)
    actual = looped_attention(query, key, value, bias, 0.3, 4, half_window=half_window, causal_window=causal_window)
    expected = _sdpa(query, key, value, attention_mask, 0.3, half_window, causal_window)
    real = attention_mask.bool()
    assert actual.shape == expected.shape
    assert torch.allclose(actual.transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-5)


def test_looped_attention_keeps_rows_that_see_no_key_finite_in_float16() -> None:
    """A left-padded text's padding rows see only padding or future keys in the first steps; with scores below
    -16, float16's min added to each is -inf, and a row of -inf would be NaN (reaching real rows as 0 x NaN in
    the next layer). Every row stays finite and the real rows equal SDPA."""
    seq, rows = 8, 4
    query = torch.full((1, 2, seq, 8), 3.0, dtype=torch.float16)
    key = torch.full((1, 2, seq, 8), -3.0, dtype=torch.float16)  # every score 0.3 x -72 = -21.6
    value = torch.randn(1, 2, seq, 8, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    attention_mask = torch.ones(1, seq, dtype=torch.int64)
    attention_mask[0, :5] = 0
    bias = padding_bias(attention_mask, torch.float16)
    actual = looped_attention(query, key, value, bias, 0.3, rows, causal_window=0)
    assert torch.isfinite(actual).all()
    expected = _sdpa(query.float(), key.float(), value.float(), attention_mask, 0.3, None, 0)
    real = attention_mask.bool()
    assert torch.allclose(actual.float().transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-2)


class _Looped(torch.nn.Module):
    def __init__(self, rows: int, half_window: int | None, causal_window: int | None) -> None:
        super().__init__()
        self.rows, self.half_window, self.causal_window = rows, half_window, causal_window

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        bias = padding_bias(attention_mask, torch.float32)
        return looped_attention(query, key, value, bias, 0.3, self.rows, self.half_window, self.causal_window)


@pytest.mark.parametrize(("heads", "kv_heads", "half_window", "causal_window"), LOOP_CASES)
def test_looped_attention_exports_a_loop_that_follows_the_length(
    heads: int, kv_heads: int, half_window: int | None, causal_window: int | None, tmp_path: Path
) -> None:
    """Exported with dynamo, the steps are one ONNX Scan (no unrolled copies), and the graph run at lengths
    of one step, exactly four, and many with a partial last one equals SDPA on every real row."""
    import onnxruntime as ort

    rows = 4
    sample = _attention_inputs(rows + 3, heads, kv_heads, seed=0)  # two steps: one would fix the count
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = ({0: batch, 2: seq}, {0: batch, 2: seq}, {0: batch, 2: seq}, {0: batch, 1: seq})
    names = ["query", "key", "value", "attention_mask"]
    program = torch.onnx.export(
        _Looped(rows, half_window, causal_window),
        sample,
        input_names=names,
        dynamic_shapes=shapes,
        opset_version=18,
        dynamo=True,
        optimize=True,
    )
    assert program is not None
    program.save(str(tmp_path / "looped.onnx"))
    graph = onnx.load(str(tmp_path / "looped.onnx"))
    assert [node.op_type for node in graph.graph.node].count("Scan") == 1
    assert not [node for node in graph.graph.node if node.op_type == "MatMul"], "attention outside the loop"

    session = ort.InferenceSession(str(tmp_path / "looped.onnx"), providers=["CPUExecutionProvider"])
    for seq_len in (2, 4, 19):
        inputs = _attention_inputs(seq_len, heads, kv_heads, seed=seq_len)
        (actual,) = session.run(None, {name: array.numpy() for name, array in zip(names, inputs, strict=True)})
        expected = _sdpa(*inputs, 0.3, half_window, causal_window).numpy()
        real = inputs[3].bool().numpy()
        np.testing.assert_allclose(actual.transpose(0, 2, 1, 3)[real], expected.transpose(0, 2, 1, 3)[real], atol=1e-5)


def test_step_rows_fit_the_budget() -> None:
    """Qwen3-Embedding-0.6B (16 heads, 32,768 tokens) and e5-mistral (32 heads): one step's scores for one
    text stay within STEP_SCORE_BYTES; models with fewer heads or tokens take LOOP_STEP_ROWS rows
    (ModernBERT-base, 12 heads at 8,192)."""
    from onnxembed.exporter import attention

    for heads, seq in [(16, 32768), (32, 32768), (8, 131072)]:
        rows = step_rows(heads, seq)
        assert heads * rows * seq * 4 <= attention.STEP_SCORE_BYTES < 2 * heads * rows * seq * 4
    assert step_rows(16, 32768) == 128
    assert step_rows(12, 8192) == attention.LOOP_STEP_ROWS == 128
    # at most half of max_seq_length (the export traces two steps), never over LOOP_STEP_ROWS
    assert step_rows(12, 128) == 64
    assert step_rows(1, 4096) == attention.LOOP_STEP_ROWS
    assert step_rows(1, 1 << 20) <= attention.LOOP_STEP_ROWS


@pytest.mark.parametrize(("block_tokens", "rows"), [(None, 64), (16, 16)])
def test_modernbert_graph_loops_over_query_blocks(
    block_tokens: int | None, rows: int, modernbert: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exported with auto, which takes dynamo (the loop's exporter) for ModernBERT, in steps of half its
    max_seq_length (128) or of LOOP_STEP_ROWS: its vectors are sentence-transformers' on texts of one step
    and of several, padded; run on one 1,024-token text, the largest tensor of a step is one block of all
    heads' scores (heads x rows x seq floats), and nothing outside the loop holds (seq, seq) values."""
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder
    from onnxembed.exporter import attention
    from tests.replicas import MIXED_TEXTS

    if not attention._modernbert_patchable():
        pytest.skip("transformers 5.x: ModernBERT keeps its eager attention (its attention table is gone)")
    if block_tokens is not None:
        monkeypatch.setattr(attention, "LOOP_STEP_ROWS", block_tokens)
    out = tmp_path / "modernbert"
    export(modernbert.path, out)
    manifest = Manifest.read(out)
    assert manifest.source["attention"] == f"query blocks of {rows} rows, all heads, in a graph loop"
    assert manifest.source["exporter"] == "dynamo"
    texts = [*MIXED_TEXTS, "word " * 400]
    expected = SentenceTransformer(str(modernbert.path), device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(Encoder(out).encode(texts, batch_size=4), expected, atol=1e-5, rtol=0)

    seq, heads, half_window = 1024, 4, 4  # tests/families.py's ModernBERT replica
    outside, step = _loop_intermediates(out, seq)
    assert max(step.values()) == heads * rows * seq, sorted(step.items(), key=lambda item: -item[1])[:3]
    assert max(outside.values()) < seq * seq
    # the second layer is local: a step scores only the keys within the window of its rows
    _, step = _loop_intermediates(out, seq, step_index=3, loop=1)
    largest = sorted(step.items(), key=lambda item: -item[1])[:3]
    assert max(step.values()) == heads * rows * (rows + 2 * half_window), largest


def test_modernbert_torchscript_keeps_unrolled_blocks(
    modernbert: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exporter="torchscript" (no longer auto's choice for ModernBERT) cannot carry the loop: it unrolls one
    head and one block of 32 rows at a time (4 blocks at max_seq_length 128), and its largest tensor at 1,024
    tokens is one such block."""
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder
    from onnxembed.exporter import attention
    from tests.replicas import MIXED_TEXTS

    if not attention._modernbert_patchable():
        pytest.skip("transformers 5.x: ModernBERT keeps its eager attention (its attention table is gone)")
    monkeypatch.setattr(attention, "QUERY_BLOCK_TOKENS", 32)
    out = tmp_path / "modernbert"
    export(modernbert.path, out, exporter="torchscript")
    assert Manifest.read(out).source["exporter"] == "torchscript"
    assert Manifest.read(out).source["attention"] == "one head at a time, 4 query block(s)"
    texts = [*MIXED_TEXTS, "word " * 400]
    expected = SentenceTransformer(str(modernbert.path), device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(Encoder(out).encode(texts, batch_size=4), expected, atol=1e-5, rtol=0)

    floats, values = _intermediates(out, seq=1024)
    assert max(floats.values()) == 1024 // 4 * 1024
    assert all(value.nbytes < 4 * 1024 * 1024 * 4 // 4 for value in values.values())


def test_decoder_graph_loops_over_query_blocks(
    qwen3_embedding: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Qwen3 replica (causal, left-padded, grouped-query attention; max_seq_length 128) exported in steps of
    8 query rows: its vectors are sentence-transformers' on texts of one step and of several; at 1,024 tokens
    a step's largest tensor is one block of all heads' scores, and no (seq, seq) causal mask is built; at 5
    tokens a step is 5 rows."""
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder
    from onnxembed.exporter import attention
    from tests.replicas import MIXED_TEXTS

    monkeypatch.setattr(attention, "LOOP_STEP_ROWS", 8)
    out = tmp_path / "qwen3"
    export(qwen3_embedding.path, out, quantize=None)
    manifest = Manifest.read(out)
    assert manifest.source["attention"] == "query blocks of 8 rows, all heads, in a graph loop"
    texts = [*MIXED_TEXTS, "word " * 300]
    expected = SentenceTransformer(str(qwen3_embedding.path), device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(Encoder(out).encode(texts, batch_size=4), expected, atol=1e-5, rtol=0)

    seq, heads, head_dim = 1024, 4, 16  # tests/decoders.py
    outside, step = _loop_intermediates(out, seq, step_index=-1)
    assert max(step.values()) == heads * 8 * seq, sorted(step.items(), key=lambda item: -item[1])[:3]
    assert max(outside.values()) < seq * seq, "a (seq, seq) tensor outside the loop"
    # causal: a step scores only the keys up to its last row, so the first step's scores are (8, 8) a head
    _, step = _loop_intermediates(out, seq, step_index=0)
    assert max(step.values()) == heads * 8 * head_dim, sorted(step.items(), key=lambda item: -item[1])[:3]
    _, step = _loop_intermediates(out, seq, step_index=63)
    assert max(step.values()) == heads * 8 * 512, sorted(step.items(), key=lambda item: -item[1])[:3]
    # a text shorter than a step runs a step of its own length: no rows repeating its last query
    short = 5
    _, step = _loop_intermediates(out, short)
    assert max(step.values()) == heads * short * max(short, head_dim), sorted(step.items(), key=lambda item: -item[1])


def _loop_intermediates(
    out: Path, seq: int, step_index: int = 0, loop: int = 0
) -> tuple[dict[str, int], dict[str, int]]:
    """Element counts by name of ``out``'s fp32 graph run on one ``seq``-token text: every value outside the
    loops, and every value of loop number ``loop`` (a layer's) run for its step ``step_index`` (fed the outer
    values it reads, as onnxruntime's Scan would)."""
    import onnxruntime as ort

    model = onnx.load(str(out / "onnx" / "model.onnx"))
    loops = [node for node in model.graph.node if node.op_type == "Scan"]
    assert loops, "no loop in the graph"
    floats, values = _intermediates(out, seq)
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    known = {**inits, **values}

    body = next(attr.g for attr in loops[loop].attribute if attr.name == "body")
    produced = {name for node in body.node for name in node.output} | {value.name for value in body.input}
    produced |= {init.name for init in body.initializer}
    outer = sorted({name for node in body.node for name in node.input if name and name not in produced})
    carry_init, starts = (known[name] for name in loops[loop].input)
    feeds = {
        body.input[0].name: carry_init,
        body.input[1].name: np.asarray(starts[step_index]),
        **{name: known[name] for name in outer},
    }
    step_graph = onnx.helper.make_graph(
        list(body.node),
        "step",
        [*body.input, *(onnx.ValueInfoProto(name=name) for name in outer)],
        [onnx.ValueInfoProto(name=name) for name in sorted({n for node in body.node for n in node.output if n})],
        list(body.initializer),
    )
    for name in outer:  # a graph input needs its type
        step_graph.input[-len(outer) + outer.index(name)].CopyFrom(
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(feeds[name].dtype), None)
        )
    step_model = onnx.helper.make_model(step_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    session = ort.InferenceSession(step_model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    step = {
        name: value.size
        for name, value in zip(names, session.run(names, feeds), strict=True)
        if value.dtype == np.float32
    }
    return floats, step


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
