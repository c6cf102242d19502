"""How to spend the CPU's cores: intra-op threads, sessions side by side, or worker processes.

    python bench/cpu_engines.py EXPORTED_DIR [--sentences 2000] [--paragraphs 200] [--repeats 5]

Runs back to back in one process (the process pool in child processes), alternating systems each round so a
burst of load elsewhere hits all of them: texts/s on stdlib docstring sentences and paragraphs, and
single-text p50 latency, for
  threads      Encoder(provider="cpu"): one session, all cores as intra-op threads (the default);
  overlap      the same session, tokenizing ahead on other threads (what GPUs use);
  sessions     Encoder(overlap=True, sessions=N, threads=1): one session per core;
  processes    N worker processes, each an Encoder with one thread, texts split in N contiguous parts;
  1 thread     Encoder(threads=1), for the single-text latency.
Medians of --repeats. Prints Markdown; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_WORKER: Any = None


def _init_worker(path: str, variant: str) -> None:
    global _WORKER
    from onnxembed import Encoder

    _WORKER = Encoder(path, provider="cpu", threads=1, variant=variant)


def _encode_part(texts: list[str]) -> np.ndarray:
    return np.asarray(_WORKER.encode(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("exported", type=Path)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--paragraphs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    # fp32 by default: an int8 graph's vectors move with the batches a text shares (its activations are
    # quantized per batch), so the systems, which batch differently, would not compare equal
    parser.add_argument("--variant", default="fp32")
    args = parser.parse_args()
    from onnxembed import Encoder
    from onnxembed.exporter.calibration import paragraphs, sentences

    cores = os.cpu_count() or 1
    encoders = {
        "threads": Encoder(args.exported, provider="cpu", variant=args.variant),
        "overlap": Encoder(args.exported, provider="cpu", overlap=True, variant=args.variant),
        f"sessions ({cores} x 1 thread)": Encoder(
            args.exported, provider="cpu", overlap=True, sessions=cores, threads=1, variant=args.variant
        ),
    }
    pool = ProcessPoolExecutor(cores, initializer=_init_worker, initargs=(str(args.exported), args.variant))

    def processes(texts: list[str]) -> np.ndarray:
        step = -(-len(texts) // cores)
        parts = [texts[start : start + step] for start in range(0, len(texts), step)]
        return np.concatenate(list(pool.map(_encode_part, parts)))

    systems = {name: encoder.encode for name, encoder in encoders.items()}
    systems[f"processes ({cores} x 1 thread)"] = processes
    corpora = {"sentences": sentences(args.sentences, wide=True), "paragraphs": paragraphs(args.paragraphs, wide=True)}
    reference = {kind: encoders["threads"].encode(texts) for kind, texts in corpora.items()}
    rates: dict[tuple[str, str], list[float]] = {}
    for kind, texts in corpora.items():
        for name, encode in systems.items():  # warm-up, and the results must be the same
            difference = np.abs(encode(texts) - reference[kind]).max()
            assert difference < 1e-4, f"{name} differs from one session by {difference} on {kind}"
        for _ in range(args.repeats):
            for name, encode in systems.items():
                start = time.perf_counter()
                encode(texts)
                rates.setdefault((name, kind), []).append(len(texts) / (time.perf_counter() - start))
    latency = {}
    single = {
        "threads": encoders["threads"],
        "1 thread": Encoder(args.exported, provider="cpu", threads=1, variant=args.variant),
    }
    for _ in range(args.repeats):
        for name, encoder in single.items():
            samples = []
            for text in corpora["sentences"][:200]:
                start = time.perf_counter()
                encoder.encode(text)
                samples.append((time.perf_counter() - start) * 1000)
            latency.setdefault(name, []).append(float(np.percentile(samples, 50)))
    pool.shutdown()
    base = {kind: statistics.median(rates[("threads", kind)]) for kind in corpora}
    print(f"{cores} cores, load average before {os.getloadavg()}\n")
    print("| system | sentences/s | vs threads | paragraphs/s | vs threads |\n|---|---|---|---|---|")
    for name in systems:
        cells = []
        for kind in corpora:
            rate = statistics.median(rates[(name, kind)])
            cells += [f"{rate:,.1f}", f"{rate / base[kind]:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nsingle-text p50 ms: " + ", ".join(f"{n} {statistics.median(v):.2f}" for n, v in latency.items()))


if __name__ == "__main__":
    main()
