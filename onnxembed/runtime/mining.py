"""paraphrase_mining(encoder, sentences): encode, then find the most similar pairs (kernels/search.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from onnxembed.kernels.search import ScoreFunction, paraphrase_mining_embeddings

if TYPE_CHECKING:
    from onnxembed.runtime.encoder import Encoder


def paraphrase_mining(
    encoder: Encoder,
    sentences: str | Iterable[str],
    *,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    top_k: int = 100,
    max_pairs: int = 500_000,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100_000,
    score_function: ScoreFunction = "cosine",
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[tuple[float, int, int]]:
    """(score, i, j) pairs with i < j, most similar first, as sentence-transformers' paraphrase_mining.
    The options are keyword-only (sentence-transformers' positional order differs); a str is one sentence,
    as in ``encode``, so it has no pairs."""
    embeddings = encoder.encode(
        [sentences] if isinstance(sentences, str) else sentences,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        truncate_dim=truncate_dim,
        prompt_name=prompt_name,
        prompt=prompt,
    )
    return paraphrase_mining_embeddings(
        embeddings,
        top_k=top_k,
        max_pairs=max_pairs,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
        score_function=score_function,
    )
