"""Ray's overhead on one machine: ``embed-corpus`` locally vs ``--ray`` on the same texts, back to back.

    .venv/bin/python bench/corpus_ray.py /tmp/minilm-out [--sentences 2000] [--repeats 3]

The texts are ``onnxembed.exporter.calibration.sentences()`` written to one text file; each run writes a
fresh OUTPUT. Rows: ``Encoder.encode`` on the list in memory (no I/O, the ceiling), the local streaming path
(``embed_corpus``), and the Ray path (``embed_corpus_ray`` on a local cluster started once, with all the
machine's CPUs; each run includes starting the actor pool and loading the model in it). Median of
``--repeats`` runs of each, alternated. Measures and prints; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", help="directory written by `onnxembed export` (only read)")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import ray

    from onnxembed import Encoder
    from onnxembed.corpus import embed_corpus
    from onnxembed.corpus.ray import embed_corpus_ray, plan_actors
    from onnxembed.exporter.calibration import sentences

    texts = sentences(args.sentences)
    work = Path(tempfile.mkdtemp(prefix="corpus-ray-bench-"))
    source = work / "texts.txt"
    source.write_text("".join(text.replace("\n", " ") + "\n" for text in texts), encoding="utf-8")
    cpus = os.cpu_count() or 1
    load_before = os.getloadavg()
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - started
    ray.data.DataContext.get_current().enable_progress_bars = False
    plan = plan_actors()
    encoder = Encoder(args.model, provider="cpu")
    runs: dict[str, list[float]] = {"encode": [], "local": [], "ray": []}

    def fresh(name: str) -> Path:
        output = work / name
        shutil.rmtree(output, ignore_errors=True)
        return output

    try:
        encoder.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        for _ in range(args.repeats):
            runs["encode"].append(_timed(lambda: encoder.encode(texts, batch_size=args.batch_size)))
            local = partial(embed_corpus, source, fresh("out-local"), args.model, provider="cpu")
            runs["local"].append(_timed(partial(local, batch_size=args.batch_size)))
            on_ray = partial(embed_corpus_ray, source, fresh("out-ray"), args.model)
            runs["ray"].append(_timed(partial(on_ray, batch_size=args.batch_size)))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    labels = {
        "encode": f"Encoder.encode, list in memory ({cpus} threads)",
        "local": f"embed-corpus, local streaming ({cpus} threads)",
        "ray": f"embed-corpus --ray ({plan['concurrency']} actor x {plan['threads']} thread, incl. pool start)",
    }
    print(f"{len(texts)} sentences, {args.model}, batch size {args.batch_size}, {cpus} CPUs; median of {args.repeats}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; ray.init {ray_start_s:.1f} s (once)\n")
    print("| path | sentences/s | median s | runs (s) |")
    print("|---|---:|---:|---|")
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        shown = ", ".join(f"{value:.2f}" for value in seconds)
        print(f"| {labels[name]} | {len(texts) / median:.0f} | {median:.2f} | {shown} |")


if __name__ == "__main__":
    main()
