"""Embedding corpora into Parquet: locally (``embed_corpus``) or on a Ray cluster (``onnxembed.ray``).

Importing this package imports neither pyarrow nor Ray; each is imported by the function that needs it.
"""

from __future__ import annotations

from onnxembed.corpus.inputs import CorpusError
from onnxembed.corpus.local import CorpusResult, embed_corpus

__all__ = ["CorpusError", "CorpusResult", "embed_corpus"]
