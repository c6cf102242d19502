"""Semantic search over a small corpus with onnxembed.kernels.semantic_search (numpy only).

    python examples/semantic_search.py MODEL_DIR

For a corpus larger than memory, write Encoder.encode_iter's blocks to an .npy file and search a memmap of
it: semantic_search casts the corpus to float32 one chunk at a time.
"""

from __future__ import annotations

import sys

from onnxembed import Encoder
from onnxembed.kernels import semantic_search

CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]
QUERIES = ["A man is eating pasta.", "Someone in a gorilla costume is playing a set of drums."]


def main(model_dir: str) -> None:
    encoder = Encoder(model_dir)
    corpus_embeddings = encoder.encode(CORPUS)
    query_embeddings = encoder.encode(QUERIES)
    # (n_queries, k) scores and corpus indices, best first (cosine: the model's function for most models)
    scores, indices = semantic_search(query_embeddings, corpus_embeddings, top_k=3)
    for query, row_scores, row_indices in zip(QUERIES, scores, indices, strict=True):
        print(f"query: {query}")
        for score, index in zip(row_scores, row_indices, strict=True):
            print(f"  {score:.3f}  {CORPUS[index]}")


if __name__ == "__main__":
    main(sys.argv[1])
