"""``onnxembed.ray.embed_dataset``: embed a Ray Dataset's text column with an actor pool of Encoders.

This module imports nothing of Ray; ``embed_dataset`` does, when called (``pip install 'onnxembed[ray]'``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["embed_dataset"]


def embed_dataset(ds: Any, model_dir: Any, text_column: str = "text", **options: Any) -> Any:
    """See :func:`onnxembed.corpus.ray.embed_dataset`."""
    from onnxembed.corpus.ray import embed_dataset as _embed_dataset

    return _embed_dataset(ds, model_dir, text_column, **options)
