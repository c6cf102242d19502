"""Throughput and faithfulness of onnxembed against sentence-transformers (torch) on one model.

    python bench/compare_st.py SRC_DIR EXPORTED_DIR [--batch-size 32] [--repeats 3] [--threads N]

Both run in this process, back to back, on the same corpus (stdlib docstrings: short sentences and long
paragraphs); each rate is the median of --repeats runs. Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import paragraphs, sentences  # noqa: E402


def _rate(run: Callable[[], np.ndarray], count: int, repeats: int) -> tuple[float, np.ndarray]:
    run()  # warm-up: first-call allocations and lazy init
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - start)
    return count / statistics.median(timings), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("exported")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--paragraphs", type=int, default=200)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    reference = SentenceTransformer(args.src, device="cpu")
    encoder = Encoder(args.exported, provider="cpu", threads=args.threads)
    print(f"torch threads {torch.get_num_threads()}, batch size {args.batch_size}, median of {args.repeats}\n")
    print(
        "| corpus | texts | sentence-transformers (torch) texts/s | onnxembed texts/s | speed-up "
        "| min cosine | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, texts in (("sentences", sentences(args.sentences)), ("paragraphs", paragraphs(args.paragraphs))):
        st_rate, expected = _rate(
            lambda t=texts: reference.encode(t, batch_size=args.batch_size), len(texts), args.repeats
        )
        ox_rate, actual = _rate(lambda t=texts: encoder.encode(t, batch_size=args.batch_size), len(texts), args.repeats)
        cosine = (expected * actual).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1))
        print(
            f"| {name} | {len(texts)} | {st_rate:.1f} | {ox_rate:.1f} | {ox_rate / st_rate:.2f}x | "
            f"{cosine.min():.7f} | {np.abs(expected - actual).max():.2e} |"
        )


if __name__ == "__main__":
    main()
