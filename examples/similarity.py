"""Encode a few sentences with an exported model and print their similarity matrix.

    onnxembed export path/to/all-MiniLM-L6-v2 minilm-onnx   # where torch is
    python examples/similarity.py minilm-onnx               # needs only `pip install onnxembed`

With all-MiniLM-L6-v2 it prints (3, 384) float32 and the matrix the README shows.
"""

from __future__ import annotations

import sys

from onnxembed import Encoder

SENTENCES = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stocks fell sharply."]


def main(model_dir: str) -> None:
    encoder = Encoder(model_dir)
    embeddings = encoder.encode(SENTENCES)
    print(embeddings.shape, embeddings.dtype)
    print(encoder.similarity(embeddings, embeddings).round(2))


if __name__ == "__main__":
    main(sys.argv[1])
