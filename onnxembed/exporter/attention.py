"""Attention that traces to a graph whose memory grows with one head's scores, not all of them.

In scope: swapping a family's eager attention for the length of one ``torch.onnx.export`` call.
Not in scope: the model outside the export (verification runs the unpatched torch model, so it checks the
rewrite too), speed fusions (onnxruntime's optimizer).

Why: eager attention materializes (batch, heads, seq, seq) float scores several times per layer, plus
(batch, 1, seq, seq) masks that live through the whole forward. For one 8,192-token ModernBERT-base text that
is 3.2 GB per scores tensor, and the graph peaked at 4.6x sentence-transformers' RSS (torch SDPA computes
attention in blocks). Two forms, by exporter:

- dynamo (the default wherever this applies): a loop in the graph (torch's scan higher-order op, an ONNX Scan)
  over blocks of query rows, all heads per step. The graph holds one step whatever max_seq_length is, and the
  number of steps follows the length it runs at (a 30-token batch runs one). Unrolling the blocks instead made
  a Qwen3-Embedding-0.6B graph (32,768 tokens: 16 blocks x 16 heads x 28 layers) that torch.export had not
  traced after 50 minutes.
- TorchScript (asked for explicitly): it cannot carry the loop, so heads and query blocks are unrolled.

Either way the masks shrink to (batch, 1, 1, seq) for padding; causality and windows are built per block.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from onnxembed.exporter.config import DECODER_MODEL_TYPES

# Query rows per block of one head's scores at the model's max_seq_length (unrolled, TorchScript): a model
# that takes 8,192 tokens computes each head in 4 blocks, (batch, 2048, 8192) floats (64 MiB a text) at a time.
QUERY_BLOCK_TOKENS = 2048
# One loop step's scores, all heads, for one text at max_seq_length: the loop takes as many rows as fit,
# and at most LOOP_STEP_ROWS: a local-window step scores rows + window keys, so short steps waste less, and
# ModernBERT-base at 8,192 tokens peaked lower at 128 rows than at 512, no slower
# (docs/performance.md#long-texts).
STEP_SCORE_BYTES = 256 << 20
LOOP_STEP_ROWS = 128


def heads_one_at_a_time(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_bias: torch.Tensor,
    outside_window: torch.Tensor | None,
    scale: float,
    num_heads: int,
    query_blocks: int = 1,
    causal_window: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + key_bias) v, one head and one block of query rows at a time.

    query (batch, heads, seq, head_dim); key and value (batch, kv_heads, seq, head_dim) with heads a
    multiple of kv_heads (grouped-query attention); key_bias (batch, 1, 1, seq) float, 0 for real keys and
    the dtype's min for padding; outside_window (seq, seq) bool, True where a key is beyond a query's
    window, or None; query_blocks: how many row blocks each head's scores are computed in (the graph's
    largest tensor is then (batch, seq / query_blocks, seq)); causal_window: None for bidirectional
    attention, else causal, and with a window of that many keys when it is not 0 (a decoder's sliding layer).
    Returns (batch, heads, seq, head_dim).

    Equals eager attention on every real query row: a masked score there is exp(min - max) = 0 either way.
    """
    group = num_heads // key.shape[1]
    lowest = torch.finfo(query.dtype).min
    bias = key_bias[:, 0]  # (batch, 1, seq): broadcasts over query rows
    # Scaling the query, not the scores, saves one pass over (batch, seq, seq) per head; exact when the scale
    # is a power of two (head_dim 64 or 256), within float rounding otherwise.
    query = query * scale
    seq = query.shape[2]
    # Block bounds are computed from the traced length, so they follow whatever length the graph is run at.
    bounds = [(seq * block) // query_blocks for block in range(query_blocks + 1)]
    blocks = list(zip(bounds[:-1], bounds[1:], strict=True))
    # A causal block's mask is (block rows, seq) bool, built once per block and shared by every head.
    hidden = [None if causal_window is None else _causal_block(start, end, seq, causal_window) for start, end in blocks]
    outputs = []
    for head in range(num_heads):
        rows = []
        for (start, end), future in zip(blocks, hidden, strict=True):
            scores = torch.matmul(query[:, head, start:end], key[:, head // group].transpose(1, 2))
            scores = scores + bias
            if outside_window is not None:
                scores = scores.masked_fill(outside_window[start:end], lowest)
            if future is not None:
                scores = scores.masked_fill(future, lowest)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            rows.append(torch.matmul(probs, value[:, head // group]))
        outputs.append(rows[0] if query_blocks == 1 else torch.cat(rows, dim=1))
    return torch.stack(outputs, dim=1)


def step_rows(num_heads: int, max_seq_length: int) -> int:
    """Query rows per loop step: a power of two, at most LOOP_STEP_ROWS, whose (heads, rows,
    max_seq_length) float scores fit STEP_SCORE_BYTES (Qwen3-Embedding-0.6B, 16 heads at 32,768 tokens: 128
    rows; e5-mistral, 32 heads at 32,768: 64), and at most half of max_seq_length: the export traces two
    steps (see onnx_export), which must stay a length the model takes."""
    budget = STEP_SCORE_BYTES // (4 * num_heads * max(1, max_seq_length))
    fit = max(1, min(budget, max_seq_length // 2))
    return int(min(LOOP_STEP_ROWS, 1 << (fit.bit_length() - 1)))


# What the loop adds to a hidden key's score: half float16's min, not the dtype's, because the fp16 variant
# converts the graph's constants, and float16's min plus a score below -16 is -inf. A step in which a row sees
# no real key (a left-padded text's padding rows) would then give that row NaN, which the next layer's real
# rows read as 0 x NaN. exp(this - the row's max) is 0 in float32 as exp(min) is, so fp32 results are the same.
HIDDEN_KEY_BIAS = -32752.0


def looped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_bias: torch.Tensor,
    scale: float,
    rows: int,
    half_window: int | None = None,
    causal_window: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + key_bias) v computed ``rows`` query rows at a time, all heads together, in a
    loop the exporter writes as an ONNX Scan.

    query (batch, heads, seq, head_dim); key and value (batch, kv_heads, seq, head_dim), heads a multiple of
    kv_heads; key_bias (batch, 1, 1, seq) float, 0 for real keys and the dtype's min for padding;
    half_window: bidirectional, a key further than this from its query is hidden (ModernBERT's local layers);
    causal_window: None for bidirectional, else causal, with a window of that many keys when not 0 (a
    decoder's sliding layer). Returns (batch, heads, seq, head_dim), equal to eager attention on every real
    query row.
    """
    from torch._higher_order_ops.scan import scan

    batch, heads, seq, head_dim = query.shape
    kv_heads = key.shape[1]
    # Grouped heads as (batch, kv_heads, group, rows, head_dim) against (batch, kv_heads, 1, ...) keys: the
    # matmul broadcasts the group, so keys and values are never repeated per head.
    # The scan refuses closed-over tensors that alias one another (ModernBERT's q, k and v are views of one
    # qkv tensor): each is a copy, small beside one step's scores.
    grouped = (query * scale).reshape(batch, kv_heads, heads // kv_heads, seq, head_dim)
    keys = key[:, :, None].clone()
    values = value[:, :, None].clone()
    bias = key_bias[:, :, None].clamp(min=HIDDEN_KEY_BIAS)  # (batch, 1, 1, 1, seq)
    positions = torch.arange(seq)
    last = positions[-1:].clone()
    # A text shorter than a step runs one step of its own length, not ``rows`` rows of which most repeat its
    # last query: the graph's step size follows the length it runs at.
    rows = torch.sym_min(rows, seq)
    offsets = torch.arange(rows)

    def step(carry: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wanted = start + offsets
        # the last step's rows past the end repeat the last query; their outputs are dropped below
        block = grouped.index_select(3, torch.minimum(wanted, last))
        visible = _visible_keys(start, rows, seq, half_window, causal_window)
        key_bias = bias[..., visible]
        hidden = _hidden_keys(wanted[:, None], positions[None, visible], half_window, causal_window)
        if hidden is not None:
            # one (batch, rows, keys) bias for padding and causality, added in one pass over the scores
            # (heads times larger); a where, not a sum, so that two biases never add up
            key_bias = torch.where(hidden, HIDDEN_KEY_BIAS, key_bias)
        scores = torch.matmul(block, keys[:, :, :, visible].transpose(3, 4)) + key_bias
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        output = torch.matmul(probs, values[:, :, :, visible])
        return carry.clone(), output.reshape(batch, heads, rows, head_dim)

    # the scan needs a carry; a one-element tensor costs nothing
    _, outputs = scan(step, torch.zeros(1), torch.arange(0, seq, rows))
    # (steps, batch, heads, rows, head_dim) -> (batch, heads, steps * rows, head_dim), cut back to seq rows
    stacked = outputs.permute(1, 2, 0, 3, 4).reshape(batch, heads, -1, head_dim)
    return stacked.index_select(2, positions)


def _visible_keys(
    start: torch.Tensor, rows: Any, seq: Any, half_window: int | None, causal_window: int | None
) -> slice:
    """The keys that some query row of the step starting at ``start`` may see. A causal step skips the keys
    after its last row (half of a long text's attention), a windowed one those beyond its window; each step's
    scores are then (rows, visible keys), a length that differs per step, which the ONNX Scan carries as a
    Slice on the step's start. Bidirectional attention without a window sees every key (no Slice)."""
    if half_window is None and causal_window is None:
        return slice(None)
    at = start.item()
    torch._check(at >= 0)
    torch._check(at < seq)
    if half_window is not None:
        first, end = at - half_window, at + rows + half_window
    else:
        first, end = (at - causal_window + 1 if causal_window else 0), at + rows
    return slice(torch.sym_max(first, 0), torch.sym_min(end, seq))


def _hidden_keys(
    queries: torch.Tensor, keys: torch.Tensor, half_window: int | None, causal_window: int | None
) -> torch.Tensor | None:
    """Broadcast (queries, keys) bool: True where the key is hidden from the query, or None if none is."""
    hidden = None
    if half_window is not None:
        hidden = (keys > queries + half_window) | (keys < queries - half_window)
    if causal_window is not None:
        hidden = keys > queries
        if causal_window:
            hidden = hidden | (keys <= queries - causal_window)
    return hidden


def _causal_block(start: Any, end: Any, seq: Any, window: int) -> torch.Tensor:
    """(end - start, seq) bool: True where a key is after its query, or (window > 0) window or more keys
    before it, as transformers' causal and sliding-window masks hide them."""
    keys = torch.arange(seq)[None, :]
    queries = torch.arange(start, end)[:, None]
    hidden = keys > queries
    if window:
        hidden = hidden | (keys <= queries - window)
    return hidden


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) 0/1 mask -> (batch, 1, 1, seq) additive bias: 0 for real keys, dtype's min for padding."""
    padded = attention_mask[:, None, None, :] == 0
    return padded.to(dtype) * torch.finfo(dtype).min


def outside_window(seq_len: int, half_window: int) -> torch.Tensor:
    """(seq, seq) bool: True where |query - key| > half_window. Compared through broadcasting, so no
    (seq, seq) integer distance is ever built (8 bytes a pair: 512 MiB at 8,192 tokens)."""
    keys = torch.arange(seq_len)[None, :]
    queries = keys.transpose(0, 1)
    return (keys > queries + half_window) | (keys < queries - half_window)


def _modernbert_masks(self: Any, attention_mask: torch.Tensor, output_attentions: bool) -> tuple[Any, Any]:
    # The loop builds each step's window itself; the unrolled form slices one (seq, seq) bool.
    half_window = self.config.local_attention // 2
    window = None if self.lean_plan.looped else outside_window(attention_mask.shape[1], half_window)
    return padding_bias(attention_mask, self.dtype), window


def _modernbert_attention(
    module: Any,
    qkv: torch.Tensor,
    attention_mask: torch.Tensor,
    sliding_window_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    local_attention: tuple[int, int],
    bs: int,
    dim: int,
    **_kwargs: Any,
) -> tuple[torch.Tensor]:
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    # As transformers' eager ModernBERT attention up to the scores; the masks come from _modernbert_masks.
    cos, sin = module.rotary_emb(qkv, position_ids=position_ids)
    query, key, value = qkv.transpose(3, 1).unbind(dim=2)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    local = local_attention != (-1, -1)
    plan: LeanPlan = module.lean_plan
    scale = module.head_dim**-0.5
    if plan.looped:
        half = local_attention[1] if local else None
        output = looped_attention(query, key, value, attention_mask, scale, plan.rows, half_window=half)
    else:
        window = sliding_window_mask if local else None
        output = heads_one_at_a_time(query, key, value, attention_mask, window, scale, module.num_heads, plan.blocks)
    return (output.transpose(1, 2).reshape(bs, -1, dim),)


@contextlib.contextmanager
def _modernbert(model: Any, plan: LeanPlan) -> Iterator[None]:
    from transformers.models.modernbert import modeling_modernbert

    functions = modeling_modernbert.MODERNBERT_ATTENTION_FUNCTION
    eager = functions["eager"]
    functions["eager"] = _modernbert_attention
    # the base model may sit inside a head (ModernBertForSequenceClassification.model)
    bases: list[Any] = [module for module in model.modules() if isinstance(module, modeling_modernbert.ModernBertModel)]
    for base in bases:
        base._update_attention_mask = _modernbert_masks.__get__(base)
    attentions: list[Any] = [
        module for module in model.modules() if isinstance(module, modeling_modernbert.ModernBertAttention)
    ]
    for module in bases + attentions:
        module.lean_plan = plan
    try:
        yield
    finally:
        functions["eager"] = eager
        for base in bases:
            del base._update_attention_mask
        for module in bases + attentions:
            del module.lean_plan


def _modernbert_patchable() -> bool:
    """transformers 4.x dispatches ModernBERT's attention through its own table, which this patches; 5.x
    goes through the shared attention interface and builds other masks, and keeps its eager attention."""
    from transformers.models.modernbert import modeling_modernbert

    return hasattr(modeling_modernbert, "MODERNBERT_ATTENTION_FUNCTION")


def _decoder_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **_kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """In place of a decoder's eager_attention_forward: attention_mask is the padding bias that
    _padding_bias_only gave; causality (and the sliding window) is built per query block."""
    if attention_mask is None:
        raise RuntimeError("the lean decoder attention needs the padding bias; none was given")
    plan: LeanPlan = module.lean_plan
    window = sliding_window or 0
    if plan.looped:
        output = looped_attention(query, key, value, attention_mask, scaling, plan.rows, causal_window=window)
    else:
        heads = query.shape[1]
        output = heads_one_at_a_time(
            query, key, value, attention_mask, None, scaling, heads, plan.blocks, causal_window=window
        )
    return output.transpose(1, 2).contiguous(), None


def _padding_bias_only(config: Any, *args: Any, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    # In place of transformers' create_causal_mask: a (batch, 1, 1, seq) bias, not a (batch, 1, seq, seq) mask.
    embeds = kwargs.get("input_embeds", kwargs.get("inputs_embeds"))
    dtype = embeds.dtype if embeds is not None else torch.float32
    return padding_bias(attention_mask, dtype)


_MASK_FACTORIES = ("create_causal_mask", "create_sliding_window_causal_mask")


@contextlib.contextmanager
def _decoder(model: Any, plan: LeanPlan) -> Iterator[None]:
    import importlib

    model_type = model.config.model_type
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    saved = {
        name: getattr(modeling, name)
        for name in ("eager_attention_forward", *_MASK_FACTORIES)
        if hasattr(modeling, name)
    }
    attentions = [module for module in model.modules() if hasattr(module, "num_key_value_groups")]
    setattr(modeling, "eager_attention_forward", _decoder_attention)  # noqa: B010 (a module of any family)
    for name in _MASK_FACTORIES:
        if name in saved:
            setattr(modeling, name, _padding_bias_only)
    for attention in attentions:
        attention.lean_plan = plan
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(modeling, name, function)
        for attention in attentions:
            del attention.lean_plan


def _decoder_patchable(model_type: str) -> Any:
    """The decoders build their masks through module-level functions and dispatch eager attention through a
    module-level eager_attention_forward (transformers 4.57 and 5.x alike); both are what this patches, and a
    version without them keeps its own attention (patching one without the other would lose causality)."""

    def patchable() -> bool:
        import importlib

        modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        return hasattr(modeling, "eager_attention_forward") and hasattr(modeling, "create_causal_mask")

    return patchable


_FAMILIES = {
    "modernbert": (_modernbert, _modernbert_patchable),
    **{model_type: (_decoder, _decoder_patchable(model_type)) for model_type in DECODER_MODEL_TYPES},
}


def query_blocks(max_seq_length: int) -> int:
    """Row blocks per head, unrolled, for a model that takes ``max_seq_length`` tokens."""
    return max(1, -(-max_seq_length // QUERY_BLOCK_TOKENS))


@dataclasses.dataclass(frozen=True)
class LeanPlan:
    """How the patched attention computes: looped (``rows`` query rows a step, all heads) or unrolled
    (each head in ``blocks`` query blocks)."""

    looped: bool
    rows: int = 0
    blocks: int = 1

    def describe(self) -> str:
        if self.looped:
            return f"query blocks of {self.rows} rows, all heads, in a graph loop"
        return f"one head at a time, {self.blocks} query block(s)"


def lean_family(model: Any) -> bool:
    """Whether ``model`` (eager attention) gets the lean attention in an export."""
    family = _FAMILIES.get(getattr(model.config, "model_type", ""))
    return family is not None and model.config._attn_implementation == "eager" and family[1]()


def loop_rows(model: Any, max_seq_length: int) -> int:
    """The looped attention's rows per step for ``model``."""
    return step_rows(int(model.config.num_attention_heads), max_seq_length)


@contextlib.contextmanager
def lean_attention(model: Any, max_seq_length: int, looped: bool = True) -> Iterator[LeanPlan | None]:
    """Within the block, ``model`` (eager attention) runs the lean attention when its family has one:
    ``looped`` (for dynamo) or unrolled (for TorchScript). Yields its plan, or None (the family's own
    attention)."""
    if not lean_family(model):
        yield None
        return
    patch = _FAMILIES[model.config.model_type][0]
    if looped:
        plan = LeanPlan(True, rows=loop_rows(model, max_seq_length))
    else:
        plan = LeanPlan(False, blocks=query_blocks(max_seq_length))
    with patch(model, plan):
        yield plan
