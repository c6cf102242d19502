"""The torch-free runtime: load an exported directory and encode text (Encoder) or score pairs (Reranker).
Never imports torch."""

from onnxembed.runtime.encoder import Encoder
from onnxembed.runtime.mining import paraphrase_mining
from onnxembed.runtime.reranker import Reranker
from onnxembed.runtime.session import resolve_provider

__all__ = ["Encoder", "Reranker", "paraphrase_mining", "resolve_provider"]
