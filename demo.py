"""`make demo`: encode a few sentences with an exported model and print their similarity matrix."""

from __future__ import annotations

import sys

import numpy as np

from onnxembed import Encoder

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
]


def main(model_dir: str) -> None:
    encoder = Encoder(model_dir)
    embeddings = encoder.encode(SENTENCES)
    print(f"{encoder!r}\nembeddings: {embeddings.shape} {embeddings.dtype}\n")
    scores = encoder.similarity(embeddings, embeddings)
    width = max(len(sentence) for sentence in SENTENCES)
    print(" " * width + "".join(f"{f'[{i}]':>7}" for i in range(len(SENTENCES))))
    for i, sentence in enumerate(SENTENCES):
        print(f"{sentence:<{width}}" + "".join(f"{score:7.2f}" for score in scores[i]) + f"  [{i}]")
    best = np.argsort(-scores[0])[1]
    print(f"\nclosest to {SENTENCES[0]!r}: {SENTENCES[best]!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-model")
