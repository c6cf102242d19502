"""Check an exported graph against its source, loudly.

In scope: (1) the ONNX graph against the torch encoder on padded batches whose shapes differ from the
export sample, compared on real tokens; (2) the whole onnxembed pipeline (tokenize, graph, pool,
normalize) against ``SentenceTransformer(src).encode`` on varied text, when sentence-transformers can
load the source here.
Not in scope: speed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxembed.exporter.errors import ExportVerificationError

logger = logging.getLogger(__name__)

# Varied text: empty, one character, scripts the seed models serve, emoji, and a text far past any max_seq_length.
VERIFY_TEXTS = (
    "",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好，我们去公园散步吧。",
    "상법 제651조의 내용은 무엇인가?",
    "සීගිරිය යනු ලොව පුරා ප්‍රසිද්ධ ඓතිහාසික ස්ථානයකි",
    "Emoji count too 😀🎉👍🏽",
    " ".join(["Sentence embeddings map text to dense vectors for search."] * 80),
)


def attention_reach(config: Any) -> int:
    """Tokens past which a family's attention changes kind: ModernBERT's local window, Gemma3's sliding
    window, T5's farthest relative-position bucket (0: none)."""
    reaches = (
        getattr(config, name, None) for name in ("local_attention", "sliding_window", "relative_attention_max_distance")
    )
    return max((reach for reach in reaches if isinstance(reach, int)), default=0)


def _graph_batches(
    input_names: tuple[str, ...],
    vocab_size: int,
    pad_token_id: int,
    max_len: int,
    reach: int = 0,
    left_padded: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Batches of 3 and 1 rows with lengths unlike the export sample (2 x 8), and, where attention has a
    reach (a local window), a padded batch whose long row runs past it; padded on the side the tokenizer pads
    (left for Qwen3-Embedding: its real tokens then sit at shifted positions, which the graph must carry)."""
    rng = np.random.default_rng(1)
    shapes = [(min(13, max_len), 6, 1), (min(max_len, 64),)]
    if reach + 8 > 64 and max_len > 64:
        shapes.append((min(max_len, reach + 8), 5))
    batches = []
    for lengths in shapes:
        longest = max(lengths)
        input_ids = np.full((len(lengths), longest), pad_token_id, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for row, length in enumerate(lengths):
            real = slice(longest - length, longest) if left_padded else slice(0, length)
            input_ids[row, real] = rng.integers(5, vocab_size, length)
            attention_mask[row, real] = 1
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
        batches.append({name: arrays[name] for name in input_names})
    return batches


@torch.no_grad()
def verify_graph(
    model: Any,  # transformers.PreTrainedModel
    onnx_file: Path,
    input_names: tuple[str, ...],
    pad_token_id: int,
    max_len: int,
    atol: float,
    left_padded: bool = False,
) -> float:
    """Max abs difference of token embeddings on real tokens; raises ExportVerificationError over ``atol``."""
    import onnxruntime as ort

    from onnxembed.runtime.session import quiet_options

    session = ort.InferenceSession(str(onnx_file), sess_options=quiet_options(), providers=["CPUExecutionProvider"])
    worst = 0.0
    reach = attention_reach(model.config)
    for batch in _graph_batches(input_names, model.config.vocab_size, pad_token_id, max_len, reach, left_padded):
        expected = model(**{name: torch.from_numpy(array) for name, array in batch.items()}).last_hidden_state.numpy()
        (actual,) = session.run(None, batch)
        real = batch["attention_mask"].astype(bool)
        worst = max(worst, float(np.abs(actual[real] - expected[real]).max()))
    if not worst <= atol:
        raise ExportVerificationError(
            f"{onnx_file} disagrees with the torch model on padded batches: max abs diff {worst:.3g} > {atol:g}"
        )
    return worst


def compare_embeddings(expected: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Min cosine and max abs difference between two (n, dim) embedding arrays."""
    if expected.shape != actual.shape:
        raise ExportVerificationError(
            f"onnxembed gives embeddings of shape {actual.shape}, sentence-transformers {expected.shape}"
        )
    expected = expected.astype(np.float64)
    actual = actual.astype(np.float64)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    cosine = (expected * actual).sum(axis=1) / np.maximum(norms, 1e-12)
    # Two zero vectors (a StaticEmbedding's empty text) agree; the abs check still compares them.
    both_zero = ~expected.any(axis=1) & ~actual.any(axis=1)
    cosine[both_zero] = 1.0
    return {"min_cosine": float(cosine.min()), "max_abs_diff": float(np.abs(expected - actual).max())}


def verify_pipeline(src: Path, out_dir: Path, variant: str, min_cosine: float, atol: float) -> dict[str, Any]:
    """Compare onnxembed's Encoder with SentenceTransformer(src).encode on VERIFY_TEXTS (and each prompt)."""
    from onnxembed.runtime import Encoder

    try:
        from sentence_transformers import SentenceTransformer, __version__

        reference = SentenceTransformer(str(src), device="cpu")
    except Exception as error:  # a missing optional dependency (peft) or an incompatible version
        warnings.warn(f"sentence-transformers could not load {src} here, pipeline not verified: {error}", stacklevel=2)
        return {"sentence_transformers": f"not checked: {type(error).__name__}: {error}"}
    encoder = Encoder(out_dir, provider="cpu", variant=variant)
    if encoder.manifest.source.get("max_seq_length_capped_from") == reference.max_seq_length:
        # the export lowered max_seq_length on purpose (and warned): compare on the texts it keeps
        reference.max_seq_length = encoder.manifest.max_seq_length
    report: dict[str, Any] = {"sentence_transformers": __version__, "texts": len(VERIFY_TEXTS)}
    worst = {"min_cosine": 1.0, "max_abs_diff": 0.0}
    for prompt_name in (None, *encoder.prompts):
        expected = reference.encode(list(VERIFY_TEXTS), prompt_name=prompt_name, convert_to_numpy=True)
        actual = encoder.encode(list(VERIFY_TEXTS), prompt_name=prompt_name)
        scores = compare_embeddings(expected, actual)
        worst = {
            "min_cosine": min(worst["min_cosine"], scores["min_cosine"]),
            "max_abs_diff": max(worst["max_abs_diff"], scores["max_abs_diff"]),
        }
    report.update(worst)
    if worst["min_cosine"] < min_cosine or worst["max_abs_diff"] > atol:
        raise ExportVerificationError(
            f"{out_dir} does not reproduce SentenceTransformer({src}).encode: min cosine {worst['min_cosine']:.7f} "
            f"(need >= {min_cosine}), max abs diff {worst['max_abs_diff']:.3g} (need <= {atol:g})"
        )
    return report
