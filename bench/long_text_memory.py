"""Peak memory of embedding one text at a model's full max_seq_length: onnxembed against sentence-transformers.

    python bench/long_text_memory.py SRC_DIR EXPORTED_DIR [--tokens 8192] [--variant fp32]

Each system runs in a fresh process (this script re-runs itself), loads the model, embeds one text cut to
exactly --tokens tokens by the model's tokenizer, and reports its peak RSS (ru_maxrss) and the time of that
one call; the loaded-model RSS before the call is reported too, so the call's own share shows. Meant for
ModernBERT (max_seq_length 8192); bench/build_shapes.py builds a random-weight ModernBERT-base.
Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _text(tokens: int) -> str:
    words = "sentence embeddings map text to dense vectors for semantic search and clustering".split()
    return " ".join(words[k % len(words)] for k in range(tokens * 2))


def child(system: str, src: str, exported: str, tokens: int, variant: str) -> dict[str, float]:
    text = _text(tokens)
    if system == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(src, device="cpu")
        model.max_seq_length = tokens
        encode = model.encode
        counted = len(model.tokenizer(text, truncation=True, max_length=tokens)["input_ids"])
    else:
        from onnxembed import Encoder

        encoder = Encoder(exported, provider="cpu", variant=variant)
        encode = encoder.encode
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
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--child", choices=("st", "onnxembed"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.src, args.exported, args.tokens, args.variant)))
        return
    results = {}
    for system in ("st", "onnxembed"):
        command = [sys.executable, __file__, args.src, args.exported, "--tokens", str(args.tokens)]
        command += ["--variant", args.variant, "--child", system]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[system] = json.loads(output.strip().splitlines()[-1])
        print(system, results[system], flush=True)
    ratio = results["onnxembed"]["peak_rss_mib"] / results["st"]["peak_rss_mib"]
    print(f"peak RSS onnxembed / sentence-transformers: {ratio:.2f}")


if __name__ == "__main__":
    main()
