"""Two exports of one model, A and B, in alternated rounds in one process: texts/s of each and B's ratio to A,
and how far apart their vectors are. For changes to the exporter (how attention is traced, say).

    python bench/compare_exports.py A_DIR B_DIR [--sentences 200] [--paragraphs 40] [--rounds 3]

Each round encodes every corpus once with A, then once with B (B first on odd rounds); a system's rate is the
median of its rounds, the ratio the median of the per-round ratios. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402
from throughput import _cpu_name  # noqa: E402


def main() -> None:
    from onnxembed import Encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--paragraphs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", default="fp32")
    args = parser.parse_args()

    encoders = {"A": Encoder(args.a, variant=args.variant), "B": Encoder(args.b, variant=args.variant)}
    corpora = {"sentences": sentences(args.sentences), "paragraphs": paragraphs(args.paragraphs)}
    print(f"A {args.a}\nB {args.b}\nvariant {args.variant}; CPU {_cpu_name()}")
    for corpus, texts in corpora.items():
        vectors = {name: encoder.encode(texts) for name, encoder in encoders.items()}  # also a warm-up
        cosine = (vectors["A"] * vectors["B"]).sum(axis=1) / (
            np.linalg.norm(vectors["A"], axis=1) * np.linalg.norm(vectors["B"], axis=1)
        )
        rates: dict[str, list[float]] = {"A": [], "B": []}
        for round_index in range(args.rounds):
            order = ["A", "B"] if round_index % 2 == 0 else ["B", "A"]
            for name in order:
                start = time.perf_counter()
                encoders[name].encode(texts)
                rates[name].append(len(texts) / (time.perf_counter() - start))
        ratios = [b / a for a, b in zip(rates["A"], rates["B"], strict=True)]
        print(
            f"{corpus}: A {statistics.median(rates['A']):.2f}/s, B {statistics.median(rates['B']):.2f}/s, "
            f"B/A {statistics.median(ratios):.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)}); "
            f"min cosine {cosine.min():.7f}, max abs {np.abs(vectors['A'] - vectors['B']).max():.2e}"
        )


if __name__ == "__main__":
    main()
