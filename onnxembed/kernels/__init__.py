"""Pure-numpy kernels: pooling, normalization and similarity. Imports numpy only."""

from onnxembed.kernels.pooling import POOLING_MODES, exclude_prompt, normalize, pool
from onnxembed.kernels.similarity import SIMILARITY_FNS, cos_sim, dot_score, similarity

__all__ = [
    "POOLING_MODES",
    "SIMILARITY_FNS",
    "cos_sim",
    "dot_score",
    "exclude_prompt",
    "normalize",
    "pool",
    "similarity",
]
