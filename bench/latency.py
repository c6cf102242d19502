"""Single-text latency: onnxembed's Encoder against a bare loop on the same graph and threads.

    python bench/latency.py EXPORTED_DIR [--variants fp32,int8] [--calls 100] [--rounds 5]

The bare loop is the least a caller could write: the export's tokenizer.json through `tokenizers` (truncated
at max_seq_length), one `InferenceSession.run` on the variant's graph with the Encoder's session options and
threads, the export's pooling and normalization (onnxembed.kernels, numpy). For each variant and each text (a
sentence and a paragraph from bench/corpus.py), each round times --calls single-text calls of one system, then
of the other (the order flips every round); a system's p50 is the median over all its calls, the ratio the
median of the per-round p50 ratios. #23's goal: the Encoder's p50 within 10% of the bare loop's. Vectors of
the two are compared too. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402

from onnxembed import Encoder  # noqa: E402
from onnxembed.kernels import normalize, pool  # noqa: E402
from onnxembed.manifest import Manifest  # noqa: E402
from onnxembed.runtime.cpu import cpu_info  # noqa: E402
from onnxembed.runtime.session import create_session  # noqa: E402
from onnxembed.runtime.variants import choose_variant  # noqa: E402


def bare_loop(exported: Path, variant: str) -> Callable[[str], np.ndarray]:
    """tokenize -> one session run -> pool -> normalize, for one text."""
    from tokenizers import Tokenizer

    manifest = Manifest.read(exported)
    if manifest.dense or manifest.default_prompt_name:
        # the loop would skip them and the vectors' comparison would mislead
        raise SystemExit(f"{exported}: the bare loop covers models without Dense layers or a default prompt")
    _, graph = choose_variant(manifest, exported, variant, "CPUExecutionProvider")
    session = create_session(exported / graph, "CPUExecutionProvider", None)
    names = [graph_input.name for graph_input in session.get_inputs()]
    tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest.max_seq_length)
    modes = manifest.pooling_modes

    def embed(text: str) -> np.ndarray:
        encoding = tokenizer.encode(text)
        arrays = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        (hidden,) = session.run(None, {name: arrays[name] for name in names})
        pooled = pool(hidden, arrays["attention_mask"], modes)
        return normalize(pooled) if manifest.normalize else pooled

    return embed


def _one_text(encoder: Encoder) -> Callable[[str], np.ndarray]:
    return lambda text: encoder.encode([text])


def _times(call: Callable[[str], object], text: str, calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call(text)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", type=Path)
    parser.add_argument("--variants", default="fp32,int8")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"cpu: {cpu_info().describe()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"{args.exported}; {args.rounds} rounds of {args.calls} calls a system, order flipped each round\n")
    print("| variant | text | tokens | Encoder p50 ms | bare p50 ms | Encoder / bare | per round | max abs |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    texts = {"sentence": sentences(1)[0], "paragraph": paragraphs(1)[0]}
    for variant in args.variants.split(","):
        encoder = Encoder(args.exported, provider="cpu", variant=variant)
        bare = bare_loop(args.exported, variant)
        systems: dict[str, Callable[[str], object]] = {"encoder": _one_text(encoder), "bare": bare}
        for label, text in texts.items():
            difference = float(np.abs(encoder.encode([text])[0] - bare(text)[0]).max())
            for call in systems.values():  # warm-up
                _times(call, text, 5)
            all_times: dict[str, list[float]] = {name: [] for name in systems}
            ratios = []
            for round_index in range(args.rounds):
                order = list(systems) if round_index % 2 == 0 else list(systems)[::-1]
                p50 = {}
                for name in order:
                    seconds = _times(systems[name], text, args.calls)
                    all_times[name] += seconds
                    p50[name] = statistics.median(seconds)
                ratios.append(p50["encoder"] / p50["bare"])
            tokens = len(encoder._tokenizer.encode([text])[0].ids)
            per_round = ", ".join(f"{ratio:.3f}" for ratio in ratios)
            print(
                f"| {variant} | {label} | {tokens} | {statistics.median(all_times['encoder']) * 1e3:.2f} "
                f"| {statistics.median(all_times['bare']) * 1e3:.2f} | {statistics.median(ratios):.3f} "
                f"| {per_round} | {difference:.1e} |"
            )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
