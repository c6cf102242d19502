"""Throughput, latency, memory, cold start and faithfulness of onnxembed and its peers, on one machine and corpus.

    python bench/throughput.py SRC_DIR EXPORTED_DIR [--batch-size 32] [--repeats 3] [--rounds 3]
        [--sentences 1000] [--paragraphs 150] [--systems st,st-onnx,fastembed,onnxembed,onnxembed-int8]
        [--json-out F] [--png-out F]

Systems: sentence-transformers on torch (SRC_DIR), sentence-transformers' ONNX backend, fastembed and onnxembed
(fp32, and int8 when the export has that variant) on EXPORTED_DIR. Each runs in its own fresh process
(bench/peers.py; fastembed from its own venv) per corpus, so peak RSS is per system and corpus, and again
--repeats times for cold start. The systems run in turn, --rounds times over: this machine's speed drifts by
up to a third over minutes (int8 MiniLM paragraphs ran 120-128 then 88-92 texts/s in one process), so the
ratio to sentence-transformers is taken per round and its median reported. Corpora: stdlib docstrings
(bench/corpus.py), short sentences and long paragraphs. Rates are the median round, each round the median of
--repeats timed runs after a warm-up run. Utilisation is the work done per second (2 x non-embedding parameters
per real token, plus attention's 4 x width flops per query-key pair that a text's mask lets through, see
attention_layers) against the best of a numpy and an onnxruntime 2048x2048 float32 matmul, against
onnxruntime's alone, and against onnxruntime's int8 dynamic-quantized 2048x2048 MatMul (bench/peaks.py), all
measured before and after; the header names the CPU and its flags.
Prints Markdown; writes JSON and a PNG chart when asked. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # this checkout's onnxembed, before an installed one
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402
from peaks import matmul_peaks  # noqa: E402

from onnxembed.exporter.config import DECODER_MODEL_TYPES  # noqa: E402  (causal attention)
from onnxembed.runtime.cpu import cpu_info  # noqa: E402

SYSTEMS = ("st", "st-onnx", "fastembed", "onnxembed", "onnxembed-int8")
FASTEMBED_SETUP = (
    "python -m venv .venv-bench-fastembed && .venv-bench-fastembed/bin/pip install fastembed==0.9.1 matplotlib==3.11.2"
)
LATENCY_CALLS = 200
MIB = 1024 * 1024


def matmul_peak() -> dict[str, float]:
    """The fp32 peaks only (numpy, onnxruntime), for the scripts that compare against fp32 alone (rerank.py)."""
    peaks = matmul_peaks()
    return {name: peaks[name] for name in ("numpy", "onnxruntime")}


def _cpu_name() -> str:
    """The CPU's line (bench/peaks.py): model name, vendor, family and model numbers, cores, kernel flags."""
    return cpu_info().describe()


def non_embedding_parameters(onnx_path: Path) -> int:
    """Parameters in the graph's initializers, less the embedding tables (initializers that a Gather reads)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in model.graph.initializer}
    tables = {node.input[0] for node in model.graph.node if node.op_type == "Gather" and node.input[0] in sizes}
    return sum(size for name, size in sizes.items() if name not in tables)


class TokenCounter:
    """Real, unpadded token counts (special tokens included) with the exported tokenizer at a given truncation."""

    def __init__(self, exported: Path, do_lower_case: bool) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
        self._tokenizer.no_padding()  # tokenizer.json may pad to a fixed length (all-MiniLM-L6-v2: 128)
        self._lower = do_lower_case  # sentence-transformers lowercases before the tokenizer when this is set

    def total(self, texts: list[str], max_length: int) -> int:
        return sum(self.lengths(texts, max_length))

    def lengths(self, texts: list[str], max_length: int) -> list[int]:
        self._tokenizer.enable_truncation(max_length=max_length)
        batch = [text.lower() for text in texts] if self._lower else texts
        return [len(encoding.ids) for encoding in self._tokenizer.encode_batch(batch)]


def attention_layers(exported: Path) -> tuple[int, list[int | None], bool]:
    """(query width = heads x head dim, each layer's key window or None for full attention, causal) from the
    export's config.json. A windowed layer is counted with its narrowest reading (ModernBERT's half window,
    the sliding window of the others), so utilisation is never overstated."""
    config = json.loads((exported / "config.json").read_text())
    heads = int(config.get("num_attention_heads", 0))
    head_dim = int(config.get("head_dim") or config.get("hidden_size", 0) // max(1, heads))
    layers = int(config.get("num_hidden_layers", 0))
    if config.get("model_type") == "modernbert":
        every = int(config.get("global_attn_every_n_layers", 1))
        half = int(config.get("local_attention", 0)) // 2
        windows: list[int | None] = [None if i % every == 0 else half for i in range(layers)]
    else:
        types = config.get("layer_types") or ["full_attention"] * layers
        sliding = config.get("sliding_window")
        windows = [int(sliding) if kind == "sliding_attention" and sliding else None for kind in types]
    return heads * head_dim, windows, config.get("model_type") in DECODER_MODEL_TYPES


def attention_flops(lengths: list[int], width: int, windows: list[int | None], causal: bool) -> int:
    """Flops of q k^T and probs v (2 x width each per query-key pair) over every layer, for texts of these token
    lengths run alone: padding and the pairs a mask hides do no useful work."""
    total = 0
    for window in windows:
        for length in lengths:
            keys = np.arange(1, length + 1) if causal else np.full(length, length)
            if window is not None:
                keys = np.minimum(keys, window)
            total += int(keys.sum())
    return 4 * width * total


def _child(python: str, arguments: list[str]) -> dict[str, Any]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [python, str(BENCH / "peers.py"), *arguments], capture_output=True, text=True, env=environment, check=False
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no stderr"]
        raise RuntimeError(f"peers.py {' '.join(arguments[:2])} exited {completed.returncode}: {tail[0]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _cosines(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    return (expected * actual).sum(axis=1) / np.maximum(norms, 1e-12)


def _python_for(system: str, fastembed_python: Path) -> str:
    return str(fastembed_python) if system == "fastembed" else sys.executable


def _skip_reason(system: str, exported: Path, manifest: dict[str, Any], fastembed_python: Path) -> str | None:
    if system == "onnxembed-int8" and "int8" not in manifest.get("variants", {}):
        variants = ", ".join(manifest.get("variants", {}))
        return f"{exported}/onnxembed.json lists no int8 variant (has: {variants})"
    if system == "fastembed" and not fastembed_python.is_file():
        return f"{fastembed_python} not found; create it: {FASTEMBED_SETUP}"
    return None


def throughput_round(
    system: str, args: argparse.Namespace, corpora: dict[str, Path], workdir: Path, python: str
) -> dict[str, Any]:
    """One round: a fresh process per corpus, --repeats timed runs each (latency in the sentences one)."""
    common = ["--src", str(args.src), "--exported", str(args.exported), "--batch-size", str(args.batch_size)]
    children = {}
    for corpus, texts_path in corpora.items():
        latency = ["--latency-calls", str(LATENCY_CALLS)] if corpus == "sentences" else []
        children[corpus] = _child(
            python,
            ["run", system, *common, "--texts", str(texts_path), "--repeats", str(args.repeats)]
            + ["--embeddings-out", str(workdir / f"{system}-{corpus}.npy"), *latency],
        )
    return children


def add_round(result: dict[str, Any], children: dict[str, Any]) -> None:
    """Fold one round's processes into a system's result: timings, latencies and memory per round."""
    for corpus, child in children.items():
        for key in ("max_length", "threads", "versions"):
            result[key] = child.pop(key)
        if corpus == "sentences":
            result.setdefault("latency_p50_rounds_s", []).append(child.pop("latency_p50_s"))
            result.setdefault("latency_p99_rounds_s", []).append(child.pop("latency_p99_s"))
            result["latency_calls"] = len(child.pop("latency_s"))
            result["latency_p50_s"] = statistics.median(result["latency_p50_rounds_s"])
            result["latency_p99_s"] = statistics.median(result["latency_p99_rounds_s"])
        run = result["corpora"].setdefault(corpus, {"rounds": []})
        run["rounds"].append(child)
        run["timings_s"] = [t for one in run["rounds"] for t in one["timings_s"]]
        run["peak_rss_bytes"] = max(one["peak_rss_bytes"] for one in run["rounds"])
        run["rss_after_load_bytes"] = statistics.median(one["rss_after_load_bytes"] for one in run["rounds"])
        run["others_cpu_cores"] = max(one["others_cpu_cores"] for one in run["rounds"])


def cold_starts(system: str, args: argparse.Namespace, corpora: dict[str, Path], python: str) -> dict[str, Any]:
    """--repeats fresh processes, each timed from just before its start to its first embedding."""
    common = ["--src", str(args.src), "--exported", str(args.exported), "--batch-size", str(args.batch_size)]
    cold = []
    for _ in range(args.repeats):
        started = time.time()
        cold.append(
            _child(
                python, ["run", system, *common, "--texts", str(corpora["sentences"]), "--cold-start-at", str(started)]
            )
        )
    runs = [child["cold_start_s"] for child in cold]
    return {
        "cold_start_runs_s": runs,
        "cold_start_s": statistics.median(runs),
        "cold_load_s": statistics.median(child["load_s"] for child in cold),
    }


def reference_embeddings(
    results: dict[str, Any], args: argparse.Namespace, corpora: dict[str, Path], workdir: Path
) -> dict[str, np.ndarray]:
    """sentence-transformers (torch) embeddings per corpus: from the st run, or from an untimed st process."""
    embeddings = {}
    for corpus, texts_path in corpora.items():
        path = workdir / f"st-{corpus}.npy"
        if results["systems"].get("st", {}).get("status") != "ok":
            path = workdir / f"reference-{corpus}.npy"
            common = ["--src", str(args.src), "--exported", str(args.exported), "--texts", str(texts_path)]
            _child(
                sys.executable,
                ["run", "st", *common, "--batch-size", str(args.batch_size), "--repeats", "0"]
                + ["--embeddings-out", str(path)],
            )
        embeddings[corpus] = np.load(path)
    return embeddings


def add_rates(
    results: dict[str, Any],
    texts: dict[str, list[str]],
    counter: TokenCounter,
    workdir: Path,
    reference: dict[str, np.ndarray],
) -> None:
    """Rates, tokens, FLOP/s, utilisation, memory and cosines for each system that ran."""
    parameters = results["model"]["non_embedding_parameters"]
    peak = results["peak_gflops"]["used"]
    int8_peak = results["peak_gflops"]["onnxruntime_int8"]
    baseline = results["systems"].get("st", {})
    for name, system in results["systems"].items():
        if system["status"] != "ok":
            continue
        for corpus, run in system["corpora"].items():
            # each round's median run; the rate is the median over rounds, and the ratio to
            # sentence-transformers the median of the per-round ratios (rounds alternate the systems)
            round_s = [statistics.median(one["timings_s"]) for one in run["rounds"]]
            seconds = statistics.median(round_s)
            run["round_median_s"] = round_s
            if baseline.get("status") == "ok":
                st_round_s = [statistics.median(one["timings_s"]) for one in baseline["corpora"][corpus]["rounds"]]
                ratios = [st / own for st, own in zip(st_round_s, round_s, strict=True)]
                run["vs_st_rounds"] = ratios
                run["vs_st"] = statistics.median(ratios)
            lengths = counter.lengths(texts[corpus], system["max_length"])
            tokens = sum(lengths)
            flops = 2 * parameters * tokens + attention_flops(lengths, *results["model"]["attention"])
            cosines = _cosines(reference[corpus], np.load(workdir / f"{name}-{corpus}.npy"))
            run.update(
                median_s=seconds,
                spread=(max(run["timings_s"]) - min(run["timings_s"])) / seconds,
                sentences_per_s=len(texts[corpus]) / seconds,
                tokens=tokens,
                mean_tokens=tokens / len(texts[corpus]),
                tokens_per_s=tokens / seconds,
                gflop=flops / 1e9,
                gflops=flops / seconds / 1e9,
                utilisation=flops / seconds / 1e9 / peak,
                utilisation_int8=flops / seconds / 1e9 / int8_peak,
                cosine_min=float(cosines.min()),
                cosine_mean=float(cosines.mean()),
            )


def markdown(results: dict[str, Any]) -> str:
    model, machine, peak = results["model"], results["machine"], results["peak_gflops"]
    settings = results["settings"]
    corpora = "; ".join(
        f"{name} {info['texts']} texts, {info['mean_tokens']:.1f} tokens/text, "
        f"{info.get('attention_share', 0):.1%} of the flops in attention"
        for name, info in results["corpora"].items()
    )
    lines = [
        f"model: {model['name']}, {model['non_embedding_parameters']:,} non-embedding parameters, "
        f"max_seq_length {model['max_seq_length']}; batch size {settings['batch_size']}, "
        f"{settings['rounds']} rounds (the systems in turn), each the median of {settings['repeats']} runs after a "
        "warm-up; rates are the median round, x st the median of the per-round ratios",
        f"machine: {machine['cpu']}; fp32 matmul peak {peak['used']:.1f} GFLOP/s "
        f"({peak['used_source']}; numpy {peak['numpy']:.1f}, onnxruntime {peak['onnxruntime']:.1f}); "
        f"onnxruntime int8 dynamic-quantized MatMul peak {peak['onnxruntime_int8']:.1f} GOP/s "
        f"({peak['onnxruntime_int8'] / peak['onnxruntime']:.2f}x its fp32); "
        f"load average {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end",
        f"corpora (tokens at max_seq_length): {corpora}",
        "",
        "| corpus | system | sentences/s | x st | spread | others' CPU | tokens/s | GFLOP/s | of fp32 peak "
        "| of ORT fp32 peak | of int8 peak | peak RSS MiB | min cos | mean cos |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus, info in results["corpora"].items():
        for name, system in results["systems"].items():
            if system["status"] != "ok":
                continue
            run = system["corpora"][corpus]
            cosines = ["reference", ""] if name == "st" else [f"{run['cosine_min']:.6f}", f"{run['cosine_mean']:.6f}"]
            cells = [
                corpus,
                name,
                f"{run['sentences_per_s']:.1f}",
                f"{run['vs_st']:.2f}x" if "vs_st" in run else "",
                f"{run['spread']:.0%}",
                f"{run['others_cpu_cores']:.2f}",
                f"{run['tokens_per_s']:,.0f}",
                f"{run['gflops']:.1f}",
                f"{run['utilisation']:.0%}",
                f"{run['gflops'] / peak['onnxruntime']:.0%}",
                f"{run['utilisation_int8']:.0%}",
                f"{run['peak_rss_bytes'] / MIB:.0f}",
                *cosines,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"| {corpus} | *fp32 matmul peak* | {info['hardware_limit_sentences_per_s']:.1f} | | | | "
            f"{info['hardware_limit_sentences_per_s'] * info['mean_tokens']:,.0f} | {peak['used']:.1f} | 100% "
            "| | | | | |"
        )
    lines += [
        "",
        "| system | truncates at | cold start s | of which load s | latency p50 ms | latency p99 ms | "
        "RSS after load MiB | versions |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, system in results["systems"].items():
        if system["status"] != "ok":
            continue
        versions = ", ".join(f"{key} {value}" for key, value in system["versions"].items())
        lines.append(
            f"| {name} | {system['max_length']} | {system['cold_start_s']:.2f} | {system['cold_load_s']:.2f} | "
            f"{system['latency_p50_s'] * 1e3:.2f} | {system['latency_p99_s'] * 1e3:.2f} | "
            f"{system['corpora']['sentences']['rss_after_load_bytes'] / MIB:.0f} | {versions} |"
        )
    for name, system in results["systems"].items():
        if system["status"] != "ok":
            lines.append(f"\n{name}: {system['status']}: {system['note']}")
    return "\n".join(lines)


def draw(results_path: Path, png_path: Path) -> str:
    """Draw with the first Python that has matplotlib: this one, else a .venv-bench-* one."""
    candidates = [sys.executable, *(str(path) for path in sorted(ROOT.glob(".venv-bench-*/bin/python")))]
    for python in candidates:
        if subprocess.run([python, "-c", "import matplotlib"], capture_output=True, check=False).returncode == 0:
            subprocess.run([python, str(BENCH / "peers.py"), "plot", str(results_path), str(png_path)], check=True)
            return python
    raise RuntimeError(f"no Python with matplotlib among {candidates}; e.g. {FASTEMBED_SETUP}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="SentenceTransformer directory (the torch reference)")
    parser.add_argument("exported", type=Path, help="directory written by `onnxembed export`")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="times every system runs, in turn")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--paragraphs", type=int, default=150)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {','.join(SYSTEMS)}")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--png-out", type=Path)
    parser.add_argument(
        "--fastembed-python",
        type=Path,
        default=ROOT / ".venv-bench-fastembed" / "bin" / "python",
        help="a Python with fastembed installed (default: .venv-bench-fastembed)",
    )
    args = parser.parse_args()
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown or not systems:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.repeats < 1 or args.batch_size < 1 or args.rounds < 1:
        parser.error("--repeats, --rounds and --batch-size must be at least 1")

    manifest = json.loads((args.exported / "onnxembed.json").read_text())
    texts = {"sentences": sentences(args.sentences), "paragraphs": paragraphs(args.paragraphs)}
    counter = TokenCounter(args.exported, bool(manifest["do_lower_case"]))
    parameters = non_embedding_parameters(args.exported / manifest["variants"]["fp32"]["file"])
    loadavg_start = os.getloadavg()
    if loadavg_start[0] > 1.5:
        print(f"note: load average {loadavg_start[0]:.2f}: others are using this machine", file=sys.stderr)
    peak_start = matmul_peaks()

    results: dict[str, Any] = {
        "model": {
            "name": _model_name(args.src),
            "src": str(args.src),
            "exported": str(args.exported),
            "non_embedding_parameters": parameters,
            "attention": attention_layers(args.exported),
            "max_seq_length": manifest["max_seq_length"],
        },
        "settings": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "latency_calls": LATENCY_CALLS,
        },
        "corpora": {},
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="onnxembed-bench-") as tmp:
        workdir = Path(tmp)
        corpora = {}
        for corpus, corpus_texts in texts.items():
            corpora[corpus] = workdir / f"{corpus}.json"
            corpora[corpus].write_text(json.dumps(corpus_texts))
        for name in systems:
            reason = _skip_reason(name, args.exported, manifest, args.fastembed_python)
            results["systems"][name] = (
                {"status": "ok", "corpora": {}, "loadavg_before": os.getloadavg()}
                if reason is None
                else {"status": "skipped", "note": reason}
            )
        # Rounds outermost: a slower spell of the shared machine falls on every system, not on one.
        for round_index in range(args.rounds):
            for name, system in results["systems"].items():
                if system["status"] != "ok":
                    continue
                print(f"round {round_index + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                try:
                    children = throughput_round(name, args, corpora, workdir, _python_for(name, args.fastembed_python))
                    add_round(system, children)
                except RuntimeError as error:
                    results["systems"][name] = {"status": "failed", "note": str(error)}
        for name, system in results["systems"].items():
            if system["status"] == "ok":
                try:
                    system.update(cold_starts(name, args, corpora, _python_for(name, args.fastembed_python)))
                except RuntimeError as error:
                    results["systems"][name] = {"status": "failed", "note": str(error)}
                    continue
                system["loadavg_after"] = os.getloadavg()
        peak_end = matmul_peaks()
        peaks = {name: max(peak_start[name], peak_end[name]) for name in peak_start}
        source = max(("numpy", "onnxruntime"), key=peaks.__getitem__)  # the fp32 ceiling
        results["peak_gflops"] = {
            **peaks,
            "start": peak_start,
            "end": peak_end,
            "used": peaks[source],
            "used_source": f"{source} 2048x2048 float32 matmul, best of 25 before and after",
        }
        results["machine"] = {
            "cpu": cpu_info().describe(),
            "cpu_info": cpu_info().to_dict(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
        }
        for corpus, corpus_texts in texts.items():
            lengths = counter.lengths(corpus_texts, manifest["max_seq_length"])
            flops = 2 * parameters * sum(lengths) + attention_flops(lengths, *results["model"]["attention"])
            results["corpora"][corpus] = {
                "texts": len(corpus_texts),
                "mean_tokens": sum(lengths) / len(corpus_texts),
                "gflop": flops / 1e9,
                "attention_share": 1 - 2 * parameters * sum(lengths) / flops,
                "hardware_limit_sentences_per_s": peaks[source] * 1e9 * len(corpus_texts) / flops,
            }
        add_rates(results, texts, counter, workdir, reference_embeddings(results, args, corpora, workdir))

    print(markdown(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    if args.png_out:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as results_file:
            results_file.write(json.dumps(results))
            results_file.flush()
            draw(Path(results_file.name), args.png_out)


def _model_name(src: Path) -> str:
    """The source directory's name, with its parent's when it is a generic one (a package's model/)."""
    src = src.resolve()
    return f"{src.parent.name}/{src.name}" if src.name in {"model", "models", "snapshot"} else src.name


if __name__ == "__main__":
    main()
