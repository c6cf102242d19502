"""int8 graphs against their fp32 graph, session runs alone, the graphs taking turns a few batches at a time.

    python bench/int8_sessions.py EXPORTED_DIR [GRAPH ...] [--sentences 1000] [--paragraphs 150] [--passes 5]
        [--chunk 8]

GRAPH: files under EXPORTED_DIR/onnx (default: the export's int8 variant). The corpora (bench/corpus.py) are
tokenized once into the Encoder's own CPU batches; then, --passes times over, each batch runs through every
graph's session in turn, --chunk batches a turn, the order rotating from turn to turn. On this project's
shared hosts the speed drifts by a third within seconds, so whole-corpus rounds (bench/int8_formats.py) put
one graph's run in a slow spell and another's in a fast one; short turns see the same machine. Turns of one
batch each were not kept: every switch evicts the other graph's weights from the caches, which costs the
small int8 graphs more than a graph running alone pays (they read 1.50-1.67x fp32 so, on Zen 4). A
graph's ratio to fp32 is the median over passes of fp32's summed batch time over its own. Cosines are to
fp32's pooled vectors. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402

from onnxembed import Encoder  # noqa: E402
from onnxembed.kernels import normalize, pool  # noqa: E402
from onnxembed.runtime.batching import default_max_batch_tokens  # noqa: E402
from onnxembed.runtime.cpu import cpu_info  # noqa: E402
from onnxembed.runtime.session import create_session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", type=Path)
    parser.add_argument("graphs", nargs="*", help="files under EXPORTED_DIR/onnx")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--paragraphs", type=int, default=150)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=8, help="batches a graph runs before the next takes its turn")
    args = parser.parse_args()

    encoder = Encoder(args.exported, variant="fp32")
    graphs = args.graphs or [Path(encoder.manifest.variants["int8"].file).name]
    sessions = {"fp32": encoder._sessions[0]}
    for name in graphs:
        sessions[name] = create_session(args.exported / "onnx" / name, "CPUExecutionProvider", None)
    print(f"cpu: {cpu_info().describe()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"{args.exported}; {args.passes} passes, each graph {args.chunk} batches a turn\n")
    print("| corpus | graph | x fp32 | per pass | mean cos | p1 cos |")
    print("|---|---|---:|---|---:|---:|")
    budget = default_max_batch_tokens("CPUExecutionProvider")
    for corpus, texts in (("sentences", sentences(args.sentences)), ("paragraphs", paragraphs(args.paragraphs))):
        feeds = []
        for _, arrays in encoder._batcher.batches(texts, "", 32, budget):
            feeds.append({name: arrays[name] for name in encoder._input_names})
        outputs = {name: [session.run(None, feed)[0] for feed in feeds] for name, session in sessions.items()}
        totals = {name: [0.0] * args.passes for name in sessions}
        names = list(sessions)
        chunks = [feeds[k : k + args.chunk] for k in range(0, len(feeds), args.chunk)]
        for step in range(args.passes):
            for index, chunk in enumerate(chunks):
                shift = (index + step) % len(names)
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    for feed in chunk:
                        sessions[name].run(None, feed)
                    totals[name][step] += time.perf_counter() - start
        reference = _pooled(outputs["fp32"], feeds)
        for name in graphs:
            ratios = [fp32 / own for fp32, own in zip(totals["fp32"], totals[name], strict=True)]
            cosine = np.einsum("ij,ij->i", reference, _pooled(outputs[name], feeds))
            per_pass = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            print(
                f"| {corpus} | {name} | {statistics.median(ratios):.2f}x | {per_pass} | {cosine.mean():.4f} "
                f"| {np.percentile(cosine, 1):.4f} |"
            )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


def _pooled(outputs: list[np.ndarray], feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Mean-pooled, normalized token embeddings: enough to compare graphs of one model with one another."""
    return np.concatenate(
        [normalize(pool(hidden, feed["attention_mask"])) for hidden, feed in zip(outputs, feeds, strict=True)]
    )


if __name__ == "__main__":
    main()
