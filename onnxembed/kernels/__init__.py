"""Pure-numpy kernels: pooling, Dense layers, normalization, similarity, search, embedding quantization and
sparse (SPLADE) vectors.

Imports numpy only.
"""

from onnxembed.kernels.dense import DENSE_ACTIVATIONS, dense
from onnxembed.kernels.pooling import POOLING_MODES, exclude_prompt, normalize, pool
from onnxembed.kernels.quantization import PRECISIONS, quantize_embeddings
from onnxembed.kernels.search import paraphrase_mining_embeddings, semantic_search, semantic_search_binary
from onnxembed.kernels.similarity import SIMILARITY_FNS, cos_sim, dot_score, similarity, similarity_pairwise
from onnxembed.kernels.sparse import (
    SparseEmbedding,
    SparseMatrix,
    sparse_dot_score,
    sparse_search,
    sparse_similarity,
    sparse_similarity_pairwise,
)

__all__ = [
    "DENSE_ACTIVATIONS",
    "POOLING_MODES",
    "PRECISIONS",
    "SIMILARITY_FNS",
    "cos_sim",
    "dense",
    "dot_score",
    "exclude_prompt",
    "normalize",
    "paraphrase_mining_embeddings",
    "pool",
    "quantize_embeddings",
    "semantic_search",
    "semantic_search_binary",
    "sparse_dot_score",
    "sparse_search",
    "sparse_similarity",
    "sparse_similarity_pairwise",
    "SparseEmbedding",
    "SparseMatrix",
    "similarity",
    "similarity_pairwise",
]
