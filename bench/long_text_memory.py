"""Peak memory of embedding one text at a model's full max_seq_length: onnxembed against sentence-transformers.

    python bench/long_text_memory.py SRC_DIR EXPORTED_DIR [--tokens 512,2048,8192] [--variant fp32]

For each length in --tokens, each system runs in a fresh process (this script re-runs itself), loads the
model, embeds one text of exactly that many tokens (special tokens included; both systems' tokenizers count
it), and reports its peak RSS (ru_maxrss) and the time of that one call; the loaded-model RSS before the call
is reported too, so the call's own share shows. Meant for long-context models (ModernBERT-base 8,192 tokens,
Qwen3-Embedding-0.6B 32,768); bench/build_shapes.py builds random-weight ones. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _text(words: int) -> str:
    vocabulary = "sentence embeddings map text to dense vectors for semantic search and clustering".split()
    return " ".join(vocabulary[k % len(vocabulary)] for k in range(words))


def _exact_text(count: Any, tokens: int) -> str:
    """A text that ``count`` (text -> tokens, special ones included) puts at exactly ``tokens``."""
    words = tokens
    for _ in range(8):
        text = _text(words)
        got = count(text)
        if got == tokens:
            return text
        words += tokens - got
    raise SystemExit(f"could not build a text of exactly {tokens} tokens (last try: {got})")


def child(system: str, src: str, exported: str, tokens: int, variant: str) -> dict[str, float]:
    if system == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(src, device="cpu")
        encode = model.encode
        text = _exact_text(lambda text: len(model.tokenize([text])["input_ids"][0]), tokens)
        counted = len(model.tokenize([text])["input_ids"][0])
    else:
        from onnxembed import Encoder

        encoder = Encoder(exported, provider="cpu", variant=variant)
        encode = encoder.encode
        text = _exact_text(lambda text: len(encoder._tokenizer.encode([text])[0].ids), tokens)
        counted = len(encoder._tokenizer.encode([text])[0].ids)
    loaded = _rss_mib()
    start = time.perf_counter()
    encode([text])
    seconds = time.perf_counter() - start
    return {
        "tokens": counted,
        "loaded_rss_mib": loaded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("exported")
    parser.add_argument("--tokens", default="8192", help="lengths, comma-separated")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--child", choices=("st", "onnxembed"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.src, args.exported, int(args.tokens), args.variant)))
        return
    rows = []
    for tokens in (int(length) for length in args.tokens.split(",")):
        results = {}
        for system in ("st", "onnxembed"):
            command = [sys.executable, __file__, args.src, args.exported, "--tokens", str(tokens)]
            command += ["--variant", args.variant, "--child", system]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[system] = json.loads(output.strip().splitlines()[-1])
            print(tokens, system, results[system], flush=True)
        ratio = results["onnxembed"]["peak_rss_mib"] / results["st"]["peak_rss_mib"]
        rows.append((tokens, results, ratio))
    print("\n| tokens | st peak RSS MiB | st s | onnxembed peak RSS MiB | onnxembed s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for tokens, results, ratio in rows:
        st, ours = results["st"], results["onnxembed"]
        print(
            f"| {tokens:,} | {st['peak_rss_mib']:,.0f} | {st['seconds']:.1f} | {ours['peak_rss_mib']:,.0f} "
            f"| {ours['seconds']:.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
