"""The torch-free runtime: load an exported directory and encode text (Encoder), score pairs (Reranker) or
encode text into sparse vectors (SparseEncoder). Never imports torch."""

from onnxembed.runtime.encoder import Encoder
from onnxembed.runtime.mining import paraphrase_mining
from onnxembed.runtime.reranker import Reranker
from onnxembed.runtime.session import resolve_provider
from onnxembed.runtime.sparse_encoder import SparseEncoder

__all__ = ["Encoder", "Reranker", "SparseEncoder", "paraphrase_mining", "resolve_provider"]
