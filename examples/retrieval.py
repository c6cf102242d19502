"""Retrieval with encode_query / encode_document, as sentence-transformers has them.

    python examples/retrieval.py MODEL_DIR

encode_query uses the model's "query" prompt and encode_document the first of "document", "passage" and
"corpus" it defines (e5, bge and EmbeddingGemma-style models have them); a model without prompts encodes
both sides alike. Scores use the model's own similarity function.
"""

from __future__ import annotations

import sys

import numpy as np

from onnxembed import Encoder

DOCUMENTS = [
    "ONNX is an open format for machine learning models.",
    "onnxruntime runs ONNX models on CPUs and GPUs.",
    "Paris is the capital and largest city of France.",
    "The mitochondrion is the powerhouse of the cell.",
]
QUERIES = ["What is ONNX?", "What is the capital of France?"]


def main(model_dir: str) -> None:
    encoder = Encoder(model_dir)
    print(f"prompts: {encoder.prompts or 'none'}; similarity: {encoder.similarity_fn_name}")
    documents = encoder.encode_document(DOCUMENTS)
    queries = encoder.encode_query(QUERIES)
    scores = encoder.similarity(queries, documents)  # (queries, documents)
    for query, row in zip(QUERIES, scores, strict=True):
        best = int(np.argmax(row))
        print(f"{query!r} -> {DOCUMENTS[best]!r} ({row[best]:.3f})")


if __name__ == "__main__":
    main(sys.argv[1])
