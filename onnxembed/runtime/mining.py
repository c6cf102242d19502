"""paraphrase_mining(encoder, sentences): encode, then find the most similar pairs (kernels/search.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from onnxembed.kernels.search import ScoreFunction, paraphrase_mining_embeddings

if TYPE_CHECKING:
    from onnxembed.runtime.encoder import Encoder


def paraphrase_mining(
    encoder: Encoder,
    sentences: Iterable[str],
    batch_size: int = 32,
    show_progress_bar: bool = False,
    top_k: int = 100,
    max_pairs: int = 500_000,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100_000,
    score_function: ScoreFunction = "cosine",
) -> list[tuple[float, int, int]]:
    """(score, i, j) pairs with i < j, most similar first, as sentence-transformers' paraphrase_mining."""
    embeddings = encoder.encode(list(sentences), batch_size=batch_size, show_progress_bar=show_progress_bar)
    return paraphrase_mining_embeddings(
        embeddings,
        top_k=top_k,
        max_pairs=max_pairs,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
        score_function=score_function,
    )
