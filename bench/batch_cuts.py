"""Where batches end on CPU: texts/s for each fixed cost per run (onnxembed/runtime/batching.py CPU_RUN_COST).

    python bench/batch_cuts.py EXPORTED_DIR [--variant fp32] [--run-costs 0,8,16,32,64] [--rounds 3]

For each run cost, in turn each round (so a slower spell of the shared machine hits all of them): random
stdlib sentences (1-8 a request, as bench/serve.py sends them) and paragraphs, encoded
  - in calls of 4, 14 and 36 texts from one thread per core sharing one single-threaded session (what the
    server's workers do with the requests waiting), and
  - in one call by one single-threaded session per core (a batch job).
Run cost 0 fills every batch up to the limits. Prints the median texts/s of the rounds as Markdown, and the
runs and padded tokens each cost plans for the sentences; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from corpus import paragraphs, sentences  # noqa: E402

from onnxembed import Encoder  # noqa: E402

CALL_SIZES = (4, 14, 36)


def in_calls(encoder: Encoder, texts: list[str], size: int, threads: int) -> float:
    """texts/s of ``threads`` threads taking calls of ``size`` texts in turn from one list."""
    calls = iter([texts[start : start + size] for start in range(0, len(texts), size)])
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                call = next(calls, None)
            if call is None:
                return
            encoder.encode(call)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(texts) / (time.perf_counter() - started)


def one_call(encoder: Encoder, texts: list[str]) -> float:
    started = time.perf_counter()
    encoder.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def plan_totals(encoder: Encoder, texts: list[str], size: int) -> tuple[int, int]:
    """(runs, padded tokens) of encoding ``texts`` in calls of ``size`` with the encoder's run cost."""
    runs = padded = 0
    for start in range(0, len(texts), size):
        for _, arrays in encoder._batches(texts[start : start + size]):  # what encode() plans
            runs += 1
            padded += arrays["attention_mask"].size
    return runs, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", type=Path)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--run-costs", default="0,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--paragraphs", type=int, default=120)
    args = parser.parse_args()
    costs = [int(cost) for cost in args.run_costs.split(",")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    rng = random.Random(0)
    pool = sentences()
    corpora = {
        "sentences": [text for _ in range(args.requests) for text in rng.sample(pool, rng.randint(1, 8))],
        "paragraphs": rng.sample(paragraphs(), min(args.paragraphs, len(paragraphs()))),
    }
    shared = Encoder(args.model, provider="cpu", variant=args.variant, threads=1)
    batch_job = Encoder(args.model, provider="cpu", variant=args.variant, threads=1, sessions=cores, overlap=True)
    for encoder in (shared, batch_job):
        encoder.encode(corpora["sentences"][:64])  # warm-up
    columns = [f"calls of {size}" for size in CALL_SIZES] + ["one call"]
    rates: dict[tuple[str, int], list[list[float]]] = {(name, cost): [] for name in corpora for cost in costs}
    default_cost = shared._batcher.run_cost
    # The encoders' run cost is set by hand here; the Encoder's Batcher takes its default from CPU_RUN_COST.
    for _ in range(args.rounds):
        for cost in costs:
            for encoder in (shared, batch_job):
                encoder._batcher = dataclasses.replace(encoder._batcher, run_cost=cost)
            for name, texts in corpora.items():
                row = [in_calls(shared, texts, size, cores) for size in CALL_SIZES]
                rates[name, cost].append([*row, one_call(batch_job, texts)])
    totals = {}
    for cost in costs:
        shared._batcher = dataclasses.replace(shared._batcher, run_cost=cost)
        totals[cost] = [plan_totals(shared, corpora["sentences"], size) for size in CALL_SIZES]

    print(
        f"model {args.model} ({shared.variant}, default run cost {default_cost}), {cores} cores, {args.rounds} "
        f"rounds; load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| corpus | run cost | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for (name, cost), rounds in rates.items():
        medians = [statistics.median(column) for column in zip(*rounds, strict=True)]
        print(f"| {name} | {cost} | " + " | ".join(f"{rate:.0f}" for rate in medians) + " |")
    print()
    print("| run cost | " + " | ".join(f"runs, padded tokens: calls of {size}" for size in CALL_SIZES) + " |")
    print("|---:|" + "---:|" * len(CALL_SIZES))
    for cost, per_size in totals.items():
        print(f"| {cost} | " + " | ".join(f"{runs}, {padded:,}" for runs, padded in per_size) + " |")


if __name__ == "__main__":
    main()
