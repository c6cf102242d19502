"""The child side of bench/throughput.py: one system in one fresh process, and the chart.

    python bench/peers.py run SYSTEM --src DIR --exported DIR --texts TEXTS.json [--batch-size 32]
        [--repeats 3] [--latency-calls 0] [--embeddings-out OUT.npy] [--cold-start-at UNIX_TIME]
    python bench/peers.py plot RESULTS.json OUT.png

``run`` loads SYSTEM (st, st-onnx, fastembed, onnxembed, onnxembed-int8), encodes the texts once to warm up,
then --repeats times timed, optionally encodes --latency-calls texts one at a time, and prints one JSON object
on stdout (library output goes to stderr). With --cold-start-at (the parent's clock just before it started
this process) it only embeds the first text and reports the seconds from process start to that embedding.
``plot`` draws the sentences/s bar chart from throughput.py's JSON.

This file imports nothing from onnxembed or this folder at module level, and each system's libraries only in
its loader, so that it runs in whichever venv holds them (fastembed's own venv, one with matplotlib).
Not in scope: corpora, token counts, FLOPs, cosines, tables (throughput.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Encode = Callable[[list[str], int], np.ndarray]
"""(texts, batch_size) -> (len(texts), dim) float32 embeddings in input order."""

_FASTEMBED_NAME = "onnxembed-bench/exported-model"  # a name fastembed does not know, registered as custom


def _load_st(src: str, exported: str) -> tuple[Encode, dict[str, Any]]:
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(src, device="cpu")

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True)

    info = {
        "max_length": model.max_seq_length,
        "threads": torch.get_num_threads(),
        "versions": {"sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__},
    }
    return encode, info


def _load_st_onnx(src: str, exported: str) -> tuple[Encode, dict[str, Any]]:
    import onnxruntime
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    # Named explicitly: ST's default is the first available provider (AzureExecutionProvider in some wheels)
    # and, with several .onnx files in onnx/, a warning and a guess.
    model = SentenceTransformer(
        exported,
        backend="onnx",
        device="cpu",
        model_kwargs={"file_name": "onnx/model.onnx", "provider": "CPUExecutionProvider"},
    )

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True)

    info = {
        "max_length": model.max_seq_length,
        "threads": None,  # onnxruntime's default: one per physical core
        "versions": {
            "sentence-transformers": sentence_transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    return encode, info


def _load_fastembed(src: str, exported: str) -> tuple[Encode, dict[str, Any]]:
    from importlib.metadata import version

    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    manifest = json.loads((Path(exported) / "onnxembed.json").read_text())
    if manifest["pooling_modes"] != ["mean"]:
        raise ValueError(f"fastembed is set up here for mean pooling only; the model pools {manifest['pooling_modes']}")
    TextEmbedding.add_custom_model(
        model=_FASTEMBED_NAME,
        pooling=PoolingType.MEAN,
        normalization=bool(manifest["normalize"]),
        sources=ModelSource(hf=_FASTEMBED_NAME),  # never fetched: specific_model_path is used instead
        dim=int(manifest["dim"]),
        model_file=manifest["variants"]["fp32"]["file"],
    )
    model = TextEmbedding(model_name=_FASTEMBED_NAME, specific_model_path=exported)

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        return np.stack(list(model.embed(texts, batch_size=batch_size)))

    truncation = model.model.tokenizer.truncation or {}  # fastembed's own choice, not the model's max_seq_length
    info = {
        "max_length": truncation.get("max_length"),
        "threads": None,
        "versions": {"fastembed": version("fastembed"), "onnxruntime": version("onnxruntime")},
    }
    return encode, info


def _onnxembed_loader(variant: str) -> Callable[[str, str], tuple[Encode, dict[str, Any]]]:
    def load(src: str, exported: str) -> tuple[Encode, dict[str, Any]]:
        import onnxruntime

        import onnxembed
        from onnxembed import Encoder

        encoder = Encoder(exported, provider="cpu", variant=variant)

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            return encoder.encode(texts, batch_size=batch_size)

        # a tuning profile beside the export changes the engine (onnxembed tune): the table names it
        engine = encoder.settings.describe() + (" (tuned)" if encoder.profile_path else " (default)")
        info = {
            "max_length": encoder.max_seq_length,
            "threads": None,
            "versions": {"onnxembed": onnxembed.__version__, "onnxruntime": onnxruntime.__version__, "engine": engine},
        }
        return encode, info

    return load


LOADERS: dict[str, Callable[[str, str], tuple[Encode, dict[str, Any]]]] = {
    "st": _load_st,
    "st-onnx": _load_st_onnx,
    "fastembed": _load_fastembed,
    "onnxembed": _onnxembed_loader("fp32"),
    "onnxembed-int8": _onnxembed_loader("int8"),
}


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status: VmRSS (now) or VmHWM (peak) in bytes.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child started by a
    parent that holds a model would report the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds this process has used), both since boot/start."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace) -> dict[str, Any]:
    texts: list[str] = json.loads(Path(args.texts).read_text())
    load_start = time.perf_counter()
    encode, info = LOADERS[args.system](args.src, args.exported)
    result: dict[str, Any] = {"system": args.system, "load_s": time.perf_counter() - load_start, **info}
    if args.cold_start_at is not None:
        encode(texts[:1], 1)
        result["cold_start_s"] = time.time() - args.cold_start_at
        return result

    result["rss_after_load_bytes"] = _status_bytes("VmRSS")
    embeddings = encode(texts, args.batch_size)  # warm-up: lazy init, allocator arenas, thread pools
    timings = []
    busy_start, own_start = _cpu_seconds()
    for _ in range(args.repeats):
        start = time.perf_counter()
        embeddings = encode(texts, args.batch_size)
        timings.append(time.perf_counter() - start)
    busy_end, own_end = _cpu_seconds()
    result["timings_s"] = timings
    if timings:  # the noise: cores kept busy by other processes while this one was timed
        result["others_cpu_cores"] = max(0.0, (busy_end - busy_start) - (own_end - own_start)) / sum(timings)
        result["own_cpu_cores"] = (own_end - own_start) / sum(timings)
    result["texts"] = len(texts)
    if args.embeddings_out:
        np.save(args.embeddings_out, np.asarray(embeddings, dtype=np.float32))

    if args.latency_calls:
        calls = [texts[i % len(texts)] for i in range(args.latency_calls)]
        for text in calls[:10]:
            encode([text], 1)
        latencies = []
        for text in calls:
            start = time.perf_counter()
            encode([text], 1)
            latencies.append(time.perf_counter() - start)
        result["latency_s"] = latencies
        result["latency_p50_s"] = statistics.median(latencies)
        result["latency_p99_s"] = float(np.percentile(latencies, 99))
    result["peak_rss_bytes"] = _status_bytes("VmHWM")
    return result


def plot(results_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(results_path).read_text())
    corpora = list(results["corpora"])
    systems = [name for name, system in results["systems"].items() if system["status"] == "ok"]
    figure, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4.8), squeeze=False)
    for axis, corpus in zip(axes[0], corpora, strict=True):
        info = results["corpora"][corpus]
        rates = [results["systems"][name]["corpora"][corpus]["sentences_per_s"] for name in systems]
        utilisation = [results["systems"][name]["corpora"][corpus]["utilisation"] for name in systems]
        labels = [
            name
            if results["systems"][name]["max_length"] == results["model"]["max_seq_length"]
            else f"{name}\n(truncates at {results['systems'][name]['max_length']})"
            for name in systems
        ]
        bars = axis.bar(labels, rates, color="tab:blue")
        for bar, rate, share in zip(bars, rates, utilisation, strict=True):
            axis.annotate(  # inside the top of the bar, clear of the peak line
                f"{rate:.0f}/s\n{share:.0%} of peak",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                xytext=(0, -3),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=8,
                color="white",
            )
        limit = info["hardware_limit_sentences_per_s"]
        axis.axhline(limit, color="tab:red", linestyle="--", label=f"fp32 matmul peak: {limit:.0f}/s")
        axis.set_ylim(0, max([limit, *rates]) * 1.2)
        axis.set_title(f"{corpus}: {info['texts']} texts, {info['mean_tokens']:.0f} tokens each on average")
        axis.set_ylabel("sentences/s")
        axis.tick_params(axis="x", labelsize=8)
        axis.legend(loc="upper right", fontsize=8)
    peak = results["peak_gflops"]
    figure.suptitle(
        f"{results['model']['name']}, batch {results['settings']['batch_size']}, "
        f"{results['machine']['cores']} cores, peak {peak['used']:.0f} GFLOP/s ({peak['used_source']})",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("system", choices=sorted(LOADERS))
    run_parser.add_argument("--src", required=True)
    run_parser.add_argument("--exported", required=True)
    run_parser.add_argument("--texts", required=True, help="JSON list of texts")
    run_parser.add_argument("--batch-size", type=int, default=32)
    run_parser.add_argument("--repeats", type=int, default=3)
    run_parser.add_argument("--latency-calls", type=int, default=0)
    run_parser.add_argument("--embeddings-out")
    run_parser.add_argument("--cold-start-at", type=float)
    plot_parser = commands.add_parser("plot")
    plot_parser.add_argument("results")
    plot_parser.add_argument("png")
    args = parser.parse_args()

    if args.command == "plot":
        plot(args.results, args.png)
        return
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the one JSON line
        result = run(args)
    stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
