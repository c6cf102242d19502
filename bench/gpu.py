"""onnxembed on one NVIDIA GPU against sentence-transformers on the same card, in one run.

    python bench/gpu.py --out DIR [--minilm SRC] [--xlmr768] [--sentences 36000] [--paragraphs 4000]

For each model (the real all-MiniLM-L6-v2 at SRC; with --xlmr768 also a random-weight XLM-R of base shape,
768-d, 12 layers, built here) and corpus (stdlib docstring sentences, ~26 tokens, and paragraphs, ~190
tokens; the distinct texts cycled up to the count asked), each system runs in its own process:
  st-fp32, st-fp16   sentence-transformers on torch CUDA (fp16: model.half()), batch sizes 32, 128, 512;
  onnxembed-fp32     Encoder(provider="cuda", variant="fp32-pooled");
  onnxembed-fp16     Encoder(provider="cuda"): the fused fp16 graph with pooling inside; also a sweep of
                     the token budget, sessions side by side, overlap off (the bare loop) and IO binding off;
  tokenizers         the model's tokenizer alone (encode_batch of the whole corpus, all cores), and
                     onnxembed's tokenize-and-pad plan with no model.
Reported: texts/s and tokens/s (median of --repeats), single-text p50/p99 latency, peak GPU memory (NVML,
used on the device above what it was before the process touched CUDA), min/mean cosine against st-fp32 on
the corpus and on the seed-card check texts (Chinese, Korean, Sinhala, emoji, text over max_seq_length).
Writes DIR/gpu.json, DIR/gpu.md and DIR/gpu.png (exports and embeddings under --work). Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CHECK_DATA = ROOT / "tests" / "data" / "multilingual.txt"
# 32 was never the best on an H100 (first run: 3.5k vs 6.7k texts/s at 512 on MiniLM sentences)
ST_BATCH_SIZES = (128, 512)
LATENCY_CALLS = 200
SWEEP_BUDGETS = (16384, 32768, 65536, 131072)


# ---------------------------------------------------------------- texts and models


def check_texts() -> list[str]:
    """Seed-card text: each script, emoji, empty, far over max_seq_length (as the tests use)."""
    lines = [line for line in CHECK_DATA.read_text(encoding="utf-8").splitlines() if line]
    return ["", "a", "我想买一个羽毛球拍，有什么推荐吗？", "상법 제651조의 내용은 무엇인가?",
            "සීගිරිය යනු ලොව පුරා ප්‍රසිද්ධ ඓතිහාසික ස්ථානයකි", "Emoji are text too 😀🎉👍🏽",
            " ".join(lines) * 3, *lines]  # fmt: skip


def corpus(kind: str, count: int) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from onnxembed.exporter.calibration import paragraphs, sentences

    distinct = sentences(10**6, wide=True) if kind == "sentences" else paragraphs(10**6, wide=True)
    return [distinct[i % len(distinct)] for i in range(count)]


def build_xlmr768(out: Path, texts: list[str]) -> Path:
    """A SentenceTransformer of XLM-R base shape (250,002 vocab, 768-d, 12 layers) with random weights and a
    SentencePiece-style Unigram tokenizer trained here (speed does not depend on the weights)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import models as tokenizer_models
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    if (out / "modules.json").is_file():
        return out
    torch.manual_seed(0)
    raw = Tokenizer(tokenizer_models.Unigram())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    raw.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=8000, special_tokens=specials, unk_token="<unk>"))
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", raw.token_to_id("<s>")), ("</s>", raw.token_to_id("</s>"))],
    )
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1)  # fmt: skip
    hf_dir = out.parent / f"{out.name}-hf"
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(hf_dir)
    XLMRobertaTokenizerFast(tokenizer_object=raw).save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=512)
    modules = [transformer, models.Pooling(768, pooling_mode="mean"), models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def export(src: Path, out: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import onnxembed

    if not (out / "onnxembed.json").is_file():
        onnxembed.export(src, out, optimize=True, target="gpu", pool_in_graph=True, overwrite=True)
    return json.loads((out / "onnxembed.json").read_text())


# ---------------------------------------------------------------- one system, in its own process


class GpuMemory:
    """Peak device memory in use (NVML) above the level before this process touched CUDA, sampled every 20 ms."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.baseline = self._used()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._used())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (max(self.peak, self._used()) - self.baseline) / 2**20


def _timed(function: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _latency(encode_one: Any, texts: list[str]) -> dict[str, float]:
    for text in texts[:20]:
        encode_one(text)
    samples = []
    for text in texts[:LATENCY_CALLS]:
        start = time.perf_counter()
        encode_one(text)
        samples.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99))}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    checks = check_texts()
    memory = GpuMemory() if args.device == "cuda" else None
    result: dict[str, Any] = {"system": args.system, "runs": {}}
    embed_out = Path(args.embeddings)
    if args.system == "tokenizers":
        return tokenizers_alone(args, texts)
    if args.system.startswith("st-"):
        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(args.src), device=args.device)
        if args.system == "st-fp16":
            model.half()

        def st_encode(items: list[str], batch_size: int) -> np.ndarray:
            out = model.encode(items, batch_size=batch_size, convert_to_numpy=True)
            return np.asarray(out, dtype=np.float32)

        for batch_size in ST_BATCH_SIZES:
            st_encode(texts[:2048], batch_size)
            seconds = _timed(lambda b=batch_size: st_encode(texts, b), min(args.repeats, 2))
            result["runs"][f"batch {batch_size}"] = len(texts) / seconds
        result["latency"] = _latency(lambda text: st_encode([text], 1), texts)
        np.save(embed_out.with_suffix(".corpus.npy"), st_encode(texts[:4096], 32))
        np.save(embed_out.with_suffix(".checks.npy"), st_encode(checks, 32))
        if args.device == "cuda":
            result["torch_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        result["versions"] = {"torch": torch.__version__}
    else:
        sys.path.insert(0, str(ROOT))
        from onnxembed import Encoder

        variant = "fp32-pooled" if args.system == "onnxembed-fp32" else "auto"
        encoder = Encoder(args.exported, provider=args.device, variant=variant)
        result["variant"] = encoder.variant
        encoder.encode(texts[:4096])
        seconds = _timed(lambda: encoder.encode(texts), args.repeats)
        result["runs"]["default"] = len(texts) / seconds
        result["latency"] = _latency(encoder.encode, texts)
        np.save(embed_out.with_suffix(".corpus.npy"), encoder.encode(texts[:4096]))
        np.save(embed_out.with_suffix(".checks.npy"), encoder.encode(checks))
        if args.sweep:
            result["sweep"] = sweep(args, variant, texts)
    if memory is not None:
        result["gpu_memory_mib"] = memory.stop()
    return result


def sweep(args: argparse.Namespace, variant: str, texts: list[str]) -> dict[str, float]:
    """texts/s of the engine's knobs, each a fresh Encoder (the default is the first line)."""
    from onnxembed import Encoder

    rates: dict[str, float] = {}
    configs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        (f"overlap, sessions 1, budget {budget}", {}, {"max_batch_tokens": budget}) for budget in SWEEP_BUDGETS
    ]
    configs += [(f"overlap, sessions 2, budget {budget}", {"sessions": 2}, {"max_batch_tokens": budget})
                for budget in SWEEP_BUDGETS[1:]]  # fmt: skip
    configs += [
        ("overlap, io_binding on, budget 32768", {"io_binding": True}, {"max_batch_tokens": 32768}),
        ("no overlap (bare loop), budget 32768", {"overlap": False}, {"max_batch_tokens": 32768}),
        ("no overlap (bare loop), budget 131072", {"overlap": False}, {"max_batch_tokens": 131072}),
        ("no overlap (bare loop), batch 512", {"overlap": False}, {"batch_size": 512, "max_batch_tokens": 10**9}),
    ]
    for name, options, call in configs:
        try:
            encoder = Encoder(args.exported, provider=args.device, variant=variant, **options)
            encoder.encode(texts[:4096], **call)
            rates[name] = len(texts) / _timed(lambda e=encoder, c=call: e.encode(texts, **c), args.repeats)
        except Exception as error:  # one failing knob should not lose the rest
            rates[name] = float("nan")
            print(f"sweep {name}: {type(error).__name__}: {error}", file=sys.stderr)
    return rates


def tokenizers_alone(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from onnxembed.manifest import Manifest
    from onnxembed.runtime.batching import plan
    from onnxembed.runtime.pipeline import run_serial
    from onnxembed.runtime.tokenize import TextTokenizer

    tokenizer = TextTokenizer(Path(args.exported), Manifest.read(args.exported))
    # the reference is what a user's tokenizer does: encode_batch, offsets and all (onnxembed uses _fast)
    raw = tokenizer._tokenizer
    raw.encode_batch(texts[:4096])
    alone = len(texts) / _timed(lambda: raw.encode_batch(texts), args.repeats)
    jobs = plan(texts, tokenizer, "", 10**9, 32768, False, 8)
    planned = len(texts) / _timed(lambda: run_serial(jobs, lambda batch: None), args.repeats)
    tokens = sum(len(encoding) for encoding in tokenizer.encode(texts))
    return {"system": "tokenizers", "runs": {"encode_batch": alone, "tokenize + pad plan": planned}, "tokens": tokens}


# ---------------------------------------------------------------- the parent: run all, compare, report


def run_child(args: argparse.Namespace, system: str, src: Path, exported: Path, texts_file: Path, work: Path,
              sweep_too: bool) -> dict[str, Any]:  # fmt: skip
    command = [sys.executable, __file__, "--worker", system, "--src", str(src), "--exported", str(exported),
               "--texts", str(texts_file), "--embeddings", str(work / f"{system}.npy"),
               "--repeats", str(args.repeats), "--device", args.device]  # fmt: skip
    command += ["--sweep"] if sweep_too else []
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        return {"system": system, "error": f"exit {completed.returncode}: {tail}"}
    if completed.stderr.strip():
        print(completed.stderr.strip()[-2000:], file=sys.stderr)
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def cosines(expected: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    values = (expected * actual).sum(axis=1) / np.maximum(norms, 1e-12)
    return {"min": float(values.min()), "mean": float(values.mean())}


def bench_model(
    args: argparse.Namespace, name: str, src: Path, exported: Path, work: Path, scale: int, save: Any
) -> dict[str, Any]:
    manifest = export(src, exported)
    out: dict[str, Any] = {"variants": {k: v["file"] for k, v in manifest["variants"].items()}, "corpora": {}}
    for kind, count in (("sentences", args.sentences // scale), ("paragraphs", args.paragraphs // scale)):
        texts = corpus(kind, count)
        texts_file = work / f"{name}-{kind}.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        results: dict[str, Any] = {}
        for system in ("tokenizers", "st-fp32", "st-fp16", "onnxembed-fp32", "onnxembed-fp16"):
            sweep_too = system == "onnxembed-fp16"
            child_work = work / f"{name}-{kind}"
            child_work.mkdir(exist_ok=True)
            results[system] = run_child(args, system, src, exported, texts_file, child_work, sweep_too)
            print(f"{name} {kind} {system}: {json.dumps(results[system])}", flush=True)
        reference = {part: child_work / f"st-fp32.{part}.npy" for part in ("corpus", "checks")}
        for system, result in results.items():
            if system in ("tokenizers", "st-fp32") or "error" in result or not reference["corpus"].is_file():
                continue
            for part, path in reference.items():
                result[f"cosine_{part}"] = cosines(np.load(path), np.load(child_work / f"{system}.{part}.npy"))
        tokens = results["tokenizers"].get("tokens", 0)
        out["corpora"][kind] = {"texts": len(texts), "tokens": tokens, "systems": results}
        save(name, out)
    return out


def best(result: dict[str, Any]) -> tuple[str, float]:
    runs = {**result.get("runs", {}), **result.get("sweep", {})}
    runs = {key: value for key, value in runs.items() if value == value}  # drop NaN
    if not runs:
        return "-", float("nan")
    key = max(runs, key=lambda k: runs[k])
    return key, runs[key]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU: {report['gpu']}; onnxruntime {report['onnxruntime']}", ""]
    for model, data in report["models"].items():
        for kind, block in data["corpora"].items():
            systems = block["systems"]
            st_best = max(best(systems[s])[1] for s in ("st-fp32", "st-fp16") if "error" not in systems[s])
            tokenizer_rate = systems["tokenizers"].get("runs", {}).get("encode_batch", float("nan"))
            per_text = block["tokens"] / max(block["texts"], 1)
            lines += [f"### {model}, {kind} ({block['texts']} texts, {per_text:.0f} tokens each)", "",
                      "| system | best texts/s (setting) | tokens/s | vs ST best | vs tokenizer alone | p50 / p99 ms "
                      "| GPU MiB | cosine vs ST fp32 corpus min/mean | checks min |",
                      "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for system, result in systems.items():
                if "error" in result:
                    lines.append(f"| {system} | error: {result['error'][:80]} | | | | | | | |")
                    continue
                setting, rate = best(result)
                latency = result.get("latency", {})
                lat = f"{latency['p50_ms']:.2f} / {latency['p99_ms']:.2f}" if latency else ""
                corpus_cos = result.get("cosine_corpus")
                checks_cos = result.get("cosine_checks")
                lines.append(
                    f"| {system} | {rate:,.0f} ({setting}) | {rate * per_text:,.0f} | {rate / st_best:.2f}x | "
                    f"{rate / tokenizer_rate:.2f} | {lat} | {result.get('gpu_memory_mib', float('nan')):,.0f} | "
                    + (f"{corpus_cos['min']:.7f} / {corpus_cos['mean']:.7f} | " if corpus_cos else "ref | ")
                    + (f"{checks_cos['min']:.7f} |" if checks_cos else "ref |")
                )
            sweep_rates = systems.get("onnxembed-fp16", {}).get("sweep")
            if sweep_rates:
                lines += ["", "onnxembed-fp16 engine settings (texts/s):", ""]
                lines += [f"- {name}: {rate:,.0f}" for name, rate in sweep_rates.items()]
            lines.append("")
    return "\n".join(lines)


def draw(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (model, kind, block) for model, data in report["models"].items() for kind, block in data["corpora"].items()
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (model, kind, block) in zip(axes[0], panels, strict=True):
        names = [name for name, result in block["systems"].items() if "error" not in result]
        rates = [best(block["systems"][name])[1] for name in names]
        axis.barh(names, rates, color=["#999" if n.startswith(("st", "tok")) else "#2a7" for n in names])
        axis.set_title(f"{model}, {kind}")
        axis.set_xlabel("texts/s (best setting)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 SentenceTransformer directory")
    parser.add_argument("--xlmr768", action="store_true", help="also an XLM-R base-shape random-weight model")
    parser.add_argument("--sentences", type=int, default=36000)
    parser.add_argument("--paragraphs", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="exports, texts and embeddings (default: OUT/work)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--exported", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.system = args.worker
        print(json.dumps(worker(args)))
        return
    import onnxruntime

    if args.device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        sys.exit("bench/gpu.py needs onnxruntime with CUDAExecutionProvider (../shared/gpu/README.md)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    gpu = subprocess.run(query, capture_output=True, text=True).stdout.strip() if args.device == "cuda" else "none"
    report: dict[str, Any] = {"gpu": gpu, "onnxruntime": onnxruntime.__version__, "models": {}}
    models: list[tuple[str, Path]] = []
    if args.minilm:
        models.append(("all-MiniLM-L6-v2", args.minilm))
    if args.xlmr768:
        models.append(("XLM-R-768 (random weights)", build_xlmr768(work / "xlmr768-st", corpus("sentences", 20000))))

    def save(name: str, model_report: dict[str, Any]) -> None:
        report["models"][name] = model_report
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu.md").write_text(markdown(report))

    for name, src in models:
        scale = 3 if name.startswith("XLM") else 1  # the 768-d model is ~10x slower: fewer texts
        bench_model(args, name, src, work / f"{src.name}-onnx", work, scale, save)
        print(markdown(report), flush=True)
    draw(report, args.out / "gpu.png")


if __name__ == "__main__":
    main()
